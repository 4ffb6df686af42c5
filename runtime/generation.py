"""The generation loop: prefill the class token, then one KV-cached decode step per image token.

Guidance as LlamaGen does it: conditional rows and null-class rows in one batch, the sampled
token fed to both halves. Cells given in `known` (editing, continuation) are forced instead of
sampled; a prefix known for every row is prefilled in one call.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .manifest import TokenLayout
from .sampling import SamplingConfig, apply_guidance, sample
from .transformer import TransformerRunner

# callback(step, total, tokens_so_far [B, n]) -> None; called after each decided token.
StepCallback = Callable[[int, int, np.ndarray], None]


def cell_positions(layout: TokenLayout, grid: tuple[int, int]) -> np.ndarray:
    """Rotary position id of each raster cell of an `h x w` grid."""
    h, w = grid
    cells = np.arange(h * w)
    return layout.cell_position(cells // w, cells % w).astype(np.int64)


def guidance_rows(labels: np.ndarray, layout: TokenLayout, guided: bool) -> np.ndarray:
    """Conditional rows, then (with guidance) one null-class row per image."""
    return np.concatenate([labels, np.full_like(labels, layout.null_class_id)]) if guided else labels


def generate_tokens(runner: TransformerRunner, layout: TokenLayout, grid: tuple[int, int], labels: np.ndarray,
                    guidance_scale: float, sampling: SamplingConfig, seed: int,
                    callback: StepCallback | None = None,
                    known: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Class ids `[B]` -> token grids `[B, h, w]` (int64), raster order.

    known: optional `(tokens [B, h*w], mask [B, h*w] bool)`; cells where mask is True keep the
    given token.
    """
    h, w = grid
    n = h * w
    b = labels.shape[0]
    guided = guidance_scale > 1.0
    rows = guidance_rows(labels, layout, guided)
    r = rows.shape[0]
    rng = np.random.default_rng(seed)
    positions = cell_positions(layout, grid)
    out = np.empty((b, n), dtype=np.int64)
    if known is not None:
        known_tokens, known_mask = (np.asarray(a).reshape(b, n) for a in known)
        known_mask = known_mask.astype(bool)
        prefix = int(np.argmin(known_mask.all(0))) if not known_mask.all() else n - 1
        out[:, :prefix] = known_tokens[:, :prefix]
    else:
        prefix = 0

    # Prefill: the class token and the known prefix, causal, in one call.
    runner.start(r, n + 1)
    ids = np.empty((r, 1 + prefix), np.int64)
    ids[:, 0] = layout.class_ids(rows)
    ids[:, 1:] = np.tile(out[:, :prefix], (r // b, 1))
    pos = np.concatenate([[0], positions[:prefix]])[None].repeat(r, 0)
    mask = np.tril(np.ones((1 + prefix, 1 + prefix), bool))[None].repeat(r, 0)
    logits = runner(ids, pos, mask)
    if callback is not None and prefix:
        callback(prefix, n, out[:, :prefix])

    ids = np.empty((r, 1), np.int64)
    pos = np.empty((r, 1), np.int64)
    masks = [np.ones((r, 1, t), bool) for t in range(n + 1)]  # masks[t]: attend to all t cached tokens
    guided_logits = np.empty((b, logits.shape[-1]), np.float32) if guided else None
    for j in range(prefix, n):
        step = logits[:, -1]
        if guided:
            step = apply_guidance(step, b, guidance_scale, out=guided_logits)
        tok = sample(step, sampling, rng)
        if known is not None:
            tok = np.where(known_mask[:, j], known_tokens[:, j], tok)
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
