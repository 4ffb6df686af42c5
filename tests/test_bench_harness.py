"""The measurement harness every benchmark runs on (tessera.bench): statistics, the worker-process
protocol and its errors, the peak-memory reader, and the one export cache key. No models; seconds."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tessera.bench import cache, memory, stats, timing
from tessera.bench.env import environment, is_noisy, versions
from tessera.bench.protocol import WorkerError, run_worker

WORKERS = Path(__file__).with_name("bench_test_workers.py")


# --- statistics ---------------------------------------------------------------------------------
def test_interval_stats_median_and_p90():
    s = stats.interval_stats(list(range(1, 101)))
    assert s["median_ms"] == 50.5 and s["p90_ms"] == pytest.approx(90.1) and s["n"] == 100
    with pytest.raises(ValueError):
        stats.interval_stats([])


def _run(median, n=9, prefill=0.05):
    return {"prefill_s": prefill, "whole_s": 1.0, "intervals_ms": [median] * n}


def test_rounds_pool_or_keep_the_best():
    runs = [_run(30.0), _run(90.0, prefill=0.07)]
    pooled = stats.summarize_rounds(runs, "pooled")
    assert pooled["n"] == 18 and pooled["median_ms"] == 60.0 and pooled["prefill_ms"] == pytest.approx(60.0)
    best = stats.summarize_rounds(runs, "best")
    assert best["median_ms"] == 30.0 and best["round_medians_ms"] == [30.0, 90.0] and best["rounds"] == 2
    with pytest.raises(ValueError):
        stats.summarize_rounds(runs, "mean")


def test_spread_and_ratio():
    assert stats.spread([10.0, 12.5]) == pytest.approx(0.25)
    assert stats.spread([5.0]) == 0.0
    assert stats.ratio(3.0, 4.0) == 0.75 and stats.ratio(None, 4.0) is None and stats.ratio(3.0, 0) is None


# --- timing of generations ------------------------------------------------------------------------
def fake_generation(step_s: float = 0.001):
    calls = []

    def one(rows, n, max_s):
        calls.append((rows, n, max_s))
        t0, ts = time.perf_counter(), []
        for _ in range(n):
            time.sleep(step_s)
            ts.append(time.perf_counter())
            if timing.should_stop(t0, len(ts), n, max_s):
                break
        return t0, ts

    return one, calls


def test_run_rounds_warms_up_then_times_whole_generations():
    one, calls = fake_generation()
    runs = timing.run_rounds(one, [2, 8], warmup=3, rounds=2, tokens=10)
    assert calls[:2] == [(2, 3, None), (8, 3, None)]
    assert [c[1] for c in calls[2:]] == [10] * 4
    for r in runs["2"] + runs["8"]:
        assert len(r["intervals_ms"]) == 9 and not r["estimated"] and r["whole_s"] >= r["prefill_s"] > 0


def test_a_generation_past_its_budget_is_cut_and_extrapolated():
    one, _ = fake_generation(step_s=0.002)
    r = timing.run_rounds(one, [2], warmup=2, rounds=1, tokens=10_000, max_s=0.05)["2"][0]
    assert r["estimated"] and r["tokens_timed"] < 10_000
    assert r["whole_s"] == pytest.approx(r["prefill_s"] + 9_999 * np.mean(r["intervals_ms"]) / 1e3, rel=1e-3)
    with pytest.raises(ValueError):
        timing.timed_run(0.0, [1.0], 10)


# --- peak memory ----------------------------------------------------------------------------------
def test_peak_memory_reader_parses_proc_status(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nRssAnon:\t 51200 kB\n")
    assert memory.read_status(status) == {"VmHWM": 200.0, "VmRSS": 100.0, "RssAnon": 50.0}
    assert memory.peak_rss_mib(status) == (200.0, "VmHWM")
    peak, source = memory.peak_rss_mib(tmp_path / "missing")  # no /proc: getrusage
    assert source == "ru_maxrss" and peak > 10


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc")
def test_peak_memory_sees_an_allocation():
    """In a fresh process, whose peak so far is its start-up, touching 128 MiB raises the peak by about that
    (in this test process an earlier test may have set a peak no allocation here would pass)."""
    code = ("import numpy as np; from tessera.bench import memory; before = memory.peak_rss_mib()[0]; "
            "block = np.ones(128 << 20, np.uint8); print(before, memory.peak_rss_mib()[0], block.size)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    before, after, _ = map(float, r.stdout.split())
    assert after >= before + 120, (before, after)


# --- the worker-process protocol -----------------------------------------------------------------
def test_a_worker_runs_in_a_fresh_process_and_reports_its_peak(tmp_path):
    out = run_worker(f"{WORKERS}:echo", {"x": 3, "mib": 40}, tmp_path, "ok")
    assert out["x"] == 3 and out["pid"] != os.getpid()
    assert out["peak_rss_mib"] >= 40 and out["rss_source"] in ("VmHWM", "ru_maxrss")
    assert len(out["load_before"]) == 3 and out["worker_s"] > 0



@pytest.mark.parametrize("target,job,message", [
    ("{w}:fails", {}, "ValueError: bad job value 7"),
    ("{w}:crashes", {}, "exited with status 3 and wrote no result"),
    ("{w}:not_a_dict", {}, "returned list, not a dict"),
    ("{w}:missing_function", {}, "no function 'missing_function'"),
    ("no_such_module_xyz:f", {}, "ModuleNotFoundError"),
    ("nocolon", {}, "must be 'module:function'"),
])
def test_worker_failures_are_one_worker_error_naming_the_cause(tmp_path, target, job, message):
    with pytest.raises(WorkerError) as e:
        run_worker(target.format(w=WORKERS), job, tmp_path, "bad")
    assert message in str(e.value) and "bad" in str(e.value)


def test_a_worker_past_its_timeout_is_an_error(tmp_path):
    with pytest.raises(WorkerError, match="no result after 1 s"):
        run_worker(f"{WORKERS}:sleeps", {"s": 30}, tmp_path, "slow", timeout=1)


# --- environment ----------------------------------------------------------------------------------
def test_environment_records_versions_and_load():
    env = environment(("numpy", "no-such-package-xyz"))
    assert env["versions"]["numpy"] == np.__version__ and env["versions"]["no-such-package-xyz"] == "not installed"
    assert len(env["load_before"]) == 3 and env["cores"] >= 1
    assert is_noisy(3.0, 2) and not is_noisy(0.5, 2)
    assert "git" in versions((), Path(__file__).resolve().parents[1])


# --- the export cache key -------------------------------------------------------------------------
def test_cache_key_changes_with_args_sources_and_code(tmp_path):
    code = tmp_path / "build.py"
    code.write_text("A = 1\n")
    src = tmp_path / "model"
    src.mkdir()
    (src / "tessera.json").write_text('{"name": "a"}')
    key = cache.cache_key(["--quant", "int4"], [src], [code])
    assert len(key) == 12 and key == cache.cache_key(["--quant", "int4"], [src], [code])
    assert key != cache.cache_key(["--quant", "int8"], [src], [code])
    (src / "tessera.json").write_text('{"name": "b"}')
    key2 = cache.cache_key(["--quant", "int4"], [src], [code])
    assert key2 != key
    code.write_text("A = 2\n")
    assert cache.cache_key(["--quant", "int4"], [src], [code]) != key2


def test_the_cache_key_covers_the_export_stage_sources():
    files = {p.name for p in cache.export_sources()}
    assert {"quantize.py", "onnx_builder.py", "model_dir.py"} <= files


def test_cached_export_reuses_a_complete_directory_and_names_quant_all_siblings(tmp_path):
    args = ["--gpt", "GPT-Tiny", "--quant", "all"]
    base = tmp_path / f"tiny-{cache.cache_key(args)}"
    for v in cache.QUANT_ALL:
        d = base.with_name(f"{base.name}-{v}")
        d.mkdir()
        (d / "tessera.json").write_text("{}")
    assert cache.cached_export(tmp_path, "tiny", args, log=lambda *_: pytest.fail("rebuilt")) == base
