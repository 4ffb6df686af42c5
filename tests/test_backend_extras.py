"""Each backend extra installs one onnxruntime flavour whose provider can load on a machine with only the
vendor's driver: checked on pip's resolution of the extra (`pip install --dry-run --report`), which
.ci/run caches (`python tests/extras_report.py --write`) so that this test makes no network call.
And the runtime loads the libraries that the cuda (and, on Windows, openvino) extra brings as wheels."""
from __future__ import annotations

import json
import os
import re
import warnings

import pytest

import extras_report
from tessera.runtime import providers
from tessera.runtime.backend import FLAVOURS, parse_version

# extra -> the onnxruntime flavour it must bring
FLAVOUR_OF = {"cpu": "onnxruntime", "cuda": "onnxruntime-gpu", "rocm": "onnxruntime-rocm",
              "migraphx": "onnxruntime-migraphx", "directml": "onnxruntime-directml",
              "openvino": "onnxruntime-openvino", "qnn": "onnxruntime-qnn"}


def _installs(name: str) -> dict[str, str]:
    path = extras_report.report_path(name)
    if not path.is_file():
        message = f"no pip report for the {name} extra at {path}; run: {extras_report.WRITE_COMMAND}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return extras_report.installs(json.loads(path.read_text()))


def _major(version: str) -> int:
    return parse_version(version)[0]


def test_every_backend_extra_is_reported():
    assert {extra for extra, _ in extras_report.REPORTS.values()} == set(FLAVOUR_OF)
    assert set(FLAVOUR_OF.values()) <= set(FLAVOURS)


@pytest.mark.parametrize("name", sorted(extras_report.REPORTS))
def test_an_extra_installs_exactly_its_flavour(name):
    extra, _ = extras_report.REPORTS[name]
    got = _installs(name)
    flavours = sorted(set(got) & set(FLAVOURS))
    assert flavours == [FLAVOUR_OF[extra]], f"the {extra} extra resolves {flavours}"
    assert parse_version(got[FLAVOUR_OF[extra]]) >= (1, 22)
    if extra != "cuda":
        nvidia = sorted(d for d in got if d.startswith("nvidia-"))
        assert nvidia == [], f"the {extra} extra pulls {nvidia}"


@pytest.mark.parametrize("name", ["cuda", "cuda-windows"])
def test_the_cuda_extra_brings_the_cuda_runtime_its_build_needs(name):
    """onnxruntime-gpu 1.22-1.24 are CUDA 12 builds, 1.27 on CUDA 13: the NVIDIA wheels must match, cuDNN 9."""
    got = _installs(name)
    build_cuda = 12 if parse_version(got["onnxruntime-gpu"]) < (1, 27) else 13
    suffix = f"-cu{build_cuda}" if build_cuda == 12 else ""  # CUDA 13 wheels dropped the -cuNN suffix

    def version(package: str) -> str:
        found = [v for d, v in got.items() if re.fullmatch(rf"{package}(-cu{build_cuda})?", d)]
        assert found, f"the cuda extra does not install {package}{suffix} (CUDA {build_cuda})"
        return found[0]

    assert _major(version("nvidia-cuda-runtime")) == build_cuda
    assert _major(version("nvidia-cublas")) == build_cuda
    assert _major(version("nvidia-curand")) == 10
    assert _major(version("nvidia-cufft")) == (11 if build_cuda == 12 else 12)
    assert f"nvidia-cudnn-cu{build_cuda}" in got and _major(got[f"nvidia-cudnn-cu{build_cuda}"]) == 9
    other = sorted(d for d in got if re.search(r"-cu\d+$", d) and not d.endswith(f"-cu{build_cuda}"))
    assert other == [], f"NVIDIA wheels of another CUDA: {other}"


def test_cpu_and_linux_extras_install_tessera_itself():
    for name, (extra, platform) in extras_report.REPORTS.items():
        if platform is None:
            got = _installs(name)
            assert {"tessera-ar", "numpy", "pillow"} <= set(got), (name, sorted(got))


def test_the_openvino_extra_brings_openvino_itself_on_windows_only():
    """The Linux wheels bundle OpenVINO; the Windows build needs the openvino wheel of its release."""
    assert "openvino" not in _installs("openvino")
    got = _installs("openvino-windows")
    ort_release = parse_version(got["onnxruntime-openvino"])[:2]
    assert ort_release == (1, 24), "a new onnxruntime-openvino: pair setup.cfg's openvino pin with its release"
    assert parse_version(got["openvino"])[:2] == (2025, 4)


# --- the runtime loads what the extras install as separate wheels ------------------------------------------
@pytest.fixture
def loads(monkeypatch):
    calls = []

    def fake(kind):
        def load():
            calls.append(kind)
            print(f"Failed to load {kind} libraries: cannot open shared object file")  # what onnxruntime prints
            if kind == "openvino":
                raise SystemExit("Error: Please set the OPENVINO_LIB_PATHS environment variable.")
        return load

    monkeypatch.setattr(providers, "_load_nvidia_libraries", fake("nvidia"))
    monkeypatch.setattr(providers, "_load_openvino_libraries", fake("openvino"))
    monkeypatch.setattr(providers, "_LIBRARIES_LOADED", set())
    return calls


def test_provider_libraries_are_loaded_once_before_their_first_session_and_quietly(loads, capsys):
    providers.load_provider_libraries(["CPUExecutionProvider"])
    assert loads == []  # a CPU session loads nothing
    providers.load_provider_libraries(["CUDAExecutionProvider", "CPUExecutionProvider"])
    providers.load_provider_libraries(["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    assert loads == ["nvidia"]
    providers.load_provider_libraries(["OpenVINOExecutionProvider"])  # its SystemExit does not end the process
    providers.load_provider_libraries(["OpenVINOExecutionProvider", "CUDAExecutionProvider"])
    assert loads == ["nvidia", "openvino"]
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_cuda_libraries_come_from_onnxruntimes_preload(monkeypatch):
    calls = []
    monkeypatch.setattr(providers.ort, "preload_dlls", lambda *a, **k: calls.append(a), raising=False)
    providers._load_nvidia_libraries()
    assert calls == [()]


def test_probing_cuda_loads_the_cuda_libraries_first(loads):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        providers.probe_provider("cuda", refresh=True)  # on this machine the probe may fail; the load comes first
    assert loads == ["nvidia"]
    providers.clear_probe_cache()


def test_opening_a_session_on_cuda_loads_the_cuda_libraries(loads, tiny_dir):
    from tessera.runtime.session import open_session

    with warnings.catch_warnings():  # no CUDA here ("runs on CPUExecutionProvider"): what matters is the load
        warnings.simplefilter("ignore")
        open_session(tiny_dir / "tokenizer_decoder.onnx", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert loads == ["nvidia"]
