"""Decode speed of the fused graph's two operator forms (runtime/compat.py) on this CPU, same weights.

    python benchmarks/fused_forms.py            # GPT-B shape, random weights -> benchmarks/results/fused_forms.md

The 1.22 form (the default export: loads on every tested onnxruntime) and the 1.32 form (adds
GroupQueryAttention's query_seqlens) run the same kernels for one-token decode steps; this measures
that on the installed onnxruntime. Rounds alternate the order (ABBA) so warm-up and load drift fall on
both forms; reported per form: the median over rounds of each round's median decode step.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_env import cpu_model, versions

RESULTS = Path(__file__).resolve().parent / "results" / "fused_forms.md"
EXPORT = ["--gpt", "GPT-B", "--vq", "VQ-Tiny", "--vq-set", "image_size=64", "--vq-set", "codebook_size=16384",
          "--random-weights"]


def decode_step_ms(pipe, batch: int) -> float:
    """Median interval between consecutive sampled tokens of one guided image batch."""
    stamps = []
    pipe.generate_tokens(list(range(batch // 2)), seed=0, guidance_scale=4.0, top_k=2000,
                         callback=lambda *_: stamps.append(time.perf_counter()))
    return float(np.median(np.diff(stamps))) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--batches", default="2,8")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    from tessera.cli.main import main as tessera
    from tessera.runtime import Pipeline

    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        pipes = {}
        for target in ("1.22", "1.32"):
            out = Path(tmp) / target
            if tessera(["export", *EXPORT, "--out", str(out), "--target-onnxruntime", target]) != 0:
                return 1
            pipes[f"{target} form"] = Pipeline.load(out, providers="cpu", threads=2, verify="none")
        times = {(name, b): [] for name in pipes for b in batches}
        for r in range(args.rounds):
            order = list(pipes) if r % 2 == 0 else list(pipes)[::-1]
            for name in order:
                for b in batches:
                    times[(name, b)].append(decode_step_ms(pipes[name], b))
    lines = ["# Fused graph forms: decode step on the CPU", "",
             f"`python benchmarks/fused_forms.py --rounds {args.rounds} --batches {args.batches}`; "
             f"{versions(('tessera-ar', 'onnxruntime'))}; {cpu_model()}, 2 threads. GPT-B shape, random weights, "
             "guidance 4 (batch 2 = one image), top-k 2000.", "",
             "| batch rows | 1.22 form ms (median of rounds) | 1.32 form ms | 1.22 / 1.32 | rounds (1.22 form) | rounds (1.32 form) |",
             "|---|---|---|---|---|---|"]
    for b in batches:
        a, c = times[("1.22 form", b)], times[("1.32 form", b)]
        lines.append(f"| {b} | {np.median(a):.2f} | {np.median(c):.2f} | {np.median(a) / np.median(c):.3f} | "
                     f"{', '.join(f'{v:.1f}' for v in a)} | {', '.join(f'{v:.1f}' for v in c)} |")
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
