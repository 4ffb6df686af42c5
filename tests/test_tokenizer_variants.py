"""Tokenizer decoder variants (--tokenizer-quant fp16 / int8): export, PSNR measured and bounded,
recorded in the manifest, loaded by the runtime; old manifests still load; the low-memory pipeline
gives the same images. Tiny random-weight fixture models."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tessera.cli.main import main


def _manifest(d):
    return json.loads((d / "tessera.json").read_text())


@pytest.fixture(scope="module")
def decoder_variants(tiny_dir, tmp_path_factory):
    """int4 transformer with an int8 decoder, and fp32 with an fp16 decoder, from the tiny model."""
    root = tmp_path_factory.mktemp("decoders")
    out = {}
    for quant, tok in (("int4", "int8"), ("fp32", "fp16")):
        d = root / f"{quant}-{tok}"
        assert main(["export", "-q", "--from", str(tiny_dir), "--out", str(d), "--quant", quant,
                     "--tokenizer-quant", tok]) == 0
        out[tok] = d
    return out


@pytest.mark.parametrize("tok, ops", [("int8", {"QuantizeLinear", "DequantizeLinear"}), ("fp16", {"Cast"})])
def test_variant_graph_and_manifest(decoder_variants, tok, ops):
    d = decoder_variants[tok]
    graph = onnx.load(str(d / "tokenizer_decoder.onnx"), load_external_data=False)
    assert ops <= {n.op_type for n in graph.graph.node}
    entry = _manifest(d)["graphs"]["tokenizer_decoder"]
    assert entry["precision"] == tok
    assert entry["min_psnr_db"] == {"int8": 30.0, "fp16": 40.0}[tok]
    assert entry["psnr_db"] >= entry["min_psnr_db"]
    assert _manifest(d)["graphs"]["tokenizer_encoder"]["precision"] == "fp32"  # editing's graph untouched
    from tessera.runtime.manifest import load_manifest

    spec = load_manifest(d).spec.graph("tokenizer_decoder")
    assert (spec.precision, spec.psnr_db, spec.min_psnr_db) == (tok, entry["psnr_db"], entry["min_psnr_db"])


def test_variant_loads_and_decodes_close_to_fp32(decoder_variants, tiny_dir, tiny_pipe):
    from tessera.export.tokenizer_quant import psnr_db
    from tessera.runtime.pipeline import Pipeline

    tokens = tiny_pipe.generate_tokens([3, 7], seed=0)
    reference = tiny_pipe.tokenizer.decode(tokens)
    for tok, d in decoder_variants.items():
        pipe = Pipeline.load(d, providers="cpu")
        assert pipe.tokenizer.precision == tok
        images = pipe.tokenizer.decode(tokens)
        assert images.dtype == np.float32 and images.shape == reference.shape
        assert psnr_db(images, reference) >= 25.0  # the probe's bound, give or take other codes
        assert len(pipe.generate([3], seed=0)) == 1


def test_too_strict_bound_fails_with_one_line(tiny_dir, tmp_path, capsys):
    out = tmp_path / "strict"
    assert main(["export", "-q", "--from", str(tiny_dir), "--out", str(out), "--quant", "int4",
                 "--tokenizer-quant", "int8", "--tokenizer-min-psnr", "199"]) == 1
    err = capsys.readouterr().err
    assert "PSNR" in err and "below the bound 199 dB" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("args, words", [
    (["--tokenizer-quant", "int4"], "invalid choice"),
    (["--tokenizer-min-psnr", "30"], "--tokenizer-quant fp16 or int8"),
    (["--tokenizer-quant", "int8", "--tokenizer-min-psnr", "-1"], "0..200"),
    (["--quant", "all", "--tokenizer-quant", "int8"], "one by one"),
])
def test_bad_tokenizer_options(tiny_dir, tmp_path, capsys, args, words):
    code = main(["export", "-q", "--from", str(tiny_dir), "--out", str(tmp_path / "x"), *args])
    assert code != 0
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_psnr_fields_are_validated(tiny_dir, tmp_path):
    import shutil

    from tessera.runtime.errors import ModelDirectoryError
    from tessera.runtime.manifest import load_manifest

    d = tmp_path / "m"
    shutil.copytree(tiny_dir, d)
    data = _manifest(d)
    data["graphs"]["tokenizer_decoder"]["psnr_db"] = "high"
    (d / "tessera.json").write_text(json.dumps(data))
    with pytest.raises(ModelDirectoryError, match="graphs.tokenizer_decoder.psnr_db must be a PSNR"):
        load_manifest(d, verify="none").spec


def test_old_manifest_without_psnr_loads(tiny_dir):
    """A manifest written before the fields existed (every fp32 export) has none: still valid."""
    from tessera.runtime.manifest import load_manifest

    entry = _manifest(tiny_dir)["graphs"]["tokenizer_decoder"]
    assert "psnr_db" not in entry and "min_psnr_db" not in entry
    spec = load_manifest(tiny_dir).spec.graph("tokenizer_decoder")
    assert spec.psnr_db is None and spec.min_psnr_db is None and spec.precision == "fp32"


def test_tiled_decode_equals_untiled_when_one_tile_covers_the_grid(tiny_pipe):
    tokens = tiny_pipe.generate_tokens([1], seed=2)
    grid = tokens.shape[1]
    assert np.array_equal(np.asarray(tiny_pipe.decode(tokens, tile=grid)[0]), np.asarray(tiny_pipe.decode(tokens)[0]))


def test_low_memory_pipeline_gives_the_same_images(tiny_dir, tiny_pipe):
    """One graph at a time: the transformer is closed before decoding and reopened for the next
    generation; the images are those of the default pipeline."""
    from tessera.runtime.pipeline import Pipeline

    pipe = Pipeline.load(tiny_dir, providers="cpu", low_memory=True)
    assert pipe.tokenizer._decode_session is None  # checked at load, then closed
    for seed in (0, 1):
        images = pipe.generate([3, 7], seed=seed)
        assert pipe.model.runners is None and pipe.tokenizer._decode_session is not None  # the decode session's turn
        expected = tiny_pipe.generate([3, 7], seed=seed)
        assert [np.asarray(a).tobytes() for a in images] == [np.asarray(b).tobytes() for b in expected]
    tokens = pipe.generate_tokens([5], seed=4)  # reopened on demand, the decode session closed
    assert pipe.model.runners is not None and pipe.tokenizer._decode_session is None
    assert np.array_equal(tokens, tiny_pipe.generate_tokens([5], seed=4))
    assert pipe.transformer.session is not None


def test_cli_low_memory_flag(tiny_dir, tmp_path, monkeypatch):
    from tessera.runtime.pipeline import Pipeline

    seen = []
    load = Pipeline.load.__func__
    monkeypatch.setattr(Pipeline, "load", classmethod(lambda cls, *a, **k: seen.append(k["low_memory"]) or
                                                      load(cls, *a, **k)))
    images = {}
    for flags in ([], ["--low-memory"], ["--no-low-memory"], ["--preview-dir", str(tmp_path / "frames")]):
        out = tmp_path / f"x{len(images)}.png"
        assert main(["generate", "3", "--model", str(tiny_dir), *flags, "--out", str(out), "-q"]) == 0
        images[tuple(flags)] = out.read_bytes()
    # generate: on by default (one generation), off when asked or when previews decode mid-generation
    assert seen == [True, True, False, None]
    assert len(set(images.values())) == 1  # the same image either way


def test_low_memory_from_the_environment(tiny_dir, monkeypatch):
    from tessera.runtime.pipeline import Pipeline

    monkeypatch.setenv("TESSERA_LOW_MEMORY", "1")
    assert Pipeline.load(tiny_dir, providers="cpu").low_memory
    assert not Pipeline.load(tiny_dir, providers="cpu", low_memory=False).low_memory
    monkeypatch.setenv("TESSERA_LOW_MEMORY", "0")
    assert not Pipeline.load(tiny_dir, providers="cpu").low_memory
