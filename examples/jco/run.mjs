// Runs the release vd-cred-broker component under Node with jco: transpile it,
// then mint a token against the loopback mock broker (`host-test mock-broker`),
// rotate the bearer, and check an error case. Exits non-zero on any failure.
//
//   node run.mjs <vd_cred_broker.wasm> <host-test binary>
//
// .ci/run calls it after `cargo build -p host-test` and the component build.

import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import assert from "node:assert/strict";
import { _setEnv } from "@bytecodealliance/preview2-shim/cli";
import { _setPreopens } from "@bytecodealliance/preview2-shim/filesystem";

const [wasm, hostTest] = process.argv.slice(2).map((p) => resolve(p));
if (!wasm || !hostTest) {
  console.error("usage: node run.mjs <vd_cred_broker.wasm> <host-test binary>");
  process.exit(2);
}

// 1. Transpile the component to an ES module.
// Inside this package, so the output resolves the same preview2-shim we configure.
const out = mkdtempSync(join(import.meta.dirname, "out-"));
const jco = resolve(import.meta.dirname, "node_modules/.bin/jco");
execFileSync(jco, ["transpile", wasm, "-o", out, "--quiet"], { stdio: "inherit" });

// 2. Start the mock broker, driven over its stdin.
const broker = spawn(hostTest, ["mock-broker"], { stdio: ["pipe", "pipe", "inherit"] });
const lines = createInterface({ input: broker.stdout })[Symbol.asyncIterator]();
const nextLine = async () => (await lines.next()).value;
const url = await nextLine();
const send = (command) => broker.stdin.write(command + "\n");
const requests = async () => {
  send("requests");
  return JSON.parse(await nextLine());
};

// 3. The sandbox: only the bearer directory, only the two variables.
const dir = mkdtempSync(join(tmpdir(), "vd-bearer-"));
const bearerFile = join(dir, "credential");
writeFileSync(bearerFile, "vd_iat_node_one\n");
_setPreopens({ "/run/vd": dir });
_setEnv({ VD_CREDENTIAL_BROKER_URL: url, VD_CREDENTIAL_FILE: "/run/vd/credential" });

const { tokenCredential } = await import(join(out, "vd_cred_broker.js"));
const VAULT = "https://vault.azure.net/.default";
let failures = 0;
const check = async (name, fn) => {
  try {
    await fn();
    console.log(`ok   ${name}`);
  } catch (e) {
    failures++;
    console.log(`FAIL ${name}: ${e?.stack ?? e}`);
  }
};

await check("mint through the free get-token", async () => {
  const token = tokenCredential.getToken([VAULT]);
  assert.equal(token.token, "mock-token-1");
  assert.ok(token.expiresOn > BigInt(Math.floor(Date.now() / 1000)));
  const [r] = await requests();
  assert.equal(r.method, "POST");
  assert.equal(r.path, "/api/v1/credential-broker/token");
  assert.equal(r.headers.authorization, "Bearer vd_iat_node_one");
  assert.equal(r.headers["content-type"], "application/json");
  assert.equal(r.body, '{"audience":"vault"}');
});

await check("rotation: the next call carries the new bearer", async () => {
  const credential = tokenCredential.Credential.open({ audienceMap: [], allowInsecureHttp: false, disableCache: false });
  credential.getToken(["https://storage.azure.com/.default"]);
  writeFileSync(bearerFile, "vd_iat_node_two\n");
  const token = credential.getToken(["https://storage.azure.com/.default"]);
  assert.equal(token.token, "mock-token-3");
  const all = await requests();
  assert.deepEqual(all.slice(1).map((r) => r.headers.authorization), ["Bearer vd_iat_node_one", "Bearer vd_iat_node_two"]);
});

await check("errors arrive typed, with their message", async () => {
  send('push 403 {"error":"intent revoked"}');
  await requests(); // the push is applied once the broker answers this
  assert.throws(
    () => tokenCredential.getToken([VAULT]),
    (e) => e.payload?.tag === "broker-rejected" && e.payload.val.status === 403 && /intent revoked/.test(e.payload.val.detail),
  );
  assert.throws(
    () => tokenCredential.getToken(["https://graph.microsoft.com/.default"]),
    (e) => e.payload?.tag === "scope-not-allowed" && e.payload.val.knownResources.length === 6,
  );
  const text = tokenCredential.describeError({ tag: "bearer-unavailable", val: "gone" });
  assert.match(text, /intent bearer unavailable: gone/);
});

broker.stdin.end();
rmSync(out, { recursive: true, force: true });
rmSync(dir, { recursive: true, force: true });
console.log(failures === 0 ? "jco: 3 passed, 0 failed" : `jco: ${3 - failures} passed, ${failures} failed`);
process.exit(failures === 0 ? 0 : 1);
