"""Which onnxruntime flavour is installed, and is it intact.

onnxruntime ships as one wheel per accelerator (onnxruntime, onnxruntime-gpu, onnxruntime-directml ...),
all of which install the same module, `onnxruntime`. Two of them in one environment overwrite each
other's files: the last one installed wins (and usually hides the accelerator), and uninstalling one
leaves a module without `InferenceSession`. Every runtime module imports onnxruntime through here
(`from .backend import ort`) so that these cases end in a message that says what to run.
"""
from __future__ import annotations

import warnings
from importlib import metadata

from .errors import TesseraError, first_line
from .versions import release_numbers as parse_version  # noqa: F401 (re-exported)

# Distributions that install the `onnxruntime` module -> the tessera-ar extra that installs it
# (None: no extra; install the package itself).
FLAVOURS: dict[str, str | None] = {
    "onnxruntime": "cpu",
    "onnxruntime-gpu": "cuda",
    "onnxruntime-rocm": "rocm",
    "onnxruntime-migraphx": "migraphx",
    "onnxruntime-directml": "directml",
    "onnxruntime-openvino": "openvino",
    "onnxruntime-qnn": "qnn",
    "onnxruntime-webgpu": None,
    "onnxruntime-cann": None,
    "onnxruntime-vitisai": None,
    "onnxruntime-azure": None,
    "onnxruntime-training": None,
    "onnxruntime-silicon": None,
    "ort-nightly": None,
    "ort-nightly-gpu": None,
    "ort-nightly-directml": None,
    "ort-nightly-qnn": None,
}
EXTRAS = tuple(e for e in FLAVOURS.values() if e)  # cpu, cuda, rocm, migraphx, directml, openvino, qnn


class OnnxRuntimeMissingError(TesseraError, ImportError):
    """onnxruntime is not installed, or its module is broken (e.g. after uninstalling one of two flavours)."""


def install_command(flavour: str) -> str:
    """The pip command that installs `flavour` (through the tessera-ar extra where there is one)."""
    extra = FLAVOURS.get(flavour)
    return f"pip install 'tessera-ar[{extra}]'" if extra else f"pip install {flavour}"


def installed_flavours() -> list[str]:
    """Names of the installed distributions that provide the `onnxruntime` module, in FLAVOURS order."""
    found = []
    for name in FLAVOURS:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def choose_flavour(flavours: list[str]) -> str:
    """Of several installed flavours, the one to keep by default: the accelerator one (not plain onnxruntime)."""
    accelerated = [f for f in flavours if f != "onnxruntime"]
    return accelerated[0] if accelerated else flavours[0]


def conflict_message(flavours: list[str]) -> str:
    keep = choose_flavour(flavours)
    others = " ".join(f for f in flavours if f != keep)
    return (f"several onnxruntime flavours are installed ({', '.join(flavours)}); they share the module "
            "'onnxruntime' and the last one installed hides the others. Keep the one matching your accelerator, "
            f"e.g.: pip uninstall -y {others} && pip install --force-reinstall {keep}")


def missing_message(flavours: list[str], reason: str | None = None) -> str:
    """The one-line message for 'onnxruntime cannot be imported or is broken'."""
    why = f" ({reason})" if reason else ""
    if not flavours:
        return (f"onnxruntime is not installed{why}; install the flavour for your machine: "
                f"pip install 'tessera-ar[cpu]' (or [{'], ['.join(e for e in EXTRAS if e != 'cpu')}] "
                "in place of [cpu])")
    if len(flavours) == 1:
        return (f"the onnxruntime module is broken{why} although {flavours[0]} is installed; reinstall it: "
                f"pip install --force-reinstall {flavours[0]}")
    keep = choose_flavour(flavours)
    others = " ".join(f for f in flavours if f != keep)
    return (f"the onnxruntime module is broken{why}: several flavours share it ({', '.join(flavours)}). Keep "
            f"one: pip uninstall -y {others} && pip install --force-reinstall {keep}")


def load_onnxruntime():
    """Import onnxruntime, or raise OnnxRuntimeMissingError saying what to run; warn on several flavours."""
    flavours = installed_flavours()
    try:
        import onnxruntime as module
    except ImportError as e:
        raise OnnxRuntimeMissingError(missing_message(flavours, None if not flavours else first_line(e))) from None
    if not hasattr(module, "InferenceSession"):
        raise OnnxRuntimeMissingError(missing_message(flavours, "it has no InferenceSession"))
    if len(flavours) > 1:
        warnings.warn(conflict_message(flavours), RuntimeWarning, stacklevel=2)
    return module


ort = load_onnxruntime()


def onnxruntime_version() -> tuple[int, ...]:
    """The imported onnxruntime's version as ints, e.g. (1, 22, 2)."""
    text = getattr(ort, "__version__", None)
    if not text:
        for name in installed_flavours():
            text = metadata.version(name)
            break
    return parse_version(text or "")
