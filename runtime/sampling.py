"""Token sampling in numpy: the same seed gives the same tokens on every execution provider.

Candidates are ordered by token id before the inverse-CDF draw, so tiny logit differences
between providers (1e-6) move a draw only when the uniform lands within that distance of a
bucket edge, instead of reshuffling whole buckets.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingConfig:
    """LlamaGen's sampling knobs. temperature 0 means greedy; top_k 0 and top_p 1 disable them."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def validate(self, vocab_size: int) -> "SamplingConfig":
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        return SamplingConfig(self.temperature, min(self.top_k, vocab_size), self.top_p)


def apply_guidance(logits: np.ndarray, batch: int, scale: float) -> np.ndarray:
    """LlamaGen's classifier-free guidance: rows [:batch] conditional, [batch:] null class."""
    cond, uncond = logits[:batch], logits[batch:]
    return uncond + (cond - uncond) * np.float32(scale)


def sample(logits: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator) -> np.ndarray:
    """Draw one token per row of `logits [N, V]` (float32). Returns int64 `[N]`."""
    if cfg.temperature == 0:
        return logits.argmax(axis=-1).astype(np.int64)
    n, v = logits.shape
    inv_t = 1.0 / max(cfg.temperature, 1e-5)
    if 0 < cfg.top_k < v:  # order is the same before and after scaling: partition the raw logits
        cand = np.argpartition(logits, v - cfg.top_k, axis=-1)[:, v - cfg.top_k:]
        vals = np.take_along_axis(logits, cand, axis=-1).astype(np.float64) * inv_t
    else:
        cand = np.broadcast_to(np.arange(v), (n, v))
        vals = logits.astype(np.float64) * inv_t
    if cfg.top_p < 1.0:
        order = np.argsort(-vals, axis=-1, kind="stable")
        sorted_vals = np.take_along_axis(vals, order, axis=-1)
        p = np.exp(sorted_vals - sorted_vals[:, :1])
        cum = np.cumsum(p / p.sum(-1, keepdims=True), axis=-1)
        drop_sorted = np.concatenate([np.zeros((n, 1), bool), cum[:, :-1] > cfg.top_p], axis=-1)
        drop = np.empty_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        vals = np.where(drop, -np.inf, vals)
    if 0 < cfg.top_k < v:  # partition order is arbitrary: put candidates in token-id order
        by_id = np.argsort(cand, axis=-1)
        cand = np.take_along_axis(cand, by_id, axis=-1)
        vals = np.take_along_axis(vals, by_id, axis=-1)
    p = np.exp(vals - vals.max(-1, keepdims=True))
    cdf = np.cumsum(p, axis=-1)
    u = rng.random(n) * cdf[:, -1]
    pick = np.minimum((cdf < u[:, None]).sum(-1), cdf.shape[1] - 1)
    return cand[np.arange(n), pick].astype(np.int64)
