"""A manifest that disagrees with its graph (rope_grid, classes) is caught at load by the self-test."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tessera.runtime import ModelDirectoryError, Pipeline
from tessera.runtime.self_test import TOLERANCE


def _copy(src, tmp_path, edit):
    d = tmp_path / "m"
    shutil.copytree(src, d)
    manifest = json.loads((d / "tessera.json").read_text())
    edit(manifest)
    (d / "tessera.json").write_text(json.dumps(manifest))
    return d


def test_export_records_a_self_test_that_passes(any_dir):
    entry = json.loads((any_dir / "tessera.json").read_text())["graphs"]["transformer"]["self_test"]
    assert len(entry["indices"]) == len(entry["values"][0]) and len(entry["values"]) == 2
    assert entry["tolerance"] == TOLERANCE["fp32"]
    Pipeline.load(any_dir, providers="cpu")


def _rope_grid(m):  # consistent within the manifest, not with the graph's rotary table
    m["token_layout"]["rope_grid"] += 1
    m["transformer"]["rope_grid"] += 1


def _classes(m):  # one class fewer: the null class id now names the graph's class 9
    m["classes"]["count"] -= 1
    m["classes"]["names"] = m["classes"]["names"][:-1]
    m["classes"]["null_class_id"] -= 1
    m["transformer"]["num_classes"] -= 1


@pytest.mark.parametrize("edit", [_rope_grid, _classes], ids=["rope_grid", "classes"])
def test_layout_that_disagrees_with_the_graph_is_refused(any_dir, tmp_path, edit):
    d = _copy(any_dir, tmp_path, edit)
    with pytest.raises(ModelDirectoryError, match="does not compute what its manifest describes"):
        Pipeline.load(d, providers="cpu")


def test_malformed_self_test_is_a_model_directory_error(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path, lambda m: m["graphs"]["transformer"]["self_test"].update(values=[[1e308]]))
    with pytest.raises(ModelDirectoryError, match="self_test is malformed"):
        Pipeline.load(d, providers="cpu")


def test_manifest_without_self_test_still_loads(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path, lambda m: m["graphs"]["transformer"].pop("self_test"))
    a = Pipeline.load(d, providers="cpu").generate_tokens([2], seed=1)
    np.testing.assert_array_equal(a, Pipeline.load(tiny_dir, providers="cpu").generate_tokens([2], seed=1))


def test_quantized_variant_self_test_passes_with_margin(tiny_models, tmp_path):
    """The int4 tolerance must leave room for kernel rounding; a wrong layout must exceed it."""
    from tessera.export.model_dir import ExportSpec, write_model_dir
    from tessera.runtime.self_test import verify

    gpt, vq = tiny_models
    d = write_model_dir(gpt, vq, tmp_path / "q", ExportSpec("q", [str(i) for i in range(10)]), "int4")
    pipe = Pipeline.load(d, providers="cpu")
    entry = json.loads((d / "tessera.json").read_text())["graphs"]["transformer"]["self_test"]

    def run(ids, pos, mask):
        pipe.transformer.start(ids.shape[0], ids.shape[1])
        return pipe.transformer(ids, pos, mask)

    assert verify(entry, run, pipe.layout, pipe.grid, "q") < entry["tolerance"] / 10
    from dataclasses import replace

    with pytest.raises(ModelDirectoryError):
        verify(entry, run, replace(pipe.layout, rope_grid=pipe.layout.rope_grid + 1), pipe.grid, "q")
