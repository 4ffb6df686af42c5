"""A transformer self-test, recorded at export and re-run at load: does the graph compute what its
manifest describes?

Why: the token layout (class token ids, the null class, `rope_grid`'s cell positions) follows from the
manifest's `transformer` fields, while the graph bakes in its embedding and rotary tables. A manifest
edited or paired with another model's graph would pass every checksum and schema check and generate
different images without a word. One small call (both class rows, a few cells across a row boundary)
and 32 of its logits per row catch that: a different layout moves the logits by a good part of their
scale, while another onnxruntime build or provider moves them by rounding only.

The call's inputs are recorded with its logits (`graphs.transformer.self_test`), so a host in any
language replays it without deriving them; at load they must also be what the manifest's layout gives
(`spec.probe_inputs`), or the layout fields were edited after export.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import ModelDirectoryError
from .spec import REEXPORT, SelfTestSpec, TokenLayout, probe_inputs

PROBE_VALUES = 32
# Allowed difference, relative to the recorded logits' scale: rounding between builds and providers
# (fp16 on a GPU against the CPU at export; int8 compute in quantized kernels), far below what a
# wrong layout does (tests/test_self_test.py measures both).
TOLERANCE = {"fp32": 1e-3, "fp16": 3e-2, "int8": 5e-2, "int4": 1e-1}

Run = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (ids, positions, mask) -> logits


def _call(ids, positions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids, positions = np.asarray(ids, np.int64), np.asarray(positions, np.int64)
    b, s = ids.shape
    return ids, positions, np.broadcast_to(np.tril(np.ones((s, s), bool)), (b, s, s)).copy()


def probe_call(layout: TokenLayout, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The probe's (ids, positions, causal mask) for this layout and trained grid."""
    return _call(*probe_inputs(layout, grid))


def record(run: Run, layout: TokenLayout, grid: tuple[int, int], precision: str) -> SelfTestSpec:
    """The manifest entry `graphs.transformer.self_test` for this graph."""
    ids, positions = probe_inputs(layout, grid)
    last = np.asarray(run(*_call(ids, positions)), np.float64)[:, -1]
    idx = np.unique(np.linspace(0, last.shape[-1] - 1, PROBE_VALUES).round().astype(int))
    return SelfTestSpec(tuple(map(tuple, ids)), tuple(map(tuple, positions)), tuple(idx.tolist()),
                        tuple(tuple(round(float(v), 6) for v in row[idx]) for row in last),
                        TOLERANCE.get(precision, max(TOLERANCE.values())))


def verify(entry: SelfTestSpec | None, run: Run, layout: TokenLayout, grid: tuple[int, int],
           model_name: str) -> float:
    """Re-run the recorded probe; a ModelDirectoryError when its inputs are not the layout's or the
    graph disagrees with the recorded logits. Returns the relative difference."""
    wrong = (f"{model_name}: the transformer graph does not compute what its manifest describes ({{}}): the "
             "token layout, rope_grid or classes in tessera.json disagree with the graph, or the graph belongs "
             f"to another model; re-export the model ({REEXPORT}) or get it from a trusted source")
    if entry is None:
        raise ModelDirectoryError(f"{model_name}: graphs.transformer.self_test is missing, so the graph cannot be "
                                  f"checked against its manifest (exported before the self-test); re-export the "
                                  f"model: {REEXPORT}")
    ids, positions = probe_inputs(layout, grid)
    if [list(r) for r in entry.input_ids] != ids or [list(r) for r in entry.position_ids] != positions:
        raise ModelDirectoryError(wrong.format("the recorded self-test call is not the one the manifest's "
                                               "transformer fields give"))
    got = np.asarray(run(*_call(entry.input_ids, entry.position_ids)), np.float64)[:, -1][:, list(entry.indices)]
    want = np.asarray(entry.values, np.float64)
    scale = max(float(np.abs(want).max()), 1e-6)
    diff = float(np.abs(got - want).max()) / scale
    if not diff <= entry.tolerance:
        raise ModelDirectoryError(wrong.format(f"self-test logits differ by {diff:.1%} of their scale, allowed "
                                               f"{entry.tolerance:.1%}"))
    return diff
