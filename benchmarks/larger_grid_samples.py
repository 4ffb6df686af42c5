"""Sample sheet: the default model (trained on 7x7 tokens) asked for larger grids.

    python benchmarks/larger_grid_samples.py   # -> benchmarks/results/larger_grid.png

Rows: 7x7 (trained), 10x10, 14x14 (the rotary table's limit), and 14x14 decoded in 7x7 tiles
(bounded memory). Columns: digits 0..9, seed 0. An honest look at how quality degrades away
from the trained size.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from tessera.runtime import Pipeline
from tessera.runtime.images import image_grid


def main() -> Path:
    pipe = Pipeline.load(providers="cpu")
    out = Path(__file__).resolve().parent / "results" / "larger_grid.png"
    rows = []
    for label, grid, tile in (("7x7 (trained)", 7, None), ("10x10", 10, None), ("14x14", 14, None),
                              ("14x14, tiled", 14, 7)):
        tokens = pipe.generate_tokens(list(range(10)), seed=0, grid=grid)
        images = pipe.decode(tokens, tile=tile)
        size = 14 * 4 * pipe.tokenizer.downsample  # every row drawn at the 14x14 size
        sheet = image_grid([im.resize((size, size), Image.NEAREST) for im in images], columns=10)
        canvas = Image.new("RGB", (sheet.width + 110, sheet.height), "white")
        canvas.paste(sheet, (110, 0))
        ImageDraw.Draw(canvas).text((4, sheet.height // 2 - 6), label, fill="black")
        rows.append(canvas)
    full = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        full.paste(r, (0, y))
        y += r.height
    out.parent.mkdir(parents=True, exist_ok=True)
    full.save(out)
    print(out)
    return out


if __name__ == "__main__":
    main()
