// A model directory over HTTP: the Store the browser reads (and Node can, with its global fetch).
// The graphs a host opens are downloaded once, checked against their size and SHA-256 and handed to
// onnxruntime as bytes; the other listed files are checked by size only (a HEAD request), so that a page
// does not download weights and encoders it never runs.

import { fail, FIX, MAX_MANIFEST } from "./manifest.js";

const GIVE = "give the URL of a directory that `tessera export` wrote";

/** @param {Uint8Array} bytes @returns {Promise<string>} hex sha256 */
async function sha256(bytes) {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) fail("checking a model's checksums needs crypto.subtle, which browsers give only to secure pages; serve the page over https:// or from http://localhost");
  const d = new Uint8Array(await subtle.digest("SHA-256", bytes));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * @param {string} url the model directory's URL (relative: to the page)
 * @returns {import("./manifest.js").Store & {bytes: (name: string) => Promise<Uint8Array>}}
 */
export function urlStore(url) {
  if (typeof url !== "string" || !url.trim()) fail(`no model URL given; ${GIVE}`);
  let base;
  try { base = new URL(url.endsWith("/") ? url : `${url}/`, globalThis.location?.href); } catch {
    fail(`${JSON.stringify(url)} is not a URL; ${GIVE}`);
  }
  const where = base.href;
  /** @type {Map<string, {bytes: number, sha256: string}>} */
  const listed = new Map();
  /** @param {string} name @param {string} [method] */
  const get = async (name, method = "GET") => {
    try { return await fetch(new URL(name, base), { method }); } catch (e) {
      return fail(`model directory ${where}: ${name} cannot be fetched (${/** @type {Error} */ (e).message}); check the URL and that the server is running`);
    }
  };
  return {
    where,
    async manifest() {
      const r = await get("tessera.json");
      if (r.status === 404) fail(`model directory ${where} has no tessera.json (HTTP 404); ${GIVE}`);
      if (!r.ok) fail(`model directory ${where}: tessera.json gave HTTP ${r.status}; check the URL and the server`);
      if (Number(r.headers.get("content-length")) > MAX_MANIFEST) fail(`${where}tessera.json is larger than 64 MiB; ${FIX}`);
      return r.text();
    },
    async verify(name, f) {
      listed.set(name, f);
      const r = await get(name, "HEAD");
      if (r.status === 404) return false;
      if (!r.ok) fail(`model directory ${where}: ${name} gave HTTP ${r.status}; check the server`);
      const size = r.headers.get("content-length");
      if (size !== null && !r.headers.get("content-encoding") && Number(size) !== f.bytes) {
        fail(`model directory ${where}: ${name} has ${size} bytes, tessera.json says ${f.bytes} (truncated or changed); copy it again or ${FIX}`);
      }
      return true;
    },
    async bytes(name) {
      const f = listed.get(name);
      if (!f) return fail(`model directory ${where}: ${name} is not listed in tessera.json's files; ${FIX}`);
      const r = await get(name);
      if (r.status === 404) fail(`model directory ${where}: ${name} is missing; copy the whole directory again or ${FIX}`);
      if (!r.ok) fail(`model directory ${where}: ${name} gave HTTP ${r.status}; check the server`);
      const b = new Uint8Array(await r.arrayBuffer());
      if (b.length !== f.bytes) fail(`model directory ${where}: ${name} has ${b.length} bytes, tessera.json says ${f.bytes} (truncated or changed); copy it again or ${FIX}`);
      if ((await sha256(b)) !== f.sha256.toLowerCase()) fail(`model directory ${where}: ${name} does not match its sha256 in tessera.json (corrupt or changed); copy it again or ${FIX}`);
      return b;
    },
  };
}
