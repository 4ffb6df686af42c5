"""Peak memory on LlamaGen GPT-B + VQ-16 (random weights, LlamaGen's checkpoint layout): of `tessera export`,
and of the whole pipeline with its tokenizer decoder variants.

    python benchmarks/memory.py export                 # -> benchmarks/results/export_memory.md
    python benchmarks/memory.py pipeline --rounds 3 --out /tmp/pm_tables.md   # the tables of results/memory.md
    python benchmarks/memory.py pipeline --decoders-only --rounds 3   # the decoder table (for a quiet moment)
    python benchmarks/memory.py export --quick         # GPT-Tiny + VQ-Tiny: a smoke run of a section
    python benchmarks/memory.py nitro                  # text-to-image, full size -> benchmarks/results/nitro.md
    python benchmarks/memory.py nitro --quick          # the small test configs: a smoke run

Weights: random, saved as LlamaGen saves them (`{"model": state_dict}`) under the published file names, so an
export infers its presets from the names as a user's would. Their initialisations are the real models' scales
(linear and embedding weights N(0, 0.02) as LlamaGen's init; convolutions and GroupNorm at PyTorch's defaults),
so a decoded image spans about [-2, 2] like a trained one's instead of collapsing to 0, which would make any PSNR
look good. Every peak RSS (VmHWM: the whole process) is measured in a fresh worker process
(tessera.bench.protocol).

export: `tessera export` of the two checkpoints; its peak against the fp32 weights it loads, time per stage.
pipeline: `tessera generate` (one image with guidance, the preset's 4.0; int4 transformer) with each tokenizer
decoder variant, both graphs open or --low-memory; tiled decoding against the untiled image; each decoder
variant's time, PSNR and fraction of this CPU's matmul peak, measured just before it. Exports are cached under
benchmarks/.cache/exports (tessera.bench.cache).
"""
from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

from tessera.bench.cache import cached_export
from tessera.bench.env import cpu_model, load_average, run_line
from tessera.bench.protocol import run_worker

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
QUICK = ["--gpt", "GPT-Tiny", "--vq", "VQ-Tiny", "--random-weights"]
GPT_B, VQ_16 = "c2i_B_256.pt", "vq_ds16_c2i.pt"  # LlamaGen's published file names
VARIANTS = {"int4-tok-fp32": "fp32", "int4-tok-int8": "int8", "int4-tok-fp16": "fp16"}
TILES = ((8, 2), (10, 4), (12, 4))  # (tile, overlap) on the 16x16 grid
QUICK_TILES = ((2, 1),)  # GPT-Tiny's 4x4 grid


# --- LlamaGen-layout checkpoints -----------------------------------------------------------------
def write_checkpoints(folder: Path) -> dict[str, int]:
    """FOLDER/c2i_B_256.pt and FOLDER/vq_ds16_c2i.pt, seeded random weights (kept when already there)
    -> their sizes in bytes. Our modules share LlamaGen's state-dict key names."""
    import torch

    from tessera.export.build import build_gpt, build_vq
    from tessera.export.config import gpt_preset, vq_preset

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, build in ((GPT_B, lambda: build_gpt(gpt_preset("c2i_B_256"), None, seed=0)),
                        (VQ_16, lambda: build_vq(vq_preset("vq_ds16_c2i"), None, seed=0))):
        if not (folder / name).is_file():
            torch.save({"model": build().state_dict()}, folder / name)
    return {name: (folder / name).stat().st_size for name in (GPT_B, VQ_16)}  # fp32 tensors + a small zip header


def export_args(folder: Path) -> list[str]:
    """`tessera export` arguments that load the two checkpoints of FOLDER."""
    return ["--gpt-weights", str(Path(folder) / GPT_B), "--vq-weights", str(Path(folder) / VQ_16)]


# --- export ------------------------------------------------------------------------------------
def export(job: dict) -> dict:
    """Worker: `tessera export` in this process (its stage lines go to the worker's log)."""
    from tessera.cli.main import main

    return {"code": main(["export", *job["args"], "--out", job["out"]])}



def export_memory(args) -> list[str]:
    """The export's peak RSS against its fp32 weights, and its stage times (parsed from its log)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sizes = {} if args.quick else write_checkpoints(tmp)
        job = {"args": QUICK if args.quick else export_args(tmp), "out": str(tmp / "out")}
        r = run_worker(f"{__file__}:export", job, tmp, "export")
        log = (tmp / "export.log").read_text()
    if r["code"]:
        raise SystemExit(f"export failed:\n{log}")
    weights_mb = sum(sizes.values()) / 2**20 or float("nan")
    stages = re.findall(r"^export: (\w+)(?: \(([^)]*)\))? done in ([\d.]+)s$", log, re.M)
    return ["# `tessera export` peak memory: LlamaGen GPT-B + VQ-16 (random weights, LlamaGen layout)", "",
            f"Command: `python benchmarks/memory.py export{' --quick' if args.quick else ''}`", "",
            f"Machine: {cpu_model()}, load average {' / '.join(f'{x:.1f}' for x in load_average())}", "",
            "| fp32 weights (GPT-B + VQ-16) | peak RSS | peak / weights | wall |", "|---|---|---|---|",
            f"| {weights_mb:.0f} MB ({', '.join(f'{k} {v / 2**20:.0f} MB' for k, v in sizes.items())}) "
            f"| {r['peak_rss_mib']:.0f} MB | {r['peak_rss_mib'] / weights_mb:.2f}x | {r['worker_s']:.1f} s |", "",
            "| stage | seconds |", "|---|---|", *[f"| {s}{f' ({d})' if d else ''} | {t} |" for s, d, t in stages]]


# --- pipeline ----------------------------------------------------------------------------------
def peak(job: dict) -> dict:
    """Worker: `tessera generate` in this process (or, with `tile`, the same through the API with a tiled
    decode); the protocol adds the process's peak RSS."""
    t0 = time.perf_counter()
    if job["tile"]:
        from tessera.runtime.pipeline import Pipeline

        pipe = Pipeline.load(job["model"], providers="cpu", low_memory=job["low_memory"])
        pipe.decode(pipe.generate_tokens([job["label"]], seed=0), tile=job["tile"])
        code = 0
    else:
        from tessera.cli.main import main

        args = ["generate", str(job["label"]), "--model", job["model"], "--seed", "0", "--out", job["png"], "-q"]
        # explicit both ways: the command's default changed from both graphs open to --low-memory
        code = main(args + (["--low-memory"] if job["low_memory"] else ["--no-low-memory"]))
    return {"code": code, "seconds": time.perf_counter() - t0}


def export_variants(quick: bool) -> dict[str, Path]:
    """The three tokenizer variants of one int4 transformer, through the one export cache."""
    base, folder = QUICK, CACHE / "llamagen-random"
    if not quick:
        write_checkpoints(folder)
        base = export_args(folder)
    return {name: cached_export(CACHE / "exports", ("tiny-" if quick else "gpt-b-") + name,
                                [*base, "--quant", "int4", *(["--tokenizer-quant", tok] if tok != "fp32" else [])],
                                [] if quick else sorted(folder.glob("*.pt"))) for name, tok in VARIANTS.items()}


def decoder_gflop() -> float:
    """Multiply-adds x 2 of the VQ-16 decoder (post_quant_conv, convs, attention) for one 16x16 grid."""
    import torch

    from tessera.export.config import vq_preset
    from tessera.export.vq import AttnBlock, VQModel

    vq = VQModel(vq_preset("vq_ds16_c2i")).eval()
    flops = [0.0]

    def conv(m, inputs, out):
        flops[0] += 2.0 * out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]

    def attn(m, inputs, out):
        b, c, h, w = out.shape
        flops[0] += 2 * 2.0 * b * (h * w) ** 2 * c  # q @ k and v @ w

    for m in vq.decoder.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(conv)
        if isinstance(m, AttnBlock):
            m.register_forward_hook(attn)
    vq.post_quant_conv.register_forward_hook(conv)
    with torch.no_grad():
        vq.decode_codes(torch.zeros(1, 16, 16, dtype=torch.long))
    return flops[0] / 1e9


def best_s(fn, repeats: int = 5) -> float:
    """The fastest of `repeats` calls (on a shared machine noise only adds time)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_peaks(threads: int) -> dict:
    """This CPU's reachable peaks: fp32 GFLOP/s (numpy and onnxruntime MatMul) and int8 GOP/s
    (onnxruntime MatMulInteger, uint8 x int8), each the best of a few 2048^3 products."""
    import numpy as np
    from decode_peers import constant_matmul  # the weight-streaming benchmark's one-op onnxruntime session

    n = 2048
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    peaks = {"numpy_fp32_gflops": 2 * n ** 3 / best_s(lambda: a @ b) / 1e9}
    for key, op, x, w in (("ort_fp32_gflops", "MatMul", a, b),
                          ("ort_int8_gops", "MatMulInteger", rng.integers(0, 255, (n, n), dtype=np.uint8),
                           rng.integers(-127, 127, (n, n), dtype=np.int8))):
        sess = constant_matmul(op, x.dtype, w, threads)
        peaks[key] = 2 * n ** 3 / best_s(lambda: sess.run(None, {"x": x})) / 1e9
    return peaks


def dynamic_int8(src: Path, dst: Path) -> Path:
    """The ConvInteger alternative (dynamic int8 Convs), for the comparison only."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not dst.is_file():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["Conv"], weight_type=QuantType.QUInt8,
                         use_external_data_format=True)
    return dst


def decoders(dirs: dict[str, Path], rounds: int, threads: int, label: int) -> list[dict]:
    """Each decoder variant on the same generated tokens: median decode seconds, PSNR vs fp32."""
    import onnxruntime as ort

    from tessera.export.tokenizer_quant import psnr_db
    from tessera.runtime.pipeline import Pipeline

    tokens = Pipeline.load(dirs["int4-tok-int8"], providers="cpu", low_memory=True).generate_tokens([label], seed=0)
    paths = {f"{tok} ({'qdq-static' if tok == 'int8' else 'float16-cast' if tok == 'fp16' else 'none'})":
             dirs[name] / "tokenizer_decoder.onnx" for name, tok in VARIANTS.items()}
    fp32 = dirs["int4-tok-fp32"]
    paths["int8 (dynamic, ConvInteger)"] = dynamic_int8(fp32 / "tokenizer_decoder.onnx",
                                                        fp32.with_name(fp32.name + "-decoder-int8-dynamic.onnx"))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    rows, reference = [], None
    for label_, path in paths.items():
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        image = sess.run(None, {"codes": tokens})[0]  # warm-up
        peaks = matmul_peaks(threads)  # right before: a shared machine's share of the CPU changes by the minute
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            sess.run(None, {"codes": tokens})
            times.append(time.perf_counter() - t)
        reference = image if reference is None else reference
        size = path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + ".data"))
        rows.append({"variant": label_, "mb": size / 1e6, "seconds": statistics.median(times),
                     "psnr_db": psnr_db(image, reference), "load": load_average()[0], "peaks": peaks})
        del sess
    return rows


def tiles_psnr(model: Path, tiles, label: int) -> str:
    """PSNR of tiled decodes against the untiled image: GroupNorm statistics and the 16x16 attention
    are per tile, so tiles are not the same image."""
    from tessera.export.tokenizer_quant import psnr_db
    from tessera.runtime.pipeline import Pipeline

    pipe = Pipeline.load(model, providers="cpu", low_memory=True)
    tokens = pipe.generate_tokens([label], seed=0)
    tok = pipe.tokenizer
    full = tok.decode(tokens)
    return ", ".join(f"tile {t} overlap {o}: {psnr_db(tok.decode_tiled(tokens, t, o), full):.1f} dB" for t, o in tiles)


def pipeline_memory(args) -> list[str]:
    """Peak RSS of `tessera generate` per decoder variant and mode, tiled decoding's PSNR, the decoder table."""
    dirs, tiles, label = export_variants(args.quick), QUICK_TILES if args.quick else TILES, 1 if args.quick else 207
    rounds = 1 if args.quick else args.rounds
    command = "python benchmarks/memory.py pipeline" + (" --quick" if args.quick else "") + \
        (" --decoders-only" if args.decoders_only else "") + (f" --rounds {args.rounds}" if not args.quick else "")
    lines = [run_line(command, args.threads), "",
             "| model | mode | peak RSS (MiB) | `tessera generate` s |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as work:
        for name, modes in () if args.decoders_only else (("int4-tok-fp32", ("both", "low")),
                                                           ("int4-tok-int8", ("both", "low", "tile"))):
            for mode in modes:
                job = {"model": str(dirs[name]), "low_memory": mode == "low", "label": label,
                       "tile": tiles[0][0] if mode == "tile" else None, "png": f"{work}/image.png"}
                r = run_worker(f"{__file__}:peak", job, Path(work), f"{name}-{mode}")
                if r["code"]:
                    raise SystemExit(f"tessera generate failed on {name} ({mode}): exit status {r['code']}")
                what = {"both": "--no-low-memory (both graphs open)", "low": "--low-memory",
                        "tile": f"both graphs open, decode(tile={tiles[0][0]}) (API)"}[mode]
                lines.append(f"| {name} | {what} | {r['peak_rss_mib']:.0f} | {r['seconds']:.1f} |")
                print(lines[-1], flush=True)
    if not args.decoders_only:
        lines += ["", "tiled decoding vs untiled (fp32 decoder, the same tokens): "
                  + tiles_psnr(dirs["int4-tok-fp32"], tiles, label)]
    gflop = decoder_gflop()
    lines += ["", f"decoder: {gflop:.0f} GFLOP per 256 px image (VQ-16); peaks measured just before each variant "
              "(GFLOP/s fp32 = best of numpy and onnxruntime MatMul, GOP/s int8 = onnxruntime MatMulInteger)", "",
              "| decoder | file MB | decode s (median) | PSNR vs fp32 (dB) | GFLOP/s | fp32 peak | of fp32 peak | "
              "int8 peak | of int8 peak | load |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in decoders(dirs, rounds, args.threads, label):
        rate, peaks = gflop / r["seconds"], r["peaks"]
        fp32_peak = max(peaks["numpy_fp32_gflops"], peaks["ort_fp32_gflops"])
        lines.append(f"| {r['variant']} | {r['mb']:.0f} | {r['seconds']:.2f} | {r['psnr_db']:.1f} | {rate:.0f} | "
                     f"{fp32_peak:.0f} | {rate / fp32_peak:.0%} | {peaks['ort_int8_gops']:.0f} | "
                     f"{rate / peaks['ort_int8_gops']:.0%} | {r['load']:.1f} |")
        print(lines[-1], flush=True)
    return lines


# --- text-to-image (Nitro-AR, random weights of the published sizes) ------------------------------------
NITRO_PRESETS = {"joint_gan": "Nitro-AR-512px-Joint-GAN", "gan": "Nitro-AR-512px-GAN"}
NITRO_QUICK = {"joint_gan": "nitro-test-joint", "gan": "nitro-test-gan"}


def nitro_image(job: dict) -> dict:
    """Worker: one image (guidance on, the model's steps) with NitroPipeline in this process, its phases timed;
    the protocol adds the process's peak RSS."""
    from tessera.runtime.nitro import NitroPipeline

    t0 = time.perf_counter()
    pipe = NitroPipeline.load(job["model"], providers="cpu", threads=job["threads"], low_memory=job["low_memory"],
                              verify="size")
    load = time.perf_counter() - t0
    runs = [pipe.run(["a red fox in the snow"], seed=i) for i in range(job["rounds"])]
    best = min(runs, key=lambda r: sum(r.timings.values()))
    return {"load_s": load, "timings": best.timings, "total_s": sum(best.timings.values()), "calls": best.calls,
            "seconds": time.perf_counter() - t0}


def nitro_memory(args) -> list[str]:
    """Export each variant (int8 graphs, the text encoder at --text-bits) once, then time one image per
    variant in a fresh process with --low-memory, and its peak RSS."""
    presets = NITRO_QUICK if args.quick else NITRO_PRESETS
    command = "python benchmarks/memory.py nitro" + (" --quick" if args.quick else "") + \
        (f" --rounds {args.rounds}" if args.rounds != 1 else "")
    lines = [run_line(command, args.threads), "",
             "Random weights of the published sizes (text encoder: Llama-3.2-1B's shape; decoder: DC-AE f32c32's), "
             "one 512 px image with guidance, the low-memory pipeline (one phase's graphs open at a time).", "",
             "| variant | graphs | text s | latents s | decode s | image s | calls | peak RSS (MiB) |",
             "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as work:
        for variant in args.variants.split(","):
            export = ["--nitro-preset", presets[variant], "--random-weights", "--quant", "int8",
                      "--text-encoder-bits", str(args.text_bits)]
            model = cached_export(CACHE / "exports", f"nitro-{variant}", export)
            job = {"model": str(model), "threads": args.threads, "low_memory": True, "rounds": args.rounds}
            r = run_worker(f"{__file__}:nitro_image", job, Path(work), f"nitro-{variant}", timeout=3600)
            t = r["timings"]
            calls = ", ".join(f"{k} {v}" for k, v in r["calls"].items())
            lines.append(f"| {variant} | int8, text encoder int{args.text_bits}, decoder fp32 | {t['text']:.1f} | "
                         f"{t['latents']:.1f} | {t['images']:.1f} | {r['total_s']:.1f} | {calls} | "
                         f"{r['peak_rss_mib']:.0f} |")
            print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="section", required=True)
    ex = sub.add_parser("export", help="peak memory and stage times of tessera export")
    ex.add_argument("--out", help="default benchmarks/results/export_memory.md; with --quick, printed only")
    pi = sub.add_parser("pipeline", help="the whole pipeline's peak memory and the tokenizer decoder variants")
    pi.add_argument("--rounds", type=int, default=5)
    pi.add_argument("--threads", type=int, default=2)
    pi.add_argument("--out", help="write the tables here too (benchmarks/results/memory.md is written by hand "
                                  "around them)")
    pi.add_argument("--decoders-only", action="store_true", help="only the decoder table (quick, for a quiet moment)")
    ni = sub.add_parser("nitro", help="text-to-image (Nitro-AR): time and peak memory of one image per variant")
    ni.add_argument("--variants", default="joint_gan,gan")
    ni.add_argument("--rounds", type=int, default=1, help="images per variant (the fastest is reported)")
    ni.add_argument("--threads", type=int, default=2)
    ni.add_argument("--text-bits", type=int, default=4, choices=[4, 8])
    ni.add_argument("--out", help="default benchmarks/results/nitro.md; with --quick, printed only")
    for s in (ex, pi, ni):
        s.add_argument("--quick", action="store_true", help="the smallest models, one round: a smoke run")
    args = p.parse_args(argv)
    if args.section == "nitro":
        lines = nitro_memory(args)
        out = args.out or (None if args.quick else HERE / "results" / "nitro.md")
    elif args.section == "export":
        lines = export_memory(args)
        out = args.out or (None if args.quick else HERE / "results" / "export_memory.md")
    else:
        lines, out = pipeline_memory(args), args.out
    if out:
        Path(out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
