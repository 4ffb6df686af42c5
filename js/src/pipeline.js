// The host-neutral pipeline: a model directory (docs/model-directory.md, format 2) through whichever
// onnxruntime a Host brings (node.js: files + onnxruntime-node; web.js: fetch + onnxruntime-web).
// Pipeline.open checks the directory, opens the graphs and runs the self-test; generate/stream decide
// tokens exactly as the Python runtime does for the same seed; decode turns them into pixels.

import { AbortError, InvalidInputError, ModelDirectoryError, NonFiniteOutputError, ProviderError, TesseraError } from "./errors.js";
import { graphInputs, graphOutputs, readModelDirectory } from "./manifest.js";
import { applyGuidance, guidanceOn, sampleRow } from "./sampling.js";
import { ImageStreams, imageSeeds, defaultRng } from "./rng.js";
import { groupSizes, localityPlan, PLAN_WORD } from "./schedule.js";

/**
 * What differs between Node and the browser: where the files come from and which onnxruntime runs them.
 * @typedef {object} Host
 * @property {any} ort the onnxruntime module (Tensor, InferenceSession)
 * @property {string} runtime its package name, e.g. "onnxruntime-node"
 * @property {string} version its version
 * @property {import("./manifest.js").Store} store the model directory's files
 * @property {string[]} defaultProviders execution providers used when none are given
 * @property {(providers: any[]) => Promise<string[]>} providers the names this runtime knows here
 * @property {(threads: number|undefined) => object} threadOptions session options (or global settings) for a thread count
 * @property {(file: string, external: string|undefined, options: object) => Promise<any>} session opens a listed graph
 */

/** @param {string} a @param {string} b @returns {number} <0, 0, >0 as version a is older, equal, newer */
function compareVersions(a, b) {
  const x = a.split(".").map(Number), y = b.split(".").map(Number);
  for (let i = 0; i < Math.max(x.length, y.length); i++) if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) - (y[i] ?? 0);
  return 0;
}

/** @param {Uint16Array} h @returns {Float32Array} float16 bits -> float32 */
function halfToFloat(h) {
  const out = new Float32Array(h.length);
  for (let i = 0; i < h.length; i++) {
    const b = h[i], s = b & 0x8000 ? -1 : 1, e = (b >> 10) & 31, f = b & 1023;
    out[i] = e === 0 ? s * f * 2 ** -24 : e === 31 ? (f ? NaN : s * Infinity) : s * (1 + f / 1024) * 2 ** (e - 15);
  }
  return out;
}


/**
 * A grid `{height, width}` cell's rotary position (section 5).
 * @param {number} k row-major cell @param {number} w grid width @param {number} ropeGrid
 */
const cellPosition = (k, w, ropeGrid) => 1 + Math.floor(k / w) * ropeGrid + (k % w);

export class Pipeline {
  /**
   * @param {any} manifest @param {string} dir the directory or URL @param {any} ort the onnxruntime module
   * @param {any} transformer @param {any} decoder the graphs' InferenceSessions
   */
  constructor(manifest, dir, ort, transformer, decoder) {
    this.manifest = manifest;
    this.dir = dir;
    this.ort = ort;
    this.transformer = transformer;
    this.decoder = decoder;
    const t = manifest.transformer;
    this.vocab = t.vocab_size;
    this.numClasses = t.num_classes;
    this.grid = t.grid;
    this.ropeGrid = t.rope_grid;
    this.nLayer = t.n_layer;
    this.nKv = t.n_kv_head;
    this.headDim = t.dim / t.n_head;
    this.family = manifest.family;
    this.classNames = manifest.classes.names;
    this.defaults = manifest.generation_defaults;
    this.io = manifest.graphs.transformer.io;
    const tg = manifest.graphs.transformer;
    // The fused graph's 1.22 form refuses several tokens over a past at several rows (section 3.3).
    this.rowByRow = tg.kind === "fused" && compareVersions(tg.min_onnxruntime, "1.32") < 0;
    this.inputs = graphInputs(manifest);
    this.outputs = graphOutputs(manifest);
    /** @type {"float32"|"float16"} */
    this.kvType = "float32";
  }

  /**
   * Checks and opens a model directory through a host (index.js and browser.js wrap this as `load`):
   * manifest, checksums, onnxruntime version, graph I/O, self-test.
   * @param {Host} host
   * @param {{executionProviders?: any[], threads?: number}} [options] providers (default: the host's);
   *   threads: intra-op threads per graph (default: onnxruntime's choice)
   * @returns {Promise<Pipeline>}
   */
  static async open(host, options = {}) {
    const dir = host.store.where, have = host.version, rt = host.runtime;
    const m = await readModelDirectory(host.store);
    for (const [g, e] of Object.entries(m.graphs)) {
      if (g === "tokenizer_encoder") continue;  // editing only: not opened here
      if (compareVersions(have, e.min_onnxruntime) < 0) {
        throw new ModelDirectoryError(`${dir}: graphs.${g} needs onnxruntime >= ${e.min_onnxruntime}, this host has ${rt} ${have}; install a newer ${rt} or export the model with \`tessera export --target-onnxruntime ${have.split(".").slice(0, 2).join(".")}\``);
      }
    }
    const providers = options.executionProviders ?? host.defaultProviders;
    if (!Array.isArray(providers) || !providers.length) throw new InvalidInputError("executionProviders must be a non-empty list such as [\"cpu\"]");
    const known = await host.providers(providers);
    for (const ep of providers) {
      const name = typeof ep === "string" ? ep : /** @type {any} */ (ep)?.name;
      if (!known.includes(name)) throw new ProviderError(`execution provider ${JSON.stringify(name)} is not one ${rt} ${have} knows (${known.join(", ")}); use ${JSON.stringify(host.defaultProviders)}`);
    }
    const threads = options.threads;
    if (threads !== undefined && !(Number.isInteger(threads) && threads >= 1)) throw new InvalidInputError(`threads must be an int >= 1, got ${threads}`);
    const sessionOptions = { executionProviders: providers, graphOptimizationLevel: "all", executionMode: "sequential", ...host.threadOptions(threads) };
    const open = async (/** @type {string} */ g) => {
      try {
        return await host.session(m.graphs[g].file, m.graphs[g].external_data, sessionOptions);
      } catch (e) {
        if (e instanceof TesseraError) throw e;
        const msg = String(/** @type {Error} */ (e)?.message ?? e).split("\n")[0];
        if (/provider|backend/i.test(msg)) throw new ProviderError(`execution providers ${JSON.stringify(providers)}: ${msg}; use ${JSON.stringify(host.defaultProviders)} or a build of ${rt} with that provider`);
        throw new ModelDirectoryError(`${dir}: ${rt} ${have} cannot open ${m.graphs[g].file} (${msg}); re-export the model`);
      }
    };
    const p = new this(m, dir, host.ort, await open("transformer"), await open("tokenizer_decoder"));
    p.checkIO();
    await p.selfTest();
    return p;
  }

  /** The transformer's names, element types and static sizes against the manifest (section 3.1). */
  checkIO() {
    const s = this.transformer, g = this.manifest.graphs;
    const same = (/** @type {readonly string[]} */ a, /** @type {string[]} */ b) => a.length === b.length && a.every((x, i) => x === b[i]);
    if (!same(s.inputNames, this.inputs) || !same(s.outputNames, this.outputs)) {
      throw new ModelDirectoryError(`${this.dir}: ${g.transformer.file}'s inputs/outputs are not the ones tessera.json's graphs.transformer.io names; re-export the model`);
    }
    const meta = /** @type {any[]} */ (/** @type {any} */ (s).inputMetadata ?? []);
    const outMeta = /** @type {any[]} */ (/** @type {any} */ (s).outputMetadata ?? []);
    const bad = (/** @type {string} */ what) => { throw new ModelDirectoryError(`${this.dir}: ${g.transformer.file}: ${what} does not match tessera.json; re-export the model`); };
    const dims = (/** @type {any} */ x) => x?.shape ?? [];
    if (meta.length) {
      const want = ["int64", "int64", "bool"];
      want.forEach((t, i) => { if (meta[i].isTensor && meta[i].type !== t) bad(`input ${this.inputs[i]} of type ${meta[i].type}`); });
      const kv = meta[3];
      if (kv?.isTensor) {
        if (kv.type !== "float32" && kv.type !== "float16") bad(`past type ${kv.type}`);
        this.kvType = kv.type;
        const d = dims(kv);
        if ((typeof d[1] === "number" && d[1] !== this.nKv) || (typeof d[3] === "number" && d[3] !== this.headDim)) bad(`past shape [${d}]`);
      }
      const l = dims(outMeta[0]);
      if (typeof l[2] === "number" && l[2] !== this.vocab) bad(`logits shape [${l}]`);
    }
    const dec = g.tokenizer_decoder;
    if (this.decoder.inputNames[0] !== dec.inputs[0] || this.decoder.outputNames[0] !== dec.outputs[0]) {
      throw new ModelDirectoryError(`${this.dir}: ${dec.file}'s input/output names are not ${dec.inputs[0]} -> ${dec.outputs[0]}; re-export the model`);
    }
  }

  /** An empty cache for R rows: every past of length 0. @param {number} rows */
  emptyCache(rows) {
    return { rows, len: 0, kv: Array.from({ length: 2 * this.nLayer }, () => new this.ort.Tensor(this.kvType, this.kvType === "float16" ? new Uint16Array(0) : new Float32Array(0), [rows, this.nKv, 0, this.headDim])) };
  }

  /**
   * One transformer call appending S tokens per row (sections 3.1-3.3). Shared-buffer graphs are fed an
   * exact past of `len` entries and their present read back (section 3.2's host without IO binding);
   * on the fused graph's 1.22 form, S > 1 tokens over a past at several rows run one row per call, or one
   * token per call when S <= R (the Python runtime's choice: fewer runs, the same arithmetic).
   * @param {{rows: number, len: number, kv: any[]}} cache updated in place
   * @param {number[][]} ids `[R][S]` @param {number[][]} pos `[R][S]` @param {boolean[][][]} mask `[R][S][len+S]`
   * @returns {Promise<Float32Array[][]>} logits `[R][S]` rows of V
   */
  async call(cache, ids, pos, mask) {
    const R = cache.rows, S = ids[0].length;
    if (this.rowByRow && S > 1 && cache.len > 0 && R > 1 && S <= R) {
      // One token per call, all rows together (the whole call's logits: queries are causal in call order),
      // as the Python runtime splits when a call has no more tokens than rows.
      /** @type {Float32Array[][]} */
      const out = Array.from({ length: R }, () => []);
      for (let j = 0; j < S; j++) {
        const P = cache.len;
        const lg = await this.call(cache, ids.map((r) => [r[j]]), pos.map((r) => [r[j]]), mask.map((r) => [r[j].slice(0, P + 1)]));
        lg.forEach((r, i) => out[i].push(r[0]));
      }
      return out;
    }
    if (this.rowByRow && S > 1 && cache.len > 0 && R > 1) {
      const P = cache.len, H = this.nKv, D = this.headDim;
      /** @type {Float32Array[][]} */
      const out = [];
      /** @type {(Float32Array|Uint16Array)[][]} */
      const presents = [];
      for (let r = 0; r < R; r++) {
        // Row r of an exact past [R, H, P, D] is one contiguous block: a view, not a copy.
        const kv = cache.kv.map((t) => {
          const src = /** @type {Float32Array|Uint16Array} */ (t.data);
          return new this.ort.Tensor(this.kvType, src.subarray(r * H * P * D, (r + 1) * H * P * D), [1, H, P, D]);
        });
        const row = { rows: 1, len: P, kv };
        out.push((await this.call(row, [ids[r]], [pos[r]], [mask[r]]))[0]);
        presents.push(row.kv.map((t) => /** @type {Float32Array|Uint16Array} */ (t.data)));
      }
      cache.kv = cache.kv.map((t, i) => {
        const whole = new /** @type {any} */ (/** @type {any} */ (t.data).constructor)(R * H * (P + S) * D);
        presents.forEach((p, r) => whole.set(p[i], r * H * (P + S) * D));
        return new this.ort.Tensor(this.kvType, whole, [R, H, P + S, D]);
      });
      cache.len = P + S;
      return out;
    }
    const P = cache.len;
    /** @type {Record<string, any>} */
    const feeds = {
      [this.inputs[0]]: new this.ort.Tensor("int64", BigInt64Array.from(ids.flat(), BigInt), [R, S]),
      [this.inputs[1]]: new this.ort.Tensor("int64", BigInt64Array.from(pos.flat(), BigInt), [R, S]),
      [this.inputs[2]]: new this.ort.Tensor("bool", Uint8Array.from(mask.flat(2), (b) => (b ? 1 : 0)), [R, S, P + S]),
    };
    cache.kv.forEach((t, i) => { feeds[this.inputs[3 + i]] = t; });
    const res = await this.transformer.run(feeds);
    const raw = res[this.outputs[0]];
    const data = raw.type === "float16" ? halfToFloat(/** @type {Uint16Array} */ (raw.data)) : /** @type {Float32Array} */ (raw.data);
    for (let i = 0; i < data.length; i++) {
      if (!Number.isFinite(data[i])) throw new NonFiniteOutputError(`${this.dir}: the transformer produced a NaN or infinite logit (corrupt weights or an fp16 overflow); re-export the model`);
    }
    cache.kv = this.outputs.slice(1).map((n) => res[n]);
    cache.len = P + S;
    const V = this.vocab;
    return Array.from({ length: R }, (_, r) => Array.from({ length: S }, (_, s) => data.subarray((r * S + s) * V, (r * S + s + 1) * V)));
  }

  /** Forget cached entries past `len` (the any-order decoder's queries). @param {{rows: number, len: number, kv: any[]}} cache @param {number} len */
  truncate(cache, len) {
    const H = this.nKv, D = this.headDim, R = cache.rows, P = cache.len;
    cache.kv = cache.kv.map((t) => {
      const src = /** @type {Float32Array|Uint16Array} */ (t.data);
      const out = new /** @type {any} */ (src.constructor)(R * H * len * D);
      for (let rh = 0; rh < R * H; rh++) out.set(src.subarray(rh * P * D, rh * P * D + len * D), rh * len * D);
      return new this.ort.Tensor(this.kvType, out, [R, H, len, D]);
    });
    cache.len = len;
  }

  /** The recorded probe (section 6); refuses the directory when it fails. */
  async selfTest() {
    const st = this.manifest.graphs.transformer.self_test;
    const fix = "re-export the model";
    const n = this.grid * this.grid, w = this.grid;
    const cells = [...new Set([0, Math.min(1, n - 1), Math.min(w, n - 1), n - 1])].sort((a, b) => a - b);
    const tokens = cells.map((_, k) => (k * 7919 + 3) % this.vocab);
    const wantIds = [[this.vocab, ...tokens], [this.vocab + this.numClasses, ...tokens]];
    const wantPos = [0, ...cells.map((c) => cellPosition(c, w, this.ropeGrid))];
    if (JSON.stringify(st.input_ids) !== JSON.stringify(wantIds) || JSON.stringify(st.position_ids) !== JSON.stringify([wantPos, wantPos])) {
      throw new ModelDirectoryError(`${this.dir}: tessera.json's self_test inputs do not follow from its transformer fields (edited layout fields?); ${fix}`);
    }
    const idx = st.indices, want = st.values, tol = st.tolerance;
    if (!Array.isArray(idx) || !idx.length || idx.length > 128 || new Set(idx).size !== idx.length || !idx.every((i) => Number.isInteger(i) && i >= 0 && i < this.vocab)
      || !Array.isArray(want) || want.length !== 2 || !want.every((r) => Array.isArray(r) && r.length === idx.length && r.every(Number.isFinite))
      || !(typeof tol === "number" && tol > 0 && tol <= 1)) {
      throw new ModelDirectoryError(`${this.dir}: tessera.json's graphs.transformer.self_test is malformed; ${fix}`);
    }
    const L = wantPos.length;
    const mask = [0, 1].map(() => Array.from({ length: L }, (_, i) => Array.from({ length: L }, (_, j) => j <= i)));
    const logits = await this.call(this.emptyCache(2), wantIds, [wantPos, wantPos], mask);
    let diff = 0, scale = 1e-6;
    for (let r = 0; r < 2; r++) {
      idx.forEach((t, k) => { diff = Math.max(diff, Math.abs(logits[r][L - 1][t] - want[r][k])); scale = Math.max(scale, Math.abs(want[r][k])); });
    }
    if (!(diff / scale <= tol)) {
      throw new ModelDirectoryError(`${this.dir}: the transformer failed its self-test (relative error ${(diff / scale).toExponential(2)} > ${tol}): the graph and tessera.json disagree; ${fix}`);
    }
  }

  /**
   * A class id or name -> id (Python's rule: names ignore case, spaces and `_`; digits are an id;
   * `id:N` / `name:X` say which when a name is also digits).
   * @param {number|string} label @returns {number}
   */
  classId(label) {
    const names = this.classNames, n = names.length;
    const key = (/** @type {string} */ s) => s.replace(/_/g, " ").toLowerCase().split(/\s+/).filter(Boolean).join(" ");
    const find = (/** @type {string} */ s) => { if (names.includes(s)) return names.indexOf(s); const i = names.map(key).indexOf(key(s)); return i < 0 ? null : i; };
    const byName = (/** @type {string} */ s) => {
      const i = find(s);
      if (i !== null) return i;
      throw new InvalidInputError(`unknown class name ${JSON.stringify(label)}; valid classes: ${names.slice(0, 20).map((/** @type {string} */ x, /** @type {number} */ j) => `${j}=${x}`).join(", ")}${n > 20 ? " ..." : ""}`);
    };
    let id;
    if (typeof label === "string") {
      const text = label.trim(), c = text.indexOf(":");
      const prefix = c < 0 ? "" : text.slice(0, c).toLowerCase(), rest = c < 0 ? "" : text.slice(c + 1).trim();
      if (!names.includes(label) && (prefix === "id" || prefix === "name") && rest) {
        if (prefix === "name") return byName(rest);
        if (!/^-?\d+$/.test(rest)) throw new InvalidInputError(`class label ${JSON.stringify(text)}: id: takes an integer id (0..${n - 1})`);
        id = Number(rest);
      } else if (!/^-?\d+$/.test(text)) {
        return byName(label);
      } else {
        id = Number(text);
        const named = find(label);
        if (named !== null && named !== id) {
          if (id >= 0 && id < n) throw new InvalidInputError(`class label ${JSON.stringify(text)} is ambiguous in this model: class id ${id} (${JSON.stringify(names[id])}) or the class named ${JSON.stringify(text)} (id ${named}); write id:${text} or name:${text}`);
          return named;
        }
      }
    } else if (Number.isInteger(label)) {
      id = label;
    } else {
      throw new InvalidInputError(`class label ${JSON.stringify(label)} is neither an id nor a name`);
    }
    if (!(id >= 0 && id < n)) throw new InvalidInputError(`class id ${id} is out of range: this model has classes 0..${n - 1}${names.some(Boolean) ? ` (${names.slice(0, 10).join(", ")}${n > 10 ? " ..." : ""})` : ""}`);
    return id;
  }

  /**
   * The options a call runs with (section 7.1), checked.
   * @param {GenerateOptions} o
   */
  options(o) {
    const d = this.defaults;
    const num = (/** @type {string} */ name, /** @type {any} */ v, /** @type {any} */ dflt) => {
      const x = v ?? dflt;
      if (typeof x !== "number" || !Number.isFinite(x)) throw new InvalidInputError(`${name} must be a finite number, got ${String(v)}`);
      return x;
    };
    const guidanceScale = num("guidanceScale", o.guidanceScale, d.guidance_scale);
    const temperature = num("temperature", o.temperature, d.temperature);
    const topK = num("topK", o.topK, d.top_k);
    const topP = num("topP", o.topP, d.top_p);
    if (guidanceScale < 0) throw new InvalidInputError(`guidanceScale must be >= 0 (<= 1 = off), got ${guidanceScale}`);
    if (temperature < 0) throw new InvalidInputError(`temperature must be >= 0 (0 = greedy), got ${temperature}`);
    if (!Number.isInteger(topK) || topK < 0) throw new InvalidInputError(`topK must be an int >= 0 (0 = off), got ${topK}`);
    if (!(topP > 0 && topP <= 1)) throw new InvalidInputError(`topP must be in (0, 1] (1 = off), got ${topP}`);
    let steps = o.steps;
    if (steps !== undefined && (!Number.isInteger(steps) || steps < 1)) throw new InvalidInputError(`steps must be an int >= 1, got ${steps}`);
    if (steps !== undefined && this.family !== "anyorder-c2i") throw new InvalidInputError(`steps applies to any-order models only; ${this.manifest.name || "this model"} is ${this.family}`);
    return { guidanceScale, sampling: { temperature, topK: Math.min(topK, this.vocab), topP }, steps };
  }

  /**
   * Generate token grids: one per class label.
   * @param {Array<number|string>|number|string} classes
   * @param {GenerateOptions} [options]
   * @returns {Promise<number[][][]>} tokens `[B][h][w]`
   */
  async generate(classes, options = {}) {
    let last = null;
    for await (const step of this.steps(classes, options)) last = step;
    return /** @type {any} */ (last).tokens;
  }

  /**
   * Generate, yielding after each step `{step, steps, tokens}` with the cells decided so far (-1 = open);
   * with `previewEvery` ("row" or cells per frame) also `images` (partial, then the final decode) when a frame is due.
   * @param {Array<number|string>|number|string} classes
   * @param {GenerateOptions} [options]
   * @returns {AsyncGenerator<{step: number, steps: number, tokens: number[][][], images?: Image[]}>}
   */
  async *stream(classes, options = {}) {
    const every = options.previewEvery;
    if (every === undefined) return yield* this.steps(classes, options);
    if (every !== "row" && !(Number.isInteger(every) && every >= 1)) throw new InvalidInputError(`previewEvery must be an int >= 1 (cells per frame) or "row", got ${JSON.stringify(every)}`);
    const n = every === "row" && this.family === "llamagen-c2i" ? this.grid : every === "row" ? 1 : every;
    let shown = 0;
    /** @type {{tokens: number[][][], images: Image[]}|null} */
    let last = null;
    for await (const s of this.steps(classes, options)) {
      const due = s.step === s.steps || Math.floor(s.step / n) > Math.floor(shown / n);
      if (!due) { yield s; continue; }
      shown = s.step;
      /** @type {Image[]} */
      const images = s.step === s.steps ? await this.decode(s.tokens) : await this.preview(s.tokens, last);
      last = { tokens: s.tokens, images };
      yield { ...s, images };
    }
  }

  /**
   * Partial grids -> partial images, as the Python runtime's previews: open cells are decoded as the
   * image's most frequent decided code (its background, in practice) and painted over in mid-grey. Given
   * the previous frame, only the band of token rows that changed since is decoded (rows may show faint
   * seams until the final, whole decode).
   * @param {number[][][]} tokens `[B][h][w]`, -1 = open
   * @param {{tokens: number[][][], images: Image[]}|null} [last] the previous frame
   * @returns {Promise<Image[]>}
   */
  async preview(tokens, last = null) {
    const h = tokens[0].length, w = tokens[0][0].length;
    // the rows written since the last frame (the first frame: from the top to the last row written so far)
    const changed = Array.from({ length: h }, (_, r) => tokens.some((g, b) => g[r].some((t, c) => (last ? t !== last.tokens[b][r][c] : t >= 0))));
    const lo = last ? changed.indexOf(true) : 0, hi = last ? changed.lastIndexOf(true) + 1 : Math.max(1, changed.lastIndexOf(true) + 1);
    const images = tokens.map((_, b) => (last ? { ...last.images[b], data: last.images[b].data.slice() } : null));
    if (lo < 0) return /** @type {Image[]} */ (images);
    const filled = tokens.map((g) => {
      const count = new Map();
      for (const t of g.flat()) if (t >= 0) count.set(t, (count.get(t) ?? 0) + 1);
      let mode = 0, best = 0;
      for (const [t, c] of count) if (c > best || (c === best && t < mode)) [mode, best] = [t, c];
      return g.slice(lo, hi).map((r) => r.map((t) => (t >= 0 ? t : mode)));
    });
    const band = await this.decode(filled);
    return band.map((im, b) => {
      const ph = im.height / (hi - lo), pw = im.width / w, C = im.channels, W = im.width;
      const out = images[b] ?? { width: W, height: ph * h, channels: C, data: new Uint8Array(ph * h * W * C).fill(128) };
      out.data.set(im.data, lo * ph * W * C);
      for (let y = lo * ph; y < hi * ph; y++) {
        for (let x = 0; x < W; x++) if (tokens[b][Math.floor(y / ph)][Math.floor(x / pw)] < 0) out.data.fill(128, (y * W + x) * C, (y * W + x + 1) * C);
      }
      return out;
    });
  }

  /**
   * The decisions, one step at a time (stream without previews).
   * @param {Array<number|string>|number|string} classes @param {GenerateOptions} options
   * @returns {AsyncGenerator<{step: number, steps: number, tokens: number[][][]}>}
   */
  async *steps(classes, options) {
    const labels = (Array.isArray(classes) ? classes : [classes]).map((c) => this.classId(c));
    if (!labels.length) throw new InvalidInputError("classes is empty; give at least one class id or name");
    const o = this.options(options);
    const B = labels.length, h = this.grid, w = this.grid, n = h * w;
    const seeds = imageSeeds(options.seed ?? 0, B);
    const guided = guidanceOn(o.guidanceScale);
    const R = guided ? 2 * B : B;
    const rowClass = Array.from({ length: R }, (_, r) => this.vocab + (r < B ? labels[r] : this.numClasses));
    const streams = new ImageStreams(seeds, n);
    const flat = Array.from({ length: B }, () => new Array(n).fill(-1));
    const signal = options.signal;
    const check = () => { if (signal?.aborted) throw new AbortError("generation cancelled (AbortSignal)"); };
    const decide = (/** @type {Float32Array[]} */ rows) => {
      // rows: one query's logits for every row -> one token per image (section 7.4)
      const g = guided ? applyGuidance(concat(rows), B, this.vocab, o.guidanceScale) : concat(rows.slice(0, B));
      return Array.from({ length: B }, (_, i) => sampleRow(g.subarray(i * this.vocab, (i + 1) * this.vocab), o.sampling, () => streams.next(i)));
    };
    const grids = () => flat.map((f) => Array.from({ length: h }, (_, r) => f.slice(r * w, (r + 1) * w)));
    const cache = this.emptyCache(R);
    check();
    if (this.family === "llamagen-c2i") {
      let lg = await this.call(cache, rowClass.map((c) => [c]), rowClass.map(() => [0]), rowClass.map(() => [[true]]));
      for (let j = 0; j < n; j++) {
        const tok = decide(lg.map((r) => r[0]));
        tok.forEach((t, i) => { flat[i][j] = t; });
        yield { step: j + 1, steps: n, tokens: grids() };
        if (j === n - 1) break;
        check();
        const p = cellPosition(j, w, this.ropeGrid);
        lg = await this.call(cache, Array.from({ length: R }, (_, r) => [tok[r % B]]), rowClass.map(() => [p]), rowClass.map(() => [new Array(j + 2).fill(true)]));
      }
      return;
    }
    // any-order (section 7.6): per image a locality plan from its plan stream
    const T = Math.min(o.steps ?? 8, n);
    const sizes = groupSizes(n, T);
    const plans = seeds.map((s) => localityPlan(h, w, sizes, defaultRng([s, PLAN_WORD])));
    const query = this.vocab + this.numClasses + 1;
    /** @type {number[][]} */
    let prev = [];  // per image: the codes of the previous group
    for (let t = 0; t < T; t++) {
      check();
      const c = sizes[t], P = cache.len;
      const codes = t === 0 ? 1 : sizes[t - 1];
      const ids = [], pos = [], mask = [];
      for (let r = 0; r < R; r++) {
        const i = r % B;
        const cId = t === 0 ? [rowClass[r]] : prev[i];
        const cPos = t === 0 ? [0] : plans[i][t - 1].map((k) => cellPosition(k, w, this.ropeGrid));
        ids.push([...cId, ...new Array(c).fill(query)]);
        pos.push([...cPos, ...plans[i][t].map((k) => cellPosition(k, w, this.ropeGrid))]);
        mask.push(Array.from({ length: codes + c }, (_, q) => Array.from({ length: P + codes + c }, (_, j) => j < P || (q < codes ? j - P <= q : j - P < codes || j - P === q))));
      }
      const lg = await this.call(cache, ids, pos, mask);
      this.truncate(cache, P + codes);
      prev = Array.from({ length: B }, () => []);
      for (let q = 0; q < c; q++) {
        const tok = decide(lg.map((r) => r[codes + q]));
        tok.forEach((tk, i) => { flat[i][plans[i][t][q]] = tk; prev[i].push(tk); });
      }
      yield { step: t + 1, steps: T, tokens: grids() };
    }
  }

  /**
   * Token grids -> 8-bit pixels (section 8).
   * @param {number[][][]} tokens `[B][h][w]`
   * @returns {Promise<Image[]>} HWC pixels
   */
  async decode(tokens) {
    const B = tokens.length, h = tokens[0]?.length ?? 0, w = tokens[0]?.[0]?.length ?? 0;
    if (!B || !h || !w || tokens.some((g) => g.length !== h || g.some((r) => r.length !== w))) throw new InvalidInputError("decode: tokens must be a non-empty [images][rows][cols] grid");
    if (h > this.ropeGrid || w > this.ropeGrid) throw new InvalidInputError(`decode: a ${h}x${w} grid is larger than this model's ${this.ropeGrid}x${this.ropeGrid} limit`);
    const flatTok = tokens.flat(2);
    if (!flatTok.every((t) => Number.isInteger(t) && t >= 0 && t < this.vocab)) throw new InvalidInputError(`decode: every token must be an int in 0..${this.vocab - 1}`);
    const dec = this.manifest.graphs.tokenizer_decoder;
    const res = await this.decoder.run({ [dec.inputs[0]]: new this.ort.Tensor("int64", BigInt64Array.from(flatTok, BigInt), [B, h, w]) });
    const out = res[dec.outputs[0]];
    const x = out.type === "float16" ? halfToFloat(/** @type {Uint16Array} */ (out.data)) : /** @type {Float32Array} */ (out.data);
    const [, C, H, W] = /** @type {number[]} */ (out.dims);
    const f = Math.fround;
    return Array.from({ length: B }, (_, b) => {
      const data = new Uint8Array(H * W * C);
      for (let c = 0; c < C; c++) {
        for (let p = 0; p < H * W; p++) {
          const v = Math.floor(f(f(f(x[(b * C + c) * H * W + p] + 1) * 127.5) + 0.5));
          data[p * C + c] = v < 0 ? 0 : v > 255 ? 255 : v;
        }
      }
      return { width: W, height: H, channels: C, data };
    });
  }
}

/** @param {Float32Array[]} rows @returns {Float32Array} */
function concat(rows) {
  const V = rows[0].length, out = new Float32Array(rows.length * V);
  rows.forEach((r, i) => out.set(r, i * V));
  return out;
}

/**
 * @typedef {{width: number, height: number, channels: number, data: Uint8Array}} Image 8-bit pixels, HWC
 *
 * @typedef {object} GenerateOptions
 * @property {number} [guidanceScale] > 1 turns guidance on (default: the model's)
 * @property {number} [temperature] 0 = greedy
 * @property {number} [topK] 0 = off
 * @property {number} [topP] 1 = off
 * @property {number|number[]} [seed] image i gets seed + i, or seeds[i] (default 0)
 * @property {number} [steps] any-order models: decoding steps (default 8)
 * @property {AbortSignal} [signal] cancels between steps
 * @property {"row"|number} [previewEvery] stream: partial images every token row or every N cells
 */

