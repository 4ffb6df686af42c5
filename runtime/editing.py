"""Editing with a raster-order model: inpainting, outpainting and continuation.

An edit is a token grid with some cells *kept* (taken from an input image through the tokenizer's
encoder) and the others *regenerated*. Pixel masks map to cells conservatively: a cell is
regenerated if any of its pixels is masked. The regenerated cells are decided by the model's
default decoder with the kept cells as `known` input: the sequential decoder forces them and
prefills a known prefix (the top rows) in one call; the any-order decoder (runtime/anyorder.py)
feeds every kept cell as context, so each draw already conditions on all of them (one draw per
image, no reranking).

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
off.

Layout: pixels and masks are prepared in runtime/image_processing.py; `*_cells` below turn an
edit request into (canvas, cells to regenerate); `complete_tokens` is the algorithm on tokens;
`EditPipeline` runs an edit on a loaded `Pipeline` (its options, runners, tokenizer), beside the
generation pipeline: `Pipeline.inpaint / outpaint / continue_image / edit_tokens` (`EditCalls`, a base
class of `Pipeline`) hand over to it.
This module does not import the pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np
from PIL import Image

from .config import DECODERS, check_budget
from .decoders import Decoder, DecoderRequest, cell_positions, check_callback, run_decoder
from .errors import InvalidInputError
from .image_processing import (check_box_inside, fit, parse_box, pixels_to_cells, place_mask, to_mask,  # noqa: F401
                               to_model_input, to_rgb, border_color, place_image)
from .preview import with_preview
from .results import CancelToken, StepCallback
from .sampling import ImageStreams, SamplingConfig, guided_logits

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
                guidance: float | None, scored: np.ndarray) -> np.ndarray:
    """Teacher-forced log-likelihood of the cells where `scored` [n] is True, per row of `tokens [B, n]`,
    under guidance `guidance` (the scale, or None: off), as the draws were sampled.

    One multi-token call per batch: the class token at position 0, then cells 0..L-1 at their
    rotary positions under a causal mask; the logits of entry i predict cell i.
    """
    tokens = np.asarray(tokens, np.int64)
    b, n = tokens.shape
    scored = np.asarray(scored, bool).reshape(n)
    if not scored.any():
        return np.zeros(b)
    length = int(np.flatnonzero(scored)[-1]) + 1  # predict cells 0 .. length-1
    positions = np.concatenate([[0], cell_positions(layout, grid)[:length - 1]]).astype(np.int64)
    chunk = max(1, _SCORE_BUDGET // (length * runner.vocab_size * (1 if guidance is None else 2)))
    out = np.empty(b)
    for s in range(0, b, chunk):
        toks, labs = tokens[s:s + chunk], labels[s:s + chunk]
        c = toks.shape[0]
        rows = labs if guidance is None else np.concatenate([labs, np.full_like(labs, layout.null_class_id)])
        r = rows.shape[0]
        ids = np.empty((r, length), np.int64)
        ids[:, 0] = layout.class_ids(rows)
        ids[:, 1:] = np.tile(toks[:, :length - 1], (r // c, 1))
        runner.start(r, length)
        logits = runner(ids, np.ascontiguousarray(np.broadcast_to(positions, (r, length))),
                        np.ascontiguousarray(np.broadcast_to(np.tril(np.ones((length, length), bool)),
                                                             (r, length, length))))
        logits = np.array(logits, dtype=np.float32)  # the runner reuses its buffer
        logits = guided_logits(logits, c, guidance).astype(np.float64)
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


def complete_tokens(decoder: Decoder, runner, layout, grid: tuple[int, int], source: np.ndarray,
                    regenerate: np.ndarray, label: int | None, guidance_scale: float, sampling: SamplingConfig,
                    seeds, num_images: int = 1, candidates: int = 4, callback: StepCallback | None = None,
                    cancel: CancelToken | None = None) -> EditResult:
    """Regenerate the cells of `source [h, w]` where `regenerate [h, w]` is True with `decoder`
    (see the module doc): `candidates` draws per output image, reranked, unless the decoder sees
    every kept cell (one draw).

    label None: the null class (unconditional), guidance off. The callback sees all
    `num_images * K` draws, image-major (draw k of image i is row i * K + k); draw r draws from
    its own stream, `seeds[r]`. The callback returning False, or `cancel`, stops the edit
    (GenerationCancelled).
    """
    h, w = grid
    n = h * w
    src = np.asarray(source).astype(np.int64).reshape(n)
    regen = np.asarray(regenerate, bool).reshape(n)
    k = draws_per_image(regen, candidates, num_images)
    if decoder.sees_every_kept_cell:
        k = 1
    if label is None:
        label, guidance_scale = layout.null_class_id, 0.0  # unconditional: no guidance
    b = int(num_images) * k
    labels = np.full(b, label, np.int64)
    known = (np.tile(src, (b, 1)), np.tile(~regen, (b, 1)))
    request = DecoderRequest(labels, tuple(grid), guidance_scale, sampling, ImageStreams(tuple(seeds), n), known)
    draws = run_decoder(decoder, runner, layout, request, callback, cancel).tokens.reshape(b, n)
    scored = ~regen & (np.arange(n) > int(np.argmax(regen)))  # the kept cells after the first hole
    scores = score_known(runner, layout, grid, draws, labels, request.guidance, scored) if k > 1 else np.zeros(b)
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


# --- the edit pipeline -------------------------------------------------------------------------------
_SAMPLING = ("guidance_scale", "temperature", "top_k", "top_p", "seed")


class EditPipeline:
    """Editing on a loaded `Pipeline`: its options, model defaults, runners and tokenizer (`pipe.edit`).

    The model's default decoder regenerates the cells (see the module doc); its option (e.g.
    `steps` for an any-order model) is an edit option too."""

    def __init__(self, pipe):
        self.pipe = pipe

    def inpaint(self, image, mask, class_label: int | str | None = None, **options):
        """Regenerate the masked part of `image` (PIL or array; fit to the model's size, aspect kept,
        padded with its border colour). mask: white / True = regenerate, the input image's size, the
        model's canvas size or the token grid's; a token cell is regenerated if any of its pixels is.
        class_label None: unconditional (null class, no guidance). Options (see `edit_tokens`):
        num_images, candidates (draws reranked by the likelihood of the kept cells after the hole),
        guidance_scale, temperature, top_k, top_p, seed, callback, cancel, preview, preview_every,
        return_result (an EditResult instead of the image list)."""
        canvas, regen = inpaint_cells(image, mask, self.pipe.image_size, self.pipe.grid)
        return self._edit(canvas, None, regen, class_label, **options)

    def outpaint(self, image, box: tuple[int, int, int, int] | None = None, class_label: int | str | None = None,
                 *, place: bool = False, **options):
        """Keep `box` (x0, y0, x1, y1, exclusive; default the centered half) and regenerate around it.
        place=False: the box is in the input image's pixels. place=True: the image is scaled into the
        box on the model's canvas (extend a small image). Other options as `inpaint`."""
        canvas, regen = outpaint_cells(image, box, place, self.pipe.image_size, self.pipe.grid)
        return self._edit(canvas, None, regen, class_label, **options)

    def continue_image(self, image, keep_rows: int, class_label: int | str | None = None, **options):
        """Keep the top `keep_rows` token rows of `image` and write the rest (a prefilled prefix).
        Options as `inpaint` (no candidates: nothing known follows the hole)."""
        canvas, regen = continue_cells(image, keep_rows, self.pipe.image_size, self.pipe.grid)
        options["candidates"] = 1
        return self._edit(canvas, None, regen, class_label, **options)

    def edit_tokens(self, tokens: np.ndarray, regenerate: np.ndarray, class_label: int | str | None = None,
                    **options) -> EditResult:
        """The edit on a token grid: `tokens [h, w]`, `regenerate [h, w]` bool -> EditResult.

        Options: num_images (>= 1), candidates (>= 1), guidance_scale, temperature, top_k, top_p,
        seed (draw r of the num_images x K draws uses seed + r), callback, cancel, preview,
        preview_every."""
        source, regen = check_tokens(tokens, regenerate, self.pipe.grid, self.pipe.layout.vocab_size)
        options["return_result"] = True
        return self._edit(None, source, regen, class_label, **options)

    def _edit(self, canvas, source, regen, class_label, *, num_images: int = 1, candidates: int = 4,
              callback: StepCallback | None = None, cancel: CancelToken | None = None, preview=None,
              preview_every=None, return_result: bool = False, **sampling):
        pipe = self.pipe
        option = DECODERS[pipe.decoders[0]].option
        valid = _SAMPLING + (() if option is None else (option.name,)) \
            + (("schedule", "guidance_schedule") if pipe.decoders[0] == "arpg" else ())
        unknown = sorted(set(sampling) - set(valid))
        if unknown:
            raise InvalidInputError(f"unknown edit option(s) {', '.join(unknown)}; valid: num_images, candidates, "
                                    f"callback, cancel, preview, preview_every, return_result, {', '.join(valid)}")
        cfg = pipe.config(decoder=pipe.decoders[0], **sampling)
        decoder = DECODERS[cfg.decoder].from_config(cfg)
        check_callback(callback)
        label = None if class_label is None else pipe.manifest.spec.classes.class_id(class_label)
        k = draws_per_image(regen, candidates, num_images)
        rows = int(num_images) * (1 if decoder.sees_every_kept_cell else k)
        check_budget("edit", rows, cfg.guided and label is not None, pipe.grid, pipe.manifest.spec.transformer,
                     pipe.layout.vocab_size, pipe.memory_budget, decoder.queries(pipe.grid))
        seeds = cfg.seeds(rows)
        if source is None:
            with pipe.model.lock:  # the encoder session opens on first use
                pipe.tokenizer.encoder
            source = np.asarray(pipe.tokenizer.encode(to_model_input(canvas)))[0].astype(np.int64)
        if preview is not None:
            n = pipe.grid[0] * pipe.grid[1]
            known = (np.tile(np.asarray(source).reshape(n), (rows, 1)),
                     np.tile(~np.asarray(regen, bool).reshape(n), (rows, 1)))
            callback = with_preview(pipe.tokenizer, pipe.grid, preview, preview_every, callback, known=known)
        elif preview_every is not None:
            with_preview(pipe.tokenizer, pipe.grid, None, preview_every)  # a clear error for a bad value
        with pipe.model.lend(cancel) as (runner, stop):
            result = complete_tokens(decoder, runner, pipe.layout, pipe.grid, source, regen, label,
                                     cfg.guidance_scale, cfg.sampling, seeds, num_images, k, callback, stop)
        result.images = pipe.decode(result.tokens)
        if canvas is not None:
            result.canvas = Image.fromarray(canvas)
        return result if return_result else result.images



# What an edit takes as an image: PIL or an array.
ImageLike = Union[Image.Image, np.ndarray]


class EditCalls:
    """The editing calls of `Pipeline` (a base class of it), each handed to `EditPipeline`."""

    @property
    def edit(self) -> EditPipeline:
        """Editing on this pipeline: inpaint, outpaint, continue_image, edit_tokens."""
        return EditPipeline(self)

    def inpaint(self, image: ImageLike, mask: ImageLike, class_label: int | str | None = None,
                **options) -> list[Image.Image] | EditResult:
        """Regenerate the masked part of `image`: see `EditPipeline.inpaint`."""
        return self.edit.inpaint(image, mask, class_label, **options)

    def outpaint(self, image: ImageLike, box: tuple[int, int, int, int] | None = None,
                 class_label: int | str | None = None, *, place: bool = False,
                 **options) -> list[Image.Image] | EditResult:
        """Keep `box` and regenerate around it: see `EditPipeline.outpaint`."""
        return self.edit.outpaint(image, box, class_label, place=place, **options)

    def continue_image(self, image: ImageLike, keep_rows: int, class_label: int | str | None = None,
                       **options) -> list[Image.Image] | EditResult:
        """Keep the top `keep_rows` token rows and write the rest: see `EditPipeline.continue_image`."""
        return self.edit.continue_image(image, keep_rows, class_label, **options)

    def edit_tokens(self, tokens: np.ndarray, regenerate: np.ndarray, class_label: int | str | None = None,
                    **options) -> EditResult:
        """The edit on a token grid: see `EditPipeline.edit_tokens`."""
        return self.edit.edit_tokens(tokens, regenerate, class_label, **options)


__all__ = ["EditResult", "EditPipeline", "EditCalls", "ImageLike", "inpaint_cells", "outpaint_cells", "continue_cells",
           "check_tokens", "complete_tokens", "score_known", "draws_per_image", "to_rgb", "to_mask", "pixels_to_cells", "parse_box"]
