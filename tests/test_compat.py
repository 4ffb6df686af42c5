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


def _nodes(model_dir, op: str) -> list:
    graph = onnx.load(str(model_dir / "transformer.onnx"), load_external_data=False).graph
    return [n for n in graph.node if n.op_type == op]


def test_default_export_uses_the_form_every_tested_build_loads(tiny_dir):
    entry = json.loads((tiny_dir / "tessera.json").read_text())["graphs"]["transformer"]
    assert entry["min_onnxruntime"] == OLDEST_TESTED and "multi_query" not in entry
    gqa = _nodes(tiny_dir, "GroupQueryAttention")
    assert len(_gqa_inputs(tiny_dir)) == 11  # no query_seqlens: onnxruntime 1.22 .. 1.31 reject it
    # q and k are rotated at position_ids before attention, which rotates nothing itself
    rotary = {r.output[0]: r for r in _nodes(tiny_dir, "RotaryEmbedding")}
    assert len(rotary) == 2 * len(gqa) and all(r.input[1] == "position_ids" for r in rotary.values())
    assert all(g.input[0] in rotary and g.input[1] in rotary and g.input[2] not in rotary for g in gqa)
    assert all(a.i == 0 for g in gqa for a in g.attribute if a.name == "do_rotary")


def test_newer_target_emits_the_rows_together_form(batched_dir):
    entry = json.loads((batched_dir / "tessera.json").read_text())["graphs"]["transformer"]
    assert entry["min_onnxruntime"] == "1.32" and "multi_query" not in entry
    assert _gqa_inputs(batched_dir)[16] != ""  # query_seqlens wired


def _count_runs(pipe) -> list:
    calls, run = [], pipe.transformer.session.run_with_iobinding
    pipe.transformer.session.run_with_iobinding = lambda *a: (calls.append(1), run(*a))[1]
    return calls


def test_both_forms_draw_the_same_tokens_and_batch_the_tokens_of_a_call(tiny_dir, batched_dir):
    """Parallel decoding makes multi-token calls over a past: both forms must draw the same images. The
    1.22 form splits them (its attention refuses several rows and tokens over a past at once) into at most
    min(rows, tokens) runs."""
    old, new = Pipeline.load(tiny_dir, providers="cpu"), Pipeline.load(batched_dir, providers="cpu")
    old_calls, new_calls = _count_runs(old), _count_runs(new)
    for window in (1, 2, 3):
        kw = dict(seed=3, parallel_window=window, num_images_per_class=2)
        np.testing.assert_array_equal(old.generate_tokens([4, 8], **kw), new.generate_tokens([4, 8], **kw))
    # 8 rows (2 labels x 2 images x guidance): row by row, at most 8 calls per step of either form
    assert 0 < len(old_calls) <= 8 * len(new_calls)
    one = Pipeline.load(tiny_dir, providers="cpu")
    calls = _count_runs(one)
    one.generate_tokens([4], seed=3, parallel_window=1)  # 2 rows (guidance), a query per image row a call
    per_row = one.transformer.token_rows // 2  # tokens each row fed: one call each, one token per call
    assert len(calls) < per_row, (len(calls), per_row)


@pytest.mark.parametrize("rows, s", [(3, 5), (4, 2)], ids=["more-tokens-than-rows", "more-rows-than-tokens"])
def test_a_multi_token_call_equals_one_call_per_token_at_any_positions(tiny_dir, batched_dir, rows, s):
    """Queries at scattered, non-consecutive positions over a past, several rows, each under its own mask:
    one call of S tokens gives the logits of S one-token calls, on both forms (the 1.22 form splits the call
    by rows or by tokens, whichever makes fewer runs)."""
    results = []
    for d in (tiny_dir, batched_dir):
        rng = np.random.default_rng(5)
        runner = Pipeline.load(d, providers="cpu").transformer
        past = 4
        ids = rng.integers(0, runner.vocab_size, (rows, past + s))
        pos = np.stack([rng.permutation(np.arange(1, 40))[:past + s] for _ in range(rows)])
        mask = np.ones((rows, past + s, past + s), bool) & np.tril(np.ones((past + s, past + s), bool))
        mask[1, past + 1, 1] = False
        got = []
        for split in ([past, s], [past] + [1] * s):
            runner.start(rows, past + s)
            out, at = [], 0
            for n in split:
                sl = np.s_[:, at:at + n]
                out.append(runner(np.ascontiguousarray(ids[sl]), np.ascontiguousarray(pos[sl]),
                                  np.ascontiguousarray(mask[:, at:at + n, :at + n])).copy())
                at += n
            assert runner.length == past + s
            got.append(np.concatenate(out, 1))
        np.testing.assert_allclose(got[0], got[1], atol=1e-4)
        results.append(got[0])
    np.testing.assert_allclose(results[0], results[1], atol=1e-4)


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
    assert spec.graph("transformer").min_onnxruntime == "1.32"
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


def test_a_directory_whose_graph_rotates_by_index_is_refused_with_the_re_export_command(tiny_dir, tmp_path):
    """Directories exported before the fused graph rotated by position said `multi_query: one-query-per-call`:
    their multi-token calls would be silently wrong, so loading stops with one line naming the fix. Those that
    said `batched` (the 1.32 form, the portable graph) rotate by position and still load."""
    from tessera.runtime.spec import REEXPORT

    for value, refused in (("one-query-per-call", True), ("batched", False)):
        d = tmp_path / value
        shutil.copytree(tiny_dir, d)
        manifest = json.loads((d / "tessera.json").read_text())
        manifest["graphs"]["transformer"]["multi_query"] = value
        (d / "tessera.json").write_text(json.dumps(manifest))
        if refused:
            with pytest.raises(ModelDirectoryError) as e:
                Pipeline.load(d, providers="cpu")
            msg = str(e.value)
            assert "\n" not in msg and REEXPORT in msg and "one-query-per-call" in msg
        else:
            Pipeline.load(d, providers="cpu", verify="none")
