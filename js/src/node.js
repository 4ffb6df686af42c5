// Node's host: a model directory on disk, opened with onnxruntime-node (the Pipeline is host-neutral).

import { createHash } from "node:crypto";
import { createReadStream, promises as fs } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import * as ort from "onnxruntime-node";
import { fail, FIX, MAX_MANIFEST } from "./manifest.js";

const GIVE = "give the path of a directory that `tessera export` wrote";

/** @returns {string} the installed onnxruntime-node version */
export function onnxruntimeVersion() {
  return createRequire(import.meta.url)("onnxruntime-node/package.json").version;
}

/** @param {string} dir @param {string} name @returns {Promise<string|null>} the real path, checked to be inside dir; null when absent */
async function insidePath(dir, name) {
  const root = await fs.realpath(dir);
  let real;
  try { real = await fs.realpath(path.join(root, name)); } catch { return null; }
  if (path.dirname(real) !== root) fail(`model directory ${dir}: ${name} resolves outside the directory; ${FIX}`);
  return real;
}

/** @param {string} file @returns {Promise<string>} hex sha256 */
function sha256(file) {
  return new Promise((resolve, reject) => {
    const h = createHash("sha256");
    createReadStream(file).on("data", (b) => h.update(b)).on("error", reject).on("end", () => resolve(h.digest("hex")));
  });
}

/** @param {string} dir @returns {import("./manifest.js").Store} a model directory on disk */
export function fileStore(dir) {
  return {
    where: dir,
    async manifest() {
      let st;
      try { st = await fs.stat(dir); } catch { fail(`model directory ${dir} does not exist; ${GIVE}`); }
      if (!st.isDirectory()) fail(`${dir} is not a directory; ${GIVE}`);
      const file = path.join(dir, "tessera.json");
      const s = await fs.stat(file).catch(() => fail(`model directory ${dir} has no tessera.json; ${GIVE}`));
      if (s.size > MAX_MANIFEST) fail(`${file} is larger than 64 MiB; ${FIX}`);
      return fs.readFile(file, "utf8");
    },
    async verify(name, f) {
      const real = await insidePath(dir, name);
      if (real === null) return false;
      const size = (await fs.stat(real)).size;
      if (size !== f.bytes) fail(`model directory ${dir}: ${name} has ${size} bytes, tessera.json says ${f.bytes} (truncated or changed); copy it again or ${FIX}`);
      if ((await sha256(real)) !== f.sha256.toLowerCase()) fail(`model directory ${dir}: ${name} does not match its sha256 in tessera.json (corrupt or changed); copy it again or ${FIX}`);
      return true;
    },
  };
}

/** @param {string} dir @returns {import("./pipeline.js").Host} files + onnxruntime-node */
export function nodeHost(dir) {
  const store = fileStore(dir);
  return {
    ort, store, runtime: "onnxruntime-node", version: onnxruntimeVersion(), defaultProviders: ["cpu"],
    providers: async () => ort.listSupportedBackends().map((b) => b.name),
    threadOptions: (threads) => ({ interOpNumThreads: 1, ...(threads ? { intraOpNumThreads: threads } : {}) }),
    async session(file, _external, options) {
      // external data sits beside the graph, where onnxruntime finds it from the graph's path
      const real = await insidePath(dir, file);
      if (real === null) fail(`model directory ${dir}: ${file} is missing; copy the whole directory again or ${FIX}`);
      return ort.InferenceSession.create(real, options);
    },
  };
}
