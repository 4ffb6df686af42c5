"""Spatially parallel decoding (ZipAR-style): several rows of the image advance in one call.

Image tokens depend mostly on their neighbourhood, so row r may predict its column c as soon as
row r-1 is `window` columns ahead of c (or complete). Every call then carries one query per
active row — fewer transformer calls for the same tokens, at the price of each query seeing the
rows above only up to their frontier.

Bookkeeping for a raster-order model (the token at cell j predicts cell j+1):

* a row's query is its previous cell's token at that cell's position;
* the first cell of row r is predicted from cell (r-1, w-1); when that cell is not sampled yet,
  a *proxy* query stands at its position (its content: the token above it when sampled, else the
  latest token of row r-1). A proxy is masked out for every later query: it is never context.
* a row's last token, not needed as any query, is fed as plain context (its logits unused).

Each call lists its entries in raster order (the fused graph is causal in call order) and the
mask lets an entry see the class token, every real token that precedes it in raster order, and
itself. With `window >= width` this is exactly sequential decoding, token for token.
"""
from __future__ import annotations

import numpy as np

from .generation import StepCallback, cell_positions, guidance_rows
from .manifest import TokenLayout
from .sampling import SamplingConfig, apply_guidance, sample
from .transformer import TransformerRunner


def generate_tokens_parallel(runner: TransformerRunner, layout: TokenLayout, grid: tuple[int, int],
                             labels: np.ndarray, guidance_scale: float, sampling: SamplingConfig, seed: int,
                             window: int, callback: StepCallback | None = None) -> tuple[np.ndarray, int]:
    """Class ids `[B]` -> (token grids `[B, h, w]`, number of transformer calls)."""
    h, w = grid
    n = h * w
    b = labels.shape[0]
    guided = guidance_scale > 1.0
    rows = guidance_rows(labels, layout, guided)
    r_count = rows.shape[0]
    rng = np.random.default_rng(seed)
    positions = cell_positions(layout, grid)
    out = np.full((b, n), -1, dtype=np.int64)  # -1: not decided yet (what callbacks see)

    capacity = 1 + n + (h - 1)  # class token, every cell, at most one proxy per row start
    runner.start(r_count, capacity)
    slot_raster = np.full(capacity, n + 1, np.int64)  # raster index held by each cache slot (class: -1)
    slot_visible = np.zeros(capacity, bool)  # real tokens are context; proxies never are
    slot_raster[0], slot_visible[0] = -1, True
    logits = runner(layout.class_ids(rows)[:, None].astype(np.int64), np.zeros((r_count, 1), np.int64),
                    np.ones((r_count, 1, 1), bool))
    calls, decided = 1, 0
    done = np.zeros(h, np.int64)  # cells sampled per row
    pending: dict[int, int] = {}  # row -> raster index of its latest sampled cell, not yet fed
    queries = [(0, 0)]  # (logit column, row) of the entries whose logits predict a row's next cell

    while True:
        # 1. Sample the next cell of every row that had a query.
        step = logits[:, [col for col, _ in queries]]  # [R, A, V]
        if guided:
            step = apply_guidance(step, b, guidance_scale)
        a = len(queries)
        toks = sample(np.ascontiguousarray(step.transpose(1, 0, 2)).reshape(a * b, -1), sampling, rng)
        for k, (_, row) in enumerate(queries):
            cell = row * w + done[row]
            out[:, cell] = toks[k * b:(k + 1) * b]
            pending[row] = cell
            done[row] += 1
        decided += a
        if callback is not None:
            callback(decided, n, out)
        if decided == n:
            return out.reshape(b, h, w), calls

        # 2. Plan the next call: one query per row allowed to advance, plus context-only feeds.
        entries = []  # (raster index, token source cell or None for proxy, proxy content row, query row)
        for row in range(h):
            c = done[row]
            if c >= w or (row > 0 and done[row - 1] < w and done[row - 1] < c + window):
                continue
            if c > 0:
                if row not in pending:
                    continue  # its input was fed already (cannot happen with one query per row per call)
                entries.append((pending.pop(row), True, row))
            else:  # first cell: predicted from (row-1, w-1)
                last = (row - 1) * w + w - 1
                if pending.get(row - 1) == last:
                    entries.append((pending.pop(row - 1), True, row))
                else:
                    entries.append((last, False, row))  # proxy
        for row, cell in list(pending.items()):
            if done[row] == w:  # a finished row's last token: context only
                entries.append((cell, True, -1))
                del pending[row]
        entries.sort(key=lambda e: e[0])

        # 3. Ids, positions and the mask of this call.
        s = len(entries)
        ids = np.empty((r_count, s), np.int64)
        raster = np.array([e[0] for e in entries])
        real = np.array([e[1] for e in entries])
        for k, (cell, is_real, row) in enumerate(entries):
            if is_real:
                ids[:, k] = np.tile(out[:, cell], r_count // b)
            else:  # proxy for (row-1, w-1): the token above it if sampled, else row-1's latest token
                src = cell - w if row >= 2 and done[row - 2] == w else (row - 1) * w + done[row - 1] - 1
                ids[:, k] = np.tile(out[:, src], r_count // b)
        pos = np.broadcast_to(positions[raster], (r_count, s)).copy()
        length = runner.length
        past = slot_visible[:length][None, :] & (slot_raster[:length][None, :] < raster[:, None])
        new = (real[None, :] & (raster[None, :] < raster[:, None])) | np.eye(s, dtype=bool)
        mask = np.broadcast_to(np.concatenate([past, new], axis=1), (r_count, s, length + s)).copy()
        slot_raster[length:length + s], slot_visible[length:length + s] = raster, real
        queries = [(k, row) for k, (_, _, row) in enumerate(entries) if row >= 0]
        logits = runner(ids, pos, mask)
        calls += 1
