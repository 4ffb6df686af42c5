"""The GPU check as it will first run on a GPU machine, with the CPU standing in for CUDA: `git archive` of this
repository without models/, run by a fresh Python that has torch, onnx, onnxscript, onnxruntime, numpy and
safetensors but neither Tessera nor pillow, given only a folder of wheels (onnxruntime 1.31.1, the version of
onnxruntime-gpu there, and pillow). The wheels come from a cache that .ci/run fills; this test never downloads:

    python -m pip download -q --no-deps --only-binary=:all: -d ~/.cache/tessera/gpu-check-wheels \\
        onnxruntime==1.31.1 pillow

Also the script's refusals (bad set-up, a CPU run over the GPU results), which need no environment.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
GPU_ORT = "1.31.1"  # onnxruntime-gpu's version on the GPU machine: the dry run loads the graphs on the same version
BARE = ("torch", "onnx", "onnxscript", "onnxruntime", "numpy", "safetensors")  # what the GPU machine's Python has
TAG = f"-cp{sys.version_info[0]}{sys.version_info[1]}-"


def wheel_folders() -> list[Path]:
    """The gpu-check wheel cache (TESSERA_GPU_CHECK_WHEELS), then the support matrix's (it holds onnxruntime 1.31.1)."""
    from tessera.export import ort_matrix

    own = os.environ.get("TESSERA_GPU_CHECK_WHEELS") or Path.home() / ".cache" / "tessera" / "gpu-check-wheels"
    return [Path(own), ort_matrix.wheel_dir()]


def cached_wheels() -> list[Path]:
    """onnxruntime GPU_ORT and pillow for this interpreter from the caches; skips (fails on CI) without them."""
    found = {}
    for folder in wheel_folders():
        for prefix in (f"onnxruntime-{GPU_ORT}-", "pillow-"):
            found.setdefault(prefix, next((w for w in sorted(folder.glob(f"{prefix}*.whl")) if TAG in w.name), None))
    missing = [p.rstrip("-") for p, w in found.items() if w is None]
    if missing:
        message = (f"no cached wheel of {', '.join(missing)} for this Python in {wheel_folders()[0]}; fetch them: "
                   f"python -m pip download --no-deps --only-binary=:all: -d DIR onnxruntime=={GPU_ORT} pillow")
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    return list(found.values())


def bare_python(root: Path) -> Path:
    """A venv of this interpreter whose site-packages holds links to BARE's distributions and their
    dependencies, nothing else: not the editable Tessera, pytest, pillow ... of the environment under test."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    seen, todo = set(), list(BARE)
    while todo:
        name = canonicalize_name(todo.pop())
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a dependency of another platform, or an optional one
        if name in seen:
            continue
        seen.add(name)
        todo += [r.name for r in map(Requirement, dist.requires or [])
                 if r.marker is None or r.marker.evaluate({"extra": ""})]
        base = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or []} - {"..", "__pycache__"}:
            if (base / top).exists() and not (site / top).exists():
                (site / top).symlink_to(base / top)
    return python


def archive(dest: Path) -> Path:
    """The tracked files without models/, as the GPU machine receives them; uncommitted edits of tracked
    files included (`git stash create` makes a commit of them without touching the tree), new files not."""
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "-C", str(REPO)]
    probe = subprocess.run([*git, "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("not a git checkout: the GPU check's simulation archives the tracked files")
    rev = subprocess.run([*git, "stash", "create"], capture_output=True, text=True, check=True).stdout.strip()
    dest.mkdir()
    tar = subprocess.run([*git, "archive", "--format=tar", rev or "HEAD", "--", ".", ":(exclude)models"],
                         capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
    return dest


def run_script(script: Path, env: dict, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return subprocess.run(["bash", str(script), *args], cwd=cwd, env={**clean, **env}, capture_output=True,
                          text=True, timeout=900)


def test_gpu_check_runs_from_a_copy_in_a_bare_python(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for w in cached_wheels():
        (wheels / w.name).symlink_to(w)
    copy = archive(tmp_path / "copy")
    assert not (copy / "models").exists() and (copy / "benchmarks" / "gpu_check.py").is_file()
    python = bare_python(tmp_path / "bare")
    check = "import torch, onnx, onnxscript, onnxruntime, numpy, safetensors; print(onnxruntime.__version__)"
    assert subprocess.run([str(python), "-c", check], capture_output=True, text=True, cwd=tmp_path).returncode == 0
    for absent in ("tessera", "PIL"):
        assert subprocess.run([str(python), "-c", f"import {absent}"], capture_output=True, cwd=tmp_path).returncode

    out = tmp_path / "gpu.md"
    env = {"TESSERA_GPU_PROVIDER": "cpu", "PYTHON": str(python), "TESSERA_GPU_WHEELS": str(wheels),
           "TESSERA_GPU_BUDGET_S": "900"}
    proc = run_script(copy / "benchmarks" / "gpu_check.sh", env, "--quick", "--rounds", "1", "--out", str(out),
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = out.read_text()
    assert text.startswith("# GPU check (CPU dry run, --quick)")
    assert f"onnxruntime module `{GPU_ORT} in " in text and "tessera-copy/tessera`" in text  # the wheel's, the copy's
    rows = {ln.split(" | ")[0][2:]: ln for ln in text.splitlines() if ln.startswith("| tiny ")}
    kinds = [f"tiny {k} {p}" for k in ("fused", "portable") for p in ("fp32", "fp16", "int8", "int4")]
    assert sorted(rows) == sorted(kinds)
    assert all("| CPUExecutionProvider | CPUExecutionProvider | yes |" in ln for ln in rows.values())
    speed = [ln for ln in text.splitlines() if ln.startswith(("| tessera ", "| torch "))]
    assert len(speed) == 8 and all("| CPUExecutionProvider |" in ln for ln in speed if "tessera" in ln)
    assert "PyTorch fp32 100.0%" in text  # our fp32 tokens are PyTorch's
    calls = {m[1]: int(m[2]) for m in re.finditer(r"^\| ([^|]+?) \| CPUExecutionProvider \| (\d+) \|", text, re.M)}
    assert calls["sequential"] == 16 and calls["any-order, 8 steps"] == 8 and calls["any-order, 4 steps"] == 4
    assert 1 < calls["parallel, window 2"] < 16 and 1 < calls["jacobi, 4 drafts"] <= 16
    assert "stopped by" not in text and "(not reached)" not in text


@pytest.mark.parametrize("env,message", [
    ({"TESSERA_GPU_PROVIDER": "rocm"}, "TESSERA_GPU_PROVIDER must be cuda or cpu"),
    ({"TESSERA_GPU_WHEELS": "/nonexistent"}, "TESSERA_GPU_WHEELS must name the folder of wheels"),
    ({}, "no onnxruntime_gpu-*.whl in"),
    ({"two": "1"}, "2 onnxruntime wheels in"),
])
def test_set_up_refuses_what_cannot_work_in_one_line(tmp_path, env, message):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    if env.pop("two", None):  # two flavours would unpack over each other
        for name in ("onnxruntime-1.31.1-cp312-cp312-x.whl", "onnxruntime_gpu-1.31.1-cp312-cp312-x.whl"):
            (wheels / name).write_bytes(b"")
    proc = run_script(SCRIPT, {"TESSERA_GPU_WHEELS": str(wheels), "PYTHON": sys.executable, **env}, cwd=tmp_path)
    assert proc.returncode == 3 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_check_provider_fails_a_graph_that_ran_elsewhere_or_not_at_all(tiny_dir, monkeypatch):
    from tessera.export import ort_matrix

    cpu = ort_matrix.check_provider({"tiny": tiny_dir}, "cpu")["tiny"]
    assert cpu["ok"] and "tokens equal to the CPU's: sampled 100%" in cpu["why"], cpu
    assert cpu["providers"] == {"transformer": "CPUExecutionProvider", "tokenizer_decoder": "CPUExecutionProvider"}
    probe = ort_matrix.ort_probe.probe
    monkeypatch.setattr(ort_matrix.ort_probe, "probe", lambda d, on: probe(d, "cpu"))  # CUDA fell back to the CPU
    fell = ort_matrix.check_provider({"tiny": tiny_dir}, "cuda")["tiny"]
    assert not fell["ok"] and fell["why"].startswith("tokenizer_decoder, transformer not on CUDAExecutionProvider")

    def broken(d, on):
        if on == "cuda":
            raise RuntimeError("CUDA failure 35: driver too old\nmore")
        return probe(d, on)

    monkeypatch.setattr(ort_matrix.ort_probe, "probe", broken)
    assert ort_matrix.check_provider({"tiny": tiny_dir}, "cuda")["tiny"] == {
        "ok": False, "why": "RuntimeError: CUDA failure 35: driver too old", "providers": {}}


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # an ImportError here is a failure: the check must import
    return module


def test_cpu_run_never_overwrites_the_gpu_results(gpu_check):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--provider", "cpu", "--out", str(gpu_check.RESULTS)])
    assert gpu_check.parse_args(["--provider", "cpu"]).out != gpu_check.RESULTS
    assert gpu_check.parse_args(["--provider", "cuda"]).out == gpu_check.RESULTS


def test_no_cuda_is_exit_2_before_anything_is_measured(gpu_check, tmp_path, capsys):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(SystemExit) as stop:
        gpu_check.main(["--provider", "cuda", "--out", str(tmp_path / "gpu.md"), "--work", str(tmp_path / "w")])
    assert stop.value.code == 2 and not any(tmp_path.iterdir())
    assert "gpu_check: CUDAExecutionProvider cannot run here: " in capsys.readouterr().err
