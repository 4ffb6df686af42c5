"""The `tessera` command: generate images, inspect a model directory, export models."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from .cli_options import add_model_arguments, pipeline_from_args
from .editing_cli import add_edit_parser, add_preview_arguments, preview_callback
from .errors import ExtraNotInstalledError, InvalidInputError, TesseraError

EPILOG = """examples:
  tessera generate 7                      a digit 7 from the shipped model -> tessera.png
  tessera generate 0 1 2 -n 4 --grid --scale 4 --out digits.png
  tessera generate seven --seed 3 --guidance 4 --top-k 50
  tessera info                            what the shipped model is (classes, sizes, parity)
  tessera export --gpt GPT-B --gpt-weights c2i_B_256.pt --vq VQ-16 --vq-weights vq_ds16_c2i.pt --out gpt-b
"""


class Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal, printed once otherwise)."""

    def __init__(self, label: str, enabled: bool = True, stream=None):
        stream = stream or sys.stderr
        self.label, self.enabled, self.stream = label, enabled, stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.start = time.perf_counter()
        self.last = 0.0

    def __call__(self, step: int, total: int, _tokens=None) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if step < total and (not self.tty or now - self.last < 0.05):
            return
        self.last = now
        width = 30
        done = int(width * step / total)
        rate = step / max(now - self.start, 1e-9)
        line = f"{self.label} [{'#' * done}{'.' * (width - done)}] {step}/{total} tokens {rate:6.0f} tok/s"
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        if step == total and self.tty:
            self.stream.write("\n")
        self.stream.flush()


def _check_writable(path: Path) -> None:
    """Fail before generating, not after: the output folder must exist and accept files."""
    folder = path.resolve().parent
    if not folder.is_dir():
        raise InvalidInputError(f"cannot write {path}: folder {folder} does not exist (create it or choose another --out)")
    try:
        tempfile.NamedTemporaryFile(dir=folder, prefix=".tessera-probe-").close()
    except OSError as e:
        raise InvalidInputError(f"cannot write {path}: {e.strerror or e} (choose another --out)") from None
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
        raise InvalidInputError(f"--out {path} must end in .png, .jpg, .webp or .bmp")


def _save(image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.partial{path.suffix}")
    image.save(tmp)
    os.replace(tmp, path)


def cmd_generate(args: argparse.Namespace) -> int:
    from .images import image_grid

    out = Path(args.out)
    _check_writable(out)
    pipe = pipeline_from_args(args)
    labels = pipe.labels(args.classes, args.num)  # validates before any work
    progress = Progress(f"generating {len(labels)} image{'s' if len(labels) > 1 else ''}", enabled=not args.quiet)
    progress = preview_callback(args, pipe, progress)  # --preview-dir: live frames
    t0 = time.perf_counter()
    images = pipe.generate(args.classes, guidance_scale=args.guidance, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, seed=args.seed, num_images_per_class=args.num,
                           callback=progress, parallel_window=args.parallel_window, grid=args.grid_size)
    elapsed = time.perf_counter() - t0
    names = pipe.class_names
    if args.scale > 1:
        images = [im.resize((im.width * args.scale, im.height * args.scale), 0) for im in images]
    written = []
    if args.grid or len(images) == 1:
        sheet = image_grid(images, columns=args.num if args.grid and len(args.classes) > 1 else None) \
            if len(images) > 1 else images[0]
        _save(sheet, out)
        written.append(out)
    else:
        for i, (im, label) in enumerate(zip(images, labels)):
            path = out.with_name(f"{out.stem}-{i:03d}-{names[label]}{out.suffix}")
            _save(im, path)
            written.append(path)
    if not args.quiet:
        print(f"{len(images)} image(s) in {elapsed:.2f}s on {pipe.graph_providers['transformer']} -> "
              + (str(written[0]) if len(written) == 1 else f"{written[0]} ... {written[-1]}"), file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .manifest import load_manifest
    from .pipeline import default_model_dir
    from .backend import installed_flavours
    from .compat import required_version
    from .providers import available_providers
    from .session import ort_version

    m = load_manifest(args.model or default_model_dir(), verify=args.verify)
    if args.json:
        print(json.dumps(m.data, indent=2))
        return 0
    d, t, k = m.data, m.data["transformer"], m.data["tokenizer"]
    h, w = m.grid
    print(f"{d.get('name')}  ({m.root})")
    if d.get("description"):
        print(f"  {d['description']}")
    print(f"  transformer  {t['n_layer']} layers, dim {t['dim']}, {t['n_head']} heads, "
          f"{t.get('parameters', 0) / 1e6:.1f}M params, vocab {t['vocab_size']}")
    print(f"  tokenizer    {k['downsample']}x downsampling, codebook {k['codebook_size']}x{k['codebook_dim']}, "
          f"{k.get('parameters', 0) / 1e6:.1f}M params")
    print(f"  image        {d['image']['width']}x{d['image']['height']} px from a {w}x{h} token grid")
    names = m.class_names
    shown = ", ".join(f"{i}={n}" for i, n in enumerate(names[:12])) + (" ..." if len(names) > 12 else "")
    print(f"  classes      {m.num_classes}: {shown}")
    print(f"  defaults     {json.dumps(m.generation_defaults)}")
    for name, g in d["graphs"].items():
        size = d["files"].get(g["file"], {}).get("bytes", 0)
        print(f"  {name:18s} {g['file']:28s} {g['precision']:5s} opset {g['opset']}  {size / 1e6:7.2f} MB  "
              f"onnxruntime >= {required_version(g)}")
    par = d.get("parity", {})
    if par.get("transformer"):
        print(f"  parity       transformer max |logit err| {par['transformer']['max_abs_logit_error']:.2e}; "
              f"decoder {par['tokenizer']['decoder_max_abs_error']:.2e}")
    print(f"  exported by  tessera-ar {d.get('exported_by', {}).get('version')}")
    print(f"  here         onnxruntime {ort_version()} ({', '.join(installed_flavours()) or 'no flavour listed'}); "
          f"providers {', '.join(available_providers())}")
    return 0


EXPORT_NEEDS = ("torch", "onnx", "safetensors")


def cmd_export(args: argparse.Namespace) -> int:
    import importlib

    missing = []
    for name in EXPORT_NEEDS:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExtraNotInstalledError(f"`tessera export` needs the PyTorch export stage ({', '.join(missing)} not "
                                     "installed): pip install 'tessera-ar[export]'")
    from tessera.export.cli import run

    run(args)
    return 0


def _export_parser(sub) -> None:
    from tessera.export.cli import add_arguments  # torch-free: only argument definitions

    p = sub.add_parser("export", help="convert PyTorch weights into a model directory (needs the 'export' extra)",
                       description="Export a transformer and tokenizer into ONNX graphs with a manifest, checking "
                                   "ONNX-vs-PyTorch parity. Needs: pip install 'tessera-ar[export]'.")
    add_arguments(p)
    p.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tessera", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Tessera: compact autoregressive image generation with ONNX Runtime. A transformer writes an "
                    "image as a grid of tokens, one token at a time; a VQ tokenizer turns the grid into pixels.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    g = sub.add_parser("generate", help="generate images of the given classes",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Generate images of the given classes (ids or names; `tessera info` lists them). "
                                   "Options left unset use the model's defaults from its manifest.")
    g.add_argument("classes", nargs="+", help="class ids or names, e.g. 7 or seven")
    g.add_argument("--model", metavar="DIR", help="model directory (default: the shipped model)")
    g.add_argument("-n", "--num", type=int, default=1, help="images per class")
    g.add_argument("--seed", type=int, default=0, help="same seed, same images, on every provider")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale (<= 1 turns it off)")
    g.add_argument("--temperature", type=float, help="sampling temperature (0 = greedy)")
    g.add_argument("--top-k", type=int, help="sample among the k likeliest tokens (0 = all)")
    g.add_argument("--top-p", type=float, help="nucleus sampling mass (1 = off)")
    g.add_argument("-o", "--out", default="tessera.png",
                   help="output image; several images become OUT-000-CLASS.png ... unless --grid")
    g.add_argument("--grid", action="store_true", help="write all images into one sheet (a row per class)")
    g.add_argument("--scale", type=int, default=1, help="nearest-neighbour upscaling of the saved images")
    g.add_argument("--parallel-window", type=int, metavar="W",
                   help="decode image rows in parallel, each W tokens behind the row above (fewer steps)")
    g.add_argument("--grid-size", type=int, metavar="N",
                   help="generate an N x N token grid instead of the trained size (larger images)")
    add_model_arguments(g)
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    add_preview_arguments(g)
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("info", help="show a model directory's manifest in readable form")
    i.add_argument("model", nargs="?", help="model directory (default: the shipped model)")
    i.add_argument("--json", action="store_true", help="print the raw manifest")
    i.add_argument("--verify", choices=["full", "size", "none"], default="full")
    i.set_defaults(func=cmd_info)
    _export_parser(sub)
    add_edit_parser(sub)  # tessera edit inpaint|outpaint|continue (editing_cli.py)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except TesseraError as e:
        print(f"tessera: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # export-stage errors carry their own clear messages
        from_export = type(e).__module__.startswith("tessera.export")
        if from_export or isinstance(e, (FileNotFoundError, PermissionError)):
            print(f"tessera: error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
