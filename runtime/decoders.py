"""Decoders: how the cells of a token grid get decided, behind one small interface, and the one
loop that drives them.

A decoder is a `Decoder` subclass: its `name` (the `decoder=` option), the model order it runs
(`order`), the generation option it owns (`option`: declared, checked by `GenerationConfig`), the
logits rows one call may produce per image (`queries`, the memory estimate) and its loop policy,
`steps(runner, layout, request, state)`: a generator that decides cells with the transformer
runner it is lent and yields the number of cells decided per image after each decision.
`drive` is the only loop over `steps`: it calls the step callback and checks cancellation
before the next transformer call; `Pipeline.run / generate / stream`, editing and
`run_decoder` all go through it. A decoder keeps no state between generations. The registry of
decoders is `config.DECODERS`: a new decoder is one class and one entry there.

Vocabulary: a *decoder* decides tokens; *decode* turns token codes into images (the tokenizer).

The sequential decoder lives here (gpt-fast's shape: `prefill`, then one call per cell). Guidance
as LlamaGen does it: conditional rows and null-class rows in one batch, the sampled token fed to
both halves; whether it is on is decided once, when the request is built (`request.guidance`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar, Iterator

import numpy as np

from .errors import InvalidInputError
from .results import CancelToken, GenerationCancelled, GenerationResult, StepCallback
from .sampling import ImageStreams, SamplingConfig, guidance_on, image_seeds, sample_guided
from .spec import TokenLayout


@dataclass(frozen=True)
class Option:
    """The `GenerationConfig` field a decoder owns, declared for `GenerationConfig.resolve` to check:
    an integer >= 1 (at most the grid's cells with `per_grid`); `default` None: required;
    `model_default`: the manifest's generation defaults may set it."""

    name: str
    note: str  # what the value means, quoted in errors
    default: int | None = None
    per_grid: bool = False
    model_default: bool = False


@dataclass
class DecoderRequest:
    """What a decoder is asked. labels: class ids `[B]`; grid: (h, w) cells; rng: the per-image
    streams (`ImageStreams`) or any object with `random(n)`; known: optional `(tokens [B, h*w],
    mask [B, h*w] bool)`, cells to force instead of sampling (editing).

    `guidance`: the guidance scale when guidance is on (`sampling.guidance_on`), else None;
    decided here, once, and read by every decoder."""

    labels: np.ndarray
    grid: tuple[int, int]
    guidance_scale: float
    sampling: SamplingConfig
    rng: object
    known: tuple[np.ndarray, np.ndarray] | None = None
    guidance: float | None = field(init=False)

    def __post_init__(self) -> None:
        self.guidance = float(self.guidance_scale) if guidance_on(self.guidance_scale) else None

    @property
    def cells(self) -> int:
        return self.grid[0] * self.grid[1]

    def rows(self, layout: TokenLayout) -> np.ndarray:
        """The class of each batch row: the images' labels, then (with guidance) one null-class row per image."""
        if self.guidance is None:
            return self.labels
        return np.concatenate([self.labels, np.full_like(self.labels, layout.null_class_id)])


class DecoderState:
    """A decoder's output and bookkeeping for one generation: `out [B, h*w]`, `calls`, seconds
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

    def result(self, decoder: "Decoder", request: DecoderRequest) -> GenerationResult:
        """The finished generation (images not decoded)."""
        b = request.labels.shape[0]
        return GenerationResult(tokens=self.out.reshape(b, *request.grid), labels=np.asarray(request.labels),
                                seeds=tuple(getattr(request.rng, "seeds", ())), calls=self.calls,
                                timings=self.timings, decoder=decoder.name, stats=self.stats)


class Decoder:
    """The interface every decoder implements (see the module doc)."""

    name: ClassVar[str]
    order: ClassVar[str] = "raster"  # the models it runs: "raster", or "any" (a position-query model)
    option: ClassVar[Option | None] = None
    prefix_view: ClassVar[bool] = False  # callbacks see the decided raster prefix (else the grid, -1 undecided)
    # Editing: every kept cell conditions every regenerated one (else only those before it in
    # raster order, and draws are reranked by the likelihood of the kept cells after the hole).
    sees_every_kept_cell: ClassVar[bool] = False

    @classmethod
    def from_config(cls, cfg) -> "Decoder":
        """The decoder a resolved `GenerationConfig` names, with its option's value."""
        return cls() if cls.option is None else cls(getattr(cfg, cls.option.name))

    def queries(self, grid: tuple[int, int]) -> int:
        """Logits rows per image one call may produce: the memory estimate's share of this decoder."""
        return 1

    def start(self, request: DecoderRequest) -> DecoderState:
        shape = (request.labels.shape[0], request.cells)
        # -1: not decided yet (what callbacks see when cells are not decided in raster order)
        return DecoderState(np.empty(shape, np.int64) if self.prefix_view else np.full(shape, -1, np.int64),
                            self.prefix_view)

    def steps(self, runner, layout: TokenLayout, request: DecoderRequest, state: DecoderState) -> Iterator[int]:
        raise NotImplementedError


def cell_positions(layout: TokenLayout, grid: tuple[int, int]) -> np.ndarray:
    """Rotary position id of each raster cell of an `h x w` grid."""
    h, w = grid
    cells = np.arange(h * w)
    return layout.cell_position(cells // w, cells % w).astype(np.int64)


# --- the driver -----------------------------------------------------------------------------------
def check_callback(callback) -> None:
    """A step callback must be None or callable; else one InvalidInputError before anything runs."""
    if callback is not None and not callable(callback):
        raise InvalidInputError("callback must be callable as callback(step, total, tokens) (return False "
                                f"to stop), got {type(callback).__name__}")


class CancelState:
    """The cancel state of one generation: its own flag (`Pipeline.interrupt`) or the caller's
    token; `drive` reads `cancelled` after each decision."""

    __slots__ = ("own", "token")

    def __init__(self, token: CancelToken | None):
        if token is not None and not isinstance(token, CancelToken):
            raise InvalidInputError(f"cancel must be a CancelToken, got {type(token).__name__}")
        self.own, self.token = False, token

    def cancel(self) -> None:
        self.own = True

    @property
    def cancelled(self) -> bool:
        return self.own or (self.token is not None and self.token.cancelled)


def drive(decoder: Decoder, runner, layout: TokenLayout, request: DecoderRequest, state: DecoderState,
          callback: StepCallback | None = None, cancel: CancelToken | None = None) -> Iterator[int]:
    """Run `decoder.steps`, yielding after each decision. `callback(step, total, tokens)` is called
    first (False stops the generation); `cancel` is checked before the next transformer call.
    Either raises `GenerationCancelled`. At the end: `state.stats["token_rows"]`, the token
    evaluations the decoder asked of the runner (what a compute-bound device pays for)."""
    total = request.cells
    for step in decoder.steps(runner, layout, request, state):
        if callback is not None and callback(step, total, state.view(step)) is False:
            raise GenerationCancelled(step, total, state.view(step).copy())
        yield step
        if cancel is not None and cancel.cancelled:
            raise GenerationCancelled(step, total, state.view(step).copy())
    state.stats["token_rows"] = getattr(runner, "token_rows", 0)
    state.mark("decode")


def run_decoder(decoder: Decoder, runner, layout: TokenLayout, request: DecoderRequest,
                callback: StepCallback | None = None, cancel: CancelToken | None = None) -> GenerationResult:
    """`drive` to the end -> one `GenerationResult` (images not decoded)."""
    state = decoder.start(request)
    for _ in drive(decoder, runner, layout, request, state, callback, cancel):
        pass
    return state.result(decoder, request)


# --- the sequential decoder -----------------------------------------------------------------------
def prefill(runner, layout: TokenLayout, rows: np.ndarray, prefix: np.ndarray, positions: np.ndarray,
            capacity: int) -> np.ndarray:
    """Start a cache of `capacity` tokens for `rows` and run the class token and the known prefix
    `[B, p]` (tiled over the guidance rows) in one causal call -> logits `[R, 1 + p, V]`."""
    r, (b, p) = rows.shape[0], prefix.shape
    runner.start(r, capacity)
    ids = np.empty((r, 1 + p), np.int64)
    ids[:, 0] = layout.class_ids(rows)
    ids[:, 1:] = np.tile(prefix, (r // b, 1))
    pos = np.concatenate([[0], positions[:p]])[None].repeat(r, 0)
    mask = np.tril(np.ones((1 + p, 1 + p), bool))[None].repeat(r, 0)
    return runner(ids, pos, mask)


def sample_cells(runner, logits: np.ndarray, out: np.ndarray, start: int, positions: np.ndarray,
                 guidance: float | None, sampling: SamplingConfig, rng,
                 known: tuple[np.ndarray, np.ndarray] | None = None) -> Iterator[int]:
    """Decide cells `start .. n-1` of `out [B, n]`, one transformer call each; yields the number
    of decided cells after each. Buffers are allocated once, before the loop."""
    b, n = out.shape
    r = b if guidance is None else 2 * b
    ids = np.empty((r, 1), np.int64)
    pos = np.empty((r, 1), np.int64)
    masks = [np.ones((r, 1, t), bool) for t in range(n + 1)]  # masks[t]: attend to all t cached tokens
    guided_buffer = None if guidance is None else np.empty((b, logits.shape[-1]), np.float32)
    for j in range(start, n):
        tok = sample_guided(logits[:, -1], b, guidance, sampling, rng, guided_buffer)
        if known is not None:
            tok = np.where(known[1][:, j], known[0][:, j], tok)
        out[:, j] = tok
        yield j + 1
        if j == n - 1:
            return
        ids[:b, 0] = tok
        if r != b:
            ids[b:, 0] = tok
        pos.fill(positions[j])
        logits = runner(ids, pos, masks[j + 2])


class SequentialDecoder(Decoder):
    """One token per transformer call in raster order (LlamaGen's loop; the PyTorch reference's
    tokens exactly). `request.known` forces cells (editing) and prefills a known prefix."""

    name = "sequential"
    prefix_view = True

    def steps(self, runner, layout: TokenLayout, request: DecoderRequest, state: DecoderState) -> Iterator[int]:
        n, b = request.cells, request.labels.shape[0]
        out, known = state.out, None
        prefix = 0
        if request.known is not None:
            known_tokens, known_mask = (np.asarray(a).reshape(b, n) for a in request.known)
            known = (known_tokens, known_mask.astype(bool))
            prefix = int(np.argmin(known[1].all(0))) if not known[1].all() else n - 1
            out[:, :prefix] = known_tokens[:, :prefix]
        positions = cell_positions(layout, request.grid)
        logits = prefill(runner, layout, request.rows(layout), out[:, :prefix], positions, n + 1)
        state.mark("prefill")
        state.calls = n - prefix  # the prefill, then one call per cell but the last
        if prefix:
            yield prefix
        yield from sample_cells(runner, logits, out, prefix, positions, request.guidance, request.sampling,
                                request.rng, known)


def generate_tokens(runner, layout: TokenLayout, grid: tuple[int, int], labels: np.ndarray, guidance_scale: float,
                    sampling: SamplingConfig, seed=0, callback: StepCallback | None = None,
                    known: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Class ids `[B]` -> token grids `[B, h, w]` (int64), raster order: `SequentialDecoder` on
    `runner`. Image i draws from `seed + i` (or `seed[i]` for a list). known: optional
    `(tokens [B, h*w], mask [B, h*w] bool)`; cells where mask is True keep the given token."""
    labels = np.asarray(labels, np.int64)
    rng = ImageStreams(image_seeds(seed, labels.shape[0]), grid[0] * grid[1])
    request = DecoderRequest(labels, tuple(grid), guidance_scale, sampling, rng, known)
    return run_decoder(SequentialDecoder(), runner, layout, request, callback).tokens


__all__ = ["Decoder", "DecoderRequest", "DecoderState", "Option", "SequentialDecoder", "CancelState", "cell_positions",
           "check_callback", "drive",
           "run_decoder", "generate_tokens", "prefill", "sample_cells"]
