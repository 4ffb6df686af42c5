"""Reference PyTorch generation loop with a KV cache: the baseline the ONNX runtime must equal.

It samples with the runtime's own numpy sampler and its per-image streams (image i draws from
`default_rng(seed + i)`, or from `seed[i]` for a list), so one seed gives one token grid in both.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from tessera.runtime.sampling import ImageStreams, SamplingConfig, apply_guidance, image_seeds, sample
from tessera.runtime.schedule import image_plans

from .transformer import GPT


@torch.inference_mode()
def generate_tokens(model: GPT, labels, guidance_scale: float = 1.0,
                    sampling: SamplingConfig = SamplingConfig(), seed=0,
                    callback: Callable[[int, int, np.ndarray], None] | None = None) -> np.ndarray:
    """Class ids -> token grids `[B, grid, grid]` (int64), as LlamaGen generates them. Runs on the
    model's device and dtype (logits come back to numpy for sampling); `callback(step, total, tokens)`
    after each decided token, as the runtime's."""
    model.eval()
    cfg, dev = model.cfg, next(model.parameters()).device
    labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    b, n = labels.shape[0], cfg.grid * cfg.grid
    guided = guidance_scale > 1.0
    rows = (torch.cat([labels, torch.full_like(labels, cfg.null_class)]) if guided else labels).to(dev)
    rng = ImageStreams(image_seeds(seed, b), n)  # one stream per image
    sampling = sampling.validate(cfg.vocab_size)

    ids = model.class_token(rows)[:, None]
    pos = torch.zeros_like(ids)
    mask = torch.ones(rows.shape[0], 1, 1, dtype=torch.bool, device=dev)
    logits, past = model(ids, pos, mask, None)
    out = np.empty((b, n), dtype=np.int64)
    for j in range(n):
        step = logits[:, -1].float().cpu().numpy()
        if guided:
            step = apply_guidance(step, b, guidance_scale)
        tok = sample(step, sampling, rng)
        out[:, j] = tok
        if callback is not None:
            callback(j + 1, n, out[:, : j + 1])
        if j == n - 1:
            break
        t = torch.from_numpy(np.concatenate([tok, tok]) if guided else tok)[:, None].to(dev)
        pos = model.cell_position(torch.full_like(t, j))
        mask = torch.ones(rows.shape[0], 1, j + 2, dtype=torch.bool, device=dev)
        logits, past = model(t, pos, mask, past)
    return out.reshape(b, cfg.grid, cfg.grid)


@torch.inference_mode()
def generate_tokens_any_order(model: GPT, labels, steps: int, order: str = "locality", guidance_scale: float = 1.0,
                              sampling: SamplingConfig = SamplingConfig(), seed=0,
                              known: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """An any-order model's loop, written plainly: class ids -> token grids `[B, grid, grid]`.

    Step t feeds the previous step's codes (context) and one position query per cell of its group
    (the runtime's schedule and per-image streams), then drops the queries from the past: they are
    never context. `known`: `(tokens [B, n], mask [n] bool)`, cells fed as context in the first call.
    """
    model.eval()
    cfg, dev = model.cfg, next(model.parameters()).device
    labels = np.asarray(labels, dtype=np.int64)
    b, g = labels.shape[0], cfg.grid
    n = g * g
    guided = guidance_scale > 1.0
    rows = np.concatenate([labels, np.full_like(labels, cfg.null_class)]) if guided else labels
    rep = rows.shape[0] // b
    seeds = image_seeds(seed, b)
    rng = ImageStreams(seeds, n)
    out = np.full((b, n), -1, dtype=np.int64)
    kept = np.zeros(n, bool) if known is None else np.asarray(known[1], bool)
    if known is not None:
        out[:, kept] = np.asarray(known[0])[:, kept]
    cells = np.flatnonzero(kept)
    pos_of = model.cell_position(torch.arange(n)).numpy()
    ctx_ids = np.concatenate([model.class_token(torch.from_numpy(rows)).numpy()[:, None],
                              np.tile(out[:, cells], (rep, 1))], axis=1)
    ctx_pos = np.concatenate([np.zeros((rows.shape[0], 1), np.int64), np.tile(pos_of[cells], (rows.shape[0], 1))],
                             axis=1)
    past, length = None, 0
    for group in image_plans((g, g), steps, order, seeds, kept):
        k, c = ctx_ids.shape[1], group.shape[1]
        ids = np.concatenate([ctx_ids, np.full((rows.shape[0], c), cfg.query_token)], axis=1)
        pos = np.concatenate([ctx_pos, np.tile(pos_of[group], (rep, 1))], axis=1)
        mask = torch.zeros(k + c, length + k + c, dtype=torch.bool)
        mask[:, :length] = True
        mask[:k, length:length + k] = torch.tril(torch.ones(k, k, dtype=torch.bool))
        mask[k:, length:length + k] = True
        mask[torch.arange(k, k + c), length + torch.arange(k, k + c)] = True
        logits, presents = model(torch.from_numpy(ids).to(dev), torch.from_numpy(pos).to(dev),
                                 mask[None].expand(rows.shape[0], -1, -1).to(dev), past)
        past = [(kk[:, :, :length + k], vv[:, :, :length + k]) for kk, vv in presents]  # drop the queries
        length += k
        step = logits[:, k:].float().cpu().numpy()
        if guided:
            step = apply_guidance(step, b, guidance_scale)
        toks = sample(np.ascontiguousarray(step.transpose(1, 0, 2)).reshape(c * b, -1), sampling, rng).reshape(c, b).T
        np.put_along_axis(out, group, toks, axis=1)
        ctx_ids, ctx_pos = np.tile(toks, (rep, 1)), np.tile(pos_of[group], (rep, 1))
    return out.reshape(b, g, g)
