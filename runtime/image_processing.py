"""Image and mask preprocessing for editing (like diffusers' image_processor.py): arrays and PIL
images -> the model's RGB canvas, pixel masks -> token-cell masks, boxes, and image files.

No model and no pipeline here: functions of pixels and sizes only. Inputs are bounded: an image
over `MAX_IMAGE_PIXELS` pixels is refused with an InvalidInputError naming the limit before it
is decoded or converted (PIL's own decompression-bomb error is turned into the same message).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InvalidInputError

# Largest input image accepted (pixels; 8192 x 8192). The model's canvas is small: anything larger
# is scaled down anyway, and converting it would allocate gigabytes. Raise it for your process by
# assigning `tessera.runtime.image_processing.MAX_IMAGE_PIXELS`.
MAX_IMAGE_PIXELS = 8192 * 8192


def check_image_size(width: int, height: int, what: str = "the image") -> None:
    if int(width) * int(height) > MAX_IMAGE_PIXELS:
        raise InvalidInputError(f"{what} is {width}x{height} = {int(width) * int(height):,} pixels, over the limit of "
                                f"{MAX_IMAGE_PIXELS:,} pixels (image_processing.MAX_IMAGE_PIXELS); scale it down first")


def load_image(path, what: str = "image") -> Image.Image:
    """Open an image file, fully read, within `MAX_IMAGE_PIXELS`; else an InvalidInputError."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"{what} {p} does not exist")
    try:
        with Image.open(p) as im:
            check_image_size(*im.size, what=f"{what} {p}")
            im.load()
            return im.copy()
    except Image.DecompressionBombError as e:
        raise InvalidInputError(f"{what} {p} is too large to open safely ({e}); the limit is "
                                f"{MAX_IMAGE_PIXELS:,} pixels") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InvalidInputError(f"{what} {p} is not a readable image ({e})") from None


def to_model_input(canvas: np.ndarray) -> np.ndarray:
    """uint8 canvas `[H, W, 3]` -> the tokenizer's float input `[1, 3, H, W]` in [-1, 1]."""
    return canvas.astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0


# --- images and masks -----------------------------------------------------------------------------
def to_rgb(image) -> np.ndarray:
    """A PIL image or an array (uint8 0..255, or float in [0, 1]; HxW, HxWxC or CxHxW) -> uint8 [H, W, 3]."""
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise InvalidInputError("the image is empty (0 pixels)")
        check_image_size(image.width, image.height)
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
    check_image_size(arr.shape[1], arr.shape[0])
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
        check_image_size(mask.width, mask.height, f"the {what}")
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
    check_image_size(mask.shape[1], mask.shape[0], f"the {what}")
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
    given = box
    if isinstance(box, str):
        box = [p for p in box.replace(" ", "").split(",") if p]
    try:
        vals = [float(v) for v in box]
    except (TypeError, ValueError, OverflowError):
        raise InvalidInputError(f"the {what} must be four numbers x0,y0,x1,y1; got {given!r}") from None
    if len(vals) == 4 and not all(math.isfinite(v) for v in vals):
        raise InvalidInputError(f"the {what} must be four finite integers x0,y0,x1,y1 (pixels), not NaN or "
                                f"infinite; got {given!r}")
    if len(vals) != 4 or any(v != int(v) for v in vals):
        raise InvalidInputError(f"the {what} must be four integers x0,y0,x1,y1 (pixels, x1 and y1 exclusive); got {given!r}")
    x0, y0, x1, y1 = (int(v) for v in vals)
    if not (x0 < x1 and y0 < y1):
        raise InvalidInputError(f"the {what} {x0},{y0},{x1},{y1} is empty: need x0 < x1 and y0 < y1")
    return x0, y0, x1, y1


def check_box_inside(box, width: int, height: int, what: str, frame: str) -> None:
    x0, y0, x1, y1 = box
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise InvalidInputError(f"the {what} {x0},{y0},{x1},{y1} reaches outside the {frame} "
                                f"(0,0,{width},{height})")


__all__ = ["MAX_IMAGE_PIXELS", "check_image_size", "load_image", "to_model_input", "to_rgb", "to_mask", "Placement",
           "fit", "border_color", "place_image", "place_mask", "pixels_to_cells", "parse_box", "check_box_inside"]
