"""ARPG against ARPG's own code (`hp-l33/ARPG`, `models/arpg.py`), on small random weights.

Needs their source, which this repository does not ship: set TESSERA_ARPG_SOURCE to a checkout (the
folder holding `models/arpg.py`) and install `einops`; skipped otherwise (not run in CI). Their file
imports `transformers` only for `PretrainedConfig`, a base class of plain attributes: when transformers
is absent a stand-in class is supplied.

Checks, fp32: their state dict loads strictly into ours; for the same cell order, their `generate`
(guidance, linear schedule, arccos and cosine, top-k 1 = greedy) and our `generate_arpg` give identical
tokens, and the guided logits of every step agree within 1e-4 of their scale.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from tessera.export.arpg import ARPG, generate_arpg
from tessera.export.checkpoints import load_strict
from tessera.export.config import GPTConfig
from tessera.runtime.sampling import SamplingConfig

SOURCE = os.environ.get("TESSERA_ARPG_SOURCE")
pytestmark = pytest.mark.skipif(
    not SOURCE or not (Path(SOURCE) / "models" / "arpg.py").is_file()
    or importlib.util.find_spec("einops") is None,
    reason="set TESSERA_ARPG_SOURCE to a checkout of hp-l33/ARPG and install einops")


def _upstream():
    if "transformers.configuration_utils" not in sys.modules and importlib.util.find_spec("transformers") is None:
        cu = types.ModuleType("transformers.configuration_utils")
        cu.PretrainedConfig = type("PretrainedConfig", (), {})
        sys.modules.setdefault("transformers", types.ModuleType("transformers"))
        sys.modules["transformers.configuration_utils"] = cu
    spec = importlib.util.spec_from_file_location("arpg_upstream", Path(SOURCE) / "models" / "arpg.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("schedule,steps,guidance_schedule", [("arccos", 5, "linear"), ("cosine", 6, "constant"),
                                                              ("arccos", 16, "linear")])
def test_generate_matches_upstream(schedule, steps, guidance_schedule):
    up = _upstream()
    torch.manual_seed(0)
    args = up.ModelArgs(dim=64, n_layer=4, n_head=4, vocab_size=64, num_classes=10, block_size=16,
                        token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)
    theirs = up.Transformer(args).eval()
    with torch.no_grad():
        torch.nn.init.normal_(theirs.head.weight, std=0.5)  # upstream zero-inits the head
        for name, p in theirs.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.1)
    cfg = GPTConfig(dim=64, n_layer=4, n_head=4, vocab_size=64, num_classes=10, grid=4, rope_grid=4,
                    multiple_of=256, order="arpg")
    ours = ARPG(cfg).eval()
    load_strict(ours, dict(theirs.state_dict()), what="ARPG")

    order = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([3, 7])
    captured = []
    real_forward = theirs.forward_shared

    def capture(input_ids, freqs_cis, num_query=None):
        logits = real_forward(input_ids, freqs_cis, num_query)
        captured.append(logits.clone())
        return logits

    theirs.forward_shared = capture
    real_rand = torch.rand
    scores = torch.empty(16)
    scores[order] = torch.arange(16, dtype=torch.float32)  # argsort(scores) == order
    up.torch.rand = lambda *a, **k: scores.clone()
    try:
        toks = theirs.generate(labels, guidance_scale=4.0, cfg_schedule=guidance_schedule,
                               sample_schedule=schedule, top_k=1, seq_len=16, num_iter=steps)
    finally:
        up.torch.rand = real_rand

    ours_steps = []
    mine = generate_arpg(ours, labels.numpy(), steps, guidance_scale=4.0, guidance_schedule=guidance_schedule,
                         schedule=schedule, sampling=SamplingConfig(temperature=0.0),
                         orders=np.tile(order.numpy(), (2, 1)),
                         on_step=lambda t, cells, lg: ours_steps.append(lg.copy()))
    assert np.array_equal(mine.reshape(2, 16), toks.numpy())
    assert len(captured) == len(ours_steps) == steps
    decided = 0
    for t, (raw, guided) in enumerate(zip(captured, ours_steps)):
        decided += guided.shape[1]
        s = 1.0 + 3.0 * decided / 16 if guidance_schedule == "linear" else 4.0
        want = (raw[2:] + (raw[:2] - raw[2:]) * s).numpy()
        scale = float(np.abs(want).max())
        assert np.abs(guided - want).max() <= 1e-4 * scale, f"step {t}"
