"""Timing of whole generations from per-token timestamps, for any generator (ours or a peer's):
warm-up, rounds, and a generation cut short after a time budget (its whole time extrapolated)."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

# one(rows, n, max_s) -> (t0, [time each sampled token was ready]): a generation of n tokens for `rows` rows
Generation = Callable[[int, int, "float | None"], "tuple[float, list[float]]"]


class StopGeneration(Exception):
    """Raised from a per-token hook to end a generation early (warm-up, time budget)."""


def should_stop(t0: float, count: int, n: int, max_s: float | None) -> bool:
    """True once `count` of `n` tokens are done or the generation has run past `max_s` seconds."""
    return count >= n or (max_s is not None and time.perf_counter() - t0 > max_s)


def timed_run(t0: float, stamps: list[float], tokens: int, end: float | None = None) -> dict:
    """One generation's record from its start and per-token timestamps. A generation cut short
    extrapolates its whole time from its mean interval (flagged `estimated`)."""
    if len(stamps) < 2:
        raise ValueError(f"only {len(stamps)} token timestamps: too few to time a generation")
    iv = np.diff(stamps)
    complete = len(stamps) >= tokens
    whole = (end or stamps[-1]) - t0 if complete else (stamps[0] - t0) + (tokens - 1) * float(iv.mean())
    return {"prefill_s": stamps[0] - t0, "whole_s": whole, "tokens_timed": len(stamps), "estimated": not complete,
            "intervals_ms": [round(x, 4) for x in (iv * 1e3).tolist()]}


def callback_generation(generate: Callable[[int, Callable], object]) -> Generation:
    """A `Generation` from `generate(rows, callback)`, any generator that calls `callback(step, total, tokens)`
    after each decided token (the runtime's Pipeline, the PyTorch reference loop): stamps each token and
    stops it after n tokens or max_s seconds."""
    def one(rows: int, n: int, max_s: float | None) -> tuple[float, list[float]]:
        stamps: list[float] = []
        t0 = time.perf_counter()

        def callback(step, total, _tokens):
            stamps.append(time.perf_counter())
            if step < total and should_stop(t0, len(stamps), n, max_s):
                raise StopGeneration

        try:
            generate(rows, callback)
        except StopGeneration:
            pass
        return t0, stamps

    return one


def run_rounds(one: Generation, batches: list[int], warmup: int, rounds: int, tokens: int,
               max_s: float | None = None) -> dict[str, list[dict]]:
    """Warm every batch size up with a short generation of `warmup` tokens, then `rounds` whole
    generations of `tokens` tokens per batch size -> {str(rows): [timed_run, ...]}."""
    for rows in batches:
        one(rows, warmup, None)
    runs: dict[str, list] = {str(r): [] for r in batches}
    for _ in range(rounds):
        for rows in batches:
            t0, stamps = one(rows, tokens, max_s)
            runs[str(rows)].append(timed_run(t0, stamps, tokens))
    return runs


def interleaved(runs: dict[str, Callable[[int], object]], repeats: int) -> dict[str, tuple[list[float], object]]:
    """Time every setting once per repeat, in turn (`fn(repeat)`), so load from other processes on a shared
    machine falls on all of them alike -> {name: (seconds of each repeat, the last repeat's result)}."""
    out: dict[str, tuple[list[float], object]] = {name: ([], None) for name in runs}
    for r in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            result = fn(r)
            out[name] = (out[name][0] + [time.perf_counter() - t0], result)
    return out


def same_graph_sequential(model_dir, **load_options):
    """A `Pipeline` on any model directory that runs the raster decoders (sequential by default),
    and the anyorder decoder when asked and the model has a position query: sequential and
    any-order decoding timed on the very same graph. For timing only: an any-order model was not
    trained for raster order, which is why it runs the anyorder decoder alone by default."""
    from tessera.runtime.config import DECODERS
    from tessera.runtime.pipeline import Pipeline

    pipe = Pipeline.load(model_dir, **load_options)
    any_order = pipe.layout.query_token_id is not None
    pipe.decoders = tuple(name for name, d in DECODERS.items() if d.order == "raster" or any_order)
    return pipe
