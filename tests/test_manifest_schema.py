"""The manifest schema (`tessera.runtime.spec.ModelSpec`): validated at load, written by the exporter.

A hostile or damaged `tessera.json` is one `ModelDirectoryError` naming the field and the fix; a graph
swapped for another graph is refused when it is opened, naming the graph; a format-1 manifest is read
through its one upgrade function, its copies of canonical fields checked, and still runs and re-exports.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tessera.runtime import ModelDirectoryError, Pipeline, load_manifest
from tessera.runtime.manifest import TokenLayout as ReExportedLayout, sha256_file
from tessera.runtime.spec import GenerationDefaults, GraphIO, ModelSpec, TensorSig, TokenLayout, check_session

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ROOT = Path(__file__).resolve().parents[1]
FORMAT1 = Path(__file__).parent / "data" / "format1"  # the shipped models' manifests as format 1 wrote them


@pytest.fixture
def model_copy(tiny_dir, tmp_path) -> Path:
    dst = tmp_path / "m"
    shutil.copytree(tiny_dir, dst)
    return dst


def _edit(root: Path, edit) -> None:
    path = root / "tessera.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _set(path: str, value):
    """An edit that sets `a.b.c` (list indices as ints) to `value`."""
    def edit(d):
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return edit


def _drop(path: str):
    def edit(d):
        keys = path.split(".")
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
    return edit


def _io(key: str, value):
    return _set(f"graphs.transformer.io.{key}", value)


def _probe(key: str, value):
    return _set(f"graphs.transformer.self_test.{key}", value)


def _too_large_image(d):
    d["transformer"].update(grid=200, rope_grid=400)
    d["tokenizer"].update(downsample=100)


HOSTILE = [
    # shape of the sections
    ("missing-transformer", _drop("transformer"), "transformer is missing (the manifest lacks this section)"),
    ("missing-tokenizer", _drop("tokenizer"), "tokenizer is missing"),
    ("missing-image", _drop("image"), "image is missing"),
    ("missing-export", _drop("export"), "export is missing"),
    ("classes-a-list", _set("classes", ["zero"]), "classes must be an object, got ['zero']"),
    ("transformer-null", _set("transformer", None), "transformer must be an object, got None"),
    ("missing-n-layer", _drop("transformer.n_layer"), "transformer.n_layer is missing"),
    ("missing-n-kv-head", _drop("transformer.n_kv_head"), "transformer.n_kv_head is missing"),
    # a field format 2 does not have: a copy format 1 kept, or a typo
    ("v1-copy", _set("tokenizer.codebook_size", 64), "tokenizer.codebook_size is not a field of format 2"),
    ("v1-value-range", _set("image.value_range", [-1, 1]), "image.value_range is not a field of format 2"),
    ("v1-token-layout", _set("transformer.head_dim", 16), "transformer.head_dim is not a field of format 2"),
    ("typo", _set("generation_defaults.top-k", 3), "generation_defaults.top-k is not a field of format 2"),
    ("transformer-inputs", _set("graphs.transformer.inputs", ["input_ids"]),
     "graphs.transformer.inputs is not a field of format 2"),
    # types (a bool is not an int) and ranges
    ("n-layer-str", _set("transformer.n_layer", "2"), "transformer.n_layer must be an int in 1..1024, got '2'"),
    ("n-head-bool", _set("transformer.n_head", True), "transformer.n_head must be an int in 1..1024, got True"),
    ("n-layer-float", _set("transformer.n_layer", 2.0), "transformer.n_layer must be an int in 1..1024, got 2.0"),
    ("n-layer-huge", _set("transformer.n_layer", 10 ** 9),
     "tessera.json: transformer.n_layer must be an int in 1..1024, got 1000000000"),
    ("n-layer-zero", _set("transformer.n_layer", 0), "transformer.n_layer must be an int in 1..1024, got 0"),
    ("vocab-huge", _set("transformer.vocab_size", 10 ** 12), "transformer.vocab_size must be an int in 1..1048576"),
    ("dim-not-heads", _set("transformer.dim", 65), "transformer.dim (65) must be transformer.n_head (4) x a head size"),
    ("head-huge", _set("transformer.dim", 4 * 2048), "transformer.dim (8192) must be transformer.n_head (4) x a head"),
    ("classes-huge", _set("transformer.num_classes", 10 ** 7), "transformer.num_classes must be an int in 1..100000"),
    ("transformer-grid-300", _set("transformer.grid", 300), "transformer.grid must be an int in 1..256, got 300"),
    ("rope-grid-small", _set("transformer.rope_grid", 2), "transformer.rope_grid must be an int in 4..1024, got 2"),
    ("rope-grid-huge", _set("transformer.rope_grid", 10 ** 6), "transformer.rope_grid must be an int in 4..1024"),
    ("channels-huge", _set("image.channels", 99), "image.channels must be an int in 1..16, got 99"),
    ("image-too-large", _too_large_image, "tokenizer.downsample x transformer.grid (100 x 200) must be at most 16384"),
    ("downsample-str", _set("tokenizer.downsample", "4"), "tokenizer.downsample must be an int"),
    ("kv-heads", _set("transformer.n_kv_head", 3), "transformer.n_kv_head (3) must divide transformer.n_head (4)"),
    ("kv-heads-above", _set("transformer.n_kv_head", 5), "transformer.n_kv_head must be an int in 1..4"),
    # generation defaults: finite and in range, all four written
    ("guidance-negative", _set("generation_defaults.guidance_scale", -1.0), "generation_defaults.guidance_scale must be"),
    ("guidance-nan", _set("generation_defaults.guidance_scale", float("nan")), "generation_defaults.guidance_scale must be"),
    ("guidance-inf", _set("generation_defaults.guidance_scale", float("inf")), "generation_defaults.guidance_scale must be"),
    ("temperature-negative", _set("generation_defaults.temperature", -0.5), "generation_defaults.temperature must be"),
    ("temperature-str", _set("generation_defaults.temperature", "hot"), "generation_defaults.temperature must be"),
    ("top-k-negative", _set("generation_defaults.top_k", -1), "generation_defaults.top_k must be an int"),
    ("top-k-float", _set("generation_defaults.top_k", 2.5), "generation_defaults.top_k must be an int"),
    ("top-k-bool", _set("generation_defaults.top_k", False), "generation_defaults.top_k must be an int"),
    ("top-p-zero", _set("generation_defaults.top_p", 0), "generation_defaults.top_p must be a number in (0, 1]"),
    ("top-p-above-one", _set("generation_defaults.top_p", 1.5), "generation_defaults.top_p must be a number in (0, 1]"),
    ("top-p-missing", _drop("generation_defaults.top_p"), "generation_defaults.top_p is missing"),
    ("defaults-a-list", _set("generation_defaults", [1, 2]), "generation_defaults must be an object"),
    # classes
    ("names-count", lambda d: d["classes"]["names"].pop(), "classes.names has 9 names but transformer.num_classes is 10"),
    ("name-not-str", _set("classes.names.3", 3), "classes.names[3] must be a string"),
    ("names-a-str", _set("classes.names", "zero one"), "classes.names must be a list"),
    # graphs
    ("graphs-missing-transformer", _drop("graphs.transformer"), "graphs.transformer is missing"),
    ("min-ort-garbage", _set("graphs.transformer.min_onnxruntime", "soon"), "graphs.transformer.min_onnxruntime must be"),
    ("min-ort-missing", _drop("graphs.tokenizer_decoder.min_onnxruntime"),
     "graphs.tokenizer_decoder.min_onnxruntime is missing"),
    ("kind-unknown", _set("graphs.transformer.kind", "quantum"), "graphs.transformer.kind must be one of 'fused', 'portable'"),
    ("kv-cache-unknown", _set("graphs.transformer.kv_cache", 1), "graphs.transformer.kv_cache must be one of"),
    ("multi-query-unknown", _set("graphs.transformer.multi_query", "all"), "graphs.transformer.multi_query must be one of"),
    ("opset-str", _set("graphs.transformer.opset", "18"), "graphs.transformer.opset must be an int"),
    ("io-missing", _drop("graphs.transformer.io"), "graphs.transformer.io is missing"),
    ("io-pattern-no-layer", _io("present_key_names", "present.key"), "graphs.transformer.io.present_key_names must be"),
    ("io-pattern-format", _io("past_key_names", "past_key_values.{layer}.{0}"), "graphs.transformer.io.past_key_names"),
    ("io-name-not-str", _io("logits", 5), "graphs.transformer.io.logits must be a tensor name"),
    ("io-duplicate", _io("past_value_names", "past_key_values.{layer}.key"),
     "graphs.transformer.io must give every input and output a different name"),
    ("io-a-list", _set("graphs.transformer.io", []), "graphs.transformer.io must be an object"),
    ("decoder-two-inputs", _set("graphs.tokenizer_decoder.inputs", ["codes", "x"]), "graphs.tokenizer_decoder.inputs"),
    # the self-test probe: within the model's tables, bounded
    ("probe-id-outside", _probe("input_ids.0.0", 75), "self_test.input_ids must be 2 rows of 1..16 token ids in 0..74"),
    ("probe-id-bool", _probe("input_ids.0.1", True), "self_test.input_ids must be 2 rows"),
    ("probe-position-outside", _probe("position_ids.1.1", 65), "position ids in 0..64 (the rotary table)"),
    ("probe-ragged", _probe("position_ids.1", [0, 1]), "self_test.position_ids must be 2 rows of 5..5"),
    ("probe-long", _probe("input_ids", [[1] * 17] * 2), "self_test.input_ids must be 2 rows of 1..16"),
    ("probe-one-row", _probe("input_ids", [[1]]), "self_test.input_ids must be 2 rows"),
    ("probe-index-outside", _probe("indices.0", 64), "self_test.indices must be 1..128 distinct ids in 0..63"),
    ("probe-index-twice", _probe("indices.1", 0), "self_test.indices must be 1..128 distinct ids"),
    ("probe-values-nan", _probe("values.0.0", float("nan")), "self_test.values must be 2 rows"),
    ("probe-values-short", _probe("values.1", [1.0]), "self_test.values must be 2 rows"),
    ("probe-tolerance", _probe("tolerance", 2), "self_test.tolerance must be a finite number in (0, 1]"),
    ("probe-unknown", _probe("attention_mask", "causal"), "self_test.attention_mask is not a field of format 2"),
    # the top level
    ("family-unknown", _set("family", "stable-diffusion"), "family is 'stable-diffusion', a model family this runtime"),
    ("family-missing", _drop("family"), "family is missing"),
    ("conditioning-text", _set("conditioning", {"kind": "text"}), "conditioning.kind must be one of 'class'"),
    ("format-version-bool", _set("format_version", True), "format_version must be an int >= 1, got True"),
    ("format-version-3", _set("format_version", 3), "has format version 3, newer than this runtime understands (2)"),
    ("name-not-str", _set("name", ["x"]), "name must be a string"),
    ("weights-missing", _drop("weights"), "'weights' is not an object"),
]


@pytest.mark.parametrize("case, edit, message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_manifest_is_one_error_naming_the_field(model_copy, case, edit, message):
    _edit(model_copy, edit)
    with pytest.raises(ModelDirectoryError, match=re.escape(message)) as e:
        load_manifest(model_copy, verify="none")
    assert "tessera.json" in str(e.value) and "\n" not in str(e.value)
    assert "re-export" in str(e.value) or "upgrade tessera-ar" in str(e.value)


@pytest.mark.parametrize("text", ["[1, 2]", "null", '"tessera"', "3", "[" * 100_000])
def test_a_manifest_that_is_not_an_object(model_copy, text):
    (model_copy / "tessera.json").write_text(text)
    with pytest.raises(ModelDirectoryError, match="tessera.json"):
        load_manifest(model_copy, verify="none")


@pytest.mark.parametrize("data", [[1, 2], None, "x", 3])
def test_from_manifest_refuses_what_is_not_an_object(data):
    with pytest.raises(ModelDirectoryError, match=r"tessera.json: the manifest must be a JSON object"):
        ModelSpec.from_manifest(data)


def test_error_names_the_manifest_path(tiny_dir):
    data = json.loads((tiny_dir / "tessera.json").read_text())
    data["transformer"]["n_layer"] = 10 ** 9
    with pytest.raises(ModelDirectoryError) as e:
        ModelSpec.from_manifest(data, tiny_dir)
    assert str(e.value).startswith(f"{tiny_dir}/tessera.json: transformer.n_layer must be an int in 1..1024, "
                                   "got 1000000000; re-export")


# --- round trip, the shipped models -----------------------------------------------------------------
def test_round_trip_and_the_exporter_writes_through_the_spec(tiny_dir, portable_dir, batched_dir):
    for d in (tiny_dir, portable_dir, batched_dir):
        spec = load_manifest(d, verify="none").spec
        assert ModelSpec.from_manifest(spec.to_manifest()) == spec and spec.format_version == 2
        on_disk = json.loads((d / "tessera.json").read_text())
        assert spec.to_manifest() == on_disk  # the exporter wrote exactly what the spec writes
        assert on_disk["graphs"]["transformer"]["io"] == GraphIO().to_dict()
        assert on_disk["conditioning"] == {"kind": "class"} and spec.conditioning == "class"
        assert set(on_disk) >= {"parity", "exported_by"} and spec.info["parity"] == on_disk["parity"]


def test_the_derived_facts_come_from_the_canonical_fields(tiny_dir):
    m = load_manifest(tiny_dir, verify="none")
    s = m.spec
    assert m.grid == s.grid == (4, 4) and m.class_names == DIGITS and m.num_classes == 10
    assert m.layout == s.layout == TokenLayout(64, 64, 10, 8) and ReExportedLayout is TokenLayout
    assert s.layout.embedding_rows == 64 + 10 + 1 and s.layout.positions == 1 + 8 * 8
    assert s.image_size == (16, 16) and s.image.channels == 3
    assert s.generation == GenerationDefaults(guidance_scale=2.0, temperature=1.0, top_k=16, top_p=1.0)
    assert s.transformer.n_layer == 2 and s.transformer.head_dim == 16
    assert s.graph("transformer").kind == "fused" and s.graph("transformer").kv_cache == "shared-buffer"
    assert s.io.inputs(2) == list(s.graph("transformer").inputs)
    assert s.io.layer(1) == ("past_key_values.1.key", "past_key_values.1.value", "present.1.key", "present.1.value")


def test_the_shipped_models_load_with_full_verification():
    for name in ("default", "anyorder"):
        m = load_manifest(ROOT / "models" / name, verify="full")
        assert m.spec.format_version == 2 and m.spec.io == GraphIO() and m.grid == (7, 7)
        assert ModelSpec.from_manifest(m.spec.to_manifest()) == m.spec


def test_other_io_names_are_honoured(model_copy):
    """The names are read from the manifest, not repeated in the runtime: names the graph does not have
    are refused when the graph is opened."""
    _edit(model_copy, lambda d: d["graphs"]["transformer"]["io"].update(past_key_names="cache.{layer}.k",
                                                                        past_value_names="cache.{layer}.v"))
    assert load_manifest(model_copy, verify="none").spec.io.past_names(1) == ["cache.0.k", "cache.0.v"]
    with pytest.raises(ModelDirectoryError, match=re.escape("its transformer graph (transformer.onnx) does not "
                                                            "match the manifest: it lacks the inputs ['cache.0.k'")):
        Pipeline.load(model_copy, providers="cpu", verify="none")


def test_exporter_names_are_the_spec_names():
    from tessera.export.onnx_export import transformer_io_names

    for n in (1, 2, 12):
        assert transformer_io_names(n) == (GraphIO().inputs(n), GraphIO().outputs(n))


def test_exporter_refuses_to_write_a_manifest_the_runtime_would_refuse(tiny_models):
    from tessera.export.model_dir import ExportError, ExportSpec, _manifest

    gpt, vq = tiny_models
    files = {n: {"sha256": "0" * 64, "bytes": 1} for n in ("transformer.onnx", "tokenizer_decoder.onnx",
                                                            "tokenizer_encoder.onnx")}
    ok = _manifest(gpt, vq, ExportSpec(name="x", class_names=DIGITS), {}, files)
    assert ok.generation == GenerationDefaults()  # no defaults given: every option off
    with pytest.raises(ExportError, match=re.escape("generation_defaults.top_p must be a number in (0, 1]")):
        _manifest(gpt, vq, ExportSpec(name="x", class_names=DIGITS, generation_defaults={"top_p": 0}), {}, files)
    with pytest.raises(ExportError, match=re.escape("generation_defaults.stepz is not a field of format 2")):
        _manifest(gpt, vq, ExportSpec(name="x", class_names=DIGITS, generation_defaults={"stepz": 4}), {}, files)
    with pytest.raises(ExportError, match=re.escape("generation_defaults.schedule must be one of 'arccos'")):
        _manifest(gpt, vq, ExportSpec(name="x", class_names=DIGITS, generation_defaults={"schedule": "linear"}),
                  {}, files)


# --- the exporter's own section ---------------------------------------------------------------------
@pytest.mark.parametrize("edit, message", [
    (_set("export.transformer.rope_base", float("nan")), "export.transformer.rope_base must be a finite number"),
    (_set("export.transformer.norm_eps", True), "export.transformer.norm_eps must be a finite number"),
    (_set("export.tokenizer.ch_mult", "1,2,2"), "export.tokenizer.ch_mult must be a list of 1..11 ints"),
    (_set("export.tokenizer.ch_mult", [1, 2, 2, 2]), "tokenizer.downsample (4) must be 2 ** (len(export.tokenizer."
                                                    "ch_mult) - 1) = 8"),
    (_drop("export.tokenizer.ch"), "export.tokenizer.ch must be an int in 1..65536, got None"),
    (_set("export.tokenizer.chh", 3), "export.tokenizer.chh is not an export field"),
    (_set("export.transformer", []), "export.transformer must be an object"),
    (_set("transformer.n_kv_head", 2), "transformer.n_kv_head (2) must equal transformer.n_head (4)"),
    (_set("transformer.dim", 72), "cannot build (head_dim 18 must be a multiple of 4 for 2D rotary)"),
])
def test_reexport_checks_the_export_section(model_copy, edit, message):
    """The runtime does not read `export`; the exporter checks it when it reads a directory to re-export."""
    from tessera.export.config import configs_from_spec

    _edit(model_copy, edit)
    spec = load_manifest(model_copy, verify="none").spec  # the runtime loads it
    with pytest.raises(ModelDirectoryError, match=re.escape(message)):
        configs_from_spec(spec)


def test_export_sections_round_trip_the_configs(tiny_models, tiny_dir):
    from tessera.export.config import configs_from_spec

    gpt, vq = tiny_models
    assert configs_from_spec(load_manifest(tiny_dir, verify="none").spec) == (gpt.cfg, vq.cfg)


# --- format 1 ---------------------------------------------------------------------------------------
def _v1(name: str = "default") -> dict:
    return json.loads((FORMAT1 / f"{name}.json").read_text())


@pytest.mark.parametrize("name", ["default", "anyorder"])
def test_format_1_upgrades_to_the_shipped_format_2(name):
    """The shipped models were moved to format 2 without touching a graph, then re-exported from their own
    weights when the fused graph began rotating by position: the upgrade of their format-1 manifests is
    their format-2 manifest but for the transformer graph, the parity measured with it and the model card.
    The default's format-1 graph rotated by index: read, marked, so that it can be re-exported."""
    old = ModelSpec.from_manifest(_v1(name))
    new = load_manifest(ROOT / "models" / name, verify="none").spec
    assert old.format_version == 1 and new.format_version == 2
    changed = ("transformer.onnx", "MODEL_CARD.md")
    assert replace(old, files={**old.files, **{f: new.files[f] for f in changed}}, graphs=new.graphs,
                   info={**old.info, "parity": new.info["parity"]}) == new
    assert {n: f for n, f in old.files.items() if n.endswith(".onnx") and n not in changed} == \
        {n: f for n, f in new.files.items() if n.endswith(".onnx") and n not in changed}
    assert old.graph("transformer").rotates_by_index == (name == "default")
    assert not new.graph("transformer").rotates_by_index


V1_COPIES = [
    ("layout-rope", _set("token_layout.rope_grid", 9), "token_layout.rope_grid (9) must equal transformer.rope_grid (14)"),
    ("layout-vocab", _set("token_layout.vocab_size", 63), "token_layout.vocab_size (63) must equal transformer.vocab_size"),
    ("class-offset", _set("token_layout.class_token_offset", 0),
     "token_layout.class_token_offset (0) must equal transformer.vocab_size (512)"),
    ("class-position", _set("token_layout.class_position_id", 1), "token_layout.class_position_id (1) must equal 0"),
    ("query-in-raster", _set("token_layout.query_token_id", 523), "token_layout.query_token_id (523) must equal"),
    ("codebook", _set("tokenizer.codebook_size", 64), "tokenizer.codebook_size (64) must equal transformer.vocab_size"),
    ("tokenizer-grid", _set("tokenizer.grid", 8), "tokenizer.grid (8) must equal transformer.grid (7)"),
    ("grid", _set("grid.height", 5), "grid.height (5) must equal transformer.grid (7)"),
    ("image", _set("image.height", 20), "image.height (20) must equal transformer.grid x tokenizer.downsample (28)"),
    ("value-range", _set("image.value_range", [0, 1]), "image.value_range ([0, 1]) must equal the decoder's range"),
    ("count", _set("classes.count", 9), "classes.count (9) must equal transformer.num_classes (10)"),
    ("count-float", _set("classes.count", 10.0), "classes.count (10.0) must equal transformer.num_classes (10)"),
    ("null-class", _set("classes.null_class_id", 3), "classes.null_class_id (3) must equal transformer.num_classes"),
    ("head-dim", _set("transformer.head_dim", 8), "transformer.head_dim (8) must equal transformer.dim / "
                                                  "transformer.n_head (64)"),
    ("order", _set("transformer.order", "any"), "transformer.order ('any') must equal the family's order (raster)"),
    ("inputs", _set("graphs.transformer.inputs.3", "past.0.k"),
     "graphs.transformer.inputs must be the names graphs.transformer.io gives for transformer.n_layer=4"),
    ("token-layout-a-list", _set("token_layout", []), "token_layout must be an object"),
]


@pytest.mark.parametrize("case, edit, message", V1_COPIES, ids=[c[0] for c in V1_COPIES])
def test_format_1_copies_must_equal_their_canonical_field(case, edit, message):
    data = _v1()
    edit(data)
    with pytest.raises(ModelDirectoryError, match=re.escape(message)):
        ModelSpec.from_manifest(data)


def test_format_1_any_order_needs_its_query_token():
    data = _v1("anyorder")
    del data["token_layout"]["query_token_id"]
    with pytest.raises(ModelDirectoryError, match=re.escape("token_layout.query_token_id (None) must equal")):
        ModelSpec.from_manifest(data)


def _as_format_1(root: Path, name: str = "default") -> None:
    """`root` (a copy of models/NAME) with its format-1 manifest, the entries of the files edited or
    re-exported since (model card, transformer graph, the form it is in) updated."""
    data = _v1(name)
    for f in ("MODEL_CARD.md", "transformer.onnx"):
        data["files"][f] = {"sha256": sha256_file(root / f), "bytes": (root / f).stat().st_size}
    shipped = json.loads((ROOT / "models" / name / "tessera.json").read_text())["graphs"]["transformer"]
    data["graphs"]["transformer"]["min_onnxruntime"] = shipped["min_onnxruntime"]
    (root / "tessera.json").write_text(json.dumps(data))


def test_a_format_1_directory_runs_the_same_and_reexports_to_format_2(tmp_path, capsys):
    from tessera.cli.main import main

    old = tmp_path / "old"
    shutil.copytree(ROOT / "models" / "anyorder", old)
    _as_format_1(old, "anyorder")
    assert load_manifest(old, verify="full").spec.format_version == 1
    assert main(["info", str(old)]) == 0
    assert f"format       1, read through its upgrade to 2; write it as 2 with: tessera export --from {old} --out NEW" \
        in capsys.readouterr().out
    np.testing.assert_array_equal(Pipeline.load(old, providers="cpu").generate_tokens([3, 7], seed=0),
                                  Pipeline.load(ROOT / "models" / "anyorder", providers="cpu")
                                  .generate_tokens([3, 7], seed=0))
    assert main(["export", "--from", str(old), "--out", str(tmp_path / "new")]) == 0
    capsys.readouterr()
    new = load_manifest(tmp_path / "new", verify="full").spec
    assert json.loads((tmp_path / "new" / "tessera.json").read_text())["format_version"] == 2
    assert new.export == load_manifest(ROOT / "models" / "anyorder", verify="none").spec.export
    for name in ("tokenizer_decoder.onnx", "gpt.safetensors", "MODEL_CARD.md"):
        assert new.files[name] == load_manifest(old, verify="none").spec.files[name]


def test_a_directory_whose_graph_rotates_by_index_is_refused_and_reexports(tmp_path, capsys):
    """The default's format-1 manifest says `multi_query: one-query-per-call` (its graph rotated the tokens of a
    multi-token call by index): loading it is one line naming the re-export, which works and loads."""
    from tessera.cli.main import main

    old = tmp_path / "old"
    shutil.copytree(ROOT / "models" / "default", old)
    _as_format_1(old)
    with pytest.raises(ModelDirectoryError) as e:
        Pipeline.load(old, providers="cpu")
    assert "\n" not in str(e.value) and "tessera export --from DIR --out NEW" in str(e.value)
    assert main(["export", "--from", str(old), "--out", str(tmp_path / "new")]) == 0
    capsys.readouterr()
    np.testing.assert_array_equal(Pipeline.load(tmp_path / "new", providers="cpu").generate_tokens([3, 7], seed=0),
                                  Pipeline.load(ROOT / "models" / "default", providers="cpu")
                                  .generate_tokens([3, 7], seed=0))


def test_a_format_1_directory_without_a_self_test_is_refused_naming_the_reexport(tmp_path):
    old = tmp_path / "old"
    shutil.copytree(ROOT / "models" / "anyorder", old)
    _as_format_1(old, "anyorder")
    _edit(old, lambda d: d["graphs"]["transformer"].pop("self_test"))
    load_manifest(old, verify="full")  # readable: `tessera export --from` can re-export it
    with pytest.raises(ModelDirectoryError, match=re.escape("self_test is missing") + ".*" +
                       re.escape("tessera export --from DIR --out NEW")):
        Pipeline.load(old, providers="cpu")


# --- graphs swapped for another graph --------------------------------------------------------------
def _swap(root: Path, source: str, target: str) -> None:
    """Copy graph `source` over `target` and fix up its checksum so that verification passes."""
    shutil.copy(root / source, root / target)
    _edit(root, lambda d: d["files"].__setitem__(target, {"sha256": sha256_file(root / target),
                                                          "bytes": (root / target).stat().st_size}))


def test_transformer_swapped_for_the_decoder_is_refused_at_load(model_copy):
    _swap(model_copy, "tokenizer_decoder.onnx", "transformer.onnx")
    load_manifest(model_copy, verify="full")  # the checksums are right: only the graph check can tell
    with pytest.raises(ModelDirectoryError, match=r"its transformer graph \(transformer.onnx\) does not match "
                                                  r"the manifest: it lacks the inputs \['input_ids'"):
        Pipeline.load(model_copy, providers="cpu")


def test_decoder_swapped_for_the_encoder_is_refused_at_load(model_copy):
    _swap(model_copy, "tokenizer_encoder.onnx", "tokenizer_decoder.onnx")
    with pytest.raises(ModelDirectoryError, match=r"its tokenizer_decoder graph \(tokenizer_decoder.onnx\) does "
                                                  r"not match the manifest: it lacks the inputs \['codes'\]"):
        Pipeline.load(model_copy, providers="cpu")


def test_encoder_swapped_for_the_decoder_is_refused_when_opened(model_copy):
    _swap(model_copy, "tokenizer_decoder.onnx", "tokenizer_encoder.onnx")
    pipe = Pipeline.load(model_copy, providers="cpu")  # the encoder opens on first use (editing)
    with pytest.raises(ModelDirectoryError, match=r"its tokenizer_encoder graph \(tokenizer_encoder.onnx\)"):
        pipe.tokenizer.encoder


def test_transformer_of_other_dimensions_is_refused_at_load(model_copy, tmp_path):
    """A transformer graph with the same names but 2 heads of 32 instead of 4 of 16."""
    from tessera.export.build import build_gpt
    from tessera.export.config import gpt_preset
    from tessera.export.onnx_export import export_transformer

    other = build_gpt(gpt_preset("GPT-Tiny", n_head=2), None, seed=3)
    export_transformer(other, tmp_path / "other.onnx", kind="fused", target_onnxruntime="1.22")
    shutil.copy(tmp_path / "other.onnx", model_copy / "other.onnx")
    _swap(model_copy, "other.onnx", "transformer.onnx")
    with pytest.raises(ModelDirectoryError, match=r"its transformer graph .* input 'past_key_values.0.key' has size "
                                                  r"2 on axis 1 .* but transformer.n_kv_head says 4"):
        Pipeline.load(model_copy, providers="cpu")


class _Arg:
    def __init__(self, name, type, shape):
        self.name, self.type, self.shape = name, type, shape


class _Session:
    def __init__(self, inputs, outputs):
        self._in, self._out = inputs, outputs

    def get_inputs(self):
        return self._in

    def get_outputs(self):
        return self._out


def test_check_session_names_the_type_and_size_mismatch(tiny_dir):
    from tessera.runtime.transformer import check_transformer_graph

    spec = load_manifest(tiny_dir, verify="none").spec
    io, t = spec.io, spec.transformer

    def session(mask="tensor(bool)", vocab=64, present_type="tensor(float)", extra_input=False):
        ins = [_Arg(io.input_ids, "tensor(int64)", ["batch", "sequence"]),
               _Arg(io.position_ids, "tensor(int64)", ["batch", "sequence"]),
               _Arg(io.attention_mask, mask, ["batch", "sequence", "total"])]
        ins += [_Arg(n, "tensor(float)", ["batch", 4, "past", 16]) for n in io.past_names(t.n_layer)]
        ins += [_Arg("extra", "tensor(float)", [1])] if extra_input else []
        outs = [_Arg(io.logits, "tensor(float)", ["batch", "sequence", vocab])]
        outs += [_Arg(n, present_type, ["batch", 4, "total", 16]) for n in io.present_names(t.n_layer)]
        return _Session(ins, outs)

    check_transformer_graph(session(), spec, "m")  # what the exporter writes
    with pytest.raises(ModelDirectoryError, match=r"input 'attention_mask' is tensor\(float\), expected tensor\(bool\)"):
        check_transformer_graph(session(mask="tensor(float)"), spec, "m")
    with pytest.raises(ModelDirectoryError, match=r"output 'logits' has size 128 on axis 2 .* transformer.vocab_size "
                                                  r"says 64"):
        check_transformer_graph(session(vocab=128), spec, "m")
    with pytest.raises(ModelDirectoryError, match="inputs the manifest does not list: \\['extra'\\]"):
        check_transformer_graph(session(extra_input=True), spec, "m")
    with pytest.raises(ModelDirectoryError, match="past and present KV tensors differ in type"):
        check_transformer_graph(session(present_type="tensor(float16)"), spec, "m")


def test_check_session_order_of_outputs(tiny_dir):
    spec = load_manifest(tiny_dir, verify="none").spec
    graph = spec.graph("tokenizer_decoder")
    sig = [TensorSig("a", ("tensor(float)",), (None,)), TensorSig("b", ("tensor(float)",), (None,))]
    s = _Session([], [_Arg("b", "tensor(float)", [1]), _Arg("a", "tensor(float)", [1])])
    with pytest.raises(ModelDirectoryError, match="in another order"):
        check_session(s, graph, [], sig, "m")


def test_the_manifest_says_which_decoders_a_model_runs(tiny_dir):
    from tessera.models import default_model_dir
    from tessera.runtime import DECODERS, Pipeline

    raster = Pipeline.load(tiny_dir, providers="cpu")
    any_order = Pipeline.load(default_model_dir().parent / "anyorder", providers="cpu")
    assert raster.decoders[0] == "sequential" and "anyorder" not in raster.decoders
    assert any_order.decoders == ("anyorder",)  # its default, and the only one it was trained for
    # each decoder runs some family (the arpg decoder: ARPG models, tests/test_arpg.py)
    assert set(raster.decoders) | set(any_order.decoders) | {"arpg"} == set(DECODERS)
