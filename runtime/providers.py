"""Pick onnxruntime execution providers: the best available one by default, or exactly what was asked."""
from __future__ import annotations

import onnxruntime as ort

from .errors import ProviderError

# Preference for providers="auto": CUDA, then AMD (ROCm / MIGraphX), then DirectML / CoreML, then CPU.
AUTO_ORDER = (
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
    "CPUExecutionProvider",
)

ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def resolve_providers(request: str | list[str] | tuple[str, ...] = "auto") -> list[str]:
    """'auto', one name / alias, or a list of them -> provider names in priority order.

    An explicitly requested provider that this onnxruntime build lacks is an error that lists
    the available ones (a silent fallback to CPU would hide a 10x slowdown).
    """
    available = available_providers()
    if request is None or request == "auto":
        chosen = [p for p in AUTO_ORDER if p in available]
        return chosen or ["CPUExecutionProvider"]
    names = [request] if isinstance(request, str) else list(request)
    resolved = []
    for name in names:
        full = ALIASES.get(name.lower(), name) if isinstance(name, str) else name
        if full not in available:
            raise ProviderError(
                f"execution provider {name!r} is not available in this onnxruntime build; available: "
                f"{', '.join(available)}. Install the matching package (e.g. onnxruntime-gpu for CUDA) "
                "or use providers='auto'."
            )
        resolved.append(full)
    return resolved
