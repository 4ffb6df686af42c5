"""Shared fixtures: a tiny random-weight model exported once per test session (seconds)."""
from __future__ import annotations

from pathlib import Path

import pytest

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="session")
def tiny_models():
    from tessera.export.build import build_gpt, build_vq
    from tessera.export.config import gpt_preset, vq_preset

    # A larger logit scale than init's std 0.02 makes sampling decisions depend on the weights.
    gpt = build_gpt(gpt_preset("GPT-Tiny"), None, seed=1)
    for p in gpt.parameters():
        p.data.mul_(10.0) if p.dim() > 1 else None
    vq = build_vq(vq_preset("VQ-Tiny"), None, seed=2)
    return gpt, vq


def _export_tiny(tmp_path_factory, tiny_models, graph: str, target_onnxruntime: str = "1.22") -> Path:
    from tessera.export.model_dir import ExportSpec, write_model_dir

    gpt, vq = tiny_models
    out = tmp_path_factory.mktemp("models") / f"tiny-{graph}-{target_onnxruntime}"
    spec = ExportSpec(name="tiny", class_names=DIGITS, include_weights=True, graph=graph,
                      generation_defaults={"guidance_scale": 2.0, "top_k": 16},
                      target_onnxruntime=target_onnxruntime)
    return write_model_dir(gpt, vq, out, spec)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny_models) -> Path:
    """The default export: fused transformer graph, shared-buffer KV cache."""
    return _export_tiny(tmp_path_factory, tiny_models, "fused")


@pytest.fixture(scope="session")
def batched_dir(tmp_path_factory, tiny_models) -> Path:
    """The fused graph in its onnxruntime 1.32 form: multi-query calls over a past run batched."""
    return _export_tiny(tmp_path_factory, tiny_models, "fused", "1.32")


@pytest.fixture(scope="session")
def portable_dir(tmp_path_factory, tiny_models) -> Path:
    """The standard-ops transformer graph, concat KV cache."""
    return _export_tiny(tmp_path_factory, tiny_models, "portable")


@pytest.fixture(scope="session", params=["fused", "portable"])
def any_dir(request, tiny_dir, portable_dir) -> Path:
    return tiny_dir if request.param == "fused" else portable_dir


@pytest.fixture(scope="session")
def tiny_pipe(tiny_dir):
    from tessera.runtime import Pipeline

    return Pipeline.load(tiny_dir, providers="cpu")


@pytest.fixture(scope="session", params=["fused", "portable"])
def any_pipe(request, tiny_dir, portable_dir):
    """The runtime on each transformer graph kind."""
    from tessera.runtime import Pipeline

    return Pipeline.load(tiny_dir if request.param == "fused" else portable_dir, providers="cpu")
