"""Tokenizer decoder variants (fp16, int8): the conv decoder is most of a small model's bytes.

The VQ-16 decoder is 170 MB of fp32 weights, more than an int4 GPT-B, so a memory-limited
device wants it smaller. A variant's quality is its image: each one's PSNR against the fp32
decoder's image is measured here, on a fixed probe (seeded random code grids at the trained
grid), and bounded: below `min_psnr_db` the export fails with one line. The measured value and
the bound go into the manifest (`graphs.tokenizer_decoder.psnr_db` / `min_psnr_db`) and into
the graph's metadata, where parity.py reads that this decoder is bounded by PSNR, not by the
fp32 pixel tolerance.

Methods (measured on VQ-16 at 256 px on this project's AVX2 CPUs, see
benchmarks/results/memory.md):
- int8: static QDQ of every Conv (per-channel int8 weights, uint8 activations, MinMax
  calibration on seeded random codes, never the probe's); onnxruntime runs it as QLinearConv,
  faster than fp32. Dynamic quantization (ConvInteger) was slower than fp32 here.
- fp16: float16 graph with float32 IO (as `--quant fp16`): a GPU variant; the CPU provider
  casts it back to float32 at load (more memory, slower).
"""
from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import onnx

from .quantize import QuantizationError, data_file, fp16_graph, quiet_logging, save_graph

TOKENIZER_PRECISIONS = ("fp32", "fp16", "int8")
# Lowest PSNR (dB) a variant may have against the fp32 decoder's image on the probe.
MIN_PSNR_DB = {"fp16": 40.0, "int8": 30.0}
PSNR_CAP_DB = 200.0  # identical images: recorded as this (JSON has no infinity)
PROBE = {"seed": 1234, "batch": 2}
CALIBRATION = {"seed": 4321, "batch": 2}
META_PRECISION = "tessera.decoder_precision"


def psnr_db(image: np.ndarray, reference: np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> float:
    """PSNR of `image` against `reference`, both clipped to the value range (what a user sees),
    peak = the range's width; capped at PSNR_CAP_DB."""
    lo, hi = value_range
    err = float(np.mean((np.clip(image, lo, hi).astype(np.float64) - np.clip(reference, lo, hi)) ** 2))
    if err == 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10((hi - lo) ** 2 / err))


def _codes(size: int, grid: int, seed: int, batch: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, size, (batch, grid, grid), dtype=np.int64)


def _run(path: Path, codes: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: codes})[0].astype(np.float32)


def _int8_qdq(src: Path, dst: Path, size: int, grid: int) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            codes = _codes(size, grid, CALIBRATION["seed"], CALIBRATION["batch"])
            self._feeds = iter([{"codes": codes[i:i + 1]} for i in range(len(codes))])

        def get_next(self):
            return next(self._feeds, None)

    with quiet_logging(logging.WARNING):
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        use_external_data_format=data_file(src).exists())


def quantize_decoder(path: Path, precision: str, codebook_size: int, grid: int, min_psnr_db: float | None = None,
                     threshold: int | None = None) -> dict:
    """Rewrite the fp32 decoder graph at `path` to `precision` in place; measure its PSNR against the
    fp32 graph's images on the probe (`PROBE` at `grid` x `grid` codes) and refuse it below
    `min_psnr_db` (default MIN_PSNR_DB) with one line. Returns the manifest entry's fields."""
    if precision not in TOKENIZER_PRECISIONS:
        raise QuantizationError(f"unknown tokenizer precision {precision!r}; choose one of {TOKENIZER_PRECISIONS}")
    path = Path(path)
    if precision == "fp32":
        return {"precision": "fp32", "method": "none"}
    bound = MIN_PSNR_DB[precision] if min_psnr_db is None else float(min_psnr_db)
    size = codebook_size
    probe = _codes(size, grid, PROBE["seed"], PROBE["batch"])
    reference = _run(path, probe)
    try:
        if precision == "fp16":
            with quiet_logging(logging.WARNING):
                model = fp16_graph(onnx.load(str(path)))
            method, options = "float16-cast", {"io_kept_float32": "all"}
        else:
            with tempfile.TemporaryDirectory(dir=path.parent, prefix=".decoder-int8-") as scratch:
                dst = Path(scratch) / path.name
                _int8_qdq(path, dst, size, grid)
                model = onnx.load(str(dst))  # external data (if any) loads from the scratch dir
            method = "qdq-static"
            options = {"ops": ["Conv"], "weights": "int8 per-channel", "activations": "uint8 per-tensor",
                       "calibration": f"minmax, {CALIBRATION['batch']} random code grids (seed "
                                      f"{CALIBRATION['seed']})"}
    except QuantizationError:
        raise
    except Exception as e:
        raise QuantizationError(f"tokenizer decoder {precision} conversion failed: {type(e).__name__}: {e}") from e
    del model.metadata_props[:]  # stamp: parity.py bounds this decoder by PSNR
    onnx.helper.set_model_props(model, {META_PRECISION: precision})
    save_graph(model, path, threshold)
    measured = psnr_db(_run(path, probe), reference)
    if not measured >= bound:  # NaN fails too
        raise QuantizationError(f"tokenizer decoder {precision}: PSNR {measured:.2f} dB against the fp32 decoder's "
                                f"image on the probe is below the bound {bound:g} dB (--tokenizer-min-psnr); keep "
                                f"the fp32 tokenizer or lower the bound")
    options["probe"] = f"{PROBE['batch']} random {grid}x{grid} code grids (seed {PROBE['seed']})"
    return {"precision": precision, "method": method, "options": options, "psnr_db": round(measured, 3),
            "min_psnr_db": bound}


def decoder_precision(path: Path) -> str:
    """The precision a decoder variant was stamped with here ('fp32' when unstamped)."""
    model = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in model.metadata_props if p.key == META_PRECISION), "fp32")
