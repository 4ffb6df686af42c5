"""The manifest schema (`tessera.runtime.spec.ModelSpec`): validated at load, written by the exporter.

A hostile or damaged `tessera.json` is one `ModelDirectoryError` naming the field and the fix; a graph
swapped for another graph is refused when it is opened, naming the graph; manifests written before
`graphs.transformer.io` existed still load.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tessera.runtime import ModelDirectoryError, Pipeline, load_manifest
from tessera.runtime.manifest import TokenLayout as ReExportedLayout, sha256_file
from tessera.runtime.spec import GraphIO, ModelSpec, TensorSig, TokenLayout, check_session

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


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


HOSTILE = [
    # shape of the sections
    ("missing-transformer", _drop("transformer"), "lacks the 'transformer' section"),
    ("missing-tokenizer", _drop("tokenizer"), "tokenizer is missing"),
    ("missing-image", _drop("image"), "image is missing"),
    ("grid-a-list", _set("grid", [7, 7]), "grid must be an object, got [7, 7]"),
    ("transformer-null", _set("transformer", None), "transformer must be an object, got None"),
    ("missing-n-layer", _drop("transformer.n_layer"), "transformer.n_layer is missing"),
    # types (a bool is not an int) and ranges
    ("n-layer-str", _set("transformer.n_layer", "2"), "transformer.n_layer must be an int in 1..1024, got '2'"),
    ("n-head-bool", _set("transformer.n_head", True), "transformer.n_head must be an int in 1..1024, got True"),
    ("n-layer-float", _set("transformer.n_layer", 2.0), "transformer.n_layer must be an int in 1..1024, got 2.0"),
    ("n-layer-huge", _set("transformer.n_layer", 10 ** 9),
     "tessera.json: transformer.n_layer must be an int in 1..1024, got 1000000000"),
    ("n-layer-zero", _set("transformer.n_layer", 0), "transformer.n_layer must be an int in 1..1024, got 0"),
    ("vocab-huge", _set("transformer.vocab_size", 10 ** 12), "transformer.vocab_size must be an int in 1..1048576"),
    ("head-dim-huge", _set("transformer.head_dim", 10 ** 6), "transformer.head_dim must be an int in 1..1024"),
    ("classes-huge", _set("transformer.num_classes", 10 ** 7), "transformer.num_classes must be an int in 1..100000"),
    ("grid-300", _set("grid", {"height": 300, "width": 300}), "grid.height must be an int in 1..256, got 300"),
    ("transformer-grid-300", _set("transformer.grid", 300), "transformer.grid must be an int in 1..256, got 300"),
    ("rope-grid-small", _set("transformer.rope_grid", 2), "transformer.rope_grid must be an int in 4..1024, got 2"),
    ("rope-grid-huge", _set("transformer.rope_grid", 10 ** 6), "transformer.rope_grid must be an int in 4..1024"),
    ("image-huge", _set("image.height", 10 ** 6), "image.height must be an int in 1..16384"),
    ("rope-base-nan", _set("transformer.rope_base", float("nan")), "transformer.rope_base must be a finite number"),
    ("codebook-str", _set("tokenizer.codebook_size", "64"), "tokenizer.codebook_size must be an int"),
    ("ch-mult-str", _set("tokenizer.ch_mult", "1,2,2"), "tokenizer.ch_mult must be a list"),
    # generation defaults: finite and in range
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
    ("defaults-a-list", _set("generation_defaults", [1, 2]), "generation_defaults must be an object"),
    # classes
    ("names-count", lambda d: d["classes"]["names"].pop(), "classes.names has 9 names but classes.count is 10"),
    ("name-not-str", _set("classes.names.3", 3), "classes.names[3] must be a string"),
    ("names-a-str", _set("classes.names", "zero one"), "classes.names must be a list"),
    ("count-vs-transformer", lambda d: (d["classes"].update(count=9), d["classes"]["names"].pop()),
     "classes.count (9) must equal transformer.num_classes (10)"),
    ("null-class", _set("classes.null_class_id", 3), "classes.null_class_id must be transformer.num_classes (10)"),
    ("null-class-str", _set("classes.null_class_id", "10"), "classes.null_class_id must be an int"),
    # token layout and cross-checks
    ("class-offset", _set("token_layout.class_token_offset", 0),
     "token_layout.class_token_offset must be transformer.vocab_size (64)"),
    ("layout-vocab", _set("token_layout.vocab_size", 63), "token_layout.vocab_size (63) must equal transformer.vocab_size"),
    ("layout-rope", _set("token_layout.rope_grid", 9), "token_layout.rope_grid (9) must equal transformer.rope_grid (8)"),
    ("vocab-vs-codebook", lambda d: (d["transformer"].update(vocab_size=128), d["token_layout"].update(
        vocab_size=128, class_token_offset=128)), "transformer.vocab_size (128) must equal tokenizer.codebook_size (64)"),
    ("grid-vs-image", _set("image.height", 20), "grid.height (4) must be image.height (20) / tokenizer.downsample (4)"),
    ("grid-vs-transformer", lambda d: (d["grid"].update(height=5), d["image"].update(height=20)),
     "grid.height (5) must equal transformer.grid (4)"),
    ("head-dim-vs-dim", _set("transformer.head_dim", 8), "transformer.head_dim (8) x transformer.n_head (4) must equal"),
    ("kv-heads", _set("transformer.n_kv_head", 3), "transformer.n_kv_head (3) must divide transformer.n_head (4)"),
    ("kv-heads-above", _set("transformer.n_kv_head", 5), "transformer.n_kv_head must be an int in 1..4"),
    # graphs
    ("graphs-missing-transformer", _drop("graphs.transformer"), "graphs.transformer is missing"),
    ("min-ort-garbage", _set("graphs.transformer.min_onnxruntime", "soon"), "graphs.transformer.min_onnxruntime must be"),
    ("kind-unknown", _set("graphs.transformer.kind", "quantum"), "graphs.transformer.kind must be one of 'fused', 'portable'"),
    ("kv-cache-unknown", _set("graphs.transformer.kv_cache", 1), "graphs.transformer.kv_cache must be one of"),
    ("multi-query-unknown", _set("graphs.transformer.multi_query", "all"), "graphs.transformer.multi_query must be one of"),
    ("opset-str", _set("graphs.transformer.opset", "18"), "graphs.transformer.opset must be an int"),
    ("inputs-edited", _set("graphs.transformer.inputs.3", "past.0.k"),
     "graphs.transformer.inputs must be the names graphs.transformer.io gives for transformer.n_layer=2"),
    ("inputs-short", lambda d: d["graphs"]["transformer"]["inputs"].pop(), "graphs.transformer.inputs must be the names"),
    ("outputs-not-list", _set("graphs.transformer.outputs", "logits"), "graphs.transformer.outputs must be a list"),
    ("io-vs-inputs", _io("past_key_names", "past.{layer}.key"),
     "graphs.transformer.inputs must be the names graphs.transformer.io gives"),
    ("io-pattern-no-layer", _io("present_key_names", "present.key"), "graphs.transformer.io.present_key_names must be"),
    ("io-pattern-format", _io("past_key_names", "past_key_values.{layer}.{0}"), "graphs.transformer.io.past_key_names"),
    ("io-name-not-str", _io("logits", 5), "graphs.transformer.io.logits must be a tensor name"),
    ("io-duplicate", _io("past_value_names", "past_key_values.{layer}.key"),
     "graphs.transformer.io must give every input and output a different name"),
    ("io-a-list", _set("graphs.transformer.io", []), "graphs.transformer.io must be an object"),
    ("decoder-two-inputs", _set("graphs.tokenizer_decoder.inputs", ["codes", "x"]), "graphs.tokenizer_decoder.inputs"),
    # the top level
    ("family-unknown", _set("family", "stable-diffusion"), "family is 'stable-diffusion', a model family this runtime"),
    ("conditioning-text", _set("conditioning", {"kind": "text"}), "conditioning.kind must be one of 'class'"),
    ("format-version-bool", _set("format_version", True), "format_version must be an int >= 1, got True"),
    ("name-not-str", _set("name", ["x"]), "name must be a string"),
    ("value-range", _set("image.value_range", [1, -1]), "image.value_range must be [low, high]"),
]


@pytest.mark.parametrize("case, edit, message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_manifest_is_one_error_naming_the_field(model_copy, case, edit, message):
    _edit(model_copy, edit)
    with pytest.raises(ModelDirectoryError, match=re.escape(message)) as e:
        load_manifest(model_copy, verify="none")
    assert "tessera.json" in str(e.value) or "lacks" in str(e.value)
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


# --- round trip, old manifests, the shipped model --------------------------------------------------
def test_round_trip_and_the_exporter_writes_through_the_spec(tiny_dir, portable_dir, batched_dir):
    for d in (tiny_dir, portable_dir, batched_dir):
        spec = load_manifest(d, verify="none").spec
        assert ModelSpec.from_manifest(spec.to_manifest()) == spec
        on_disk = json.loads((d / "tessera.json").read_text())
        assert spec.to_manifest() == on_disk  # the exporter wrote exactly what the spec writes
        assert on_disk["graphs"]["transformer"]["io"] == GraphIO().to_dict()
        assert on_disk["conditioning"] == {"kind": "class"} and spec.conditioning == "class"
        assert set(on_disk) >= {"parity", "exported_by"} and spec.info["parity"] == on_disk["parity"]


def test_the_views_come_from_the_spec(tiny_dir):
    m = load_manifest(tiny_dir, verify="none")
    s = m.spec
    assert m.grid == s.grid == (4, 4) and m.class_names == DIGITS and m.num_classes == 10
    assert m.layout == s.layout == TokenLayout(64, 64, 10, 8) and ReExportedLayout is TokenLayout
    assert m.generation_defaults == {"guidance_scale": 2.0, "temperature": 1.0, "top_k": 16, "top_p": 1.0}
    assert m.transformer["n_layer"] == s.transformer.n_layer == 2 and m.transformer["head_dim"] == 16
    assert s.graph("transformer").kind == "fused" and s.graph("transformer").kv_cache == "shared-buffer"
    assert s.io.inputs(2) == list(s.graph("transformer").inputs)
    assert s.io.layer(1) == ("past_key_values.1.key", "past_key_values.1.value", "present.1.key", "present.1.value")


def test_the_shipped_model_loads_with_full_verification():
    from tessera.runtime import default_model_dir

    m = load_manifest(default_model_dir(), verify="full")
    assert m.spec.family == "llamagen-c2i" and m.spec.io == GraphIO() and m.grid == (7, 7)
    assert ModelSpec.from_manifest(m.spec.to_manifest()) == m.spec


def test_an_old_manifest_without_io_or_min_onnxruntime_loads_and_runs_the_same(model_copy, tiny_pipe):
    def old(d):
        d.pop("conditioning")
        for g in d["graphs"].values():
            g.pop("io", None)
            g.pop("min_onnxruntime", None)
    _edit(model_copy, old)
    m = load_manifest(model_copy, verify="full")  # tessera.json itself is not listed in `files`
    assert m.spec.io == GraphIO() and m.spec.graph("transformer").min_onnxruntime is None
    pipe = Pipeline.load(model_copy, providers="cpu")
    np.testing.assert_array_equal(np.asarray(pipe.generate_tokens([3, 7], seed=0)),
                                  np.asarray(tiny_pipe.generate_tokens([3, 7], seed=0)))


def test_other_io_names_are_honoured(model_copy):
    """The names are read from the manifest, not repeated in the runtime: names the graph does not have
    are refused when the graph is opened."""
    def rename(d):
        io = d["graphs"]["transformer"]["io"]
        io.update(past_key_names="cache.{layer}.k", past_value_names="cache.{layer}.v")
        d["graphs"]["transformer"]["inputs"] = GraphIO(**io).inputs(2)
    _edit(model_copy, rename)
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
    ok = _manifest(gpt, vq, ExportSpec(name="x", class_names=DIGITS), {}, {})
    assert ModelSpec.from_manifest(ok).generation.guidance_scale == 1.0
    with pytest.raises(ExportError, match=re.escape("generation_defaults.top_p must be a number in (0, 1]")):
        _manifest(gpt, vq, ExportSpec(name="x", class_names=DIGITS, generation_defaults={"top_p": 0}), {}, {})


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
    assert set(raster.decoders) | set(any_order.decoders) == set(DECODERS)  # each decoder runs some family
