"""Bad input gets a clear error naming the problem and the fix, never a deep onnxruntime traceback."""
from __future__ import annotations

import json
import shutil

import pytest

from tessera.runtime import InvalidInputError, ModelDirectoryError, Pipeline, ProviderError


@pytest.fixture
def model_copy(tiny_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(tiny_dir, dst)
    return dst


def test_unknown_class_id_and_name(tiny_pipe):
    with pytest.raises(InvalidInputError, match=r"class id 10 is out of range: this model has classes 0..9"):
        tiny_pipe.generate([10])
    with pytest.raises(InvalidInputError, match=r"class id -1 is out of range"):
        tiny_pipe.generate([-1])
    with pytest.raises(InvalidInputError, match=r"unknown class name 'eleven'; valid classes: 0=zero"):
        tiny_pipe.generate(["eleven"])
    with pytest.raises(InvalidInputError, match="at least one class"):
        tiny_pipe.generate([])


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-1), "temperature must be >= 0"),
    (dict(top_k=-3), "top_k must be >= 0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(guidance_scale=float("nan")), "guidance_scale must be >= 0"),
    (dict(num_images_per_class=0), "num_images_per_class must be >= 1"),
])
def test_bad_sampling_options(tiny_pipe, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        tiny_pipe.generate([1], **kwargs)


def test_wrong_directory(tmp_path):
    with pytest.raises(ModelDirectoryError, match="does not exist"):
        Pipeline.load(tmp_path / "missing")
    with pytest.raises(ModelDirectoryError, match="tessera.json is missing"):
        Pipeline.load(tmp_path)


def test_corrupt_manifest(model_copy):
    (model_copy / "tessera.json").write_text("{ not json")
    with pytest.raises(ModelDirectoryError, match="not valid JSON"):
        Pipeline.load(model_copy)


def test_missing_graph_file(model_copy):
    (model_copy / "transformer.onnx").unlink()
    with pytest.raises(ModelDirectoryError, match="transformer.onnx is missing"):
        Pipeline.load(model_copy)


def test_truncated_onnx_file(model_copy):
    path = model_copy / "transformer.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelDirectoryError, match="truncated"):
        Pipeline.load(model_copy, verify="size")
    # Even unchecked, onnxruntime's failure is turned into an actionable message.
    with pytest.raises(ModelDirectoryError, match="could not load transformer.onnx .*re-export"):
        Pipeline.load(model_copy, verify="none")


def test_checksum_mismatch(model_copy):
    path = model_copy / "tokenizer_decoder.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    with pytest.raises(ModelDirectoryError, match="fails its sha256 checksum"):
        Pipeline.load(model_copy)


def test_newer_format_is_refused(model_copy):
    m = json.loads((model_copy / "tessera.json").read_text())
    m["format_version"] = 99
    (model_copy / "tessera.json").write_text(json.dumps(m))
    with pytest.raises(ModelDirectoryError, match="upgrade tessera-ar"):
        Pipeline.load(model_copy)


def test_unavailable_provider(tiny_dir):
    with pytest.raises(ProviderError, match=r"'NoSuchExecutionProvider' is not available.*available: .*CPUExecutionProvider"):
        Pipeline.load(tiny_dir, providers=["NoSuchExecutionProvider"])


def test_auto_providers_end_with_cpu():
    from tessera.runtime.providers import resolve_providers

    assert resolve_providers("auto")[-1] == "CPUExecutionProvider"
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]


def test_export_refuses_existing_dir_and_leaves_nothing_on_failure(tiny_models, tmp_path, monkeypatch):
    from tessera.export import model_dir as md
    from tessera.export.model_dir import ExportError, ExportSpec, write_model_dir

    gpt, vq = tiny_models
    names = [str(i) for i in range(10)]
    existing = tmp_path / "taken"
    existing.mkdir()
    with pytest.raises(ExportError, match="already exists and is a directory without a tessera.json manifest"):
        write_model_dir(gpt, vq, existing, ExportSpec("x", names))

    def broken(*a, **k):
        raise md.parity.ParityError("ONNX export does not match PyTorch: simulated")

    monkeypatch.setattr(md.parity, "check", broken)
    with pytest.raises(md.parity.ParityError):
        write_model_dir(gpt, vq, tmp_path / "new", ExportSpec("x", names))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no partial directory


def test_export_rejects_mismatched_parts(tiny_models, tmp_path):
    from tessera.export.model_dir import ExportError, ExportSpec, write_model_dir

    gpt, vq = tiny_models
    with pytest.raises(ExportError, match="3 class names for 10 classes"):
        write_model_dir(gpt, vq, tmp_path / "m", ExportSpec("x", ["a", "b", "c"]))


def test_model_that_does_not_suit_the_provider_gets_a_warning(tiny_dir, portable_dir):
    """No GPU here: the check itself, on the manifests of both graph kinds."""
    from tessera.runtime import load_manifest
    from tessera.runtime.provider_fit import fit_warning, warn_if_unsuited

    fused = load_manifest(tiny_dir, verify="none").spec.graph("transformer")
    portable = load_manifest(portable_dir, verify="none").spec.graph("transformer")
    with pytest.warns(RuntimeWarning, match="fp16 only"):
        assert "--graph fused --quant fp16" in warn_if_unsuited(fused, "CUDAExecutionProvider", "tiny")
    assert fit_warning(portable, "CUDAExecutionProvider", "tiny") is None  # standard ops run on CUDA
    assert fit_warning(fused, "CPUExecutionProvider", "tiny") is None
    assert "--graph portable" in fit_warning(fused, "DmlExecutionProvider", "tiny")
    from dataclasses import replace

    fp16 = replace(fused, precision="fp16")
    assert "--quant int4" in fit_warning(fp16, "CPUExecutionProvider", "tiny")
