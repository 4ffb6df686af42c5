"""Any-order decoding vs sequential raster decoding: calls, time per image, quality, inpainting.

    python benchmarks/anyorder.py                  # everything (GPT-B exports cached under ~/.cache/tessera)
    python benchmarks/anyorder.py --skip-gpt-b     # the digit models only

Digit models (held-out split, the default's classifier and Fréchet distance from
benchmarks/eval_default.py): the shipped raster default decoded sequentially (49 calls) against the
shipped any-order model (models/anyorder) at several step counts and both schedule orders; the
sampling noise floor is the spread over seeds of the same setting. Time per image: batches of 50
images with the default guidance, sequential and any-order runs interleaved in one loop (the
machine is shared: ratios from the same run). Inpainting: every held-out digit with a random half
of its cells kept, conditioned on its own class; the classifier reads the requested class back.
GPT-B shape (LlamaGen GPT-B, 16x16 tokens, random weights, any-order mode; fp32 and int4): one image
with guidance (batch 2), sequential decoding on the same graph vs any-order steps.
Writes benchmarks/results/anyorder.md and the sample sheet benchmarks/results/anyorder_steps.png.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tessera.bench.cache import GPT_B_RANDOM, cached_export
from tessera.bench.env import run_line
from tessera.bench.report import markdown_table
from tessera.bench.stats import mean_std
from tessera.bench.timing import interleaved, same_graph_sequential

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

ANYORDER_DIR = ROOT / "models" / "anyorder"
COMMAND = "python benchmarks/anyorder.py"
EXPORTS = HERE / ".cache" / "exports"


def anyorder_tokens(pipe, labels, seed, steps, order="locality", guidance=None):
    """The any-order decoder's result (token grids, calls) with an explicit schedule order."""
    from tessera.runtime.anyorder import AnyOrderDecoder
    from tessera.runtime.decoders import DecoderRequest, run_decoder
    from tessera.runtime.sampling import ImageStreams

    cfg = pipe.config(seed=seed, steps=steps, guidance_scale=guidance)
    labels = np.asarray(labels, np.int64)
    request = DecoderRequest(labels, cfg.grid, cfg.guidance_scale, cfg.sampling,
                            ImageStreams(cfg.seeds(len(labels)), cfg.grid[0] * cfg.grid[1]))
    with pipe._runners.borrow() as runner:
        result = run_decoder(AnyOrderDecoder(cfg.steps, order), runner, pipe.layout, request)
    return result


def quality_rows(seq, ao, data, clf, per_class, seeds, sweep) -> list[dict]:
    from eval_default import evaluate_runtime

    rows = []
    settings = [("sequential (raster default)", seq, None, "-", s) for s in seeds]
    settings += [("any-order", ao, 8, "locality", s) for s in seeds]
    settings += [("any-order", ao, st, "locality", seeds[0]) for st in sweep if st != 8]
    settings += [("any-order", ao, 8, "random", s) for s in seeds]
    settings += [(f"any-order, guidance {g}", ao, 8, "locality", seeds[0]) for g in (3.5, 4.0)]
    for name, pipe, steps, order, seed in settings:
        guidance = float(name.rsplit(" ", 1)[1]) if "guidance" in name else None
        run = (lambda labels, sd, p=pipe: p.run(labels, seed=sd, decode_images=False)) if steps is None else \
            (lambda labels, sd, p=pipe, st=steps, o=order, g=guidance: anyorder_tokens(p, labels, sd, st, o, g))
        m = evaluate_runtime(run, pipe.tokenizer, data, clf, per_class, seed)
        rows.append(dict(name=name, steps=steps, order=order, seed=seed, calls=m["calls_per_batch"],
                         accuracy=m["accuracy"], frechet=m["frechet"]))
        print(rows[-1], flush=True)
    return rows


def timing_rows(seq, ao, batch: int, repeats: int, extra: dict) -> list[dict]:
    """Seconds per image at `batch` images per call (default guidance: 2 rows per image), the settings
    interleaved: each repeat runs every setting once, in turn."""
    settings = {"sequential (raster default)": (seq, None), "any-order, 8 steps": (ao, 8),
                "any-order, 4 steps": (ao, 4),
                **{f"any-order, 8 steps, {name}": (pipe, 8) for name, pipe in extra.items()}}
    timed = interleaved({k: lambda r, p=p, st=st: p.run([r % 10] * batch, seed=100 * r, decode_images=False,
                                                        **({"steps": st} if st else {})).calls
                         for k, (p, st) in settings.items()}, repeats)
    rows = [dict(name=f"batch {batch}: {k}", calls=c, seconds=float(np.median(t)) / batch)
            for k, (t, c) in timed.items()]
    for row in rows:
        print(row, flush=True)
    return rows


def inpaint_rows(ao, seq, data, clf, raster_images: int, anyorder_images: int | None = None) -> list[dict]:
    """Held-out digits, a random half of the cells kept, conditioned on the true class."""
    import torch

    test_x, test_y = data["test_x"].numpy(), data["test_y"].numpy()
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
        acc = clf.accuracy(images, torch.from_numpy(test_y[:count]))
        rows.append(dict(name=name, images=count, accuracy=acc, kept_exact=exact, seconds=seconds / count))
        print(rows[-1], flush=True)
    return rows


def sample_sheet(ao, path: Path, steps_list) -> None:
    """One row per step count, one digit per class (seed 0), 2x nearest-neighbour."""
    from PIL import Image

    rows = []
    for steps in steps_list:
        ims = ao.tokenizer.decode(anyorder_tokens(ao, list(range(10)), 0, steps).tokens)
        g = ((np.clip(ims.mean(1), -1, 1) + 1) * 127.5).round().astype(np.uint8)  # [10, 28, 28]
        rows.append(np.concatenate(list(g), axis=1))
    sheet = np.concatenate(rows, axis=0)
    Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(path, optimize=True)


def gpt_b_rows(precision: str, repeats: int, steps_list, threads: int) -> list[dict]:
    from tessera.runtime import Pipeline

    path = cached_export(EXPORTS, f"gpt-b-anyorder-{precision}", [*GPT_B_RANDOM, "--gpt-set", "order=any",
                                                                  "--target-onnxruntime", "1.32", "--quant", precision])
    ao = Pipeline.load(path, providers="cpu", threads=threads, verify="none")
    seq = same_graph_sequential(path, providers="cpu", threads=threads, verify="none")
    settings = {"sequential": (seq, {}), **{f"any-order, {st} steps": (ao, {"steps": st}) for st in steps_list}}
    timed = interleaved({k: lambda r, p=p, kw=kw: p.run([r], guidance_scale=4.0, top_k=2000, seed=r,
                                                        decode_images=False, **kw).calls
                         for k, (p, kw) in settings.items()}, repeats)
    rows = [dict(name=f"{precision}: {k}", calls=c, seconds=float(np.median(t))) for k, (t, c) in timed.items()]
    for row in rows:
        print(row, flush=True)
    return rows


def speed_table(rows: list[dict]) -> list[str]:
    return markdown_table(["decoding", "calls / image", "s / image", "speed-up"], [
        [r["name"], f"{r['calls']:.0f}", f"{r['seconds']:.4f}", f"{rows[0]['seconds'] / r['seconds']:.2f}x"]
        for r in rows])


def quality_table(rows: list[dict]) -> list[str]:
    return markdown_table(["decoding", "steps", "order", "seed", "calls / batch", "accuracy", "Fréchet dist."], [
        [r["name"], str(r["steps"] or 49), r["order"], str(r["seed"]), f"{r['calls']:.0f}", f"{r['accuracy']:.1%}",
         f"{r['frechet']:.1f}"] for r in rows])


def summary(rows: list[dict], name: str, steps, order: str) -> tuple[float, float, float, float]:
    """Mean and standard deviation over seeds of (accuracy, Fréchet distance) for one setting."""
    sel = [r for r in rows if r["name"] == name and r["steps"] == steps and r["order"] == order]
    (acc, acc_sd), (fd, fd_sd) = (mean_std([r[k] for r in sel]) for k in ("accuracy", "frechet"))
    return acc, acc_sd, fd, fd_sd


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1000, 2000])
    ap.add_argument("--sweep", type=int, nargs="+", default=[4, 6, 8, 12, 16])
    ap.add_argument("--timing-repeats", type=int, default=10)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--raster-inpaint", type=int, default=100, help="held-out digits for the raster baseline")
    ap.add_argument("--gpt-b-repeats", type=int, default=2)
    ap.add_argument("--skip-gpt-b", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="onnxruntime CPU threads (1: on a shared 2-core machine a second thread mostly waits)")
    ap.add_argument("--out", help="default results/anyorder.md; with --quick, printed only")
    ap.add_argument("--quick", action="store_true", help="a few images of every digit table, no GPT-B: a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.per_class, args.seeds, args.sweep, args.timing_repeats, args.batches = 2, [0, 1000], [8], 1, [10]
        args.raster_inpaint, args.skip_gpt_b = 2, True
    results = HERE / "results"
    out = Path(args.out) if args.out else None if args.quick else results / "anyorder.md"
    from eval_default import held_out

    from tessera.runtime import Pipeline

    seq = Pipeline.load(providers="cpu", threads=args.threads)
    ao = Pipeline.load(ANYORDER_DIR, providers="cpu", threads=args.threads)
    data, clf = held_out()
    sheet = Path(tempfile.mkdtemp()) / "steps.png" if args.quick else results / "anyorder_steps.png"
    sample_sheet(ao, sheet, [2, 4, 8, 16, 49])

    extra = {label: Pipeline.load(cached_export(EXPORTS, f"digits-anyorder-{graph}-1.22", [
        "--from", str(ANYORDER_DIR), "--graph", graph, "--target-onnxruntime", "1.22"], [ANYORDER_DIR]),
        providers="cpu", threads=args.threads)
        for label, graph in (("1.22 form: one query per call", "fused"), ("portable graph", "portable"))}

    lines = ["# Any-order decoding vs sequential raster decoding", "",
             run_line(COMMAND + (" --quick" if args.quick else ""), args.threads), ""]
    lines += ["## Digit models: time per image (default guidance 3.0: two rows per image)", "",
              "Medians over the repeats; each repeat runs every setting once, in turn; speed-up against "
              "sequential decoding at the same batch. The any-order model ships the fused graph in its "
              "onnxruntime 1.32 form (several queries per call run batched); the 1.22 form runs multi-token "
              "calls one query at a time (runtime/compat.py) and the portable graph is the standard-ops one, "
              "both shown for comparison. An any-order call carries the previous step's codes and this step's "
              "queries: 8 steps feed about 2 x 49 token positions per image against sequential's 49, so the "
              "gain shrinks as batches grow and compute, not the per-call cost, dominates.", ""]
    for batch in args.batches:
        lines += speed_table(timing_rows(seq, ao, batch, max(3, args.timing_repeats * 10 // batch), extra))
        lines.append("")

    q_rows = quality_rows(seq, ao, data, clf, args.per_class, args.seeds, args.sweep)
    sa, sa_sd, sf, sf_sd = summary(q_rows, "sequential (raster default)", None, "-")
    aa, aa_sd, af, af_sd = summary(q_rows, "any-order", 8, "locality")
    ra, ra_sd, rf, rf_sd = summary(q_rows, "any-order", 8, "random")
    lines += ["", f"## Digit models: quality ({args.per_class} images per class, default sampling, held-out "
                  "classifier of benchmarks/eval_default.py)", ""]
    lines += quality_table(q_rows)
    lines += ["", f"Over seeds {args.seeds} (mean ± std, the sampling noise floor):", "",
              "| setting | accuracy | Fréchet dist. |", "|---|---|---|",
              f"| sequential raster default, 49 calls | {sa:.1%} ± {sa_sd:.1%} | {sf:.1f} ± {sf_sd:.1f} |",
              f"| any-order, 8 steps, locality order | {aa:.1%} ± {aa_sd:.1%} | {af:.1f} ± {af_sd:.1f} |",
              f"| any-order, 8 steps, random order | {ra:.1%} ± {ra_sd:.1%} | {rf:.1f} ± {rf_sd:.1f} |",
              "", f"Any-order (8 steps, locality) minus sequential: accuracy {100 * (aa - sa):+.1f} points, "
                  f"Fréchet distance {af / sf:.2f}x."]

    i_rows = inpaint_rows(ao, seq, data, clf, args.raster_inpaint, 10 if args.quick else None)
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
        for precision in ("fp32", "int4"):
            lines += speed_table(gpt_b_rows(precision, args.gpt_b_repeats, [24, 16], args.threads))
            lines.append("")
        lines.append("Reading: sequential decoding is memory-bound (the weights are read once per call for two "
                     "token rows); an any-order call of 40-60 token rows is compute-bound on this CPU, and any-order "
                     "decoding evaluates about twice as many token positions per image (each cell once as a query, "
                     "once as context). The time gain is therefore capped by compute, far below the calls ratio "
                     "(10.7x at 24 steps); int4 cuts the weight reads that sequential decoding pays for, so its gain "
                     "is smaller still. On an accelerator, where 60 rows cost about what 2 do, the calls ratio is "
                     "the relevant bound (not measured here: no GPU).")
    lines += ["", "Sample sheet: `benchmarks/results/anyorder_steps.png` — rows 2, 4, 8, 16, 49 steps; one digit "
                  "per class 0..9, seed 0, default sampling, locality order."]
    if out:
        out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
