"""Write a complete model directory (graphs, manifest, weights) atomically, or nothing at all."""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import onnx
import torch
from safetensors.torch import save_file

from tessera.runtime.manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, sha256_file

from . import parity
from .config import GPTConfig, VQConfig
from .onnx_export import DEFAULT_OPSET, export_tokenizer, export_transformer, transformer_io_names
from .quantize import PRECISIONS, QuantOptions, data_file, finalize_graph, quantize_graphs
from .transformer import GPT
from .vq import VQModel

GRAPH_FILES = {"transformer": "transformer.onnx", "tokenizer_decoder": "tokenizer_decoder.onnx",
               "tokenizer_encoder": "tokenizer_encoder.onnx"}
WEIGHT_FILES = {"transformer": "gpt.safetensors", "tokenizer": "vq.safetensors"}


class ExportError(RuntimeError):
    """The export could not produce a complete, correct model directory."""


@dataclass
class ExportSpec:
    name: str
    class_names: list[str]
    generation_defaults: dict = field(default_factory=dict)
    description: str = ""
    opset: int = DEFAULT_OPSET
    include_weights: bool = False
    extra_files: list[Path] = field(default_factory=list)  # model card, sample sheets ...
    overwrite: bool = False
    graph: str = "fused"  # transformer graph kind: "fused" (onnxruntime kernels) or "portable" (standard ops)
    # Graphs whose tensors pass this many bytes keep them in `<graph>.onnx.data` (None: the
    # $TESSERA_EXTERNAL_DATA_THRESHOLD environment variable, else 16 MiB: memory-mapped weights).
    external_data_threshold: int | None = None


def package_version() -> str:
    try:
        return metadata.version("tessera-ar")
    except metadata.PackageNotFoundError:
        return "unknown"


def check_compatible(gpt: GPTConfig, vq: VQConfig, class_names: list[str]) -> None:
    problems = []
    if gpt.vocab_size != vq.codebook_size:
        problems.append(f"transformer vocab {gpt.vocab_size} != tokenizer codebook {vq.codebook_size}")
    if gpt.grid != vq.grid:
        problems.append(f"transformer grid {gpt.grid} != tokenizer grid {vq.grid} "
                        f"({vq.image_size}px / {vq.downsample})")
    if len(class_names) != gpt.num_classes:
        problems.append(f"{len(class_names)} class names for {gpt.num_classes} classes")
    if problems:
        raise ExportError("transformer and tokenizer do not fit together: " + "; ".join(problems))


def prepare_output(out: Path, overwrite: bool) -> None:
    """Fail before any work if the destination is taken or cannot be written."""
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; pass --overwrite to replace it")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=parent, prefix=".tessera-probe-")
        probe.close()
    except OSError as e:
        raise ExportError(f"cannot write into {parent} ({e.strerror or e}); choose another --out") from e


def variant_dirs(out: str | Path, precisions: list[str] | tuple[str, ...]) -> dict[str, Path]:
    """`--quant all`: OUT-fp32, OUT-fp16, OUT-int8, OUT-int4, siblings of OUT."""
    out = Path(out)
    return {p: out.with_name(f"{out.name}-{p}") for p in precisions}


def _graph_entries(spec: ExportSpec, root: Path, quant_entries: dict[str, dict],
                   facts: dict[str, dict] | None = None) -> dict:
    """Each graph's file, exporter facts, precision, method (+ options), opset and external data file."""
    graphs = {}
    for name, fname in GRAPH_FILES.items():
        entry = {"file": fname, **(facts or {}).get(name, {}), "precision": "fp32", "method": "none",
                 **quant_entries.get(name, {}), "opset": spec.opset}
        if data_file(root / fname).exists():
            entry["external_data"] = data_file(root / fname).name
        graphs[name] = entry
    return graphs


def _manifest(gpt: GPT, vq: VQModel, spec: ExportSpec, parity_report: dict, files: dict[str, dict],
              graphs: dict | None = None) -> dict:
    g, v = gpt.cfg, vq.cfg
    inputs, outputs = transformer_io_names(g.n_layer)
    graphs = graphs or {n: {"file": f, "precision": "fp32", "method": "none", "opset": spec.opset}
                        for n, f in GRAPH_FILES.items()}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": spec.name,
        "description": spec.description,
        "family": "llamagen-c2i",
        "exported_by": {"package": "tessera-ar", "version": package_version(), "torch": torch.__version__,
                        "onnx": onnx.__version__, "python": platform.python_version()},
        "transformer": {**g.to_dict(), "head_dim": g.head_dim, "ffn_dim": g.ffn_dim, "n_kv_head": g.n_head,
                        "parameters": gpt.num_params()},
        "tokenizer": {**v.to_dict(), "downsample": v.downsample, "grid": v.grid, "parameters": vq.num_params()},
        "image": {"height": v.image_size, "width": v.image_size, "channels": v.in_channels, "value_range": [-1, 1]},
        "grid": {"height": g.grid, "width": g.grid},
        "classes": {"count": g.num_classes, "names": spec.class_names, "null_class_id": g.null_class},
        "token_layout": {
            "vocab_size": g.vocab_size,
            "class_token_offset": g.vocab_size,
            "input_ids": "image codes 0..vocab_size-1; class c -> class_token_offset + c; "
                         "null class (guidance) -> class_token_offset + null_class_id",
            "class_position_id": 0,
            "rope_grid": g.rope_grid,
            "cell_position_id": "1 + row * rope_grid + col (row-major cells)",
            "attention_mask": "bool [batch, sequence, past + sequence], True = may attend",
            "sequence": "class token, then image tokens in raster order; the token at cell j predicts cell j+1",
        },
        "graphs": {
            "transformer": {**graphs["transformer"], "inputs": inputs, "outputs": outputs},
            "tokenizer_decoder": {**graphs["tokenizer_decoder"], "inputs": ["codes"], "outputs": ["image"]},
            "tokenizer_encoder": {**graphs["tokenizer_encoder"], "inputs": ["image"], "outputs": ["codes"]},
        },
        "weights": dict(WEIGHT_FILES) if spec.include_weights else {},
        "generation_defaults": {"guidance_scale": 1.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0,
                                **spec.generation_defaults},
        "parity": parity_report,
        "files": files,
    }


def _parity(gpt: GPT, vq: VQModel, tmp: Path, precision: str) -> dict:
    sizes = parity.QUANT_PARITY if precision != "fp32" else {}
    report = {
        "precision": precision,
        "transformer": parity.transformer_parity(gpt, tmp / GRAPH_FILES["transformer"], **sizes),
        "tokenizer": parity.tokenizer_parity(vq, tmp / GRAPH_FILES["tokenizer_encoder"],
                                             tmp / GRAPH_FILES["tokenizer_decoder"]),
    }
    if precision != "fp32":
        report["bounds"] = dict(parity.QUANT_BOUNDS[precision])
    return report


def _public_permissions(folder: Path) -> None:
    """mkdtemp makes a private (0700) folder and safetensors writes 0600 files: a model directory is
    meant to be shared, so give it the permissions a plain mkdir/open would (umask applied)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def write_model_dir(gpt: GPT, vq: VQModel, out: str | Path, spec: ExportSpec, precision: str = "fp32",
                    quant: QuantOptions | None = None, fp32_source: Path | None = None) -> Path:
    """Export, quantize to `precision`, check parity, write the manifest; move into `out` only once all
    of it succeeded. `fp32_source`: a checked fp32 model directory of the same models whose graphs are
    copied instead of exported again (used by `write_model_dirs`)."""
    out = Path(out)
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    quant = quant or QuantOptions()
    try:
        quant.validate()
    except ValueError as e:
        raise ExportError(str(e)) from None
    threshold = spec.external_data_threshold if spec.external_data_threshold is not None \
        else quant.external_data_threshold
    quant = QuantOptions(**{**quant.__dict__, "external_data_threshold": threshold})
    check_compatible(gpt.cfg, vq.cfg, spec.class_names)
    for f in spec.extra_files:
        if not Path(f).is_file():
            raise ExportError(f"extra file {f} does not exist")
    prepare_output(out, spec.overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.resolve().parent))
    try:
        graphs = {name: tmp / fname for name, fname in GRAPH_FILES.items()}
        facts: dict[str, dict] = {}
        if fp32_source is not None:
            source = json.loads((Path(fp32_source) / MANIFEST_NAME).read_text())
            for name, entry in source["graphs"].items():  # exporter facts (e.g. graph kind) carry over
                facts[name] = {k: v for k, v in entry.items() if k not in (
                    "file", "precision", "method", "options", "opset", "inputs", "outputs", "external_data")}
            for path in graphs.values():
                for src in (Path(fp32_source) / path.name, data_file(Path(fp32_source) / path.name)):
                    if src.exists():
                        shutil.copy2(src, tmp / src.name)
        else:
            facts["transformer"] = export_transformer(gpt, graphs["transformer"], spec.opset, spec.graph)
            export_tokenizer(vq, graphs["tokenizer_encoder"], graphs["tokenizer_decoder"], spec.opset)
            for path in graphs.values():
                finalize_graph(path, threshold)
            if precision != "fp32":  # a broken export must not hide behind quantization bounds
                fp32 = _parity(gpt, vq, tmp, "fp32")
                parity.check(fp32["transformer"], fp32["tokenizer"])
        try:
            entries = quantize_graphs(graphs, precision, quant)
        except Exception as e:
            raise ExportError(str(e)) from e
        report = _parity(gpt, vq, tmp, precision)
        parity.check(report["transformer"], report["tokenizer"], precision)
        if spec.include_weights:
            save_file({k: v.contiguous() for k, v in gpt.state_dict().items()}, str(tmp / WEIGHT_FILES["transformer"]))
            save_file({k: v.contiguous() for k, v in vq.state_dict().items()}, str(tmp / WEIGHT_FILES["tokenizer"]))
        for f in spec.extra_files:
            shutil.copy2(f, tmp / Path(f).name)
        files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                 for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = _manifest(gpt, vq, spec, report, files, _graph_entries(spec, tmp, entries, facts))
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        _public_permissions(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
        return out
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_model_dirs(gpt: GPT, vq: VQModel, out: str | Path, spec: ExportSpec,
                     precisions: list[str] | tuple[str, ...] = PRECISIONS,
                     quant: QuantOptions | None = None) -> list[Path]:
    """One model directory per precision, `OUT-<precision>` (see `variant_dirs`). The fp32 graphs are
    exported and checked once; each variant is written atomically on its own."""
    dirs = variant_dirs(out, precisions)
    for d in dirs.values():  # fail before any work if a destination is taken
        prepare_output(d, spec.overwrite)
    written = []
    source = None
    if "fp32" in dirs:
        source = write_model_dir(gpt, vq, dirs["fp32"], spec, "fp32", quant)
        written.append(source)
    for precision, d in dirs.items():
        if precision != "fp32":
            written.append(write_model_dir(gpt, vq, d, spec, precision, quant, fp32_source=source))
    return written
