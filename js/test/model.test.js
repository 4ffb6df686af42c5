// The shipped models/default through onnxruntime-node: tokens and pixels identical to the Python
// runtime's (test/fixtures/python.json), and one clear error per bad input.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Pipeline, ModelDirectoryError, InvalidInputError, ProviderError, AbortError, onnxruntimeVersion } from "../src/index.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const MODEL = path.join(ROOT, "models", "default");
const fx = JSON.parse(readFileSync(new URL("./fixtures/python.json", import.meta.url), "utf8"));
/** @type {Pipeline} */
let pipe;

before(async () => { pipe = await Pipeline.load(MODEL); });

for (const mode of ["greedy", "sampled"]) {
  test(`${mode} tokens equal the Python runtime's for seeds 0-9 of every class`, async () => {
    let same = 0, total = 0;
    for (const c of fx[mode]) {
      const classes = c.tokens.map((/** @type {unknown} */ _, /** @type {number} */ i) => i);
      const got = await pipe.generate(classes, { seed: classes.map(() => c.seed), ...(mode === "greedy" ? { temperature: 0 } : {}) });
      got.forEach((g, i) => { total++; if (JSON.stringify(g) === JSON.stringify(c.tokens[i])) same++; });
    }
    assert.equal(`${same}/${total}`, `${total}/${total}`);
  });
}

test("decoded pixels equal the Python runtime's", async () => {
  for (const p of fx.pixels) {
    const tokens = fx[p.mode].find((/** @type {any} */ c) => c.seed === p.seed).tokens[p.class];
    const [img] = await pipe.decode([tokens]);
    assert.deepEqual([img.height, img.width, img.channels], p.shape);
    assert.equal(createHash("sha256").update(img.data).digest("hex"), p.sha256, `${p.mode} seed ${p.seed} class ${p.class}`);
  }
});

test("an image is the same alone and in a batch; names resolve as in Python", async () => {
  const alone = await pipe.generate("seven", { seed: 4 });
  const batch = await pipe.generate([3, "Seven"], { seed: 3 });
  assert.deepEqual(batch[1], alone[0]);
  assert.equal(pipe.classId("name:seven"), 7);
  assert.equal(pipe.classId("id:2"), 2);
});

test("stream yields each step's partial grid; an AbortSignal cancels", async () => {
  const steps = [];
  for await (const s of pipe.stream([1], { seed: 0, temperature: 0 })) steps.push(s);
  assert.equal(steps.length, 49);
  assert.equal(steps[0].tokens[0].flat().filter((t) => t >= 0).length, 1);
  assert.deepEqual(steps[48].tokens, await pipe.generate([1], { temperature: 0 }));
  const frames = [];
  for await (const s of pipe.stream([1, 5], { seed: 2, previewEvery: "row" })) if (s.images) frames.push(s);
  assert.deepEqual(frames.map((s) => s.step), [7, 14, 21, 28, 35, 42, 49]);
  const final = await pipe.decode(frames[6].tokens);
  assert.deepEqual(frames[6].images, final);
  const row = (/** @type {Uint8Array} */ d, /** @type {number} */ y) => d.subarray(y * 28 * 3, (y + 1) * 28 * 3);
  const partial = frames[2].images[1].data;  // 3 token rows written: pixel rows 0-11 drawn, 12-27 mid-grey
  assert.ok(row(partial, 12).every((v) => v === 128) && row(partial, 27).every((v) => v === 128));
  assert.ok(!row(partial, 0).every((v) => v === 128));
  await assert.rejects(pipe.stream([1], { previewEvery: 0 }).next(), /previewEvery must be an int >= 1/);
  const pv = fx.previews, shown = [];  // the Python runtime's frames, pixel for pixel
  for await (const s of pipe.stream([pv.class], { seed: pv.seed, previewEvery: "row" })) {
    if (s.images) shown.push({ step: s.step, sha256: createHash("sha256").update(s.images[0].data).digest("hex") });
  }
  assert.deepEqual(shown, pv.frames);
  const ac = new AbortController();
  let seen = 0;
  await assert.rejects(async () => {
    for await (const _ of pipe.stream([1], { signal: ac.signal })) { if (++seen === 3) ac.abort(); }
  }, AbortError);
  assert.equal(seen, 3);
});

test("bad options and labels get one clear error each", async () => {
  const cases = [
    [[12], {}, /class id 12 is out of range: this model has classes 0\.\.9/],
    [["eleven"], {}, /unknown class name "eleven"; valid classes: 0=zero/],
    [[1], { temperature: -1 }, /temperature must be >= 0/],
    [[1], { topP: 0 }, /topP must be in \(0, 1\]/],
    [[1], { topK: 1.5 }, /topK must be an int >= 0/],
    [[1], { guidanceScale: Number.NaN }, /guidanceScale must be a finite number/],
    [[1], { seed: -3 }, /seed must be an int >= 0/],
    [[1], { steps: 4 }, /steps applies to any-order models only/],
    [[], {}, /classes is empty/],
  ];
  for (const [classes, opts, re] of cases) {
    await assert.rejects(pipe.generate(/** @type {any} */ (classes), /** @type {any} */ (opts)), (e) => e instanceof InvalidInputError && re.test(e.message) && !e.message.includes("\n"));
  }
});

/** @param {(dir: string) => void} change @returns {Promise<Error>} */
async function loadChanged(change) {
  const dir = mkdtempSync(path.join(tmpdir(), "tessera-js-"));
  try {
    for (const f of readdirSync(MODEL)) if (!f.endsWith(".safetensors")) cpSync(path.join(MODEL, f), path.join(dir, f));  // weights may be absent
    change(dir);
    return await Pipeline.load(dir).then(() => assert.fail("loaded"), (e) => e);
  } finally { rmSync(dir, { recursive: true, force: true }); }
}

const editManifest = (/** @type {(m: any) => void} */ f) => (/** @type {string} */ dir) => {
  const p = path.join(dir, "tessera.json");
  const m = JSON.parse(readFileSync(p, "utf8"));
  f(m);
  writeFileSync(p, JSON.stringify(m));
};

test("bad model directories get one clear error each", async () => {
  const missing = await Pipeline.load(path.join(ROOT, "no-such-model")).catch((e) => e);
  assert.match(missing.message, /no-such-model does not exist/);
  const cases = [
    [(/** @type {string} */ d) => { const f = path.join(d, "tokenizer_decoder.onnx"); const b = readFileSync(f); b[b.length - 5] ^= 1; writeFileSync(f, b); }, /tokenizer_decoder\.onnx does not match its sha256/],
    [editManifest((m) => { m.graphs.transformer.file = "../transformer.onnx"; }), /graphs\.transformer\.file must be a plain file name/],
    [editManifest((m) => { m.transformer.n_kv_head = 2; }), /n_kv_head 2 must divide n_head 3/],
    [editManifest((m) => { m.transformer.rope_grid = 15; }), /self_test inputs do not follow/],
    [editManifest((m) => { m.transformer.extra = 1; }), /unknown field transformer\.extra/],
    [editManifest((m) => { m.format_version = 3; }), /format_version 3 is newer than this host knows/],
    [editManifest((m) => { m.format_version = 1; }), /tessera export --from DIR --out NEW/],
    [editManifest((m) => { m.family = "dit"; }), /a family this host does not know/],
    [editManifest((m) => { m.graphs.transformer.self_test.values[0][0] += 5; }), /failed its self-test/],
    [editManifest((m) => { m.graphs.transformer.io.logits = "scores"; }), /inputs\/outputs are not the ones/],
    [editManifest((m) => { m.graphs.transformer.multi_query = "one-query-per-call"; }), /rotates the tokens of a multi-token call by index.*tessera export --from DIR --out NEW/],
  ];
  for (const [change, re] of cases) {
    const e = await loadChanged(/** @type {any} */ (change));
    assert.ok(e instanceof ModelDirectoryError, String(e));
    assert.match(e.message, /** @type {RegExp} */ (re));
    assert.ok(!e.message.includes("\n"));
  }
});

test("an unknown execution provider or thread count gets one clear error", async () => {
  const e = await Pipeline.load(MODEL, { executionProviders: ["nosuch"] }).catch((x) => x);
  assert.ok(e instanceof ProviderError);
  assert.match(e.message, /execution provider "nosuch" is not one onnxruntime-node .* knows \(cpu, /);
  await assert.rejects(Pipeline.load(MODEL, { threads: 0 }), (x) => x instanceof InvalidInputError && /threads must be an int >= 1/.test(x.message));
  await assert.rejects(Pipeline.load(MODEL, { executionProviders: [] }), /executionProviders must be a non-empty list/);
});

test("a graph newer than this onnxruntime-node is refused naming both versions", async () => {
  const have = onnxruntimeVersion();
  const e = await loadChanged(editManifest((m) => { m.graphs.transformer.min_onnxruntime = "1.99"; }));
  assert.ok(e instanceof ModelDirectoryError);
  assert.match(e.message, new RegExp(`needs onnxruntime >= 1\\.99, this host has onnxruntime-node ${have.replace(/\./g, "\\.")}`));
});

// Other graph forms and families, exported by `python js/test/make_fixtures.py --export-variants DIR` (.ci/run
// does it, outside the checkout): the shipped any-order model re-exported (section 7.6's decoder; its calls over a
// past run one row per call on the 1.22 form, section 3.3), the
// default's int4 variant and its portable graph (concat cache, batched). Tokens equal Python's.
const VARIANTS = process.env.TESSERA_JS_VARIANTS;
const short = (/** @type {unknown} */ t) => createHash("sha256").update(JSON.stringify(t)).digest("hex").slice(0, 16);
for (const [name, want] of Object.entries(fx.variants)) {
  test(`${name}: tokens equal the Python runtime's (greedy and sampled, seeds 0-9, every class)`,
    { skip: VARIANTS ? false : "set TESSERA_JS_VARIANTS to the directory make_fixtures.py --export-variants wrote" }, async () => {
      const dir = path.join(/** @type {string} */ (VARIANTS), name);
      const sha = createHash("sha256").update(readFileSync(path.join(dir, "transformer.onnx"))).digest("hex");
      assert.equal(sha, want.transformer_sha256, `${name}'s graph differs from the fixture's: re-run make_fixtures.py`);
      const p = await Pipeline.load(dir);
      for (const mode of ["greedy", "sampled"]) {
        let same = 0, total = 0;
        for (let seed = 0; seed < 10; seed++) {
          const classes = want[mode][seed].map((/** @type {unknown} */ _, /** @type {number} */ i) => i);
          const got = await p.generate(classes, { seed: classes.map(() => seed), ...(mode === "greedy" ? { temperature: 0 } : {}) });
          got.forEach((g, i) => { total++; if (short(g) === want[mode][seed][i]) same++; });
        }
        assert.equal(`${mode} ${same}/${total}`, `${mode} ${total}/${total}`);
      }
      if (!want.steps) return;
      for (const c of want.steps) assert.deepEqual(await p.generate(c.classes, { seed: c.seed, steps: c.steps }), c.tokens, `steps ${c.steps}`);
      const seen = [];
      for await (const s of p.stream([2], { steps: 8 })) seen.push(s.tokens[0].flat().filter((t) => t >= 0).length);
      assert.deepEqual(seen, [1, 4, 9, 15, 22, 31, 40, 49]);
      await assert.rejects(p.generate([2], { steps: 0 }), /steps must be an int >= 1/);
    });
}
