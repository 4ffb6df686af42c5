"""Reference PyTorch generation loop with a KV cache: the baseline the ONNX runtime must equal.

It samples with the runtime's own numpy sampler and its per-image streams (image i draws from
`default_rng(seed + i)`, or from `seed[i]` for a list), so one seed gives one token grid in both.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from tessera.runtime.sampling import ImageStreams, SamplingConfig, apply_guidance, image_seeds, sample

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
