"""Open onnxruntime sessions with errors a user can act on, never a bare onnxruntime traceback."""
from __future__ import annotations

import warnings
from pathlib import Path

import onnxruntime as ort

from .errors import ModelDirectoryError


def session_options(threads: int | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


def open_session(path: Path, providers: list[str], threads: int | None = None) -> ort.InferenceSession:
    if not path.is_file():
        raise ModelDirectoryError(f"graph {path} is missing; re-export or re-copy the model directory")
    try:
        sess = ort.InferenceSession(str(path), sess_options=session_options(threads), providers=providers)
    except Exception as e:  # onnxruntime raises several unrelated types for a bad file
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ModelDirectoryError(
            f"onnxruntime could not load {path.name} ({first}). The file is corrupt, truncated or was made "
            "for a newer onnxruntime; re-export the model or upgrade onnxruntime."
        ) from None
    missing = [p for p in providers if p not in sess.get_providers()]
    if missing:
        warnings.warn(f"{path.name}: onnxruntime could not start {', '.join(missing)} and runs on "
                      f"{', '.join(sess.get_providers())} (check the GPU driver / CUDA libraries)", RuntimeWarning,
                      stacklevel=3)
    return sess
