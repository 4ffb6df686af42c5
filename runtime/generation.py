"""The sequential decoder (gpt-fast's shape): `prefill`, `decode_one_token`, `decode_n`.

Prefill the class token (and a known prefix), then one KV-cached decode step per image token.
Guidance as LlamaGen does it: conditional rows and null-class rows in one batch, the sampled
token fed to both halves. Cells given in `known` (editing, continuation) are forced instead of
sampled; a prefix known for every row is prefilled in one call. Each image draws from its own
random stream (`ImageStreams`), one uniform per cell it decides.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import numpy as np

from .decoding import DecodeRequest, DecodeState, decode
from .manifest import TokenLayout
from .results import StepCallback
from .sampling import ImageStreams, SamplingConfig, apply_guidance, image_seeds, sample

if TYPE_CHECKING:  # the core imports without onnxruntime
    from .transformer import TransformerRunner


def cell_positions(layout: TokenLayout, grid: tuple[int, int]) -> np.ndarray:
    """Rotary position id of each raster cell of an `h x w` grid."""
    h, w = grid
    cells = np.arange(h * w)
    return layout.cell_position(cells // w, cells % w).astype(np.int64)


def guidance_rows(labels: np.ndarray, layout: TokenLayout, guided: bool) -> np.ndarray:
    """Conditional rows, then (with guidance) one null-class row per image."""
    return np.concatenate([labels, np.full_like(labels, layout.null_class_id)]) if guided else labels


def prefill(runner: TransformerRunner, layout: TokenLayout, rows: np.ndarray, prefix: np.ndarray,
            positions: np.ndarray, capacity: int) -> np.ndarray:
    """Start a cache of `capacity` tokens for `rows` and run the class token and the known prefix
    `[B, p]` (tiled over the guidance rows) in one causal call -> logits `[R, 1 + p, V]`."""
    r, (b, p) = rows.shape[0], prefix.shape
    runner.start(r, capacity)
    ids = np.empty((r, 1 + p), np.int64)
    ids[:, 0] = layout.class_ids(rows)
    ids[:, 1:] = np.tile(prefix, (r // b, 1))
    pos = np.concatenate([[0], positions[:p]])[None].repeat(r, 0)
    mask = np.tril(np.ones((1 + p, 1 + p), bool))[None].repeat(r, 0)
    return runner(ids, pos, mask)


def decode_one_token(logits: np.ndarray, b: int, guidance_scale: float, sampling: SamplingConfig, rng,
                     guided_buffer: np.ndarray | None) -> np.ndarray:
    """The last position's logits `[R, S, V]` -> one token per image `[B]` (guidance, then sampling)."""
    step = logits[:, -1]
    if guided_buffer is not None:
        step = apply_guidance(step, b, guidance_scale, out=guided_buffer)
    return sample(step, sampling, rng)


def decode_n(runner: TransformerRunner, logits: np.ndarray, out: np.ndarray, start: int, positions: np.ndarray,
             guidance_scale: float, sampling: SamplingConfig, rng,
             known: tuple[np.ndarray, np.ndarray] | None = None) -> Iterator[int]:
    """Decide cells `start .. n-1` of `out [B, n]`, one transformer call each; yields the number
    of decided cells after each. Buffers are allocated once, before the loop."""
    b, n = out.shape
    guided = guidance_scale > 1.0
    r = 2 * b if guided else b
    ids = np.empty((r, 1), np.int64)
    pos = np.empty((r, 1), np.int64)
    masks = [np.ones((r, 1, t), bool) for t in range(n + 1)]  # masks[t]: attend to all t cached tokens
    guided_buffer = np.empty((b, logits.shape[-1]), np.float32) if guided else None
    for j in range(start, n):
        tok = decode_one_token(logits, b, guidance_scale, sampling, rng, guided_buffer)
        if known is not None:
            tok = np.where(known[1][:, j], known[0][:, j], tok)
        out[:, j] = tok
        yield j + 1
        if j == n - 1:
            return
        ids[:b, 0] = tok
        if guided:
            ids[b:, 0] = tok
        pos.fill(positions[j])
        logits = runner(ids, pos, masks[j + 2])


class SequentialDecoder:
    """One token per transformer call in raster order (LlamaGen's loop; the PyTorch reference's
    tokens exactly). `request.known` forces cells (editing) and prefills a known prefix."""

    name = "sequential"

    def start(self, request: DecodeRequest) -> DecodeState:
        return DecodeState(np.empty((request.labels.shape[0], request.cells), np.int64), prefix_view=True)

    def steps(self, runner, layout: TokenLayout, request: DecodeRequest, state: DecodeState) -> Iterator[int]:
        n, b = request.cells, request.labels.shape[0]
        out, known = state.out, None
        prefix = 0
        if request.known is not None:
            known_tokens, known_mask = (np.asarray(a).reshape(b, n) for a in request.known)
            known = (known_tokens, known_mask.astype(bool))
            prefix = int(np.argmin(known[1].all(0))) if not known[1].all() else n - 1
            out[:, :prefix] = known_tokens[:, :prefix]
        positions = cell_positions(layout, request.grid)
        rows = guidance_rows(request.labels, layout, request.guidance_scale > 1.0)
        logits = prefill(runner, layout, rows, out[:, :prefix], positions, n + 1)
        state.mark("prefill")
        state.calls = n - prefix  # the prefill, then one call per cell but the last
        if prefix:
            yield prefix
        yield from decode_n(runner, logits, out, prefix, positions, request.guidance_scale, request.sampling,
                            request.rng, known)


def generate_tokens(runner: TransformerRunner, layout: TokenLayout, grid: tuple[int, int], labels: np.ndarray,
                    guidance_scale: float, sampling: SamplingConfig, seed=0,
                    callback: StepCallback | None = None,
                    known: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Class ids `[B]` -> token grids `[B, h, w]` (int64), raster order: `SequentialDecoder` on
    `runner`. Image i draws from `seed + i` (or `seed[i]` for a list).

    known: optional `(tokens [B, h*w], mask [B, h*w] bool)`; cells where mask is True keep the
    given token.
    """
    labels = np.asarray(labels, np.int64)
    rng = ImageStreams(image_seeds(seed, labels.shape[0]), grid[0] * grid[1])
    request = DecodeRequest(labels, tuple(grid), guidance_scale, sampling, rng, known)
    return decode(SequentialDecoder(), runner, layout, request, callback).tokens
