// Reading and checking a model directory's `tessera.json` (contract sections 1-2, format 2).
// A model directory is untrusted input: nothing is opened before every check has passed.

import { ModelDirectoryError } from "./errors.js";

export const FORMAT = "tessera-model";
export const FORMAT_VERSION = 2;
export const FAMILIES = ["llamagen-c2i", "anyorder-c2i"];
export const MAX_MANIFEST = 64 * 1024 * 1024;
export const FIX = "re-export the model";

/** @param {string} msg @returns {never} */
export function fail(msg) { throw new ModelDirectoryError(msg); }

const isObj = (/** @type {unknown} */ x) => typeof x === "object" && x !== null && !Array.isArray(x);
const isInt = (/** @type {unknown} */ x) => typeof x === "number" && Number.isInteger(x);
const isNum = (/** @type {unknown} */ x) => typeof x === "number" && Number.isFinite(x);
const isName = (/** @type {unknown} */ x) => typeof x === "string" && x.length > 0 && x.length <= 256;

/** @param {any} obj @param {string} where @param {string[]} allowed */
function onlyKeys(obj, where, allowed) {
  if (!isObj(obj)) fail(`tessera.json: ${where} must be an object; ${FIX}`);
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) fail(`tessera.json: unknown field ${where}.${k} (a typo?); ${FIX}`);
  }
}

/** @param {any} obj @param {string} where @param {string} key @param {number} lo @param {number} hi @returns {number} */
function int(obj, where, key, lo, hi) {
  const v = obj[key];
  if (!isInt(v) || v < lo || v > hi) fail(`tessera.json: ${where}.${key} must be an int in ${lo}..${hi}, got ${JSON.stringify(v)}; ${FIX}`);
  return v;
}

/** @param {any} obj @param {string} where @param {string} key @param {string[]} values @returns {string} */
function oneOf(obj, where, key, values) {
  const v = obj[key];
  if (!values.includes(v)) fail(`tessera.json: ${where}.${key} must be one of ${values.join(", ")}, got ${JSON.stringify(v)}; ${FIX}`);
  return v;
}

/** @param {unknown} name @param {string} where @returns {string} a plain file name */
export function plainName(name, where) {
  if (typeof name !== "string" || !name || /[/\\:\0]/.test(name) || name === "." || name === "..") {
    fail(`tessera.json: ${where} must be a plain file name inside the model directory, got ${JSON.stringify(name)}; ${FIX}`);
  }
  return name;
}

/**
 * @param {any} m the parsed manifest
 * Checks types, ranges and cross-checks of section 2 and returns it (format 2 only).
 */
export function checkManifest(m) {
  if (!isObj(m)) fail(`tessera.json is not a JSON object; ${FIX}`);
  if (m.format !== FORMAT) fail(`tessera.json: format must be "${FORMAT}", got ${JSON.stringify(m.format)}; this is not a Tessera model directory`);
  if (!isInt(m.format_version)) fail(`tessera.json: format_version must be an int; ${FIX}`);
  if (m.format_version > FORMAT_VERSION) fail(`tessera.json: format_version ${m.format_version} is newer than this host knows (${FORMAT_VERSION}); upgrade tessera-ar`);
  if (m.format_version < FORMAT_VERSION) fail(`tessera.json: format_version ${m.format_version} is not read by the JavaScript host; convert it with \`tessera export --from DIR --out NEW\``);
  for (const k of ["name", "description"]) if (typeof m[k] !== "string") fail(`tessera.json: ${k} must be a string; ${FIX}`);
  if (!FAMILIES.includes(m.family)) fail(`tessera.json: family ${JSON.stringify(m.family)} is a family this host does not know (${FAMILIES.join(", ")}); upgrade tessera-ar`);
  onlyKeys(m.conditioning, "conditioning", ["kind"]);
  oneOf(m.conditioning, "conditioning", "kind", ["class"]);

  const t = m.transformer;
  onlyKeys(t, "transformer", ["dim", "n_layer", "n_head", "n_kv_head", "vocab_size", "num_classes", "grid", "rope_grid", "parameters"]);
  const dim = int(t, "transformer", "dim", 1, 65536);
  int(t, "transformer", "n_layer", 1, 1024);
  const nHead = int(t, "transformer", "n_head", 1, 1024);
  const nKv = int(t, "transformer", "n_kv_head", 1, nHead);
  if (nHead % nKv) fail(`tessera.json: transformer.n_kv_head ${nKv} must divide n_head ${nHead}; ${FIX}`);
  if (dim % nHead || dim / nHead > 1024) fail(`tessera.json: transformer.dim ${dim} must be n_head x a head size in 1..1024; ${FIX}`);
  int(t, "transformer", "vocab_size", 1, 2 ** 20);
  const classes = int(t, "transformer", "num_classes", 1, 100000);
  const grid = int(t, "transformer", "grid", 1, 256);
  int(t, "transformer", "rope_grid", grid, 1024);
  if ("parameters" in t) int(t, "transformer", "parameters", 0, Number.MAX_SAFE_INTEGER);

  const tok = m.tokenizer;
  onlyKeys(tok, "tokenizer", ["downsample", "parameters", "activation_per_pixel"]);
  const down = int(tok, "tokenizer", "downsample", 1, 1024);
  if (grid * down > 16384) fail(`tessera.json: transformer.grid x tokenizer.downsample is ${grid * down} pixels, above 16384; ${FIX}`);
  if ("parameters" in tok) int(tok, "tokenizer", "parameters", 0, Number.MAX_SAFE_INTEGER);
  if ("activation_per_pixel" in tok && !(isNum(tok.activation_per_pixel) && tok.activation_per_pixel > 0)) fail(`tessera.json: tokenizer.activation_per_pixel must be a number > 0; ${FIX}`);
  onlyKeys(m.image, "image", ["channels"]);
  int(m.image, "image", "channels", 1, 16);
  onlyKeys(m.classes, "classes", ["names"]);
  const names = m.classes.names;
  if (!Array.isArray(names) || names.length !== classes || !names.every((n) => typeof n === "string" && n.length <= 256)) {
    fail(`tessera.json: classes.names must be ${classes} strings (transformer.num_classes) of at most 256 characters; ${FIX}`);
  }

  onlyKeys(m.graphs, "graphs", Object.keys(m.graphs ?? {}));
  for (const g of ["transformer", "tokenizer_decoder"]) if (!(g in m.graphs)) fail(`tessera.json: graphs.${g} is missing; ${FIX}`);
  for (const [g, e] of Object.entries(m.graphs)) {
    const where = `graphs.${g}`;
    const common = ["file", "external_data", "min_onnxruntime", "precision", "method", "opset", "options", "psnr_db", "min_psnr_db"];
    const extra = g === "transformer" ? ["kind", "kv_cache", "multi_query", "io", "self_test"] : ["inputs", "outputs"];
    onlyKeys(e, where, [...common, ...extra]);
    plainName(e.file, `${where}.file`);
    if ("external_data" in e) plainName(e.external_data, `${where}.external_data`);
    if (typeof e.min_onnxruntime !== "string" || !/^\d+(\.\d+)*$/.test(e.min_onnxruntime)) fail(`tessera.json: ${where}.min_onnxruntime must be a version such as "1.22"; ${FIX}`);
    oneOf(e, where, "precision", ["fp32", "fp16", "int8", "int4"]);
    if (typeof e.method !== "string") fail(`tessera.json: ${where}.method must be a string; ${FIX}`);
    if ("opset" in e) int(e, where, "opset", 1, 1000);
    if (g === "transformer") {
      oneOf(e, where, "kind", ["fused", "portable"]);
      const kv = oneOf(e, where, "kv_cache", ["shared-buffer", "concat"]);
      // Written until the fused graph rotated by position itself (section 3.3): "one-query-per-call" marks a
      // graph whose multi-token calls rotate by index, which no host may run.
      if ("multi_query" in e && oneOf(e, where, "multi_query", ["batched", "one-query-per-call"]) !== "batched") {
        fail(`tessera.json: ${where}.multi_query is "one-query-per-call": its transformer graph, exported by an older tessera, rotates the tokens of a multi-token call by index, not position; re-export it: tessera export --from DIR --out NEW`);
      }
      const io = e.io;
      const plain = ["input_ids", "position_ids", "attention_mask", "logits"];
      const pats = ["past_key_names", "past_value_names", "present_key_names", "present_value_names"];
      onlyKeys(io, `${where}.io`, [...plain, ...pats]);
      for (const k of plain) if (!isName(io[k]) || /[{}]/.test(io[k])) fail(`tessera.json: ${where}.io.${k} must be a tensor name without braces; ${FIX}`);
      for (const k of pats) if (!isName(io[k]) || io[k].split("{layer}").length !== 2) fail(`tessera.json: ${where}.io.${k} must contain {layer} exactly once; ${FIX}`);
      const all = [...graphInputs(m), ...graphOutputs(m)];
      if (new Set(all).size !== all.length) fail(`tessera.json: ${where}.io names are not all distinct; ${FIX}`);
      if (!isObj(e.self_test)) fail(`tessera.json: ${where}.self_test is missing; ${FIX}`);
    } else {
      for (const k of ["inputs", "outputs"]) {
        if (!Array.isArray(e[k]) || e[k].length !== 1 || !isName(e[k][0])) fail(`tessera.json: ${where}.${k} must be a list of one tensor name; ${FIX}`);
      }
    }
  }

  const d = m.generation_defaults;
  onlyKeys(d, "generation_defaults", ["guidance_scale", "temperature", "top_k", "top_p"]);
  for (const k of ["guidance_scale", "temperature"]) if (!isNum(d[k]) || d[k] < 0) fail(`tessera.json: generation_defaults.${k} must be a number >= 0; ${FIX}`);
  int(d, "generation_defaults", "top_k", 0, 2 ** 20);
  if (!isNum(d.top_p) || !(d.top_p > 0 && d.top_p <= 1)) fail(`tessera.json: generation_defaults.top_p must be in (0, 1]; ${FIX}`);

  if (!isObj(m.files)) fail(`tessera.json: files must be an object; ${FIX}`);
  for (const [name, f] of Object.entries(m.files)) {
    plainName(name, `files key ${JSON.stringify(name)}`);
    onlyKeys(f, `files.${name}`, ["sha256", "bytes"]);
    if (typeof f.sha256 !== "string" || !/^[0-9a-f]{64}$/i.test(f.sha256)) fail(`tessera.json: files.${name}.sha256 must be 64 hex digits; ${FIX}`);
    int(f, `files.${name}`, "bytes", 0, Number.MAX_SAFE_INTEGER);
  }
  if (!isObj(m.weights)) fail(`tessera.json: weights must be an object; ${FIX}`);
  for (const [k, name] of Object.entries(m.weights)) {
    plainName(name, `weights.${k}`);
    if (!(name in m.files)) fail(`tessera.json: weights.${k} (${name}) is not listed in files; ${FIX}`);
  }
  if (!isObj(m.export)) fail(`tessera.json: export must be an object; ${FIX}`);
  for (const [g, e] of Object.entries(m.graphs)) {
    for (const k of ["file", "external_data"]) {
      if (k in e && !(e[k] in m.files)) fail(`tessera.json: graphs.${g}.${k} (${e[k]}) is not listed in files; ${FIX}`);
    }
  }
  return m;
}

/** @param {any} m @param {string} pat @returns {string[]} the pattern for layers 0..n_layer-1 */
const perLayer = (m, pat) => Array.from({ length: m.transformer.n_layer }, (_, i) => pat.replace("{layer}", String(i)));

/** @param {any} m @returns {string[]} the transformer graph's inputs, in order (section 2) */
export function graphInputs(m) {
  const io = m.graphs.transformer.io;
  const k = perLayer(m, io.past_key_names), v = perLayer(m, io.past_value_names);
  return [io.input_ids, io.position_ids, io.attention_mask, ...k.flatMap((x, i) => [x, v[i]])];
}

/** @param {any} m @returns {string[]} the transformer graph's outputs, in order */
export function graphOutputs(m) {
  const io = m.graphs.transformer.io;
  const k = perLayer(m, io.present_key_names), v = perLayer(m, io.present_value_names);
  return [io.logits, ...k.flatMap((x, i) => [x, v[i]])];
}

/**
 * @typedef {object} Store where a model directory's files come from (node.js: a folder; web.js: a URL)
 * @property {string} where the directory or URL, as messages name it
 * @property {() => Promise<string>} manifest tessera.json's text (at most 64 MiB), or a ModelDirectoryError
 * @property {(name: string, entry: {bytes: number, sha256: string}) => Promise<boolean>} verify checks a
 *   listed file's size and SHA-256; false when it is absent (a ModelDirectoryError for any other failure)
 */

/**
 * Reads a model directory's `tessera.json`, checks it, and checks every listed file's size and SHA-256.
 * @param {Store} store @returns {Promise<any>} the manifest
 */
export async function readModelDirectory(store) {
  const text = await store.manifest();
  let m;
  try { m = JSON.parse(text); } catch (e) { fail(`${store.where}: tessera.json is not valid JSON (${/** @type {Error} */ (e).message}); ${FIX}`); }
  checkManifest(m);
  const weights = new Set(Object.values(m.weights));
  for (const [name, f] of Object.entries(m.files)) {
    // an install may omit the weights (the graphs hold them); every other listed file must be there
    if (!(await store.verify(name, f)) && !weights.has(name)) fail(`model directory ${store.where}: ${name} is missing; copy the whole directory again or ${FIX}`);
  }
  return m;
}
