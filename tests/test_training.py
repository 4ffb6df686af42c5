"""Training smoke tests: the fixed split, and a few steps of each trainer lower the loss (< 30 s total)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from tessera.export.config import VQConfig, vq_preset
from tessera.export.vq import VQModel
from tessera.training.data import HELDOUT_PER_CLASS, load_mnist, mnist_split, split_indices
from tessera.training.train_tokenizer import load_vq, train_tokenizer
from tessera.training.train_transformer import train_transformer


@pytest.fixture(scope="module")
def full():
    return mnist_split()


@pytest.fixture(scope="module")
def data(full):
    """A small slice keeps the trainers' in-memory encoding and held-out evaluation fast."""
    return dict(train_x=full["train_x"][:64], train_y=full["train_y"][:64],
                test_x=full["test_x"][::20], test_y=full["test_y"][::20])


def test_split_is_fixed_disjoint_and_documented(full):
    data = full
    _, y = load_mnist()
    tr, te = split_indices(y)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == len(y) == 5000
    assert HELDOUT_PER_CLASS >= 50
    counts = np.bincount(y[te], minlength=10)
    assert (counts == HELDOUT_PER_CLASS).all()
    for c in range(10):  # the last HELDOUT_PER_CLASS of each class, in original order
        assert (te[y[te] == c] == np.flatnonzero(y == c)[-HELDOUT_PER_CLASS:]).all()
    tr2, te2 = split_indices(load_mnist()[1])
    assert (tr == tr2).all() and (te == te2).all()
    assert torch.equal(data["test_y"], torch.from_numpy(y[te]))
    assert data["train_x"].shape == (5000 - 10 * HELDOUT_PER_CLASS, 3, 28, 28)
    assert data["test_x"].dtype == torch.float32 and data["test_y"].dtype == torch.int64
    assert float(data["train_x"].min()) >= -1.0 and float(data["train_x"].max()) <= 1.0


def _curve(metrics):
    losses = [v for _, v in metrics["loss_curve"]]
    return float(np.mean(losses[:2])), float(np.mean(losses[-2:]))


def test_tokenizer_few_steps_lower_loss_and_resume(tmp_path, data):
    out = str(tmp_path / "vq")
    kw = dict(batch_size=8, lr=2e-3, seed=0, subset=None, progress=False, warmup=2, ckpt_every=4,
              reinit_every=0, shift=0, evaluate=False, data=data)
    m = train_tokenizer(out, steps=8, **kw)
    first, last = _curve(m)
    assert last < first
    for name in ("vq.safetensors", "config.json", "metrics.json", "checkpoint.pt"):
        assert os.path.exists(os.path.join(out, name))
    assert VQConfig.from_dict(json.load(open(os.path.join(out, "config.json")))).grid == 7
    # resuming continues from the checkpoint step
    m2 = train_tokenizer(out, steps=10, **kw)
    assert torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)["step"] == 10
    assert m2["loss_curve"][0] == m["loss_curve"][0]
    vq = load_vq(out)
    assert vq.encode_codes(data["test_x"][:2]).shape == (2, 7, 7)


def test_transformer_few_steps_lower_loss(tmp_path, data):
    torch.manual_seed(0)
    vq = VQModel(vq_preset("VQ-Digits"))  # an untrained tokenizer is enough to produce codes
    m = train_transformer(str(tmp_path / "gpt"), vq=vq, steps=8, batch_size=8, lr=2e-3, seed=0, subset=None,
                          progress=False, warmup=2, eval_every=4, aug_copies=0, data=data)
    first, last = _curve(m)
    assert last < first
    assert m["evals"][-1]["heldout_loss"] < m["evals"][0]["heldout_loss"] + 1e-6
    for name in ("gpt.safetensors", "config.json", "metrics.json"):
        assert os.path.exists(tmp_path / "gpt" / name)


def test_classifier_cache_is_outside_the_tree(tmp_path, monkeypatch):
    """The evaluation classifier caches under $TESSERA_CACHE, else $XDG_CACHE_HOME/tessera, else
    ~/.cache/tessera: never in the source tree."""
    from pathlib import Path

    from tessera.training.digit_classifier import cache_dir

    monkeypatch.setenv("TESSERA_CACHE", str(tmp_path / "tc"))
    assert cache_dir() == tmp_path / "tc"
    monkeypatch.delenv("TESSERA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "tessera"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "tessera"
    assert not cache_dir().resolve().is_relative_to(Path(__file__).resolve().parents[1])
