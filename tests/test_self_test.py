"""A manifest that disagrees with its graph (rope_grid, classes) is caught at load by the self-test:
either the recorded probe is not the one its fields give, or (both edited together) the graph's logits
for it are not the recorded ones."""
from __future__ import annotations

import json
import shutil

import pytest

from tessera.runtime import ModelDirectoryError, Pipeline, load_manifest
from tessera.runtime.self_test import TOLERANCE, probe_inputs
from tessera.runtime.spec import TokenLayout


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
    spec = load_manifest(any_dir, verify="none").spec  # the inputs recorded are the documented probe's
    assert (entry["input_ids"], entry["position_ids"]) == tuple(probe_inputs(spec.layout, spec.grid))
    Pipeline.load(any_dir, providers="cpu")


def _rope_grid(m):  # consistent within the manifest, not with the graph's rotary table
    m["transformer"]["rope_grid"] += 1


def _classes(m):  # one class fewer: the null class id now names the graph's class 9
    m["classes"]["names"] = m["classes"]["names"][:-1]
    m["transformer"]["num_classes"] -= 1


def _and_the_probe(edit):
    """`edit`, and the recorded probe inputs rewritten to match it: only the graph's logits can tell."""
    def both(m):
        edit(m)
        t = m["transformer"]
        layout = TokenLayout(t["vocab_size"], t["vocab_size"], t["num_classes"], t["rope_grid"])
        ids, positions = probe_inputs(layout, (m["transformer"]["grid"],) * 2)
        m["graphs"]["transformer"]["self_test"].update(input_ids=ids, position_ids=positions)
    return both


@pytest.mark.parametrize("edit", [_rope_grid, _classes, _and_the_probe(_rope_grid), _and_the_probe(_classes)],
                         ids=["rope_grid", "classes", "rope_grid-and-probe", "classes-and-probe"])
def test_layout_that_disagrees_with_the_graph_is_refused(any_dir, tmp_path, edit):
    d = _copy(any_dir, tmp_path, edit)
    # One class fewer puts the recorded null-class id outside the table: refused as the manifest is read.
    with pytest.raises(ModelDirectoryError, match="does not compute what its manifest describes|"
                                                  "self_test.input_ids must be .*the embedding table"):
        Pipeline.load(d, providers="cpu")


def test_malformed_self_test_is_a_model_directory_error(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path, lambda m: m["graphs"]["transformer"]["self_test"].update(values=[[1e308]]))
    with pytest.raises(ModelDirectoryError, match="graphs.transformer.self_test.values must be 2 rows of 32..32 finite"):
        Pipeline.load(d, providers="cpu")


def test_manifest_without_self_test_is_refused_naming_the_reexport(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path, lambda m: m["graphs"]["transformer"].pop("self_test"))
    with pytest.raises(ModelDirectoryError, match="self_test is missing.*tessera export --from DIR --out NEW"):
        Pipeline.load(d, providers="cpu")


def test_quantized_variant_self_test_passes_with_margin(tiny_models, tmp_path):
    """The int4 tolerance must leave room for kernel rounding; a wrong layout must exceed it."""
    from tessera.export.model_dir import ExportSpec, write_model_dir
    from tessera.runtime.self_test import verify

    gpt, vq = tiny_models
    d = write_model_dir(gpt, vq, tmp_path / "q", ExportSpec("q", [str(i) for i in range(10)]), "int4")
    pipe = Pipeline.load(d, providers="cpu")
    entry = pipe.manifest.spec.graph("transformer").self_test

    def run(ids, pos, mask):
        pipe.transformer.start(ids.shape[0], ids.shape[1])
        return pipe.transformer(ids, pos, mask)

    assert verify(entry, run, pipe.layout, pipe.grid, "q") < entry.tolerance / 10
    from dataclasses import replace

    wrong = replace(pipe.layout, rope_grid=pipe.layout.rope_grid + 1)
    with pytest.raises(ModelDirectoryError, match="recorded self-test call is not the one"):
        verify(entry, run, wrong, pipe.grid, "q")
    ids, positions = probe_inputs(wrong, pipe.grid)  # the probe of the wrong layout: the logits tell
    with pytest.raises(ModelDirectoryError, match="logits differ by"):
        verify(replace(entry, input_ids=ids, position_ids=positions), run, wrong, pipe.grid, "q")
