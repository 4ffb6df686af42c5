#!/usr/bin/env bash
set -euo pipefail
# One image (class 7, the model's defaults: guidance 3, temperature 1) on models/default: Node vs Python, tokens only and tokens+decode, median of 15 after 3 warm-ups
cd "$(dirname "$0")/../.."  # the repository root (the project venv in .venv/)
node -e "
import('./js/src/index.js').then(async m=>{const p=await m.Pipeline.load('models/default');
const med=async(f)=>{for (let r=0;r<3;r++) await f(r); const ts=[];for(let r=0;r<15;r++){const t=performance.now();await f(r);ts.push(performance.now()-t)} ts.sort((a,b)=>a-b); return ts[7].toFixed(1)};
console.log('node   tokens', await med((r)=>p.generate([7],{seed:r})), 'ms; tokens+decode', await med(async(r)=>p.decode(await p.generate([7],{seed:r}))), 'ms')})"
.venv/bin/python -c "
import time; from tessera.runtime.pipeline import Pipeline
p=Pipeline.load('models/default', providers='cpu')
def med(f):
    for r in range(3): f(r)
    ts=[]
    for r in range(15):
        t=time.perf_counter(); f(r); ts.append((time.perf_counter()-t)*1000)
    return round(sorted(ts)[7],1)
print('python tokens', med(lambda r: p.generate_tokens([7], seed=r)), 'ms; tokens+decode', med(lambda r: p.generate([7], seed=r)), 'ms')"
