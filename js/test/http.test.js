// One code path for every host: the Pipeline reading a model directory over HTTP (fetch.js, the browser's
// store) with onnxruntime-node gives the tokens and errors it gives from files; examples/serve.js serves
// only js/ and models/, with the cross-origin isolation headers.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import * as ort from "onnxruntime-node";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createServer } from "../examples/serve.js";
import { PipelineCore, urlStore, onnxruntimeVersion, ModelDirectoryError } from "../src/index.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const fx = JSON.parse(await import("node:fs").then((fs) => fs.readFileSync(new URL("./fixtures/python.json", import.meta.url), "utf8")));
/** @type {import("node:http").Server} */
let server;
let origin = "";

before(async () => {
  server = createServer();
  await new Promise((r) => server.listen(0, "127.0.0.1", () => r(null)));
  origin = `http://localhost:${/** @type {import("node:net").AddressInfo} */ (server.address()).port}`;
});
after(() => server.close());

/** @param {string} url @returns {import("../src/pipeline.js").Host} the browser's store with onnxruntime-node */
function httpHost(url) {
  const store = urlStore(url);
  return {
    ort, store, runtime: "onnxruntime-node", version: onnxruntimeVersion(), defaultProviders: ["cpu"],
    providers: async () => ["cpu"], threadOptions: () => ({}),
    session: async (file, _external, options) => ort.InferenceSession.create(await store.bytes(file), options),
  };
}

test("a model directory over HTTP gives the Python runtime's tokens", async () => {
  const p = await PipelineCore.open(httpHost(`${origin}/models/default`));
  for (const mode of ["greedy", "sampled"]) {
    const c = fx[mode][3];
    const classes = c.tokens.map((/** @type {unknown} */ _, /** @type {number} */ i) => i);
    assert.deepEqual(await p.generate(classes, { seed: classes.map(() => c.seed), ...(mode === "greedy" ? { temperature: 0 } : {}) }), c.tokens);
  }
});

test("over HTTP, a missing directory or a bad URL is one clear line", async () => {
  const e = await PipelineCore.open(httpHost(`${origin}/models/nope/`)).catch((x) => x);
  assert.ok(e instanceof ModelDirectoryError);
  assert.equal(e.message, `model directory ${origin}/models/nope/ has no tessera.json (HTTP 404); give the URL of a directory that \`tessera export\` wrote`);
  const down = await PipelineCore.open(httpHost("http://127.0.0.1:1/m/")).catch((x) => x);
  assert.match(down.message, /^model directory http:\/\/127\.0\.0\.1:1\/m\/: tessera\.json cannot be fetched \(.*\); check the URL and that the server is running$/);
  assert.throws(() => urlStore("  "), /no model URL given/);
});

test("the static server: COOP/COEP, MIME types, only js/ and models/, no way out", async () => {
  const wasm = await fetch(`${origin}/js/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm`, { method: "HEAD" });
  assert.equal(wasm.status, 200);
  assert.equal(wasm.headers.get("content-type"), "application/wasm");
  assert.equal(wasm.headers.get("cross-origin-opener-policy"), "same-origin");
  assert.equal(wasm.headers.get("cross-origin-embedder-policy"), "require-corp");
  assert.equal((await fetch(`${origin}/js/examples/`)).headers.get("content-type"), "text/html; charset=utf-8");
  assert.equal((await fetch(`${origin}/js/examples/app.js`)).headers.get("content-type"), "text/javascript; charset=utf-8");
  for (const bad of ["/README.md", "/js/%2e%2e/README.md", "/js/..%2fREADME.md", "/models/default/..%2f..%2fsetup.cfg", "/js/.gitignore", "/js/examples/%00x"]) {
    assert.equal((await fetch(`${origin}${bad}`)).status, 404, bad);
  }
  assert.equal((await fetch(`${origin}/js/examples/`, { method: "POST" })).status, 405);
  assert.equal((await fetch(`${origin}/`, { redirect: "manual" })).headers.get("location"), "/js/examples/");
});
