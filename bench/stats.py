"""Per-token statistics, and how several rounds of one measurement combine.

Decode time is the interval between consecutive sampled tokens (one forward + sampling). Several
rounds either pool their intervals or keep the best round (on a shared machine noise only adds time).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def interval_stats(intervals_ms: Sequence[float]) -> dict:
    """Median, p90, mean and count of per-token intervals (ms)."""
    iv = np.asarray(intervals_ms, dtype=np.float64)
    if iv.size == 0:
        raise ValueError("no intervals to summarize")
    return {"median_ms": float(np.median(iv)), "p90_ms": float(np.percentile(iv, 90)), "mean_ms": float(iv.mean()),
            "n": int(iv.size)}


def summarize(runs: list[dict]) -> dict:
    """Runs of one (model, batch), each {"prefill_s", "whole_s", "intervals_ms", "estimated"?} -> the
    pooled interval statistics plus the median prefill and whole-generation time."""
    out = interval_stats(np.concatenate([np.asarray(r["intervals_ms"], np.float64) for r in runs]))
    out.update(prefill_ms=float(np.median([r["prefill_s"] for r in runs]) * 1e3),
               whole_s=float(np.median([r["whole_s"] for r in runs])), rounds=len(runs),
               estimated=any(r.get("estimated", False) for r in runs))
    return out


def summarize_rounds(runs: list[dict], mode: str = "pooled") -> dict:
    """"pooled": every round's intervals together; "best": the round with the lowest median. Either way
    the per-round medians are kept, so a reader sees the spread."""
    if mode not in ("pooled", "best"):
        raise ValueError(f"mode must be 'pooled' or 'best', got {mode!r}")
    per_round = [summarize([r]) for r in runs]
    out = summarize(runs) if mode == "pooled" or len(runs) == 1 else dict(min(per_round, key=lambda s: s["median_ms"]))
    out.update(rounds=len(runs), aggregate=mode, round_medians_ms=[round(s["median_ms"], 3) for s in per_round])
    return out


def spread(values: Iterable[float]) -> float:
    """(max - min) / min of positive values: 0.25 = the slowest round took 25 % longer than the fastest."""
    v = [x for x in values if x and x > 0]
    return (max(v) - min(v)) / min(v) if len(v) > 1 else 0.0


def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, None when either is missing or the reference is zero."""
    if value is None or not reference:
        return None
    return value / reference


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for fewer than two values): the spread over seeds of one
    setting is the sampling noise floor the other settings are read against."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")
