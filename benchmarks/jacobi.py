"""Speculative Jacobi decoding vs sequential on the shipped raster default: quality, calls, acceptance, time.

    python benchmarks/jacobi.py                      # 30 images per class, windows 2 4 8 (~6 min on 2 cores)
    python benchmarks/jacobi.py --per-class 10 --windows 4

Quality (conditional accuracy, Fréchet distance from the held-out digit classifier of
benchmarks/eval_default.py) for sequential decoding at three seeds (their spread is the sampling
noise floor) and Jacobi decoding per window, at the model's default sampling, one class per
batch. These runs use the default re-exported in the fused graph's 1.32 form (same weights;
multi-query calls batched); the latency table shows both forms give the same tokens.
Calls per image: the calls each image needed (its own pace, the same alone or in a batch);
calls per batch: the batch's calls (its slowest image). Acceptance: accepted drafts / verified.
Writes benchmarks/results/jacobi.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from tessera.bench.cache import cached_export
from tessera.bench.env import load_average, run_line
from tessera.bench.report import markdown_table
from tessera.bench.timing import interleaved

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SEQ_SEEDS = (0, 1000, 2000)
REPEATS = 5  # latency: best of five runs per image (the machine is shared)
BATCH_REPEATS = 3


def ensure_132() -> Path:
    """The shipped default re-exported for onnxruntime 1.32 (GroupQueryAttention with query_seqlens)."""
    from tessera.models import default_model_dir

    src = default_model_dir()
    return cached_export(HERE / ".cache" / "exports", "default-1.32",
                         ["--from", str(src), "--target-onnxruntime", "1.32"], [src])


def settings(windows) -> list[dict]:
    return [{}] + [dict(decoder="jacobi", jacobi_window=w) for w in windows]


def name(opts: dict) -> str:
    return f"jacobi, window {opts['jacobi_window']}" if opts else "sequential"


def quality_rows(windows, per_class: int) -> list[dict]:
    from eval_default import evaluate_runtime, held_out

    from tessera.runtime import Pipeline

    pipe = Pipeline.load(ensure_132(), providers="cpu", threads=2)
    data, clf = held_out()
    rows = []
    for opts, seed in [({}, s) for s in SEQ_SEEDS] + [(o, 0) for o in settings(windows)[1:]]:
        m = evaluate_runtime(lambda labels, sd, o=opts: pipe.run(labels, seed=sd, decode_images=False, **o),
                             pipe.tokenizer, data, clf, per_class, seed, batch=per_class)
        st = m.pop("stats")
        rows.append({"name": name(opts), "seed": seed, **m,
                     "acceptance": st["drafts_accepted"] / st["drafts_verified"] if st["drafts_verified"] else None})
        print(rows[-1], flush=True)
    return rows


def latency_rows(windows) -> list[dict]:
    """One image per call (batch 1, guidance = 2 rows), one per class, on both fused forms. Settings
    are interleaved run by run, so load from other processes hits them alike."""
    from tessera.runtime import Pipeline

    rows, reference, runs = [], {}, settings(windows)
    for form, model in (("1.22 (shipped)", None), ("1.32", ensure_132())):
        pipe = Pipeline.load(model, providers="cpu", threads=2)
        pipe.run([0], decode_images=False)  # warm up
        per_class = [interleaved({name(o): lambda _, o=o, c=c: pipe.run([c], seed=c, decode_images=False, **o)
                                  for o in runs}, REPEATS) for c in range(10)]
        for opts in runs:
            best = [min(t[name(opts)][0]) for t in per_class]
            toks = np.concatenate([t[name(opts)][1].tokens for t in per_class])
            same = int((toks == reference.setdefault(name(opts), toks)).all(axis=(1, 2)).sum())
            rows.append({"form": form, "name": name(opts), "calls_per_image": float(np.mean([t[name(opts)][1].calls
                                                                                              for t in per_class])),
                         "seconds_per_image": float(np.median(best)), "same_tokens": same})
            print(rows[-1], flush=True)
    return rows


def batch_rows(windows, batch: int) -> list[dict]:
    """One batch of `batch` images (mixed classes) on the shipped 1.22 form, settings interleaved."""
    from tessera.runtime import Pipeline

    pipe = Pipeline.load(providers="cpu", threads=2)
    labels = [c % 10 for c in range(batch)]
    timed = interleaved({name(o): lambda _, o=o: pipe.run(labels, seed=0, decode_images=False, **o)
                         for o in settings(windows)}, BATCH_REPEATS)
    rows = [{"name": k, "calls_per_batch": r.calls, "seconds_per_image": min(t) / batch} for k, (t, r) in timed.items()]
    print(rows, flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--windows", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--out", help="default benchmarks/results/jacobi.md; with --quick, printed only")
    ap.add_argument("--quick", action="store_true", help="2 images per class, window 4: a smoke run (~1 min)")
    args = ap.parse_args(argv)
    if args.quick:
        args.per_class, args.windows = 2, [4]
    command = "python benchmarks/jacobi.py" + (f" --per-class {args.per_class}" if args.per_class != 30 else "") \
        + (f" --windows {' '.join(map(str, args.windows))}" if args.windows != [2, 4, 8] else "")
    head, t_start = run_line(command, 2, shared=False), time.perf_counter()
    quality = quality_rows(args.windows, args.per_class)
    latency = latency_rows(args.windows)
    batched = batch_rows(args.windows, args.per_class)

    seq = [r for r in quality if r["name"] == "sequential"]
    acc, fid = np.array([r["accuracy"] for r in seq]), np.array([r["frechet"] for r in seq])
    images = 10 * args.per_class
    se = np.sqrt(acc.mean() * (1 - acc.mean()) / images)  # binomial standard error of one run's accuracy
    acc_sd, fid_sd = max(acc.std(ddof=1), se), fid.std(ddof=1)

    def within(r) -> str:
        ok = abs(r["accuracy"] - acc.mean()) <= 2 * acc_sd and abs(r["frechet"] - fid.mean()) <= 2 * fid_sd
        return "yes" if ok else "no"
    out = ["# Speculative Jacobi decoding vs sequential (shipped raster default, 7x7 tokens)", "",
           f"{head} at start, {load_average()[0]:.1f} at end ({time.perf_counter() - t_start:.0f} s)", "",
           f"## Quality, calls, acceptance ({args.per_class} images per class, default sampling: guidance 3, "
           "temperature 1)", "",
           "Accuracy and Fréchet distance from the held-out digit classifier (benchmarks/eval_default.py). "
           f"Noise floor: sequential at seeds {', '.join(map(str, SEQ_SEEDS))} — accuracy "
           f"{acc.mean():.1%} ± {acc.std(ddof=1):.1%} (range {acc.min():.1%}–{acc.max():.1%}), Fréchet "
           f"{fid.mean():.1f} ± {fid.std(ddof=1):.1f} (range {fid.min():.1f}–{fid.max():.1f}) (mean ± std); "
           f"the binomial standard error of one run's accuracy over {images} images is {se:.1%}. 'within floor': "
           f"accuracy within 2 x {acc_sd:.1%} (the larger of the two) and Fréchet within 2 x {fid_sd:.1f} of the "
           "sequential means. Run on the default re-exported in the 1.32 form (same weights); one class per batch.",
           "", *markdown_table(
               ["decoding", "seed", "accuracy", "Fréchet dist.", "within floor", "calls / image", "fewer calls",
                "calls / batch", "acceptance", "s / image (batch, one run)"],
               [[r["name"], str(r["seed"]), f"{r['accuracy']:.1%}", f"{r['frechet']:.1f}",
                 "–" if r["name"] == "sequential" else within(r), f"{r['calls_per_image']:.1f}",
                 f"{49 / r['calls_per_image']:.2f}x", f"{r['calls_per_batch']:.1f}",
                 "–" if r["acceptance"] is None else f"{r['acceptance']:.1%}", f"{r['seconds_per_image']:.3f}"]
                for r in quality])]
    out += ["", "## Latency: one image per call (batch 1 with guidance = 2 rows), 10 images, one per class", "",
            "Median over the images of each image's best of five runs (settings interleaved). On the 1.22 form "
            "(the shipped default) the runner runs a call's queries one at a time (runtime/compat.py); the 1.32 form runs them in one session run. "
            "'same tokens': images whose tokens equal the 1.22 form's for the same setting.", ""]
    base = {r["form"]: r["seconds_per_image"] for r in latency if r["name"] == "sequential"}
    out += markdown_table(["form", "decoding", "calls / image", "s / image", "vs sequential", "same tokens"], [
        [r["form"], r["name"], f"{r['calls_per_image']:.1f}", f"{r['seconds_per_image']:.4f}",
         f"{base[r['form']] / r['seconds_per_image']:.2f}x", f"{r['same_tokens']}/10"] for r in latency])
    out += ["", f"## Throughput: one batch of {args.per_class} images (mixed classes), shipped 1.22 form", "",
            "Best of three runs (settings interleaved).", ""]
    out += markdown_table(["decoding", "calls / batch", "s / image", "vs sequential"], [
        [r["name"], str(r["calls_per_batch"]), f"{r['seconds_per_image']:.4f}",
         f"{batched[0]['seconds_per_image'] / r['seconds_per_image']:.2f}x"] for r in batched])
    if args.out or not args.quick:
        Path(args.out or HERE / "results" / "jacobi.md").write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
