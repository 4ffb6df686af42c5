"""The onnxruntime support matrix: which builds load each graph kind and precision, and agree with PyTorch.

Each tested onnxruntime version gets its own virtual environment (it sees this environment's
numpy, pillow and tessera through a .pth file, and shadows onnxruntime with its own
wheel). `export/ort_probe.py` runs there; this module computes the PyTorch references and
compares. Wheels come from a local cache, so checking makes no network call: fill the cache once
with `download_wheels` (CI does, in .ci/run).

    python -m tessera.export.ort_matrix --download-only   # once: cache the CPU wheels (needs the package index)
    python -m tessera.export.ort_matrix                   # the matrix -> benchmarks/results/ort_matrix.md

A cell passes when the directory loads, every multi-token call of the scenario (over a past, at
non-contiguous and out-of-order positions, several rows) gives the logits of its tokens sent one per
call, and
- fp32: every logit of the call scenario is within the export's fp32 bound of PyTorch, sampled
  and greedy tokens equal the PyTorch reference loop's, parallel-decoding tokens equal those of
  the newest build, and decoded images are within the image bound;
- fp16 / int8 / int4: the logits are within that precision's export bounds against PyTorch fp32
  (relative error, argmax agreement) and images are within the precision's image bound of
  PyTorch's decoding of the same tokens. Token agreement with the newest build is reported, not
  required: quantized kernels round differently between releases, which can move a sampled draw.

`check_provider` judges the same cells on another execution provider of this environment's
onnxruntime (the GPU check), with the CPU run of each directory in the newest build's place.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import sys
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from . import ort_probe, parity
from .build import load_model_dir
from .reference import generate_tokens as reference_tokens

# One release of each line the accelerator flavours ship (rocm 1.22, directml/openvino 1.24,
# migraphx/webgpu 1.27, gpu 1.31) and the newest CPU build.
MATRIX_VERSIONS = ("1.22.1", "1.24.4", "1.27.0", "1.31.1", "1.32.0")
CACHE_ENV = "TESSERA_ORT_MATRIX_CACHE"
SPLIT_RELATIVE = 0.01  # quantized graphs: a multi-token call against one token per call, of the logit scale
PROBE_TIMEOUT_S = 600
COMMAND = "python -m tessera.export.ort_matrix"
DOWNLOAD_COMMAND = f"{COMMAND} --download-only"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tessera" / "ort-matrix")


def wheel_dir() -> Path:
    return cache_root() / "wheels"


def _wheel(version: str) -> Path | None:
    found = sorted(wheel_dir().glob(f"onnxruntime-{version}-*.whl"))
    return found[0] if found else None


def download_wheels(versions=MATRIX_VERSIONS) -> None:
    """Fetch the CPU wheel of each version for this interpreter (the one step that needs the index)."""
    wheel_dir().mkdir(parents=True, exist_ok=True)
    for v in versions:
        if v != installed_version() and _wheel(v) is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "-d", str(wheel_dir()), f"onnxruntime=={v}"], check=True)


def installed_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def missing_wheels(versions=MATRIX_VERSIONS) -> list[str]:
    return [v for v in versions if v != installed_version() and _wheel(v) is None]


def interpreter(version: str) -> Path:
    """A Python whose onnxruntime is `version` (this one, or a cached venv made from the wheel)."""
    if version == installed_version():
        return Path(sys.executable)
    env = cache_root() / "envs" / f"{version}-py{sys.version_info[0]}{sys.version_info[1]}"
    python = env / "bin" / "python"
    check = [str(python), "-c", "import onnxruntime; print(onnxruntime.__version__)"]
    if python.exists() and subprocess.run(check, capture_output=True, text=True).stdout.strip() == version:
        _see_this_environment(python)
        return python
    wheel = _wheel(version)
    if wheel is None:
        raise FileNotFoundError(f"no cached onnxruntime {version} wheel in {wheel_dir()}; "
                                f"run: {DOWNLOAD_COMMAND}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)], check=True)
    _see_this_environment(python)
    got = subprocess.run(check, capture_output=True, text=True).stdout.strip()
    if got != version:
        raise RuntimeError(f"the venv for onnxruntime {version} imports {got or 'nothing'}")
    return python


def _see_this_environment(python: Path) -> None:
    """Let `python` (a cached venv) import this environment's packages after its own onnxruntime.

    --system-site-packages would not do: a venv made from inside a venv sees the base interpreter's
    site-packages, not this venv's. A .pth file adds this environment's site directories (their .pth
    files too, e.g. an editable tessera) after the venv's own; rewritten on every use, since the cached
    venv may be reached from a different environment than the one that made it."""
    import site

    dirs = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    lines = [f"import site; site.addsitedir({d!r})" for d in dirs if Path(d).is_dir()]
    (Path(purelib) / "tessera_outer_site.pth").write_text("\n".join(lines) + "\n")


def run_probe(version: str, dirs: list[Path], out: Path) -> dict:
    """Probe `dirs` under onnxruntime `version`; returns {dir: {"status": ..., arrays ...}}."""
    python = interpreter(version)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(python), "-m", "tessera.export.ort_probe", str(out), *map(str, dirs)],
                          capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=env)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"the probe under onnxruntime {version} failed: {proc.stderr.strip()[-800:]}")
    data = np.load(out)
    status = json.loads(str(data["status"]))
    if status["onnxruntime"] != version:
        raise RuntimeError(f"the probe for {version} ran on onnxruntime {status['onnxruntime']}")
    results = {}
    for i, d in enumerate(dirs):
        prefix = f"{i}/"
        results[str(d)] = {"status": status["dirs"][str(d)],
                           **{k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)}}
    return results


@dataclass
class Reference:
    """What PyTorch says for one model directory's probe."""

    precision: str
    logits: list[np.ndarray]
    tokens_sampled: np.ndarray
    tokens_greedy: np.ndarray
    decode: object  # tokens -> images (PyTorch tokenizer)


@torch.no_grad()
def reference(model_dir: Path) -> Reference:
    gpt, vq, spec = load_model_dir(model_dir)
    t = spec.layout
    calls = ort_probe.scenario(t.vocab_size, t.class_token_offset, t.null_class_id, spec.grid, t.rope_grid)
    logits, past = [], None
    for c in calls:
        out, past = gpt(torch.from_numpy(c["ids"]), torch.from_numpy(c["pos"]), torch.from_numpy(c["mask"]), past)
        logits.append(out.numpy())
    from tessera.runtime.sampling import SamplingConfig

    sampled = reference_tokens(gpt, list(ort_probe.LABELS), ort_probe.SAMPLED["guidance_scale"],
                               SamplingConfig(top_k=ort_probe.SAMPLED["top_k"]), ort_probe.SAMPLED["seed"])
    greedy = reference_tokens(gpt, list(ort_probe.LABELS), 1.0, SamplingConfig(temperature=0.0), 0)

    @torch.no_grad()
    def decode(tokens: np.ndarray) -> np.ndarray:
        return vq.decode_codes(torch.from_numpy(tokens)).numpy()

    return Reference(spec.graph("transformer").precision, logits, sampled, greedy, decode)


def judge(got: dict, ref: Reference, newest: dict | None, versus: str = "the newest build") -> tuple[bool, str]:
    """(passed, why) for one probe result against PyTorch and another run's result of the same directory
    (`newest`: the newest build's in the matrix; `versus` names it in the text)."""
    if got["status"] != "ok":
        return False, got["status"]
    logits = [got[f"logits_{k}"] for k in range(len(ref.logits))]
    err = max(float(np.abs(o - t).max()) for o, t in zip(logits, ref.logits))
    scale = max(float(np.abs(t).max()) for t in ref.logits)
    agree = float(np.mean(np.concatenate([(o.argmax(-1) == t.argmax(-1)).ravel() for o, t in zip(logits, ref.logits)])))
    problems = []
    # every multi-token call equals the same tokens sent one per call: fp32 to its export bound; other
    # precisions to 1% of the logit scale (int8 scales its activations per call: 1.4e-2 apart on 1.31+)
    split = max(float(np.abs(o - got[f"logits_one_by_one_{k}"]).max()) for k, o in enumerate(logits))
    split_bound = parity.FP32_LOGIT_ATOL if ref.precision == "fp32" else SPLIT_RELATIVE * scale
    if not split <= split_bound:
        problems.append(f"multi-token calls differ from one token per call by {split:.2g}")
    if ref.precision == "fp32":
        if not err <= parity.FP32_LOGIT_ATOL:
            problems.append(f"logit error {err:.2g}")
        for key, want in (("tokens_sampled", ref.tokens_sampled), ("tokens_greedy", ref.tokens_greedy)):
            if not np.array_equal(got[key], want):
                problems.append(f"{key} differ from PyTorch ({np.mean(got[key] != want):.0%})")
        image_atol = parity.FP32_IMAGE_ATOL
    else:
        bounds = parity.QUANT_BOUNDS[ref.precision]
        if not err / max(scale, 1e-12) <= bounds["relative_logit_error"]:
            problems.append(f"relative logit error {err / scale:.2g}")
        if agree < bounds["argmax_agreement"]:
            problems.append(f"argmax agreement {agree:.0%}")
        image_atol = bounds["image_atol"]
    same = {}
    for key in ("tokens_sampled", "tokens_greedy", "tokens_parallel") if newest is not None else ():
        same[key] = float(np.mean(got[key] == newest[key]))
        # fp32 must draw the newest build's tokens exactly. A quantized kernel may round differently
        # from one release to the next (int4/int8 compute on dynamically quantized activations), which
        # can move a sampled draw; its bound is the export's logit and argmax parity above.
        if ref.precision == "fp32" and key == "tokens_parallel" and same[key] < 1.0:
            problems.append(f"{key} differ from {versus}'s ({1 - same[key]:.0%})")
    image_err = float(np.abs(got["images"] - ref.decode(got["tokens_sampled"])).max())
    if not image_err <= image_atol:
        problems.append(f"image error {image_err:.2g}")
    detail = (f"logit err {err:.1e}, argmax {agree:.0%}, multi-token vs one by one {split:.1e}, image err "
              f"{image_err:.1e}; tokens equal to {versus}'s: "
              + ", ".join(f"{k.split('_')[1]} {v:.0%}" for k, v in same.items()))
    return not problems, "; ".join(problems) or detail


def run_matrix(dirs: dict[str, Path], workdir: Path, versions=MATRIX_VERSIONS) -> dict[str, dict[str, tuple]]:
    """{label: {version: (passed, why)}} for the labelled model directories."""
    refs = {label: reference(d) for label, d in dirs.items()}
    paths = list(dirs.values())
    results = {v: run_probe(v, paths, workdir / f"probe-{v}.npz") for v in versions}
    newest = results[max(versions, key=lambda v: tuple(int(p) for p in v.split(".")))]
    table: dict[str, dict[str, tuple]] = {}
    for label, d in dirs.items():
        table[label] = {v: judge(results[v][str(d)], refs[label], newest[str(d)]) for v in versions}
    return table


def check_provider(dirs: dict[str, Path], provider: str) -> dict[str, dict]:
    """{label: {"ok", "why", "providers"}}: each directory run in this process on `provider`, judged as a
    matrix cell against PyTorch and, token for token, against the same directory on the CPU. A graph
    that onnxruntime ran on another provider fails the cell: a silent fallback is not the provider's result."""
    from tessera.runtime.manifest import load_manifest
    from tessera.runtime.providers import full_name

    def run(d: Path, on: str) -> dict:
        try:
            return {"status": "ok", **ort_probe.probe(d, on)}
        except Exception as e:  # recorded: the caller shows every failure
            text = str(e).strip()
            return {"status": f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"}

    want, out, refs = full_name(provider), {}, {}
    for label, d in dirs.items():
        cpu = run(d, "cpu")
        got = cpu if want == "CPUExecutionProvider" else run(d, provider)
        # Variants of one model share its PyTorch reference: the weights' checksums, recorded in the
        # manifest, say which model they carry.
        spec = load_manifest(d, verify="none").spec
        key = tuple(sorted(spec.files[f].sha256 for f in spec.weights.values() if f in spec.files)) or str(d)
        ref = refs[key] = refs.get(key) or reference(d)
        ref = replace(ref, precision=spec.graph("transformer").precision)
        ok, why = judge(got, ref, cpu if cpu["status"] == "ok" else None, versus="the CPU")
        ran = got.get("graph_providers", {})
        elsewhere = sorted(g for g, p in ran.items() if p != want)
        if elsewhere:
            ok, why = False, f"{', '.join(elsewhere)} not on {want}; {why}"
        out[label] = {"ok": ok, "why": why, "providers": ran}
    return out


def markdown(table: dict[str, dict[str, tuple]], versions=MATRIX_VERSIONS) -> str:
    lines = ["| model directory | " + " | ".join(versions) + " |", "|---|" + "---|" * len(versions)]
    for label, row in table.items():
        lines.append(f"| {label} | " + " | ".join("yes" if row[v][0] else "no" for v in versions) + " |")
    failures = [f"- {label} on {v}: {why}" for label, row in table.items() for v, (ok, why) in row.items() if not ok]
    quantized = [f"- {label} on {v}: {why}" for label, row in table.items() if "fp32" not in label
                 for v, (ok, why) in row.items() if ok]
    return "\n".join(lines + ([""] + failures if failures else [])
                     + (["", "Quantized cells in detail (against PyTorch fp32):", ""] + quantized if quantized else [])) + "\n"


def tiny_model_dirs(root: Path) -> dict[str, Path]:
    """GPT-Tiny / VQ-Tiny with random weights (scaled so sampling depends on them), exported in
    every graph kind and precision: `{"fused fp32": DIR, ...}`."""
    from .build import build_gpt, build_vq
    from .config import gpt_preset, vq_preset
    from .model_dir import ExportSpec, write_model_dirs

    gpt = build_gpt(gpt_preset("GPT-Tiny"), None, seed=1)
    for p in gpt.parameters():
        if p.dim() > 1:
            p.data.mul_(10.0)
    vq = build_vq(vq_preset("VQ-Tiny"), None, seed=2)
    names = [str(i) for i in range(gpt.cfg.num_classes)]
    dirs = {}
    for kind in ("fused", "portable"):
        spec = ExportSpec(name=f"tiny-{kind}", class_names=names, include_weights=True, graph=kind)
        for d in write_model_dirs(gpt, vq, root / f"tiny-{kind}", spec):
            dirs[f"tiny {kind} {d.name.rsplit('-', 1)[1]}"] = d
    return dirs


def checkout_results() -> Path | None:
    """benchmarks/results/ort_matrix.md when this module runs from a source checkout (the editable install
    maps tessera.export to the checkout's export/ folder); None in an installed package."""
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    return results / "ort_matrix.md" if results.is_dir() else None


def _run_facts() -> str:
    """Versions (and the git revision in a checkout) and the CPU, for the results file's header."""
    facts = {"python": platform.python_version()}
    for pkg in ("tessera-ar", "numpy", "torch"):
        try:
            facts[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            facts[pkg] = "not installed"
    repo = Path(__file__).resolve().parents[1]
    if (repo / ".git").exists():
        git = ["git", "-C", str(repo)]
        rev = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
        if rev:
            facts["git"] = rev + (" (+ uncommitted changes)" if dirty else "")
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return ", ".join(f"{k} {v}" for k, v in facts.items()) + f"; {cpu}"


def main(argv: list[str] | None = None) -> int:
    """Fill the wheel cache, or run the matrix on the tiny models and the shipped default; exit status 1
    when a cell fails."""
    from tessera.models import default_model_dir

    default_out = checkout_results()
    ap = argparse.ArgumentParser(prog=COMMAND, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--download", action="store_true", help="cache the onnxruntime wheels, then run")
    ap.add_argument("--download-only", action="store_true", help="cache the onnxruntime wheels and stop")
    ap.add_argument("--out", type=Path, default=default_out,
                    help="the markdown table (default: benchmarks/results/ort_matrix.md in a source checkout; "
                         "printed only in an installed package)")
    args = ap.parse_args(argv)
    if args.download or args.download_only:
        download_wheels()
        if args.download_only:
            print(f"onnxruntime wheels cached in {wheel_dir()}")
            return 0
    missing = missing_wheels()
    if missing:
        print(f"{COMMAND}: onnxruntime wheels {', '.join(missing)} are not cached in {wheel_dir()}; "
              f"run: {DOWNLOAD_COMMAND}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        dirs = tiny_model_dirs(Path(tmp))
        dirs["shipped default (fused fp32)"] = default_model_dir()
        table = run_matrix(dirs, Path(tmp))
    text = (f"# onnxruntime support matrix\n\n`{COMMAND}` (CPU execution provider; a cell is 'yes' when the "
            "directory loads and agrees with PyTorch as export/ort_matrix.py defines).\n\n"
            f"Run with {_run_facts()}.\n\n" + markdown(table))
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0 if all(ok for row in table.values() for ok, _ in row.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
