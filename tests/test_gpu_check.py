"""The GPU check (benchmarks/gpu_check.py) on the CPU: its PyTorch decode loop equals the reference
loop, the CPU dry run never overwrites the GPU results, the whole script runs end to end on
GPT-Tiny (--quick) with the provider switched to CPU (~10 s), and the any-order stage times a
GPT-Tiny any-order export and steps aside when the budget is spent."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
gpu_check = pytest.importorskip("gpu_check")


@pytest.fixture(scope="module")
def tiny_gpt():
    from tessera.export.build import build_gpt
    from tessera.export.config import gpt_preset

    return build_gpt(gpt_preset("GPT-Tiny"), None, seed=0)


@pytest.mark.parametrize("guidance,temperature", [(1.0, 0.0), (2.0, 1.0)])
def test_torch_loop_equals_the_reference_loop(tiny_gpt, guidance, temperature):
    from tessera.export.reference import generate_tokens as reference_tokens
    from tessera.runtime.sampling import SamplingConfig

    sampling = SamplingConfig(temperature=temperature, top_k=16)
    ref = reference_tokens(tiny_gpt, [1, 2], guidance, sampling, 0)
    steps = []
    ours = gpu_check.torch_generate(tiny_gpt, [1, 2], guidance, sampling, 0, lambda j, n, t: steps.append(j))
    np.testing.assert_array_equal(ours, ref)
    assert steps == list(range(1, tiny_gpt.cfg.grid ** 2 + 1))


def test_timed_tokens_stops_after_n():
    def run(callback):
        for j in range(100):
            callback(j + 1, 100, None)

    assert len(gpu_check.timed_tokens(run, 5)) == 5


def test_cpu_dry_run_refuses_the_gpu_results_file():
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--provider", "cpu", "--out", str(gpu_check.GPU_RESULTS)])
    assert gpu_check.parse_args(["--provider", "cpu"]).out != gpu_check.GPU_RESULTS
    assert gpu_check.parse_args(["--provider", "cuda"]).out == gpu_check.GPU_RESULTS


def test_quick_dry_run_end_to_end(tmp_path):
    out = tmp_path / "gpu.md"
    assert gpu_check.main(["--provider", "cpu", "--quick", "--out", str(out), "--work", str(tmp_path / "w")]) == 0
    text = out.read_text()
    assert "CPU dry run" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| gpt-tiny-")]
    assert len(rows) == 8  # fused and portable x fp32, fp16, int8, int4
    fp32 = [ln for ln in rows if "| fp32 |" in ln]
    assert all(ln.count("100.0 %") == 4 for ln in fp32)  # fp32 tokens = CPU fp32 = PyTorch
    assert "**" not in "".join(rows)  # every graph ran on the requested provider
    assert "any-order stage: not run" in text


def test_anyorder_stage_steps_aside_without_time(tmp_path):
    rows, notes = [], []
    gpu_check.anyorder_stage("cpu", tmp_path, 1, lambda: 0.0, rows, notes, lambda: None, print)
    assert rows == [] and "any-order stage skipped" in notes[0]
    assert not any(tmp_path.iterdir())  # nothing exported


def test_time_anyorder_on_a_tiny_anyorder_model(tmp_path):
    spec = gpu_check.anyorder_spec("GPT-Tiny", {})
    gpu_check.export(spec, *spec.build(), tmp_path, print)
    path = spec.dirs[("portable", "fp32")]
    rows = gpu_check.time_anyorder(path, "cpu", (8, 4), 2, lambda: 1e9)
    assert [(r["decoding"], r["calls"], r["rounds"]) for r in rows] == [
        ("sequential", 16, 2), ("any-order, 8 steps", 8, 2), ("any-order, 4 steps", 4, 2)]
    table = gpu_check.anyorder_table(rows)
    assert "| 2.00x | 2 |" in table[3] and "| 4.00x | 2 |" in table[4]  # calls ratio, rounds
    assert gpu_check.time_anyorder(path, "cpu", (8,), 2, lambda: 0.0).startswith(f"{path.name}: not timed")
