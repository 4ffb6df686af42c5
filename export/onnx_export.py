"""Trace the PyTorch models into ONNX graphs with explicit, named KV-cache inputs and outputs.

Names follow the Optimum / onnxruntime-genai convention. The TorchScript exporter is used
(dynamic axes, ~1 s per graph); it matched PyTorch to float precision here, including an
empty past.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from tessera.runtime.compat import OLDEST_TESTED, fused_form

from .config import DEFAULT_OPSET
from .onnx_builder import build_fused_transformer, transformer_io_names, write_fused_transformer  # noqa: F401
from .transformer import GPT, GPTForExport
from .vq import VQDecoderForExport, VQEncoderForExport, VQModel


def _export(module: torch.nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True, dynamo=False)


# Manifest facts of each transformer graph kind (recorded under graphs.transformer).
GRAPH_KINDS = {
    # Built from the weights with onnxruntime's fused kernels; past and present may share a buffer.
    "fused": {"kind": "fused", "kv_cache": "shared-buffer"},
    # Traced from PyTorch with standard ONNX ops only (any ONNX runtime); present = concat(past, new).
    "portable": {"kind": "portable", "kv_cache": "concat"},
}
PROTOBUF_LIMIT = 2_000_000_000  # larger graphs keep their weights in an external data file


def export_transformer(model: GPT, path: Path, opset: int = DEFAULT_OPSET, kind: str = "fused",
                       target_onnxruntime: str = OLDEST_TESTED, external_data_threshold: int | None = None) -> dict:
    """Write the transformer graph of `kind` to `path`; return its manifest facts, including the
    oldest onnxruntime that loads it (runtime/compat.py). The fused graph is written final: its
    tensors in `<path>.data` when they pass `external_data_threshold` (quantize.external_data_threshold),
    else in one file; the portable graph still needs `quantize.finalize_graph`."""
    if kind not in GRAPH_KINDS:
        raise ValueError(f"unknown graph kind {kind!r}; choose one of {sorted(GRAPH_KINDS)}")
    if model.cfg.order == "arpg":  # one form: traced, standard ops (export/arpg.py)
        from .arpg import trace_arpg

        return trace_arpg(model, path, opset)
    if kind == "portable":
        trace_transformer(model, path, opset)
        return {**GRAPH_KINDS[kind], "min_onnxruntime": OLDEST_TESTED}
    else:
        import onnx

        from .quantize import external_data_threshold as threshold, save_graph

        form = fused_form(target_onnxruntime)
        # Streamed into the data file (never the whole model in memory twice); a graph under the
        # threshold (and the protobuf limit) is folded back into one file, small by definition.
        nbytes = write_fused_transformer(model, path, opset, target_onnxruntime)
        if nbytes <= min(threshold(external_data_threshold), PROTOBUF_LIMIT):
            save_graph(onnx.load(str(path)), path, external_data_threshold)
        return {**GRAPH_KINDS[kind], "min_onnxruntime": form.min_onnxruntime}


@torch.no_grad()
def trace_transformer(model: GPT, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """One graph for prefill and decode: S query tokens at explicit positions over a past of P."""
    cfg = model.cfg
    model.eval()
    b, s, p = 2, 3, 2
    ids = torch.randint(0, cfg.vocab_size, (b, s))
    pos = torch.arange(1, s + 1).expand(b, -1).contiguous()
    mask = torch.ones(b, s, p + s, dtype=torch.bool)
    past = [torch.zeros(b, cfg.n_head, p, cfg.head_dim) for _ in range(2 * cfg.n_layer)]
    inputs, outputs = transformer_io_names(cfg.n_layer)
    dyn = {"input_ids": {0: "batch", 1: "sequence"}, "position_ids": {0: "batch", 1: "sequence"},
           "attention_mask": {0: "batch", 1: "sequence", 2: "total_sequence"},
           "logits": {0: "batch", 1: "sequence"}}
    dyn.update({n: {0: "batch", 2: "past_sequence"} for n in inputs[3:]})
    dyn.update({n: {0: "batch", 2: "total_sequence"} for n in outputs[1:]})
    _export(GPTForExport(model), (ids, pos, mask, *past), path, inputs, outputs, dyn, opset)


@torch.no_grad()
def export_tokenizer(vq: VQModel, encoder_path: Path, decoder_path: Path, opset: int = DEFAULT_OPSET) -> None:
    """codes [B, h, w] -> image [B, 3, H, W] and back; batch and grid size are dynamic."""
    vq.eval()
    g = vq.cfg.grid
    codes = torch.randint(0, vq.cfg.codebook_size, (1, g, g))
    _export(VQDecoderForExport(vq), (codes,), decoder_path, ["codes"], ["image"],
            {"codes": {0: "batch", 1: "grid_height", 2: "grid_width"},
             "image": {0: "batch", 2: "height", 3: "width"}}, opset)
    image = torch.rand(1, vq.cfg.in_channels, vq.cfg.image_size, vq.cfg.image_size) * 2 - 1
    _export(VQEncoderForExport(vq), (image,), encoder_path, ["image"], ["codes"],
            {"image": {0: "batch", 2: "height", 3: "width"},
             "codes": {0: "batch", 1: "grid_height", 2: "grid_width"}}, opset)
