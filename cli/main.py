"""The `tessera` command: generate images, inspect a model directory, export models, edit images.

The CLI is the one layer that knows both the runtime and the export stage, and the only place that
turns errors into exit codes: 0 done, 1 a `tessera: error:` line (any TesseraError: bad input, model
directory, provider, export), 2 a usage error (argparse). Library code never exits the process.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings
from pathlib import Path

from tessera import __version__
from tessera.runtime.errors import ExtraNotInstalledError, TesseraError

from .bench import add_bench_parser
from .edit import add_edit_parser, add_preview_arguments, join_negative_values, preview_callback, preview_folder
from .options import (HelpFormatter, add_arpg_arguments, add_model_arguments, add_sampling_arguments, add_verify_argument, model_defaults,
                      model_from_argv, pipeline_from_args, resolve_verify)
from .output import (MAX_IMAGES, MAX_SCALE, Progress, StageProgress, add_overwrite_argument, check_counts,
                     check_new_files, check_pixels, check_writable, safe_name, save_image)

EPILOG = """examples:
  tessera generate 7                      a digit 7 from the shipped model -> tessera.png
  tessera generate 0 1 2 -n 4 --sheet --scale 4 --out digits.png   one contact sheet, a row per class
  tessera generate seven --seed 3 --guidance 4 --top-k 50
  tessera info                            what the shipped model is (classes, sizes, parity)
  tessera export --gpt-weights c2i_B_256.pt --vq-weights vq_ds16_c2i.pt --out gpt-b
  tessera viewer                          a window: pick a class, watch it being generated (Tkinter)
  tessera bench DIR1 DIR2                 measure model directories here (size, load, memory, speed, quality)

exit status: 0 done, 1 an error (one `tessera: error:` line), 2 a usage error.
"""


def _text_to_image_model(model: str | None) -> bool:
    """Whether `--model` is a text-to-image (nitro-ar) directory, from its manifest's family (the loader
    checks everything else)."""
    from tessera.runtime.spec import TEXT_FAMILIES

    if not model:
        return False
    try:
        return json.loads((Path(model) / "tessera.json").read_text(encoding="utf-8")).get("family") in TEXT_FAMILIES
    except (OSError, ValueError, AttributeError):
        return False


# Options of the class-conditional token samplers that a text-to-image model has no use for.
_CLASS_ONLY = (("temperature", "--temperature"), ("top_k", "--top-k"), ("top_p", "--top-p"),
               ("parallel_window", "--parallel-window"), ("decoder", "--decoder"), ("jacobi_window", "--jacobi-window"),
               ("grid_size", "--grid-size"), ("preview_every", "--preview-every"))


def cmd_generate_text(args: argparse.Namespace) -> int:
    """`tessera generate "a red fox in the snow" --model DIR`: prompts instead of classes."""
    from tessera.runtime.errors import InvalidInputError
    from tessera.runtime.images import image_grid
    from tessera.runtime.nitro import NitroPipeline, check_prompts, latent_preview
    from tessera.runtime.providers import resolve_providers

    for key, flag in _CLASS_ONLY:
        if getattr(args, key, None) is not None:
            raise InvalidInputError(f"{flag} is an option of class-conditional token models; {args.model} is a "
                                    "text-to-image model (options: --guidance, --steps, --head-steps, --seed, -n)")
    prompts = check_prompts(list(args.classes))
    out = Path(args.out)
    check_writable(out)
    check_counts(len(prompts) * args.num, args.scale)
    all_prompts = [p for p in prompts for _ in range(args.num)]
    sheet = args.sheet or args.grid_alias
    paths = [out] if sheet or len(all_prompts) == 1 else [
        out.with_name(f"{out.stem}-{i:03d}-{safe_name(p, 'prompt')}{out.suffix}") for i, p in enumerate(all_prompts)]
    check_new_files(paths, args.overwrite)
    preview_dir = preview_folder(args) if args.preview_dir else None
    providers = resolve_providers(args.providers.split(",") if args.providers != "auto" else "auto")
    pipe = NitroPipeline.load(args.model, providers=providers, threads=args.threads,
                              verify=resolve_verify(args.verify, args.model),
                              low_memory=True if args.low_memory is None else args.low_memory)
    progress = Progress(f"generating {len(all_prompts)} image{'s' if len(all_prompts) > 1 else ''}",
                        enabled=not args.quiet, unit="iterations")

    def callback(it: int, total: int, latent) -> None:
        progress(it + 1, total)
        if preview_dir is not None:
            frames = latent_preview(latent, pipe.spec.loop.grid, pipe.spec.decoder.downsample)
            save_image(image_grid(frames) if len(frames) > 1 else frames[0], preview_dir / f"frame-{it + 1:03d}.png")

    t0 = time.perf_counter()
    images = pipe.generate(all_prompts, seed=args.seed, guidance_scale=args.guidance, steps=args.steps,
                           head_steps=args.head_steps, callback=callback)
    elapsed = time.perf_counter() - t0
    if args.scale > 1:
        images = [im.resize((im.width * args.scale, im.height * args.scale), 0) for im in images]
    if sheet and len(images) > 1:
        images = [image_grid(images, columns=args.num if len(prompts) > 1 else None)]
    for im, path in zip(images, paths):
        save_image(im, path, overwrite=args.overwrite)
    if not args.quiet:
        print(f"{len(all_prompts)} image(s) in {elapsed:.2f}s -> "
              + (str(paths[0]) if len(paths) == 1 else f"{paths[0]} ... {paths[-1]}"), file=sys.stderr)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from tessera.runtime.images import image_grid

    if _text_to_image_model(args.model):
        return cmd_generate_text(args)
    if getattr(args, "head_steps", None) is not None:
        from tessera.runtime.errors import InvalidInputError

        raise InvalidInputError("--head-steps is an option of text-to-image models (family nitro-ar)")
    out = Path(args.out)
    check_writable(out)
    check_counts(len(args.classes) * max(args.num, 1) if args.num >= 1 else args.num, args.scale)
    sheet = args.sheet or args.grid_alias
    # One generation, then its images: the transformer can go before the decoder comes (a lower peak
    # at no cost), unless live previews decode while the transformer still runs.
    pipe = pipeline_from_args(args, low_memory_default=None if args.preview_dir else True)
    labels = pipe.labels(args.classes, args.num)  # validates before any work
    _check_output_pixels(pipe, args, len(labels) if sheet else 1)
    names = pipe.class_names
    if sheet or len(labels) == 1:
        paths = [out]
    else:  # class names come from the manifest, which may be hostile: never a path in a file name
        paths = [out.with_name(f"{out.stem}-{i:03d}-{safe_name(names[label], f'class{label}')}{out.suffix}")
                 for i, label in enumerate(labels)]
    check_new_files(paths, args.overwrite)
    progress = Progress(f"generating {len(labels)} image{'s' if len(labels) > 1 else ''}", enabled=not args.quiet)
    progress = preview_callback(args, pipe, progress)  # --preview-dir: live frames
    t0 = time.perf_counter()
    images = pipe.generate(args.classes, guidance_scale=args.guidance, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, seed=args.seed, num_images_per_class=args.num,
                           callback=progress, parallel_window=args.parallel_window, grid=args.grid_size,
                           decoder=args.decoder, jacobi_window=args.jacobi_window, steps=args.steps,
                           schedule=args.schedule, guidance_schedule=args.guidance_schedule)
    elapsed = time.perf_counter() - t0
    check_pixels(images[0].width * args.scale, images[0].height * args.scale, len(images) if sheet else 1)
    if args.scale > 1:
        images = [im.resize((im.width * args.scale, im.height * args.scale), 0) for im in images]
    if sheet or len(images) == 1:
        images = [image_grid(images, columns=args.num if sheet and len(args.classes) > 1 else None)
                  if len(images) > 1 else images[0]]
    written = []
    for im, path in zip(images, paths):
        save_image(im, path, overwrite=args.overwrite)
        written.append(path)
    if not args.quiet:
        print(f"{len(images)} image(s) in {elapsed:.2f}s on {pipe.graph_providers['transformer']} -> "
              + (str(written[0]) if len(written) == 1 else f"{written[0]} ... {written[-1]}"), file=sys.stderr)
    return 0


def _check_output_pixels(pipe, args: argparse.Namespace, count: int) -> None:
    """The largest file this command will save, from the model's geometry, before generating."""
    try:
        h, w = pipe.grid_size(args.grid_size)
        down = pipe.manifest.spec.tokenizer.downsample
    except (AttributeError, KeyError, TypeError, ValueError):
        return  # checked again on the generated images, before upscaling
    check_pixels(w * down * args.scale, h * down * args.scale, count)


def cmd_info(args: argparse.Namespace) -> int:
    from tessera.runtime.backend import installed_flavours
    from tessera.runtime.manifest import FORMAT_VERSION, REEXPORT, load_manifest
    from tessera.runtime.pipeline import default_model_dir
    from tessera.runtime.providers import available_providers
    from tessera.runtime.session import ort_version

    m = load_manifest(args.model or default_model_dir(), verify=resolve_verify(args.verify, args.model))
    if args.json:
        print(json.dumps(m.spec.to_manifest(), indent=2))  # format 2, as the runtime read it
        return 0
    spec = m.spec  # the validated manifest (runtime/spec.py)
    if m.text_to_image:
        return _info_text_to_image(m)
    t, k = spec.transformer, spec.tokenizer
    h, w = spec.grid
    print(f"{spec.name}  ({m.root})")
    if spec.format_version < FORMAT_VERSION:
        print(f"  format       {spec.format_version}, read through its upgrade to {FORMAT_VERSION}; "
              f"write it as {FORMAT_VERSION} with: {REEXPORT.replace('DIR', str(m.root))}")
    if spec.description:
        print(f"  {spec.description}")
    print(f"  transformer  {t.n_layer} layers, dim {t.dim}, {t.n_head} heads, "
          f"{(t.parameters or 0) / 1e6:.1f}M params, vocab {t.vocab_size}")
    print(f"  tokenizer    {k.downsample}x downsampling, codebook {t.vocab_size}, "
          f"{(k.parameters or 0) / 1e6:.1f}M params")
    print(f"  image        {spec.image_size[1]}x{spec.image_size[0]} px from a {w}x{h} token grid, "
          f"{spec.image.channels} channel{'s' * (spec.image.channels > 1)}")
    names = spec.class_names
    shown = ", ".join(f"{i}={n}" for i, n in enumerate(names[:12])) + (" ..." if len(names) > 12 else "")
    print(f"  classes      {spec.num_classes}: {shown}")
    clash = m.ambiguous_names()
    if clash:
        i, name = clash[0]
        print(f"  note         {len(clash)} class name(s) are the ids of other classes (e.g. {i}={name}): "
              f"write id:{name.strip()} or name:{name.strip()} to say which is meant")
    print(f"  defaults     {json.dumps(spec.generation.to_dict())}")
    for g in spec.graphs:
        size = spec.files[g.file].bytes if g.file in spec.files else 0
        print(f"  {g.name:18s} {g.file:28s} {g.precision:5s} opset {g.opset}  {size / 1e6:7.2f} MB  "
              f"onnxruntime >= {g.min_onnxruntime}")

    def informational(section: str, *keys):  # parity and exported_by are not part of the contract
        value = spec.info.get(section)
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    logit, decoder = (informational("parity", "transformer", "max_abs_logit_error"),
                      informational("parity", "tokenizer", "decoder_max_abs_error"))
    if informational("parity", "transformer"):
        def show(v):
            return f"{v:.2e}" if isinstance(v, (int, float)) else str(v)

        print(f"  parity       transformer max |logit err| {show(logit)}; decoder {show(decoder)}")
    print(f"  exported by  tessera-ar {informational('exported_by', 'version')}")
    print(f"  here         onnxruntime {ort_version()} ({', '.join(installed_flavours()) or 'no flavour listed'}); "
          f"providers {', '.join(available_providers())}")
    return 0


def _info_text_to_image(m) -> int:
    """`tessera info` of a nitro-ar directory: the loop, the prompt's path, the graphs and their errors."""
    from tessera.runtime.providers import available_providers
    from tessera.runtime.session import ort_version

    spec = m.spec
    loop, text, dec = spec.loop, spec.text, spec.decoder
    print(f"{spec.name}  ({m.root})")
    if spec.description:
        print(f"  {spec.description}")
    iterations = (f"{loop.iterations} iterations" if loop.variant == "gan"
                  else "a global token, then one joint pass")
    print(f"  text-to-image  Nitro-AR {loop.variant}: {iterations}, {loop.head_steps} head steps, "
          f"guidance {loop.guidance_scale:g}")
    print(f"  image        {spec.image_size[1]}x{spec.image_size[0]} px from a {loop.grid}x{loop.grid} latent of "
          f"{loop.latent_channels} channels (decoder {dec.downsample}x)")
    print(f"  prompts      up to {text.max_tokens} tokens ({text.tokenizer}), text states of width {text.hidden}")
    errors = (spec.info.get("parity") or {}).get("quantized_vs_fp32") or {}
    for g in spec.graphs:
        size = sum(spec.files[f].bytes for f in (g.file, g.external_data) if f in spec.files)
        err = errors.get(g.name, {}).get("relative")
        note = f"  error vs fp32 {err:.1%} of its range" if isinstance(err, (int, float)) else ""
        print(f"  {g.name:18s} {g.file:24s} {g.precision:5s} {size / 1e6:8.1f} MB{note}")
    print(f"  here         onnxruntime {ort_version()}; providers {', '.join(available_providers())}")
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

    progress = StageProgress(enabled=not args.quiet)
    try:
        run(args, progress=progress)
    finally:
        progress.finish()
    return 0


def _export_parser(sub) -> None:
    from tessera.export.cli import add_arguments  # torch-free: only argument definitions

    p = sub.add_parser("export", help="convert PyTorch weights into a model directory (needs the 'export' extra)",
                       description="Export a transformer and tokenizer into ONNX graphs with a manifest, checking "
                                   "ONNX-vs-PyTorch parity. Needs: pip install 'tessera-ar[export]'.")
    add_arguments(p)
    p.set_defaults(func=cmd_export)


def cmd_viewer(args: argparse.Namespace) -> int:
    try:
        import tkinter  # noqa: F401
    except ImportError:
        raise ExtraNotInstalledError("`tessera viewer` needs Tkinter (e.g. apt install python3-tk)") from None
    from tessera.examples.tk_viewer import main as viewer_main

    return int(viewer_main(args.viewer_args) or 0)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `tessera` parser. `argv` (optional) lets `--help` show the real generation defaults of the
    `--model` it names (read from that manifest; the shipped model's otherwise)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    wants_help = any(a in ("-h", "--help") for a in argv)
    defaults = model_defaults(model_from_argv(argv)) if wants_help else None
    parser = argparse.ArgumentParser(
        prog="tessera", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Tessera: compact autoregressive image generation with ONNX Runtime. A transformer writes an "
                    "image as a grid of tokens, one token at a time; a VQ tokenizer turns the grid into pixels.")
    parser.add_argument("--version", action="version", version=f"tessera {__version__}",
                        help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    g = sub.add_parser("generate", help="generate images of the given classes (or prompts: text-to-image models)",
                       formatter_class=HelpFormatter,
                       description="Generate images of the given classes (ids or names; `tessera info` lists them), "
                                   "or of the given prompts with a text-to-image model (family nitro-ar). "
                                   "Sampling options left unset use the model's defaults from its manifest.")
    g.add_argument("classes", nargs="+", metavar="classes|prompts",
                   help="class ids or names, e.g. 7 or seven (id:7 / name:7 where a name is another class's id); "
                        "with a text-to-image --model, prompts, e.g. \"a red fox in the snow\"")
    g.add_argument("--model", metavar="DIR", help="model directory (default: the shipped model)")
    g.add_argument("-n", "--num", type=int, default=1,
                   help=f"images per class (at most {MAX_IMAGES} images per command)")
    g.add_argument("--seed", type=int, default=0, help="same seed, same images, on every provider")
    add_sampling_arguments(g, defaults)
    g.add_argument("-o", "--out", default="tessera.png",
                   help="output image file; several images become OUT-000-CLASS.png ... unless --sheet (class "
                        "names made file-name safe; an existing file is an error unless --overwrite)")
    add_overwrite_argument(g)
    g.add_argument("--sheet", action="store_true",
                   help="write all images into one contact sheet (a row per class) instead of one file each")
    g.add_argument("--grid", dest="grid_alias", action="store_true", help=argparse.SUPPRESS)  # deprecated: --sheet
    g.add_argument("--scale", type=int, default=1,
                   help=f"nearest-neighbour upscaling of the saved images, 1..{MAX_SCALE}")
    g.add_argument("--parallel-window", type=int, metavar="W",
                   help="decode image rows in parallel, each W tokens behind the row above (fewer steps; "
                        "default: off, one token per step)")
    g.add_argument("--decoder", choices=["sequential", "parallel", "jacobi", "anyorder", "arpg"],
                   help="decoding strategy: one token per step, ZipAR rows (--parallel-window), speculative "
                        "Jacobi (drafts verified in one step, the model's distribution kept), or anyorder (any-order "
                        "models only: --steps calls per image), or arpg (ARPG models only); default: arpg for an "
                        "ARPG model, anyorder for an any-order model, parallel with --parallel-window, jacobi with "
                        "--jacobi-window, else sequential)")
    g.add_argument("--steps", type=int, metavar="N",
                   help="any-order, ARPG and text-to-image (gan) models: transformer calls per image, 1..cells "
                        "(default: the model's, else 8)")
    g.add_argument("--head-steps", type=int, metavar="N",
                   help="text-to-image models: Euler steps of the flow head per decision (default: the model's)")
    add_arpg_arguments(g)
    g.add_argument("--jacobi-window", type=int, metavar="W",
                   help="speculative Jacobi decoding with W draft tokens per step (default with --decoder jacobi: 4)")
    g.add_argument("--grid-size", type=int, metavar="N",
                   help="generate an N x N token grid instead of the trained size (larger images; default: the "
                        "model's trained grid)")
    add_model_arguments(g)
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    add_preview_arguments(g)
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("info", help="show a model directory's manifest in readable form", formatter_class=HelpFormatter,
                       description="Show what a model directory holds: architecture, classes, generation defaults, "
                                   "graphs, parity, and the onnxruntime here.")
    i.add_argument("model", nargs="?", help="model directory (default: the shipped model)")
    i.add_argument("--json", action="store_true", help="print the raw manifest instead")
    add_verify_argument(i, "full")
    i.set_defaults(func=cmd_info)
    _export_parser(sub)
    add_edit_parser(sub, defaults)  # tessera edit inpaint|outpaint|continue (edit.py)
    add_bench_parser(sub)  # tessera bench DIR ... (bench.py; the tessera.bench package)
    v = sub.add_parser("viewer", help="open the example Tk viewer (python -m tessera.examples.tk_viewer)",
                       description="The example viewer: pick a class, press Generate, watch the image appear. "
                                   "Its options follow, e.g. `tessera viewer --model DIR --scale 8`; "
                                   "`tessera viewer -- --help` lists them.")
    v.add_argument("viewer_args", nargs=argparse.REMAINDER, metavar="...", help="the viewer's own options")
    v.set_defaults(func=cmd_viewer)
    return parser


def _format_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings as one `tessera: warning:` line (no source file, line number or code line)."""
    print(f"tessera: warning: {message}", file=file or sys.stderr)


@contextlib.contextmanager
def _quiet_output():
    """In the CLI only: warnings as one line each, and onnxruntime's own (ANSI-coloured) log lines
    limited to errors. A library caller keeps Python's and onnxruntime's defaults."""
    saved = warnings.showwarning
    warnings.showwarning = _format_warning
    ort = None
    try:
        import onnxruntime as ort

        ort.set_default_logger_severity(3)  # 0 verbose .. 2 warning (default), 3 error, 4 fatal
    except (ImportError, AttributeError):
        ort = None
    try:
        yield
    finally:
        warnings.showwarning = saved
        if ort is not None:
            ort.set_default_logger_severity(2)


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text


def main(argv: list[str] | None = None) -> int:
    """Run `tessera ARGS...`; returns the exit status (0 done, 1 error, 2 usage)."""
    argv = join_negative_values(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or a usage error (2): argparse has printed it
        return int(e.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with _quiet_output():
        if getattr(args, "grid_alias", False):
            warnings.warn("--grid is deprecated: use --sheet (one contact sheet); --grid-size is the token grid",
                          FutureWarning, stacklevel=1)
        try:
            return args.func(args)
        except TesseraError as e:
            print(f"tessera: error: {_one_line(e)}", file=sys.stderr)
            return 1
        except MemoryError:
            print("tessera: error: out of memory (ask for fewer or smaller images)", file=sys.stderr)
            return 1
        except Exception as e:  # export-stage errors outside TesseraError (CheckpointError) and file errors
            from_export = type(e).__module__.startswith("tessera.export")
            if from_export or isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)):
                print(f"tessera: error: {_one_line(e)}", file=sys.stderr)
                return 1
            raise


if __name__ == "__main__":
    sys.exit(main())
