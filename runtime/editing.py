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
off. The pipeline methods `Pipeline.inpaint / outpaint / continue_image / edit_tokens` call these
functions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image

from .errors import InvalidInputError
from .generation import StepCallback, cell_positions, generate_tokens, guidance_rows
from .sampling import SamplingConfig, apply_guidance

if TYPE_CHECKING:
    from .pipeline import Pipeline

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


# --- images and masks -----------------------------------------------------------------------------
def image_size(manifest) -> tuple[int, int]:
    """The model's image (height, width) in pixels."""
    im = manifest.data["image"]
    return int(im["height"]), int(im["width"])


def to_rgb(image) -> np.ndarray:
    """A PIL image or an array (uint8 0..255, or float in [0, 1]; HxW, HxWxC or CxHxW) -> uint8 [H, W, 3]."""
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise InvalidInputError("the image is empty (0 pixels)")
        if image.mode in ("I", "I;16", "F"):
            arr = np.asarray(image, dtype=np.float64)
            hi = arr.max() if arr.size else 1
            image = Image.fromarray((arr / (hi or 1) * 255).astype(np.uint8))
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if not isinstance(image, np.ndarray):
        raise InvalidInputError(f"the image must be a PIL image or a numpy array, got {type(image).__name__}")
    arr = image
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        arr = arr[..., :3] if arr.shape[-1] != 1 else np.repeat(arr, 3, -1)
    elif arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, -1)
    else:
        raise InvalidInputError(f"the image array must be HxW, HxWxC or CxHxW with C in 1, 3, 4; got shape {image.shape}")
    if arr.size == 0:
        raise InvalidInputError(f"the image is empty (shape {image.shape})")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise InvalidInputError(f"the image array must be uint8 (0..255) or float (0..1), got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise InvalidInputError("the image array holds NaN or infinite values")
    if np.issubdtype(image.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 255:
            raise InvalidInputError(f"integer image values must lie in 0..255, got {arr.min():g}..{arr.max():g}")
        return arr.astype(np.uint8)
    if arr.min() < 0 or arr.max() > 1:
        raise InvalidInputError(f"float image values must lie in [0, 1] (got {arr.min():.3g}..{arr.max():.3g}); "
                                "for the model's [-1, 1] range pass (x + 1) / 2")
    return np.round(arr * 255).astype(np.uint8)


def to_mask(mask, what: str = "mask") -> np.ndarray:
    """A PIL image (white, >= 128, = regenerate) or a 2-D array (True / nonzero = regenerate) -> bool [H, W]."""
    if isinstance(mask, Image.Image):
        return np.asarray(mask.convert("L")) >= 128
    if not isinstance(mask, np.ndarray):
        try:
            mask = np.asarray(mask)
        except Exception:
            raise InvalidInputError(f"the {what} must be a PIL image or a 2-D array, got {type(mask).__name__}") from None
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2 or mask.size == 0:
        raise InvalidInputError(f"the {what} must be a 2-D array (height x width), got shape {mask.shape}")
    if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.number)):
        raise InvalidInputError(f"the {what} must hold booleans or numbers, got dtype {mask.dtype}")
    return mask.astype(bool)


@dataclass(frozen=True)
class Placement:
    """Where the input image lands on the model's canvas: scaled to (w, h) at offset (x, y)."""

    x: int
    y: int
    w: int
    h: int


def fit(src_w: int, src_h: int, box: tuple[int, int, int, int]) -> Placement:
    """Scale (keeping the aspect ratio) to fit inside `box` (x0, y0, x1, y1), centered."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    s = min(bw / src_w, bh / src_h)
    w, h = min(bw, max(1, round(src_w * s))), min(bh, max(1, round(src_h * s)))
    return Placement(x0 + (bw - w) // 2, y0 + (bh - h) // 2, w, h)


def border_color(rgb: np.ndarray) -> tuple[int, int, int]:
    """Median colour of the image's outermost pixels: the padding that continues its background."""
    edge = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return tuple(int(v) for v in np.median(edge, axis=0))


def place_image(rgb: np.ndarray, at: Placement, size: tuple[int, int], fill) -> np.ndarray:
    """Draw `rgb` scaled into `at` on a (height, width) canvas of colour `fill` -> uint8 [H, W, 3]."""
    canvas = np.empty((*size, 3), np.uint8)
    canvas[:] = fill
    im = Image.fromarray(rgb)
    if (at.w, at.h) != im.size:
        im = im.resize((at.w, at.h), Image.LANCZOS)
    canvas[at.y:at.y + at.h, at.x:at.x + at.w] = np.asarray(im)
    return canvas


def place_mask(mask: np.ndarray, at: Placement, size: tuple[int, int], outside: bool) -> np.ndarray:
    """Map a pixel mask of the input image onto the canvas; a canvas pixel touched by any masked
    input pixel is masked. Canvas pixels outside the placed image get `outside`."""
    out = np.full(size, outside, bool)
    m = mask
    if (at.w, at.h) != (mask.shape[1], mask.shape[0]):
        m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((at.w, at.h), Image.BOX)) > 0
    out[at.y:at.y + at.h, at.x:at.x + at.w] = m
    return out


def pixels_to_cells(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Pixel mask [H, W] -> cell mask [h, w]: a cell is set if any of its pixels is."""
    h, w = grid
    H, W = mask.shape
    return mask.reshape(h, H // h, w, W // w).any(axis=(1, 3))


def parse_box(box, what: str = "box") -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) or "x0,y0,x1,y1" -> four ints, x0 < x1 and y0 < y1 (x1, y1 exclusive)."""
    if isinstance(box, str):
        box = [p for p in box.replace(" ", "").split(",") if p]
    try:
        vals = [float(v) for v in box]
    except (TypeError, ValueError):
        raise InvalidInputError(f"the {what} must be four numbers x0,y0,x1,y1; got {box!r}") from None
    if len(vals) != 4 or any(v != int(v) for v in vals):
        raise InvalidInputError(f"the {what} must be four integers x0,y0,x1,y1 (pixels, x1 and y1 exclusive); got {box!r}")
    x0, y0, x1, y1 = (int(v) for v in vals)
    if not (x0 < x1 and y0 < y1):
        raise InvalidInputError(f"the {what} {x0},{y0},{x1},{y1} is empty: need x0 < x1 and y0 < y1")
    return x0, y0, x1, y1


def _check_box_inside(box, width: int, height: int, what: str, frame: str) -> None:
    x0, y0, x1, y1 = box
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise InvalidInputError(f"the {what} {x0},{y0},{x1},{y1} reaches outside the {frame} "
                                f"(0,0,{width},{height})")


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
                    label: int | None, guidance_scale: float, sampling: SamplingConfig, seed: int,
                    num_images: int = 1, candidates: int = 4, callback: StepCallback | None = None) -> EditResult:
    """Regenerate the cells of `source [h, w]` where `regenerate [h, w]` is True (see the module doc).

    label None: the null class (unconditional), guidance off. The callback sees all
    `num_images * K` draws, image-major (draw k of image i is row i * K + k).
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
    draws = generate_tokens(runner, layout, grid, labels, guidance_scale, sampling, int(seed), callback, known)
    draws = draws.reshape(b, n)
    scores = score_known(runner, layout, grid, draws, labels, guidance_scale, scored) if k > 1 else np.zeros(b)
    scores = scores.reshape(num_images, k)
    chosen = scores.argmax(1)
    cand = draws.reshape(num_images, k, h, w)
    return EditResult(tokens=cand[np.arange(num_images), chosen], source=src.reshape(h, w),
                      keep=~regen.reshape(h, w), candidates=cand, scores=scores, chosen=chosen)


# --- the pipeline-level edits ------------------------------------------------------------------
def _label(pipe: "Pipeline", class_label) -> int | None:
    return None if class_label is None else pipe.manifest.class_id(class_label)


def _encode(pipe: "Pipeline", canvas: np.ndarray) -> np.ndarray:
    x = canvas.astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0
    return np.asarray(pipe.tokenizer.encode(x))[0].astype(np.int64)


def _run(pipe: "Pipeline", canvas: np.ndarray | None, source: np.ndarray, regen: np.ndarray, class_label,
         num_images: int, candidates: int, guidance_scale, temperature, top_k, top_p, seed,
         callback: StepCallback | None, preview: Callable | None, preview_every: int | None) -> EditResult:
    from .preview import with_preview

    g, sampling = pipe.sampling_options(guidance_scale, temperature, top_k, top_p)
    label = _label(pipe, class_label)
    grid = pipe.grid
    n = grid[0] * grid[1]
    if preview is not None:
        rows = int(num_images) * draws_per_image(regen, candidates, num_images)
        known = (np.tile(np.asarray(source).reshape(n), (rows, 1)), np.tile(~np.asarray(regen, bool).reshape(n), (rows, 1)))
        callback = with_preview(pipe.tokenizer, grid, preview, preview_every, callback, known=known)
    result = complete_tokens(pipe.transformer, pipe.layout, grid, source, regen, label, g, sampling, seed,
                             num_images, candidates, callback)
    result.images = pipe.decode(result.tokens)
    if canvas is not None:
        result.canvas = Image.fromarray(canvas)
    return result


def _prepare(pipe: "Pipeline", image, box=None) -> tuple[np.ndarray, Placement, np.ndarray]:
    """The input scaled (aspect kept) into `box` (default: the whole canvas), padded with its
    border colour -> (canvas uint8 [H, W, 3], placement, input rgb)."""
    rgb = to_rgb(image)
    H, W = image_size(pipe.manifest)
    at = fit(rgb.shape[1], rgb.shape[0], box or (0, 0, W, H))
    return place_image(rgb, at, (H, W), border_color(rgb)), at, rgb


def _finish(result: EditResult, return_result: bool):
    return result if return_result else result.images


def inpaint(pipe: "Pipeline", image, mask, class_label=None, *, num_images: int = 1, candidates: int = 4,
            guidance_scale: float | None = None, temperature: float | None = None, top_k: int | None = None,
            top_p: float | None = None, seed: int = 0, callback: StepCallback | None = None,
            preview: Callable | None = None, preview_every: int | None = None, return_result: bool = False):
    """Regenerate the masked part of `image`. See `Pipeline.inpaint`."""
    canvas, at, rgb = _prepare(pipe, image)
    grid = pipe.grid
    H, W = canvas.shape[:2]
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
    source = _encode(pipe, canvas)
    return _finish(_run(pipe, canvas, source, regen, class_label, num_images, candidates, guidance_scale,
                        temperature, top_k, top_p, seed, callback, preview, preview_every), return_result)


def outpaint(pipe: "Pipeline", image, box=None, class_label=None, *, place: bool = False, num_images: int = 1,
             candidates: int = 4, guidance_scale: float | None = None, temperature: float | None = None,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             callback: StepCallback | None = None, preview: Callable | None = None,
             preview_every: int | None = None, return_result: bool = False):
    """Keep a box, regenerate everything around it. See `Pipeline.outpaint`."""
    H, W = image_size(pipe.manifest)
    grid = pipe.grid
    if place:
        box = parse_box(box) if box is not None else (W // 4, H // 4, W - W // 4, H - H // 4)
        _check_box_inside(box, W, H, "box", "model's canvas")
        canvas, at, _ = _prepare(pipe, image, box)
        keep_px = np.zeros((H, W), bool)
        keep_px[at.y:at.y + at.h, at.x:at.x + at.w] = True
    else:
        canvas, at, rgb = _prepare(pipe, image)
        sh, sw = rgb.shape[:2]
        box = parse_box(box) if box is not None else (sw // 4, sh // 4, sw - sw // 4, sh - sh // 4)
        _check_box_inside(box, sw, sh, "box", "image")
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
    source = _encode(pipe, canvas)
    return _finish(_run(pipe, canvas, source, regen, class_label, num_images, candidates, guidance_scale,
                        temperature, top_k, top_p, seed, callback, preview, preview_every), return_result)


def continue_image(pipe: "Pipeline", image, keep_rows: int, class_label=None, *, num_images: int = 1,
                   guidance_scale: float | None = None, temperature: float | None = None,
                   top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                   callback: StepCallback | None = None, preview: Callable | None = None,
                   preview_every: int | None = None, return_result: bool = False):
    """Keep the top `keep_rows` token rows and write the rest. See `Pipeline.continue_image`."""
    h, w = pipe.grid
    if isinstance(keep_rows, bool) or not isinstance(keep_rows, (int, np.integer)) or not 1 <= keep_rows < h:
        raise InvalidInputError(f"keep_rows must be an integer in 1..{h - 1} (token rows of the {w}x{h} grid), "
                                f"got {keep_rows!r}")
    canvas, _, _ = _prepare(pipe, image)
    regen = np.zeros((h, w), bool)
    regen[int(keep_rows):] = True
    source = _encode(pipe, canvas)
    return _finish(_run(pipe, canvas, source, regen, class_label, num_images, 1, guidance_scale,
                        temperature, top_k, top_p, seed, callback, preview, preview_every), return_result)


def edit_tokens(pipe: "Pipeline", tokens, regenerate, class_label=None, *, num_images: int = 1,
                candidates: int = 4, guidance_scale: float | None = None, temperature: float | None = None,
                top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                callback: StepCallback | None = None, preview: Callable | None = None,
                preview_every: int | None = None) -> EditResult:
    """The edit on a token grid directly: `tokens [h, w]`, `regenerate [h, w]` bool."""
    grid = tuple(pipe.grid)
    tok = np.asarray(tokens)
    if tok.shape != grid or not np.issubdtype(tok.dtype, np.integer):
        raise InvalidInputError(f"tokens must be an integer grid of shape {grid}, got {tok.dtype} {tok.shape}")
    if tok.min() < 0 or tok.max() >= pipe.layout.vocab_size:
        raise InvalidInputError(f"tokens must lie in 0..{pipe.layout.vocab_size - 1}")
    regen = to_mask(regenerate, "regenerate mask")
    if regen.shape != grid:
        raise InvalidInputError(f"the regenerate mask must have the token grid's shape {grid}, got {regen.shape}")
    return _run(pipe, None, tok.astype(np.int64), regen, class_label, num_images, candidates, guidance_scale,
                temperature, top_k, top_p, seed, callback, preview, preview_every)


__all__ = ["EditResult", "inpaint", "outpaint", "continue_image", "edit_tokens", "complete_tokens",
           "score_known", "to_rgb", "to_mask", "pixels_to_cells", "parse_box"]
