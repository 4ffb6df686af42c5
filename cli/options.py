"""Command-line options every command that opens a model shares: model, providers and their options,
sampling options with the model's real defaults in their help, and the help formatter."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tessera.runtime.spec import GenerationDefaults

VERIFY_CHOICES = ["auto", "full", "size", "none"]
FULL_VERIFY_BYTES = 256 * 2**20  # --verify auto: sha256 of every file below this total (~18 ms for the shipped model)
# What the runtime uses when a manifest names no default: the contract's own (`GenerationDefaults`).
RUNTIME_DEFAULTS = GenerationDefaults().to_dict()


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only when it says something: never "(default: None)" or "(default: False)",
    and not twice when the help text already names it."""

    def _get_help_string(self, action):
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == [] \
            or action.default == argparse.SUPPRESS
        if unset or "default" in text or "%(default)" in text:
            return text
        return super()._get_help_string(action)


def _manifest_file(model: str | None) -> Path:
    if model:
        return Path(model) / "tessera.json"
    from tessera.models import default_model_dir

    return default_model_dir() / "tessera.json"


def model_defaults(model: str | None) -> tuple[dict, str] | None:
    """The generation defaults that `--model` (or the shipped model) would use, and the model's name:
    read from its manifest without loading anything (None when it cannot be read: help stays generic)."""
    try:
        data = json.loads(_manifest_file(model).read_text(encoding="utf-8"))
        found = data.get("generation_defaults") or {}
        values = {k: found.get(k, v) for k, v in RUNTIME_DEFAULTS.items()}
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values()):
            return None
        return values, str(data.get("name") or Path(model or "the shipped model").name)[:40]
    except (OSError, ValueError, AttributeError):
        return None


def model_from_argv(argv: list[str]) -> str | None:
    """`--model DIR` from a command line, before parsing (for help texts)."""
    for i, a in enumerate(argv):
        if a == "--model" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--model="):
            return a.split("=", 1)[1]
    return None


def add_sampling_arguments(p: argparse.ArgumentParser, defaults: tuple[dict, str] | None,
                           guidance_note: str = "") -> None:
    """--guidance, --temperature, --top-k, --top-p: unset means the model's default (its manifest's
    generation_defaults), which the help shows when it can read the manifest of the selected --model."""
    def default(key: str) -> str:
        if defaults is None:
            example = "; e.g. guidance 3.0 for the shipped model" if key == "guidance_scale" else ""
            return f"default: the model's{example}"
        values, name = defaults
        return f"default: the model's, {values[key]:g} for {name}"

    p.add_argument("--guidance", type=float, metavar="G",
                   help=f"classifier-free guidance scale, >= 0 (<= 1 turns it off{guidance_note}; "
                        f"{default('guidance_scale')})")
    p.add_argument("--temperature", type=float, metavar="T",
                   help=f"sampling temperature, >= 0 (0 = greedy; {default('temperature')})")
    p.add_argument("--top-k", type=int, metavar="K",
                   help=f"sample among the K likeliest tokens, >= 0 (0 = all; {default('top_k')})")
    p.add_argument("--top-p", type=float, metavar="P",
                   help=f"nucleus sampling mass, in (0, 1] (1 = off; {default('top_p')})")


def resolve_verify(verify: str, model: str | None) -> str:
    """--verify auto: "full" (sha256 of every file) when the manifest's files total under
    FULL_VERIFY_BYTES, else "size". Anything unreadable gets "full": the loader then explains it."""
    if verify != "auto":
        return verify
    try:
        files = json.loads(_manifest_file(model).read_text(encoding="utf-8"))["files"]
        total = sum(int(meta["bytes"]) for meta in files.values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "full"
    return "full" if total < FULL_VERIFY_BYTES else "size"


def add_model_arguments(p: argparse.ArgumentParser, verify_default: str = "auto") -> None:
    p.add_argument("--providers", default="auto",
                   help="auto (the best provider whose device is present), or comma-separated names in priority "
                        "order: cpu, cuda, tensorrt, rocm, migraphx, dml, openvino, coreml, qnn, webgpu")
    p.add_argument("--provider-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the first provider, e.g. device_id=1 (repeatable)")
    p.add_argument("--session-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an onnxruntime session option or config entry, e.g. intra_op_num_threads=2 or "
                        "session.intra_op.allow_spinning=0 (repeatable)")
    p.add_argument("--threads", type=int, help="CPU threads per graph, 1..1024 (default: onnxruntime's choice)")
    p.add_argument("--low-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="one graph in memory at a time: the transformer is closed before the images are decoded "
                        "(a lower peak for memory-limited devices; see benchmarks/results/memory.md). Default: on "
                        "for `generate` without live previews (one generation: it costs nothing), else "
                        "$TESSERA_LOW_MEMORY")
    add_verify_argument(p, verify_default)


def add_verify_argument(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--verify", choices=VERIFY_CHOICES, default=default,
                   help="check the model's files against its manifest: 'full' sha256, 'size' only, 'none'; "
                        f"'auto' = full when the files total under {FULL_VERIFY_BYTES >> 20} MB (the shipped model: "
                        f"~20 ms), size otherwise (default: {default})")


def pipeline_from_args(args: argparse.Namespace, low_memory_default: bool | None = None):
    """Open the pipeline that `add_model_arguments` options describe. `low_memory_default`: the
    command's choice when neither --low-memory nor --no-low-memory is given (None: the environment's)."""
    from tessera.runtime.pipeline import Pipeline
    from tessera.runtime.providers import resolve_providers
    from tessera.runtime.session import parse_key_values

    providers = resolve_providers(args.providers.split(",") if args.providers != "auto" else "auto")
    provider_options = {providers[0]: parse_key_values(args.provider_option)} if args.provider_option else None
    session_options = parse_key_values(args.session_option) or None
    verify = resolve_verify(args.verify, args.model)
    return Pipeline.load(args.model, providers=providers, threads=args.threads, verify=verify,
                         provider_options=provider_options, session_options=session_options,
                         low_memory=low_memory_default if getattr(args, "low_memory", None) is None else args.low_memory)


def add_arpg_arguments(p) -> None:
    """ARPG models' schedules (the arpg decoder; runtime/arpg.py)."""
    p.add_argument("--schedule", choices=("arccos", "cosine"),
                   help="ARPG models: cells decided per step (default: the model's, else arccos)")
    p.add_argument("--guidance-schedule", choices=("linear", "constant"),
                   help="ARPG models: guidance grows linearly from 1 to --guidance with the share of the image "
                        "decided, or stays constant (default: the model's, else linear)")

