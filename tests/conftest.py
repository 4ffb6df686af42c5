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


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny_models) -> Path:
    from tessera.export.model_dir import ExportSpec, write_model_dir

    gpt, vq = tiny_models
    out = tmp_path_factory.mktemp("models") / "tiny"
    spec = ExportSpec(name="tiny", class_names=DIGITS, include_weights=True,
                      generation_defaults={"guidance_scale": 2.0, "top_k": 16})
    return write_model_dir(gpt, vq, out, spec)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_dir):
    from tessera.runtime import Pipeline

    return Pipeline.load(tiny_dir, providers="cpu")
