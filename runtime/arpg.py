"""The ARPG decoder: a grid in `steps` calls, each cell fed once (manifest family `arpg-c2i`).

An ARPG graph (export/arpg.py) takes S context tokens, appended to the self-attention caches and the
shared K/V, and Q queries: the mask token at the cells to decide, read through the cross-attention half
and never cached. So one call per step:

    call 1:  [class] [kept cells ...]             queries @ the first cells of the order
    call t:  [codes sampled at step t-1 @ cells]  queries @ the cells of step t

Each image decides its cells in its own random order, drawn from its seed (`schedule.random_orders`:
an image is the same alone or in a batch); every image decides the same number of cells per step, ARPG's
`arccos` or `cosine` schedule (`schedule.arpg_counts`, upstream's float64 arithmetic). Guidance as
upstream: conditional and null-class rows in one batch, `uncond + (cond - uncond) * s`, with `s` linear
in the share of the grid decided after the step (`guidance_at`) or constant.

Editing: kept cells (`request.known`, one mask per image, any mask) are fed with the class in the first
call and are context for every regenerated cell; images with fewer kept cells are padded with masked-out
entries so the batch still takes one call per step. No reranking.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from .anyorder import AnyOrderDecoder
from .decoders import Decoder, DecoderRequest, DecoderState, cell_positions
from .errors import InvalidInputError
from .sampling import apply_guidance, sample_guided
from .schedule import arpg_counts, guidance_at, random_orders
from .spec import ARPG_SCHEDULES, GUIDANCE_SCHEDULES, TokenLayout

DEFAULT_SCHEDULE = "arccos"
DEFAULT_GUIDANCE_SCHEDULE = "linear"


def mask_token(layout: TokenLayout) -> int:
    """The layout's mask token, or a one-line error for a model of another family."""
    if layout.mask_token_id is None:
        raise InvalidInputError("the arpg decoder needs an ARPG model (manifest family arpg-c2i); this model "
                                "has no mask-token queries")
    return int(layout.mask_token_id)


class ArpgDecoder(Decoder):
    """`steps` calls per grid (see the module doc)."""

    name = "arpg"
    order = "arpg"
    option = AnyOrderDecoder.option  # the same `steps` option (one GenerationConfig field)
    sees_every_kept_cell = True

    def __init__(self, steps: int = 8, schedule: str = DEFAULT_SCHEDULE,
                 guidance_schedule: str = DEFAULT_GUIDANCE_SCHEDULE):
        if schedule not in ARPG_SCHEDULES:
            raise InvalidInputError(f"schedule must be one of {', '.join(ARPG_SCHEDULES)}, got {schedule!r}")
        if guidance_schedule not in GUIDANCE_SCHEDULES:
            raise InvalidInputError(f"guidance_schedule must be one of {', '.join(GUIDANCE_SCHEDULES)}, "
                                    f"got {guidance_schedule!r}")
        self.steps_count, self.schedule, self.guidance_schedule = int(steps), schedule, guidance_schedule

    @classmethod
    def from_config(cls, cfg) -> "ArpgDecoder":
        return cls(cfg.steps, cfg.schedule or DEFAULT_SCHEDULE, cfg.guidance_schedule or DEFAULT_GUIDANCE_SCHEDULE)

    def counts(self, cells: int) -> list[int]:
        """Cells decided per step for `cells` open cells; `steps > cells` is refused (one line)."""
        if self.steps_count > cells:
            raise InvalidInputError(f"steps ({self.steps_count}) must be at most the cells to decide ({cells}): "
                                    "each step decides at least one cell")
        return arpg_counts(cells, self.steps_count, self.schedule)

    def queries(self, grid: tuple[int, int]) -> int:
        n = grid[0] * grid[1]
        return max(arpg_counts(n, min(self.steps_count, n), self.schedule))

    def steps(self, runner, layout: TokenLayout, request: DecoderRequest, state: DecoderState) -> Iterator[int]:
        query = mask_token(layout)
        n, b = request.cells, request.labels.shape[0]
        out = state.out
        kept = np.zeros((b, n), bool)
        if request.known is not None:
            tokens, mask = (np.asarray(a).reshape(b, n) for a in request.known)
            kept = mask.astype(bool)
            out[kept] = tokens[kept]
        open_count = n - kept.sum(1)
        if (open_count != open_count[0]).any():
            raise InvalidInputError("the arpg decoder decides the same number of cells per step for every image: "
                                    "give every image of the batch the same number of cells to regenerate")
        if open_count[0] == 0:
            yield n
            return
        counts = arpg_counts(int(open_count[0]), min(self.steps_count, int(open_count[0])), self.schedule)
        seeds = getattr(request.rng, "seeds", None) or tuple(range(b))
        orders = np.stack([random_orders([s], np.flatnonzero(~kept[i]))[0] for i, s in enumerate(seeds)])
        rows = request.rows(layout)
        r, rep = rows.shape[0], rows.shape[0] // b
        positions = cell_positions(layout, request.grid)
        runner.start(r, 1 + n)

        # First call: the class and each image's kept cells (padded to the most kept; pads are hidden).
        k = int(kept.sum(1).max())
        ids = np.zeros((b, 1 + k), np.int64)
        pos = np.zeros((b, 1 + k), np.int64)
        real = np.zeros((b, 1 + k), bool)
        real[:, 0] = True
        for i in range(b):
            cells = np.flatnonzero(kept[i])
            ids[i, 1:1 + len(cells)] = out[i, cells]
            pos[i, 1:1 + len(cells)] = positions[cells]
            real[i, 1:1 + len(cells)] = True
        ids = np.tile(ids, (rep, 1))
        ids[:, 0] = layout.class_ids(rows)
        pos, real = np.tile(pos, (rep, 1)), np.tile(real, (rep, 1))
        visible = real.copy()  # the cache entries every later call may read
        decided, start = n - int(open_count[0]), 0
        for t, c in enumerate(counts):
            cells = orders[:, start:start + c]
            start += c
            qpos = np.tile(positions[cells], (rep, 1))
            s = ids.shape[1]
            mask = np.broadcast_to(visible[:, None, :], (r, s + c, visible.shape[1])).copy()
            logits = runner(np.ascontiguousarray(ids), np.ascontiguousarray(pos), mask, np.ascontiguousarray(qpos))
            state.calls += 1
            state.mark("prefill" if t == 0 else "decode")
            decided += c
            if request.guidance is not None:  # the step's scale (ARPG's guidance schedule)
                logits = apply_guidance(logits, b, guidance_at(request.guidance, decided, n, self.guidance_schedule))
            toks = sample_guided(logits, b, None, request.sampling, request.rng).reshape(c, b).T
            np.put_along_axis(out, cells, toks, axis=1)
            yield decided
            ids, pos = np.tile(toks, (rep, 1)), qpos
            visible = np.concatenate([visible, np.ones((r, c), bool)], axis=1)


__all__ = ["ArpgDecoder", "DEFAULT_SCHEDULE", "DEFAULT_GUIDANCE_SCHEDULE", "mask_token"]
