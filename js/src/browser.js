// tessera-ar for JavaScript, in the browser (and Electron's renderer): a model directory over HTTP,
// run with onnxruntime-web (wasm; WebGPU where the browser has it). The Pipeline is the one Node uses.

import * as ort from "onnxruntime-web";
import { Pipeline as Core } from "./pipeline.js";
import { urlStore } from "./fetch.js";

/** @returns {string} the onnxruntime-web version in use */
export function onnxruntimeVersion() { return ort.env.versions.web ?? ort.env.versions.common; }

/** @returns {Promise<string[]>} the execution providers this browser can run */
async function available() {
  const nav = /** @type {any} */ (globalThis.navigator);
  const gpu = nav?.gpu ? await nav.gpu.requestAdapter().catch(() => null) : null;
  return ["wasm", "cpu", ...(gpu ? ["webgpu"] : [])];
}

/** @param {string} url @returns {import("./pipeline.js").Host} fetch + onnxruntime-web */
export function webHost(url) {
  const store = urlStore(url);
  return {
    ort, store, runtime: "onnxruntime-web", version: onnxruntimeVersion(), defaultProviders: ["wasm"],
    providers: available,
    threadOptions(threads) {
      // a process-wide setting, read when the first session starts; > 1 needs a cross-origin isolated page
      if (threads) ort.env.wasm.numThreads = threads;
      return {};
    },
    async session(file, external, options) {
      const extra = external ? { externalData: [{ path: external, data: await store.bytes(external) }] } : {};
      return ort.InferenceSession.create(await store.bytes(file), { ...options, ...extra });
    },
  };
}

export class Pipeline extends Core {
  /**
   * Checks and opens a model directory over HTTP through onnxruntime-web.
   * @param {string} url the directory's URL (relative: to the page)
   * @param {{executionProviders?: any[], threads?: number, wasmPaths?: string}} [options] providers
   *   (default ["wasm"], the one that gives the Python runtime's tokens; ["webgpu", "wasm"] where the
   *   browser has WebGPU); threads: wasm threads (default: onnxruntime-web's choice); wasmPaths: the
   *   folder of onnxruntime-web's .wasm files (default: beside its module)
   * @returns {Promise<Pipeline>}
   */
  static async load(url, options = {}) {
    const { wasmPaths, ...rest } = options;
    if (wasmPaths) ort.env.wasm.wasmPaths = wasmPaths;
    return /** @type {Promise<Pipeline>} */ (Core.open.call(this, webHost(url), rest));
  }
}
export { ort };
export * from "./common.js";
