"""Plugin execution providers (onnxruntime-ep-* packages, onnxruntime >= 1.23): discovery, registration,
resolution, auto selection by onnxruntime's device discovery, and sessions through add_provider_for_devices.

Most tests use fakes (distributions, the plugin module, onnxruntime's plugin functions). The last test runs a
real plugin EP when one is installed and onnxruntime lists a device for it; it is skipped otherwise.
"""
from __future__ import annotations

import importlib.machinery
import sys
import types
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tessera.runtime import backend, providers, session
from tessera.runtime.errors import InvalidInputError, ProviderError

ROOT = Path(__file__).resolve().parents[1]
DECODER = ROOT / "models" / "default" / "tokenizer_decoder.onnx"
ort = backend.ort
REAL_SESSION_OPTIONS = ort.SessionOptions
WEBGPU = "WebGpuExecutionProvider"


class FakeDist:
    """What importlib.metadata.distributions() yields, reduced to what discovery reads."""

    def __init__(self, name, version="0.4.0", top_level=None):
        self.metadata = {"Name": name}
        self.version = version
        self._top = top_level

    def read_text(self, filename):
        return self._top if filename == "top_level.txt" else None


def fake_module(monkeypatch, name, ep_names, library="/plugins/libfake.so", broken=False):
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)

    def get_library_path():
        if broken:
            raise FileNotFoundError(f"plugin library not found at {library}")
        return library

    module.get_library_path = get_library_path
    module.get_ep_name = lambda: ep_names[0]
    module.get_ep_names = lambda: list(ep_names)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def device(ep_name, kind="GPU", vendor="Fake"):
    return SimpleNamespace(ep_name=ep_name, ep_vendor=vendor, device=SimpleNamespace(type=SimpleNamespace(name=kind)))


class FakeOrt:
    """onnxruntime's plugin API, faked: register_execution_provider_library adds the devices in `offers`
    (ep name -> devices) of the EPs the registered module provides; get_ep_devices lists the CPU and those."""

    def __init__(self, monkeypatch, offers=None, fail=None):
        self.registered = []
        self.devices = [device("CPUExecutionProvider", "CPU", "Microsoft")]
        self.offers = offers or {}
        self.fail = fail
        monkeypatch.setattr(ort, "register_execution_provider_library", self.register, raising=False)
        monkeypatch.setattr(ort, "get_ep_devices", lambda: list(self.devices), raising=False)

    def register(self, registration_name, library_path):
        if self.fail is not None:
            raise self.fail
        self.registered.append((registration_name, library_path))
        for devices in self.offers.get(library_path, []):
            self.devices.append(devices)


class FakeOptions(REAL_SESSION_OPTIONS):
    """A real SessionOptions that records add_provider_for_devices instead of needing real OrtEpDevices."""

    def __init__(self):
        super().__init__()
        self.added = []

    def add_provider_for_devices(self, devices, options):
        self.added.append((list(devices), dict(options)))

    def has_providers(self):
        return bool(self.added)


class FakeSession:
    """An InferenceSession that runs on the devices put in its options (the probe computes x + x)."""

    calls: list = []

    def __init__(self, model, sess_options=None, providers=None, **kwargs):
        FakeSession.calls.append((model, sess_options, providers, kwargs))
        added = [d.ep_name for devices, _ in getattr(sess_options, "added", []) for d in devices]
        self.providers = list(providers) if providers else list(dict.fromkeys([*added, "CPUExecutionProvider"]))

    def get_providers(self):
        return self.providers

    def run(self, names, feeds):
        return [np.full(1, 2.0, np.float32)]


@pytest.fixture
def fresh(monkeypatch):
    """No plugin found or probed yet in this process; onnxruntime's own providers: CPU only."""
    monkeypatch.setattr(providers, "_PLUGINS", None)
    monkeypatch.setattr(providers, "_PROBED", {})
    monkeypatch.setattr(providers, "available_providers", lambda: ["AzureExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(session, "_CONFIGURED", {})
    FakeSession.calls = []


def install(monkeypatch, *dists):
    monkeypatch.setattr(providers.metadata, "distributions",
                        lambda: [FakeDist("numpy", "2.0.0", "numpy"), *dists])


def webgpu_plugin(monkeypatch, devices=(("GPU",),), **fake_ort):
    """onnxruntime-ep-webgpu installed; onnxruntime lists `devices` for it once registered."""
    install(monkeypatch, FakeDist("onnxruntime-ep-webgpu", "0.4.0", "onnxruntime_ep_webgpu\n"))
    fake_module(monkeypatch, "onnxruntime_ep_webgpu", [WEBGPU], "/plugins/libonnxruntime_providers_webgpu.so")
    offers = {"/plugins/libonnxruntime_providers_webgpu.so": [device(WEBGPU, *d) for d in devices]}
    return FakeOrt(monkeypatch, offers, **fake_ort)


# --- discovery and registration ------------------------------------------------------------------------
def test_discovery_registers_each_plugin_once(monkeypatch, fresh):
    install(monkeypatch, FakeDist("onnxruntime-ep-webgpu", "0.4.0", "onnxruntime_ep_webgpu\n"),
            FakeDist("onnxruntime_ep_Fake.Multi", "1.0", "onnxruntime_ep_fake_multi\n"),
            FakeDist("onnxruntime-ep-nv-tensorrt-rtx", "0.5.0", "\n"),  # a meta-package: no module of its own
            FakeDist("onnxruntime-ep-nv-tensorrt-rtx-cu13", "0.5.0", "onnxruntime_ep_nv_tensorrt_rtx\n"))
    fake_module(monkeypatch, "onnxruntime_ep_webgpu", [WEBGPU], "/p/webgpu.so")
    fake_module(monkeypatch, "onnxruntime_ep_fake_multi", ["FakeNpuExecutionProvider", "FakeDspExecutionProvider"],
                "/p/multi.so")
    fake_module(monkeypatch, "onnxruntime_ep_nv_tensorrt_rtx", ["NvTensorRTRTXExecutionProvider"], "/p/rtx.so")
    fake = FakeOrt(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = providers.plugin_providers()
    assert set(found) == {WEBGPU, "FakeNpuExecutionProvider", "FakeDspExecutionProvider",
                          "NvTensorRTRTXExecutionProvider"}
    info = found[WEBGPU]
    assert (info.distribution, info.version, info.module, info.library_path) == (
        "onnxruntime-ep-webgpu", "0.4.0", "onnxruntime_ep_webgpu", "/p/webgpu.so")
    assert info.registered and info.error is None
    assert "webgpu" in info.aliases
    # one registration per library (the rtx module once, though two distributions name it), under tessera's name
    assert sorted(fake.registered) == [("tessera.onnxruntime_ep_fake_multi", "/p/multi.so"),
                                       ("tessera.onnxruntime_ep_nv_tensorrt_rtx", "/p/rtx.so"),
                                       ("tessera.onnxruntime_ep_webgpu", "/p/webgpu.so")]
    assert providers.plugin_providers() == found  # cached for the process
    assert len(fake.registered) == 3


def test_no_plugins_installed_means_nothing_registered(monkeypatch, fresh):
    install(monkeypatch)
    fake = FakeOrt(monkeypatch)
    assert providers.plugin_providers() == {}
    assert fake.registered == []


def test_this_environment_has_no_plugin_or_a_working_one():
    """Whatever is installed here, discovery neither raises nor registers a plugin twice."""
    first = providers.plugin_providers()
    assert providers.plugin_providers() == first


def test_plugin_registered_by_the_application_is_not_registered_again(monkeypatch, fresh):
    fake = webgpu_plugin(monkeypatch)
    fake.devices.append(device(WEBGPU))  # the application called register_execution_provider_library itself
    assert WEBGPU in providers.plugin_providers()
    assert fake.registered == []


def test_incompatible_onnxruntime_warns_once_naming_versions(monkeypatch, fresh):
    # What onnxruntime 1.24.1 answers when onnxruntime-ep-webgpu 0.4.0 is registered (tried for real).
    error = RuntimeError('[ONNXRuntimeError] : 1 : FAIL : ORT runtime version "1.24.1" is below the minimum '
                         'required version "1.24.4".')
    install(monkeypatch, FakeDist("onnxruntime-ep-newer", "2.0", "onnxruntime_ep_newer\n"))
    fake_module(monkeypatch, "onnxruntime_ep_newer", ["NewerExecutionProvider"])
    FakeOrt(monkeypatch, fail=error)
    monkeypatch.setattr(ort, "__version__", "1.24.1")
    with pytest.warns(RuntimeWarning) as record:
        assert providers.plugin_providers() == {}
    assert len(record) == 1
    text = str(record[0].message)
    assert "\n" not in text and "Traceback" not in text
    for part in ("onnxruntime-ep-newer 2.0", "NewerExecutionProvider", "needs onnxruntime >= 1.24.4",
                 "1.24.1 is installed", "pip install --upgrade 'onnxruntime>=1.24.4'"):
        assert part in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert providers.plugin_providers() == {}  # warned once per process
        with pytest.raises(ProviderError, match="comes from the plugin onnxruntime-ep-newer, which cannot be used"):
            providers.resolve_providers("NewerExecutionProvider")


def test_known_minimum_is_checked_before_loading_the_library(monkeypatch, fresh):
    fake = webgpu_plugin(monkeypatch)
    monkeypatch.setattr(ort, "__version__", "1.23.2")
    with pytest.warns(RuntimeWarning, match=r"onnxruntime-ep-webgpu 0\.4\.0 \(WebGpuExecutionProvider\) needs "
                                            r"onnxruntime >= 1\.24\.4, but 1\.23\.2 is installed"):
        assert providers.plugin_providers() == {}
    assert fake.registered == []


def test_other_registration_failure_warns_and_is_ignored(monkeypatch, fresh):
    webgpu_plugin(monkeypatch, fail=RuntimeError("libvulkan.so.1: cannot open shared object file\nmore"))
    with pytest.warns(RuntimeWarning, match="could not be registered with onnxruntime .*libvulkan.so.1") as record:
        assert providers.plugin_providers() == {}
    assert len(record) == 1 and "\n" not in str(record[0].message)


def test_broken_plugin_module_warns(monkeypatch, fresh):
    install(monkeypatch, FakeDist("onnxruntime-ep-broken", "1.0", "onnxruntime_ep_broken\n"),
            FakeDist("onnxruntime-ep-gone", "1.0", "onnxruntime_ep_gone_module\n"))
    fake_module(monkeypatch, "onnxruntime_ep_broken", ["BrokenExecutionProvider"], broken=True)
    monkeypatch.setitem(sys.modules, "onnxruntime_ep_gone_module", None)  # find_spec -> ValueError / None
    FakeOrt(monkeypatch)
    with pytest.warns(RuntimeWarning) as record:
        assert providers.plugin_providers() == {}
    texts = sorted(str(r.message) for r in record)
    assert len(texts) == 2
    assert "onnxruntime-ep-broken 1.0" in texts[0] and "plugin library not found" in texts[0]
    assert "onnxruntime-ep-gone 1.0 is installed but its module onnxruntime_ep_gone_module is missing" in texts[1]


def test_onnxruntime_without_plugin_api_ignores_plugins_with_one_line(monkeypatch, fresh):
    install(monkeypatch, FakeDist("onnxruntime-ep-webgpu", "0.4.0", "onnxruntime_ep_webgpu\n"))
    fake_module(monkeypatch, "onnxruntime_ep_webgpu", [WEBGPU])
    for name in ("register_execution_provider_library", "get_ep_devices"):
        monkeypatch.delattr(ort, name, raising=False)
    monkeypatch.setattr(ort, "__version__", "1.22.2")
    with pytest.warns(RuntimeWarning) as record:
        assert providers.plugin_providers() == {}
        assert providers.resolve_providers("auto") == ["CPUExecutionProvider"]
    assert len(record) == 1
    text = str(record[0].message)
    assert "\n" not in text
    assert "onnxruntime 1.22.2 cannot load plugin execution providers" in text
    assert "ignoring onnxruntime-ep-webgpu" in text and "onnxruntime>=1.23" in text
    assert providers.plugin_devices(WEBGPU) == []
    with pytest.raises(ProviderError, match="pip install onnxruntime-ep-webgpu"):
        providers.resolve_providers("webgpu")


# --- resolution ------------------------------------------------------------------------------------------
def test_explicit_plugin_names_and_aliases(monkeypatch, fresh):
    webgpu_plugin(monkeypatch)
    spy = FakeSession.calls
    for request in ("webgpu", "WebGpu", WEBGPU, ["webgpu", "cpu"]):
        got = providers.resolve_providers(request)
        assert got[0] == WEBGPU
    assert providers.resolve_providers(["webgpu", "cpu"]) == [WEBGPU, "CPUExecutionProvider"]
    assert spy == []  # an explicit provider is not probed


def test_openvino_alias_goes_to_the_plugin_when_the_flavour_is_absent(monkeypatch, fresh):
    install(monkeypatch, FakeDist("onnxruntime-ep-openvino", "1.8.1", "onnxruntime_ep_openvino\n"))
    fake_module(monkeypatch, "onnxruntime_ep_openvino", ["OpenVINOExecutionProvider"], "/p/ov.so")
    FakeOrt(monkeypatch, {"/p/ov.so": [device("OpenVINOExecutionProvider", "CPU", "Intel")]})
    assert providers.resolve_providers("openvino") == ["OpenVINOExecutionProvider"]
    assert providers.plugin_provider("openvino").distribution == "onnxruntime-ep-openvino"


def test_builtin_provider_wins_over_a_plugin_of_the_same_name(monkeypatch, fresh):
    install(monkeypatch, FakeDist("onnxruntime-ep-openvino", "1.8.1", "onnxruntime_ep_openvino\n"))
    fake_module(monkeypatch, "onnxruntime_ep_openvino", ["OpenVINOExecutionProvider"], "/p/ov.so")
    FakeOrt(monkeypatch)
    monkeypatch.setattr(providers, "available_providers", lambda: ["OpenVINOExecutionProvider", "CPUExecutionProvider"])
    assert providers.resolve_providers("openvino") == ["OpenVINOExecutionProvider"]
    assert providers.plugin_provider("openvino") is None  # runs through the providers list


def test_plugin_aliases_from_package_and_ep_name(monkeypatch, fresh):
    install(monkeypatch, FakeDist("onnxruntime-ep-mlx", "0.1", "onnxruntime_ep_mlx\n"))
    fake_module(monkeypatch, "onnxruntime_ep_mlx", ["AppleMLXExecutionProvider"], "/p/mlx.so")
    FakeOrt(monkeypatch, {"/p/mlx.so": [device("AppleMLXExecutionProvider")]})
    assert providers.full_name("mlx") == "AppleMLXExecutionProvider"  # from the package name
    assert providers.full_name("applemlx") == "AppleMLXExecutionProvider"  # from the EP name
    assert providers.resolve_providers("mlx") == ["AppleMLXExecutionProvider"]
    assert providers.full_name("cuda") == "CUDAExecutionProvider"


def test_explicit_plugin_without_a_device_is_an_error(monkeypatch, fresh):
    webgpu_plugin(monkeypatch, devices=())
    with pytest.raises(ProviderError) as info:
        providers.resolve_providers("webgpu")
    text = str(info.value)
    assert "onnxruntime-ep-webgpu 0.4.0" in text and "lists no device" in text and "\n" not in text


def test_missing_plugin_provider_names_the_plugin_package(monkeypatch, fresh):
    install(monkeypatch)
    FakeOrt(monkeypatch)
    monkeypatch.setattr(providers, "installed_flavours", lambda: ["onnxruntime"])
    with pytest.raises(ProviderError) as info:
        providers.resolve_providers("webgpu")
    text = str(info.value)
    assert "onnxruntime-webgpu" in text  # the flavour
    assert "or the plugin: pip install onnxruntime-ep-webgpu (a plugin EP; needs onnxruntime >= 1.24.4)" in text
    with pytest.raises(ProviderError, match="pip install onnxruntime-ep-nv-tensorrt-rtx"):
        providers.resolve_providers("tensorrt-rtx")


# --- providers="auto" -------------------------------------------------------------------------------------
@pytest.fixture
def fake_sessions(monkeypatch):
    monkeypatch.setattr(ort, "SessionOptions", FakeOptions)
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)


def test_auto_uses_a_plugin_with_a_device(monkeypatch, fresh, fake_sessions):
    webgpu_plugin(monkeypatch, devices=(("CPU",), ("GPU",)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert providers.resolve_providers("auto") == [WEBGPU, "CPUExecutionProvider"]
    assert len(FakeSession.calls) == 1  # the probe, through the plugin's GPU device
    model, opts, provider_list, _ = FakeSession.calls[0]
    assert model == providers.PROBE_MODEL and provider_list is None
    assert [(d[0].ep_name, d[0].device.type.name) for d, _ in opts.added] == [(WEBGPU, "GPU")]


def test_auto_ignores_a_plugin_without_a_device(monkeypatch, fresh, fake_sessions):
    webgpu_plugin(monkeypatch, devices=())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert providers.resolve_providers("auto") == ["CPUExecutionProvider"]
    assert FakeSession.calls == []  # not even probed


def test_auto_drops_a_plugin_whose_probe_fails(monkeypatch, fresh, fake_sessions):
    webgpu_plugin(monkeypatch)

    def failing(*args, **kwargs):
        raise RuntimeError("Failed to create a WebGPU adapter")

    monkeypatch.setattr(ort, "InferenceSession", failing)
    with pytest.warns(RuntimeWarning, match="WebGpuExecutionProvider is registered from onnxruntime-ep-webgpu and "
                                            "lists a device but cannot run here .Failed to create a WebGPU adapter"):
        assert providers.resolve_providers("auto") == ["CPUExecutionProvider"]


def test_auto_never_picks_tensorrt_rtx(monkeypatch, fresh, fake_sessions):
    install(monkeypatch, FakeDist("onnxruntime-ep-nv-tensorrt-rtx-cu13", "0.5.0", "onnxruntime_ep_nv_tensorrt_rtx\n"))
    fake_module(monkeypatch, "onnxruntime_ep_nv_tensorrt_rtx", ["NvTensorRTRTXExecutionProvider"], "/p/rtx.so")
    FakeOrt(monkeypatch, {"/p/rtx.so": [device("NvTensorRTRTXExecutionProvider")]})
    assert providers.resolve_providers("auto") == ["CPUExecutionProvider"]
    assert providers.resolve_providers("trt-rtx") == ["NvTensorRTRTXExecutionProvider"]


# --- sessions ---------------------------------------------------------------------------------------------
def test_open_session_adds_the_plugin_device_with_its_options(monkeypatch, fresh, fake_sessions):
    webgpu_plugin(monkeypatch, devices=(("CPU",), ("GPU",)))
    sess = session.open_session(DECODER, [WEBGPU, "CPUExecutionProvider"],
                                provider_options={"webgpu": {"deviceId": 1, "preferLayout": "NHWC"},
                                                  "cuda": {"device_id": 0}},
                                disabled_optimizers=["SomeFusion"])
    model, opts, provider_list, kwargs = FakeSession.calls[-1]
    assert model == str(DECODER)
    assert provider_list is None and "provider_options" not in kwargs  # the providers list would override them
    assert kwargs == {"disabled_optimizers": ["SomeFusion"]}
    assert len(opts.added) == 1  # CPU is onnxruntime's implicit fallback
    devices, options = opts.added[0]
    assert [(d.ep_name, d.device.type.name) for d in devices] == [(WEBGPU, "GPU")]
    assert options == {"deviceId": "1", "preferLayout": "NHWC"}
    assert opts.log_severity_level == 3  # tessera's session defaults are kept
    assert session.active_provider(sess) == WEBGPU


def test_open_session_without_plugins_uses_the_providers_list(monkeypatch, fresh, fake_sessions):
    webgpu_plugin(monkeypatch)
    session.open_session(DECODER, ["CPUExecutionProvider"], provider_options={"cpu": {"arena_extend_strategy": 1}})
    model, opts, provider_list, kwargs = FakeSession.calls[-1]
    assert provider_list == ["CPUExecutionProvider"] and opts.added == []
    assert kwargs["provider_options"] == [{"arena_extend_strategy": "1"}]


def test_a_callers_session_options_get_the_device_once(monkeypatch, fresh, fake_sessions):
    webgpu_plugin(monkeypatch)
    mine = ort.SessionOptions()  # a FakeOptions here; Pipeline reuses it for every graph
    for _ in range(2):
        session.open_session(DECODER, [WEBGPU, "CPUExecutionProvider"], session_options=mine)
    assert len(mine.added) == 1
    with pytest.raises(InvalidInputError, match="cannot serve two different provider lists"):
        session.open_session(DECODER, [WEBGPU, "CPUExecutionProvider"], session_options=mine,
                             provider_options={"webgpu": {"deviceId": 2}})


def test_plugin_that_fails_to_start_is_a_provider_error(monkeypatch, fresh):
    webgpu_plugin(monkeypatch)
    monkeypatch.setattr(ort, "SessionOptions", FakeOptions)
    real = ort.InferenceSession

    def session_factory(model, sess_options=None, providers=None, **kwargs):
        if getattr(sess_options, "added", None):
            raise RuntimeError("Failed to create WebGPU device")
        return real(model, sess_options=sess_options, providers=providers, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", session_factory)
    with pytest.raises(ProviderError, match="could not start the plugin execution provider WebGpuExecutionProvider "
                                            "for tokenizer_decoder.onnx .Failed to create WebGPU device"):
        session.open_session(DECODER, [WEBGPU, "CPUExecutionProvider"])


# --- a real plugin EP, where one is installed and has a device here ---------------------------------------
def _real_plugin_with_device() -> str | None:
    if not hasattr(ort, "get_ep_devices"):
        return None
    for name in providers.plugin_providers():
        if providers.plugin_devices(name) and providers.probe_provider(name) is None:
            return name
    return None


def test_real_plugin_generates_the_cpu_tokens():
    real_ort = sys.modules["onnxruntime"]
    if ort is not real_ort:
        pytest.skip("onnxruntime is faked")
    found = providers.plugin_providers()
    if not found:
        pytest.skip("no onnxruntime-ep-* package registered with this onnxruntime (e.g. pip install "
                    "onnxruntime-ep-webgpu, which also needs libvulkan.so.1 and a GPU onnxruntime can discover)")
    name = _real_plugin_with_device()
    if name is None:
        pytest.skip(f"{', '.join(found)} registered, but onnxruntime's device discovery lists no usable device "
                    "for it here")
    from tessera.runtime import Pipeline

    cpu = Pipeline.load(providers="cpu", verify="size").generate_tokens([7], seed=0)
    pipe = Pipeline.load(providers=[name, "cpu"], verify="size")
    assert pipe.graph_providers["transformer"] == name
    tokens = pipe.generate_tokens([7], seed=0)
    assert tokens.shape == cpu.shape
    # Sampling from slightly different logits may change a token; most must agree.
    assert float(np.mean(tokens == cpu)) >= 0.9, (tokens, cpu)
