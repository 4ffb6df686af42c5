#!/usr/bin/env bash
set -euo pipefail
# One image (class 7, the model's defaults: guidance 3, temperature 1) on models/default: the browser page
# (headless Chromium, onnxruntime-web wasm, 2 threads) vs the Python runtime; median of 15 after warm-ups
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
    return round(sorted(ts)[7],1)
print('python  tokens', med(lambda r: p.generate_tokens([7], seed=r)), 'ms; tokens+decode', med(lambda r: p.generate([7], seed=r)), 'ms')"
