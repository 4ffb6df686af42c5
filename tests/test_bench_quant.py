"""How `tessera bench` (and benchmarks/quant_variants.py on top of it) judges quantized variants against the
first directory: token agreement, teacher-forced logit error, ratios, noise flags, and the tables' columns, on
synthetic worker results (no models, well under a second)."""
from __future__ import annotations

import numpy as np
import pytest

from tessera.bench import run as bench_run
from tessera.bench.quality import logit_error, token_agreement
from tessera.bench.report import model_table, render, speed_table


def test_token_agreement_counts_equal_tokens():
    a = np.arange(12).reshape(1, 3, 4)
    b = a.copy()
    b[0, 2, 1:] = 0
    assert token_agreement(a, a) == 1.0 and token_agreement(a, b) == pytest.approx(9 / 12)
    with pytest.raises(ValueError):
        token_agreement(a, a[:, :2])


def test_logit_error_max_mean_and_argmax_agreement():
    ref = np.array([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]], np.float32)
    out = ref.copy()
    out[1, 1] = 4.0  # moves the argmax of position 1
    e = logit_error(ref, out)
    assert e["max_abs_logit_error"] == 4.0 and e["argmax_agreement"] == 0.5 and e["logit_scale"] == 5.0
    assert e["mean_abs_logit_error"] == pytest.approx(4 / 6) and e["positions"] == 2


def _mem(peak_image: float) -> dict:
    snap = lambda peak: {"peak_mib": peak, "source": "VmHWM"}  # noqa: E731
    return {"after_import": snap(50.0), "after_load": snap(peak_image - 10), "after_image": snap(peak_image),
            "image": {"tokens_s": 0.5, "decode_s": 0.2, "guidance_scale": 4.0}, "load_s": 0.3, "sha256_s": 0.1,
            "provider": "CPUExecutionProvider"}


def _speed(median: float, load=(0.5, 0.5)) -> dict:
    run = {"prefill_s": 0.01, "whole_s": 1.0, "intervals_ms": [median] * 9, "images": 1, "image_s": median / 10}
    return {"load_s": 0.2, "provider": "CPUExecutionProvider", "runs": {"2": run},
            "load_before": [load[0], 0, 0], "load_after": [load[1], 0, 0]}


def _row(name: str, peak: float, medians: list[float]) -> dict:
    row = {"dir": name, "name": name, "graphs_mib": 10.0, "precision": "fp32", "guidance": 4.0, "grid": [7, 7],
           "provider": "cpu", "memory": _mem(peak), "speed_rounds": [_speed(m) for m in medians]}
    return bench_run._combine(row)


def _run(rows: list[dict], load_before: float = 0.1) -> dict:
    run = {"environment": {"date": "2026-01-01 00:00 UTC", "cpu": "test", "cores": 2, "versions": {"numpy": "x"},
                           "load_before": [load_before, 0, 0], "load_after": [0.2, 0, 0]},
           "settings": {"rounds": 2, "warmup": 8, "threads": None, "seed": 0, "guidance_scale": None},
           "rows": rows, "errors": [], "notes": []}
    bench_run._ratios(rows)
    bench_run._flag_noise(run)
    return run


def test_rounds_combine_and_ratios_are_to_the_first_directory():
    fp32, int4 = _row("fp32", 200.0, [10.0, 10.0]), _row("int4", 120.0, [4.0, 6.0])
    run = _run([fp32, int4])
    assert int4["batches"]["2"]["median_ms"] == 5.0 and int4["batches"]["2"]["round_medians_ms"] == [4.0, 6.0]
    assert int4["vs_first"]["decode_2"] == 0.5 and int4["vs_first"]["peak_rss_image"] == 0.6
    assert fp32["vs_first"]["decode_2"] == 1.0
    assert int4["baseline_mib"] == 50.0 and int4["load_s"] == 0.2 and int4["sha256_s"] == 0.1
    assert run["noisy"] is True  # int4's rounds 4 and 6 ms are 50 % apart
    assert "int4" in run["notes"][0] and "competed" not in run["notes"][0]  # a quiet machine is not blamed


def test_a_quiet_run_is_not_flagged_and_a_loaded_one_is():
    rows = [_row("a", 100.0, [10.0, 10.5]), _row("b", 100.0, [5.0, 5.1])]
    assert _run(rows)["noisy"] is False
    rows = [_row("a", 100.0, [10.0, 10.5])]
    loaded = _run(rows, load_before=3.5)
    assert loaded["noisy"] is True and "3.50 on 2 cores" in loaded["notes"][0]


def test_tables_have_a_row_per_directory_and_batch_with_quality_columns():
    fp32, int4 = _row("fp32", 200.0, [10.0]), _row("int4", 120.0, [5.0])
    int4["quality"] = {"token_agreement": 0.75, "max_abs_logit_error": 0.2, "argmax_agreement": 0.9}
    run = _run([fp32, int4])
    head, rows = model_table(run)
    col = {h: i for i, h in enumerate(head)}
    assert len(rows) == 2 and rows[0][col["token agreement"]] == "reference"
    assert rows[1][col["token agreement"]] == "75.0 %" and rows[1][col["x first"]] == "0.60"
    head, rows = speed_table(run)
    assert len(rows) == 2 and rows[1][head.index("decode x first")] == "0.50"
    assert "peak RSS, one image MiB" in render(run, markdown=True)


def test_a_provider_onnxruntime_dropped_is_an_error():
    row = _row("a", 100.0, [10.0])
    row["provider"] = "cuda"
    run = _run([row])
    bench_run._check_providers(run)
    assert run["errors"] and "asked for cuda" in run["errors"][0]


@pytest.mark.parametrize("text,ok", [("2,8", [2, 8]), (" 4 ", [4]), ("2,2", [2]), ("2,x", None), ("0", None), ("", None)])
def test_batch_lists(text, ok):
    from tessera.runtime.errors import InvalidInputError

    if ok is None:
        with pytest.raises(InvalidInputError):
            bench_run.parse_int_list(text, "--batch")
    else:
        assert bench_run.parse_int_list(text, "--batch") == ok
