"""Decoding schedules for any-order models: how many cells each step decides, and which.

How many: the cosine schedule of MaskGIT / RandAR. After step t of T, `floor(n * cos(pi/2 * t/T))`
cells are still open, so early steps (little context, the most uncertain) decide few cells and late
steps, where the image is nearly fixed, decide many. Every step decides at least one cell.

Which: `order="locality"` follows LPD (locality-aware parallel decoding): cells decided in the same
step should be far from each other (they are sampled independently, so neighbours would disagree)
and near cells already decided (where the context is most informative). `order="random"` draws a
uniform random order, as the model was trained on. Both are numpy only and seeded per image.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import TesseraError

ORDERS = ("locality", "random")


def cosine_counts(n: int, steps: int) -> list[int]:
    """Cells decided per step: `steps` positive counts summing to `n` (cosine, small steps first)."""
    if not 1 <= steps <= n:
        raise TesseraError(f"steps must be between 1 and the number of cells ({n}), got {steps}")
    done, counts = 0, []
    for t in range(1, steps + 1):
        target = n - math.floor(n * math.cos(math.pi / 2 * t / steps) + 1e-9)
        target = min(max(target, done + 1), n - (steps - t))  # >= 1 per step, >= 1 left per later step
        counts.append(target - done)
        done = target
    return counts


ARPG_SCHEDULES = ("arccos", "cosine")
GUIDANCE_SCHEDULES = ("linear", "constant")


def arpg_counts(n: int, steps: int, schedule: str = "arccos") -> list[int]:
    """Cells decided per step by ARPG's generate loop, with its arithmetic: the mask ratio in float64,
    truncated with `int()` (in float32, `cos(pi/3)` lands under 0.5 and changes the counts), at least
    one cell left open until the last step, which takes the rest. `steps > n` would leave steps with
    nothing to decide (upstream crashes there), so it is refused."""
    if schedule not in ARPG_SCHEDULES:
        raise TesseraError(f"schedule must be one of {', '.join(ARPG_SCHEDULES)}, got {schedule!r}")
    if not 1 <= steps <= n:
        raise TesseraError(f"steps must be between 1 and the number of cells to decide ({n}), got {steps}")
    done, counts = 0, []
    for step in range(steps):
        if schedule == "arccos":  # upstream's expressions, evaluated in its order (the roundings matter)
            ratio = float(np.arccos(1.0 * (step + 1) / steps)) / (math.pi * 0.5)
        else:
            ratio = float(np.cos(math.pi / 2.0 * (step + 1) / steps))
        masked = max(1, min(n - done - 1, int(n * ratio)))
        count = n - done if step == steps - 1 else n - done - masked
        if count < 1:  # cannot happen for steps <= n (checked in tests); never send an empty call
            raise TesseraError(f"the {schedule} schedule leaves step {step + 1} of {steps} empty for {n} cells; "
                               "use fewer steps")
        counts.append(count)
        done += count
    return counts


def guidance_at(scale: float, decided: int, n: int, schedule: str = "linear") -> float:
    """ARPG's guidance schedule: `linear` grows from 1 to `scale` with the share of cells decided after
    the step (`decided / n`, as upstream), `constant` is `scale` on every step."""
    if schedule == "linear":
        return 1.0 + (scale - 1.0) * decided / n
    if schedule == "constant":
        return scale
    raise TesseraError(f"guidance schedule must be one of {', '.join(GUIDANCE_SCHEDULES)}, got {schedule!r}")


def _locality_step(open_cells: np.ndarray, decided: np.ndarray, count: int, rows: np.ndarray,
                   cols: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pick `count` open cells greedily: each one the closest to the decided cells among those
    farthest from the cells already picked this step (ties broken at random). Distances are
    computed as needed (no cells x cells table: large grids stay cheap in memory)."""
    picked = np.empty(count, np.int64)
    cand = open_cells
    r, c = rows[cand], cols[cand]
    near = (np.hypot(r[:, None] - rows[None, decided], c[:, None] - cols[None, decided]).min(1) if len(decided)
            else np.zeros(len(cand)))
    far = np.full(len(cand), np.inf)
    ties = rng.random((count, len(cand))) * 1e-3  # the same draws as one random(len(cand)) per pick
    for i in range(count):
        # farthest from this step's picks first, then nearest to the context, then random
        score = np.minimum(far, 1e6) * 1000.0 - near + ties[i]
        j = int(np.argmax(score))
        picked[i] = cand[j]
        np.minimum(far, np.hypot(r - r[j], c - c[j]), out=far)
        far[j] = -np.inf  # never picked twice
    return picked


def plan(height: int, width: int, steps: int, order: str = "locality",
         rng: np.random.Generator | None = None, decided: np.ndarray | None = None) -> list[np.ndarray]:
    """Row-major cell indices to decide at each step, every open cell exactly once.

    `decided`: bool `[height * width]`, cells already fixed (editing); they are never planned and
    count as context for the locality order. `rng` seeds the random order and tie-breaking.
    """
    if order not in ORDERS:
        raise TesseraError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    n = height * width
    rng = rng if rng is not None else np.random.default_rng(0)
    done = np.zeros(n, dtype=bool) if decided is None else np.asarray(decided, dtype=bool).copy()
    open_cells = np.flatnonzero(~done)
    if len(open_cells) == 0:
        return []
    counts = cosine_counts(len(open_cells), min(steps, len(open_cells)))
    if order == "random":
        perm = rng.permutation(open_cells)
        return [a.astype(np.int64) for a in np.split(perm, np.cumsum(counts)[:-1])]
    rows, cols = (a.astype(np.float64) for a in np.divmod(np.arange(n), width))
    out = []
    for c in counts:
        pick = _locality_step(np.flatnonzero(~done), np.flatnonzero(done), c, rows, cols, rng)
        done[pick] = True
        out.append(pick)
    return out


def image_plans(grid: tuple[int, int], steps: int, order: str, seeds, decided: np.ndarray | None = None
                ) -> list[np.ndarray]:
    """One plan per image, stacked per step: `[B, count_t]` cell indices for each step t. Image i's
    order comes from its own seed (a stream apart from its sampling draws), so an image plans the
    same alone or in a batch; every image decides the same number of cells per step."""
    h, w = grid
    plans = [plan(h, w, steps, order, np.random.default_rng([int(s), PLAN_STREAM]), decided) for s in seeds]
    return [np.stack([p[t] for p in plans]) for t in range(len(plans[0]))]


PLAN_STREAM = 0x5C4ED  # second word of an image's plan seed: (seed, PLAN_STREAM)


def random_orders(seeds, cells: np.ndarray) -> np.ndarray:
    """ARPG's random cell order, one per image: `[B, len(cells)]`, a permutation of `cells` drawn from
    the image's own plan stream `(seed, PLAN_STREAM)`, so an image is the same alone or in a batch."""
    cells = np.asarray(cells, dtype=np.int64)
    return np.stack([np.random.default_rng([int(s), PLAN_STREAM]).permutation(cells) for s in seeds]) \
        if len(seeds) else np.empty((0, len(cells)), np.int64)

__all__ = ["ORDERS", "ARPG_SCHEDULES", "GUIDANCE_SCHEDULES", "cosine_counts", "arpg_counts", "guidance_at", "plan",
           "image_plans", "random_orders"]
