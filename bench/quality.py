"""Quality of a variant against a reference directory: the same seed's tokens, and logits with the
reference's tokens fed in (teacher-forced), so one early divergence does not hide every later error."""
from __future__ import annotations

import numpy as np


def teacher_forced_logits(pipe, label: int, tokens: np.ndarray) -> np.ndarray:
    """Logits `[n, V]` of the conditional row for one image's tokens `[n]` (raster order), in one
    causal call: position i sees the class token and tokens 0..i-1."""
    from tessera.runtime.decoders import cell_positions

    layout, tokens = pipe.layout, np.asarray(tokens).reshape(-1)
    n = tokens.size
    ids = np.empty((1, n), np.int64)
    ids[0, 0] = layout.class_ids(np.array([label]))[0]
    ids[0, 1:] = tokens[:-1]
    pos = np.concatenate([[0], cell_positions(layout, pipe.grid)[: n - 1]]).astype(np.int64)[None]
    mask = np.tril(np.ones((n, n), bool))[None]
    pipe.transformer.start(1, n + 1)
    try:
        return np.array(pipe.transformer(ids, pos, mask)[0], dtype=np.float32)
    finally:
        pipe.transformer.release()


def token_agreement(reference: np.ndarray, other: np.ndarray) -> float:
    """Share of identical tokens (same classes and seeds); shapes must match."""
    a, b = np.asarray(reference), np.asarray(other)
    if a.shape != b.shape:
        raise ValueError(f"token grids differ in shape: {a.shape} vs {b.shape}")
    return float((a == b).mean())


def logit_error(reference: np.ndarray, other: np.ndarray) -> dict:
    """Max and mean |logit difference|, the reference's logit scale, and next-token argmax agreement."""
    ref, out = np.asarray(reference, np.float32), np.asarray(other, np.float32)
    if ref.shape != out.shape:
        raise ValueError(f"logits differ in shape: {ref.shape} vs {out.shape}")
    err = np.abs(out - ref)
    return {"max_abs_logit_error": float(err.max()), "mean_abs_logit_error": float(err.mean()),
            "logit_scale": float(np.abs(ref).max()),
            "argmax_agreement": float((out.argmax(-1) == ref.argmax(-1)).mean()), "positions": int(ref.shape[0])}
