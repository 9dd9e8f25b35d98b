// A JavaScript agent for the vd-cred-broker host. `readSecret` and
// `fetchStatus` use plain `fetch` and no credential code (the host adds the
// token); `mint` (at the end) uses the imported credential. componentize-js turns each export into a synchronous
// component function; an `async` export's promise is driven to settlement by
// running StarlingMonkey's event loop (wasi:io/poll) inside the call.
// WIT `result<T, E>`: return T for ok, throw E for err.

import { Credential } from 'vibedata:cred-broker/token-credential@0.1.0';

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

// `mint` is the one export that uses the credential the host links to the
// agent's `token-credential` import. An imported function returning
// `result<T, credential-error>` returns T, or throws a `ComponentError` (not
// `instanceof Error` here) whose `payload` is the variant as `{ tag, val }`
// (records with camelCase fields, u64 as BigInt).

function render(payload) {
  const { tag, val } = payload;
  switch (tag) {
    case 'scope-not-allowed':
      return `${tag}: ${JSON.stringify(val.scope)} is not allowed; knownResources: ${JSON.stringify(val.knownResources)}`;
    case 'broker-rejected':
    case 'broker-failed':
      return `${tag}: HTTP ${val.status}: ${JSON.stringify(val.detail)}`;
    default:
      return `${tag}: ${val}`; // every other case carries a sentence
  }
}

export function mint(scopes) {
  let credential, token;
  try {
    // Everything unset: a host-linked credential takes its settings from the
    // host (an agent may set only timeoutMs and disableCache).
    credential = Credential.open({ audienceMap: [], allowInsecureHttp: false, disableCache: false });
    token = credential.getToken(scopes);
  } catch (e) {
    if (e && typeof e === 'object' && 'payload' in e) {
      throw render(e.payload);
    }
    throw `not a credential error: ${message(e)}`;
  } finally {
    credential?.[Symbol.dispose]?.();
  }
  return `token of ${token.token.length} chars, expires_on ${token.expiresOn}`;
}
