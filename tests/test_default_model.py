"""The shipped default model: loads through the runtime alone and draws every digit."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tessera.models import default_model_dir
from tessera.runtime import Pipeline, load_manifest

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def default_pipe():
    return Pipeline.load(providers="cpu")


def test_shipped_directory_is_complete_and_small():
    root = default_model_dir()
    m = load_manifest(root, verify="full")
    assert m.class_names == DIGITS
    assert m.grid == (7, 7) and m.spec.image_size == (28, 28)
    assert (root / "MODEL_CARD.md").is_file() and (root / "samples.png").is_file()
    assert m.spec.weights, "the PyTorch weights ship so the model can be re-exported"
    total = sum(p.stat().st_size for p in root.iterdir())
    assert total < 25e6, f"default model is {total / 1e6:.1f} MB"


def test_every_class_generates_a_valid_image(default_pipe):
    images = default_pipe.generate(list(range(10)), seed=0)
    assert len(images) == 10
    for im in images:
        arr = np.asarray(im.convert("L"), dtype=np.float32)
        assert im.size == (28, 28)
        # A digit: some ink, mostly background, not a flat or noisy field.
        ink = (arr > 128).mean()
        assert 0.03 < ink < 0.5, ink


def test_runtime_alone_generates_with_the_shipped_model(tmp_path):
    out = tmp_path / "seven.png"
    code = textwrap.dedent(f"""
        import sys
        sys.modules['torch'] = None
        from tessera.cli.main import main
        raise SystemExit(main(["generate", "seven", "--out", r"{out}", "-q"]))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.is_file()
