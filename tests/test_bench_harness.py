"""The decode benchmark's harness (benchmarks/decode_peers.py): timing, statistics, weight bytes and the
report, on synthetic inputs. No peer package is needed; this runs in well under a second."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
decode_peers = pytest.importorskip("decode_peers")


def fake_generation(step_s: float = 0.001):
    """A stand-in for a peer's generation: `one(rows, n, max_s)` sampling n tokens step_s apart."""
    calls = []

    def one(rows, n, max_s):
        calls.append((rows, n, max_s))
        t0 = time.perf_counter()
        ts = []
        for _ in range(n):
            time.sleep(step_s)
            ts.append(time.perf_counter())
            if decode_peers.should_stop(t0, len(ts), n, max_s):
                break
        return t0, ts

    return one, calls


def test_run_rounds_warms_up_then_times_whole_images():
    one, calls = fake_generation()
    runs = decode_peers.run_rounds(one, [2, 8], warmup=3, rounds=2, tokens=10)
    assert calls[:2] == [(2, 3, None), (8, 3, None)]  # warm-up first, short
    assert [c[1] for c in calls[2:]] == [10, 10, 10, 10]
    for rows in ("2", "8"):
        assert len(runs[rows]) == 2
        for r in runs[rows]:
            assert len(r["intervals_ms"]) == 9 and not r["estimated"]
            assert r["whole_s"] >= r["prefill_s"] > 0
    s = decode_peers.summarize(runs["2"])
    assert s["n"] == 18 and s["rounds"] == 2 and not s["estimated"]
    assert 0.5 <= s["median_ms"] <= s["p90_ms"] < 50


def test_a_generation_past_max_s_is_cut_and_extrapolated():
    one, _ = fake_generation(step_s=0.002)
    runs = decode_peers.run_rounds(one, [2], warmup=2, rounds=1, tokens=10_000, max_s=0.05)
    r = runs["2"][0]
    assert r["estimated"] and r["tokens_timed"] < 10_000
    assert r["whole_s"] == pytest.approx(r["prefill_s"] + 9_999 * np.mean(r["intervals_ms"]) / 1e3, rel=1e-3)


def test_weight_bytes_count_matmul_weights_not_gathered_tables(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.zeros((100, 8), np.float32), "table")
    w = numpy_helper.from_array(np.zeros((8, 16), np.float32), "w")
    packed = numpy_helper.from_array(np.zeros((16, 1, 4), np.uint8), "packed")  # as MatMulNBits' B
    nodes = [helper.make_node("Gather", ["table", "ids"], ["h"]),
             helper.make_node("MatMul", ["h", "w"], ["y"]),
             helper.make_node("Identity", ["packed"], ["p"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16]),
                               helper.make_tensor_value_info("p", TensorProto.UINT8, [16, 1, 4])],
                              [table, w, packed])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert decode_peers.weight_bytes_onnx(path) == 8 * 16 * 4 + 16 * 4


def _state(shape, peers, bandwidth=None):
    return {"command": "python benchmarks/decode_peers.py --quick", "started": "2026-01-01 00:00",
            "finished": "2026-01-01 00:05", "elapsed_s": 300.0, "cpu": "test cpu", "cores": 2, "threads": 2,
            "load_start": (0.5, 0.5, 0.5), "load_end": (0.6, 0.6, 0.6), "versions": {"numpy": np.__version__},
            "top_k": 2000, "warmup": 8, "rounds": 1, "cache": "benchmarks/.cache", "notes": ["a note"],
            "bandwidth": bandwidth, "shapes": [{"shape": shape, "peers": peers, "build_s": {"tessera-fp32": 3.0}}]}


def _stats(median, rounds=1, estimated=False):
    return {"median_ms": median, "p90_ms": median * 1.2, "mean_ms": median, "n": 255, "prefill_ms": 50.0,
            "whole_s": median * 0.256, "rounds": rounds, "estimated": estimated}


def test_report_has_ratios_targets_and_skips():
    from dataclasses import asdict

    shape = asdict(decode_peers.gpt_b_shape(quick=True))
    wb = 400e6
    peers = {
        "tessera-fp32": {"weight_bytes": wb, "stats": {"2": _stats(30.0), "8": _stats(45.0)}, "loads": [[0.5, 0.7]]},
        "genai-fp32": {"weight_bytes": wb, "stats": {"2": _stats(40.0), "8": _stats(45.0)}},
        "torch": {"weight_bytes": wb, "stats": {"2": _stats(150.0), "8": _stats(400.0, estimated=True)}},
        "optimum": {"error": "build failed: something"},
        "tessera-int4": {"skipped": "`tessera export --quant int4` does not exist in this tree yet"},
    }
    bw = {"runs": [{"weight_bytes": 398e6, "shape": [4096, 24320], "numpy_sum_gbps": 9.0,
                    "matmul": {"2": {"gbps": 16.0, "median_ms": 24.9}, "8": {"gbps": 12.0, "median_ms": 33.2}}}]}
    text = decode_peers.build_report(_state(shape, peers, bw))
    assert "| tessera-fp32 | fp32 | 2 | 30.0 |" in text
    assert "0.75 (vs tessera-fp32)" in text  # ours/peer vs genai at batch 2
    assert "| fp32 decode <= 0.9x onnxruntime-genai fp32 | 2 | 30.0 | 40.0 | 0.75 (ours/peer) | <= 0.9 | PASS |" in text
    assert "| fp32 decode <= 0.9x onnxruntime-genai fp32 | 8 | 45.0 | 45.0 | 1.00 (ours/peer) | <= 0.9 | FAIL |" in text
    assert ">= 4x faster than PyTorch eager (fp32) | 2 | 30.0 | 150.0 | 5.00 (peer/ours) | >= 4.0 | PASS" in text
    assert "| >= 1.3x faster than Optimum (fp32) | 2 | 30.0 | — | — | >= 1.3 | not measured |" in text
    # bound at batch 2: 400 MB at 16 GB/s = 25 ms; 30 / 25 = 1.2
    assert "| fp32 decode within 1.2x of the bandwidth bound | 2 | 30.0 | 25.0 | 1.20 (ours/peer) | <= 1.2 | PASS |" in text
    assert "**optimum**: FAILED: build failed" in text and "**tessera-int4**: skipped" in text
    assert "(est.)" in text and "a note" in text


def test_profile_aggregation(tmp_path):
    events = [{"cat": "Session", "name": "model_run", "dur": 1000},
              {"cat": "Session", "name": "model_run", "dur": 1200},
              {"cat": "Node", "name": "a_kernel_time", "dur": 600, "args": {"op_name": "MatMul"}},
              {"cat": "Node", "name": "b_kernel_time", "dur": 300, "args": {"op_name": "MatMul"}},
              {"cat": "Node", "name": "c_kernel_time", "dur": 100, "args": {"op_name": "GroupQueryAttention"}},
              {"cat": "Node", "name": "c_fence_before", "dur": 5, "args": {"op_name": "GroupQueryAttention"}}]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(events))
    agg = decode_peers.aggregate_profile(str(path))
    assert agg["runs"] == 2 and agg["op_us"] == {"MatMul": 900.0, "GroupQueryAttention": 100.0}
    table = decode_peers.profile_table({"tessera": agg, "genai": agg})
    assert "| MatMul | 0.45 | 0.45 |" in table and "1.10 (2 runs)" in table


def test_rounds_merge_best_or_pooled():
    def result(median, load):
        iv = [median] * 9
        return {"runs": {"2": [{"prefill_s": 0.05, "whole_s": 1.0, "estimated": False, "intervals_ms": iv}]},
                "load_before": [load, 0, 0], "load_after": [load, 0, 0], "peak_rss_mb": 100.0, "graph": {"kind": "x"}}

    results = [result(30.0, 1.0), result(90.0, 4.0)]
    best = decode_peers.merge_rounds(results, "best")
    assert best["stats"]["2"]["median_ms"] == 30.0 and best["stats"]["2"]["round_medians_ms"] == [30.0, 90.0]
    assert best["loads"] == [[1.0, 1.0], [4.0, 4.0]] and best["graph"] == {"kind": "x"} and "runs" not in best
    pooled = decode_peers.merge_rounds(results, "pooled")
    assert pooled["stats"]["2"]["n"] == 18 and pooled["stats"]["2"]["median_ms"] == 60.0
