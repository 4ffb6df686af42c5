"""Which transformer graph kind and precision suit each execution provider, and a warning when a
model directory does not suit the provider it runs on.

Why per provider: the fused graph's contrib operators (GroupQueryAttention,
SkipSimplifiedLayerNormalization, MatMulNBits) are implemented by the CPU and CUDA providers, and
CUDA's GroupQueryAttention runs in fp16 only; other providers compile standard ONNX operators and
hand contrib operators back to the CPU, copying the KV cache across every step. The rows marked
untested follow onnxruntime's operator documentation; only the CPU rows are exercised by this
project's tests (tests/test_ort_matrix.py).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .spec import GraphSpec


@dataclass(frozen=True)
class ProviderFit:
    best: tuple[str, str]  # (graph kind, precision) to export for this provider
    good: frozenset  # every (kind, precision) that runs well on it
    why: str
    tested: bool = False  # exercised by this project's tests


_STANDARD = frozenset({("portable", "fp16"), ("portable", "fp32")})
_CPU = frozenset((k, p) for k in ("fused", "portable") for p in ("fp32", "int8", "int4"))

FITS = {
    "CPUExecutionProvider": ProviderFit(("fused", "int4"), _CPU, "fp16 has no fast CPU kernels", tested=True),
    "CUDAExecutionProvider": ProviderFit(("fused", "fp16"), _STANDARD | {("fused", "fp16")},
                                         "CUDA's GroupQueryAttention runs fp16 only, so an fp32/int8/int4 fused "
                                         "graph runs attention on the CPU; int8/int4 MatMulNBits fall back too"),
    "TensorrtExecutionProvider": ProviderFit(("portable", "fp16"), _STANDARD, "TensorRT compiles standard operators"),
    "ROCMExecutionProvider": ProviderFit(("portable", "fp16"), _STANDARD, "contrib operator coverage varies"),
    "MIGraphXExecutionProvider": ProviderFit(("portable", "fp16"), _STANDARD, "MIGraphX compiles standard operators"),
    "DmlExecutionProvider": ProviderFit(("portable", "fp16"), _STANDARD, "DirectML runs standard operators"),
    "OpenVINOExecutionProvider": ProviderFit(("portable", "fp32"), _STANDARD, "OpenVINO compiles standard operators"),
    "CoreMLExecutionProvider": ProviderFit(("portable", "fp16"), _STANDARD, "CoreML compiles standard operators"),
    "QNNExecutionProvider": ProviderFit(("portable", "fp16"), _STANDARD, "QNN compiles standard operators"),
    "WebGpuExecutionProvider": ProviderFit(("portable", "fp16"), _STANDARD, "WebGPU runs standard operators"),
}


def fit_warning(graph: "GraphSpec", provider: str, model_name: str) -> str | None:
    """A one-line warning when the transformer graph does not suit `provider`, else None."""
    fit = FITS.get(provider)
    kind, precision = graph.kind, graph.precision
    if fit is None or (kind, precision) in fit.good:
        return None
    return (f"{model_name}: a {kind} {precision} transformer is a poor fit for {provider} ({fit.why}); "
            f"export one with `tessera export --from DIR --graph {fit.best[0]} --quant {fit.best[1]}`")


def warn_if_unsuited(graph: "GraphSpec", provider: str, model_name: str) -> str | None:
    msg = fit_warning(graph, provider, model_name)
    if msg:
        warnings.warn(msg, RuntimeWarning, stacklevel=4)  # the caller of Pipeline.load
    return msg
