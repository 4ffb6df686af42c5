// numpy's `default_rng(seed).random()` stream, bit for bit (contract section 7.3): SeedSequence
// (pool of 4 uint32 words) seeding PCG64 (128-bit LCG, XSL-RR output), doubles (x >> 11) * 2^-53.
// A seed names an image on every host, so this must match numpy exactly.

import { InvalidInputError } from "./errors.js";

const INIT_A = 0x43b0d7e5, MULT_A = 0x931e8875, INIT_B = 0x8b51f9dd, MULT_B = 0x58f38ded;
const MIX_MULT_L = 0xca01f9dd, MIX_MULT_R = 0x4973f715;
const POOL = 4;
const MASK64 = (1n << 64n) - 1n;
const MASK128 = (1n << 128n) - 1n;
const MULT = 0x2360ED051FC65DA44385DF649FCCF645n;

/** @param {number} a @param {number} b @returns {number} uint32 product mod 2^32 */
const mul32 = (a, b) => Math.imul(a, b) >>> 0;

/**
 * numpy's `_coerce_to_uint32_array`: an int becomes its little-endian 32-bit words ([0] for 0),
 * a list the concatenation of its items' words.
 * @param {number|bigint|Array<number|bigint>} x
 * @returns {number[]}
 */
function uint32Words(x) {
  if (Array.isArray(x)) return x.flatMap(uint32Words);
  let n = BigInt(x);
  if (n < 0n) throw new RangeError(`a seed must be an int >= 0, got ${x}`);
  if (n === 0n) return [0];
  const out = [];
  while (n > 0n) { out.push(Number(n & 0xffffffffn)); n >>= 32n; }
  return out;
}

/**
 * numpy's SeedSequence without spawn key: `generateState(n)` gives its `generate_state(n, uint32)`.
 */
export class SeedSequence {
  /** @param {number|bigint|Array<number|bigint>} entropy */
  constructor(entropy) {
    const words = uint32Words(entropy);
    let hashConst = INIT_A;
    const hashmix = (/** @type {number} */ value) => {
      value = (value ^ hashConst) >>> 0;
      hashConst = mul32(hashConst, MULT_A);
      value = mul32(value, hashConst);
      return (value ^ (value >>> 16)) >>> 0;
    };
    const mix = (/** @type {number} */ x, /** @type {number} */ y) => {
      const r = (mul32(MIX_MULT_L, x) - mul32(MIX_MULT_R, y)) >>> 0;
      return (r ^ (r >>> 16)) >>> 0;
    };
    const pool = new Array(POOL);
    for (let i = 0; i < POOL; i++) pool[i] = hashmix(i < words.length ? words[i] : 0);
    for (let s = 0; s < POOL; s++) {
      for (let d = 0; d < POOL; d++) if (s !== d) pool[d] = mix(pool[d], hashmix(pool[s]));
    }
    for (let s = POOL; s < words.length; s++) {
      for (let d = 0; d < POOL; d++) pool[d] = mix(pool[d], hashmix(words[s]));
    }
    /** @type {number[]} */
    this.pool = pool;
  }

  /** @param {number} n @returns {number[]} n uint32 words */
  generateState(n) {
    let hashConst = INIT_B;
    const out = [];
    for (let i = 0; i < n; i++) {
      let v = (this.pool[i % POOL] ^ hashConst) >>> 0;
      hashConst = mul32(hashConst, MULT_B);
      v = mul32(v, hashConst);
      out.push((v ^ (v >>> 16)) >>> 0);
    }
    return out;
  }
}

/** numpy's PCG64 (XSL-RR 128/64), seeded as `PCG64(SeedSequence(entropy))`. */
export class PCG64 {
  /** @param {number|bigint|Array<number|bigint>} entropy */
  constructor(entropy) {
    const w = new SeedSequence(entropy).generateState(8).map(BigInt);
    const u64 = (/** @type {number} */ k) => w[2 * k] | (w[2 * k + 1] << 32n);  // little-endian uint64 view
    const seed = (u64(0) << 64n) | u64(1);
    this.inc = (((u64(2) << 64n) | u64(3)) << 1n | 1n) & MASK128;
    this.state = 0n;
    this.step();
    this.state = (this.state + seed) & MASK128;
    this.step();
  }

  step() { this.state = (this.state * MULT + this.inc) & MASK128; }

  /** @returns {bigint} the next uint64 */
  nextUint64() {
    this.step();
    const s = this.state;
    const x = ((s >> 64n) ^ s) & MASK64;
    const rot = s >> 122n;
    return ((x >> rot) | (x << ((64n - rot) & 63n))) & MASK64;
  }

  /** @returns {number} numpy's `random()`: a double in [0, 1) */
  random() { return Number(this.nextUint64() >> 11n) * 2 ** -53; }
}

/** numpy's `default_rng(entropy)`, reduced to `random()`. */
export function defaultRng(/** @type {number|bigint|Array<number|bigint>} */ entropy) { return new PCG64(entropy); }

/**
 * One stream per image (contract 7.3): image i's uniforms come from `default_rng(seeds[i])`, in the
 * order the image decides its cells, whatever other images share the call.
 */
export class ImageStreams {
  /** @param {number[]} seeds @param {number} draws how many uniforms each image may take */
  constructor(seeds, draws) {
    this.seeds = seeds.slice();
    this.rngs = seeds.map((s) => defaultRng(s));
    this.left = seeds.map(() => draws);
  }

  /** @param {number} image @returns {number} that image's next uniform */
  next(image) {
    if (this.left[image]-- <= 0) throw new RangeError(`image ${image}'s stream has no draws left`);
    return this.rngs[image].random();
  }
}

/**
 * The seed of each of `count` images: `seed + i` for an int, else the list as given.
 * @param {number|number[]} seed @param {number} count @returns {number[]}
 */
export function imageSeeds(seed, count) {
  if (Array.isArray(seed)) {
    if (seed.length !== count) throw new InvalidInputError(`seed: ${seed.length} seeds for ${count} images; give one per image or one int`);
    seed.forEach(checkSeed);
    return seed.slice();
  }
  checkSeed(seed);
  return Array.from({ length: count }, (_, i) => seed + i);
}

function checkSeed(/** @type {unknown} */ s) {
  if (!Number.isSafeInteger(s) || /** @type {number} */ (s) < 0) {
    throw new InvalidInputError(`seed must be an int >= 0, got ${String(s)}`);
  }
}
