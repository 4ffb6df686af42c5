"""Tessera's runtime: numpy + onnxruntime + pillow, never torch.

The names below load on first use (PEP 562), so `import tessera.runtime.sampling` and the other
numpy-only modules (config, schedule, spec, manifest, the decoders and their driver) import and run
without onnxruntime; only the modules that open sessions (backend, session, transformer, tokenizer,
pipeline) need it.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "errors": ("TesseraError", "ModelDirectoryError", "ProviderError", "InvalidInputError", "ExtraNotInstalledError"),
    "manifest": ("MANIFEST_NAME", "Manifest", "load_manifest"),
    "config": ("GenerationConfig", "DECODERS"),
    "decoders": ("Decoder", "DecoderRequest", "SequentialDecoder"),
    "pipeline": ("Pipeline",),
    "loaded": ("default_model_dir",),
    "providers": ("available_providers", "resolve_providers"),
    "results": ("CancelToken", "GenerationCancelled", "GenerationResult", "Step"),
    "sampling": ("ImageStreams", "SamplingConfig"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
