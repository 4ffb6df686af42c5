// The rng, guidance, sampler and locality plan against values the Python runtime made
// (test/make_fixtures.py -> test/fixtures/python.json).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { defaultRng, ImageStreams, imageSeeds } from "../src/rng.js";
import { applyGuidance, sampleRow } from "../src/sampling.js";
import { groupSizes, localityPlan, PLAN_WORD } from "../src/schedule.js";

const fx = JSON.parse(readFileSync(new URL("./fixtures/python.json", import.meta.url), "utf8"));

test("numpy default_rng(seed).random() streams, ints and [seed, 0x5C4ED] lists", () => {
  for (const c of fx.rng) {
    const r = defaultRng(c.entropy);
    assert.deepEqual(c.values.map(() => r.random()), c.values, `entropy ${JSON.stringify(c.entropy)}`);
  }
});

test("the contract's seed-0 example and per-image streams", () => {
  const r = defaultRng(0);
  assert.deepEqual([r.random(), r.random(), r.random()], [0.6369616873214543, 0.2697867137638703, 0.04097352393619469]);
  const s = new ImageStreams([5, 0], 2);
  const first5 = defaultRng(5).random();
  assert.equal(s.next(1), 0.6369616873214543);
  assert.equal(s.next(0), first5);
  s.next(0);
  assert.throws(() => s.next(0), /no draws left/);
  assert.deepEqual(imageSeeds(3, 3), [3, 4, 5]);
  assert.throws(() => imageSeeds(-1, 1), /seed must be an int >= 0/);
  assert.throws(() => imageSeeds([1, 2], 3), /2 seeds for 3 images/);
});

test("guidance in float32, LlamaGen's operation order", () => {
  for (const c of fx.guidance) {
    const V = c.logits[0].length;
    const got = applyGuidance(Float32Array.from(c.logits.flat()), c.images, V, c.scale);
    assert.deepEqual(Array.from(got), c.guided.flat(), `scale ${c.scale}`);
  }
});

test("the id-ordered sampler: temperature, top-k with ties, top-p, greedy lowest id", () => {
  for (const c of fx.sampler) {
    const opts = { temperature: c.temperature, topK: Math.min(c.top_k, 64), topP: c.top_p };
    const got = c.logits.map((row, i) => sampleRow(Float32Array.from(row), opts, () => c.u[i]));
    assert.deepEqual(got, c.tokens, JSON.stringify(opts));
  }
});

test("cosine group sizes and the locality plan", () => {
  assert.deepEqual(groupSizes(49, 8), [1, 3, 5, 6, 7, 9, 9, 9]);
  for (const c of fx.plans) {
    assert.deepEqual(groupSizes(c.height * c.width, c.steps), c.sizes);
    const plan = localityPlan(c.height, c.width, c.sizes, defaultRng([c.seed, PLAN_WORD]));
    assert.deepEqual(plan, c.groups, `${c.height}x${c.width} steps ${c.steps} seed ${c.seed}`);
  }
});
