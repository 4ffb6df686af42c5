"""Token sampling in numpy: the same seed gives the same tokens on every execution provider.

Candidates are ordered by token id before the inverse-CDF draw, so tiny logit differences
between providers (1e-6) move a draw only when the uniform lands within that distance of a
bucket edge, instead of reshuffling whole buckets.

A seed names an image (`ImageStreams`): image i draws its uniforms from its own stream,
`default_rng(seeds[i])`, one per cell it decides, in the order it decides them. So an image is
the same alone, in a batch or in a sheet, and guidance rows (conditional + null class) share
their image's stream (they are sampled as one guided row).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np


class ImageStreams:
    """One numpy random stream per image, drawn ahead: `uniforms [draws, images]`.

    Stands in for a `numpy.random.Generator` in `sample`: `random(k * images)` returns the next
    k draws of every image, draw-major (row q * images + i is image i's draw q), as a view; no
    allocation and no Python work per step. Image i's stream is `default_rng(seeds[i]).random(draws)`,
    so its draws do not depend on which other images share the batch.
    """

    def __init__(self, seeds: Sequence[int], draws: int):
        self.seeds = tuple(int(s) for s in seeds)
        self.uniforms = np.empty((max(int(draws), 0), len(self.seeds)))
        for i, s in enumerate(self.seeds):
            self.uniforms[:, i] = np.random.default_rng(s).random(self.uniforms.shape[0])
        self.used = 0

    def random(self, n: int) -> np.ndarray:
        b = len(self.seeds)
        k = n // b
        if k * b != n or self.used + k > self.uniforms.shape[0]:
            raise ValueError(f"{n} draws do not fit {b} image streams with {self.uniforms.shape[0] - self.used} "
                             "draws left")
        out = self.uniforms[self.used:self.used + k].reshape(n)
        self.used += k
        return out


def image_seeds(seed: int | Sequence[int], count: int) -> tuple[int, ...]:
    """The seed of each of `count` images: `seed + i` for an int, else the given list (checked by
    `GenerationConfig`)."""
    if isinstance(seed, (int, np.integer)):
        return tuple(int(seed) + i for i in range(count))
    return tuple(int(s) for s in seed)


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


def guidance_on(scale: float) -> bool:
    """LlamaGen's rule: classifier-free guidance applies when its scale is above 1 (at 1 it would
    give the conditional logits back at twice the cost). Decided once per generation
    (`DecoderRequest.guidance`, `GenerationConfig.guided`)."""
    return scale > 1.0


def apply_guidance(logits: np.ndarray, batch: int, scale: float, out: np.ndarray | None = None) -> np.ndarray:
    """LlamaGen's classifier-free guidance: rows [:batch] conditional, [batch:] null class.
    `out` ([batch, ...], float32) takes the result without allocating; the value is the same."""
    cond, uncond = logits[:batch], logits[batch:]
    if out is None:
        return uncond + (cond - uncond) * np.float32(scale)
    np.subtract(cond, uncond, out=out)
    out *= np.float32(scale)
    out += uncond
    return out


def guided_logits(logits: np.ndarray, images: int, guidance: float | None, out: np.ndarray | None = None
                  ) -> np.ndarray:
    """The logits a draw is made from: with guidance (`guidance`, the scale, not None) the rows
    `[:images]` (conditional) and `[images:]` (null class) combined by `apply_guidance`, in
    float32; without, `logits` as they are."""
    return logits if guidance is None else apply_guidance(logits, images, guidance, out)


def sample_guided(logits: np.ndarray, images: int, guidance: float | None, cfg: SamplingConfig, rng,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Guidance, then one draw per image and query: what every decoder samples with.

    logits: `[R, V]` (one query per row) -> tokens `[images]`; or `[R, Q, V]` (Q queries per row)
    -> tokens `[Q * images]`, query-major (image i's draws in query order, so its uniforms are
    the same alone or in a batch). R = images, or 2 * images with guidance (`guided_logits`).
    `out` (`[images, V]` float32) takes the guided logits of one query without allocating."""
    if guidance is not None:
        logits = apply_guidance(logits, images, guidance, out)
    if logits.ndim == 3:
        q = logits.shape[1]
        logits = np.ascontiguousarray(logits.transpose(1, 0, 2)).reshape(q * images, -1)
    return sample(logits, cfg, rng)


def top_k_mask(logits: np.ndarray, k: int) -> np.ndarray:
    """True for logits >= each row's k-th largest (ties kept, as LlamaGen's `logits < v[-1]` cut
    does). One value partition per row: no index arrays, no sort."""
    v = logits.shape[-1]
    kth = np.partition(logits, v - k, axis=-1)[..., v - k, None]
    return logits >= kth


def sampling_weights(logits: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """The unnormalised float64 weights `[N, V]` that `sample` draws from (temperature > 0):
    temperature, top-k (ties kept), top-p (the likeliest token always stays); exactly zero
    outside the candidates."""
    vals = logits.astype(np.float64)
    vals *= 1.0 / max(cfg.temperature, 1e-5)
    if 0 < cfg.top_k < vals.shape[-1]:
        vals[~top_k_mask(logits, cfg.top_k)] = -np.inf
    if cfg.top_p < 1.0:
        vals = top_p_cut(vals, cfg.top_p)
    vals -= vals.max(axis=-1, keepdims=True)
    return np.exp(vals, out=vals)


def sample(logits: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator) -> np.ndarray:
    """Draw one token per row of `logits [N, V]` (float32). Returns int64 `[N]`.

    Per row: candidates (top-k, then top-p) in token-id order, float64 probabilities, one
    uniform per row (`rng.random(N)`, one call per step; `rng` may be an `ImageStreams`) placed
    on their cumulative sum: the first token of positive mass whose cumulative sum reaches it.
    Rows are drawn together, no Python loop per row: the cut tokens hold zero mass, so the
    running sum over the whole vocabulary equals, bit for bit, the sum over the candidates alone.
    With top-k and no tie at any row's k-th logit, the same draw runs over the k candidate
    columns only. Blocks of rows keep the float64 work arrays under `SAMPLE_BLOCK` entries."""
    if cfg.temperature == 0:
        return logits.argmax(axis=-1).astype(np.int64)
    n, v = logits.shape
    u = rng.random(n)
    step = max(1, SAMPLE_BLOCK // v)
    if n <= step:
        return _draw(logits, cfg, u) if n else np.empty(0, np.int64)
    return np.concatenate([_draw(logits[i:i + step], cfg, u[i:i + step]) for i in range(0, n, step)])


SAMPLE_BLOCK = 1 << 20  # float64 entries per block of rows in `sample` (8 MB)


def _draw(logits: np.ndarray, cfg: SamplingConfig, u: np.ndarray) -> np.ndarray:
    """`sample`'s draw for a block of rows with their uniforms `u`."""
    n, v = logits.shape
    if 0 < cfg.top_k < v:
        keep = top_k_mask(logits, cfg.top_k)
        counts = keep.sum(axis=-1)
        if (counts == counts[0]).all():  # no tie at any row's k-th logit (the usual case): draw among k columns
            flat = np.flatnonzero(keep).reshape(n, counts[0])  # each row's candidates, in token-id order
            pick = _draw(logits.reshape(-1)[flat], replace(cfg, top_k=0), u)
            return flat[np.arange(n), pick] - np.arange(n) * v
    weights = sampling_weights(logits, cfg)
    drawable = weights > 0.0
    cdf = np.cumsum(weights, axis=-1, out=weights)
    drawable &= cdf >= (u * cdf[:, -1])[:, None]
    return drawable.argmax(axis=-1).astype(np.int64)


def top_p_cut(vals: np.ndarray, top_p: float) -> np.ndarray:
    """-inf for the candidates outside the smallest set, by descending probability, whose mass
    exceeds `top_p` (the most likely one always stays). Ties keep token-id order. Along the last
    axis: one row (`sample`) or a batch of them (the Jacobi decoder's distributions)."""
    order = np.argsort(-vals, axis=-1, kind="stable")
    ranked = np.take_along_axis(vals, order, axis=-1)
    cum = np.cumsum(np.exp(ranked - ranked[..., :1]), axis=-1)
    cum /= cum[..., -1:]  # a running sum: cut tokens (zero mass, ranked last) change nothing
    drop = np.zeros(vals.shape, bool)
    drop[..., 1:] = cum[..., :-1] > top_p
    out = np.empty_like(vals)
    np.put_along_axis(out, order, np.where(drop, -np.inf, ranked), axis=-1)
    return out
