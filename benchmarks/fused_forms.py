"""Decode speed of the fused graph's two operator forms (runtime/compat.py) on this CPU, same weights.

    python benchmarks/fused_forms.py            # GPT-B shape, random weights -> benchmarks/results/fused_forms.md

The 1.22 form (the default export: loads on every tested onnxruntime) and the 1.32 form (adds
GroupQueryAttention's query_seqlens) run the same kernels for one-token decode steps; this measures
that on the installed onnxruntime with `tessera bench` (tessera.bench.run): the forms take turns, a
fresh process per form and round, so warm-up and load drift fall on both; decode = the median step.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tessera.bench.cache import GPT_B_RANDOM, cached_export
from tessera.bench.report import markdown_table, render, speed_table
from tessera.bench.run import BenchConfig, parse_int_list, run_bench

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--batches", default="2,8")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "fused_forms.md")
    args = ap.parse_args()
    dirs = [cached_export(HERE / ".cache" / "exports", f"gpt-b-{t}", [*GPT_B_RANDOM, "--target-onnxruntime", t])
            for t in ("1.22", "1.32")]
    run = run_bench(BenchConfig(dirs, ["cpu"], parse_int_list(args.batches, "--batches"), args.rounds, 8, 2,
                                guidance_scale=4.0, top_k=2000, memory=False), print)
    for row, form in zip(run["rows"], ("1.22 form", "1.32 form")):
        row["name"] = form
    text = "\n".join(["# Fused graph forms: decode step on the CPU", "",
                      f"`python benchmarks/fused_forms.py --rounds {args.rounds} --batches {args.batches}`; GPT-B shape, "
                      "random weights, guidance 4 (batch 2 = one image), top-k 2000, 2 threads; `decode x first` = "
                      "1.32 form / 1.22 form.", "", *[f"- {h}" for h in render(run).splitlines()[:3]], "",
                      *markdown_table(*speed_table(run)), "", *[f"- {n}" for n in run["notes"]]]) + "\n"
    args.out.write_text(text)
    print(text)
    return 1 if run["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
