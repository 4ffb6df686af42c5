"""Editing with a raster-order model: inpainting, outpainting and continuation.

An edit is a token grid with some cells *kept* (taken from an input image through the tokenizer's
encoder) and the others *regenerated*. Pixel masks map to cells conservatively: a cell is
regenerated if any of its pixels is masked. The regenerated cells are sampled with
`generate_tokens(..., known=...)`, which forces the kept cells and prefills a known prefix (the top
rows) in one call.

Conditioning on what lies *after* a hole. A raster model samples cell j from p(x_j | x_<j, c):
the kept cells below or right of a hole do not influence how it is filled. We correct for that
by sampling-importance-resampling in its greedy form. With the masked cells M drawn from the
model's own conditionals, the proposal is q(x_M) = prod_{j in M} p(x_j | x_<j, c), while the
target is the posterior p(x_M | x_K, c) proportional to p(x_M, x_K | c) = prod_j p(x_j | x_<j, c).
The importance weight of a draw is therefore

    w(x_M) = p(x_M, x_K | c) / q(x_M) = prod_{j in K, j > first masked cell} p(x_j | x_<j, c),

the teacher-forced likelihood of the kept cells that come after the first masked cell (the kept
cells before it have the same likelihood for every draw). We draw `candidates` completions per
output image, score each with ONE multi-token transformer call per batch of candidates (class
token + the grid up to the last scored cell, causal mask, explicit positions), and keep the draw
of highest weight. Scoring uses the same guidance as sampling (the guided logits define the
distribution we sample from) at temperature 1 without top-k / top-p truncation, i.e. the model's
own likelihood. When no kept cell follows the hole (continuation), every weight is equal and one
candidate is drawn.

Without a class label, the model's null class is used (the unconditional model) and guidance is
off. The known-cells decoding is the sequential decoder with `known` cells (runtime/generation.py).

Layout: pixels and masks are prepared in runtime/image_processing.py; `*_cells` below turn an
edit request into (canvas, cells to regenerate); `complete_tokens` is the algorithm on tokens.
`Pipeline.inpaint / outpaint / continue_image / edit_tokens` (runtime/pipeline.py) encode the
canvas, lend a transformer runner and decode the result; this module does not import the pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .decoding import DecodeRequest, decode
from .errors import InvalidInputError
from .generation import SequentialDecoder, cell_positions, guidance_rows
from .image_processing import (check_box_inside, fit, parse_box, pixels_to_cells, place_mask, to_mask,  # noqa: F401
                               to_rgb, border_color, place_image)
from .results import CancelToken, StepCallback
from .sampling import ImageStreams, SamplingConfig, apply_guidance

# Largest logits array (floats) one scoring call may produce; bigger batches are split.
_SCORE_BUDGET = 1 << 26


@dataclass
class EditResult:
    """Everything an edit produced. `images` are filled in by the pipeline methods."""

    tokens: np.ndarray  # [N, h, w] the chosen completions
    source: np.ndarray  # [h, w] the input's codes
    keep: np.ndarray  # [h, w] bool, True where the cell was taken from the input
    candidates: np.ndarray  # [N, K, h, w] every draw
    scores: np.ndarray  # [N, K] log-likelihood of the kept cells after the first hole, per draw
    chosen: np.ndarray  # [N] index of the kept draw
    images: list = field(default_factory=list)  # PIL images of `tokens`
    canvas: Image.Image | None = None  # the input as the model saw it (resized / padded / placed)


# --- the edit on tokens ----------------------------------------------------------------------------
def score_known(runner, layout, grid: tuple[int, int], tokens: np.ndarray, labels: np.ndarray,
                guidance_scale: float, scored: np.ndarray) -> np.ndarray:
    """Teacher-forced log-likelihood of the cells where `scored` [n] is True, per row of `tokens [B, n]`.

    One multi-token call per batch: the class token at position 0, then cells 0..L-1 at their
    rotary positions under a causal mask; the logits of entry i predict cell i.
    """
    tokens = np.asarray(tokens, np.int64)
    b, n = tokens.shape
    scored = np.asarray(scored, bool).reshape(n)
    if not scored.any():
        return np.zeros(b)
    length = int(np.flatnonzero(scored)[-1]) + 1  # predict cells 0 .. length-1
    guided = guidance_scale > 1.0
    positions = np.concatenate([[0], cell_positions(layout, grid)[:length - 1]]).astype(np.int64)
    chunk = max(1, _SCORE_BUDGET // (length * runner.vocab_size * (2 if guided else 1)))
    out = np.empty(b)
    for s in range(0, b, chunk):
        toks, labs = tokens[s:s + chunk], labels[s:s + chunk]
        c = toks.shape[0]
        rows = guidance_rows(labs, layout, guided)
        r = rows.shape[0]
        ids = np.empty((r, length), np.int64)
        ids[:, 0] = layout.class_ids(rows)
        ids[:, 1:] = np.tile(toks[:, :length - 1], (r // c, 1))
        runner.start(r, length)
        logits = runner(ids, np.ascontiguousarray(np.broadcast_to(positions, (r, length))),
                        np.ascontiguousarray(np.broadcast_to(np.tril(np.ones((length, length), bool)),
                                                             (r, length, length))))
        logits = np.array(logits, dtype=np.float32)  # the runner reuses its buffer
        if guided:
            logits = apply_guidance(logits, c, guidance_scale)
        logits = logits.astype(np.float64)
        top = logits.max(-1, keepdims=True)
        logz = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[..., 0]
        picked = np.take_along_axis(logits, toks[:, :length, None], -1)[..., 0]
        out[s:s + c] = ((picked - logz) * scored[:length]).sum(-1)
    return out


def draws_per_image(regenerate: np.ndarray, candidates: int, num_images: int = 1) -> int:
    """Validate the counts; the number of draws per output image (1 when no kept cell follows a hole)."""
    regen = np.asarray(regenerate, bool).ravel()
    if not regen.any():
        raise InvalidInputError("the mask selects no token cell to regenerate: nothing to do")
    for name, v in (("candidates", candidates), ("num_images", num_images)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InvalidInputError(f"{name} must be an integer >= 1, got {v!r}")
    first = int(np.argmax(regen))
    return int(candidates) if (~regen[first + 1:]).any() else 1


def complete_tokens(runner, layout, grid: tuple[int, int], source: np.ndarray, regenerate: np.ndarray,
                    label: int | None, guidance_scale: float, sampling: SamplingConfig, seed=0,
                    num_images: int = 1, candidates: int = 4, callback: StepCallback | None = None,
                    cancel: CancelToken | None = None) -> EditResult:
    """Regenerate the cells of `source [h, w]` where `regenerate [h, w]` is True (see the module doc).

    label None: the null class (unconditional), guidance off. The callback sees all
    `num_images * K` draws, image-major (draw k of image i is row i * K + k); draw r draws from
    its own stream, `seed + r` (or `seed[r]` for a list of num_images * K seeds). The callback
    returning False, or `cancel`, stops the edit (GenerationCancelled).
    """
    h, w = grid
    n = h * w
    src = np.asarray(source).astype(np.int64).reshape(n)
    regen = np.asarray(regenerate, bool).reshape(n)
    k = draws_per_image(regen, candidates, num_images)
    if label is None:
        label, guidance_scale = layout.null_class_id, 1.0
    first = int(np.argmax(regen))
    scored = ~regen & (np.arange(n) > first)
    b = int(num_images) * k
    labels = np.full(b, label, np.int64)
    known = (np.tile(src, (b, 1)), np.tile(~regen, (b, 1)))
    seeds = tuple(int(seed) + r for r in range(b)) if isinstance(seed, (int, np.integer)) else tuple(seed)
    request = DecodeRequest(labels, tuple(grid), guidance_scale, sampling, ImageStreams(seeds, n), known)
    draws = decode(SequentialDecoder(), runner, layout, request, callback, cancel).tokens.reshape(b, n)
    scores = score_known(runner, layout, grid, draws, labels, guidance_scale, scored) if k > 1 else np.zeros(b)
    scores = scores.reshape(num_images, k)
    chosen = scores.argmax(1)
    cand = draws.reshape(num_images, k, h, w)
    return EditResult(tokens=cand[np.arange(num_images), chosen], source=src.reshape(h, w),
                      keep=~regen.reshape(h, w), candidates=cand, scores=scores, chosen=chosen)


# --- edit requests -> (canvas, cells to regenerate) ------------------------------------------------
def _canvas(image, size: tuple[int, int], box=None):
    """The input scaled (aspect kept) into `box` (default: the whole canvas), padded with its
    border colour -> (canvas uint8 [H, W, 3], placement, input rgb)."""
    rgb = to_rgb(image)
    H, W = size
    at = fit(rgb.shape[1], rgb.shape[0], box or (0, 0, W, H))
    return place_image(rgb, at, (H, W), border_color(rgb)), at, rgb


def inpaint_cells(image, mask, size: tuple[int, int], grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Regenerate the masked part of `image` -> (canvas, regenerate [h, w]). See `Pipeline.inpaint`."""
    canvas, at, rgb = _canvas(image, size)
    H, W = size
    m = to_mask(mask)
    if m.shape == tuple(grid):
        regen = m
    elif m.shape == rgb.shape[:2]:
        regen = pixels_to_cells(place_mask(m, at, (H, W), outside=False), grid)
    elif m.shape == (H, W):
        regen = pixels_to_cells(m, grid)
    else:
        raise InvalidInputError(
            f"the mask is {m.shape[1]}x{m.shape[0]} but the image is {rgb.shape[1]}x{rgb.shape[0]} pixels "
            f"(model canvas {W}x{H}, token grid {grid[1]}x{grid[0]}); give a mask of one of these sizes")
    if not regen.any():
        raise InvalidInputError("the mask selects nothing to regenerate (white / True / nonzero = regenerate)")
    return canvas, regen


def outpaint_cells(image, box, place: bool, size: tuple[int, int], grid: tuple[int, int]):
    """Keep a box, regenerate everything around it -> (canvas, regenerate [h, w]). See `Pipeline.outpaint`."""
    H, W = size
    if place:
        box = parse_box(box) if box is not None else (W // 4, H // 4, W - W // 4, H - H // 4)
        check_box_inside(box, W, H, "box", "model's canvas")
        canvas, at, _ = _canvas(image, size, box)
        keep_px = np.zeros((H, W), bool)
        keep_px[at.y:at.y + at.h, at.x:at.x + at.w] = True
    else:
        canvas, at, rgb = _canvas(image, size)
        sh, sw = rgb.shape[:2]
        box = parse_box(box) if box is not None else (sw // 4, sh // 4, sw - sw // 4, sh - sh // 4)
        check_box_inside(box, sw, sh, "box", "image")
        keep_src = np.zeros((sh, sw), bool)
        keep_src[box[1]:box[3], box[0]:box[2]] = True
        keep_px = ~place_mask(~keep_src, at, (H, W), outside=True)
    regen = pixels_to_cells(~keep_px, grid)
    if regen.all():
        ds = H // grid[0]
        raise InvalidInputError(f"the box {','.join(map(str, box))} covers no whole token cell ({ds}x{ds} px "
                                "on the model's canvas): nothing would be kept; make it larger")
    if not regen.any():
        raise InvalidInputError(f"the box {','.join(map(str, box))} covers the whole image: nothing to outpaint")
    return canvas, regen


def continue_cells(image, keep_rows: int, size: tuple[int, int], grid: tuple[int, int]):
    """Keep the top `keep_rows` token rows -> (canvas, regenerate [h, w]). See `Pipeline.continue_image`."""
    h, w = grid
    if isinstance(keep_rows, bool) or not isinstance(keep_rows, (int, np.integer)) or not 1 <= keep_rows < h:
        raise InvalidInputError(f"keep_rows must be an integer in 1..{h - 1} (token rows of the {w}x{h} grid), "
                                f"got {keep_rows!r}")
    canvas, _, _ = _canvas(image, size)
    regen = np.zeros((h, w), bool)
    regen[int(keep_rows):] = True
    return canvas, regen


def check_tokens(tokens, regenerate, grid: tuple[int, int], vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """`Pipeline.edit_tokens`' inputs: an integer grid of codes and a cell mask of the grid's shape."""
    grid = tuple(grid)
    tok = np.asarray(tokens)
    if tok.shape != grid or not np.issubdtype(tok.dtype, np.integer):
        raise InvalidInputError(f"tokens must be an integer grid of shape {grid}, got {tok.dtype} {tok.shape}")
    if tok.min() < 0 or tok.max() >= vocab_size:
        raise InvalidInputError(f"tokens must lie in 0..{vocab_size - 1}")
    regen = to_mask(regenerate, "regenerate mask")
    if regen.shape != grid:
        raise InvalidInputError(f"the regenerate mask must have the token grid's shape {grid}, got {regen.shape}")
    return tok.astype(np.int64), regen


__all__ = ["EditResult", "inpaint_cells", "outpaint_cells", "continue_cells", "check_tokens", "complete_tokens",
           "score_known", "draws_per_image", "to_rgb", "to_mask", "pixels_to_cells", "parse_box"]
