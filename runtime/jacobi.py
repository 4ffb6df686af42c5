"""Speculative Jacobi decoding (SJD, arXiv 2410.01699): several raster cells per transformer call,
training-free, with an acceptance test that keeps the model's distribution.

Each image keeps `window` draft tokens after its decided cells, each drawn from a known
distribution q (the sampling transform of logits an earlier call gave at that cell). One call
feeds the image's decided-but-uncached tokens, then its drafts, in raster order under a causal
mask. The logits at the last decided token are the model's exact p for the first draft's cell,
and stay exact for the next cell as long as drafts are accepted. Draft x at cell c is accepted
with probability min(1, p_c(x) / q_c(x)); at the first rejection cell c is drawn from
norm(max(0, p_c - q_c)); if every draft is accepted, one more cell is drawn from p (the bonus).
Speculative sampling's argument makes every cell decided this way distributed as p_c given the
cells before it, whatever q was: images follow the model's distribution (the same guidance and
temperature/top-k/top-p transform as `sample`), only the number of calls changes. Each call
decides at least one cell of every unfinished image.

Drafts are refreshed Jacobi-style: after a call, each cell beyond the new frontier whose logits
the call produced is redrawn from them (their context held drafts: a guess, checked by the next
call); cells past those are drawn from the call's farthest distribution. The first call's drafts
are token 0 (q one-hot), which needs no randomness.

Batch: images advance at their own pace in one call. The cache holds, for every row, the class
token and the cells of the slowest image but its newest one (`runner.truncate` drops the rest
after each call: rejected drafts, and cells of faster images, which they feed again). Every
row's entry k is the same sequence index, so positions and the causal mask are shared; a row
with less to feed has filler entries at the end, which nothing attends to and the truncation
drops. Guidance rows (conditional and null class) share their image's tokens and drafts.

Randomness: image i's k-th call uses the k-th block of `2 * window + 1` uniforms of its own
stream (acceptance coins, one correction or bonus draw, draft draws), used or not, so an image's
tokens depend on its seed only, not on the batch around it — up to the float rounding of the
transformer's logits, which a different batch or call shape may change in the last bits (as in
sequential decoding). With temperature 0 (or top_k 1) every draft but the argmax is rejected and
the correction is the argmax: exactly sequential decoding's tokens.

On the fused graph's 1.22 form the runner runs a call's queries one at a time
(runtime/compat.py): fewer decoder calls, not fewer session runs.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from .decoders import Decoder, DecoderRequest, DecoderState, Option, cell_positions
from .errors import InvalidInputError
from .sampling import ImageStreams, SamplingConfig, guided_logits, sampling_weights
from .spec import TokenLayout


def probabilities(logits: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """The distribution `sample` draws from, per row of `logits [N, V]` -> float64 `[N, V]`:
    temperature, top-k (ties kept), top-p (the likeliest token always stays); one-hot argmax
    for temperature 0."""
    n, v = logits.shape
    if cfg.temperature == 0:
        out = np.zeros((n, v))
        out[np.arange(n), logits.argmax(axis=-1)] = 1.0
        return out
    vals = sampling_weights(logits, cfg)
    vals /= vals.sum(axis=-1, keepdims=True)
    return vals


def draw(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """One token per row of `probs [N, V]` from uniforms `u [N]` (inverse CDF in token-id order,
    as `sample`; a zero-mass token is never drawn)."""
    cdf = np.cumsum(probs, axis=-1)
    picks = (cdf <= (u * cdf[:, -1])[:, None]).sum(axis=-1)
    return np.minimum(picks, probs.shape[-1] - 1)


def verify(drafts: np.ndarray, q: np.ndarray, p: np.ndarray, coins: np.ndarray, u_fix: float,
           bonus: bool) -> tuple[np.ndarray, int]:
    """Speculative acceptance of one image's drafts `[D]` (drawn from `q [D, V]`) against the
    model's `p [D (+1 with bonus), V]` -> (the decided cells, drafts accepted): the accepted
    drafts, then one correction from norm(max(0, p - q)) at the first rejection, or the bonus
    from p[D] if all pass and `bonus`. A scalar loop: D is a few drafts."""
    d = drafts.shape[0]
    for t in range(d):
        x = drafts[t]
        if not coins[t] * q[t, x] < p[t, x]:  # rejected (accepted with probability min(1, p/q))
            residual = np.maximum(p[t] - q[t], 0.0)
            if not residual.sum() > 0:  # p == q up to rounding: nothing to correct
                residual = p[t]
            cells = drafts[:t + 1].copy()
            cells[t] = _draw_one(residual, u_fix)
            return cells, t
    if not bonus:
        return drafts.copy(), d
    cells = np.empty(d + 1, np.int64)
    cells[:d] = drafts
    cells[d] = _draw_one(p[d], u_fix)
    return cells, d


def _draw_one(probs: np.ndarray, u: float) -> int:
    cdf = np.cumsum(probs)
    return min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), probs.size - 1)


def _streams(rng, images: int, draws: int):
    """The per-image streams with room for `draws` uniforms each (same seeds: same prefix)."""
    seeds = getattr(rng, "seeds", None)
    return ImageStreams(seeds, draws) if seeds and len(seeds) == images else rng


class JacobiDecoder(Decoder):
    """Speculative Jacobi decoding with `window` drafts per image per call (see the module doc)."""

    name = "jacobi"
    option = Option("jacobi_window", " (draft tokens per call)", default=4)

    def __init__(self, window: int = option.default):
        self.window = int(window)
        if self.window < 1:
            raise InvalidInputError(f"jacobi_window must be >= 1 (an integer), got {window!r}")

    def queries(self, grid: tuple[int, int]) -> int:
        return min(grid[0] * grid[1], 2 * self.window + 2)

    def steps(self, runner, layout: TokenLayout, request: DecoderRequest, state: DecoderState) -> Iterator[int]:
        if request.known is not None:
            raise InvalidInputError("the jacobi decoder takes no known cells; use the sequential decoder")
        n, b, w = request.cells, request.labels.shape[0], self.window
        guidance, sampling = request.guidance, request.sampling
        rows = request.rows(layout)
        r = rows.shape[0]
        per_call = 2 * w + 1  # uniforms per image per call: coins, correction, drafts
        rng = _streams(request.rng, b, n * per_call)  # at most n calls: each decides >= 1 cell
        positions = np.concatenate([[0], cell_positions(layout, request.grid)])  # of sequence index s
        causal = np.tril(np.ones((n + 1, n + 1), bool))
        out = state.out
        seq = np.zeros((b, n + 1), np.int64)  # s = 1 + c: cell c's token, decided or draft; first drafts 0
        q = np.zeros((b, w, runner.vocab_size))  # the draft distributions
        q[:, :, 0] = 1.0
        decided = np.zeros(b, np.int64)
        class_ids = layout.class_ids(rows).astype(np.int64)
        ids_of: dict[int, np.ndarray] = {}  # call width -> ids buffer
        runner.start(r, n + 1)
        stats = state.stats
        stats.update(drafts_verified=0, drafts_accepted=0, image_calls=0)  # image_calls: summed over images
        length = 0  # cached sequence entries, the same for every row
        state.mark("prefill")
        while True:
            fed = np.minimum(n - 1 - decided, w)  # drafts fed per unfinished image (never the last cell's)
            need = int(np.max(np.where(decided < n, decided + 1 - length + fed, 0)))
            s = min(_bucket(need, w), n + 1 - length)
            ids = ids_of.get(s)
            if ids is None:
                ids = ids_of[s] = np.empty((r, s), np.int64)
            ids[:b] = seq[:, length:length + s]
            if length == 0:
                ids[:b, 0] = class_ids[:b]
            if r != b:
                ids[b:] = ids[:b]
                if length == 0:
                    ids[b:, 0] = class_ids[b:]
            pos = np.empty((r, s), np.int64)
            pos[:] = positions[length:length + s]
            mask = np.empty((r, s, length + s), bool)
            mask[:] = causal[length:length + s, :length + s]
            logits = runner(ids, pos, mask)
            state.calls += 1
            u = rng.random(per_call * b).reshape(per_call, b)
            # The model's distributions an image needs, in one batch: entries e0 .. e0 + fed of image i
            # (e0: its last decided token, whose logits predict its first undecided cell).
            active = np.flatnonzero(decided < n)
            k = fed[active] + 1
            ends = np.cumsum(k)
            img = np.repeat(active, k)
            entry = np.arange(ends[-1]) - np.repeat(ends - k, k) + np.repeat(decided[active] - length, k)
            rows_p = logits[img, entry] if r == b else np.concatenate([logits[img, entry], logits[img + b, entry]])
            p_all = probabilities(guided_logits(rows_p, img.size, guidance), sampling)
            refresh = np.zeros((b, w), bool)
            for j, i in enumerate(active):
                a, p = int(decided[i]), p_all[ends[j] - k[j]:ends[j]]
                d = min(w, n - a)
                cells, accepted = verify(seq[i, a + 1:a + 1 + d], q[i, :d], p, u[:d, i], u[w, i], bonus=a + d < n)
                new = a + cells.shape[0]
                stats["drafts_verified"] += min(d, accepted + 1)
                stats["drafts_accepted"] += accepted
                out[i, a:new] = cells
                seq[i, a + 1:new + 1] = cells
                decided[i] = new
                m = min(w, n - new)  # Jacobi refresh of the drafts after the new frontier
                q[i, :m] = p[np.minimum(np.arange(new - a, new - a + m), k[j] - 1)]
                refresh[i, :m] = True
                if new == n:  # the calls this image needed: the same alone (its draws are its own)
                    stats["image_calls"] += state.calls
            # New drafts, every image at once: draft j of image i from q[i, j] with its uniform w + 1 + j.
            picked, slot = np.nonzero(refresh)
            seq[picked, decided[picked] + 1 + slot] = draw(q[picked, slot], u[w + 1 + slot, picked])
            length = int(decided.min())  # valid for every row: the class token, cells < slowest's newest
            runner.truncate(length)
            yield length
            if length == n:
                return


def _bucket(need: int, window: int) -> int:
    """Call width for `need` entries: exact up to 2 * (window + 1), then a power of two, so a
    batch whose images drift apart allocates few distinct logits buffers."""
    if need <= 2 * (window + 1):
        return need
    return 1 << (need - 1).bit_length()


__all__ = ["JacobiDecoder", "probabilities", "draw", "verify"]
