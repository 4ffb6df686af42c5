"""Command-line options every command that opens a model shares: model, providers and their options."""
from __future__ import annotations

import argparse


def add_model_arguments(p: argparse.ArgumentParser, verify_default: str = "size") -> None:
    p.add_argument("--providers", default="auto",
                   help="auto (the best provider whose device is present), or comma-separated names in priority "
                        "order: cpu, cuda, tensorrt, rocm, migraphx, dml, openvino, coreml, qnn, webgpu")
    p.add_argument("--provider-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the first provider, e.g. device_id=1 (repeatable)")
    p.add_argument("--session-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an onnxruntime session option or config entry, e.g. intra_op_num_threads=2 or "
                        "session.intra_op.allow_spinning=0 (repeatable)")
    p.add_argument("--threads", type=int, help="CPU threads (default: onnxruntime's choice)")
    p.add_argument("--verify", choices=["full", "size", "none"], default=verify_default,
                   help="check model files against the manifest: sha256, size only, or not at all")


def pipeline_from_args(args: argparse.Namespace):
    """Open the pipeline that `add_model_arguments` options describe."""
    from .pipeline import Pipeline
    from .providers import resolve_providers
    from .session import parse_key_values

    providers = resolve_providers(args.providers.split(",") if args.providers != "auto" else "auto")
    provider_options = {providers[0]: parse_key_values(args.provider_option)} if args.provider_option else None
    session_options = parse_key_values(args.session_option) or None
    return Pipeline.load(args.model, providers=providers, threads=args.threads, verify=args.verify,
                         provider_options=provider_options, session_options=session_options)
