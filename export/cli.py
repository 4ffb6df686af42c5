"""`tessera export`: PyTorch weights (or random weights, or a model directory) -> a model directory."""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import fields
from pathlib import Path

from tessera.runtime.compat import OLDEST_TESTED

from .config import DEFAULT_OPSET, GPT_PRESETS, VQ_PRESETS, GPTConfig, VQConfig
from . import hub
from .errors import InvalidInputError

# This module stays importable without torch (it builds `tessera --help`); the heavy stage is
# imported inside run(). Every argument error is an InvalidInputError raised before any work (the
# `tessera` CLI turns it into one `tessera: error:` line); nothing here exits the process.

OPSETS = range(17, 21)  # the TorchScript exporter's range that the graphs here are built for


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("source (a model directory with weights, or configs + weights)")
    src.add_argument("--from", dest="from_dir", metavar="MODEL_DIR",
                     help="re-export a model directory that holds its PyTorch weights")
    src.add_argument("--gpt", metavar="PRESET|CONFIG.json",
                     help=f"transformer preset ({', '.join(GPT_PRESETS)}) or config file (default: the preset a "
                          "LlamaGen file name says, e.g. --gpt-weights c2i_XL_384.pt -> c2i_XL_384)")
    src.add_argument("--gpt-weights", metavar="FILE",
                     help="transformer weights (.safetensors or LlamaGen .pt), or hf://OWNER/REPO/FILE from the "
                          "Hugging Face Hub (its local cache; HF_HUB_OFFLINE=1 honoured; extra 'hub')")
    src.add_argument("--gpt-set", action="append", metavar="KEY=VALUE",
                     help="override a transformer setting, e.g. num_classes=10 (repeatable; VALUE is JSON or text)")
    src.add_argument("--vq", metavar="PRESET|CONFIG.json",
                     help=f"tokenizer preset ({', '.join(VQ_PRESETS)}) or config file (default: the preset a LlamaGen "
                          "file name says, else the one the transformer preset was trained on)")
    src.add_argument("--vq-weights", metavar="FILE",
                     help="tokenizer weights (.safetensors or LlamaGen .pt), or hf://OWNER/REPO/FILE from the "
                          "Hugging Face Hub (its local cache; HF_HUB_OFFLINE=1 honoured; extra 'hub')")
    src.add_argument("--vq-set", action="append", metavar="KEY=VALUE",
                     help="override a tokenizer setting, e.g. ch_mult=[1,2,2] (repeatable)")
    src.add_argument("--random-weights", action="store_true",
                     help="allow missing weight files: random weights (for speed tests and CI)")
    src.add_argument("--seed", type=int, default=0, help="seed for random weights (>= 0; default 0)")
    t2i = p.add_argument_group(
        "text-to-image (Nitro-AR; family nitro-ar)",
        "--nitro-weights Nitro-AR-512px-GAN.safetensors (or -Joint-GAN) with --text-encoder LLAMA_DIR (a local "
        "transformers Llama-3.2-1B folder with its tokenizer.json) and --dcae DCAE_DIR (a local diffusers "
        "AutoencoderDC folder, dc-ae-f32c32-sana-1.0-diffusers); the variant comes from the weights. "
        "--nitro-preset with --random-weights exports random weights (published sizes, or nitro-test-gan / "
        "nitro-test-joint for tests). --quant int8 quantizes every graph's MatMul weights but the decoder's.")
    t2i.add_argument("--nitro-weights", metavar="FILE", help="a Nitro-AR checkpoint (.safetensors)")
    t2i.add_argument("--nitro-preset", metavar="NAME",
                     help="Nitro-AR-512px-GAN, Nitro-AR-512px-Joint-GAN, nitro-test-gan or nitro-test-joint "
                          "(default: the one the --nitro-weights file name says, else the weights' shapes)")
    t2i.add_argument("--text-encoder", metavar="DIR", help="a local transformers Llama folder (with tokenizer.json)")
    t2i.add_argument("--dcae", metavar="DIR", help="a local diffusers AutoencoderDC folder (the latent decoder)")
    t2i.add_argument("--text-encoder-bits", type=int, choices=[4, 8], default=None,
                     help="quantize the text encoder's weights to 4 or 8 bits (default: as --quant)")
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="DIR",
                     help="model directory to write (created atomically; missing parent folders are created)")
    out.add_argument("--overwrite", action="store_true",
                     help="replace DIR if it is a Tessera model directory (anything else is never touched)")
    out.add_argument("--name", help="model name recorded in the manifest (default: the name of DIR)")
    out.add_argument("--classes", metavar="NAMES|FILE",
                     help="class names: comma-separated, or a file with one per line (default: the 1000 ImageNet "
                          "names for LlamaGen presets, else 0..N-1)")
    out.add_argument("--include-weights", action="store_true",
                     help="also store the PyTorch weights (safetensors) so the directory can be re-exported")
    out.add_argument("-q", "--quiet", action="store_true",
                     help="no stage progress (load, export, parity, quantize, write) on stderr")
    out.add_argument("--extra", action="append", default=[], metavar="FILE",
                     help="copy a file into the directory (model card, samples); checksummed")
    out.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                     help=f"ONNX opset of the graphs, {OPSETS.start}..{OPSETS.stop - 1} (default {DEFAULT_OPSET})")
    out.add_argument("--graph", choices=["fused", "portable"], default=None,
                     help="transformer graph: 'fused' uses onnxruntime's fused kernels (GroupQueryAttention, "
                          "in-place KV cache; fastest), 'portable' only standard ONNX ops (any ONNX runtime). "
                          "Default fused; with --from, the source directory's")
    out.add_argument("--target-onnxruntime", metavar="VERSION", default=None,
                     help="the oldest onnxruntime the model must load on (the GPU/NPU flavours lag the CPU "
                          "package); the fused graph takes the newest operator form that version accepts. "
                          f"Default {OLDEST_TESTED}: every tested build; with --from, the source's fused form. "
                          "1.32+ runs a call of several tokens over a past at several rows in one run")
    q = p.add_argument_group(
        "precision (quantized variants)",
        "--quant fp32|fp16|int8|int4 writes one model directory of that precision at --out. "
        "--quant all writes four sibling directories OUT-fp32, OUT-fp16, OUT-int8, OUT-int4 (the fp32 "
        "graphs are exported and checked once). fp16: float16 graphs, KV cache in float16, logits float32 "
        "(a GPU variant: slow on the CPU provider). int8: 8-bit weights of the transformer's MatMuls "
        "(MatMulNBits, int8 compute) or --int8-method dynamic (MatMulInteger). int4: 4-bit weight-only "
        "MatMulNBits. int8/int4 keep the tokenizer fp32. Each variant's parity vs the PyTorch fp32 model "
        "(max logit error, argmax agreement) is measured, bounded and recorded in its manifest.")
    q.add_argument("--quant", default="fp32", choices=["fp32", "fp16", "int8", "int4", "all"],
                   help="precision of the exported graphs (default fp32); 'all' = OUT-fp32 ... OUT-int4")
    q.add_argument("--int4-block-size", type=int, default=32, metavar="N",
                   help="int4: weights per quantization block (power of two >= 16; default 32)")
    q.add_argument("--int4-accuracy-level", type=int, default=4, choices=[0, 1, 2, 3, 4],
                   help="int4: MatMulNBits compute type: 4 = int8 compute (default; 2.8x faster decode on "
                        "this CPU, within 0.2 points of fp32 accuracy on the default model), 0 = fp32 "
                        "compute (for models whose outlier weights flip argmax at level 4)")
    q.add_argument("--int8-method", default="weight-only", choices=["weight-only", "dynamic"],
                   help="int8: 'weight-only' 8-bit MatMulNBits, block 32 (default: half the error) or "
                        "'dynamic' MatMulInteger with uint8 weights and dynamically quantized activations")
    q.add_argument("--tokenizer-quant", choices=["fp32", "fp16", "int8"], default=None,
                   help="the tokenizer decoder's own precision, whatever --quant is (default: fp16 with --quant "
                        "fp16, else fp32). int8: static QDQ Convs (4x smaller, faster on CPU); fp16: a GPU "
                        "variant. Its PSNR against the fp32 decoder's image is measured on a fixed probe, bounded "
                        "(--tokenizer-min-psnr) and recorded in the manifest. The encoder (editing) stays as --quant")
    q.add_argument("--tokenizer-min-psnr", type=float, default=None, metavar="DB",
                   help="lowest PSNR in dB the decoder variant may have against fp32 (default 30 for int8, "
                        "40 for fp16); below it the export fails")
    q.add_argument("--external-data-threshold", type=float, default=None, metavar="BYTES",
                   help="keep a graph's tensors in GRAPH.onnx.data when they pass BYTES "
                        "(default $TESSERA_EXTERNAL_DATA_THRESHOLD or 16 MiB: onnxruntime memory-maps the file, "
                        "which lowers peak memory; protobuf's 2 GB limit forces it above that)")
    gen = p.add_argument_group("generation defaults recorded in the manifest")
    gen.add_argument("--default-guidance", type=float, metavar="G",
                     help="classifier-free guidance scale, >= 0 (<= 1 turns it off; default: the source "
                          "directory's with --from, else the preset's (LlamaGen presets: LlamaGen's sample_c2i.py "
                          "defaults, guidance 4.0, top-k 2000, temperature 1.0, top-p 1.0), else the runtime's 1.0)")
    gen.add_argument("--default-temperature", type=float, metavar="T",
                     help="sampling temperature, >= 0 (0 = greedy; default: as --default-guidance, else 1.0)")
    gen.add_argument("--default-top-k", type=int, metavar="K",
                     help="sample among the K likeliest tokens, >= 0 (0 = all; default: as above, else 0)")
    gen.add_argument("--default-top-p", type=float, metavar="P",
                     help="nucleus sampling mass in (0, 1] (1 = off; default: as above, else 1.0)")
    gen.add_argument("--default-steps", type=int, metavar="N",
                     help="transformer calls per image of the few-step decoders (any-order, ARPG; default: the "
                          "preset's, ARPG presets 64, else the decoder's own)")
    gen.add_argument("--default-schedule", choices=("arccos", "cosine"),
                     help="ARPG: cells decided per step (default: the preset's, arccos)")
    gen.add_argument("--default-guidance-schedule", choices=("linear", "constant"),
                     help="ARPG: guidance per step, linear from 1 to G with the share decided, or constant G "
                          "(default: the preset's, linear)")


def _overrides(items: list[str] | None, cls, flag: str) -> dict:
    """--gpt-set/--vq-set KEY=VALUE items -> {key: value}, each key a field of `cls` and each value of
    the field's kind (VALUE is read as JSON, else kept as text)."""
    kinds = {f.name: f.type for f in fields(cls)}
    out = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidInputError(f"{flag} {item!r} must look like KEY=VALUE, e.g. {flag} {next(iter(kinds))}=...")
        if key not in kinds:
            raise InvalidInputError(f"{flag}: unknown setting {key!r}; known: {', '.join(sorted(kinds))}")
        try:
            value = json.loads(text)
        except ValueError:
            value = text.strip()
        kind = str(kinds[key])
        numeric = kind in ("int", "float") and isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind in ("int", "float") and not numeric or kind == "int" and isinstance(value, float):
            raise InvalidInputError(f"{flag} {key}={text}: {key} must be {'an integer' if kind == 'int' else 'a number'}")
        if kind == "int" and value < 1 or kind == "float" and not (math.isfinite(value) and value >= 0):
            raise InvalidInputError(f"{flag} {key}={text}: {key} must be {'>= 1' if kind == 'int' else 'finite, >= 0'}")
        out[key] = value
    return out


def _config(spec: str, overrides: dict, cls, presets: dict, flag: str):
    """A preset name or a JSON config file (`flag`), with overrides; every problem an InvalidInputError."""
    path = Path(spec)
    try:
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, ValueError) as e:
                raise InvalidInputError(f"{flag} {spec}: not a readable JSON config ({e})") from None
            if not isinstance(data, dict):
                raise InvalidInputError(f"{flag} {spec}: a config file holds one JSON object")
            return cls.from_dict({**data, **overrides})
        if spec not in presets:
            raise InvalidInputError(f"{flag} {spec!r} is neither a preset ({', '.join(presets)}) nor a config file")
        return cls(**{**presets[spec], **overrides})
    except (TypeError, ValueError) as e:
        if isinstance(e, InvalidInputError):
            raise
        raise InvalidInputError(f"{flag} {spec}: {e}") from None


def validate_arguments(args: argparse.Namespace) -> None:
    """Every check that needs neither torch nor a file's contents, before any work."""
    if args.from_dir and (args.gpt or args.vq or args.gpt_weights or args.vq_weights or args.gpt_set or args.vq_set):
        raise InvalidInputError("--from takes its configs and weights from MODEL_DIR; drop --gpt, --vq, "
                                "--gpt-weights, --vq-weights, --gpt-set and --vq-set")
    if not args.from_dir:
        if not (args.gpt or args.gpt_weights):  # no --vq: resolve() takes it from a file name or the preset
            raise InvalidInputError("give --from MODEL_DIR, or both --gpt and --vq (they may be left out for "
                                    "LlamaGen's files, whose names say the preset: --gpt-weights c2i_XL_384.pt "
                                    "--vq-weights vq_ds16_c2i.pt)")
        missing = [f for f, w in (("--gpt-weights", args.gpt_weights), ("--vq-weights", args.vq_weights)) if not w]
        if missing and not args.random_weights:
            raise InvalidInputError(f"{' and '.join(missing)} not given; pass the weight files, or --random-weights "
                                    "to export random weights on purpose")
        for flag, path in (("--gpt-weights", args.gpt_weights), ("--vq-weights", args.vq_weights)):
            if hub.is_hub(path):
                hub.parse(path, flag)  # the form only; the file is fetched by run()
            elif path and not Path(path).is_file():
                raise InvalidInputError(f"{flag} {path} is not a file")
    if args.seed < 0:
        raise InvalidInputError(f"--seed must be >= 0, got {args.seed}")
    if args.opset not in OPSETS:
        raise InvalidInputError(f"--opset must be {OPSETS.start}..{OPSETS.stop - 1}, got {args.opset}")
    t = args.external_data_threshold
    if t is not None and not (math.isfinite(t) and t >= 0):
        raise InvalidInputError(f"--external-data-threshold must be a number of bytes >= 0, got {t}")
    if args.classes is not None and Path(args.classes).is_dir():
        raise InvalidInputError(f"--classes {args.classes} is a directory; give names or a file with one per line")
    for flag, v, ok, what in (
            ("--default-guidance", args.default_guidance, lambda v: math.isfinite(v) and v >= 0, ">= 0"),
            ("--default-temperature", args.default_temperature, lambda v: math.isfinite(v) and v >= 0, ">= 0"),
            ("--default-top-k", args.default_top_k, lambda v: v >= 0, ">= 0"),
            ("--default-top-p", args.default_top_p, lambda v: 0 < v <= 1, "in (0, 1]"),
            ("--default-steps", args.default_steps, lambda v: v >= 1, ">= 1")):
        if v is not None and not ok(v):
            raise InvalidInputError(f"{flag} must be {what}, got {v}")
    for f in args.extra:
        if not Path(f).is_file():
            raise InvalidInputError(f"--extra {f} is not a file")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out} is a file; give a directory to create")


def _class_names(arg: str | None, n: int) -> list[str]:
    """--classes: comma-separated names or a file with one per line; exactly `n`, distinct."""
    if arg is None:
        return [str(i) for i in range(n)]
    path = Path(arg)
    try:
        names = path.read_text(encoding="utf-8").splitlines() if path.is_file() else arg.split(",")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"--classes {arg}: cannot read the file ({e})") from None
    names = [s.strip() for s in names if s.strip()]
    source = f"the file {arg}" if path.is_file() else "--classes"
    if len(names) != n:
        raise InvalidInputError(f"{source} gives {len(names)} class name{'s' * (len(names) != 1)}; the transformer "
                                f"has {n} classes (one name each, comma-separated or one per line)")
    dup = sorted({s for s in names if names.count(s) > 1})
    if dup:
        raise InvalidInputError(f"{source} names {', '.join(map(repr, dup))} more than once; class names must differ")
    bad = [s for s in names if any(ord(c) < 32 or ord(c) == 127 for c in s)]
    if bad:
        raise InvalidInputError(f"{source}: class name {bad[0]!r} holds a control character")
    return names


def carried_extras(src: Path, spec, replaced: set[str]) -> list[Path]:
    """Files a re-export carries over from its source directory (`spec`: its ModelSpec): model card,
    samples ... (not the graphs, weights or their data files, which are written anew), unless a new
    --extra replaces them. Only plain file names inside `src` (the runtime's check, made again here
    as the files are copied): a hostile manifest copies nothing."""
    from tessera.runtime.manifest import file_inside

    made = {g.file for g in spec.graphs} | {g.external_data for g in spec.graphs} | set(spec.weights.values())
    paths = [file_inside(src, name, f"files[{json.dumps(name)}]") for name in spec.files]
    return [path for path in paths if path.name not in made and path.name not in replaced]


def run(args: argparse.Namespace, progress=None) -> Path:
    """`progress`: an optional stage callback (export/progress.py); this prints only the summary."""
    from tessera.runtime.manifest import MANIFEST_NAME

    if getattr(args, "nitro_weights", None) or getattr(args, "nitro_preset", None):
        return run_nitro(args, progress)
    validate_arguments(args)
    quant = _quant_options(args)
    for attr, flag in (("gpt_weights", "--gpt-weights"), ("vq_weights", "--vq-weights")):
        if hub.is_hub(getattr(args, attr)):  # hf://OWNER/REPO/FILE -> the cached file (same file name)
            setattr(args, attr, hub.download(getattr(args, attr), flag))
    if not args.from_dir:  # configs before torch: a typo costs no import time
        from .presets import check_graph, resolve

        args.graph = args.graph or "fused"
        args.target_onnxruntime = args.target_onnxruntime or OLDEST_TESTED

        # presets from --gpt/--vq or the LlamaGen file names; name, grid and image size checked
        chosen = resolve(args.gpt, args.gpt_weights, _overrides(args.gpt_set, GPTConfig, "--gpt-set"),
                         args.vq, args.vq_weights, _overrides(args.vq_set, VQConfig, "--vq-set"), _config)
        gcfg, vcfg = chosen.gpt, chosen.vq
        check_graph(gcfg, args.graph, chosen.gpt_preset)
        preset_names = chosen.class_names()  # ImageNet presets: the 1000 names (export/data)
        names = preset_names if args.classes is None and preset_names else _class_names(args.classes, gcfg.num_classes)
        _check_shapes(args, chosen)

    from .build import build_gpt, build_vq, load_model_dir
    from .model_dir import ExportSpec, write_model_dir, write_model_dirs
    from .progress import stage

    _check_destination(args)  # before the first stage: a taken --out or a bad target is the only line printed
    with stage(progress, "load", "random weights" if not (args.from_dir or args.gpt_weights or args.vq_weights)
               else ""):
        if args.from_dir:
            gpt, vq, old = load_model_dir(args.from_dir)
            _carry_graph_form(args, old)
        else:
            gpt = build_gpt(gcfg, args.gpt_weights, args.seed)
            vq = build_vq(vcfg, args.vq_weights, args.seed)
    if args.from_dir:
        names = _class_names(args.classes, gpt.cfg.num_classes) if args.classes else old.class_names
        defaults = old.generation.to_dict()
        keep_weights = bool(old.weights)  # a re-export keeps what made it re-exportable
        name = args.name or old.name or Path(args.out).name
        description = old.description
        extras = carried_extras(Path(args.from_dir), old, {Path(f).name for f in args.extra})
    else:
        defaults = chosen.generation_defaults()  # LlamaGen's sampling defaults for its presets
        keep_weights = False
        extras = []
        name = args.name or Path(args.out).name
        description = ""
    for key, val in (("guidance_scale", args.default_guidance), ("temperature", args.default_temperature),
                     ("top_k", args.default_top_k), ("top_p", args.default_top_p), ("steps", args.default_steps),
                     ("schedule", args.default_schedule), ("guidance_schedule", args.default_guidance_schedule)):
        if val is not None:
            defaults[key] = val
    spec = ExportSpec(name=name, description=description, class_names=names, generation_defaults=defaults,
                      opset=args.opset,
                      include_weights=args.include_weights or keep_weights,
                      extra_files=extras + [Path(f) for f in args.extra],
                      overwrite=args.overwrite, graph=args.graph, target_onnxruntime=args.target_onnxruntime,
                      release_weights=True,  # the command is done with its models once they are exported
                      external_data_threshold=None if args.external_data_threshold is None
                      else int(args.external_data_threshold))
    t0 = time.perf_counter()
    if args.quant == "all":
        outs = write_model_dirs(gpt, vq, args.out, spec, quant=quant, progress=progress)
    else:
        outs = [write_model_dir(gpt, vq, args.out, spec, args.quant, quant, progress=progress)]
    for out in outs:
        _report(out, MANIFEST_NAME)
    print(f"exported {len(outs)} model director{'y' if len(outs) == 1 else 'ies'} in "
          f"{time.perf_counter() - t0:.1f}s")
    return outs[0] if len(outs) == 1 else Path(args.out)


def _carry_graph_form(args: argparse.Namespace, old) -> None:
    """--from without --graph / --target-onnxruntime: the re-export keeps the source's graph kind and fused
    operator form (before, a 1.32-form directory re-exported without the flag came back in the 1.22 form)."""
    graph = old.graph("transformer")
    args.graph = args.graph or (graph.kind if graph.kind in ("fused", "portable") else "fused")
    if not args.target_onnxruntime:
        args.target_onnxruntime = graph.min_onnxruntime if graph.kind == "fused" else OLDEST_TESTED


def _check_destination(args: argparse.Namespace) -> None:
    """What write_model_dir(s) refuses before any work, checked before the models are loaded."""
    from tessera.runtime.compat import fused_form

    from .model_dir import PRECISIONS, prepare_output, variant_dirs

    if args.target_onnxruntime:  # with --from and none given: the source's form, read once it is loaded
        fused_form(args.target_onnxruntime)  # an InvalidInputError for a bad or too old version
    outs = variant_dirs(args.out, PRECISIONS).values() if args.quant == "all" else [Path(args.out)]
    for out in outs:
        prepare_output(out, args.overwrite)


def _check_shapes(args: argparse.Namespace, chosen) -> None:
    """The configs' dimensions against the weight files' tensor shapes (read without the weights),
    before any model is built: one error naming both sides."""
    from .presets import check_gpt_shapes, check_vq_shapes, checkpoint_shapes

    for flag, path, check, cfg, preset in (
            ("--gpt-weights", args.gpt_weights, check_gpt_shapes, chosen.gpt, chosen.gpt_preset or args.gpt),
            ("--vq-weights", args.vq_weights, check_vq_shapes, chosen.vq, chosen.vq_preset or args.vq)):
        if path and Path(path).is_file():
            check(cfg, checkpoint_shapes(path), f"{flag} {Path(path).name}", preset)


def _quant_options(args: argparse.Namespace):
    from .quantize import QuantOptions  # onnx, not torch

    quant = QuantOptions(int4_block_size=args.int4_block_size, int4_accuracy_level=args.int4_accuracy_level,
                         int8_method=args.int8_method, tokenizer=getattr(args, "tokenizer_quant", None),
                         tokenizer_min_psnr=getattr(args, "tokenizer_min_psnr", None))
    try:
        quant.validate()
    except ValueError as e:
        raise InvalidInputError(f"--quant {args.quant}: {e}") from None
    if quant.tokenizer_min_psnr is not None and quant.tokenizer in (None, "fp32"):
        raise InvalidInputError("--tokenizer-min-psnr bounds a decoder variant: give --tokenizer-quant fp16 or int8")
    if quant.tokenizer is not None and args.quant == "all":
        raise InvalidInputError("--tokenizer-quant applies to one variant: export the variants one by one "
                                "(--quant int4 --tokenizer-quant int8 ...) instead of --quant all")
    return quant


def _report(out: Path, manifest_name: str) -> None:
    manifest = json.loads((out / manifest_name).read_text())
    p = manifest["parity"]
    t = p["transformer"]
    precision = p.get("precision", "fp32")
    print(f"exported {out} ({precision}: " + ", ".join(f"{n} {g['precision']}/{g['method']}"
                                                       for n, g in manifest["graphs"].items()) + ")")
    agree = f", argmax agreement {t['argmax_agreement']:.1%}" if "argmax_agreement" in t else ""
    print(f"  parity: transformer max |logit err| {t['max_abs_logit_error']:.2e}{agree}, "
          f"decoder max err {p['tokenizer']['decoder_max_abs_error']:.2e}, "
          f"encoder code agreement {p['tokenizer']['encoder_code_agreement']:.1%}")
    decoder = manifest["graphs"]["tokenizer_decoder"]
    if decoder.get("psnr_db") is not None:
        print(f"  tokenizer decoder {decoder['precision']}: PSNR {decoder['psnr_db']:.1f} dB against fp32 on the probe "
              f"(bound {decoder['min_psnr_db']:g} dB)")
    for fname, meta in manifest["files"].items():
        print(f"  {fname:28s} {meta['bytes'] / 1e6:8.2f} MB")


def run_nitro(args: argparse.Namespace, progress=None) -> Path:
    """`tessera export --nitro-weights FILE --text-encoder DIR --dcae DIR --out OUT` (export/nitro_export.py)."""
    from .nitro import NITRO_PRESETS, NITRO_TEST_PRESETS, nitro_preset_for_file

    presets = {**NITRO_PRESETS, **NITRO_TEST_PRESETS}
    if args.gpt or args.gpt_weights or args.vq or args.vq_weights or args.from_dir:
        raise InvalidInputError("--nitro-weights / --nitro-preset export a text-to-image model; drop --gpt, --vq, "
                                "--gpt-weights, --vq-weights and --from")
    if args.quant not in ("fp32", "int8"):
        raise InvalidInputError(f"a nitro-ar model exports as --quant fp32 or int8, got {args.quant}")
    if args.nitro_preset is not None and args.nitro_preset not in presets:
        raise InvalidInputError(f"--nitro-preset must be one of {', '.join(presets)}, got {args.nitro_preset}")
    named = nitro_preset_for_file(args.nitro_weights)
    if args.nitro_weights and not Path(args.nitro_weights).is_file():
        raise InvalidInputError(f"--nitro-weights {args.nitro_weights} is not a file")
    missing = [f for f, v in (("--nitro-weights", args.nitro_weights), ("--text-encoder", args.text_encoder),
                              ("--dcae", args.dcae)) if not v]
    if missing and not args.random_weights:
        raise InvalidInputError(f"{' and '.join(missing)} not given; pass them, or --random-weights to export "
                                "random weights on purpose")
    for flag, d in (("--text-encoder", args.text_encoder), ("--dcae", args.dcae)):
        if d and not Path(d).is_dir():
            raise InvalidInputError(f"{flag} {d} is not a directory (a local model folder)")
    if args.text_encoder and not (Path(args.text_encoder) / "tokenizer.json").is_file():
        raise InvalidInputError(f"--text-encoder {args.text_encoder} has no tokenizer.json")
    _check_destination(args)

    from .checkpoints import read_state_dict
    from .nitro import infer_config, load_nitro, random_nitro
    from .nitro_export import (DCAE_LATENT_SCALE, NitroParts, TinyLatentDecoder, load_dcae_decoder, load_llama,
                               random_dcae, random_parts, write_nitro_dir)
    from .progress import stage

    t0 = time.perf_counter()
    with stage(progress, "load", "" if args.nitro_weights else "random weights"):
        if args.nitro_weights:
            state = read_state_dict(args.nitro_weights)
            cfg = infer_config(state)
            preset = args.nitro_preset or named
            if preset is not None and presets[preset].variant != cfg.variant:
                raise InvalidInputError(f"{args.nitro_weights} holds a {cfg.variant} model, but "
                                        f"{'--nitro-preset' if args.nitro_preset else 'its file name'} says {preset} "
                                        f"({presets[preset].variant})")
            if preset is not None:  # the preset fixes what shapes do not say (grid, prompt length, head heads)
                cfg = presets[preset]
            model = load_nitro(state, cfg)
            del state
        else:
            preset = args.nitro_preset or "nitro-test-gan"
            model = random_nitro(presets[preset], seed=args.seed)
        if args.text_encoder is None or args.dcae is None:
            test = random_parts(preset if preset in NITRO_TEST_PRESETS else
                                ("nitro-test-joint" if model.cfg.variant == "joint_gan" else "nitro-test-gan"),
                                seed=args.seed)
        if args.text_encoder:
            from tokenizers import Tokenizer

            llama = load_llama(args.text_encoder)
            tokenizer = Tokenizer.from_file(str(Path(args.text_encoder) / "tokenizer.json"))
            pad = getattr(llama.config, "eos_token_id", None)
            pad = pad[0] if isinstance(pad, list) else pad
            if pad is None:
                raise InvalidInputError(f"--text-encoder {args.text_encoder}: its config names no eos_token_id "
                                        "(the padding id)")
        else:
            llama, tokenizer, pad = _random_llama(model.cfg.text_dim, args.seed), test.tokenizer, test.pad_token_id
        if args.dcae:
            decoder, downsample, scale = load_dcae_decoder(args.dcae), 32, DCAE_LATENT_SCALE
        elif model.cfg.grid * 32 == 512:  # a published size: a random DC-AE of the published shape
            decoder, downsample, scale = random_dcae(args.seed), 32, DCAE_LATENT_SCALE
        else:
            decoder, downsample, scale = TinyLatentDecoder(model.cfg.latent_channels, 8, seed=args.seed), 8, \
                DCAE_LATENT_SCALE
    parts = NitroParts(model=model, text_encoder=llama, tokenizer=tokenizer, pad_token_id=int(pad), decoder=decoder,
                       downsample=downsample, latent_scale=scale, name=args.name or Path(args.out).name,
                       description=f"Nitro-AR {model.cfg.variant}" + ("" if args.nitro_weights else ", random weights"))
    del model, llama, decoder  # `parts` holds the only references: the export releases each when done
    if args.text_encoder is None or args.dcae is None:
        del test
    with stage(progress, "export", args.quant):
        write_nitro_dir(parts, args.out, precision=args.quant, text_encoder_bits=args.text_encoder_bits,
                        overwrite=args.overwrite, release=True)
    print(f"exported 1 model directory in {time.perf_counter() - t0:.1f}s: {args.out}")
    return Path(args.out)


def _random_llama(text_dim: int, seed: int):
    """A random text encoder of the text width: Llama-3.2-1B's shape for the published width (2048), else
    the small test encoder."""
    from .nitro_export import tiny_llama

    if text_dim != 2048:
        return tiny_llama(text_dim, 64, seed=seed)
    import torch
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                      rope_theta=500000.0, tie_word_embeddings=True, head_dim=64)
    return LlamaModel(cfg).eval()
