// The any-order decoder's plan (contract section 7.6): MaskGIT's cosine group sizes and the
// default "locality" order of cells, drawn from each image's plan stream default_rng([seed, 0x5C4ED]).

import { defaultRng } from "./rng.js";

/** The plan stream's second entropy word. */
export const PLAN_WORD = 0x5c4ed;

/**
 * Cosine group sizes: `steps` groups covering `m` cells, each at least one.
 * @param {number} m open cells @param {number} steps @returns {number[]}
 */
export function groupSizes(m, steps) {
  const sizes = [];
  let done = 0;
  for (let t = 1; t <= steps; t++) {
    let target = m - Math.floor(m * Math.cos((Math.PI / 2) * (t / steps)) + 1e-9);
    target = Math.min(Math.max(target, done + 1), m - (steps - t));
    sizes.push(target - done);
    done = target;
  }
  return sizes;
}

/**
 * The locality order: for each group, picks spread away from each other and close to decided cells.
 * @param {number} h @param {number} w grid rows and columns
 * @param {number[]} sizes group sizes (from `groupSizes`)
 * @param {{random(): number}} rng the image's plan stream
 * @param {number[]} [decided] cells already decided (row-major numbers); none when generating
 * @returns {number[][]} each group's cells in pick order
 */
export function localityPlan(h, w, sizes, rng, decided = []) {
  const isDecided = new Uint8Array(h * w);
  const done = decided.slice();
  for (const k of done) isDecided[k] = 1;
  const dist = (/** @type {number} */ a, /** @type {number} */ b) => {
    const dr = Math.floor(a / w) - Math.floor(b / w), dc = (a % w) - (b % w);
    return Math.sqrt(dr * dr + dc * dc);
  };
  const groups = [];
  for (const c of sizes) {
    const cand = [];
    for (let k = 0; k < h * w; k++) if (!isDecided[k]) cand.push(k);
    const n = cand.length;
    const near = cand.map((k) => (done.length ? Math.min(...done.map((d) => dist(k, d))) : 0));
    const far = new Float64Array(n).fill(Infinity);
    const ties = new Float64Array(c * n);
    for (let i = 0; i < c * n; i++) ties[i] = rng.random() * 1e-3;
    const group = [];
    for (let p = 0; p < c; p++) {
      let best = 0, bestScore = -Infinity;
      for (let j = 0; j < n; j++) {
        const score = Math.min(far[j], 1e6) * 1000 - near[j] + ties[p * n + j];
        if (score > bestScore) { bestScore = score; best = j; }
      }
      for (let j = 0; j < n; j++) far[j] = Math.min(far[j], dist(cand[j], cand[best]));
      far[best] = -Infinity;
      group.push(cand[best]);
    }
    for (const k of group) { isDecided[k] = 1; done.push(k); }
    groups.push(group);
  }
  return groups;
}

/** @param {number} h @param {number} w @param {number} steps @param {number} seed @returns {number[][]} */
export function imagePlan(h, w, steps, seed) {
  return localityPlan(h, w, groupSizes(h * w, steps), defaultRng([seed, PLAN_WORD]));
}
