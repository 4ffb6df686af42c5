"""The support matrix: every graph kind and precision of a tiny model, and the shipped default, load
and agree with PyTorch on each tested onnxruntime version (export/ort_matrix.py defines agreement).

Each version runs in its own cached virtual environment built from a cached wheel; .ci/run fills
the wheel cache (`python -m tessera.export.ort_matrix --download-only`), so the test makes no network call.
"""
from __future__ import annotations

import os

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
