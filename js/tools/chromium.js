// Headless Chromium driven over the DevTools protocol through a pipe (--remote-debugging-pipe: JSON
// messages ending in NUL on file descriptors 3 and 4), so the browser tests and benchmark need nothing
// beyond Node and Debian's `chromium` package.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

/** @returns {string|null} a Chromium executable: $TESSERA_CHROMIUM, else Debian's or Chrome's usual places */
export function findChromium() {
  const env = process.env.TESSERA_CHROMIUM;
  if (env) return existsSync(env) ? env : null;
  return ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome", "/usr/bin/google-chrome-stable"].find(existsSync) ?? null;
}

/**
 * Starts headless Chromium and opens one page at `url`.
 * @param {string} executable @param {string} url
 * @returns {Promise<{evaluate: (expression: string, timeoutMs?: number) => Promise<any>, logs: string[], close: () => Promise<void>}>}
 */
export async function openPage(executable, url) {
  const profile = mkdtempSync(path.join(tmpdir(), "tessera-chromium-"));
  const child = spawn(executable, [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--no-default-browser-check", "--disable-extensions", "--mute-audio", `--user-data-dir=${profile}`,
    "--remote-debugging-pipe", "about:blank",
  ], { stdio: ["ignore", "ignore", "pipe", "pipe", "pipe"] });
  const toBrowser = /** @type {import("node:stream").Writable} */ (child.stdio[3]);
  const fromBrowser = /** @type {import("node:stream").Readable} */ (child.stdio[4]);
  let stderr = "";
  child.stderr?.on("data", (d) => { stderr = (stderr + d).slice(-4000); });
  /** @type {Map<number, {resolve: (v: any) => void, reject: (e: Error) => void}>} */
  const pending = new Map();
  const logs = /** @type {string[]} */ ([]);
  let next = 1, buf = Buffer.alloc(0);
  const gone = (/** @type {string} */ why) => { for (const p of pending.values()) p.reject(new Error(`chromium ${why}: ${stderr.trim().split("\n").slice(-3).join(" | ")}`)); pending.clear(); };
  child.on("exit", (code) => gone(`exited (${code})`));
  child.on("error", (e) => gone(e.message));
  fromBrowser.on("data", (/** @type {Buffer} */ d) => {
    buf = Buffer.concat([buf, d]);
    for (let i; (i = buf.indexOf(0)) >= 0; buf = buf.subarray(i + 1)) {
      const msg = JSON.parse(buf.subarray(0, i).toString("utf8"));
      if (msg.id && pending.has(msg.id)) {
        const p = /** @type {any} */ (pending.get(msg.id));
        pending.delete(msg.id);
        if (msg.error) p.reject(new Error(`${msg.error.message} ${msg.error.data ?? ""}`)); else p.resolve(msg.result);
      } else if (msg.method === "Runtime.consoleAPICalled") {
        logs.push(`console.${msg.params.type}: ${msg.params.args.map((/** @type {any} */ a) => a.value ?? a.description).join(" ")}`);
      } else if (msg.method === "Runtime.exceptionThrown") {
        logs.push(`exception: ${msg.params.exceptionDetails.exception?.description ?? msg.params.exceptionDetails.text}`);
      }
    }
  });
  /** @param {string} method @param {object} [params] @param {string} [sessionId] @returns {Promise<any>} */
  const send = (method, params = {}, sessionId = undefined) => new Promise((resolve, reject) => {
    const id = next++;
    pending.set(id, { resolve, reject });
    toBrowser.write(`${JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) })}\0`);
  });
  const close = async () => {
    await send("Browser.close").catch(() => {});
    if (child.exitCode === null) await new Promise((r) => { child.once("exit", r); setTimeout(() => { child.kill("SIGKILL"); r(null); }, 5000); });
    rmSync(profile, { recursive: true, force: true });
  };
  try {
    const { targetId } = await send("Target.createTarget", { url: "about:blank" });
    const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true });
    await send("Runtime.enable", {}, sessionId);
    await send("Page.enable", {}, sessionId);
    await send("Page.navigate", { url }, sessionId);
    return {
      logs, close,
      async evaluate(expression, timeoutMs = 300000) {
        let timer;
        const timeout = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`the page did not answer within ${timeoutMs / 1000} s; its console: ${logs.slice(-5).join(" | ")}`)), timeoutMs); });
        try {
          const r = await Promise.race([send("Runtime.evaluate", { expression, awaitPromise: true, returnByValue: true }, sessionId), timeout]);
          if (r.exceptionDetails) throw new Error(`the page threw: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`);
          return r.result.value;
        } finally { clearTimeout(timer); }
      },
    };
  } catch (e) { await close(); throw e; }
}

/** A page expression that resolves once window.tessera.state leaves "loading"/"running" (the example page's states). */
export const SETTLED = `new Promise((resolve) => { const t = setInterval(() => { const s = window.tessera?.state;
  if (s && s !== "loading" && s !== "running") { clearInterval(t); resolve({ state: s, error: window.tessera.error, last: window.tessera.last }); } }, 20); })`;
