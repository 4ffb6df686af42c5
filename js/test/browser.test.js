// The browser: the example page and the package in headless Chromium (Debian's `chromium`), on
// onnxruntime-web (wasm, 2 threads, cross-origin isolated by examples/serve.js): the same tokens and
// pixels as the Python runtime (test/fixtures/python.json) and the same one-line errors as Node.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createServer } from "../examples/serve.js";
import { findChromium, openPage, SETTLED } from "../tools/chromium.js";

const JS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const MODEL = path.join(JS, "..", "models", "default");
const fx = JSON.parse(readFileSync(new URL("./fixtures/python.json", import.meta.url), "utf8"));
const VARIANTS = process.env.TESSERA_JS_VARIANTS;
const CHROMIUM = findChromium();
// under CI a missing browser fails (.ci/run installs Debian's chromium); elsewhere the test is skipped
const skip = CHROMIUM || process.env.CI ? false : "no Chromium found (apt-get install chromium, or set TESSERA_CHROMIUM)";

/** @type {import("node:http").Server} */
let server;
/** @type {string} */
let origin;
/** @type {string} */
let bad;  // broken copies of models/default, served under /bad/
/** @type {Awaited<ReturnType<typeof openPage>>[]} */
const pages = [];

/** @param {string} query @returns {Promise<Awaited<ReturnType<typeof openPage>>>} the example page, settled */
async function examplePage(query) {
  assert.ok(CHROMIUM, "no Chromium found: apt-get install chromium, or set TESSERA_CHROMIUM");
  const page = await openPage(CHROMIUM, `${origin}/js/examples/?${query}`);
  pages.push(page);
  return page;
}

before(async () => {
  bad = mkdtempSync(path.join(tmpdir(), "tessera-js-bad-"));
  const copy = (/** @type {string} */ name, /** @type {(m: any, dir: string) => void} */ change) => {
    const dir = path.join(bad, name);
    for (const f of readdirSync(MODEL)) if (!f.endsWith(".safetensors")) cpSync(path.join(MODEL, f), path.join(dir, f));
    const m = JSON.parse(readFileSync(path.join(dir, "tessera.json"), "utf8"));
    change(m, dir);
    writeFileSync(path.join(dir, "tessera.json"), JSON.stringify(m));
  };
  copy("kv", (m) => { m.transformer.n_kv_head = 2; });
  copy("corrupt", (_m, dir) => { const f = path.join(dir, "tokenizer_decoder.onnx"); const b = readFileSync(f); b[b.length - 5] ^= 1; writeFileSync(f, b); });
  copy("selftest", (m) => { m.graphs.transformer.self_test.values[0][0] += 5; });
  writeFileSync(path.join(bad, "kv", "junk.json"), "{");
  /** @type {Record<string, string>} */
  const mounts = { "/js/": JS, "/models/": path.join(JS, "..", "models"), "/bad/": bad };
  if (VARIANTS) mounts["/variants/"] = VARIANTS;
  server = createServer(mounts);
  await new Promise((r) => server.listen(0, "127.0.0.1", () => r(null)));
  origin = `http://localhost:${/** @type {import("node:net").AddressInfo} */ (server.address()).port}`;
});

after(async () => {
  for (const p of pages) await p.close();
  server?.close();
  if (bad) rmSync(bad, { recursive: true, force: true });
});

test("the example page draws the Python runtime's digit (sampled and greedy), 2 wasm threads", { skip }, async () => {
  const chosen = ["greedy", "sampled"].map((mode) => fx.pixels.findLast((/** @type {any} */ p) => p.mode === mode));
  assert.equal(chosen.filter(Boolean).length, 2, "python.json has pixel hashes of a greedy and a sampled image");
  for (const want of chosen) {
    const page = await examplePage(`class=${want.class}&seed=${want.seed}&greedy=${want.mode === "greedy" ? 1 : 0}&auto=1`);
    const r = await page.evaluate(SETTLED);
    assert.equal(r.state, "done", JSON.stringify(r.error));
    const tokens = fx[want.mode].find((/** @type {any} */ c) => c.seed === want.seed).tokens[want.class];
    assert.deepEqual(r.last.tokens, tokens);
    assert.deepEqual(r.last.shape, want.shape);
    assert.equal(createHash("sha256").update(Uint8Array.from(r.last.pixels)).digest("hex"), want.sha256, `${want.mode} seed ${want.seed} class ${want.class}`);
    const canvas = await page.evaluate(`Array.from(document.getElementById("canvas").getContext("2d").getImageData(0, 0, 28, 28).data.filter((_, i) => i % 4 < 3))`);
    assert.deepEqual(canvas, r.last.pixels, "the canvas shows the decoded image");
    const info = await page.evaluate(`[document.getElementById("info").textContent, crossOriginIsolated]`);
    assert.match(info[0], /onnxruntime-web 1\.31\.1, wasm, 2 threads/);
    assert.equal(info[1], true, "the server's COOP/COEP headers make the page cross-origin isolated");
  }
});

test("the page's Stop button cancels the generation between tokens, leaving the rows drawn so far", { skip }, async () => {
  const page = await examplePage("class=4&seed=5");
  assert.equal((await page.evaluate(SETTLED)).state, "ready");
  const r = await page.evaluate(`new Promise((resolve) => {
    document.getElementById("go").click();
    const t = setInterval(() => {
      const m = /^(\\d+)\\/49 /.exec(document.getElementById("status").textContent);
      if (m && Number(m[1]) >= 15) { clearInterval(t); document.getElementById("stop").click(); resolve(${SETTLED}); }
    }, 0);
  })`);
  assert.equal(r.state, "stopped");
  const status = await page.evaluate(`document.getElementById("status").textContent`);
  assert.equal(status, "stopped");
  // rows not written yet are shown mid-grey; the first rows are the digit's
  const grey = await page.evaluate(`(() => { const d = document.getElementById("canvas").getContext("2d").getImageData(0, 0, 28, 28).data;
    const row = (y) => Array.from({ length: 28 }, (_, x) => d[4 * (y * 28 + x)]).every((v) => v === 128); return [row(0), row(27)]; })()`);
  assert.deepEqual(grey, [false, true]);
});

/** In the page: generate seeds 0-9 x every class from a model directory and count matches with Python's tokens. */
const COMPARE = `async (url, want, hashed) => {
  const { Pipeline } = await import("/js/src/browser.js");
  const p = url ? await Pipeline.load(url) : window.tessera.pipeline;
  const hex = async (t) => Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(JSON.stringify(t)))), (b) => b.toString(16).padStart(2, "0")).join("").slice(0, 16);
  const out = { differ: [] };
  for (const mode of ["greedy", "sampled"]) {
    let same = 0, total = 0;
    for (let seed = 0; seed < 10; seed++) {
      const expect = hashed ? want[mode][seed] : want[mode].find((c) => c.seed === seed).tokens;
      const classes = expect.map((_, i) => i);
      const got = await p.generate(classes, { seed: classes.map(() => seed), ...(mode === "greedy" ? { temperature: 0 } : {}) });
      for (let i = 0; i < got.length; i++) {
        total++;
        if ((hashed ? await hex(got[i]) : JSON.stringify(got[i])) === (hashed ? expect[i] : JSON.stringify(expect[i]))) same++; else out.differ.push(mode + " seed " + seed + " class " + i);
      }
    }
    out[mode] = same;
  }
  return out;
}`;

test("the package in the page: tokens equal the Python runtime's for seeds 0-9 of every class (fp32; the portable and any-order graphs when exported)", { skip }, async () => {
  const page = await examplePage("");
  assert.equal((await page.evaluate(SETTLED)).state, "ready");
  const fp32 = await page.evaluate(`(${COMPARE})(null, ${JSON.stringify({ greedy: fx.greedy, sampled: fx.sampled })}, false)`);
  assert.deepEqual(fp32, { greedy: 100, sampled: 100, differ: [] });
  if (!VARIANTS) return;
  // other graph forms: greedy always, sampled on >= 99% (the target): onnxruntime-web's wasm kernels
  // may round a logit differently from the native build Python used, and a draw that lands within that
  // distance of a bucket edge takes the neighbouring token (seen: 1 sampled image of the any-order model)
  const results = {};
  for (const [name, want] of Object.entries(fx.variants)) {
    // int4 is left out: its MatMulNBits nodes ask for accuracy_level 4, which native x86/ARM builds run with
    // int8 activations and onnxruntime-web's wasm runs in float32, so its logits differ well beyond rounding
    // (greedy 30/100 agreed when measured; js/README.md)
    if (name.endsWith("int4")) continue;
    results[name] = await page.evaluate(`(${COMPARE})("/variants/${name}/", ${JSON.stringify(want)}, true)`);
  }
  for (const [name, r] of Object.entries(results)) {
    assert.equal(r.greedy, 100, `${name}: ${r.differ}`);
    assert.ok(r.sampled >= 99, `${name}: sampled ${r.sampled}/100; differ: ${r.differ}`);
  }
  console.log(`# variants in the browser: ${JSON.stringify(results)}`);
});

test("bad model URLs and inputs get the same one-line errors as in Node", { skip }, async () => {
  const page = await examplePage("model=/models/no-such-model/");
  const r = await page.evaluate(SETTLED);
  assert.equal(r.state, "error");
  assert.equal(r.error.name, "ModelDirectoryError");
  assert.match(r.error.message, /^model directory http:\/\/localhost:\d+\/models\/no-such-model\/ has no tessera\.json \(HTTP 404\); give the URL of a directory that `tessera export` wrote$/);
  const cases = [
    ["", "ModelDirectoryError", /^no model URL given; give the URL/],
    ["/bad/kv/", "ModelDirectoryError", /n_kv_head 2 must divide n_head 3/],
    ["/bad/corrupt/", "ModelDirectoryError", /tokenizer_decoder\.onnx does not match its sha256/],
    ["/bad/selftest/", "ModelDirectoryError", /failed its self-test/],
    ["/bad/kv/junk.json", "ModelDirectoryError", /has no tessera\.json \(HTTP 404\)/],
  ];
  const errors = await page.evaluate(`(async () => {
    const { Pipeline } = await import("/js/src/browser.js");
    const out = [];
    for (const url of ${JSON.stringify(cases.map((c) => c[0]))}) out.push(await Pipeline.load(url).then(() => null, (e) => [e.name, e.message]));
    const p = window.tessera.pipeline ?? await Pipeline.load("/models/default/");
    out.push(await Pipeline.load("/models/default/", { executionProviders: ["nosuch"] }).then(() => null, (e) => [e.name, e.message]));
    for (const [c, o] of [[[12], {}], [[1], { topP: 0 }], [[1], { seed: -3 }]]) out.push(await p.generate(c, o).then(() => null, (e) => [e.name, e.message]));
    return out;
  })()`);
  const all = [...cases,
    ["", "ProviderError", /^execution provider "nosuch" is not one onnxruntime-web 1\.31\.1 knows \(wasm, cpu\); use \["wasm"\]$/],
    ["", "InvalidInputError", /^class id 12 is out of range: this model has classes 0\.\.9/],
    ["", "InvalidInputError", /^topP must be in \(0, 1\]/],
    ["", "InvalidInputError", /^seed must be an int >= 0/]];
  all.forEach(([, name, re], i) => {
    assert.ok(errors[i], `case ${i} did not fail`);
    assert.equal(errors[i][0], name, errors[i][1]);
    assert.match(errors[i][1], /** @type {RegExp} */ (re));
    assert.ok(!errors[i][1].includes("\n"));
  });
});
