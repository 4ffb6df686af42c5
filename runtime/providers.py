"""Pick onnxruntime execution providers: the best one this machine really has by default, or exactly what was asked.

An onnxruntime build lists the providers it was compiled with, not the devices that are present:
onnxruntime-gpu lists CUDAExecutionProvider on a machine without a GPU and then silently runs on the
CPU. So providers="auto" probes each listed accelerator with a tiny session and keeps it only when it
survives in `get_providers()` and computes the right answer (once per process).

Plugin execution providers (pip packages onnxruntime-ep-*, onnxruntime >= 1.23) are found through their
package metadata and registered with onnxruntime once per process (plugin_providers); they count only where
onnxruntime's own device discovery (get_ep_devices) lists a device for them, and a session gets them through
SessionOptions.add_provider_for_devices (runtime/session.py).
"""
from __future__ import annotations

import base64
import contextlib
import importlib
import importlib.util
import io
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass
from importlib import metadata

import numpy as np

from .backend import FLAVOURS, install_command, installed_flavours, onnxruntime_version, ort, parse_version
from .errors import InvalidInputError, ProviderError, first_line

# Preference for providers="auto": CUDA, then AMD (ROCm / MIGraphX), then DirectML, Qualcomm (QNN),
# CoreML, OpenVINO, WebGPU, then CPU. Each flavour lists at most a couple of these. TensorRT is never
# automatic (it builds an engine per shape for minutes); ask for it with providers="tensorrt".
AUTO_ORDER = (
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
    "DmlExecutionProvider",
    "QNNExecutionProvider",
    "CoreMLExecutionProvider",
    "OpenVINOExecutionProvider",
    "WebGpuExecutionProvider",
    "CPUExecutionProvider",
)

ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
    "cann": "CANNExecutionProvider",
    "tensorrt-rtx": "NvTensorRTRTXExecutionProvider",  # a plugin EP only (onnxruntime-ep-nv-tensorrt-rtx)
    "trt-rtx": "NvTensorRTRTXExecutionProvider",
    "nv-tensorrt-rtx": "NvTensorRTRTXExecutionProvider",
}

# Provider -> the onnxruntime flavour (distribution) whose build has it.
PROVIDER_FLAVOUR = {
    "CPUExecutionProvider": "onnxruntime",
    "CoreMLExecutionProvider": "onnxruntime",  # the plain wheel, on macOS only
    "CUDAExecutionProvider": "onnxruntime-gpu",
    "TensorrtExecutionProvider": "onnxruntime-gpu",  # also needs the TensorRT libraries
    "ROCMExecutionProvider": "onnxruntime-rocm",
    "MIGraphXExecutionProvider": "onnxruntime-migraphx",
    "DmlExecutionProvider": "onnxruntime-directml",
    "OpenVINOExecutionProvider": "onnxruntime-openvino",
    "QNNExecutionProvider": "onnxruntime-qnn",
    "WebGpuExecutionProvider": "onnxruntime-webgpu",
    "CANNExecutionProvider": "onnxruntime-cann",
}

# The smallest useful ONNX model: y = x + x, x a float[1]; IR version 8, opset 13. Made once with
#   from onnx import helper, TensorProto
#   g = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "probe",
#                         [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
#                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
#   m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8, producer_name="")
#   base64.b64encode(m.SerializeToString())
# (tests/test_backend.py rebuilds it and compares). The runtime cannot depend on the onnx package.
PROBE_MODEL = base64.b64decode(
    "CAgSADo5Cg4KAXgKAXgSAXkiA0FkZBIFcHJvYmVaDwoBeBIKCggIARIECgIIAWIPCgF5EgoKCAgBEgQKAggBQgQKABAN"
)

# provider -> None (works here) or why not; filled by probe_provider, once per process.
_PROBED: dict[str, str | None] = {}


def available_providers() -> list[str]:
    """The providers this onnxruntime build has (not necessarily a device for them)."""
    return list(ort.get_available_providers())


def full_name(name: str) -> str:
    """'cuda' -> 'CUDAExecutionProvider'; full names (any case of an alias) pass through. A name that is
    no built-in alias may name an installed plugin EP ('mlx', 'nv-tensorrt-rtx', ...; see plugin_providers)."""
    if not isinstance(name, str):
        return name
    full = ALIASES.get(name.lower())
    if full is not None or name.endswith("ExecutionProvider"):
        return full or name
    return _plugin_aliases().get(name.lower(), name)


@contextlib.contextmanager
def _quiet_native_output():
    """Collect what onnxruntime prints while probing (C++ log lines on fd 2, Python prints, warnings)
    into a list of lines instead of the user's terminal."""
    lines: list[str] = []
    saved = tmp = None
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        tmp = tempfile.TemporaryFile()
        os.dup2(tmp.fileno(), 2)
    except (OSError, ValueError, AttributeError):  # no fd 2 (e.g. pythonw): let it through
        saved = None
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield lines
        lines.extend(str(w.message) for w in caught)
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())
        if tmp is not None:
            tmp.close()
        lines.extend(out.getvalue().splitlines())


def _reason(lines: list[str]) -> str:
    useful = [ln.strip() for ln in lines if ln.strip() and not set(ln.strip()) <= set("*")]
    errors = [ln for ln in useful if re.search(r"error|fail|cannot|unable|not found", ln, re.I)] or useful
    return errors[0][:300] if errors else "onnxruntime fell back to CPUExecutionProvider"


def probe_provider(name: str, refresh: bool = False) -> str | None:
    """None when `name` really runs here (a tiny session keeps it and computes 1 + 1), else why not.

    The answer is cached for the process; refresh=True probes again.
    """
    name = full_name(name)
    if name == "CPUExecutionProvider":
        return None
    if name in _PROBED and not refresh:
        return _PROBED[name]
    reason: str | None = None
    load_provider_libraries([name])
    with _quiet_native_output() as lines:
        try:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            opts.enable_mem_pattern = False  # DirectML wants these two
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            if plugin_provider(name) is not None:  # a plugin EP: through its device, CPU the implicit fallback
                devices = plugin_devices(name)
                if not devices:
                    raise RuntimeError("onnxruntime lists no device for it (get_ep_devices)")
                opts.add_provider_for_devices(devices[:1], {})
                sess = ort.InferenceSession(PROBE_MODEL, sess_options=opts)
            else:
                sess = ort.InferenceSession(PROBE_MODEL, sess_options=opts, providers=[name, "CPUExecutionProvider"])
            if name not in sess.get_providers():
                reason = ""
            else:
                y = sess.run(None, {"x": np.ones(1, np.float32)})[0]
                if float(np.asarray(y).reshape(-1)[0]) != 2.0:
                    reason = f"the probe computed {y!r} instead of [2.]"
        except Exception as e:  # any failure to start or run means: not usable here
            reason = first_line(e)
    if reason == "":
        reason = _reason(lines)
    _PROBED[name] = reason
    return reason


# Providers whose CUDA and cuDNN libraries tessera-ar[cuda] installs as NVIDIA wheels (onnxruntime-gpu[cuda,cudnn]).
_NVIDIA_LIBRARY_USERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})
_LIBRARIES_LOADED: set[str] = set()  # "nvidia", "openvino": loaded (or tried) in this process


def _load_nvidia_libraries() -> None:
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()


def _load_openvino_libraries() -> None:
    if sys.platform == "win32":
        from onnxruntime.tools.add_openvino_win_libs import add_openvino_libs_to_path

        add_openvino_libs_to_path()


def load_provider_libraries(providers: list[str] | tuple[str, ...]) -> None:
    """Before the first session on a provider whose libraries an extra installs as separate wheels, load them.

    onnxruntime-gpu's CUDA provider looks for libcudart, cuBLAS, cuDNN ... on the system loader's path only,
    not in site-packages/nvidia where tessera-ar[cuda] puts them, so on a machine with only the driver it would
    not load: onnxruntime.preload_dlls() (1.21+) loads them from there. On Windows, onnxruntime-openvino needs
    the openvino wheel's DLL folder added (its add_openvino_libs_to_path). Once per process each; what they
    print stays off the terminal, and a library still missing shows up as the provider's own load error."""
    wanted = set(providers)
    for key, users, load in (("nvidia", _NVIDIA_LIBRARY_USERS, _load_nvidia_libraries),
                             ("openvino", {"OpenVINOExecutionProvider"}, _load_openvino_libraries)):
        if key in _LIBRARIES_LOADED or not wanted & users:
            continue
        _LIBRARIES_LOADED.add(key)
        with _quiet_native_output():
            try:
                load()
            except (Exception, SystemExit):  # add_openvino_libs_to_path exits when it finds no OpenVINO
                pass


def clear_probe_cache() -> None:
    _PROBED.clear()


# --- plugin execution providers (onnxruntime >= 1.23) -------------------------------------------------
# A pip package onnxruntime-ep-NAME (module onnxruntime_ep_NAME: get_library_path(), get_ep_name(s)()) holds an
# EP library that is registered with the installed onnxruntime (register_execution_provider_library); its devices
# are then listed by ort.get_ep_devices() and a session gets it through SessionOptions.add_provider_for_devices.
PLUGIN_PREFIX = "onnxruntime-ep-"
PLUGIN_API_VERSION = "1.23"  # the first onnxruntime with the plugin EP API
# The onnxruntime each known plugin needs (from its README; registration also reports it).
PLUGIN_MIN_ORT = {
    "onnxruntime-ep-webgpu": "1.24.4",
    "onnxruntime-ep-openvino": "1.23.0",
}
# Provider -> the plugin package that provides it (for install hints).
PLUGIN_PACKAGE = {
    "WebGpuExecutionProvider": "onnxruntime-ep-webgpu",
    "OpenVINOExecutionProvider": "onnxruntime-ep-openvino",
    "NvTensorRTRTXExecutionProvider": "onnxruntime-ep-nv-tensorrt-rtx",
}
# Never chosen by providers="auto" (engine builds take minutes); ask for them by name.
NOT_AUTOMATIC = frozenset({"TensorrtExecutionProvider", "NvTensorRTRTXExecutionProvider"})
_DEVICE_PREFERENCE = ("GPU", "NPU", "CPU")


@dataclass(frozen=True)
class PluginInfo:
    """One execution provider of an installed onnxruntime-ep-* package."""

    ep_name: str
    distribution: str
    version: str
    module: str
    library_path: str
    registration_name: str
    error: str | None = None  # None: registered with onnxruntime (usable where it lists a device)

    @property
    def registered(self) -> bool:
        return self.error is None

    @property
    def aliases(self) -> tuple[str, ...]:
        short = self.ep_name.removesuffix("ExecutionProvider")
        suffix = re.sub(r"[-_.]+", "-", self.distribution).lower().removeprefix(PLUGIN_PREFIX)
        return tuple(dict.fromkeys(a.lower() for a in (self.ep_name, short, suffix) if a))


# ep name -> PluginInfo, registered or not; filled once per process by _discover_plugins.
_PLUGINS: dict[str, PluginInfo] | None = None


def _plugin_api_missing() -> bool:
    return not (hasattr(ort, "register_execution_provider_library") and hasattr(ort, "get_ep_devices")
                and hasattr(ort.SessionOptions, "add_provider_for_devices"))


def _plugin_distributions() -> list[tuple[str, str, list[str], bool]]:
    """Installed onnxruntime-ep-* distributions: (name, version, modules, modules_guessed)."""
    found: dict[str, tuple[str, str, list[str], bool]] = {}
    for dist in metadata.distributions():
        try:
            name = dist.metadata["Name"]
        except Exception:
            continue
        if not name or not re.sub(r"[-_.]+", "-", name).lower().startswith(PLUGIN_PREFIX):
            continue
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found:  # the same distribution on two sys.path entries: the first wins, as for imports
            continue
        try:
            top = (dist.read_text("top_level.txt") or "").split()
        except Exception:
            top = []
        found[key] = (name, str(dist.version), top or [key.replace("-", "_")], not top)
    return [found[k] for k in sorted(found)]


def _upgrade_command(version: str) -> str:
    flavour = next(iter(installed_flavours()), "onnxruntime")
    return f"pip install --upgrade '{flavour}>={version}'"


def _plugin_warning(text: str) -> None:
    warnings.warn(text, RuntimeWarning, stacklevel=4)


def _registered_ep_names() -> set[str]:
    try:
        return {getattr(d, "ep_name", None) for d in ort.get_ep_devices()}
    except Exception:
        return set()


def _discover_plugins() -> dict[str, PluginInfo]:
    """Find the installed onnxruntime-ep-* packages and register each EP library once per process.

    A plugin that cannot be used (module broken, onnxruntime too old, registration refused) gives one
    RuntimeWarning naming it and is kept with `error` set; nothing here raises.
    """
    global _PLUGINS
    if _PLUGINS is not None:
        return _PLUGINS
    plugins: dict[str, PluginInfo] = {}
    _PLUGINS = plugins
    try:
        dists = _plugin_distributions()
    except Exception:  # a broken metadata entry must not stop the runtime
        dists = []
    if not dists:
        return plugins
    installed = str(getattr(ort, "__version__", "") or "?")
    if _plugin_api_missing():
        names = ", ".join(d[0] for d in dists)
        _plugin_warning(f"onnxruntime {installed} cannot load plugin execution providers (it needs onnxruntime >= "
                        f"{PLUGIN_API_VERSION}); ignoring {names}. To use them: {_upgrade_command(PLUGIN_API_VERSION)}")
        return plugins
    seen_modules: set[str] = set()
    for dist, version, modules, guessed in dists:
        for module_name in modules:
            if module_name in seen_modules:
                continue
            seen_modules.add(module_name)
            try:
                spec = importlib.util.find_spec(module_name)
            except (ImportError, ValueError):
                spec = None
            if spec is None:
                if not guessed:  # a meta-package (no module of its own) is fine; a listed module that is gone is not
                    _plugin_warning(f"{dist} {version} is installed but its module {module_name} is missing; "
                                    f"ignoring it (pip install --force-reinstall {dist})")
                continue
            try:
                module = importlib.import_module(module_name)
                library = str(module.get_library_path())
                names = (list(module.get_ep_names()) if hasattr(module, "get_ep_names")
                         else [module.get_ep_name()])
            except Exception as e:
                _plugin_warning(f"{dist} {version}: its module {module_name} could not give its EP library "
                                f"({first_line(e)}); ignoring it (pip install --force-reinstall {dist})")
                continue
            names = [str(n) for n in names if n]
            if not names:
                continue
            registration = f"tessera.{module_name}"

            def keep(error: str | None) -> None:
                for n in names:
                    plugins.setdefault(n, PluginInfo(n, dist, version, module_name, library, registration, error))

            need = PLUGIN_MIN_ORT.get(re.sub(r"[-_.]+", "-", dist).lower())
            if need and onnxruntime_version() < parse_version(need):
                why = f"{dist} {version} ({', '.join(names)}) needs onnxruntime >= {need}, but {installed} is installed"
                _plugin_warning(f"{why}; ignoring it. Fix: {_upgrade_command(need)} (or pip uninstall -y {dist})")
                keep(why)
                continue
            if set(names) <= _registered_ep_names():  # the application registered it already
                keep(None)
                continue
            try:
                ort.register_execution_provider_library(registration, library)
            except Exception as e:
                text = first_line(e)
                if "already registered" in text.lower():
                    keep(None)
                    continue
                m = re.search(r'minimum required (?:onnxruntime |ORT )?version[: ]*"?(\d+(?:\.\d+)*)', text, re.I)
                if m or re.search(r"version", text, re.I):
                    need = m.group(1) if m else (need or PLUGIN_API_VERSION)
                    why = (f"{dist} {version} ({', '.join(names)}) needs onnxruntime >= {need}, but {installed} is "
                           f"installed ({text})")
                    _plugin_warning(f"{why}; ignoring it. Fix: {_upgrade_command(need)} (or pip uninstall -y {dist})")
                else:
                    why = f"{dist} {version} ({', '.join(names)}) could not be registered with onnxruntime {installed} ({text})"
                    _plugin_warning(f"{why}; ignoring it (pip install --force-reinstall {dist}, or pip uninstall -y {dist})")
                keep(why)
                continue
            keep(None)
    return plugins



def plugin_providers() -> dict[str, PluginInfo]:
    """The execution providers of installed onnxruntime-ep-* packages that are registered with this
    onnxruntime (ep name -> PluginInfo). Found and registered on the first call, once per process; a plugin
    that cannot be used is left out (it warned once). Whether a device is there: plugin_devices(name)."""
    return {name: info for name, info in _discover_plugins().items() if info.registered}


def clear_plugin_cache() -> None:
    """Forget what _discover_plugins found (for tests; onnxruntime keeps the libraries it registered)."""
    global _PLUGINS
    _PLUGINS = None


def _plugin_aliases() -> dict[str, str]:
    out: dict[str, str] = {}
    for name, info in plugin_providers().items():
        for alias in info.aliases:
            out.setdefault(alias, name)
    return out


def _device_rank(ep_device) -> int:
    kind = getattr(getattr(ep_device, "device", None), "type", None)
    kind = str(getattr(kind, "name", kind) or "").upper().rsplit(".", 1)[-1]
    return _DEVICE_PREFERENCE.index(kind) if kind in _DEVICE_PREFERENCE else len(_DEVICE_PREFERENCE)


def plugin_devices(name: str) -> list:
    """onnxruntime's OrtEpDevice objects for execution provider `name` (device discovery of onnxruntime >=
    1.23), GPU first, then NPU, then CPU; [] on older onnxruntime versions."""
    if not hasattr(ort, "get_ep_devices"):
        return []
    name = full_name(name)
    try:
        devices = [d for d in ort.get_ep_devices() if getattr(d, "ep_name", None) == name]
    except Exception:
        return []
    return sorted(devices, key=_device_rank)


def plugin_provider(name: str) -> PluginInfo | None:
    """The PluginInfo when `name` is run through a plugin EP (registered, not built into this onnxruntime)."""
    name = full_name(name)
    if name in available_providers():
        return None
    return plugin_providers().get(name)


def install_hint(provider: str) -> str:
    """What to run to get `provider`: the flavour package and its extra, minding flavours already there."""
    provider = full_name(provider)
    hint = _flavour_hint(provider)
    package = PLUGIN_PACKAGE.get(provider)
    if package and package not in hint:
        need = PLUGIN_MIN_ORT.get(package, PLUGIN_API_VERSION)
        plugin = f"pip install {package} (a plugin EP; needs onnxruntime >= {need})"
        hint = plugin if provider not in PROVIDER_FLAVOUR else f"{hint}; or the plugin: {plugin}"
    return hint


def _flavour_hint(provider: str) -> str:
    flavour = PROVIDER_FLAVOUR.get(provider)
    present = installed_flavours()
    if flavour is None:
        return ("No onnxruntime flavour tessera knows of provides it; check the name (aliases: "
                f"{', '.join(sorted(ALIASES))})")
    if provider == "CoreMLExecutionProvider":
        return "CoreML exists only in the macOS onnxruntime wheel (pip install 'tessera-ar[cpu]' on a Mac)"
    if flavour in present:
        if len(present) > 1:
            others = " ".join(f for f in present if f != flavour)
            return (f"{flavour} is installed, but hidden by {others} (they share the module 'onnxruntime'); "
                    f"run: pip uninstall -y {others} && pip install --force-reinstall {flavour}")
        return f"{flavour} is installed, but its build lacks it; run: pip install --force-reinstall {flavour}"
    install = install_command(flavour)
    extra = f" (installs {flavour})" if FLAVOURS.get(flavour) else ""
    if present:
        return (f"It comes with {flavour}, which must replace {', '.join(present)}: "
                f"pip uninstall -y {' '.join(present)} && {install}{extra}")
    return f"It comes with {flavour}: {install}{extra}"


def resolve_providers(request: str | list[str] | tuple[str, ...] | None = "auto") -> list[str]:
    """'auto', one name / alias, or a list of them -> provider names in priority order.

    'auto' keeps the accelerators of AUTO_ORDER that this build lists and that a probe session shows
    really run here, then CPU; a listed accelerator that cannot start is reported once (RuntimeWarning).
    Plugin EPs (installed onnxruntime-ep-* packages, see plugin_providers) count only where onnxruntime's
    device discovery lists a device for them, and are probed the same way; plugin EPs that tessera does not
    know come after those of AUTO_ORDER.
    An explicitly requested provider that this onnxruntime build lacks is an error that lists the
    available ones and says what to install (a silent fallback to CPU would hide a 10x slowdown); so is
    a plugin EP for which onnxruntime lists no device.
    """
    if not (request is None or isinstance(request, str) or (isinstance(request, (list, tuple)) and request
                                                            and all(isinstance(r, str) for r in request))):
        raise InvalidInputError(f"providers must be 'auto', a provider name or alias (e.g. 'cpu', 'cuda') or a "
                                f"non-empty list of them, got {request!r}")
    available = available_providers()
    plugins = plugin_providers()
    if request is None or request == "auto":
        chosen = []
        extra = [p for p in plugins if p not in AUTO_ORDER]
        for p in [*AUTO_ORDER[:-1], *extra]:
            if p == "CPUExecutionProvider" or p in NOT_AUTOMATIC:
                continue
            if p in available:
                kind = "in this onnxruntime build"
            elif p in plugins and plugin_devices(p):
                kind = f"registered from {plugins[p].distribution} and lists a device"
            else:
                continue
            first_time = p not in _PROBED
            why = probe_provider(p)
            if why is None:
                chosen.append(p)
            elif first_time:
                warnings.warn(f"providers='auto': {p} is {kind} but cannot run here ({why}); "
                              "not using it", RuntimeWarning, stacklevel=2)
        return chosen + ["CPUExecutionProvider"]
    names = [request] if isinstance(request, str) else list(request)
    resolved = []
    for name in names:
        full = full_name(name)
        shown = repr(name) if full == name else f"{name!r} ({full})"
        if full in available:
            resolved.append(full)
            continue
        if full in plugins:
            if not plugin_devices(full):
                raise ProviderError(
                    f"execution provider {shown} (plugin {plugins[full].distribution} {plugins[full].version}) is "
                    "registered, but onnxruntime's device discovery lists no device for it on this machine (check "
                    "the GPU driver / Vulkan loader the plugin needs); or use providers='auto'."
                )
            resolved.append(full)
            continue
        failed = (_PLUGINS or {}).get(full)
        if failed is not None and failed.error:
            raise ProviderError(f"execution provider {shown} comes from the plugin {failed.distribution}, which "
                                f"cannot be used: {failed.error}; or use providers='auto'.")
        shown_available = [*available, *(p for p in plugins if p not in available)]
        raise ProviderError(
            f"execution provider {shown} is not available in this onnxruntime build; available: "
            f"{', '.join(shown_available)}. {install_hint(full)}; or use providers='auto'."
        )
    return resolved
