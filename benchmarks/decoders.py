"""Decoders side by side: sequential, parallel (ZipAR), speculative Jacobi and any-order decoding; calls, time
per image and quality, each section against sequential decoding in the same run.

    python benchmarks/decoders.py                      # every section, one after the other
    python benchmarks/decoders.py parallel             # -> benchmarks/results/parallel_decoding.md
    python benchmarks/decoders.py jacobi               # -> benchmarks/results/jacobi.md
    python benchmarks/decoders.py anyorder             # -> benchmarks/results/anyorder.md, anyorder_steps.png
    python benchmarks/decoders.py batching             # -> benchmarks/results/explicit_positions.md (2nd part)
    python benchmarks/decoders.py arpg                 # -> benchmarks/results/arpg.md
    python benchmarks/decoders.py arpg-large           # -> benchmarks/results/arpg_large.md (slow: ARPG-L vs GPT-L)
    python benchmarks/decoders.py --quick              # a few images of every table, no GPT-B: a smoke run

Quality on the digit models: conditional accuracy and Fréchet distance from the held-out classifier of
benchmarks/eval_default.py, at the model's default sampling; sequential decoding at several seeds gives the
sampling noise floor the other settings are read against. Times: settings interleaved (each repeat runs every
setting once, in turn), so load from other processes on a shared machine falls on all of them alike; compare
ratios within one run. GPT-B shape: LlamaGen GPT-B 256px dimensions (16x16 tokens), random weights, one image
with guidance 4 (batch 2), top-k 2000; exports cached under benchmarks/.cache/exports (tessera.bench.cache).

parallel: the shipped default at windows 4, 2, 1 (calls are per batch of one class), then the GPT-B shape.
jacobi: the default re-exported in the fused graph's 1.32 form (same weights; a call's queries run batched)
per window: quality, calls per image (its own pace) and per batch (its slowest image), acceptance (accepted
drafts / verified); latency at batch 1 on both forms (with the tokens they agree on); one batch's throughput.
any-order: the shipped raster default (sequential, 49 calls) against models/anyorder at several step counts
and both schedule orders; time per image at several batch sizes (and the any-order model's 1.32 and portable
graphs); inpainting held-out digits with a random half of their cells kept; the GPT-B shape in any-order mode
(fp32, int4), sequential decoding timed on the same graph.
batching: what taking a call's tokens together buys on the fused graph's 1.22 form (the shipped models): session
runs and seconds per image of parallel, Jacobi and any-order decoding as the runtime runs them now (one run per
call, or per row of a call over a past) against the same graph driven one token per call (the runtime before the
graph rotated by position; all rows together), interleaved, the same tokens.
arpg: the shipped raster default (sequential) against models/arpg (ARPG form: each cell fed once) and
models/anyorder at 8 steps: time per image at batch 1 and 10, quality over seeds, inpainting with a random
half kept. arpg-large: ARPG-L shape (random weights) at 16/32/64 steps against LlamaGen GPT-L shape
sequential, one image with guidance, fp32 and int4, with KV-cache bytes.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tessera.bench.cache import GPT_B_RANDOM, cached_export
from tessera.bench.decoders import (Setting, accuracy_floor, class_labels, sample_set, speed_rows, time_settings,
                                    within_floor)
from tessera.bench.env import load_average, run_line
from tessera.bench.report import markdown_table
from tessera.bench.stats import mean_std
from tessera.bench.timing import same_graph_sequential

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
EXPORTS = HERE / ".cache" / "exports"
ANYORDER_DIR = ROOT / "models" / "anyorder"
ARPG_DIR = ROOT / "models" / "arpg"
SECTIONS = ("parallel", "jacobi", "anyorder", "batching", "arpg", "arpg-large")
GPT_B_SAMPLING = {"guidance_scale": 4.0, "top_k": 2000}
JACOBI_SEEDS = (0, 1000, 2000)
JACOBI_REPEATS, JACOBI_BATCH_REPEATS = 5, 3  # latency: best of 5 per image; throughput: best of 3


def load(model=None, threads: int = 2, **options):
    from tessera.runtime import Pipeline

    return Pipeline.load(model, providers="cpu", threads=threads, **options)


class Quality:
    """The held-out split and the evaluation classifier, loaded once; scores a setting's quality set."""

    def __init__(self):
        from eval_default import held_out

        self.data, self.clf = held_out()
        self.real_feats = self.clf.features(self.data["test_x"])

    def __call__(self, setting: Setting, per_class: int, seed: int, batch: int = 50) -> dict:
        from eval_default import score_images

        s = sample_set(setting, class_labels(10, per_class), seed, batch)
        m = score_images(s.images, s.labels, self.data, self.clf, self.real_feats)
        return {"name": setting.name, "seed": seed, **m, "calls_per_batch": s.calls_per_batch,
                "calls_per_image": s.calls_per_image, "seconds_per_image": s.seconds_per_image,
                "acceptance": s.acceptance}


def gpt_b(name: str, extra: list[str]) -> Path:
    """The GPT-B-shaped export with `extra` arguments, through the one export cache."""
    return cached_export(EXPORTS, name, [*GPT_B_RANDOM, *extra])


# --- parallel ------------------------------------------------------------------------------------
def parallel_section(args, quality: Quality) -> list[str]:
    pipe = load(threads=args.threads or 2)
    settings = [Setting("sequential", pipe)] + [Setting(f"parallel, window {w}", pipe, {"parallel_window": w})
                                                for w in (4, 2, 1)]
    per_class = args.per_class or (2 if args.quick else 50)
    rows = []
    for s in settings:
        rows.append(quality(s, per_class, 0))
        print(rows[-1], flush=True)
    # a batch's images share its calls: the calls an image costs are the batch's
    out = ["# Parallel (ZipAR-style) decoding vs sequential", "", run_line(args.command("parallel"),
                                                                          args.threads or 2, shared=False), "",
           f"## Shipped default model (7x7 tokens, {per_class} images per class, default sampling)", "",
           f"Calls are per batch of {per_class} images (one class); accuracy and Fréchet distance from the digit "
           "classifier on the held-out split (benchmarks/eval_default.py).", ""]
    out += markdown_table(["decoding", "calls / image", "fewer calls", "s / image", "speed-up", "accuracy",
                           "Fréchet dist."],
                          [[r["name"], *cols, f"{r['accuracy']:.1%}", f"{r['frechet']:.1f}"] for r, cols in
                           zip(rows, speed_rows(rows, calls="calls_per_batch", seconds="seconds_per_image"))])
    if not args.skip_gpt_b:
        pipe = load(gpt_b("gpt-b", []), threads=args.threads or 2, verify="none")
        settings = [Setting("sequential", pipe)] + [Setting(f"parallel, window {w}", pipe, {"parallel_window": w})
                                                    for w in (8, 4, 2)]
        timed = time_settings(settings, args.gpt_b_repeats or 3, lambda r: ([r % 1000], r), **GPT_B_SAMPLING)
        rows = [{"name": k, "calls": t.calls, "seconds": t.median} for k, t in timed.items()]
        out += ["", "## GPT-B shape (16x16 tokens, random weights, one image with guidance = batch 2)", "",
                "Medians over the repeats, settings interleaved.", ""]
        out += markdown_table(["decoding", "calls / image", "fewer calls", "s / image", "speed-up"],
                              [[r["name"], *cols] for r, cols in zip(rows, speed_rows(rows))])
    return out


# --- jacobi --------------------------------------------------------------------------------------
def default_132() -> Path:
    """The shipped default re-exported for onnxruntime 1.32 (GroupQueryAttention with query_seqlens)."""
    from tessera.models import default_model_dir

    src = default_model_dir()
    return cached_export(EXPORTS, "default-1.32", ["--from", str(src), "--target-onnxruntime", "1.32"], [src])


def jacobi_settings(pipe, windows) -> list[Setting]:
    return [Setting("sequential", pipe)] + [Setting(f"jacobi, window {w}", pipe,
                                                    {"decoder": "jacobi", "jacobi_window": w}) for w in windows]


def jacobi_section(args, quality: Quality) -> list[str]:
    threads, windows = args.threads or 2, args.windows or ([4] if args.quick else [2, 4, 8])
    per_class = args.per_class or (2 if args.quick else 30)
    head, t_start = run_line(args.command("jacobi"), threads, shared=False), time.perf_counter()
    settings = jacobi_settings(load(default_132(), threads), windows)
    rows = []
    for s, seed in [(settings[0], sd) for sd in JACOBI_SEEDS] + [(s, 0) for s in settings[1:]]:
        rows.append(quality(s, per_class, seed, batch=per_class))  # one class per batch
        print(rows[-1], flush=True)

    latency, reference = [], {}
    for form, model in (("1.22 (shipped)", None), ("1.32", default_132())):
        pipe = load(model, threads)
        pipe.run([0], decode_images=False)  # warm up
        per_image = [time_settings(jacobi_settings(pipe, windows), JACOBI_REPEATS, lambda _, c=c: ([c], c))
                     for c in range(10)]
        for name in per_image[0]:
            toks = np.concatenate([t[name].result.tokens for t in per_image])
            same = int((toks == reference.setdefault(name, toks)).all(axis=(1, 2)).sum())
            latency.append({"form": form, "name": name, "calls": float(np.mean([t[name].calls for t in per_image])),
                            "seconds": float(np.median([t[name].best for t in per_image])), "same_tokens": same})
            print(latency[-1], flush=True)

    labels = [c % 10 for c in range(per_class)]
    timed = time_settings(jacobi_settings(load(None, threads), windows), JACOBI_BATCH_REPEATS, lambda _: (labels, 0))
    batched = [{"name": k, "calls": t.calls, "seconds": t.best / per_class} for k, t in timed.items()]

    seq = [r for r in rows if r["name"] == "sequential"]
    images = 10 * per_class
    acc_mean, acc_sd, se = accuracy_floor([r["accuracy"] for r in seq], images)
    acc, fid = np.array([r["accuracy"] for r in seq]), np.array([r["frechet"] for r in seq])
    fid_mean, fid_sd = mean_std(fid)

    def within(r) -> str:
        return "yes" if within_floor(r["accuracy"], acc_mean, acc_sd) and within_floor(r["frechet"], fid_mean,
                                                                                         fid_sd) else "no"
    out = ["# Speculative Jacobi decoding vs sequential (shipped raster default, 7x7 tokens)", "",
           f"{head} at start, {load_average()[0]:.1f} at end ({time.perf_counter() - t_start:.0f} s)", "",
           f"## Quality, calls, acceptance ({per_class} images per class, default sampling: guidance 3, "
           "temperature 1)", "",
           "Accuracy and Fréchet distance from the held-out digit classifier (benchmarks/eval_default.py). "
           f"Noise floor: sequential at seeds {', '.join(map(str, JACOBI_SEEDS))} — accuracy "
           f"{acc.mean():.1%} ± {acc.std(ddof=1):.1%} (range {acc.min():.1%}–{acc.max():.1%}), Fréchet "
           f"{fid_mean:.1f} ± {fid_sd:.1f} (range {fid.min():.1f}–{fid.max():.1f}) (mean ± std); "
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
                for r in rows])]
    out += ["", "## Latency: one image per call (batch 1 with guidance = 2 rows), 10 images, one per class", "",
            "Median over the images of each image's best of five runs (settings interleaved). On the 1.22 form "
            "(the shipped default) the runner splits a call over a past by rows or by queries, whichever makes "
            "fewer session runs (runtime/compat.py); the 1.32 form runs it in one session run. 'same tokens': images whose tokens equal the 1.22 form's for the "
            "same setting.", ""]
    base = {r["form"]: r for r in latency if r["name"] == "sequential"}
    out += markdown_table(["form", "decoding", "calls / image", "s / image", "vs sequential", "same tokens"], [
        [r["form"], r["name"], f"{r['calls']:.1f}", f"{r['seconds']:.4f}",
         speed_rows([r], base[r["form"]])[0][3], f"{r['same_tokens']}/10"] for r in latency])
    out += ["", f"## Throughput: one batch of {per_class} images (mixed classes), shipped 1.22 form", "",
            "Best of three runs (settings interleaved).", ""]
    out += markdown_table(["decoding", "calls / batch", "s / image", "vs sequential"],
                          [[r["name"], str(r["calls"]), cols[2], cols[3]] for r, cols in zip(batched, speed_rows(batched))])
    return out


# --- any-order -----------------------------------------------------------------------------------
def anyorder_timing(seq, ao, extra: dict, batch: int, repeats: int) -> list[dict]:
    """Seconds per image at `batch` images per call (default guidance: 2 rows per image), interleaved."""
    settings = [Setting("sequential (raster default)", seq), Setting("any-order, 8 steps", ao, {"steps": 8}),
                Setting("any-order, 4 steps", ao, {"steps": 4}),
                *[Setting(f"any-order, 8 steps, {name}", pipe, {"steps": 8}) for name, pipe in extra.items()]]
    timed = time_settings(settings, repeats, lambda r: ([r % 10] * batch, 100 * r))
    rows = [{"name": f"batch {batch}: {k}", "calls": t.calls, "seconds": t.median / batch} for k, t in timed.items()]
    for row in rows:
        print(row, flush=True)
    return rows


def anyorder_quality(seq, ao, quality: Quality, per_class: int, seeds, sweep) -> list[dict]:
    settings = [(Setting("sequential (raster default)", seq), None, "-", s) for s in seeds]
    settings += [(Setting("any-order", ao, {"steps": 8}), 8, "locality", s) for s in seeds]
    settings += [(Setting("any-order", ao, {"steps": st}), st, "locality", seeds[0]) for st in sweep if st != 8]
    settings += [(Setting("any-order", ao, {"steps": 8}, order="random"), 8, "random", s) for s in seeds]
    settings += [(Setting(f"any-order, guidance {g}", ao, {"steps": 8, "guidance_scale": g}), 8, "locality",
                  seeds[0]) for g in (3.5, 4.0)]
    rows = []
    for setting, steps, order, seed in settings:
        rows.append({**quality(setting, per_class, seed), "steps": steps, "order": order})
        print(rows[-1], flush=True)
    return rows


def inpaint_rows(ao, seq, quality: Quality, raster_images: int, anyorder_images: int | None = None) -> list[dict]:
    """Held-out digits, a random half of the cells kept, conditioned on the true class."""
    import torch

    test_x, test_y = quality.data["test_x"].numpy(), quality.data["test_y"].numpy()
    codes = np.concatenate([ao.tokenizer.encode(test_x[i:i + 100]) for i in range(0, len(test_x), 100)])
    rows = []
    for name, pipe, count, extra in (("any-order, 8 steps, all kept cells as context", ao,
                                      anyorder_images or len(test_x), {}),
                                     ("raster default, sequential + 4 reranked candidates", seq, raster_images,
                                      {"candidates": 4})):
        if count == 0:
            continue
        images, exact = [], 0
        t0 = time.perf_counter()
        for i in range(count):
            rng = np.random.default_rng(10_000 + i)
            regen = np.zeros(49, bool)
            regen[rng.permutation(49)[:25]] = True  # 24 kept, 25 regenerated
            regen = regen.reshape(7, 7)
            res = pipe.edit_tokens(codes[i], regen, class_label=int(test_y[i]), seed=i, **extra)
            exact += int((res.tokens[0][~regen] == codes[i][~regen]).all())
            images.append(pipe.tokenizer.decode(res.tokens))
        seconds = time.perf_counter() - t0
        images = torch.from_numpy(np.concatenate(images)).clamp(-1, 1)
        acc = quality.clf.accuracy(images, torch.from_numpy(test_y[:count]))
        rows.append(dict(name=name, images=count, accuracy=acc, kept_exact=exact, seconds=seconds / count))
        print(rows[-1], flush=True)
    return rows


def sample_sheet(ao, path: Path, steps_list) -> None:
    """One row per step count, one digit per class (seed 0), 2x nearest-neighbour."""
    from PIL import Image

    rows = []
    for steps in steps_list:
        ims = ao.tokenizer.decode(Setting("", ao, {"steps": steps}).run(list(range(10)), 0).tokens)
        g = ((np.clip(ims.mean(1), -1, 1) + 1) * 127.5).round().astype(np.uint8)  # [10, 28, 28]
        rows.append(np.concatenate(list(g), axis=1))
    sheet = np.concatenate(rows, axis=0)
    Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(path, optimize=True)


def anyorder_gpt_b(precision: str, repeats: int, steps_list, threads: int) -> list[dict]:
    path = gpt_b(f"gpt-b-anyorder-{precision}", ["--gpt-set", "order=any", "--target-onnxruntime", "1.32",
                                                 "--quant", precision])
    ao = load(path, threads, verify="none")
    seq = same_graph_sequential(path, providers="cpu", threads=threads, verify="none")
    settings = [Setting("sequential", seq)] + [Setting(f"any-order, {st} steps", ao, {"steps": st}) for st in steps_list]
    timed = time_settings(settings, repeats, lambda r: ([r], r), **GPT_B_SAMPLING)
    rows = [{"name": f"{precision}: {k}", "calls": t.calls, "seconds": t.median} for k, t in timed.items()]
    for row in rows:
        print(row, flush=True)
    return rows


def summary(rows: list[dict], name: str, steps, order: str) -> tuple[float, float, float, float]:
    """Mean and standard deviation over seeds of (accuracy, Fréchet distance) for one setting."""
    sel = [r for r in rows if r["name"] == name and r["steps"] == steps and r["order"] == order]
    (acc, acc_sd), (fd, fd_sd) = (mean_std([r[k] for r in sel]) for k in ("accuracy", "frechet"))
    return acc, acc_sd, fd, fd_sd


def speed_table(rows: list[dict]) -> list[str]:
    return markdown_table(["decoding", "calls / image", "s / image", "speed-up"],
                          [[r["name"], cols[0], cols[2], cols[3]] for r, cols in zip(rows, speed_rows(rows))])


def anyorder_section(args, quality: Quality, out_dir: Path | None) -> list[str]:
    threads = args.threads or 1  # on a shared 2-core machine a second thread mostly waits
    per_class, seeds = args.per_class or (2 if args.quick else 50), args.seeds or ([0, 1000] if args.quick else
                                                                                   [0, 1000, 2000])
    sweep = args.sweep or ([8] if args.quick else [4, 6, 8, 12, 16])
    batches = args.batches or ([10] if args.quick else [1, 10, 50])
    timing_repeats = args.timing_repeats or (1 if args.quick else 10)
    raster_inpaint = args.raster_inpaint if args.raster_inpaint is not None else 2 if args.quick else 100
    seq, ao = load(None, threads), load(ANYORDER_DIR, threads)
    sheet = (out_dir or Path(tempfile.mkdtemp())) / "anyorder_steps.png"
    sample_sheet(ao, sheet, [2, 4, 8, 16, 49])
    extra = {label: load(cached_export(EXPORTS, f"digits-anyorder-{graph}-{target}", [
        "--from", str(ANYORDER_DIR), "--graph", graph, "--target-onnxruntime", target], [ANYORDER_DIR]), threads)
        for label, graph, target in (("1.32 form: one session run per call", "fused", "1.32"),
                                     ("portable graph", "portable", "1.22"))}

    lines = ["# Any-order decoding vs sequential raster decoding", "", run_line(args.command("anyorder"), threads), ""]
    lines += ["## Digit models: time per image (default guidance 3.0: two rows per image)", "",
              "Medians over the repeats; each repeat runs every setting once, in turn; speed-up against "
              "sequential decoding at the same batch. The any-order model ships the fused graph in its "
              "onnxruntime 1.22 form (a call over a past split by rows or by queries, whichever makes fewer "
              "session runs, runtime/compat.py); the 1.32 form runs every call in one session run and the "
              "portable graph is the standard-ops one, both shown for comparison. An any-order call carries the previous step's codes and this step's "
              "queries: 8 steps feed about 2 x 49 token positions per image against sequential's 49, so the "
              "gain shrinks as batches grow and compute, not the per-call cost, dominates.", ""]
    for batch in batches:
        lines += speed_table(anyorder_timing(seq, ao, extra, batch, max(3, timing_repeats * 10 // batch)))
        lines.append("")

    q_rows = anyorder_quality(seq, ao, quality, per_class, seeds, sweep)
    sa, sa_sd, sf, sf_sd = summary(q_rows, "sequential (raster default)", None, "-")
    aa, aa_sd, af, af_sd = summary(q_rows, "any-order", 8, "locality")
    ra, ra_sd, rf, rf_sd = summary(q_rows, "any-order", 8, "random")
    lines += ["", f"## Digit models: quality ({per_class} images per class, default sampling, held-out "
                  "classifier of benchmarks/eval_default.py)", ""]
    lines += markdown_table(["decoding", "steps", "order", "seed", "calls / batch", "accuracy", "Fréchet dist."], [
        [r["name"], str(r["steps"] or 49), r["order"], str(r["seed"]), f"{r['calls_per_batch']:.0f}",
         f"{r['accuracy']:.1%}", f"{r['frechet']:.1f}"] for r in q_rows])
    lines += ["", f"Over seeds {seeds} (mean ± std, the sampling noise floor):", "",
              "| setting | accuracy | Fréchet dist. |", "|---|---|---|",
              f"| sequential raster default, 49 calls | {sa:.1%} ± {sa_sd:.1%} | {sf:.1f} ± {sf_sd:.1f} |",
              f"| any-order, 8 steps, locality order | {aa:.1%} ± {aa_sd:.1%} | {af:.1f} ± {af_sd:.1f} |",
              f"| any-order, 8 steps, random order | {ra:.1%} ± {ra_sd:.1%} | {rf:.1f} ± {rf_sd:.1f} |",
              "", f"Any-order (8 steps, locality) minus sequential: accuracy {100 * (aa - sa):+.1f} points, "
                  f"Fréchet distance {af / sf:.2f}x."]

    i_rows = inpaint_rows(ao, seq, quality, raster_inpaint, 10 if args.quick else None)
    lines += ["", "## Inpainting held-out digits (a random half of the cells kept: 24 kept, 25 regenerated; "
                  "conditioned on the digit's class)", "",
              *markdown_table(["model / method", "images", "requested class read back", "kept cells bit-exact",
                               "s / image"],
                              [[r["name"], str(r["images"]), f"{r['accuracy']:.1%}", f"{r['kept_exact']}/{r['images']}",
                                f"{r['seconds']:.3f}"] for r in i_rows])]
    if not args.skip_gpt_b:
        lines += ["", "## GPT-B shape (LlamaGen GPT-B, 16x16 tokens, random weights, any-order mode, fused 1.32 "
                      "form; one image with guidance 4.0 = batch 2)", "",
                  "Sequential rows run the same graph through the base (raster) pipeline: the same per-call cost, "
                  "one token per call.", ""]
        calls = {}
        for precision in ("fp32", "int4"):
            rows = anyorder_gpt_b(precision, args.gpt_b_repeats or 2, [24, 16], threads)
            calls = {r["name"].split(": ", 1)[1]: r["calls"] for r in rows}
            lines += speed_table(rows) + [""]
        lines.append("Reading: sequential decoding is memory-bound (the weights are read once per call for two "
                     "token rows); an any-order call of 40-60 token rows is compute-bound on this CPU, and any-order "
                     "decoding evaluates about twice as many token positions per image (each cell once as a query, "
                     "once as context). The time gain is therefore capped by compute, far below the calls ratio "
                     f"({calls['sequential'] / calls['any-order, 24 steps']:.1f}x at 24 steps); int4 cuts the weight "
                     "reads that sequential decoding pays for, so its gain is smaller still. On an accelerator, where "
                     "60 rows cost about what 2 do, the calls ratio is the relevant bound (not measured here: no GPU).")
    lines += ["", "Sample sheet: `benchmarks/results/anyorder_steps.png` — rows 2, 4, 8, 16, 49 steps; one digit "
                  "per class 0..9, seed 0, default sampling, locality order."]
    return lines


# --- ARPG ------------------------------------------------------------------------------------------
def kv_bytes(pipe, images: int = 1, guided: bool = True) -> int:
    """fp32 KV-cache bytes a full grid holds: per cached token, K and V of every KV layer of the graph."""
    spec = pipe.manifest.spec
    t = spec.transformer
    cached = pipe.grid[0] * pipe.grid[1] + 1  # the class and every cell (an upper bound for ARPG's last step)
    return images * (2 if guided else 1) * spec.kv_layers * 2 * t.n_kv_head * t.head_dim * cached * 4


def arpg_large(args, threads: int) -> list[str]:
    """ARPG-L shape vs GPT-L shape, random weights, one image with guidance (batch 2), fp32 and int4."""
    lines = ["# ARPG-L shape vs LlamaGen GPT-L shape (random weights, 16x16 tokens, one image with guidance "
             "= batch 2, top-k 2000)", "", run_line(args.command("arpg-large"), threads), "",
             f"Seconds per image, best of {args.gpt_b_repeats or 1} run(s), settings interleaved; ARPG-L (24 "
             "layers x 1024: 12 self-attention + 12 cross-attention) against GPT-L (24 x 1024) sequential "
             "(256 calls). KV bytes: fp32 cache of one image with guidance after the last call.", ""]
    rows = []
    for precision in ("fp32", "int4"):
        tiny_vq = list(GPT_B_RANDOM[2:])  # the GPT-B benchmarks' small tokenizer: the transformer is timed
        gpt = load(cached_export(EXPORTS, f"gpt-l-{precision}", ["--gpt", "GPT-L", *tiny_vq, "--quant", precision]),
                   threads, verify="none")
        arpg = load(cached_export(EXPORTS, f"arpg-l-{precision}", ["--gpt", "ARPG-L", *tiny_vq, "--quant",
                                                                  precision]), threads, verify="none")
        settings = [Setting("GPT-L sequential", gpt)] + [Setting(f"ARPG-L, {st} steps", arpg, {"steps": st})
                                                         for st in (64, 32, 16)]
        timed = time_settings(settings, args.gpt_b_repeats or 1, lambda r: ([r], r), **GPT_B_SAMPLING)
        part = [{"name": f"{precision}: {k}", "calls": t.calls, "seconds": t.best,
                 "kv": kv_bytes(gpt if k.startswith("GPT") else arpg)} for k, t in timed.items()]
        for row in part:
            print(row, flush=True)
        rows += part
        lines += markdown_table(["decoding", "calls / image", "s / image", "speed-up", "KV MB", "KV vs GPT-L"],
                                [[r["name"], cols[0], cols[2], cols[3], f"{r['kv'] / 2**20:.1f}",
                                  f"{r['kv'] / part[0]['kv']:.2f}x"] for r, cols in zip(part, speed_rows(part))])
        lines.append("")
    return lines


def arpg_section(args, quality: Quality, out_dir: Path | None) -> list[str]:
    threads = args.threads or 1
    per_class = args.per_class or (2 if args.quick else 50)
    seeds = args.seeds or ([0, 1000] if args.quick else [0, 1000, 2000])
    repeats = args.timing_repeats or (1 if args.quick else 10)
    arpg_dir = args.arpg_model or ARPG_DIR
    seq, arpg, ao = load(None, threads), load(arpg_dir, threads), load(ANYORDER_DIR, threads)
    steps = arpg.manifest.spec.generation.steps or 8
    head, t_start = run_line(args.command("arpg"), threads), time.perf_counter()
    lines = ["# ARPG (each cell fed once) vs sequential and any-order decoding, digit models", "", head, ""]
    settings = [Setting("sequential (raster default)", seq), Setting(f"ARPG, {steps} steps", arpg),
                Setting("any-order, 8 steps", ao, {"steps": 8}), Setting("ARPG, 4 steps", arpg, {"steps": 4})]
    lines += ["## Time per image (default guidance of each model: two rows per image)", "",
              "Medians over the repeats; each repeat runs every setting once, in turn; speed-up against "
              "sequential decoding at the same batch (tokens only, no image decode).", ""]
    speed = {}
    for batch in (args.batches or [1, 10]):
        timed = time_settings(settings, max(3, repeats * 10 // batch), lambda r: ([r % 10] * batch, 100 * r))
        rows = [{"name": f"batch {batch}: {k}", "calls": t.calls, "seconds": t.median / batch,
                 "rows": t.result.stats.get("token_rows", 0) / batch} for k, t in timed.items()]
        for row in rows:
            print(row, flush=True)
        speed[batch] = rows[0]["seconds"] / rows[1]["seconds"]
        lines += markdown_table(["decoding", "calls / image", "token rows / image", "s / image", "speed-up"],
                                [[r["name"], cols[0], f"{r['rows']:.0f}", cols[2], cols[3]]
                                 for r, cols in zip(rows, speed_rows(rows))]) + [""]
    lines.append("Token rows: the token positions a call evaluates, summed (ARPG: context and queries each pass "
                 "half the layers).")

    q_rows = []
    for name, setting in (("sequential", settings[0]), ("ARPG", settings[1]), ("any-order", settings[2])):
        for seed in seeds:
            q_rows.append({**quality(setting, per_class, seed), "name": name})
            print(q_rows[-1], flush=True)
    for st in (args.sweep or ([] if args.quick else [4, 6, 12, 16])):
        q_rows.append({**quality(Setting("ARPG", arpg, {"steps": st}), per_class, seeds[0]),
                       "name": f"ARPG, {st} steps"})
        print(q_rows[-1], flush=True)

    def stats(name):
        sel = [r for r in q_rows if r["name"] == name]
        return mean_std([r["accuracy"] for r in sel]), mean_std([r["frechet"] for r in sel])
    (sa, sa_sd), (sf, sf_sd) = stats("sequential")
    (aa, aa_sd), (af, af_sd) = stats("ARPG")
    (oa, oa_sd), (of, of_sd) = stats("any-order")
    lines += ["", f"## Quality ({per_class} images per class, default sampling, held-out classifier of "
                  "benchmarks/eval_default.py)", ""]
    lines += markdown_table(["decoding", "seed", "calls / batch", "accuracy", "Fréchet dist."], [
        [r["name"], str(r["seed"]), f"{r['calls_per_batch']:.0f}", f"{r['accuracy']:.1%}", f"{r['frechet']:.1f}"]
        for r in q_rows])
    lines += ["", f"Over seeds {seeds} (mean ± std, the sampling noise floor):", "",
              "| setting | accuracy | Fréchet dist. |", "|---|---|---|",
              f"| sequential raster default, 49 calls | {sa:.1%} ± {sa_sd:.1%} | {sf:.1f} ± {sf_sd:.1f} |",
              f"| ARPG, {steps} steps | {aa:.1%} ± {aa_sd:.1%} | {af:.1f} ± {af_sd:.1f} |",
              f"| any-order, 8 steps | {oa:.1%} ± {oa_sd:.1%} | {of:.1f} ± {of_sd:.1f} |", ""]

    test_x, test_y = quality.data["test_x"].numpy(), quality.data["test_y"].numpy()
    count = 20 if args.quick else len(test_x)
    codes = np.concatenate([arpg.tokenizer.encode(test_x[i:i + 100]) for i in range(0, count, 100)])
    images, exact = [], 0
    t0 = time.perf_counter()
    for i in range(count):
        regen = np.zeros(49, bool)
        regen[np.random.default_rng(10_000 + i).permutation(49)[:25]] = True  # 24 kept, 25 regenerated
        regen = regen.reshape(7, 7)
        res = arpg.edit_tokens(codes[i], regen, class_label=int(test_y[i]), seed=i)
        exact += int((res.tokens[0][~regen] == codes[i][~regen]).all())
        images.append(arpg.tokenizer.decode(res.tokens))
    inpaint_s = (time.perf_counter() - t0) / count
    import torch

    inpaint_acc = quality.clf.accuracy(torch.from_numpy(np.clip(np.concatenate(images), -1, 1)),
                                       torch.from_numpy(test_y[:count]))
    read_back = int(round(inpaint_acc * count))  # the classifier's share, in float32: count it instead
    inpaint_acc = read_back / count
    lines += [f"## Inpainting held-out digits (a random half kept: 24 kept, 25 regenerated, class-conditioned)", "",
              f"{count} digits: requested class read back **{inpaint_acc:.1%}** ({read_back}/{count}), kept cells bit-exact "
              f"{exact}/{count}, {inpaint_s:.3f} s per image (ARPG, {steps} steps, every kept cell as context).", ""]

    calls = settings[1].run([0], 0).calls
    lines += ["## Targets (issue 21)", "", "| target | measured | met |", "|---|---|---|",
              f"| <= 8 calls per image | {calls} | {'yes' if calls <= 8 else 'no'} |",
              f"| accuracy within 1 point of sequential | {100 * (aa - sa):+.1f} points | "
              f"{'yes' if aa >= sa - 0.01 else 'no'} |",
              f"| Fréchet <= 1.1x sequential | {af / sf:.2f}x | {'yes' if af <= 1.1 * sf else 'no'} |",
              f"| inpainting, random half kept, read back >= 90% | {inpaint_acc:.1%} | "
              f"{'yes' if inpaint_acc >= 0.9 else 'no'} |",
              *[f"| time per image >= {want}x lower at batch {b} | {speed[b]:.2f}x | {'yes' if speed[b] >= want else 'no'} |"
                for b, want in ((1, 2.5), (10, 2.0)) if b in speed], ""]
    lines.append(f"Load average at end: {load_average()[0]:.1f} ({time.perf_counter() - t_start:.0f} s).")
    return lines


class _SessionRuns:
    """Counts a session's runs (IO binding: every transformer call the runtime makes)."""

    def __init__(self, session):
        self.count, run = 0, session.run_with_iobinding

        def counted(*a, **k):
            self.count += 1
            return run(*a, **k)

        session.run_with_iobinding = counted


def one_token_per_call(pipe) -> None:
    """Drive `pipe`'s runners one token per call, all rows together: what the runtime did on the fused 1.22 form
    before its graph rotated by position (each multi-token call split into one-token calls, exact because the
    queries are causal in call order)."""
    from tessera.runtime.transformer import TransformerRunner

    class OneTokenPerCall(TransformerRunner):
        def __call__(self, input_ids, position_ids, attention_mask):
            b, s = input_ids.shape
            if s == 1:
                return super().__call__(input_ids, position_ids, attention_mask)
            out = np.empty((b, s, self.vocab_size), self.logits_dtype)
            for j in range(s):
                out[:, j] = super().__call__(np.ascontiguousarray(input_ids[:, j:j + 1]),
                                             np.ascontiguousarray(position_ids[:, j:j + 1]),
                                             np.ascontiguousarray(attention_mask[:, j:j + 1, :self.length + 1]))[:, 0]
            return out

    for runner in pipe.model.runners.runners:
        runner.__class__ = OneTokenPerCall


def batching_section(args) -> list[str]:
    """Session runs and seconds per image, now against one token per call, on the shipped 1.22-form models."""
    from tessera.models import default_model_dir

    threads = args.threads or 2
    repeats = args.timing_repeats or (2 if args.quick else 7)
    head = run_line(args.command("batching"), threads, shared=True)
    settings = {"parallel, window 2": (default_model_dir(), {"parallel_window": 2}),
                "parallel, window 1": (default_model_dir(), {"parallel_window": 1}),
                "jacobi, window 4": (default_model_dir(), {"decoder": "jacobi", "jacobi_window": 4}),
                "any-order, 8 steps": (ANYORDER_DIR, {"steps": 8})}
    rows = []
    for batch in (1, 10):
        pipes, runs = [], {}
        for name, (model, options) in settings.items():
            for form in ("now", "one token per call"):
                pipe = load(model, threads)
                if form != "now":
                    one_token_per_call(pipe)
                runs[(name, form)] = [_SessionRuns(r.session) for r in pipe.model.runners.runners]
                pipes.append(Setting(f"{name} | {form}", pipe, options))
        before = {k: sum(c.count for c in v) for k, v in runs.items()}
        timed = time_settings(pipes, repeats, lambda r: ([r % 10] * batch, 100 * r))
        for name in settings:
            now, old = timed[f"{name} | now"], timed[f"{name} | one token per call"]
            if not np.array_equal(now.result.tokens, old.result.tokens):
                raise AssertionError(f"{name}: one token per call drew other tokens")
            n_runs = {form: (sum(c.count for c in runs[(name, form)]) - before[(name, form)]) / repeats / batch
                      for form in ("now", "one token per call")}
            rows.append([f"batch {batch}: {name}", f"{n_runs['one token per call']:.1f}", f"{n_runs['now']:.1f}",
                         f"{old.median / batch:.4f}", f"{now.median / batch:.4f}", f"{old.median / now.median:.2f}x"])
            print(rows[-1], flush=True)
    return ["# Explicit positions: what batching a call's tokens buys on the 1.22 form", "", head, "",
            *markdown_table(["setting (batch: images, 2 rows each with guidance)", "session runs / image, one token "
                             "per call (before)", "now", "s / image, before", "now", "speed-up"], rows), "",
            "Before: every multi-token call as one-token calls, all rows together. Now: one call; on the 1.22 form a "
            "call over a past at several rows is split by rows or by tokens, whichever makes fewer runs (contract "
            "section 3.3), so where a call has no more tokens than rows (batch 10) it runs as before. Same graph, "
            "same tokens (checked); settings interleaved, median of the repeats. Times on a loaded shared machine "
            "(load average in the line above): read them against the session-run counts.", ""]


FILES = {"parallel": "parallel_decoding.md", "jacobi": "jacobi.md", "anyorder": "anyorder.md",
         "batching": "explicit_positions.md", "arpg": "arpg.md", "arpg-large": "arpg_large.md"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sections", nargs="*", metavar="SECTION", help=f"any of {', '.join(SECTIONS)} (default: all)")
    ap.add_argument("--quick", action="store_true",
                    help="a few images per class, one window, no GPT-B: a smoke run; results printed only")
    ap.add_argument("--out-dir", type=Path, help="where the results files go (default benchmarks/results; with "
                                                 "--quick, nowhere)")
    ap.add_argument("--per-class", type=int, help="images per class of the quality sets (default: parallel 50, "
                                                  "jacobi 30, anyorder 50)")
    ap.add_argument("--threads", type=int, help="onnxruntime CPU threads (default: anyorder 1, the others 2)")
    ap.add_argument("--skip-gpt-b", action="store_true", help="the digit models only")
    ap.add_argument("--gpt-b-repeats", type=int, help="runs per setting on the GPT-B shape (default: parallel 3, "
                                                      "anyorder 2)")
    ap.add_argument("--windows", type=int, nargs="+", help="jacobi windows (default 2 4 8)")
    ap.add_argument("--seeds", type=int, nargs="+", help="anyorder quality seeds (default 0 1000 2000)")
    ap.add_argument("--sweep", type=int, nargs="+", help="anyorder step counts at the first seed (default 4 6 8 12 16)")
    ap.add_argument("--batches", type=int, nargs="+", help="anyorder timing: images per call (default 1 10 50)")
    ap.add_argument("--timing-repeats", type=int, help="anyorder timing: repeats at 10 images per call, scaled by "
                                                       "10 / batch, at least 3 (default 10)")
    ap.add_argument("--arpg-model", type=Path, help="arpg: the ARPG model directory (default models/arpg)")
    ap.add_argument("--raster-inpaint", type=int, help="anyorder inpainting: held-out digits for the raster "
                                                       "baseline (default 100)")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    sections = [s for s in SECTIONS if s in args.sections] or list(SECTIONS)
    if args.quick:  # a smoke run: no large shapes (--skip-gpt-b below)
        sections = [s for s in sections if s != "arpg-large"]
    if args.quick:
        args.skip_gpt_b = True
    rest = [a for a in (sys.argv[1:] if argv is None else argv) if a not in SECTIONS]
    args.command = lambda section: " ".join(["python benchmarks/decoders.py", section, *rest])
    out_dir = args.out_dir or (None if args.quick else RESULTS)
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    quality = Quality()
    for section in sections:
        if section == "parallel":
            lines = parallel_section(args, quality)
        elif section == "jacobi":
            lines = jacobi_section(args, quality)
        elif section == "batching":
            lines = batching_section(args)
        elif section == "arpg":
            lines = arpg_section(args, quality, out_dir)
        elif section == "arpg-large":
            lines = arpg_large(args, args.threads or 2)
        else:
            lines = anyorder_section(args, quality, out_dir)
        text = "\n".join(lines) + "\n"
        if out_dir:
            (out_dir / FILES[section]).write_text(text)
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
