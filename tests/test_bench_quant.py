"""benchmarks/quant_variants.py: the table / target / plot writer on a synthetic run (no models, ~2 s)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "quant_variants.py"


@pytest.fixture(scope="module")
def qv():
    spec = importlib.util.spec_from_file_location("quant_variants_under_test", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _row(qv, precision, files, peak, decode, acc=None, agree=None, tf=True):
    row = {"files_mib": files, "transformer_mib": files * 0.9, "load_s": 0.5, "sha256_s": 0.2, "size_check_s": 0.0,
           "peak_mib": peak, "after_load": {"peak_mib": peak}, "after_first_image": {"peak_mib": peak},
           "decode_median_ms": decode, "decode_p90_ms": decode * 1.2, "prefill_ms": 5.0, "image_s": decode * 0.3,
           "first_image_s": decode * 0.35, "timed_images": 2, "warmup_only": False,
           "graph": {"precision": precision},
           "export_parity": {"max_abs_logit_error": 0.05, "relative_logit_error": 0.02, "argmax_agreement": 0.9},
           "teacher_forced": None if precision == "fp32" or not tf else
           {"max_abs_logit_error": 0.1, "logit_scale": 10.0, "argmax_agreement": 0.95, "mean_abs_logit_error": 0.01,
            "positions": 98}}
    if agree is not None:
        row["agreement"] = {"tokens": agree, "images_identical": 0.5, "n_images": 4, "first_divergence_median": 10}
    if acc is not None:
        row["quality"] = {"accuracy": acc, "frechet_distance": 3.2, "n_images": 100, "accuracy_per_class": {}}
    return row


def _state(qv, int8_acc=0.905, int4_peak=300.0):
    return {
        "command": "python benchmarks/quant_variants.py --quick", "date": "2026-01-01 00:00 UTC",
        "uptime_start": "load average: 1.00", "uptime_end": "load average: 1.00", "threads": 2, "cpu": "test CPU",
        "versions": {"python": "3.11"}, "notes": ["a note"], "method": qv.METHOD, "quick": True,
        "baseline_mib": 60.0, "baseline_runs": [60.0, 60.0, 61.0], "total_s": 10.0,
        "models": {
            "default": {"title": "default", "how": "test", "standin": False, "sampling": {"guidance_scale": 3.0},
                        "dims": {"n_layer": 4, "dim": 192, "n_head": 3, "vocab_size": 512, "num_classes": 10,
                                 "parameters": 2e6, "grid": 7},
                        "variants": {"fp32": _row(qv, "fp32", 10, 100, 1.0, acc=0.91),
                                     "fp16": _row(qv, "fp16", 5, 90, 3.0, acc=0.91, agree=0.99),
                                     "int8": _row(qv, "int8", 4, 80, 0.8, acc=int8_acc, agree=0.9),
                                     "int4": _row(qv, "int4", 3, 80, 0.7, acc=0.89, agree=0.8),
                                     "int4-alt": _row(qv, "int4", 3, 80, 0.5, acc=0.85, agree=0.7, tf=False)}},
            "gpt-b": {"title": "gpt-b", "how": "test", "standin": False, "sampling": {"guidance_scale": 4.0},
                      "dims": {"n_layer": 12, "dim": 768, "n_head": 12, "vocab_size": 16384, "num_classes": 1000,
                               "parameters": 1.1e8, "grid": 16},
                      "variants": {"fp32": _row(qv, "fp32", 425, 600, 30.0),
                                   "int4": _row(qv, "int4", 112, int4_peak, 15.0, agree=0.3),
                                   "int4-alt": _row(qv, "int4", 112, 250, 9.0, agree=0.3)}},
        },
    }


def test_targets_pass_and_fail(qv):
    state = _state(qv)
    state["labels"] = qv.variant_labels({"int4": 4, "int4-alt": 0})
    ok = {t["name"]: t["passed"] for t in qv.targets(state)}
    assert ok["default int8: conditional accuracy within 1 point of fp32"] is True  # -0.5 points
    assert ok["default int4 (acc-level 4, default): conditional accuracy within 3 points of fp32"] is True  # -2
    assert ok["default int4 acc-level 0 (fp32 compute): conditional accuracy within 3 points of fp32"] is False  # -6
    # limit 1.3 * 112 + 150 = 295.6 MiB; 300 - 60 baseline = 240 passes, 400 - 60 = 340 fails
    assert ok["GPT-B int4 (acc-level 4, default): peak memory <= 1.3 x files + 150 MiB"] is True
    bad = {t["name"]: t["passed"] for t in qv.targets(_state(qv, int8_acc=0.89, int4_peak=400.0))}
    assert bad["default int8: conditional accuracy within 1 point of fp32"] is False
    assert bad["GPT-B int4: peak memory <= 1.3 x files + 150 MiB"] is False


def test_report_and_plot(qv, tmp_path):
    state = _state(qv, int4_peak=400.0)
    state["targets"] = qv.targets(state)
    state["memory_tokens"] = 16
    state["memory_investigation_reason"] = "failed"
    inv = {"peak_mib": 400.0, "above_baseline_mib": 340.0, "load_peak_mib": 400.0, "load_s": 1.0,
           "decode_median_ms": 15.0, "image_s": 4.0, "files_mib": 112.0,
           "rss_after_image": {"anon_mib": 200.0, "file_mib": 40.0}}
    state["memory_investigation"] = [dict(inv, label="as shipped"), dict(inv, label="opt", above_baseline_mib=200.0),
                                     {"label": "broken", "error": "boom"}]
    state["memory_conclusion"] = qv.memory_conclusion(state["memory_investigation"])
    assert "opt" in state["memory_conclusion"][0]
    out = tmp_path / "r.md"
    qv.write_outputs(state, out)
    text = out.read_text()
    assert "| int4 other acc-level |" in text and "fp16 is a GPU variant" in text
    assert "**FAIL**" in text and "**PASS**" in text
    assert "load average" in text and "Memory investigation" in text and "broken" in text
    # one speed row and one quality row per variant of each model
    assert text.count("| fp32 |") == 4
    assert (tmp_path / "r.png").stat().st_size > 10_000


def test_int4_levels_follow_the_cli_default(qv):
    """"int4" is whatever `tessera export` uses by default, read here from the export CLI's own parser;
    "int4-alt" is the other of the two measured levels (0 = fp32 compute, 4 = int8 compute)."""
    import argparse

    from tessera.export.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    default = parser.get_default("int4_accuracy_level")
    assert default in (0, 4)
    assert qv.int4_levels() == {"int4": default, "int4-alt": 4 - default}
    labels = qv.variant_labels(qv.int4_levels())
    assert labels["int4"] == f"int4 (acc-level {default}, default)" and f"acc-level {4 - default}" in labels["int4-alt"]


def test_skip_parsing(qv):
    assert qv.parse_skip(["fp16"]) == {("default", "fp16"), ("gpt-b", "fp16")}
    assert qv.parse_skip(["gpt-b:fp16,gpt-b:int8"]) == {("gpt-b", "fp16"), ("gpt-b", "int8")}
    with pytest.raises(SystemExit):
        qv.parse_skip(["int3"])
