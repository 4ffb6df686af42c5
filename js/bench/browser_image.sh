#!/usr/bin/env bash
set -euo pipefail
# One image (class 7, the model's defaults: guidance 3, temperature 1) on models/default: the browser page
# (headless Chromium, onnxruntime-web wasm, 2 threads) vs the Python runtime; median (and min) of 15 after warm-ups
cd "$(dirname "$0")/../.."  # the repository root (the project venv in .venv/)
node js/bench/browser_image.mjs 2
.venv/bin/python -c "
import time; from tessera.runtime.pipeline import Pipeline
p=Pipeline.load('models/default', providers='cpu')
def med(f):
    for r in range(3): f(r)
    ts=[]
    for r in range(15):
        t=time.perf_counter(); f(r); ts.append((time.perf_counter()-t)*1000)
    ts.sort(); return f'{ts[7]:.1f} (min {ts[0]:.1f})'
import onnxruntime as ort, numpy as np
s=ort.InferenceSession('models/default/transformer.onnx', providers=['CPUExecutionProvider'])
names=[i.name for i in s.get_inputs()]
feeds={names[0]: np.full((2, 1), 5, np.int64), names[1]: np.full((2, 1), 30, np.int64), names[2]: np.ones((2, 1, 25), bool)}
feeds.update({n: np.zeros((2, 3, 24, 64), np.float32) for n in names[3:]})
def best(n, f):
    m=1e9
    for _ in range(n):
        t=time.perf_counter(); f(); m=min(m, (time.perf_counter()-t)*1000)
    return f'{m:.3f}'
grid=p.generate_tokens([7], seed=0)
print('python  best call', best(400, lambda: s.run(None, feeds)), 'ms (InferenceSession.run, exact past), best decode', best(60, lambda: p.decode(grid)), 'ms')
print('python  tokens', med(lambda r: p.generate_tokens([7], seed=r)), 'ms; tokens+decode', med(lambda r: p.generate([7], seed=r)), 'ms; row-by-row previews', med(lambda r: p.generate([7], seed=r, preview=lambda *a: None, preview_every='row')), 'ms')"
