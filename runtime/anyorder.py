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

from .config import DEFAULT_ANYORDER_STEPS as DEFAULT_STEPS
from .decoding import DecodeRequest, DecodeState, decode
from .editing import EditResult
from .errors import InvalidInputError
from .generation import cell_positions, guidance_rows
from .manifest import TokenLayout
from .results import CancelToken, StepCallback
from .sampling import ImageStreams, SamplingConfig, apply_guidance, sample
from .schedule import ORDERS, image_plans

DEFAULT_ORDER = "locality"


def query_token(layout: TokenLayout) -> int:
    """The layout's position-query id, or a one-line error for a model trained in raster order."""
    q = getattr(layout, "query_token_id", None)
    if q is None:
        raise InvalidInputError("this model was trained in raster order and has no position query: the any-order "
                                "decoder needs an any-order model (manifest family anyorder-c2i)")
    return int(q)


class AnyOrderDecoder:
    """`steps` calls per grid; each decides one group of the schedule (see the module doc)."""

    name = "anyorder"

    def __init__(self, steps: int = DEFAULT_STEPS, order: str = DEFAULT_ORDER):
        if order not in ORDERS:
            raise InvalidInputError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        self.steps_count, self.order = int(steps), order

    def start(self, request: DecodeRequest) -> DecodeState:
        # -1: not decided yet (what callbacks see)
        return DecodeState(np.full((request.labels.shape[0], request.cells), -1, np.int64), prefix_view=False)

    def steps(self, runner, layout: TokenLayout, request: DecodeRequest, state: DecodeState) -> Iterator[int]:
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
        groups = image_plans(request.grid, self.steps_count, self.order, seeds, kept)  # [B, count] per step
        guided = request.guidance_scale > 1.0
        rows = guidance_rows(request.labels, layout, guided)
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
            step = logits[:, -c:]  # [R, c, V]: the queries
            if guided:
                step = apply_guidance(step, b, request.guidance_scale)
            toks = sample(np.ascontiguousarray(step.transpose(1, 0, 2)).reshape(c * b, -1), request.sampling,
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


def complete_any_order(runner, layout: TokenLayout, grid: tuple[int, int], source: np.ndarray,
                       regenerate: np.ndarray, label: int | None, guidance_scale: float, sampling: SamplingConfig,
                       seeds, num_images: int = 1, steps: int = DEFAULT_STEPS, order: str = DEFAULT_ORDER,
                       callback: StepCallback | None = None, cancel: CancelToken | None = None) -> EditResult:
    """Editing with an any-order model: the cells of `source [h, w]` where `regenerate` is False are
    context for every regenerated cell, which `AnyOrderDecoder` decides in `steps` calls. One draw
    per output image (no candidates to rerank); draw i uses `seeds[i]`. label None: null class,
    guidance off."""
    h, w = grid
    n = h * w
    src = np.asarray(source).astype(np.int64).reshape(n)
    regen = np.asarray(regenerate, bool).reshape(n)
    if label is None:
        label, guidance_scale = layout.null_class_id, 1.0
    labels = np.full(int(num_images), label, np.int64)
    known = (np.tile(src, (len(labels), 1)), np.tile(~regen, (len(labels), 1)))
    request = DecodeRequest(labels, tuple(grid), guidance_scale, sampling, ImageStreams(seeds, n), known)
    tokens = decode(AnyOrderDecoder(steps, order), runner, layout, request, callback, cancel).tokens
    return EditResult(tokens=tokens, source=src.reshape(h, w), keep=~regen.reshape(h, w),
                      candidates=tokens[:, None], scores=np.zeros((len(labels), 1)),
                      chosen=np.zeros(len(labels), np.int64))


__all__ = ["AnyOrderDecoder", "DEFAULT_STEPS", "DEFAULT_ORDER", "complete_any_order", "query_token"]
