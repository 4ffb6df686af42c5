"""Tokenizer output (float NCHW in [-1, 1]) -> PIL images and contact sheets."""
from __future__ import annotations

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
    """`[B, C, H, W]` floats in [-1, 1] -> `[B, H, W, C]` uint8 (LlamaGen's mapping)."""
    x = (np.asarray(images, dtype=np.float32) + 1.0) * 127.5 + 0.5
    return np.clip(x, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def to_pil(images: np.ndarray) -> list[Image.Image]:
    arr = to_uint8(images)
    if arr.shape[-1] == 1:
        return [Image.fromarray(a[..., 0], mode="L") for a in arr]
    return [Image.fromarray(a, mode="RGB") for a in arr]


def image_grid(images: list[Image.Image], columns: int | None = None, pad: int = 2,
               scale: int = 1) -> Image.Image:
    """Tile images row-major into one sheet (`columns` defaults to a near-square layout)."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    n = len(images)
    cols = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    w, h = images[0].size
    w, h = w * scale, h * scale
    sheet = Image.new("RGB", (cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad), (255, 255, 255))
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        im = im.convert("RGB")
        if scale != 1:
            im = im.resize((w, h), Image.NEAREST)
        sheet.paste(im, (pad + c * (w + pad), pad + r * (h + pad)))
    return sheet
