"""NaN and infinity never pass silently: not into an export, not out of a graph at generation."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from tessera.runtime import Pipeline
from tessera.runtime.errors import NonFiniteOutputError, check_finite


def test_export_refuses_non_finite_weights(tiny_models, tmp_path):
    from tessera.export.model_dir import ExportError, ExportSpec, write_model_dir

    gpt, vq = tiny_models
    bad = copy.deepcopy(gpt)
    with torch.no_grad():
        bad.layers[0].attention.wo.weight[0, 0] = float("nan")
        bad.output.weight[1, 1] = float("inf")
    with pytest.raises(ExportError, match="2 weight tensor.*NaN or infinite.*layers.0.attention.wo.weight"):
        write_model_dir(bad, vq, tmp_path / "m", ExportSpec("x", [str(i) for i in range(10)]))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_parity_check_fails_on_a_non_finite_measurement(value):
    from tessera.export import parity

    transformer = {"max_abs_logit_error": value, "by_phase": {}, "relative_logit_error": value,
                   "argmax_agreement": value}
    tokenizer = {"decoder_max_abs_error": value, "encoder_code_agreement": value}
    for precision in ("fp32", "int4"):
        with pytest.raises(parity.ParityError):
            parity.check(transformer, None, precision)
        with pytest.raises(parity.ParityError):
            parity.check(None, tokenizer, precision)


def test_check_finite():
    a = np.zeros((2, 1, 8), np.float32)
    assert check_finite(a, "transformer") is a
    a[1, 0, 3] = np.nan
    with pytest.raises(NonFiniteOutputError, match="the transformer graph produced NaN"):
        check_finite(a, "transformer")


class _NaNSession:
    """Stands in for a graph whose weights are NaN (checksums valid): its float outputs are NaN."""

    def __init__(self, session):
        self._session = session

    def __getattr__(self, name):
        return getattr(self._session, name)

    def run(self, names, feeds, *args):
        return [np.full_like(o, np.nan) if o.dtype.kind == "f" else o for o in self._session.run(names, feeds, *args)]


def test_nan_outputs_stop_generation_and_decoding_with_a_clear_error(portable_dir):
    pipe = Pipeline.load(portable_dir, providers="cpu", max_concurrency=1)
    (runner,) = pipe.model.runners.runners  # the portable graph's runner calls session.run
    runner.session = _NaNSession(runner.session)
    with pytest.raises(NonFiniteOutputError, match="the transformer graph produced NaN"):
        pipe.generate_tokens([1], seed=0)
    pipe.tokenizer.decode_session = _NaNSession(pipe.tokenizer.decode_session)
    with pytest.raises(NonFiniteOutputError, match="the tokenizer_decoder graph produced NaN"):
        pipe.decode(np.zeros((1, 4, 4), np.int64))


def test_a_real_graph_with_nan_weights_and_valid_checksums(tiny_dir, tmp_path):
    """The probe from the hardening issue: NaN weights in a graph whose checksums were re-made."""
    import hashlib
    import json
    import shutil

    import onnx
    from onnx import numpy_helper

    d = tmp_path / "nan"
    shutil.copytree(tiny_dir, d)
    model = onnx.load(str(d / "transformer.onnx"))
    for init in model.graph.initializer:
        if init.name == "output":  # the lm_head weights
            init.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(init), np.nan), "output"))
    onnx.save(model, str(d / "transformer.onnx"))
    manifest = json.loads((d / "tessera.json").read_text())
    data = (d / "transformer.onnx").read_bytes()
    manifest["files"]["transformer.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (d / "tessera.json").write_text(json.dumps(manifest))
    with pytest.raises(NonFiniteOutputError, match="transformer"):  # the load's self-test runs the graph
        Pipeline.load(d, providers="cpu", verify="full")
    from tessera.runtime.manifest import load_manifest  # every call checks, not only the load's probe
    from tessera.runtime.session import open_session
    from tessera.runtime.transformer import TransformerRunner

    m = load_manifest(d, verify="full")
    runner = TransformerRunner(open_session(m.graph_path("transformer"), ["CPUExecutionProvider"]), m)
    runner.start(1, 1)
    with pytest.raises(NonFiniteOutputError, match="transformer"):
        runner(np.array([[m.layout.class_ids(3)]]), np.zeros((1, 1), np.int64), np.ones((1, 1, 1), bool))
