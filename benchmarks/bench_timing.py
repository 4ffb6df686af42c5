"""Timing of whole generations, shared by the decode benchmark (decode_peers.py) and its peer workers
(peers_llama.py): warm-up, rounds, and a generation cut short after a time budget."""
from __future__ import annotations

import time

import numpy as np


class StopGeneration(Exception):
    """Raised from a per-token hook to end a warm-up generation early."""


def run_rounds(one, batches: list[int], warmup: int, rounds: int, tokens: int, max_s: float | None = None) -> dict:
    """`one(rows, n, max_s) -> (t0, [time each sampled token was ready])`: a generation of `n` tokens,
    cut short after `max_s` seconds. Warm every batch size up with a short generation, then `rounds`
    whole generations per batch size. A generation cut short extrapolates its whole-image time from its
    mean interval (flagged `estimated`)."""
    for rows in batches:
        one(rows, warmup, None)
    runs: dict[str, list] = {str(r): [] for r in batches}
    for _ in range(rounds):
        for rows in batches:
            t0, ts = one(rows, tokens, max_s)
            if len(ts) < 3:
                raise RuntimeError(f"only {len(ts)} token timestamps")
            iv = np.diff(ts)
            complete = len(ts) >= tokens
            whole = ts[-1] - t0 if complete else (ts[0] - t0) + (tokens - 1) * float(iv.mean())
            runs[str(rows)].append({"prefill_s": ts[0] - t0, "whole_s": whole, "tokens_timed": len(ts),
                                    "estimated": not complete,
                                    "intervals_ms": [round(x, 4) for x in (iv * 1e3).tolist()]})
    return runs


def should_stop(t0: float, count: int, n: int, max_s: float | None) -> bool:
    return count >= n or (max_s is not None and time.perf_counter() - t0 > max_s)
