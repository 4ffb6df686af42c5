// tessera-ar for JavaScript, in Node: the public API (the browser's is browser.js).
import { Pipeline as Core } from "./pipeline.js";
import { nodeHost } from "./node.js";

export class Pipeline extends Core {
  /**
   * Checks and opens a model directory on disk through onnxruntime-node.
   * @param {string} dir
   * @param {{executionProviders?: any[], threads?: number}} [options] providers (default ["cpu"]);
   *   threads: intra-op threads per graph (default: onnxruntime's choice)
   * @returns {Promise<Pipeline>}
   */
  static async load(dir, options = {}) {
    return /** @type {Promise<Pipeline>} */ (Core.open.call(this, nodeHost(dir), options));
  }
}
export { onnxruntimeVersion, nodeHost, fileStore } from "./node.js";
export * from "./common.js";
