"""Parallel (ZipAR-style) decoding vs sequential: transformer calls, time per image and quality.

    python benchmarks/parallel_decoding.py                 # default model + GPT-B shape
    python benchmarks/parallel_decoding.py --skip-gpt-b    # default model only

Default model (50 images per class, the model's default sampling): calls and seconds per image,
conditional accuracy and Fréchet distance from the digit classifier (benchmarks/eval_default.py).
GPT-B-shaped model (random weights, LlamaGen GPT-B at 256px: 16x16 tokens): calls and seconds
per image with guidance. Writes benchmarks/results/parallel_decoding.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from tessera.bench.cache import GPT_B_RANDOM, cached_export
from tessera.bench.env import run_line
from tessera.bench.report import markdown_table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def default_model_rows(windows, per_class: int) -> list[dict]:
    from eval_default import evaluate_runtime, held_out

    from tessera.runtime import Pipeline

    pipe = Pipeline.load(providers="cpu", threads=2)
    data, clf = held_out()
    rows = []
    for window in windows:
        t0 = time.perf_counter()
        m = evaluate_runtime(lambda labels, seed, w=window: pipe.run(labels, seed=seed, parallel_window=w,
                                                                     decode_images=False), pipe.tokenizer, data, clf,
                             per_class)
        rows.append({"window": window, "calls_per_image": m["calls_per_batch"],  # a batch's images share its calls
                     "seconds_per_image": m["seconds_per_image"], "accuracy": m["accuracy"], "frechet": m["frechet"],
                     "eval_seconds": round(time.perf_counter() - t0, 1)})
        print(rows[-1], flush=True)
    return rows


def gpt_b_rows(windows, repeats: int) -> list[dict]:
    from tessera.runtime import Pipeline

    pipe = Pipeline.load(cached_export(HERE / ".cache" / "exports", "gpt-b", GPT_B_RANDOM), providers="cpu",
                         threads=2, verify="none")
    rows = []
    for window in windows:
        times = []
        for r in range(repeats):
            t0 = time.perf_counter()
            calls = pipe.run([r % 1000], guidance_scale=4.0, top_k=2000, seed=r, parallel_window=window,
                             decode_images=False).calls
            times.append(time.perf_counter() - t0)
        rows.append({"window": window, "calls_per_image": calls,
                     "seconds_per_image": float(np.median(times))})
        print(rows[-1], flush=True)
    return rows


def table(rows: list[dict], quality: bool) -> list[str]:
    base = rows[0]
    head = ["decoding", "calls / image", "fewer calls", "s / image", "speed-up"] + \
        (["accuracy", "Fréchet dist."] if quality else [])
    return markdown_table(head, [[
        "sequential" if r["window"] is None else f"parallel, window {r['window']}", f"{r['calls_per_image']:.0f}",
        f"{base['calls_per_image'] / r['calls_per_image']:.2f}x", f"{r['seconds_per_image']:.3f}",
        f"{base['seconds_per_image'] / r['seconds_per_image']:.2f}x"]
        + ([f"{r['accuracy']:.1%}", f"{r['frechet']:.1f}"] if quality else []) for r in rows])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3, help="images per setting on the GPT-B shape")
    ap.add_argument("--skip-gpt-b", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "parallel_decoding.md"))
    args = ap.parse_args(argv)
    out = ["# Parallel (ZipAR-style) decoding vs sequential", "",
           run_line("python benchmarks/parallel_decoding.py", 2, shared=False), ""]
    out += ["## Shipped default model (7x7 tokens, 50 images per class, default sampling)", "",
            "Calls are per batch of 50 images (one class); accuracy and Fréchet distance from the digit "
            "classifier on the held-out split (benchmarks/eval_default.py).", ""]
    out += table(default_model_rows([None, 4, 2, 1], args.per_class), quality=True)
    if not args.skip_gpt_b:
        out += ["", "## GPT-B shape (16x16 tokens, random weights, one image with guidance = batch 2)", ""]
        out += table(gpt_b_rows([None, 8, 4, 2], args.repeats), quality=False)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
