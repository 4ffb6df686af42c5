"""Decoders as strategies: how the cells of a token grid get decided, behind one small interface.

A decoder is an object with a `name` and `steps(runner, layout, request, state)`: a generator
that decides cells with the transformer runner it is given and yields the number of cells
decided per image after each decision. `decode(...)` drives it to the end and returns one
`GenerationResult`; `Pipeline.run / generate / stream` drive it the same way with callbacks,
cancellation and previews around it. Nothing else is shared: a decoder keeps no state between
generations, the runner (and its KV cache) is lent to it for one generation.

Strategies: `SequentialDecoder` (runtime/generation.py: one token per call, raster order; known
cells for editing are one of its inputs), `ParallelDecoder` (runtime/parallel.py: ZipAR,
several rows per call) and `JacobiDecoder` (runtime/jacobi.py: speculative Jacobi, several raster
cells per call). A new one (few-step ...) is one more class here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np

from .results import CancelToken, GenerationCancelled, GenerationResult, StepCallback
from .sampling import SamplingConfig


@dataclass
class DecodeRequest:
    """What to decode. labels: class ids `[B]`; grid: (h, w) cells; rng: the per-image streams
    (`ImageStreams`) or any object with `random(n)`; known: optional `(tokens [B, h*w],
    mask [B, h*w] bool)`, cells to force instead of sampling (editing; sequential decoder only)."""

    labels: np.ndarray
    grid: tuple[int, int]
    guidance_scale: float
    sampling: SamplingConfig
    rng: object
    known: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def cells(self) -> int:
        return self.grid[0] * self.grid[1]


class DecodeState:
    """The decoder's output and bookkeeping for one generation: `out [B, h*w]`, `calls`, seconds
    per phase (`mark(phase)` adds the time since the previous mark) and the decoder's own counts."""

    def __init__(self, out: np.ndarray, prefix_view: bool):
        self.out, self.prefix_view, self.calls = out, prefix_view, 0
        self.timings: dict[str, float] = {}
        self.stats: dict[str, int] = {}
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.timings[phase] = self.timings.get(phase, 0.0) + now - self._last
        self._last = now

    def view(self, step: int) -> np.ndarray:
        """The tokens a callback sees after `step` decisions (a view, valid until the next step)."""
        return self.out[:, :step] if self.prefix_view else self.out


class Decoder(Protocol):
    name: str

    def start(self, request: DecodeRequest) -> DecodeState: ...

    def steps(self, runner, layout, request: DecodeRequest, state: DecodeState) -> Iterator[int]: ...


def run_steps(decoder: Decoder, runner, layout, request: DecodeRequest, state: DecodeState,
              cancel: CancelToken | None = None) -> Iterator[int]:
    """`decoder.steps`, checking `cancel` after each decision (before the next transformer call).
    At the end, `state.stats["token_rows"]`: the token evaluations the decoder asked of the runner
    (rows x tokens over its calls; what a compute-bound device pays for)."""
    for step in decoder.steps(runner, layout, request, state):
        yield step
        if cancel is not None and cancel.cancelled:
            raise GenerationCancelled(step, request.cells, state.view(step).copy())
    state.stats["token_rows"] = getattr(runner, "token_rows", 0)


def result_of(decoder: Decoder, request: DecodeRequest, state: DecodeState) -> GenerationResult:
    state.mark("decode")
    b = request.labels.shape[0]
    return GenerationResult(tokens=state.out.reshape(b, *request.grid), labels=np.asarray(request.labels),
                            seeds=tuple(getattr(request.rng, "seeds", ())), calls=state.calls,
                            timings=state.timings, decoder=decoder.name, stats=state.stats)


def decode(decoder: Decoder, runner, layout, request: DecodeRequest, callback: StepCallback | None = None,
           cancel: CancelToken | None = None) -> GenerationResult:
    """Run `decoder` to the end on `runner` -> one `GenerationResult` (images not decoded).

    callback(step, total, tokens) after each decision; returning False stops the generation, as
    `cancel.cancel()` does: `GenerationCancelled` is raised before the next transformer call."""
    state = decoder.start(request)
    total = request.cells
    for step in run_steps(decoder, runner, layout, request, state, cancel):
        if callback is not None and callback(step, total, state.view(step)) is False:
            raise GenerationCancelled(step, total, state.view(step).copy())
    return result_of(decoder, request, state)


__all__ = ["Decoder", "DecodeRequest", "DecodeState", "decode", "run_steps", "result_of"]
