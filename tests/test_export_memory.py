"""An export holds the PyTorch model and the graph's onnxruntime copy at different times, never together:
parity references are computed first, the weights saved, then released (ExportSpec.release_weights).
These tests check that the result is the same directory, not the memory figure (benchmarks/ measures it)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tessera.export import parity
from tessera.export.build import build_gpt, build_vq
from tessera.export.checkpoints import load_strict, read_state_dict
from tessera.export.config import gpt_preset, vq_preset
from tessera.export.model_dir import ExportSpec, write_model_dir, write_model_dirs
from tessera.runtime import Pipeline

DIGITS = [str(i) for i in range(10)]


def _models(seed: int = 3):
    gpt = build_gpt(gpt_preset("GPT-Tiny"), None, seed=seed)
    for p in gpt.parameters():
        p.data.mul_(10.0) if p.dim() > 1 else None
    return gpt, build_vq(vq_preset("VQ-Tiny"), None, seed=seed + 1)


def _parity(root):
    return json.loads((root / "tessera.json").read_text())["parity"]


def test_reference_gives_the_same_parity_as_the_model(tiny_models, tiny_dir):
    gpt, vq = tiny_models
    path = tiny_dir / "transformer.onnx"
    for kw in ({}, {"batch": 4, "decode_steps": 8}):
        direct = parity.transformer_parity(gpt, path, **kw, row_by_row=True)
        via = parity.transformer_parity(parity.transformer_reference(gpt, **kw), path,
                                        row_by_row=True)
        assert direct == via
        assert set(direct["by_phase"]) == {"prefill", "decode", "multi_query", "prefix_prefill"}
    enc, dec = tiny_dir / "tokenizer_encoder.onnx", tiny_dir / "tokenizer_decoder.onnx"
    assert parity.tokenizer_parity(vq, enc, dec) == parity.tokenizer_parity(parity.tokenizer_reference(vq), enc, dec)


def test_released_export_writes_the_same_directory(tmp_path):
    kept_gpt, kept_vq = _models()
    kept = write_model_dir(kept_gpt, kept_vq, tmp_path / "kept", ExportSpec("m", DIGITS, include_weights=True))
    gpt, vq = _models()
    freed = write_model_dir(gpt, vq, tmp_path / "freed",
                            ExportSpec("m", DIGITS, include_weights=True, release_weights=True))
    assert all(t.is_meta for t in [*gpt.state_dict().values(), *vq.state_dict().values()])  # memory given back
    assert all(not t.is_meta for t in kept_gpt.state_dict().values())  # the default keeps the caller's models
    for name in ("gpt.safetensors", "vq.safetensors", "transformer.onnx", "tokenizer_decoder.onnx"):
        assert (kept / name).read_bytes() == (freed / name).read_bytes(), name
    assert _parity(kept) == _parity(freed)
    # the released export still re-exports and generates the same tokens
    a = Pipeline.load(kept).generate_tokens([1, 2], seed=5)
    b = Pipeline.load(freed).generate_tokens([1, 2], seed=5)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("precisions", [("fp32", "int8"), ("fp16", "int4")])
def test_released_variants_keep_weights_and_parity(tmp_path, precisions):
    gpt, vq = _models()
    spec = ExportSpec("m", DIGITS, include_weights=True, release_weights=True)
    dirs = write_model_dirs(gpt, vq, tmp_path / "m", spec, precisions)
    assert [d.name for d in dirs] == [f"m-{p}" for p in precisions]
    assert all(t.is_meta for t in gpt.state_dict().values())
    ref_gpt, _ = _models()
    for d, precision in zip(dirs, precisions):  # what a check with the live model measures
        sizes = parity.QUANT_PARITY if precision != "fp32" else {}
        live = parity.transformer_parity(ref_gpt, d / "transformer.onnx", **sizes, row_by_row=True)
        assert _parity(d)["transformer"] == live, precision
        assert (d / "gpt.safetensors").is_file() and (d / "vq.safetensors").is_file()


def test_checkpoints_load_mapped_and_legacy(tmp_path):
    gpt, _ = _models()
    state = {k: v.clone() for k, v in gpt.state_dict().items()}
    for name, zipped in (("zip.pt", True), ("legacy.pt", False)):
        torch.save({"model": state}, tmp_path / name, _use_new_zipfile_serialization=zipped)
        fresh = build_gpt(gpt_preset("GPT-Tiny"), None, seed=9)
        load_strict(fresh, read_state_dict(tmp_path / name))
        for k, v in fresh.state_dict().items():
            assert torch.equal(v, state[k]), (name, k)
    # a checkpoint in another dtype is converted to the model's
    torch.save({k: v.half() for k, v in state.items()}, tmp_path / "half.pt")
    fresh = build_gpt(gpt_preset("GPT-Tiny"), None, seed=9)
    load_strict(fresh, read_state_dict(tmp_path / "half.pt"))
    assert all(v.dtype == torch.float32 for v in fresh.parameters())
