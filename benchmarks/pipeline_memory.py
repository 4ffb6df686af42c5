"""The whole pipeline's memory and the tokenizer decoder variants, on LlamaGen GPT-B + VQ-16 at 256 px.

    python benchmarks/pipeline_memory.py            # exports once into benchmarks/.cache/exports (tessera.bench.cache)
    python benchmarks/pipeline_memory.py --rounds 5 --out benchmarks/results/memory.md
    python benchmarks/pipeline_memory.py --quick    # GPT-Tiny + VQ-Tiny, every table once (a smoke run, < 1 min)

Weights: random, in LlamaGen's checkpoint layout (llamagen_random.py: the real models' init scales, so the
decoder's image spans about [-2, 2] like a trained one's rather than collapsing to 0, which would make any
PSNR look good), loaded through the LlamaGen file names, so the export presets are the real ones. Each peak
RSS (VmHWM: the whole process) is measured in a fresh worker process (tessera.bench.protocol) running
`tessera generate`: one image with guidance (the preset's 4.0), int4 transformer.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from llamagen_random import export_args, write_checkpoints

from tessera.bench.cache import cached_export
from tessera.bench.env import load_average, run_line
from tessera.bench.protocol import run_worker

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
VARIANTS = {"int4-tok-fp32": "fp32", "int4-tok-int8": "int8", "int4-tok-fp16": "fp16"}
TILES = ((8, 2), (10, 4), (12, 4))  # (tile, overlap) on the 16x16 grid
QUICK_TILES = ((2, 1),)  # GPT-Tiny's 4x4 grid
QUICK = ["--gpt", "GPT-Tiny", "--vq", "VQ-Tiny", "--random-weights"]


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
    from decode_peers import constant_matmul

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="write the markdown tables here too")
    p.add_argument("--decoders-only", action="store_true", help="only the decoder table (quick, for a quiet moment)")
    p.add_argument("--quick", action="store_true", help="GPT-Tiny + VQ-Tiny, one round: a smoke run of every table")
    args = p.parse_args()
    dirs, tiles, label = export_variants(args.quick), QUICK_TILES if args.quick else TILES, 1 if args.quick else 207
    rounds = 1 if args.quick else args.rounds
    lines = [run_line("python benchmarks/pipeline_memory.py" + (" --quick" if args.quick else ""), args.threads), "",
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
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
