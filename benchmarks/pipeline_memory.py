"""The whole pipeline's memory and the tokenizer decoder variants, on LlamaGen GPT-B + VQ-16 at 256 px.

    python benchmarks/pipeline_memory.py            # exports once into ~/.cache/tessera/pipeline-memory
    python benchmarks/pipeline_memory.py --rounds 5 --out benchmarks/results/memory.md

Weights: random, in LlamaGen's checkpoint layout (tests/llamagen_layout.py), loaded through the
LlamaGen file names (`c2i_B_256.pt`, `vq_ds16_c2i.pt`), so the export presets are the real ones.
The decoder's weights get PyTorch's default scales (GroupNorm 1/0, convs U(+-1/sqrt(fan_in))), so
its image spans about [-2, 2] like a trained one's rather than collapsing to 0 (which would make
any PSNR look good). Each peak RSS (VmHWM: the whole process) is measured in a fresh process
running `tessera generate`: one image with guidance (the preset's 4.0), int4 transformer.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path.home() / ".cache" / "tessera" / "pipeline-memory"
ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"int4-tok-fp32": "fp32", "int4-tok-int8": "int8", "int4-tok-fp16": "fp16"}


def peak_worker(model: str, low_memory: bool, tile: int | None = None) -> None:
    """`tessera generate` in this process (or, with `tile`, the same through the API with a tiled
    decode), then its peak RSS (VmHWM) and the seconds it took."""
    t0 = time.perf_counter()
    if tile:
        from tessera.runtime.pipeline import Pipeline

        pipe = Pipeline.load(model, providers="cpu", low_memory=low_memory)
        pipe.decode(pipe.generate_tokens([207], seed=0), tile=tile)
        code = 0
    else:
        from tessera.cli.main import main

        args = ["generate", "207", "--model", model, "--seed", "0", "--out", "/tmp/pipeline-memory.png", "-q"]
        code = main(args + (["--low-memory"] if low_memory else []))
    seconds = time.perf_counter() - t0
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(json.dumps({"code": code, "peak_mb": hwm / 1024, "seconds": seconds}))


def _fresh(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def write_checkpoints() -> None:
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from llamagen_layout import gpt_shapes, vq_shapes

    g = torch.Generator().manual_seed(0)

    def init(key: str, shape: tuple) -> torch.Tensor:
        if len(shape) == 1 and "norm" in key:
            return torch.ones(shape) if key.endswith("weight") else torch.zeros(shape)
        if key.endswith("codebook_used"):
            return torch.zeros(shape)
        if len(shape) == 4:  # conv: PyTorch's default bound
            return (torch.rand(shape, generator=g) * 2 - 1) / math.sqrt(shape[1] * shape[2] * shape[3])
        if key.endswith("bias"):
            return (torch.rand(shape, generator=g) * 2 - 1) * 0.02
        return torch.randn(shape, generator=g) * 0.02  # LlamaGen's init for linear and embedding weights

    CACHE.mkdir(parents=True, exist_ok=True)
    for name, shapes in (("c2i_B_256.pt", gpt_shapes(768, 2048, 12)), ("vq_ds16_c2i.pt", vq_shapes())):
        if not (CACHE / name).is_file():
            torch.save({"model": {k: init(k, s) for k, s in shapes.items()}}, CACHE / name)


def export_variants() -> None:
    write_checkpoints()
    for name, tok in VARIANTS.items():
        if not (CACHE / name / "tessera.json").is_file():
            subprocess.run(["tessera", "export", "-q", "--gpt-weights", str(CACHE / "c2i_B_256.pt"),
                            "--vq-weights", str(CACHE / "vq_ds16_c2i.pt"), "--quant", "int4",
                            *(["--tokenizer-quant", tok] if tok != "fp32" else []), "--out", str(CACHE / name)],
                           check=True)


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


def matmul_peaks(threads: int) -> dict:
    """This CPU's reachable peaks: fp32 GFLOP/s (numpy and onnxruntime MatMul) and int8 GOP/s
    (onnxruntime MatMulInteger, uint8 x int8), each the best of a few 2048^3 products."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n = 2048
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    best = math.inf
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    peaks = {"numpy_fp32_gflops": 2 * n ** 3 / best / 1e9}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    for key, op, x, w, out_type in (
            ("ort_fp32_gflops", "MatMul", a, b, TensorProto.FLOAT),
            ("ort_int8_gops", "MatMulInteger", rng.integers(0, 255, (n, n), dtype=np.uint8),
             rng.integers(-127, 127, (n, n), dtype=np.int8), TensorProto.INT32)):
        node = helper.make_node(op, ["x", "w"], ["y"])
        graph = helper.make_graph([node], "peak", [helper.make_tensor_value_info(
            "x", helper.np_dtype_to_tensor_dtype(x.dtype), [n, n])], [helper.make_tensor_value_info("y", out_type,
                                                                                                   [n, n])],
            [numpy_helper.from_array(w, "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        best = math.inf
        for _ in range(5):
            t = time.perf_counter()
            sess.run(None, {"x": x})
            best = min(best, time.perf_counter() - t)
        peaks[key] = 2 * n ** 3 / best / 1e9
    return peaks


def dynamic_int8(src: Path, dst: Path) -> Path:
    """The ConvInteger alternative (dynamic int8 Convs), for the comparison only."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not dst.is_file():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["Conv"], weight_type=QuantType.QUInt8,
                         use_external_data_format=True)
    return dst


def decoders(rounds: int, threads: int) -> list[dict]:
    """Each decoder variant on the same generated tokens: median decode seconds, PSNR vs fp32."""
    import numpy as np
    import onnxruntime as ort

    from tessera.export.tokenizer_quant import psnr_db
    from tessera.runtime.pipeline import Pipeline

    tokens = Pipeline.load(CACHE / "int4-tok-int8", providers="cpu", low_memory=True).generate_tokens([207], seed=0)
    paths = {f"{tok} ({'qdq-static' if tok == 'int8' else 'float16-cast' if tok == 'fp16' else 'none'})":
             CACHE / name / "tokenizer_decoder.onnx" for name, tok in VARIANTS.items()}
    paths["int8 (dynamic, ConvInteger)"] = dynamic_int8(CACHE / "int4-tok-fp32" / "tokenizer_decoder.onnx",
                                                        CACHE / "decoder-int8-dynamic.onnx")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    rows, reference = [], None
    for label, path in paths.items():
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
        rows.append({"variant": label, "mb": size / 1e6, "seconds": statistics.median(times),
                     "psnr_db": psnr_db(image, reference), "load": os.getloadavg()[0], "peaks": peaks})
        del sess
    return rows


def tiles_psnr() -> str:
    """PSNR of tiled decodes against the untiled image: GroupNorm statistics and the 16x16 attention
    are per tile, so tiles are not the same image."""
    from tessera.export.tokenizer_quant import psnr_db
    from tessera.runtime.pipeline import Pipeline

    pipe = Pipeline.load(CACHE / "int4-tok-fp32", providers="cpu", low_memory=True)
    tokens = pipe.generate_tokens([207], seed=0)
    tok = pipe.tokenizer
    full = tok.decode(tokens)
    return ", ".join(f"tile {t} overlap {o}: {psnr_db(tok.decode_tiled(tokens, t, o), full):.1f} dB"
                     for t, o in ((8, 2), (10, 4), (12, 4)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="write the markdown tables here too")
    p.add_argument("--decoders-only", action="store_true", help="only the decoder table (quick, for a quiet moment)")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        tile = next((int(w[4:]) for w in args.worker if w.startswith("tile")), None)
        return peak_worker(args.worker[0], "low" in args.worker[1:], tile)
    export_variants()
    lines = [f"load average at start: {os.getloadavg()[0]:.1f} (2 cores, shared)", "",
             "| model | mode | peak RSS (MiB) | `tessera generate` s |", "|---|---|---|---|"]
    for name, modes in () if args.decoders_only else (("int4-tok-fp32", ("default", "low")),
                                                       ("int4-tok-int8", ("default", "low", "tile8"))):
        for mode in modes:
            r = _fresh("--worker", str(CACHE / name), mode)
            what = {"low": "--low-memory", "tile8": "default, decode(tile=8) (API)"}.get(mode, "default")
            lines.append(f"| {name} | {what} | {r['peak_mb']:.0f} | {r['seconds']:.1f} |")
            print(lines[-1], flush=True)
    if not args.decoders_only:
        lines += ["", "tiled decoding vs untiled (fp32 decoder, the same tokens): " + tiles_psnr()]
    gflop = decoder_gflop()
    lines += ["", f"decoder: {gflop:.0f} GFLOP per 256 px image; peaks measured just before each variant (GFLOP/s "
              "fp32 = best of numpy and onnxruntime MatMul, GOP/s int8 = onnxruntime MatMulInteger)", "",
              "| decoder | file MB | decode s (median) | PSNR vs fp32 (dB) | GFLOP/s | fp32 peak | of fp32 peak | "
              "int8 peak | of int8 peak | load |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in decoders(args.rounds, args.threads):
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
