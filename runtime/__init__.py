"""Tessera's runtime: numpy + onnxruntime + pillow, never torch.

The names below load on first use (PEP 562), so `import tessera.runtime.sampling` and every core
module import and run without onnxruntime. Each module sits in one layer and imports (at module
level) only its own layer and those above it in this table (tests/test_runtime_layers.py reads the
table and checks it against the imports):

    module            layer      why it sits there
    __init__          core       the lazy names below; imports nothing at load
    errors            core       the TesseraError tree every layer raises
    versions          core       version strings -> numbers (manifest and onnxruntime versions)
    spec              core       the typed manifest (ModelSpec): every rule a host reads, and class names
    manifest          core       a model directory on disk: read once, paths kept inside, checksums
    self_test         core       the load's probe: the recorded inputs and what the logits must be
    results           core       GenerationResult, Step, CancelToken: what the calls give back
    sampling          core       guidance and the id-ordered sampler (numpy)
    schedule          core       any-order step schedules (numpy)
    decoders          core       the decoder interface, the sequential decoder and the one driver
    parallel          core       a decoder strategy (ZipAR rows); the registry in config names it
    jacobi            core       a decoder strategy (speculative Jacobi drafts)
    anyorder          core       a decoder strategy (any-order models)
    arpg              core       a decoder strategy (ARPG models: mask-token queries, never cached)
    config            core       GenerationConfig resolved against the manifest; the decoder registry
    images            core       contact sheets of PIL images (the CLI's grids)
    backend           platform   where onnxruntime is imported (one lazily imported place)
    providers         platform   execution providers: names, aliases, what is really there
    session           platform   opening sessions with the caller's options, one-line errors
    provider_fit      platform   warnings for a graph on a provider that does not suit it
    compat            platform   which onnxruntime builds load which graphs
    transformer       platform   the transformer graph's runner (KV cache, IO binding)
    runners           platform   the runner pool: one runner per running generation
    tokenizer         platform   the tokenizer graphs: codes <-> images, token grids -> PIL (8-bit rule)
    loaded            platform   a model's graphs opened, probed and lent out (LoadedModel, low_memory)
    image_processing  features   pixels and masks for editing (fit, boxes, masks -> cells)
    preview           features   partial images while a generation runs
    editing           features   inpaint, outpaint, continuation (EditPipeline, EditCalls)
    pipeline          api        Pipeline: the generation API over all of the above
    nitro             api        NitroPipeline: text-to-image models (family nitro-ar), their loop

Core is numpy only (no onnxruntime; tests/test_runtime_only.py runs it without); platform puts
onnxruntime behind `backend` and the sessions it opens; features build on both; the API on all.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "errors": ("TesseraError", "ModelDirectoryError", "ProviderError", "InvalidInputError", "ExtraNotInstalledError"),
    "manifest": ("MANIFEST_NAME", "Manifest", "load_manifest"),
    "config": ("GenerationConfig", "DECODERS"),
    "decoders": ("Decoder", "DecoderRequest", "SequentialDecoder"),
    "pipeline": ("Pipeline",),
    "nitro": ("NitroPipeline",),
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
