"""`tessera edit inpaint|outpaint|continue` and the `--preview-dir` option of `tessera generate`."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tessera.runtime.errors import InvalidInputError
from tessera.runtime.image_processing import load_image

from .options import HelpFormatter, add_arpg_arguments, add_model_arguments, add_sampling_arguments, pipeline_from_args
from .output import (Progress, add_overwrite_argument, check_counts, check_new_files, check_pixels, check_writable,
                     save_image)

EDIT_EPILOG = """examples:
  tessera edit inpaint digit.png --mask hole.png --class seven --out fixed.png
  tessera edit outpaint digit.png --box 7,7,21,21 --class 3 --out around.png
  tessera edit outpaint small.png --place --box 7,7,21,21 --out extended.png   # small.png drawn into the box
  tessera edit continue digit.png --keep-rows 3 --class 8 -n 4 --sheet --out endings.png
"""


# Options whose value may begin with '-' (a negative coordinate), which argparse would take for an option.
NEGATIVE_VALUE_OPTIONS = ("--box",)


def join_negative_values(argv: list[str]) -> list[str]:
    """`--box -5,0,5,5` -> `--box=-5,0,5,5`, so that argparse reads the value and the box check can
    say what is wrong with it (a value like '-5,0,5,5' does not look like a negative number to argparse)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            return out + argv[i:]
        if a in NEGATIVE_VALUE_OPTIONS and i + 1 < len(argv) and argv[i + 1][:2] not in ("--", "-h") \
                and argv[i + 1][:1] == "-" and len(argv[i + 1]) > 1 and not argv[i + 1][1].isalpha():
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def add_preview_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preview-dir", metavar="DIR",
                   help="write live preview frames DIR/frame-STEP.png while generating (the partial image)")
    p.add_argument("--preview-every", metavar="N", default=None,
                   help="tokens per preview frame: a number, 'row', or 'auto' (default: auto = per row, at most "
                        "~8%% of the generation time)")


def preview_from_args(args: argparse.Namespace, scale: int = 1):
    """A FrameWriter for --preview-dir (None without it); checks the folder before any work."""
    every = getattr(args, "preview_every", None)
    if every is not None and str(every).isdigit():
        args.preview_every = int(every)
    if not getattr(args, "preview_dir", None):
        if every is not None:
            raise InvalidInputError("--preview-every needs --preview-dir")
        return None
    from tessera.runtime.preview import FrameWriter

    return FrameWriter(preview_folder(args), scale=scale)


def preview_folder(args: argparse.Namespace) -> Path:
    """--preview-dir, created before any work. Frames already in it (frame-*.png, from an earlier run or not)
    are a user's files: refused unless --overwrite, since this run would replace some and mix in others."""
    folder = Path(args.preview_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidInputError(f"cannot create --preview-dir {folder}: {e.strerror or e}") from None
    old = sorted(folder.glob("frame-*.png"))
    if old and not getattr(args, "overwrite", False):
        raise InvalidInputError(f"--preview-dir {folder} already holds {len(old)} preview frame(s) ({old[0].name}"
                                f"{' ...' if len(old) > 1 else ''}); choose an empty folder, or pass --overwrite "
                                "to replace them")
    return folder


def preview_callback(args: argparse.Namespace, pipe, callback):
    """`tessera generate`: wrap the progress callback so that --preview-dir receives frames."""
    writer = preview_from_args(args, getattr(args, "scale", 1))
    if writer is None:
        return callback
    from tessera.runtime.preview import with_preview

    grid = pipe.grid_size(getattr(args, "grid_size", None)) if hasattr(pipe, "grid_size") else pipe.grid
    return with_preview(pipe.tokenizer, grid, writer, args.preview_every, callback)



def cmd_edit(args: argparse.Namespace) -> int:
    from tessera.runtime.images import image_grid

    out = Path(args.out)
    check_writable(out)
    check_counts(args.num, args.scale)
    sheet = args.sheet or args.grid_alias
    paths = [out] if args.num == 1 or sheet else [out.with_name(f"{out.stem}-{i:03d}{out.suffix}")
                                                 for i in range(args.num)]
    check_new_files(paths, args.overwrite)
    if getattr(args, "candidates", 1) < 1:
        raise InvalidInputError(f"--candidates must be >= 1, got {args.candidates}")
    image = load_image(args.image, "IMAGE")
    mask = load_image(args.mask, "--mask") if getattr(args, "mask", None) else None
    writer = preview_from_args(args, args.scale)
    pipe = pipeline_from_args(args)
    label = args.class_label
    if label is not None:
        pipe.manifest.class_id(label)  # validate before any work
    options = dict(num_images=args.num, guidance_scale=args.guidance, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                   callback=Progress(args.mode, enabled=not args.quiet),
                   preview=writer, preview_every=args.preview_every if writer else None,
                   **{k: v for k, v in (("steps", args.steps), ("schedule", args.schedule),
                                        ("guidance_schedule", args.guidance_schedule)) if v is not None})
    t0 = time.perf_counter()
    if args.mode == "inpaint":
        images = pipe.inpaint(image, mask, label, candidates=args.candidates, **options)
    elif args.mode == "outpaint":
        images = pipe.outpaint(image, args.box, label, place=args.place, candidates=args.candidates, **options)
    else:
        images = pipe.continue_image(image, args.keep_rows, label, **options)
    elapsed = time.perf_counter() - t0
    w, h = images[0].width * args.scale, images[0].height * args.scale
    check_pixels(w, h, len(images) if sheet else 1)
    if args.scale > 1:
        images = [im.resize((im.width * args.scale, im.height * args.scale), 0) for im in images]
    if len(images) == 1 or sheet:
        images = [images[0] if len(images) == 1 else image_grid(images)]
    written = paths
    for im, path in zip(images, written):
        save_image(im, path, overwrite=args.overwrite)
    if not args.quiet:
        extra = f"; {len(writer.written)} preview frames in {args.preview_dir}" if writer else ""
        print(f"{args.mode}: {len(images)} image(s) in {elapsed:.2f}s -> "
              + (str(written[0]) if len(written) == 1 else f"{written[0]} ... {written[-1]}") + extra, file=sys.stderr)
    return 0


def _common(p: argparse.ArgumentParser, candidates: bool, defaults) -> None:
    from .output import MAX_IMAGES, MAX_SCALE

    p.add_argument("image", metavar="IMAGE", help="the input image (any size: fit to the model's, aspect kept)")
    p.add_argument("--class", dest="class_label", metavar="C",
                   help="class id or name to condition on (default: none, the unconditional model)")
    p.add_argument("--model", metavar="DIR", help="model directory (default: the shipped model)")
    p.add_argument("-n", "--num", type=int, default=1, help=f"number of results, 1..{MAX_IMAGES}")
    if candidates:
        p.add_argument("--candidates", type=int, default=4,
                       help="draws per result, >= 1: the one most consistent with the kept cells after the hole wins")
    p.add_argument("--seed", type=int, default=0, help="same seed, same results, on every provider")
    p.add_argument("--steps", type=int, metavar="N",
                   help="any-order models: transformer calls for the regenerated cells (every kept cell is context, "
                        "no candidates needed; default: the model's, else 8)")
    add_arpg_arguments(p)
    add_sampling_arguments(p, defaults, guidance_note=", and without --class")
    p.add_argument("-o", "--out", default="edited.png",
                   help="output image file (several results: OUT-000.png ... unless --sheet; an existing "
                        "directory is an error, an existing file too unless --overwrite)")
    add_overwrite_argument(p)
    p.add_argument("--sheet", action="store_true", help="write all results into one contact sheet (one image file)")
    p.add_argument("--grid", dest="grid_alias", action="store_true", help=argparse.SUPPRESS)  # deprecated: --sheet
    p.add_argument("--scale", type=int, default=1, help=f"nearest-neighbour upscaling of the saved images, 1..{MAX_SCALE}")
    add_preview_arguments(p)
    add_model_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_edit)


def add_edit_parser(sub, defaults=None) -> None:
    """Add `edit` with its three modes to the `tessera` subcommands."""
    e = sub.add_parser("edit", help="inpaint, outpaint or continue an image",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EDIT_EPILOG,
                       description="Edit an image: its tokens (from the tokenizer's encoder) are kept outside the "
                                   "region to regenerate; a token cell is regenerated if any of its pixels is.")
    modes = e.add_subparsers(dest="mode", metavar="MODE", required=True)
    fmt = HelpFormatter
    p = modes.add_parser("inpaint", help="regenerate the masked region", formatter_class=fmt,
                         description="Regenerate the white (>= 128) part of --mask.")
    _common(p, candidates=True, defaults=defaults)
    p.add_argument("--mask", required=True, metavar="MASK.png",
                   help="white = regenerate; the image's size, the model's or the token grid's")
    p = modes.add_parser("outpaint", help="keep a box, regenerate around it", formatter_class=fmt,
                         description="Keep the box x0,y0,x1,y1 (pixels, x1/y1 exclusive) and regenerate the rest.")
    _common(p, candidates=True, defaults=defaults)
    p.add_argument("--box", metavar="x0,y0,x1,y1", help="region to keep (default: the centered half)")
    p.add_argument("--place", action="store_true",
                   help="draw the whole image into --box on the model's canvas (coordinates in the model's "
                        "pixels) and generate around it")
    p = modes.add_parser("continue", help="keep the top token rows, write the rest", formatter_class=fmt,
                         description="Keep the top N token rows of the image and complete the bottom.")
    _common(p, candidates=False, defaults=defaults)
    p.add_argument("--keep-rows", type=int, required=True, metavar="N", help="token rows to keep (1 .. rows-1)")
