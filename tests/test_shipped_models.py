"""Every model directory shipped in models/ verifies in full (each listed file's size and sha256, the card
included: editing a card without its manifest entry breaks loading) and generates an image."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

MODELS = Path(__file__).resolve().parents[1] / "models"
SHIPPED = sorted(p.parent for p in MODELS.glob("*/tessera.json"))


def test_models_are_shipped():
    assert {p.name for p in SHIPPED} >= {"default", "anyorder"}


@pytest.mark.parametrize("model_dir", SHIPPED, ids=lambda p: p.name)
def test_a_shipped_model_verifies_and_generates(model_dir):
    from tessera.runtime import Pipeline

    pipe = Pipeline.load(model_dir, providers="cpu", verify="full")
    result = pipe.run([3], seed=0)
    assert result.tokens.shape[0] == 1 and np.asarray(result.images[0]).size > 0
