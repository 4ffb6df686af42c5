"""One onnxruntime flavour per install, providers chosen by what the machine has, options passed through."""
from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
import types
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from tessera.runtime import backend, providers, session
from tessera.runtime.errors import InvalidInputError, ModelDirectoryError, ProviderError

ROOT = Path(__file__).resolve().parents[1]
DECODER = ROOT / "models" / "default" / "tokenizer_decoder.onnx"
REAL_SESSION = backend.ort.InferenceSession


def fake_installed(monkeypatch, names):
    """Make importlib.metadata report exactly `names` as installed distributions (others pass through)."""
    real = metadata.version

    def version(name):
        if name in backend.FLAVOURS:
            if name in names:
                return "1.22.0"
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(backend.metadata, "version", version)


# --- flavours ------------------------------------------------------------------------------------
@pytest.mark.parametrize("names", [[], ["onnxruntime"], ["onnxruntime-gpu"], ["onnxruntime", "onnxruntime-gpu"],
                                   ["onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-qnn"]])
def test_installed_flavours_reads_metadata(monkeypatch, names):
    fake_installed(monkeypatch, names)
    assert backend.installed_flavours() == names


def test_real_install_has_one_flavour():
    assert backend.installed_flavours() == ["onnxruntime"]
    assert backend.ort is sys.modules["onnxruntime"]


def test_no_onnxruntime_says_which_extra(monkeypatch):
    fake_installed(monkeypatch, [])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(ImportError) as info:
        backend.load_onnxruntime()
    err = info.value
    assert isinstance(err, backend.OnnxRuntimeMissingError)
    text = str(err)
    assert "\n" not in text
    assert "onnxruntime is not installed" in text
    assert "pip install 'tessera-ar[cpu]'" in text and "[cuda]" in text and "[directml]" in text


def test_one_flavour_loads_without_warning(monkeypatch):
    fake_installed(monkeypatch, ["onnxruntime"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend.load_onnxruntime() is sys.modules["onnxruntime"]


def test_two_flavours_warn_with_the_fix(monkeypatch):
    fake_installed(monkeypatch, ["onnxruntime", "onnxruntime-gpu"])
    with pytest.warns(RuntimeWarning) as record:
        module = backend.load_onnxruntime()
    assert module is sys.modules["onnxruntime"]
    assert len(record) == 1
    text = str(record[0].message)
    assert "\n" not in text
    assert "onnxruntime, onnxruntime-gpu" in text
    assert "pip uninstall -y onnxruntime && pip install --force-reinstall onnxruntime-gpu" in text


@pytest.mark.parametrize("names, fix", [
    (["onnxruntime-gpu"], "pip install --force-reinstall onnxruntime-gpu"),
    (["onnxruntime", "onnxruntime-gpu"], "pip uninstall -y onnxruntime && pip install --force-reinstall onnxruntime-gpu"),
    ([], "pip install 'tessera-ar[cpu]'"),
])
def test_broken_module_is_detected(monkeypatch, names, fix):
    fake_installed(monkeypatch, names)
    monkeypatch.setitem(sys.modules, "onnxruntime", types.ModuleType("onnxruntime"))  # no InferenceSession
    with pytest.raises(backend.OnnxRuntimeMissingError) as info:
        backend.load_onnxruntime()
    assert fix in str(info.value)
    assert "\n" not in str(info.value)


def test_broken_module_in_a_fresh_process(tmp_path):
    """What is left after `pip uninstall` of one of two flavours: a package without InferenceSession."""
    (tmp_path / "onnxruntime").mkdir()
    (tmp_path / "onnxruntime" / "__init__.py").write_text("__version__ = '1.22.0'\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", "from tessera.runtime import Pipeline"], capture_output=True, text=True,
                       env=env)
    assert r.returncode != 0
    assert "OnnxRuntimeMissingError" in r.stderr
    assert "has no InferenceSession" in r.stderr
    assert "pip install --force-reinstall onnxruntime" in r.stderr
    assert "AttributeError" not in r.stderr


# --- versions ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("1.22.2", (1, 22, 2)), ("1.22.2.post3", (1, 22, 2)), ("1.24.0.dev20250101", (1, 24, 0)),
    ("1.24.0.dev", (1, 24, 0)), ("1.22.0rc1", (1, 22, 0)), ("1.22.2+cu118", (1, 22, 2)), ("1.17", (1, 17)),
    ("", ()),
])
def test_parse_version(text, expected):
    assert backend.parse_version(text) == expected


def test_onnxruntime_version(monkeypatch):
    real = backend.onnxruntime_version()
    assert real == tuple(int(p) for p in backend.ort.__version__.split(".")[:3])
    assert real >= (1, 22)
    monkeypatch.setattr(backend.ort, "__version__", "1.22.2.post3")
    assert backend.onnxruntime_version() == (1, 22, 2)
    assert backend.onnxruntime_version() < (1, 22, 10)


# --- the probe model -----------------------------------------------------------------------------
def test_probe_model_is_what_its_comment_says():
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    rebuilt = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8, producer_name="")
    embedded = onnx.load_from_string(providers.PROBE_MODEL)
    onnx.checker.check_model(embedded, full_check=True)
    assert embedded == rebuilt
    sess = REAL_SESSION(providers.PROBE_MODEL, providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"x": np.array([1.5], np.float32)})[0], [3.0])


# --- providers="auto" ----------------------------------------------------------------------------
class Spy:
    """Counts the sessions created through onnxruntime.InferenceSession."""

    def __init__(self, monkeypatch, factory=None):
        self.calls = []
        self.factory = factory or REAL_SESSION
        monkeypatch.setattr(backend.ort, "InferenceSession", self)

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.factory(*args, **kwargs)


class DeviceSession:
    """A session whose accelerator is really there (it keeps the provider and computes x + x)."""

    result = 2.0

    def __init__(self, model, sess_options=None, providers=None, **kwargs):
        self.providers = list(providers)

    def get_providers(self):
        return self.providers

    def run(self, names, feeds):
        return [np.full(1, self.result, np.float32)]


@pytest.fixture
def fresh_probes(monkeypatch):
    monkeypatch.setattr(providers, "_PROBED", {})


def test_auto_skips_a_listed_provider_that_falls_back(monkeypatch, fresh_probes):
    # onnxruntime-gpu on a machine without a GPU: CUDA is listed, but a session runs on the CPU.
    monkeypatch.setattr(providers, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    spy = Spy(monkeypatch)  # the real CPU build: CUDA is dropped from the probe session
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider is in this onnxruntime build but cannot run"):
        assert providers.resolve_providers("auto") == ["CPUExecutionProvider"]
    assert len(spy.calls) == 1
    assert spy.calls[0][1]["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers.probe_provider("cuda") is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert providers.resolve_providers("auto") == ["CPUExecutionProvider"]  # cached, warned once
    assert len(spy.calls) == 1


def test_auto_keeps_a_provider_that_really_runs(monkeypatch, fresh_probes):
    monkeypatch.setattr(providers, "available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "AzureExecutionProvider",
                                 "CPUExecutionProvider"])
    spy = Spy(monkeypatch, DeviceSession)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert providers.resolve_providers("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert [c[1]["providers"][0] for c in spy.calls] == ["CUDAExecutionProvider"]  # TensorRT is never automatic


def test_auto_drops_a_provider_that_computes_wrong(monkeypatch, fresh_probes):
    monkeypatch.setattr(providers, "available_providers", lambda: ["DmlExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(DeviceSession, "result", 0.0)
    Spy(monkeypatch, DeviceSession)
    with pytest.warns(RuntimeWarning, match="DmlExecutionProvider"):
        assert providers.resolve_providers("auto") == ["CPUExecutionProvider"]


def test_auto_on_cpu_only(monkeypatch, fresh_probes):
    monkeypatch.setattr(providers, "available_providers", lambda: ["CPUExecutionProvider"])
    spy = Spy(monkeypatch)
    assert providers.resolve_providers("auto") == ["CPUExecutionProvider"]
    assert providers.resolve_providers(None) == ["CPUExecutionProvider"]
    assert spy.calls == []


def test_auto_on_this_machine():
    assert providers.resolve_providers("auto") == ["CPUExecutionProvider"]  # Azure is listed, never chosen


def test_aliases():
    for alias, full in [("openvino", "OpenVINOExecutionProvider"), ("qnn", "QNNExecutionProvider"),
                        ("webgpu", "WebGpuExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider"),
                        ("CUDA", "CUDAExecutionProvider"), ("dml", "DmlExecutionProvider")]:
        assert providers.full_name(alias) == full
    assert "TensorrtExecutionProvider" not in providers.AUTO_ORDER
    assert providers.AUTO_ORDER[-1] == "CPUExecutionProvider"


# --- explicit providers that are not there ---------------------------------------------------------
@pytest.mark.parametrize("request_, present, wanted, unwanted", [
    ("cuda", ["onnxruntime"], ["pip uninstall -y onnxruntime && pip install 'tessera-ar[cuda]'", "onnxruntime-gpu",
                               "available: CPUExecutionProvider"], []),
    ("cuda", [], ["pip install 'tessera-ar[cuda]'"], ["uninstall"]),
    ("openvino", ["onnxruntime"], ["pip install 'tessera-ar[openvino]'", "onnxruntime-openvino"], []),
    ("DmlExecutionProvider", ["onnxruntime"], ["pip install 'tessera-ar[directml]'"], []),
    ("rocm", ["onnxruntime"], ["pip install 'tessera-ar[rocm]'"], []),
    ("migraphx", ["onnxruntime"], ["pip install 'tessera-ar[migraphx]'"], []),
    ("qnn", ["onnxruntime"], ["pip install 'tessera-ar[qnn]'"], []),
    ("cuda", ["onnxruntime", "onnxruntime-gpu"],
     ["pip uninstall -y onnxruntime && pip install --force-reinstall onnxruntime-gpu"], []),
])
def test_unavailable_provider_names_the_extra(monkeypatch, request_, present, wanted, unwanted):
    monkeypatch.setattr(providers, "available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(providers, "installed_flavours", lambda: list(present))
    with pytest.raises(ProviderError) as info:
        providers.resolve_providers(request_)
    text = str(info.value)
    assert "is not available" in text
    for w in wanted:
        assert w in text
    for u in unwanted:
        assert u not in text


def test_available_explicit_provider_is_not_probed(monkeypatch, fresh_probes):
    monkeypatch.setattr(providers, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    spy = Spy(monkeypatch)
    assert providers.resolve_providers(["cuda", "cpu"]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert spy.calls == []


# --- open_session: fallback warning, provider and session options ---------------------------------
def test_silent_fallback_warns_and_reports_what_runs():
    with pytest.warns(RuntimeWarning, match=r"asked for CUDAExecutionProvider, CPUExecutionProvider.*"
                                            r"runs on CPUExecutionProvider"):
        sess = session.open_session(DECODER, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert session.active_provider(sess) == "CPUExecutionProvider"


def test_session_options_dict_passes_through(monkeypatch):
    spy = Spy(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        sess = session.open_session(DECODER, ["CPUExecutionProvider"], session_options={
            "intra_op_num_threads": 1, "session.intra_op.allow_spinning": "0"})
    opts = spy.calls[0][1]["sess_options"]
    assert opts.intra_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.log_severity_level == 3
    assert session.active_provider(sess) == "CPUExecutionProvider"
    feed = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.int64)
            for i in sess.get_inputs()}
    assert sess.run(None, feed)[0].size > 0


def test_session_options_from_strings():
    """The command line gives every value as a string."""
    opts = session.build_session_options(2, session.parse_key_values([
        "graph_optimization_level=ORT_ENABLE_BASIC", "enable_mem_pattern=false", "inter_op_num_threads=2",
        "execution_mode=parallel", "session.use_env_allocators=1"]))
    ort = backend.ort
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert opts.enable_mem_pattern is False
    assert opts.inter_op_num_threads == 2 and opts.intra_op_num_threads == 2
    assert opts.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert opts.get_session_config_entry("session.use_env_allocators") == "1"
    assert session.build_session_options(None, {"graph_optimization_level": 0}).graph_optimization_level == \
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def test_session_options_object_is_used(monkeypatch):
    ort = backend.ort
    spy = Spy(monkeypatch)
    mine = ort.SessionOptions()
    mine.enable_profiling = False
    session.open_session(DECODER, ["CPUExecutionProvider"], threads=3, session_options=mine)
    assert spy.calls[0][1]["sess_options"] is mine
    assert mine.log_severity_level == 3 and mine.intra_op_num_threads == 3
    loud = ort.SessionOptions()
    loud.log_severity_level = 1
    loud.intra_op_num_threads = 2
    session.open_session(DECODER, ["CPUExecutionProvider"], threads=3, session_options=loud)
    assert loud.log_severity_level == 1 and loud.intra_op_num_threads == 2


@pytest.mark.parametrize("options, key", [
    ({"intra_op_threads": 1}, "intra_op_threads"),
    ({"intra_op_num_threads": "many"}, "intra_op_num_threads"),
    ({"intra_op_num_threads": 1.5}, "intra_op_num_threads"),
    ({"graph_optimization_level": "fastest"}, "graph_optimization_level"),
    ({"graph_optimization_level": 7}, "graph_optimization_level"),
    ({"enable_mem_pattern": "maybe"}, "enable_mem_pattern"),
    ({"add_session_config_entry": "x"}, "add_session_config_entry"),
    ({"session.intra_op.allow_spinning": [0]}, "session.intra_op.allow_spinning"),
])
def test_bad_session_option_names_the_key(options, key):
    with pytest.raises(InvalidInputError, match=key):
        session.open_session(DECODER, ["CPUExecutionProvider"], session_options=options)


def test_bad_session_options_type():
    with pytest.raises(InvalidInputError, match="session_options"):
        session.build_session_options(None, ["intra_op_num_threads=1"])


def test_provider_options_pass_through(monkeypatch):
    spy = Spy(monkeypatch)
    sess = session.open_session(DECODER, ["CPUExecutionProvider"], provider_options={
        "cpu": {"arena_extend_strategy": "kSameAsRequested"}, "cuda": {"device_id": 1}})
    kwargs = spy.calls[0][1]
    assert kwargs["providers"] == ["CPUExecutionProvider"]
    assert kwargs["provider_options"] == [{"arena_extend_strategy": "kSameAsRequested"}]  # cuda's: not running
    assert "CPUExecutionProvider" in sess.get_provider_options()


def test_provider_options_align_with_providers():
    got = session.build_provider_options(
        ["CUDAExecutionProvider", "CPUExecutionProvider"],
        {"CUDAExecutionProvider": {"device_id": 1, "cudnn_conv_use_max_workspace": True}})
    assert got == [{"use_tf32": "0", "device_id": "1", "cudnn_conv_use_max_workspace": "1"}, {}]
    assert session.build_provider_options(["CPUExecutionProvider"], None) is None
    assert session.build_provider_options(["CPUExecutionProvider"], {"cuda": {"device_id": 0}}) is None


def test_cuda_computes_fp32_as_the_cpu_unless_told_otherwise():
    """TF32 put fp32 self-tests 0.2% off on an H200: CUDA gets use_tf32=0 by default, the caller's value wins."""
    cuda_cpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert session.build_provider_options(cuda_cpu, None) == [{"use_tf32": "0"}, {}]
    assert session.build_provider_options(cuda_cpu, {"cuda": {"use_tf32": 1}}) == [{"use_tf32": "1"}, {}]


@pytest.mark.parametrize("provider, kv, device", [
    ("CUDAExecutionProvider", np.float16, "cuda"),   # CUDA's GroupQueryAttention reads the cache where it lies
    ("CUDAExecutionProvider", np.float32, "cpu"),    # no fp32 kernel: attention runs on the CPU, so the cache too
    ("CPUExecutionProvider", np.float16, "cpu"),
    ("DmlExecutionProvider", np.float16, "cpu"),
])
def test_the_kv_cache_lives_where_attention_runs(provider, kv, device):
    from tessera.runtime.transformer import kv_device

    assert kv_device(provider, kv) == device


@pytest.mark.parametrize("options, word", [
    ({"nosuch": {"a": 1}}, "nosuch"),
    ({"cpu": "arena=1"}, "cpu"),
    ({"cuda": {"device_id": [0]}}, "device_id"),
    ({"cuda": {"device_id": None}}, "device_id"),
    ({"cuda": {3: "x"}}, "3"),
])
def test_bad_provider_options(options, word):
    with pytest.raises(InvalidInputError, match=word):
        session.open_session(DECODER, ["CPUExecutionProvider"], provider_options=options)


def test_missing_graph_is_still_a_model_directory_error(tmp_path):
    with pytest.raises(ModelDirectoryError, match="missing"):
        session.open_session(tmp_path / "nope.onnx", ["CPUExecutionProvider"], session_options={"intra_op_num_threads": 1})
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelDirectoryError, match="corrupt"):
        session.open_session(bad, ["CPUExecutionProvider"], session_options={"intra_op_num_threads": 1})


# --- parse_key_values ---------------------------------------------------------------------------
def test_parse_key_values():
    assert session.parse_key_values(["device_id=1", "a.b=x=y", "empty=", " k = v "]) == \
        {"device_id": "1", "a.b": "x=y", "empty": "", "k": "v"}
    assert session.parse_key_values([]) == {} and session.parse_key_values(None) == {}


@pytest.mark.parametrize("entry", ["novalue", "=1", "  =x"])
def test_parse_key_values_malformed(entry):
    with pytest.raises(InvalidInputError, match=repr(entry).replace("[", r"\[")):
        session.parse_key_values(["ok=1", entry])


# --- packaging ----------------------------------------------------------------------------------
def test_setup_cfg_one_flavour_per_extra():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    base = cfg["options"]["install_requires"].split()
    assert not any(r.startswith("onnxruntime") for r in base)
    extras = {k: [line.strip() for line in v.splitlines() if line.strip()]
              for k, v in cfg["options.extras_require"].items()}
    assert "gpu" not in extras
    expected = {"cpu": "onnxruntime>=1.22", "cuda": "onnxruntime-gpu[cuda,cudnn]>=1.22",
                "rocm": "onnxruntime-rocm>=1.22", "migraphx": "onnxruntime-migraphx>=1.22",
                "directml": "onnxruntime-directml>=1.22", "openvino": "onnxruntime-openvino>=1.22",
                "qnn": "onnxruntime-qnn>=1.22,<2"}

    def name(req: str) -> str:
        return re.split(r"[\[<>=~!;\s]", req)[0]

    for extra, req in expected.items():
        assert extras[extra][0] == req
        assert all(";" in more for more in extras[extra][1:])  # only platform-specific companions
        assert backend.FLAVOURS[name(req)] == extra
    for extra, reqs in extras.items():
        flavours = [r for r in reqs if name(r) in backend.FLAVOURS]
        assert len(flavours) <= 1, (extra, flavours)
    assert "onnxruntime>=1.22" in extras["test"] and "onnxruntime>=1.22" in extras["bench"]
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert backend.parse_version(pins["onnxruntime"]) >= (1, 22)


@pytest.mark.parametrize("cpu_passes", [True, False])
def test_a_self_test_failing_only_on_the_accelerator_blames_the_provider(monkeypatch, cpu_passes):
    """On an H200, fused fp32 graphs failed the self-test on CUDA (126% off) and passed on the CPU: that is the
    provider's fault, and the error must say so instead of telling the user to re-export a good model."""
    from tessera.runtime import Pipeline, loaded

    calls = []

    def verify(entry, run, layout, grid, name):
        calls.append(name)
        if len(calls) == 1 or not cpu_passes:  # the first run is the accelerator's
            raise ModelDirectoryError(f"{name}: the transformer graph does not compute what its manifest describes "
                                      "(self-test logits differ by 126.4% of their scale, allowed 0.1%): re-export")
        return 0.0

    monkeypatch.setattr(loaded, "verify_self_test", verify)
    monkeypatch.setattr(loaded, "active_provider", lambda sess: "CUDAExecutionProvider")
    error = ProviderError if cpu_passes else ModelDirectoryError
    with pytest.raises(error) as caught:
        Pipeline.load(providers="cpu")
    assert len(calls) == 2
    assert ("CUDAExecutionProvider computes its fused" in str(caught.value)) == cpu_passes
    assert "126.4%" in str(caught.value)
