// One image in the browser page: headless Chromium, onnxruntime-web wasm with N threads (argument, default 2),
// class 7, the model's defaults; median of 15 after 3 warm-ups, after 20 warm-up images (V8 tiers the wasm up).
import { createServer } from "../examples/serve.js";
import { findChromium, openPage, SETTLED } from "../tools/chromium.js";

const threads = Number(process.argv[2] ?? 2);
const chromium = findChromium();
if (!chromium) { console.error("browser_image: no Chromium found; apt-get install chromium, or set TESSERA_CHROMIUM"); process.exit(1); }
const server = createServer();
await new Promise((r) => server.listen(0, "127.0.0.1", () => r(null)));
const port = /** @type {import("node:net").AddressInfo} */ (server.address()).port;
const page = await openPage(chromium, `http://localhost:${port}/js/examples/?threads=${threads}`);
try {
  const s = await page.evaluate(SETTLED);
  if (s.state !== "ready") throw new Error(JSON.stringify(s.error));
  const info = await page.evaluate(`document.getElementById("info").textContent`);
  const out = await page.evaluate(`(async () => {
    const p = window.tessera.pipeline;
    for (let r = 0; r < 20; r++) await p.generate([7], { seed: r });
    const med = async (f) => { for (let r = 0; r < 3; r++) await f(r); const ts = []; for (let r = 0; r < 15; r++) { const t = performance.now(); await f(r); ts.push(performance.now() - t); } ts.sort((a, b) => a - b); return ts[7].toFixed(1); };
    const tokens = await med((r) => p.generate([7], { seed: r }));
    const all = await med(async (r) => p.decode(await p.generate([7], { seed: r })));
    const rows = await med(async (r) => { for await (const _ of p.stream([7], { seed: r, previewEvery: "row" })); });
    return "browser tokens " + tokens + " ms; tokens+decode " + all + " ms; row-by-row stream with previews " + rows + " ms";
  })()`, 600000);
  console.log(`${out} (${info})`);
} finally {
  await page.close();
  server.close();
}
