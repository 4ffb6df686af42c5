"""What a generation gives back, and how to stop one: `GenerationResult`, `Step`, `CancelToken`,
`GenerationCancelled`. No side channels: everything a generation produced is in its result."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import TesseraError

# callback(step, total, tokens_so_far) -> None or False; False stops the generation (GenerationCancelled).
StepCallback = Callable[[int, int, np.ndarray], "bool | None"]


@dataclass
class GenerationResult:
    """One generation: its token grids, images (when decoded), transformer calls and timings.

    tokens: `[N, h, w]` int64, image-major (label order, `num_images_per_class` per label).
    labels: `[N]` class ids. seeds: the seed of each image (image i is the image of seeds[i]).
    calls: transformer calls. timings: seconds per phase ("prefill", "decode" (incl. callbacks),
    "images" when decoded). images: PIL images, or None when not decoded. decoder: its name.
    stats: counts: `token_rows` (token evaluations: rows x tokens over the transformer calls) and the
    decoder's own (jacobi: drafts verified and accepted, and the calls each image needed, summed
    over images).
    """

    tokens: np.ndarray
    labels: np.ndarray
    seeds: tuple
    calls: int
    timings: dict = field(default_factory=dict)
    images: list | None = None
    decoder: str = "sequential"
    config: object = None
    stats: dict = field(default_factory=dict)


@dataclass
class Step:
    """One decision of a streamed generation (`Pipeline.stream`).

    step / total: cells decided so far per image / cells per image. tokens: `[N, step]` for
    sequential decoding (raster prefix), `[N, h*w]` with -1 for undecided cells for parallel and
    Jacobi decoding (step: the cells of the slowest image); a copy. images: preview frames when
    this step rendered one (PIL, one per image), else None. result: the `GenerationResult`, on the
    last step only.
    """

    step: int
    total: int
    tokens: np.ndarray
    images: list | None = None
    result: GenerationResult | None = None

    @property
    def done(self) -> bool:
        return self.result is not None


class CancelToken:
    """Stops a generation from any thread: pass `cancel=token` to a call, then `token.cancel()`.

    The generation stops before its next transformer call (within one step) and raises
    `GenerationCancelled`; the pipeline stays usable. One token may cancel several calls.
    """

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False  # a plain attribute: one read per step in the decode loop

    def cancel(self) -> None:
        self.cancelled = True


class GenerationCancelled(TesseraError):
    """A generation was stopped (`CancelToken.cancel`, `Pipeline.interrupt`, or a callback that
    returned False). `step`, `total` and `tokens` (a copy of the partial grid) say how far it got."""

    def __init__(self, step: int, total: int, tokens: np.ndarray | None):
        super().__init__(f"generation cancelled after {step} of {total} tokens per image")
        self.step, self.total, self.tokens = step, total, tokens


__all__ = ["GenerationResult", "Step", "CancelToken", "GenerationCancelled", "StepCallback"]
