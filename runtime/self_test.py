"""A transformer self-test, recorded at export and re-run at load: does the graph compute what its
manifest describes?

Why: the token layout (class token ids, the null class, `rope_grid`'s cell positions) lives in the
manifest, while the graph bakes in its embedding and rotary tables. A manifest edited or paired with
another model's graph would pass every checksum and schema check and generate different images
without a word. One small call (both class rows, a few cells across a row boundary, built from the
manifest's layout) and 32 of its logits per row catch that: a different layout moves the logits by a
good part of their scale, while another onnxruntime build or provider moves them by rounding only.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .errors import ModelDirectoryError
from .spec import TokenLayout

PROBE_VALUES = 32
# Allowed difference, relative to the recorded logits' scale: rounding between builds and providers
# (fp16 on a GPU against the CPU at export; int8 compute in quantized kernels), far below what a
# wrong layout does (tests/test_self_test.py measures both).
TOLERANCE = {"fp32": 1e-3, "fp16": 3e-2, "int8": 5e-2, "int4": 1e-1}

Run = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (ids, positions, mask) -> logits


def probe_call(layout: TokenLayout, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The class token of class 0 and of the null class, then four cells in raster order that cross
    a row boundary, in one causal call."""
    h, w = grid
    n = h * w
    cells = np.array(sorted({0, min(1, n - 1), min(w, n - 1), n - 1}))
    tokens = (np.arange(len(cells)) * 7919 + 3) % layout.vocab_size
    ids = np.empty((2, 1 + len(cells)), np.int64)
    ids[:, 0] = layout.class_ids(np.array([0, layout.null_class_id]))
    ids[:, 1:] = tokens
    pos = np.concatenate([[0], layout.cell_position(cells // w, cells % w)]).astype(np.int64)
    s = ids.shape[1]
    return ids, np.broadcast_to(pos, (2, s)).copy(), np.broadcast_to(np.tril(np.ones((s, s), bool)), (2, s, s)).copy()


def record(run: Run, layout: TokenLayout, grid: tuple[int, int], precision: str) -> dict:
    """The manifest entry `graphs.transformer.self_test` for this graph."""
    last = np.asarray(run(*probe_call(layout, grid)), np.float64)[:, -1]
    idx = np.unique(np.linspace(0, last.shape[-1] - 1, PROBE_VALUES).round().astype(int))
    return {"indices": idx.tolist(), "values": [[round(float(v), 6) for v in row[idx]] for row in last],
            "tolerance": TOLERANCE.get(precision, max(TOLERANCE.values()))}


def _parse(entry: object, vocab_size: int) -> tuple[np.ndarray, np.ndarray, float]:
    field = "graphs.transformer.self_test"
    try:
        idx = np.asarray(entry["indices"], dtype=np.int64)
        values = np.asarray(entry["values"], dtype=np.float64)
        tolerance = float(entry["tolerance"])
    except (TypeError, KeyError, ValueError, OverflowError):
        raise ModelDirectoryError(f"tessera.json: {field} must hold 'indices', 'values' and 'tolerance'; "
                                  "re-export the model") from None
    if not (idx.ndim == 1 and 0 < idx.size <= 4 * PROBE_VALUES and idx.min() >= 0 and idx.max() < vocab_size
            and values.shape == (2, idx.size) and np.isfinite(values).all()
            and math.isfinite(tolerance) and 0 < tolerance <= 1):
        raise ModelDirectoryError(f"tessera.json: {field} is malformed (indices within the vocabulary, two rows "
                                  "of finite values, a tolerance in (0, 1]); re-export the model")
    return idx, values, tolerance


def verify(entry: object, run: Run, layout: TokenLayout, grid: tuple[int, int], model_name: str) -> float:
    """Re-run the probe; a ModelDirectoryError when the graph disagrees with the recorded logits.
    Returns the relative difference."""
    idx, want, tolerance = _parse(entry, layout.vocab_size)
    got = np.asarray(run(*probe_call(layout, grid)), np.float64)[:, -1][:, idx]
    scale = max(float(np.abs(want).max()), 1e-6)
    diff = float(np.abs(got - want).max()) / scale
    if not diff <= tolerance:
        raise ModelDirectoryError(
            f"{model_name}: the transformer graph does not compute what its manifest describes (self-test "
            f"logits differ by {diff:.1%} of their scale, allowed {tolerance:.1%}): the token layout, rope_grid "
            "or classes in tessera.json disagree with the graph, or the graph belongs to another model; "
            "re-export the model")
    return diff
