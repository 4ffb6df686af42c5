"""Quantized variants of an exported model directory: fp16, int8 and int4 graphs, rewritten in place.

Each variant is a complete model directory; `model_dir.write_model_dir` exports fp32 into a
temporary directory, calls `quantize_graphs` there, measures parity against the PyTorch fp32
model and only then writes the manifest and checksums.

Methods (chosen from measurements on this project's AVX2 / no-VNNI CPUs, see
benchmarks/results/quant_variants.md and the bounds in parity.py):

- fp16: `onnxruntime.transformers.float16.convert_float_to_float16`. The transformer keeps
  `logits` float32 (sampling runs in numpy on float32) while the KV cache inputs / outputs become
  float16, which halves cache memory; the runtime reads the KV dtype from the session. The
  tokenizer graphs become fp16 inside, keeping float32 / int64 IO. A GPU variant: fp16 on the
  CPU provider is slow.
- int8 (default method "weight-only"): blockwise symmetric 8-bit weights in `MatMulNBits`
  (bits 8, block 32, accuracy_level 4 = int8 compute; level 0 is ~9x slower on CPU) for the
  MatMuls with constant weights. Measured on a 6-layer 384-d random model: max logit error 0.16
  (4.6% of the logit scale), argmax agreement 0.90, 6.8 ms per decode step vs fp32 8.4 ms.
  Method "dynamic": `quantize_dynamic` of constant-weight MatMuls (MatMulInteger +
  DynamicQuantizeLinear) with uint8 weights (signed int8 weights saturate on non-VNNI CPUs),
  error 0.33 (9%), agreement 0.81, 5.4 ms: faster but twice the error. Tokenizer stays fp32
  (unless `QuantOptions.tokenizer` asks for a decoder variant: export/tokenizer_quant.py).
- int4: weight-only blockwise `MatMulNBits` (symmetric, `block_size` 32 by default) on the
  MatMuls with constant weights. Tokenizer stays fp32.

Graphs whose tensors pass `external_data_threshold` bytes (16 MiB by default) keep their weights
in `<graph>.onnx.data` next to the graph. onnxruntime memory-maps such a file instead of parsing
the weights into the protobuf and copying them out again: on GPT-B that lowered the peak memory
of opening the transformer from 551 to 430 MiB (fp32) and 193 to 100 MiB (int4), and opening
time from 1.3 to 0.5 s. Small graphs stay one file. Above 2 GB there is no choice (protobuf).
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx

PRECISIONS = ("fp32", "fp16", "int8", "int4")
# Weights above this go to a memory-mapped `.data` file (see the module docstring); it is also
# far under protobuf's 2 GiB message limit.
EXTERNAL_DATA_THRESHOLD = 16 * 2**20
EXTERNAL_DATA_ENV = "TESSERA_EXTERNAL_DATA_THRESHOLD"
INT8_ACCURACY_LEVEL = 4  # int8 compute: level 0 (fp32 compute) of 8-bit MatMulNBits was 9x slower on CPU
INT8_METHODS = ("weight-only", "dynamic")
INT8_WEIGHT_TYPES = ("uint8", "int8-reduce-range")  # for the dynamic method


from .errors import ExportError  # noqa: E402


class QuantizationError(ExportError):
    """A graph could not be converted to the requested precision."""


@dataclass
class QuantOptions:
    int4_block_size: int = 32
    # 4 = int8 compute: GPT-B int4 decode 11.9 vs 33.9 ms/token here, default-model accuracy 97.8 vs
    # 98.4% (benchmarks/results/quant_variants.md); 0 / None: fp32 compute.
    int4_accuracy_level: int | None = 4
    int8_method: str = "weight-only"  # or "dynamic"
    int8_block_size: int = 32  # weight-only
    int8_weights: str = "uint8"  # dynamic: or "int8-reduce-range" (7-bit signed weights)
    int8_per_channel: bool = False  # dynamic
    fp16_kv_cache: bool = True  # fp16 variant: KV cache IO in float16 (logits stay float32)
    external_data_threshold: int | None = None  # None: $TESSERA_EXTERNAL_DATA_THRESHOLD or 16 MiB
    # The tokenizer decoder's own precision (export/tokenizer_quant.py): None follows `precision`
    # (fp16 for fp16, else fp32); "fp32", "fp16" or "int8" whatever the transformer's precision.
    tokenizer: str | None = None
    tokenizer_min_psnr: float | None = None  # dB against the fp32 decoder; None: the variant's default

    def validate(self) -> "QuantOptions":
        bs = self.int4_block_size
        if bs < 16 or bs & (bs - 1):
            raise ValueError(f"int4 block size must be a power of two >= 16, got {bs}")
        if self.int4_accuracy_level is not None and self.int4_accuracy_level not in (0, 1, 2, 3, 4):
            raise ValueError(f"int4 accuracy level must be 0..4 (0 = unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 "
                             f"compute), got {self.int4_accuracy_level}")
        if self.int8_method not in INT8_METHODS:
            raise ValueError(f"int8 method must be one of {INT8_METHODS}, got {self.int8_method!r}")
        if self.int8_block_size < 16 or self.int8_block_size & (self.int8_block_size - 1):
            raise ValueError(f"int8 block size must be a power of two >= 16, got {self.int8_block_size}")
        if self.int8_weights not in INT8_WEIGHT_TYPES:
            raise ValueError(f"int8 weights must be one of {INT8_WEIGHT_TYPES}, got {self.int8_weights!r}")
        if self.tokenizer not in (None, "fp32", "fp16", "int8"):
            raise ValueError(f"tokenizer precision must be fp32, fp16 or int8, got {self.tokenizer!r}")
        bound = self.tokenizer_min_psnr
        if bound is not None and not (isinstance(bound, (int, float)) and math.isfinite(bound) and 0 <= bound <= 200):
            raise ValueError(f"tokenizer min PSNR must be a number of dB in 0..200, got {bound!r}")
        return self


def external_data_threshold(value: int | None = None) -> int:
    if value is not None:
        return int(value)
    env = os.environ.get(EXTERNAL_DATA_ENV)
    return int(float(env)) if env else EXTERNAL_DATA_THRESHOLD


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's initializers (what decides whether it fits one protobuf)."""
    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) if t.HasField("raw_data") else t.ByteSize()
    return total


def data_file(path: Path) -> Path:
    return path.with_name(path.name + ".data")


def save_graph(model: onnx.ModelProto, path: Path, threshold: int | None = None) -> bool:
    """Save `model` to `path`, its tensors in `<path>.data` when they pass the threshold.

    Returns True when external data was written. Any stale data file of an earlier save is removed.
    """
    path = Path(path)
    data = data_file(path)
    external = tensor_bytes(model) > external_data_threshold(threshold)
    if data.exists():
        # Tensors may still point into it (loaded lazily): pull them in before deleting it.
        onnx.load_external_data_for_model(model, str(path.parent))
        data.unlink()
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024, convert_attribute=False)
    else:
        onnx.save_model(model, str(path))
    return external


def finalize_graph(path: Path, threshold: int | None = None) -> bool:
    """Move a freshly exported graph's weights to `<graph>.data` if it is too big for one file."""
    path = Path(path)
    size = path.stat().st_size + (data_file(path).stat().st_size if data_file(path).exists() else 0)
    if size <= external_data_threshold(threshold) and not data_file(path).exists():
        return False
    return save_graph(onnx.load(str(path)), path, threshold)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


# --- the methods -------------------------------------------------------------------------------
def fp16_transformer(model: onnx.ModelProto, kv_cache_fp16: bool = True) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=["logits"] if kv_cache_fp16 else True)


def fp16_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 inside, float32 / int64 IO (the tokenizer graphs). The codebook's l2 normalisation
    (ReduceL2: no fp16 CPU kernel) stays fp32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, "ReduceL2"])


@contextmanager
def quiet_logging(level: int = logging.INFO):
    """onnxruntime's quantizers and converters log every node at INFO on the root logger (and advise
    pre-processing at WARNING): silence records up to `level` while they run."""
    previous = logging.root.manager.disable
    logging.disable(level)
    try:
        yield
    finally:
        logging.disable(previous)


def int8_dynamic(src: Path, dst: Path, opts: QuantOptions) -> None:
    """Dynamic int8 of constant-weight MatMuls (MatMulInteger + DynamicQuantizeLinear)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    reduce = opts.int8_weights == "int8-reduce-range"
    with quiet_logging():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=opts.int8_per_channel,
                         reduce_range=reduce, weight_type=QuantType.QInt8 if reduce else QuantType.QUInt8,
                         use_external_data_format=data_file(src).exists(),
                         # contrib ops (fused graphs) defeat shape inference: their outputs are float
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})


def nbits_weight_only(model: onnx.ModelProto, bits: int, block_size: int,
                      accuracy_level: int | None) -> onnx.ModelProto:
    """Blockwise symmetric 4- or 8-bit weights (MatMulNBits) for constant-weight MatMuls."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    with quiet_logging():
        q = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True,
                                 accuracy_level=accuracy_level, op_types_to_quantize=("MatMul",))
        q.process()
    return q.model.model


# --- a directory -------------------------------------------------------------------------------
def _entry(precision: str, method: str, **options) -> dict:
    return {"precision": precision, "method": method, **({"options": options} if options else {})}


def quantize_graphs(graphs: dict[str, Path], precision: str, opts: QuantOptions | None = None) -> dict[str, dict]:
    """Rewrite the fp32 graphs (name -> path; 'transformer', 'tokenizer_decoder', 'tokenizer_encoder')
    to `precision`, in place. Returns each graph's manifest fields (precision, method, options)."""
    opts = (opts or QuantOptions()).validate()
    threshold = external_data_threshold(opts.external_data_threshold)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    entries = {name: _entry("fp32", "none") for name in graphs}
    if precision == "fp32":
        return entries
    try:
        if precision == "fp16":
            for name, path in graphs.items():
                if name == "tokenizer_decoder" and opts.tokenizer is not None:
                    continue  # its own precision (tokenizer_quant.quantize_decoder, after this)
                model = onnx.load(str(path))
                if name == "transformer":
                    model = fp16_transformer(model, opts.fp16_kv_cache)
                    entries[name] = _entry("fp16", "float16-cast", kv_cache="float16" if opts.fp16_kv_cache
                                           else "float32", io_kept_float32=["logits"] if opts.fp16_kv_cache
                                           else "all")
                else:
                    model = fp16_graph(model)
                    entries[name] = _entry("fp16", "float16-cast", io_kept_float32="all")
                save_graph(model, path, threshold)
        elif precision == "int8" and opts.int8_method == "weight-only":
            path = graphs["transformer"]
            model = nbits_weight_only(onnx.load(str(path)), 8, opts.int8_block_size, INT8_ACCURACY_LEVEL)
            save_graph(model, path, threshold)
            entries["transformer"] = _entry("int8", "matmul-nbits-weight-only", bits=8,
                                            block_size=opts.int8_block_size, symmetric=True,
                                            accuracy_level=INT8_ACCURACY_LEVEL)
        elif precision == "int8":
            path = graphs["transformer"]
            with tempfile.TemporaryDirectory(dir=path.parent, prefix=".int8-") as scratch:
                dst = Path(scratch) / path.name
                int8_dynamic(path, dst, opts)
                model = onnx.load(str(dst))  # external data (if any) loads from the scratch dir
            save_graph(model, path, threshold)
            entries["transformer"] = _entry("int8", "dynamic",
                                            weights=opts.int8_weights, per_channel=opts.int8_per_channel,
                                            activations="uint8 dynamic")
        elif precision == "int4":
            path = graphs["transformer"]
            model = nbits_weight_only(onnx.load(str(path)), 4, opts.int4_block_size, opts.int4_accuracy_level)
            save_graph(model, path, threshold)
            entries["transformer"] = _entry("int4", "matmul-nbits-weight-only", bits=4,
                                            block_size=opts.int4_block_size, symmetric=True,
                                            accuracy_level=opts.int4_accuracy_level or 0)
    except QuantizationError:
        raise
    except Exception as e:
        raise QuantizationError(f"{precision} conversion failed: {type(e).__name__}: {e}") from e
    return entries


def count_ops(path: Path) -> dict[str, int]:
    """Op type -> count, for reports and tests."""
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def initializer_types(path: Path) -> dict[str, int]:
    """ONNX element type name -> number of initializers."""
    counts: dict[str, int] = {}
    for t in onnx.load(str(path), load_external_data=False).graph.initializer:
        name = onnx.TensorProto.DataType.Name(t.data_type)
        counts[name] = counts.get(name, 0) + 1
    return counts
