// One image in the browser page: headless Chromium, onnxruntime-web wasm with N threads (argument, default 2),
// class 7, the model's defaults; median (and min) of 15 after 3 warm-ups, after 20 warm-up images (V8 tiers the wasm up).
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
    const med = async (f) => { for (let r = 0; r < 3; r++) await f(r); const ts = []; for (let r = 0; r < 15; r++) { const t = performance.now(); await f(r); ts.push(performance.now() - t); } ts.sort((a, b) => a - b); return ts[7].toFixed(1) + " (min " + ts[0].toFixed(1) + ")"; };
    const tokens = await med((r) => p.generate([7], { seed: r }));
    const all = await med(async (r) => p.decode(await p.generate([7], { seed: r })));
    const rows = await med(async (r) => { for await (const _ of p.stream([7], { seed: r, previewEvery: "row" })); });
    // the best single calls (min of 400 / 60): one transformer call at past length 24, the decoder on one grid
    const c = p.emptyCache(2);
    await p.call(c, [[512], [522]], [[0], [0]], [[[true]], [[true]]]);
    for (let j = 0; j < 23; j++) await p.call(c, [[5], [5]], [[1 + j], [1 + j]], [[new Array(j + 2).fill(true)], [new Array(j + 2).fill(true)]]);
    const best = async (n, f) => { let m = Infinity; for (let k = 0; k < n; k++) { const t = performance.now(); await f(); m = Math.min(m, performance.now() - t); } return m.toFixed(3); };
    const call = await best(400, () => p.call({ ...c }, [[5], [5]], [[30], [30]], [[new Array(25).fill(true)], [new Array(25).fill(true)]]));
    const grid = await p.generate([7]);
    const dec = await best(60, () => p.decode(grid));
    return "browser best call " + call + " ms, best decode " + dec + " ms; tokens " + tokens + " ms; tokens+decode " + all + " ms; row-by-row stream with previews " + rows + " ms";
  })()`, 600000);
  console.log(`${out} (${info})`);
} finally {
  await page.close();
  server.close();
}
