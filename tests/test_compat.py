"""Operator forms per target onnxruntime: what the exporter writes, what the runtime checks and does."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from tessera.runtime import ModelDirectoryError, Pipeline
from tessera.runtime.compat import OLDEST_TESTED, check_loadable, disabled_optimizers, fused_form, parse_version
from tessera.runtime.errors import InvalidInputError
from tessera.runtime.manifest import load_manifest
from tessera.runtime.spec import GraphSpec


def _gqa_inputs(model_dir) -> list[str]:
    graph = onnx.load(str(model_dir / "transformer.onnx"), load_external_data=False).graph
    return [list(n.input) for n in graph.node if n.op_type == "GroupQueryAttention"][0]


def test_default_export_uses_the_form_every_tested_build_loads(tiny_dir):
    entry = json.loads((tiny_dir / "tessera.json").read_text())["graphs"]["transformer"]
    assert entry["min_onnxruntime"] == OLDEST_TESTED
    assert entry["multi_query"] == "one-query-per-call"
    assert len(_gqa_inputs(tiny_dir)) == 11  # no query_seqlens: onnxruntime 1.22 .. 1.31 reject it


def test_newer_target_emits_batched_multi_query_form(batched_dir):
    entry = json.loads((batched_dir / "tessera.json").read_text())["graphs"]["transformer"]
    assert entry["min_onnxruntime"] == "1.32" and entry["multi_query"] == "batched"
    assert _gqa_inputs(batched_dir)[16] != ""  # query_seqlens wired


def test_one_query_per_call_gives_the_batched_forms_tokens(tiny_dir, batched_dir):
    """Parallel decoding makes multi-query calls over a past: both forms must draw the same images."""
    old, new = Pipeline.load(tiny_dir, providers="cpu"), Pipeline.load(batched_dir, providers="cpu")
    for window in (1, 2, 3):
        kw = dict(seed=3, parallel_window=window, num_images_per_class=2)
        np.testing.assert_array_equal(old.generate_tokens([4, 8], **kw), new.generate_tokens([4, 8], **kw))


def test_fused_form_choice_and_bounds():
    assert fused_form("1.22").min_onnxruntime == "1.22"
    assert fused_form("1.31.1").min_onnxruntime == "1.22"
    assert fused_form("1.32.0").min_onnxruntime == "1.32"
    assert fused_form("2.0").min_onnxruntime == "1.32"
    with pytest.raises(InvalidInputError, match="older than the oldest tested"):
        fused_form("1.17")
    with pytest.raises(InvalidInputError, match="not an onnxruntime version"):
        fused_form("latest")
    assert parse_version("1.22.2.post3") == (1, 22, 2)
    assert parse_version("1.24.0.dev20250101") == (1, 24, 0)


def test_format_1_manifests_without_the_field_mean_what_they_were_exported_as():
    """Format 1 allowed leaving `min_onnxruntime` out: every fused graph of then was the 1.32 form."""
    from tessera.runtime.spec import ModelSpec

    v1 = json.loads((Path(__file__).parent / "data" / "format1" / "default.json").read_text())
    for g in v1["graphs"].values():
        del g["min_onnxruntime"]
    del v1["graphs"]["transformer"]["multi_query"]
    spec = ModelSpec.from_manifest(v1)
    assert spec.graph("transformer").min_onnxruntime == "1.32" and spec.graph("transformer").multi_query == "batched"
    assert spec.graph("tokenizer_decoder").min_onnxruntime == OLDEST_TESTED


def test_too_old_onnxruntime_is_one_line_naming_found_needed_and_fix(batched_dir, monkeypatch):
    graphs = load_manifest(batched_dir, verify="none").spec.graphs
    with pytest.raises(ModelDirectoryError) as e:
        check_loadable(graphs, "1.31.1", "tiny")
    msg = str(e.value)
    assert "\n" not in msg and "1.31.1" in msg and ">= 1.32" in msg
    assert "--target-onnxruntime 1.31.1" in msg  # the fix: re-export for this build
    check_loadable(graphs, "1.32.0", "tiny")
    # Through Pipeline.load, before any session opens.
    import tessera.runtime.loaded as loaded_module  # where the graphs open

    monkeypatch.setattr(loaded_module, "ort_version", lambda: "1.27.0")
    with pytest.raises(ModelDirectoryError, match="1.27.0 is installed"):
        Pipeline.load(batched_dir, providers="cpu")


def test_below_oldest_tested_suggests_the_portable_graph(tiny_dir):
    graphs = load_manifest(tiny_dir, verify="none").spec.graphs
    with pytest.raises(ModelDirectoryError, match="--graph portable"):
        check_loadable(graphs, "1.20.0", "tiny")


def test_bad_version_field_is_a_model_directory_error(tiny_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_dir, d)
    manifest = json.loads((d / "tessera.json").read_text())
    manifest["graphs"]["transformer"]["min_onnxruntime"] = "soon"
    (d / "tessera.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelDirectoryError, match="graphs.transformer.min_onnxruntime must be an onnxruntime version"):
        load_manifest(d, verify="none")  # refused where the manifest is read, before anything checks versions


def test_known_optimizer_bug_is_avoided_only_where_seen():
    portable_fp16 = GraphSpec("transformer", "t.onnx", "1.22", kind="portable", precision="fp16")
    assert disabled_optimizers(portable_fp16, "1.24.4") == ["SimplifiedLayerNormFusion"]
    assert disabled_optimizers(portable_fp16, "1.27.0") == ["SimplifiedLayerNormFusion"]
    assert disabled_optimizers(portable_fp16, "1.22.1") == []
    assert disabled_optimizers(portable_fp16, "1.31.1") == []
    assert disabled_optimizers(GraphSpec("transformer", "t.onnx", "1.22", kind="fused", precision="fp16"),
                               "1.24.4") == []
