// Guidance and the id-ordered draw of contract section 7.4, exactly as written there: the same
// logits and the same uniform give the same token as the Python runtime.

const f32 = Math.fround;

/**
 * Classifier-free guidance in float32, in LlamaGen's operation order: (cond - uncond) * scale + uncond.
 * @param {Float32Array} logits `[2B, V]`, rows [0, B) conditional, [B, 2B) the null class
 * @param {number} images B @param {number} vocab V @param {number} scale
 * @returns {Float32Array} `[B, V]`
 */
export function applyGuidance(logits, images, vocab, scale) {
  const s = f32(scale);
  const n = images * vocab;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = logits[n + i];
    out[i] = f32(f32(f32(logits[i] - u) * s) + u);  // Float32Array stores round too; fround says why
  }
  return out;
}

/** @param {number} scale @returns {boolean} guidance is on exactly when its scale is above 1 */
export const guidanceOn = (scale) => scale > 1;

/**
 * @typedef {object} SamplingOptions
 * @property {number} temperature 0 = greedy
 * @property {number} topK 0 = off (already clipped to the vocabulary)
 * @property {number} topP 1 = off
 */

/**
 * One token from one row of float32 logits (guidance already applied).
 * @param {Float32Array} g the row `[V]`
 * @param {SamplingOptions} opts
 * @param {() => number} uniform this image's next uniform (called only when sampling)
 * @returns {number} the token id
 */
export function sampleRow(g, opts, uniform) {
  const V = g.length;
  if (opts.temperature === 0) {
    let best = 0;
    for (let i = 1; i < V; i++) if (g[i] > g[best]) best = i;  // ties: lowest id
    return best;
  }
  const u = uniform();
  const inv = 1 / Math.max(opts.temperature, 1e-5);
  const v = new Float64Array(V);
  for (let i = 0; i < V; i++) v[i] = g[i] * inv;
  if (opts.topK > 0 && opts.topK < V) {
    const sorted = Float32Array.from(g).sort();
    const kth = sorted[V - opts.topK];  // the k-th largest float32 logit; ties at it are kept
    for (let i = 0; i < V; i++) if (!(g[i] >= kth)) v[i] = -Infinity;
  }
  if (opts.topP < 1) topPCut(v, opts.topP);
  let max = -Infinity;
  for (let i = 0; i < V; i++) if (v[i] > max) max = v[i];
  const w = new Float64Array(V);
  const cdf = new Float64Array(V);
  let run = 0;
  for (let i = 0; i < V; i++) { w[i] = Math.exp(v[i] - max); run += w[i]; cdf[i] = run; }
  const target = u * run;
  for (let i = 0; i < V; i++) if (w[i] > 0 && cdf[i] >= target) return i;
  throw new Error("internal: no token drawn (a NaN logit?)");
}

/**
 * Top-p in place: rank by descending v (ties in id order), running sum of exp(v - v_max) divided by
 * its last value; a ranked token is cut when the previous ranked token's cumulative mass exceeds p.
 * @param {Float64Array} v @param {number} p
 */
export function topPCut(v, p) {
  const V = v.length;
  const order = Array.from({ length: V }, (_, i) => i);
  order.sort((a, b) => (v[a] === v[b] ? a - b : v[b] > v[a] ? 1 : -1));
  const top = v[order[0]];
  const cum = new Float64Array(V);
  let run = 0;
  for (let r = 0; r < V; r++) { run += Math.exp(v[order[r]] - top); cum[r] = run; }
  for (let r = 1; r < V; r++) if (cum[r - 1] / run > p) v[order[r]] = -Infinity;
}
