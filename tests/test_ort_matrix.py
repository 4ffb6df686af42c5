"""The support matrix: every graph kind and precision of a tiny model, and the shipped default, load
and agree with PyTorch on each tested onnxruntime version (export/ort_matrix.py defines agreement).

Each version runs in its own cached virtual environment built from a cached wheel; .ci/run fills
the wheel cache (`python -m tessera.export.ort_matrix --download-only`), so the test makes no network call.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def test_every_tested_onnxruntime_runs_every_graph(tmp_path_factory):
    from tessera.export import ort_matrix
    from tessera.models import default_model_dir

    missing = ort_matrix.missing_wheels()
    if missing:
        message = (f"onnxruntime wheels {', '.join(missing)} are not cached in {ort_matrix.wheel_dir()}; "
                   f"run: {ort_matrix.DOWNLOAD_COMMAND}")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("matrix")
    dirs = ort_matrix.tiny_model_dirs(root / "models")
    dirs["shipped default"] = default_model_dir()
    table = ort_matrix.run_matrix(dirs, root)
    failures = [f"{label} on onnxruntime {v}: {why}" for label, row in table.items()
                for v, (ok, why) in row.items() if not ok]
    assert not failures, "\n".join(failures)


def test_the_module_fills_the_cache_or_refuses_without_it(monkeypatch, capsys, tmp_path):
    """`python -m tessera.export.ort_matrix --download-only` (CI) caches the wheels and stops; a run without
    them stops before any export with one line naming the command that fills the cache."""
    from tessera.export import ort_matrix

    fetched = []
    monkeypatch.setattr(ort_matrix, "download_wheels", lambda: fetched.append(True))
    assert ort_matrix.main(["--download-only"]) == 0 and fetched == [True]
    monkeypatch.setattr(ort_matrix, "missing_wheels", lambda: ["1.22.1"])
    monkeypatch.setattr(ort_matrix, "tiny_model_dirs", lambda root: pytest.fail("exported without the wheels"))
    assert ort_matrix.main(["--out", str(tmp_path / "m.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1.22.1" in err[0] and ort_matrix.DOWNLOAD_COMMAND in err[0]
    assert not (tmp_path / "m.md").exists()
    # run from a source checkout, the table goes to its benchmarks/results by default; installed, nowhere
    repo = Path(__file__).resolve().parents[1]
    from_checkout = Path(ort_matrix.__file__).resolve().parents[1] == repo
    assert ort_matrix.checkout_results() == (repo / "benchmarks" / "results" / "ort_matrix.md" if from_checkout else None)
