"""The generation loop: prefill the class token, then one KV-cached decode step per image token.

Guidance as LlamaGen does it: conditional rows and null-class rows in one batch, the sampled
token fed to both halves.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .manifest import TokenLayout
from .sampling import SamplingConfig, apply_guidance, sample
from .transformer import TransformerRunner

# callback(step, total, tokens_so_far [B, n]) -> None; called after each sampled token.
StepCallback = Callable[[int, int, np.ndarray], None]


def generate_tokens(runner: TransformerRunner, layout: TokenLayout, grid: tuple[int, int], labels: np.ndarray,
                    guidance_scale: float, sampling: SamplingConfig, seed: int,
                    callback: StepCallback | None = None) -> np.ndarray:
    """Class ids `[B]` -> token grids `[B, h, w]` (int64), raster order."""
    h, w = grid
    n = h * w
    b = labels.shape[0]
    guided = guidance_scale > 1.0
    rows = np.concatenate([labels, np.full_like(labels, layout.null_class_id)]) if guided else labels
    r = rows.shape[0]
    rng = np.random.default_rng(seed)
    cells = np.arange(n)
    positions = layout.cell_position(cells // w, cells % w).astype(np.int64)

    runner.start(r, n + 1)
    logits = runner(layout.class_ids(rows)[:, None].astype(np.int64), np.zeros((r, 1), np.int64),
                    np.ones((r, 1, 1), bool))
    out = np.empty((b, n), dtype=np.int64)
    ids = np.empty((r, 1), np.int64)
    pos = np.empty((r, 1), np.int64)
    masks = [np.ones((r, 1, t), bool) for t in range(n + 1)]  # masks[t]: attend to all t cached tokens
    for j in range(n):
        step = logits[:, -1]
        if guided:
            step = apply_guidance(step, b, guidance_scale)
        tok = sample(step, sampling, rng)
        out[:, j] = tok
        if callback is not None:
            callback(j + 1, n, out[:, : j + 1])
        if j == n - 1:
            break
        ids[:b, 0] = tok
        if guided:
            ids[b:, 0] = tok
        pos.fill(positions[j])
        logits = runner(ids, pos, masks[j + 2])
    return out.reshape(b, h, w)
