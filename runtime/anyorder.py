"""The any-order decoder: a whole grid in a few transformer calls with a position-query model.

An any-order model (manifest family `anyorder-c2i`) has one extra input id, the position query
(`TokenLayout.query_token_id`): fed at a cell's rotary position, its logits are the model's
distribution for that cell given the context it may see. A schedule (runtime/schedule.py) splits
the open cells into `steps` groups (cosine sizes, locality-aware or random order); each step
decides one group, all its cells sampled independently from the same context.

One call per step, through the same KV-cache graph as sequential decoding:

    call 1:  [class] [known cells ...] [query @ group 1 cells]
    call t:  [codes of group t-1 @ their cells] [query @ group t cells]

Codes are appended to the cache in the order they were decided and see the cache and the codes
before them in the call (the fused graph is causal in call order); a query sees the cache, every
code of its call and itself, never another query. After the call the queries' cache slots are
dropped (`runner.truncate`): queries are never context, and the cache ends holding the class
token and the decided codes only. This is the attention pattern the model was trained under
(training/anyorder.py). Guidance as the sequential decoder: conditional and null-class rows in one
batch, both fed the same sampled codes.

Editing: cells given in `request.known` (one mask for the batch) are fed as context in the first
call and never planned, so every kept cell conditions every regenerated one: no reranking.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from .decoders import Decoder, DecoderRequest, DecoderState, Option, cell_positions
from .errors import InvalidInputError
from .sampling import sample_guided
from .schedule import ORDERS, cosine_counts, image_plans
from .spec import TokenLayout

DEFAULT_ORDER = "locality"


def query_token(layout: TokenLayout) -> int:
    """The layout's position-query id, or a one-line error for a model trained in raster order."""
    q = getattr(layout, "query_token_id", None)
    if q is None:
        raise InvalidInputError("this model was trained in raster order and has no position query: the any-order "
                                "decoder needs an any-order model (manifest family anyorder-c2i)")
    return int(q)


class AnyOrderDecoder(Decoder):
    """`steps` calls per grid; each decides one group of the schedule (see the module doc)."""

    name = "anyorder"
    order = "any"
    option = Option("steps", " (transformer calls per grid)", default=8, per_grid=True, model_default=True)
    sees_every_kept_cell = True

    def __init__(self, steps: int = option.default, order: str = DEFAULT_ORDER):
        if order not in ORDERS:
            raise InvalidInputError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        self.steps_count, self.schedule_order = int(steps), order

    def queries(self, grid: tuple[int, int]) -> int:
        return 2 * max(cosine_counts(grid[0] * grid[1], self.steps_count))  # a call: the last group's codes + queries

    def steps(self, runner, layout: TokenLayout, request: DecoderRequest, state: DecoderState) -> Iterator[int]:
        query = query_token(layout)
        n, b = request.cells, request.labels.shape[0]
        out = state.out
        kept = np.zeros(n, bool)
        if request.known is not None:
            tokens, mask = (np.asarray(a).reshape(b, n) for a in request.known)
            mask = mask.astype(bool)
            if not (mask == mask[:1]).all():
                raise InvalidInputError("the any-order decoder takes one known-cell mask for the whole batch")
            kept = mask[0].copy()
            out[:, kept] = tokens[:, kept]
        if kept.all():
            yield n
            return
        seeds = getattr(request.rng, "seeds", None) or tuple(range(b))
        groups = image_plans(request.grid, self.steps_count, self.schedule_order, seeds, kept)  # [B, count] per step
        rows = request.rows(layout)
        r, rep = rows.shape[0], rows.shape[0] // b
        positions = cell_positions(layout, request.grid)
        known_cells = np.flatnonzero(kept)
        runner.start(r, 1 + n + max(g.shape[1] for g in groups))

        # First call: class, kept cells (context, raster order), the first group's queries.
        ctx_ids = np.concatenate([layout.class_ids(rows)[:, None], np.tile(out[:, known_cells], (rep, 1))], axis=1)
        ctx_pos = np.concatenate([np.zeros((r, 1), np.int64),
                                  np.broadcast_to(positions[known_cells], (r, len(known_cells)))], axis=1)
        decided = len(known_cells)
        for t, group in enumerate(groups):
            logits = self._call(runner, ctx_ids, ctx_pos, group, positions, query, rep)
            state.calls += 1
            state.mark("prefill" if t == 0 else "decode")
            c = group.shape[1]
            toks = sample_guided(logits[:, -c:], b, request.guidance, request.sampling,  # the queries
                                 request.rng).reshape(c, b).T  # image i's draws in its plan's order
            np.put_along_axis(out, group, toks, axis=1)
            decided += c
            yield decided
            ctx_ids, ctx_pos = np.tile(toks, (rep, 1)), np.tile(positions[group], (rep, 1))

    @staticmethod
    def _call(runner, ctx_ids: np.ndarray, ctx_pos: np.ndarray, group: np.ndarray, positions: np.ndarray,
              query: int, rep: int) -> np.ndarray:
        """One call: context entries (appended to the cache), then one query per cell of `group`."""
        r, k = ctx_ids.shape
        c = group.shape[1]
        ids = np.concatenate([ctx_ids, np.full((r, c), query, np.int64)], axis=1)
        pos = np.concatenate([ctx_pos, np.tile(positions[group], (rep, 1))], axis=1)
        past = runner.length
        s = k + c
        mask = np.zeros((s, past + s), bool)
        mask[:, :past] = True  # the cache holds context only
        mask[:k, past:past + k] = np.tril(np.ones((k, k), bool))  # context: causal in call order
        mask[k:, past:past + k] = True  # queries: every context entry of the call
        mask[np.arange(k, s), past + np.arange(k, s)] = True  # and themselves
        logits = runner(np.ascontiguousarray(ids), np.ascontiguousarray(pos),
                        np.ascontiguousarray(np.broadcast_to(mask, (r, s, past + s))))
        runner.truncate(past + k)  # queries are context for nobody
        return logits



__all__ = ["AnyOrderDecoder", "DEFAULT_ORDER", "query_token"]
