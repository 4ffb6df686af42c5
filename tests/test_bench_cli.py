"""`tessera bench` end to end from a runtime-only install: torch, onnx (and, for one test, matplotlib)
made unimportable in the command and in every worker it starts, on tiny models and the shipped default."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def blocked(tmp_path_factory) -> Path:
    """A folder of stand-in packages that refuse to import, first on PYTHONPATH (workers inherit it)."""
    root = tmp_path_factory.mktemp("blocked")
    for name in ("torch", "onnx", "matplotlib"):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked in this test')\n")
    return root


def bench(blocked: Path, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "tessera.cli", "bench", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


def test_two_tiny_graph_kinds_compared_without_torch(blocked, tiny_dir, portable_dir, tmp_path):
    out = tmp_path / "run.json"
    r = bench(blocked, tiny_dir, portable_dir, "--rounds", "2", "--batch", "2,4", "--warmup", "2", "--threads", "1",
              "--json", out, "--markdown", tmp_path / "run.md")
    assert r.returncode == 0, r.stderr
    assert "[1/6]" in r.stderr and "memory of one image" in r.stderr  # progress on stderr
    run = json.loads(out.read_text())
    assert not run["errors"] and run["environment"]["versions"]["onnxruntime"] != "not installed"
    first, second = run["rows"]
    for row in run["rows"]:
        assert row["graphs_mib"] > 0 and row["load_s"] > 0
        assert 0 < row["baseline_mib"] <= row["peak_rss_load_mib"] <= row["peak_rss_image_mib"]
        assert set(row["batches"]) == {"2", "4"}
        for b, s in row["batches"].items():
            assert s["rounds"] == 2 and 0 < s["median_ms"] <= s["p90_ms"] and s["image_s"] > 0
            assert s["images"] == int(b) // 2  # guidance: 2 rows per image
    # the same weights in the standard-ops graph: the same tokens, logits equal to float rounding
    q = second["quality"]
    assert q["token_agreement"] >= 0.95 and q["argmax_agreement"] >= 0.99 and q["max_abs_logit_error"] < 1e-3
    assert "quality" not in first and first["vs_first"]["decode_2"] == 1.0
    md = (tmp_path / "run.md").read_text()
    assert "peak RSS, one image" in md and "decode ms median" in md and md.count("\n| ") >= 7


def test_the_shipped_model_and_its_memory_only_mode(blocked, tmp_path):
    out = tmp_path / "run.json"
    r = bench(blocked, REPO / "models" / "default", "--memory-only", "--json", out, "-q")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    (row,) = json.loads(out.read_text())["rows"]
    assert row["peak_rss_image_mib"] > row["baseline_mib"] > 0 and "batches" not in row
    assert row["one_image"]["guidance_scale"] > 1 and row["one_image"]["decode_s"] > 0
    assert "peak RSS, one image" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["{missing}"], "{missing}"),
    (["{model}", "--batch", "2,x"], "--batch takes comma-separated integers"),
    (["{model}", "--batch", "0"], "--batch takes integers >= 1"),
    (["{model}", "--batch", "3"], "2 per image with guidance"),
    (["{model}", "--rounds", "0"], "--rounds must be >= 1"),
    (["{model}", "--providers", "nosuch"], "nosuch"),
    (["{model}", "--plot", "x.png"], "pip install 'tessera-ar[plot]'"),
])
def test_bad_input_is_one_error_line(blocked, tmp_path, args, message):
    fill = {"missing": str(tmp_path / "nope"), "model": str(REPO / "models" / "default")}
    r = bench(blocked, *[a.format(**fill) for a in args])
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("tessera: error:") and message.format(**fill) in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


# Every module a decode peer needs (benchmarks/decode_peers.py: NEEDS). The test decides which are present
# (a stand-in module with a spec) and which are missing, so it does not depend on what this machine installed.
PEER_MODULES = ("torch", "onnx", "transformers", "tokenizers", "onnxruntime_genai", "optimum", "optimum.onnxruntime")


@pytest.mark.parametrize("missing,expected", [
    ({"onnxruntime_genai"}, {"genai-int4": "onnxruntime-genai"}),
    ({"optimum", "optimum.onnxruntime"}, {"optimum": "optimum-onnx"}),
    ({"optimum.onnxruntime"}, {"optimum": "optimum-onnx"}),  # optimum without its onnxruntime part
    ({"transformers", "tokenizers", "onnxruntime_genai", "optimum", "optimum.onnxruntime"},  # torch and onnx only
     {"genai-int4": "transformers, tokenizers, onnxruntime-genai", "optimum": "transformers, optimum-onnx"}),
], ids=["genai", "optimum", "optimum-onnx", "no-peer-packages"])
def test_a_peer_that_cannot_run_fails_the_decode_benchmark_naming_its_package(missing, expected):
    """benchmarks/decode_peers.py (run as a script) refuses before measuring anything, one line per peer that
    cannot run naming exactly the packages it lacks and the peers extra."""
    code = ("import importlib.machinery, runpy, sys, types\n"
            f"for name in {PEER_MODULES!r}:\n"
            f"    if name in {sorted(missing)!r}:\n"
            "        sys.modules[name] = None\n"
            "    else:\n"
            "        sys.modules[name] = module = types.ModuleType(name)\n"
            "        module.__spec__ = importlib.machinery.ModuleSpec(name, None)\n"
            "sys.argv = ['decode_peers.py', '--peers', 'tessera-fp32,genai-int4,optimum', '--quick']\n"
            "runpy.run_path('benchmarks/decode_peers.py', run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == len(expected), r.stderr
    for line, (peer, packages) in zip(lines, expected.items()):
        assert line.startswith(f"decode_peers: error: peer {peer} needs {packages} (not installed): "), r.stderr
        assert "'.[peers]'" in line and "--peers" in line
