// The example page: loads a model directory over HTTP (default: the shipped models/default), generates a
// digit and draws it row by row as the transformer writes it; Stop cancels through an AbortSignal.
// Query parameters: model (a URL), class, seed, greedy=1, threads, backend, auto=1 (generate on load).
// window.tessera exposes the pipeline and the last result (tokens, pixels, milliseconds) for tests.

import { Pipeline, onnxruntimeVersion, AbortError } from "../src/browser.js";

const q = new URLSearchParams(location.search);
const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));
const ui = { cls: $("class"), seed: $("seed"), greedy: $("greedy"), backend: $("backend"), go: $("go"), stop: $("stop"), canvas: $("canvas"), random: $("random") };
const state = /** @type {any} */ ({ state: "loading", pipeline: null, last: null, error: null });
/** @type {any} */ (window).tessera = state;
const setState = (/** @type {string} */ s) => { state.state = s; document.body.dataset.state = s; };
const status = (/** @type {string} */ s) => { $("status").textContent = s; };
// a zero-delay task boundary: lets the page paint and take the Stop click between transformer calls
const breathe = () => new Promise((r) => { const c = new MessageChannel(); c.port1.onmessage = r; c.port2.postMessage(0); });

function fail(/** @type {any} */ e) {
  state.error = { name: e?.name ?? "Error", message: String(e?.message ?? e) };
  $("error").textContent = `${state.error.name}: ${state.error.message}`;
  setState("error");
}

/** @param {{width: number, height: number, channels: number, data: Uint8Array}} im */
function draw(im) {
  const c = ui.canvas;
  if (c.width !== im.width || c.height !== im.height) Object.assign(c, { width: im.width, height: im.height });
  const out = new ImageData(im.width, im.height);
  for (let p = 0; p < im.width * im.height; p++) {
    for (let k = 0; k < 3; k++) out.data[4 * p + k] = im.data[p * im.channels + (im.channels === 1 ? 0 : k)];
    out.data[4 * p + 3] = 255;
  }
  c.getContext("2d").putImageData(out, 0, 0);
}

async function generate() {
  const seed = Number(ui.seed.value);
  if (!Number.isInteger(seed) || seed < 0) return fail({ name: "InvalidInputError", message: `seed must be an int >= 0, got ${ui.seed.value}` });
  const stop = new AbortController();
  ui.stop.onclick = () => stop.abort();
  ui.go.disabled = true; ui.stop.disabled = false; $("error").textContent = "";
  setState("running");
  const t0 = performance.now();
  try {
    let last;
    const opts = { seed, signal: stop.signal, previewEvery: /** @type {const} */ ("row"), ...(ui.greedy.checked ? { temperature: 0 } : {}) };
    for await (const s of state.pipeline.stream([Number(ui.cls.value)], opts)) {
      if (s.images) draw(s.images[0]);
      status(`${s.step}/${s.steps} tokens, ${(performance.now() - t0).toFixed(0)} ms`);
      last = s;
      await breathe();
    }
    const ms = performance.now() - t0;
    const im = last.images[0];
    state.last = { class: Number(ui.cls.value), seed, tokens: last.tokens[0], pixels: Array.from(im.data), shape: [im.height, im.width, im.channels], ms };
    status(`done: class ${ui.cls.value}, seed ${seed}, ${ms.toFixed(0)} ms (with the row-by-row drawing)`);
    setState("done");
  } catch (e) {
    if (e instanceof AbortError) { status("stopped"); setState("stopped"); } else fail(e);
  } finally {
    ui.go.disabled = false; ui.stop.disabled = true;
  }
}

async function main() {
  const nav = /** @type {any} */ (navigator);
  if (nav.gpu && (await nav.gpu.requestAdapter().catch(() => null))) ui.backend.add(new Option("webgpu (tokens may differ)", "webgpu"));
  ui.backend.value = q.get("backend") ?? "wasm";
  const threads = Number(q.get("threads") ?? 2);
  const model = q.get("model") ?? "../../models/default/";
  const t0 = performance.now();
  state.pipeline = await Pipeline.load(model, {
    executionProviders: ui.backend.value === "webgpu" ? ["webgpu", "wasm"] : ["wasm"],
    threads: crossOriginIsolated ? threads : 1,
    wasmPaths: new URL("../node_modules/onnxruntime-web/dist/", import.meta.url).href,
  });
  const p = state.pipeline;
  p.classNames.forEach((/** @type {string} */ name, /** @type {number} */ i) => ui.cls.add(new Option(`${i} ${name}`, String(i))));
  ui.cls.value = q.get("class") ?? "7";
  ui.seed.value = q.get("seed") ?? "0";
  ui.greedy.checked = q.get("greedy") === "1";
  $("info").textContent = `${p.manifest.name || model}: onnxruntime-web ${onnxruntimeVersion()}, ${ui.backend.value}, `
    + `${crossOriginIsolated ? `${threads} threads` : "1 thread (the page is not cross-origin isolated)"}; loaded and self-tested in ${(performance.now() - t0).toFixed(0)} ms`;
  ui.go.disabled = false;
  ui.go.onclick = generate;
  ui.random.onclick = () => { ui.seed.value = String(Math.floor(Math.random() * 2 ** 31)); };
  ui.backend.onchange = () => { q.set("backend", ui.backend.value); location.search = q.toString(); };
  setState("ready");
  if (q.get("auto") === "1") await generate();
}

main().catch(fail);
