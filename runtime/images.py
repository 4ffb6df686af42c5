"""Contact sheets: PIL images tiled into one (the CLI's `--grid`). Token grids -> images, with the
8-bit rule (`to_uint8`), live with the tokenizer (runtime/tokenizer.py)."""
from __future__ import annotations

import numpy as np
from PIL import Image


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
