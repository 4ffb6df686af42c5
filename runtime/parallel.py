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

Each call lists its real entries in raster order, then its proxies (the fused graph is causal
in call order; a proxy is context for nobody, so it may come last), and the mask lets an entry
see the class token, every real token that precedes it in raster order, and itself. After the
call the proxies' cache slots are dropped again (`runner.truncate`): the cache never holds more
than the class token and the h*w cells, so every grid up to the rotary table (`rope_grid`) fits
the fused graph's cos/sin cache (one row per position) at every window. With `window >= width`
this is exactly sequential decoding, token for token.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from .decoders import Decoder, DecoderRequest, DecoderState, Option, cell_positions
from .errors import InvalidInputError
from .sampling import sample_guided
from .spec import TokenLayout


class ParallelDecoder(Decoder):
    """Rows advance in parallel, each `window` tokens behind the row above (see the module doc)."""

    name = "parallel"
    option = Option("parallel_window", " (or None for sequential decoding)")

    def __init__(self, window: int):
        self.window = int(window)

    def queries(self, grid: tuple[int, int]) -> int:
        return grid[0]  # one per row

    def steps(self, runner, layout: TokenLayout, request: DecoderRequest, state: DecoderState) -> Iterator[int]:
        if request.known is not None:
            raise InvalidInputError("the parallel decoder takes no known cells; use the sequential decoder")
        h, w = request.grid
        n, b, window = h * w, request.labels.shape[0], self.window
        guidance, sampling, rng = request.guidance, request.sampling, request.rng
        rows = request.rows(layout)
        r_count = rows.shape[0]
        positions = cell_positions(layout, request.grid)
        out = state.out

        runner.start(r_count, 1 + n + (h - 1))  # cached: class + cells; transient: a proxy per row start
        slot_raster = np.full(1 + n, n + 1, np.int64)  # raster index held by each cache slot (class: -1)
        slot_raster[0] = -1
        logits = runner(layout.class_ids(rows)[:, None].astype(np.int64), np.zeros((r_count, 1), np.int64),
                        np.ones((r_count, 1, 1), bool))
        state.calls = 1
        state.mark("prefill")
        decided = 0
        done = np.zeros(h, np.int64)  # cells sampled per row
        pending: dict[int, int] = {}  # row -> raster index of its latest sampled cell, not yet fed
        queries = [(0, 0)]  # (logit column, row) of the entries whose logits predict a row's next cell

        while True:
            # 1. Sample the next cell of every row that had a query (image i's draws in query order).
            a = len(queries)
            toks = sample_guided(logits[:, [col for col, _ in queries]], b, guidance, sampling, rng)  # [A * B]
            for k, (_, row) in enumerate(queries):
                cell = row * w + done[row]
                out[:, cell] = toks[k * b:(k + 1) * b]
                pending[row] = cell
                done[row] += 1
            decided += a
            yield decided
            if decided == n:
                return

            # 2. Plan the next call: one query per row allowed to advance, plus context-only feeds.
            entries = []  # (raster index, real token (else proxy), query row or -1)
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
            entries.sort(key=lambda e: (not e[1], e[0]))  # real entries in raster order, then proxies

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
            past = slot_raster[:length][None, :] < raster[:, None]  # cached slots hold real tokens only
            new = (real[None, :] & (raster[None, :] < raster[:, None])) | np.eye(s, dtype=bool)
            mask = np.broadcast_to(np.concatenate([past, new], axis=1), (r_count, s, length + s)).copy()
            n_real = int(real.sum())
            slot_raster[length:length + n_real] = raster[:n_real]
            queries = [(k, row) for k, (_, _, row) in enumerate(entries) if row >= 0]
            logits = runner(ids, pos, mask)
            if n_real < s:
                runner.truncate(length + n_real)  # the proxies are context for nobody: free their slots
            state.calls += 1


__all__ = ["ParallelDecoder"]
