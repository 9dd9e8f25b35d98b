// A JavaScript agent for the vd-cred-broker host: plain `fetch`, no
// credential code. componentize-js turns each export into a synchronous
// component function; an `async` export's promise is driven to settlement by
// running StarlingMonkey's event loop (wasi:io/poll) inside the call.
// WIT `result<T, E>`: return T for ok, throw E for err.

function message(e) {
  return e instanceof Error ? e.message || String(e) : String(e);
}

export async function readSecret(vaultUrl, name) {
  const url = `${vaultUrl.replace(/\/+$/, '')}/secrets/${encodeURIComponent(name)}?api-version=7.4`;
  let response, text;
  try {
    response = await fetch(url, { headers: { accept: 'application/json' } });
    text = await response.text();
  } catch (e) {
    throw message(e);
  }
  if (response.status < 200 || response.status > 299) {
    throw `${response.status} ${text}`;
  }
  let value;
  try {
    value = JSON.parse(text).value;
  } catch (e) {
    throw `invalid JSON from ${url}: ${message(e)}`;
  }
  if (typeof value !== 'string') {
    throw `no string "value" in the response from ${url}`;
  }
  return value;
}

export async function fetchStatus(url) {
  try {
    const response = await fetch(url, { redirect: 'manual' });
    await response.arrayBuffer();
    return response.status;
  } catch (e) {
    throw message(e);
  }
}
