"""Pick onnxruntime execution providers: the best one this machine really has by default, or exactly what was asked.

An onnxruntime build lists the providers it was compiled with, not the devices that are present:
onnxruntime-gpu lists CUDAExecutionProvider on a machine without a GPU and then silently runs on the
CPU. So providers="auto" probes each listed accelerator with a tiny session and keeps it only when it
survives in `get_providers()` and computes the right answer (once per process).
"""
from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import sys
import tempfile
import warnings

import numpy as np

from .backend import FLAVOURS, install_command, installed_flavours, ort
from .errors import ProviderError

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
    """'cuda' -> 'CUDAExecutionProvider'; full names (any case of an alias) pass through."""
    return ALIASES.get(name.lower(), name) if isinstance(name, str) else name


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
    with _quiet_native_output() as lines:
        try:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            opts.enable_mem_pattern = False  # DirectML wants these two
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            sess = ort.InferenceSession(PROBE_MODEL, sess_options=opts, providers=[name, "CPUExecutionProvider"])
            if name not in sess.get_providers():
                reason = ""
            else:
                y = sess.run(None, {"x": np.ones(1, np.float32)})[0]
                if float(np.asarray(y).reshape(-1)[0]) != 2.0:
                    reason = f"the probe computed {y!r} instead of [2.]"
        except Exception as e:  # any failure to start or run means: not usable here
            text = str(e).strip()
            reason = text.splitlines()[0][:300] if text else type(e).__name__
    if reason == "":
        reason = _reason(lines)
    _PROBED[name] = reason
    return reason


def clear_probe_cache() -> None:
    _PROBED.clear()


def install_hint(provider: str) -> str:
    """What to run to get `provider`: the flavour package and its extra, minding flavours already there."""
    provider = full_name(provider)
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
    An explicitly requested provider that this onnxruntime build lacks is an error that lists the
    available ones and says what to install (a silent fallback to CPU would hide a 10x slowdown).
    """
    available = available_providers()
    if request is None or request == "auto":
        chosen = []
        for p in AUTO_ORDER:
            if p == "CPUExecutionProvider" or p not in available:
                continue
            first_time = p not in _PROBED
            why = probe_provider(p)
            if why is None:
                chosen.append(p)
            elif first_time:
                warnings.warn(f"providers='auto': {p} is in this onnxruntime build but cannot run here ({why}); "
                              "not using it", RuntimeWarning, stacklevel=2)
        return chosen + ["CPUExecutionProvider"]
    names = [request] if isinstance(request, str) else list(request)
    resolved = []
    for name in names:
        full = full_name(name)
        if full not in available:
            shown = repr(name) if full == name else f"{name!r} ({full})"
            raise ProviderError(
                f"execution provider {shown} is not available in this onnxruntime build; available: "
                f"{', '.join(available)}. {install_hint(full)}; or use providers='auto'."
            )
        resolved.append(full)
    return resolved
