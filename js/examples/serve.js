#!/usr/bin/env node
// A static server for the example page: `node js/examples/serve.js [--port N]`, then open the URL it prints.
// It serves only the repository's js/ and models/ folders, refuses anything outside them, and sends the
// headers a multi-threaded onnxruntime-web needs: cross-origin isolation (COOP/COEP) for SharedArrayBuffer,
// and application/wasm for WebAssembly's streaming compile. It listens on 127.0.0.1 only.

import { createReadStream, promises as fs } from "node:fs";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const TYPES = {
  ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
  ".json": "application/json", ".map": "application/json", ".wasm": "application/wasm", ".css": "text/css; charset=utf-8",
  ".png": "image/png", ".md": "text/markdown; charset=utf-8", ".txt": "text/plain; charset=utf-8",
};
const HEADERS = {
  "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
  "Cross-Origin-Resource-Policy": "same-origin", "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache",
};

/**
 * A server of the folders in `mounts` (URL prefix -> folder), with COOP/COEP on every answer.
 * @param {Record<string, string>} [mounts] default: /js/ and /models/ of this repository
 * @returns {http.Server}
 */
export function createServer(mounts = { "/js/": path.join(REPO, "js"), "/models/": path.join(REPO, "models") }) {
  return http.createServer(async (req, res) => {
    const send = (/** @type {number} */ code, /** @type {string} */ text, /** @type {Record<string, string>} */ extra = {}) => {
      res.writeHead(code, { ...HEADERS, "Content-Type": "text/plain; charset=utf-8", ...extra });
      res.end(req.method === "HEAD" ? undefined : `${text}\n`);
    };
    if (req.method !== "GET" && req.method !== "HEAD") return send(405, "only GET and HEAD", { Allow: "GET, HEAD" });
    let pathname;
    try { pathname = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname); } catch { return send(400, "bad URL"); }
    if (pathname === "/") return send(302, "see /js/examples/", { Location: "/js/examples/" });
    const prefix = Object.keys(mounts).find((p) => pathname.startsWith(p));
    // no "..", no hidden files, no backslashes or NULs: only plain paths inside a mount
    if (!prefix || pathname.split("/").some((s) => s.startsWith(".")) || /[\\\0]/.test(pathname)) return send(404, "not found");
    const root = await fs.realpath(mounts[prefix]).catch(() => null);
    let file = root && path.join(root, pathname.slice(prefix.length));
    try {
      file = await fs.realpath(/** @type {string} */ (file));
      if ((await fs.stat(file)).isDirectory()) file = await fs.realpath(path.join(file, "index.html"));
    } catch { return send(404, "not found"); }
    if (!root || (file !== root && !file.startsWith(root + path.sep))) return send(404, "not found");
    const size = (await fs.stat(file)).size;
    res.writeHead(200, { ...HEADERS, "Content-Type": TYPES[/** @type {keyof TYPES} */ (path.extname(file))] ?? "application/octet-stream", "Content-Length": String(size) });
    if (req.method === "HEAD") return res.end();
    createReadStream(file).on("error", () => res.destroy()).pipe(res);
  });
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const i = process.argv.indexOf("--port");
  const port = i > 0 ? Number(process.argv[i + 1]) : 8080;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`serve.js: --port must be an int in 0..65535, got ${process.argv[i + 1]}`);
    process.exit(2);
  }
  const server = createServer();
  server.on("error", (e) => { console.error(`serve.js: ${e.message}; try another --port`); process.exit(1); });
  server.listen(port, "127.0.0.1", () => {
    const a = /** @type {import("node:net").AddressInfo} */ (server.address());
    console.log(`serving js/ and models/ at http://localhost:${a.port}/js/examples/ (Ctrl+C stops)`);
  });
}
