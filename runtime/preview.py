"""Live previews: the partial image, every N tokens, while the transformer writes it.

`PreviewRenderer` is a generation step callback (`callback(step, total, tokens)`). Every `every`
decided tokens (default "auto": at most one per token row, within 8% of the generation time) and at
the last token it decodes the grid so far and
calls `preview(step, total, images)` with one PIL image per row of the batch.

Cells not decided yet are decoded as the most frequent code among the decided cells of that image
(in practice the background code, so the decided area near the frontier looks as it will), then
painted over with a flat neutral colour (mid-grey by default): what is not written yet is plainly
visible. The last frame is the complete grid decoded exactly as `Pipeline.decode` does, so it
equals the final image. The cost is the decoder calls; `seconds` and `frames` record it.
"""
from __future__ import annotations

import time
import weakref
from typing import Callable

import numpy as np
from PIL import Image

from .errors import InvalidInputError
from .results import StepCallback
from .tokenizer import to_uint8

# preview(step, total, images) -> None
PreviewCallback = Callable[[int, int, "list[Image.Image]"], None]


# "auto" frames: one per row at most, skipped while rendering would pass this share of generation time.
AUTO_BUDGET = 0.08
_FRAME_COST: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> last frame's seconds


def preview_interval(every, grid: tuple[int, int]) -> int:
    """`None`, "row" or "auto" -> the grid width (one frame per token row); else an integer >= 1."""
    if every is None or (isinstance(every, str) and every.strip().lower() in ("row", "auto")):
        return int(grid[1])
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise InvalidInputError(f"preview_every must be an integer >= 1 (tokens per frame) , 'row' or 'auto', got {every!r}")
    return int(every)


class PreviewRenderer:
    """A step callback that renders partial images and hands them to `preview`.

    Frames are incremental: only the token rows that changed since the previous frame are decoded
    (a band of the grid, about 1/h of a full decode) and pasted into the last frame's pixels; the
    last frame is one full, exact decode. With `render_last=False` (what `Pipeline.generate` does)
    the renderer does not decode the last frame itself: the pipeline decodes the result once and
    hands it over with `show_final(images)`. A band is decoded without the rows around it, so rows
    may show faint seams until the final frame.

    every: tokens per frame (an int), "row" (one frame per token row), or None / "auto": at most
    one frame per row, but a frame is put off (merged into a later one) while rendering it would
    take the preview past `budget` (default 8%) of the generation time so far; the last frame is
    never skipped. `budget` may also be given with an explicit cadence.

    known: optional `(tokens [B, n], mask [B, n])` of cells fixed in advance (editing); they are
    shown from the first frame. `callback`: another step callback, called first on every step;
    its return value is returned (False stops the generation).
    """

    def __init__(self, tokenizer, grid: tuple[int, int], preview: PreviewCallback, every=None,
                 callback: StepCallback | None = None, known: tuple[np.ndarray, np.ndarray] | None = None,
                 fill_color=(128, 128, 128), budget: float | None = None, render_last: bool = True):
        if not callable(preview):
            raise InvalidInputError(f"preview must be callable as preview(step, total, images), got {type(preview).__name__}")
        self.tokenizer, self.grid, self.preview, self.callback = tokenizer, tuple(grid), preview, callback
        self.every = preview_interval(every, grid)
        # Unset cadence = "auto": one frame per row at most, within the 8% time budget.
        auto = every is None or (isinstance(every, str) and every.strip().lower() == "auto")
        self.budget = AUTO_BUDGET if auto and budget is None else budget
        self.skipped = 0
        self.frame_seconds: list[float] = []
        self._t0 = time.perf_counter()
        self.known = None if known is None else (np.asarray(known[0], np.int64), np.asarray(known[1], bool))
        self.fill_color = np.asarray(fill_color, np.uint8)
        self.frames = 0
        self.seconds = 0.0  # time spent rendering (decoder calls and conversions), not in `preview`
        self.steps: list[int] = []
        self.render_last = render_last
        self._last_step = 0
        self._pixels: np.ndarray | None = None  # [B, H, W, C] uint8, the previous frame
        self._done = 0  # cells shown as decided in the previous frame (raster prefix)

    def __call__(self, step: int, total: int, tokens: np.ndarray):
        answer = self.callback(step, total, tokens) if self.callback is not None else None
        if answer is False or (step >= total and not self.render_last):
            return answer
        if step < total and step // self.every <= self._last_step // self.every:
            return answer
        t0 = time.perf_counter()
        if self.budget is not None and step < total:
            expected = _FRAME_COST.get(self.tokenizer, 0.0)
            if self.seconds + expected > self.budget * (t0 - self._t0 - self.seconds):
                self.skipped += 1  # put off: the next step tries again
                return answer
        self._last_step = step
        images = self.render(step, total, tokens)
        spent = time.perf_counter() - t0
        self.seconds += spent
        self.frame_seconds.append(spent)
        if step < total:
            try:
                _FRAME_COST[self.tokenizer] = spent
            except TypeError:  # not weak-referenceable
                pass
        self.frames += 1
        self.steps.append(step)
        self.preview(step, total, images)
        return answer

    def show_final(self, images: list[Image.Image], total: int | None = None) -> None:
        """The last frame: the finished `images` (decoded by the caller), handed over as copies."""
        total = int(total if total is not None else self.grid[0] * self.grid[1])
        self.frames += 1
        self.steps.append(total)
        self._last_step = total
        self.preview(total, total, [im.copy() for im in images])

    def render(self, step: int, total: int, tokens: np.ndarray) -> list[Image.Image]:
        h, w = self.grid
        n = h * w
        tokens = np.asarray(tokens, np.int64)
        b, m = tokens.shape
        if step >= total or m >= n:  # the last frame, or a full grid (parallel decoding): decode it all
            codes = tokens if m == n and tokens.min() >= 0 else self._fill(tokens)[0]
            if step >= total or self.known is None:
                return self._pil(to_uint8(self.tokenizer.decode(codes.reshape(b, h, w))))
        codes, decided = self._fill(tokens)
        first = self._pixels is None or self._pixels.shape[0] != b or m < self._done
        if first and self.known is not None:
            rows = (0, h)  # known cells anywhere: decode everything once
        else:
            rows = (0 if first else self._done // w, max(1, (m - 1) // w + 1))
        band = codes.reshape(b, h, w)[:, rows[0]:rows[1]]
        pix = to_uint8(self.tokenizer.decode(np.ascontiguousarray(band)))  # [B, rows*ph, W, C]
        ph = pix.shape[1] // (rows[1] - rows[0])
        pw = pix.shape[2] // w
        if first:
            self._pixels = np.empty((b, h * ph, w * pw, pix.shape[-1]), np.uint8)
            self._pixels[:] = self.fill_color[: pix.shape[-1]]
        pending = ~decided.reshape(b, h, w)[:, rows[0]:rows[1]].repeat(ph, 1).repeat(pw, 2)
        pix[pending] = self.fill_color[: pix.shape[-1]]
        self._pixels[:, rows[0] * ph:rows[1] * ph] = pix
        self._done = m
        return self._pil(self._pixels)

    def _fill(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The grid so far with known cells in place; undecided cells hold the image's most frequent
        decided code (its background, in practice) -> (codes [B, n], decided [B, n])."""
        n = self.grid[0] * self.grid[1]
        b, m = tokens.shape
        codes = np.zeros((b, n), np.int64)
        codes[:, :m] = np.maximum(tokens, 0)
        decided = np.zeros((b, n), bool)
        decided[:, :m] = tokens >= 0  # parallel decoding marks undecided cells with -1
        if self.known is not None and self.known[0].shape == (b, n):
            kt, km = self.known
            codes = np.where(km & ~decided, kt, codes)
            decided |= km
        for i in range(b):
            if not decided[i].all():
                seen = codes[i][decided[i]]
                codes[i][~decided[i]] = np.bincount(seen).argmax() if seen.size else 0
        return codes, decided

    @staticmethod
    def _pil(pixels: np.ndarray) -> list[Image.Image]:
        if pixels.shape[-1] == 1:
            return [Image.fromarray(a[..., 0], mode="L") for a in pixels]
        return [Image.fromarray(np.ascontiguousarray(a), mode="RGB") for a in pixels]


def with_preview(tokenizer, grid: tuple[int, int], preview: PreviewCallback | None, every=None,
                 callback: StepCallback | None = None, known=None, render_last: bool = True) -> StepCallback | None:
    """Wrap `callback` so that `preview` also receives frames; returns `callback` unchanged when
    `preview` is None."""
    if preview is None:
        if every is not None:
            preview_interval(every, grid)  # still a clear error for a bad value
        return callback
    return PreviewRenderer(tokenizer, grid, preview, every, callback, known, render_last=render_last)


class FrameWriter:
    """A `preview` callable that saves each frame as DIR/frame-STEP.png (a sheet when the batch
    holds several images), optionally upscaled."""

    def __init__(self, folder, scale: int = 1, prefix: str = "frame"):
        from pathlib import Path

        self.folder = Path(folder)
        self.scale, self.prefix = int(scale), prefix
        self.written: list = []

    def __call__(self, step: int, total: int, images) -> None:
        from .images import image_grid

        im = images[0] if len(images) == 1 else image_grid(images)
        if self.scale > 1:
            im = im.resize((im.width * self.scale, im.height * self.scale), Image.NEAREST)
        path = self.folder / f"{self.prefix}-{step:04d}.png"
        im.save(path)
        self.written.append(path)


__all__ = ["PreviewRenderer", "PreviewCallback", "with_preview", "preview_interval", "FrameWriter"]
