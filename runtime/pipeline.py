"""`Pipeline`: load a model directory, generate images from class labels (diffusers-style calls).

The generation path: `GenerationConfig` (runtime/config.py) resolved once against the manifest,
a decoder strategy (runtime/decoding.py: sequential in generation.py, ZipAR in parallel.py,
speculative Jacobi in jacobi.py) run on a transformer runner lent by the pool (runtime/runners.py),
one `GenerationResult` (runtime/results.py). Editing (runtime/editing.py, image_processing.py) and previews
(runtime/preview.py) sit beside it; none of them imports this module.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np
from PIL import Image

from .anyorder import AnyOrderDecoder, complete_any_order, query_token
from .compat import check_loadable, disabled_optimizers
from .config import DEFAULT_MEMORY_BUDGET, GenerationConfig, check_budget, check_int
from .decoding import DecodeRequest, result_of, run_steps
from .editing import EditResult, check_tokens, complete_tokens, continue_cells, draws_per_image, inpaint_cells, \
    outpaint_cells
from .errors import InvalidInputError, ModelDirectoryError, TesseraError, first_line
from .generation import SequentialDecoder
from .jacobi import JacobiDecoder
from .image_processing import to_model_input
from .images import to_pil
from .manifest import Manifest, load_manifest
from .parallel import ParallelDecoder
from .preview import PreviewRenderer, with_preview
from .providers import resolve_providers
from .provider_fit import warn_if_unsuited
from .results import CancelToken, GenerationCancelled, GenerationResult, Step, StepCallback
from .runners import RunnerPool
from .sampling import ImageStreams, SamplingConfig
from .schedule import cosine_counts
from .self_test import verify as verify_self_test
from .session import active_provider, check_threads, open_session, ort_version, quiet_run_options
from .tokenizer import DECODE_CHUNK_BYTES, ImageTokenizer
from .transformer import TransformerRunner

# Generations one Pipeline runs at once from different threads (each with its own KV cache).
DEFAULT_CONCURRENCY = 4
LOW_MEMORY_ENV = "TESSERA_LOW_MEMORY"  # Pipeline.load's low_memory when not given
PIL_IMAGE_OVERHEAD = 4096  # bytes a returned PIL image holds beyond its pixels (object, header; ~1.6 KB measured)


# What the public calls take: a class id or name, or a list of them; an image as PIL or an array.
ClassLabels = Union[int, str, Sequence[Union[int, str]]]
ImageLike = Union[Image.Image, np.ndarray]




def default_model_dir() -> Path:
    """The model shipped inside the package (`tessera.models/default`)."""
    from tessera.models import default_model_dir as shipped

    return shipped()


class _Stop:
    """The cancel state of one generation: its own flag (`Pipeline.interrupt`) or the caller's token."""

    __slots__ = ("own", "token")

    def __init__(self, token: CancelToken | None):
        self.own, self.token = False, token

    def cancel(self) -> None:
        self.own = True

    @property
    def cancelled(self) -> bool:
        return self.own or (self.token is not None and self.token.cancelled)


class Pipeline:
    """Class-conditional image generation from an exported model directory.

    >>> pipe = Pipeline.load()                      # the shipped default model
    >>> images = pipe.generate([3, "seven"], seed=0)
    >>> result = pipe.run([3], GenerationConfig(seed=5, guidance_scale=4.0))   # tokens, images, calls, timings
    >>> for step in pipe.stream([3], preview_every="row"): ...                # partial tokens and frames

    A seed names an image: image i of a call uses the random stream `seed + i` (or `seed[i]`), so
    `generate([7], seed=s)` is the first image of `generate([7, 3], seed=s)` and `generate([3],
    seed=s + 1)` its second, the same on every provider (up to the last-bit differences of batched
    arithmetic, which can move a draw only when its uniform lands within ~1e-6 of a bucket edge).

    Threads: one Pipeline may serve several threads. Each generation borrows a transformer runner
    (its own KV cache and IO binding) from a pool over the one onnxruntime session, whose `run` is
    thread-safe; concurrent calls give exactly the images the same calls give one after another.
    At most `max_concurrency` generations run at once (more wait for a runner); each running one
    holds its own KV cache. Separate pipelines and processes on one model directory share nothing
    but the read-only files.

    Cancelling: pass `cancel=CancelToken()` and call `token.cancel()` from any thread, call
    `pipe.interrupt()` (every generation running now), or return False from the step callback.
    The generation stops before its next transformer call and raises `GenerationCancelled`; the
    pipeline stays usable.

    Memory: a request whose estimated memory (KV cache, logits) exceeds `memory_budget` bytes
    (default 4 GiB; None: no check) is refused with an InvalidInputError before any allocation.
    """

    def __init__(self, manifest: Manifest, providers: list[str], threads: int | None = None,
                 provider_options: dict | None = None, session_options=None,
                 memory_budget: int | None = DEFAULT_MEMORY_BUDGET, max_concurrency: int = DEFAULT_CONCURRENCY,
                 low_memory: bool = False):
        threads = check_threads(threads)  # before any session opens
        self.manifest = manifest
        self.low_memory = bool(low_memory)
        spec = manifest.spec
        installed = ort_version()
        check_loadable(spec.graphs, installed, manifest.root.name)  # before any session opens
        warn_if_unsuited(spec.graph("transformer"), providers[0], manifest.root.name)

        def opener(path: Path):
            graph = next(g for g in spec.graphs if g.file == path.name)
            return open_session(path, providers, threads, provider_options, session_options,
                                disabled_optimizers(graph, installed))

        self._pool_size = check_int("max_concurrency", max_concurrency, 1)

        def open_transformer() -> None:
            session = opener(manifest.graph_path("transformer"))
            self._transformer = TransformerRunner(session, manifest)  # the first runner of the pool
            self._runners = RunnerPool(self._transformer, lambda: TransformerRunner(session, manifest),
                                       self._pool_size)

        self._open_transformer = open_transformer
        open_transformer()
        self._self_test(spec.graph("transformer").self_test, manifest)
        self.tokenizer = ImageTokenizer(manifest, opener)
        # What really runs each graph: onnxruntime may drop a requested provider (it warns then).
        self.graph_providers = {"transformer": active_provider(self.transformer.session),
                                "tokenizer_decoder": active_provider(self.tokenizer.decoder)}
        self.providers = list(dict.fromkeys([self.graph_providers["transformer"], *providers]))
        if self.graph_providers["transformer"] != providers[0]:
            warn_if_unsuited(spec.graph("transformer"), self.graph_providers["transformer"], manifest.root.name)
        self.layout = manifest.layout
        self.grid = manifest.grid
        self.memory_budget = memory_budget
        self._lock = threading.Lock()  # guards _running, _last_calls and the lazy encoder
        self._running: set[_Stop] = set()
        self._last_calls = 0
        if self.low_memory:  # one graph in memory at a time: the decoder opens when images are decoded
            self.tokenizer.close_decoder()

    @property
    def transformer(self) -> TransformerRunner:
        """The first runner of the pool (reopened here if low_memory closed it)."""
        return self._transformer_phase()._transformer

    def _transformer_phase(self) -> "Pipeline":
        """low_memory: the decoder goes and the transformer comes back before a generation."""
        if self.low_memory and self._runners is None:
            with self._lock:
                self.tokenizer.close_decoder()
                if self._runners is None:
                    self._open_transformer()
        return self

    def _decoder_phase(self) -> None:
        """low_memory: close the transformer (weights, arena, KV cache) before the decoder runs,
        unless a generation on another thread still uses it."""
        if self.low_memory:
            with self._lock:
                if not self._running:
                    self._transformer = self._runners = None

    def _self_test(self, entry, manifest: Manifest) -> None:
        """The graph must compute what the manifest describes (runtime/self_test.py): one small call."""
        runner = self.transformer

        def run(ids, positions, mask):
            runner.start(ids.shape[0], ids.shape[1])
            return runner(ids, positions, mask)

        runner.run_options = quiet_run_options()
        try:
            verify_self_test(entry, run, manifest.layout, manifest.grid, manifest.root.name)
        except TesseraError:
            raise
        except Exception as e:  # onnxruntime's own error types: the graph cannot run as the manifest says
            graph = manifest.spec.graph("transformer")
            raise ModelDirectoryError(
                f"{manifest.root.name}: its transformer graph ({graph.file}) fails the load's probe call under "
                f"the manifest's description (kind {graph.kind or '?'}, kv_cache {graph.kv_cache or '?'}): "
                f"{first_line(e)}. The graph file was replaced by another kind of graph (e.g. a portable one in a "
                "fused model directory) or the manifest was edited; re-export the model") from None
        finally:
            runner.run_options = None
            runner.release()

    @classmethod
    def load(cls, model_dir: str | Path | None = None, providers: str | list[str] = "auto",
             threads: int | None = None, verify: str = "full", provider_options: dict | None = None,
             session_options=None, memory_budget: int | None = DEFAULT_MEMORY_BUDGET,
             max_concurrency: int = DEFAULT_CONCURRENCY, low_memory: bool | None = None) -> "Pipeline":
        """Open `model_dir` (default: the shipped model) on the best or the requested providers.

        Args:
            model_dir: a directory made by `tessera export`; None: the shipped default model.
            providers: "auto" (the best provider whose device is really there), one name or alias
                ("cpu", "cuda", "dml", ...) or a list in priority order.
            threads: CPU threads per graph, 1..1024 (None: onnxruntime's choice).
            verify: "full" (sha256 of every file), "size" (fast) or "none".
            provider_options: {provider or alias: {option: value}}, e.g. {"cuda": {"device_id": 1}}.
            session_options: an onnxruntime.SessionOptions, or a dict of its attributes and
                config entries, e.g. {"intra_op_num_threads": 2, "session.intra_op.allow_spinning": "0"}.
            memory_budget: bytes one generation may plan to use (default 4 GiB); None: no check.
            max_concurrency: generations that may run at once from different threads (default 4),
                each with its own KV cache; more wait.
            low_memory: keep one graph in memory at a time: the transformer
                is closed before images are decoded and reopened for the next generation (a lower
                peak for memory-limited devices, at the price of opening the graphs per generation).
                None: the environment variable TESSERA_LOW_MEMORY (1 = on), for a deployment to set.

        `pipe.providers` lists the providers in use, the one that runs the transformer first;
        `pipe.graph_providers` names the provider that runs each graph.
        """
        manifest = load_manifest(model_dir if model_dir is not None else default_model_dir(), verify=verify)
        pipeline_class = PIPELINES[manifest.spec.family] if cls is Pipeline else cls  # the family picks the class
        if low_memory is None:
            low_memory = os.environ.get(LOW_MEMORY_ENV, "0").strip() not in ("", "0")
        return pipeline_class(manifest, resolve_providers(providers), threads, provider_options, session_options,
                              memory_budget, max_concurrency, low_memory)

    # --- options ----------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return self.manifest.class_names

    @property
    def image_size(self) -> tuple[int, int]:
        """The trained image's (height, width) in pixels."""
        return self.grid[0] * self.tokenizer.downsample, self.grid[1] * self.tokenizer.downsample

    def config(self, config: GenerationConfig | None = None, **options) -> GenerationConfig:
        """`config` with `options` replaced, resolved against this model's defaults and validated."""
        cfg = GenerationConfig.from_options(config, **options)
        return cfg.resolve(self.manifest.spec.generation, self.layout.vocab_size, self.layout.rope_grid,
                           self.grid)

    def sampling_options(self, guidance_scale: float | None = None, temperature: float | None = None,
                         top_k: int | None = None, top_p: float | None = None) -> tuple[float, SamplingConfig]:
        """(guidance_scale, SamplingConfig) with unset options from the manifest's defaults, validated."""
        cfg = self.config(guidance_scale=guidance_scale, temperature=temperature, top_k=top_k, top_p=top_p)
        return cfg.guidance_scale, cfg.sampling

    def labels(self, class_labels: int | str | Sequence[int | str], num_images_per_class: int = 1) -> np.ndarray:
        """Class ids or names -> ids `[len(labels) * num_images_per_class]`, label-major."""
        n = check_int("num_images_per_class", num_images_per_class, 1)
        if isinstance(class_labels, np.ndarray) and class_labels.ndim == 0:
            class_labels = class_labels.item()
        if isinstance(class_labels, (str, int, np.integer)) and not isinstance(class_labels, (bool, np.bool_)):
            class_labels = [class_labels]
        if not isinstance(class_labels, (list, tuple, np.ndarray)):
            raise InvalidInputError("class_labels must be a class id, a class name or a list of them, "
                                    f"got {type(class_labels).__name__}")
        for label in class_labels:
            if isinstance(label, (bool, np.bool_)) or not isinstance(label, (str, int, np.integer)):
                raise InvalidInputError(f"class labels must be integer ids (0..{self.manifest.num_classes - 1}) "
                                        f"or class names, got {label!r} ({type(label).__name__})")
        if len(class_labels) == 0:
            raise InvalidInputError("give at least one class label")
        ids = [self.manifest.class_id(c) for c in class_labels]
        return np.repeat(np.asarray(ids, dtype=np.int64), n)

    def grid_size(self, grid: int | tuple[int, int] | None) -> tuple[int, int]:
        """The token grid to generate: the trained one, or a larger one within the rotary table."""
        return self.config(grid=grid).grid

    def _plan(self, class_labels, cfg: GenerationConfig):
        """Validate everything and check the memory budget before anything is allocated."""
        cfg = self.config(cfg)
        listed = isinstance(class_labels, (list, tuple)) or (isinstance(class_labels, np.ndarray)
                                                             and class_labels.ndim > 0)
        count = len(class_labels) if listed else 1  # the labels are checked after the budget
        n = cfg.grid[0] * cfg.grid[1]
        queries = {"parallel": cfg.grid[0], "jacobi": min(n, 2 * (cfg.jacobi_window or 0) + 2),
                   "anyorder": 2 * max(cosine_counts(n, cfg.steps or 1))}.get(cfg.decoder, 1)
        check_budget("generate", count * cfg.num_images_per_class, cfg.guided, cfg.grid, self.manifest.spec.transformer,
                     self.layout.vocab_size, self.memory_budget, queries)
        labels = self.labels(class_labels, cfg.num_images_per_class)
        seeds = cfg.seeds(labels.shape[0])
        request = DecodeRequest(labels, cfg.grid, cfg.guidance_scale, cfg.sampling, ImageStreams(seeds, n))
        if cfg.decoder == "anyorder":
            query_token(self.layout)  # a raster model: one line saying it has no position query
        decoder = ParallelDecoder(cfg.parallel_window) if cfg.decoder == "parallel" else \
            JacobiDecoder(cfg.jacobi_window) if cfg.decoder == "jacobi" else \
            AnyOrderDecoder(cfg.steps) if cfg.decoder == "anyorder" else SequentialDecoder()
        return cfg, request, decoder

    # --- the core: borrow a runner, run a decoder ---------------------------------------------
    @contextmanager
    def _session(self, cancel: CancelToken | None):
        """A runner lent for one generation, and its cancel state (registered for `interrupt`)."""
        if cancel is not None and not isinstance(cancel, CancelToken):
            raise InvalidInputError(f"cancel must be a CancelToken, got {type(cancel).__name__}")
        stop = _Stop(cancel)
        with self._transformer_phase()._runners.borrow() as runner:
            with self._lock:
                self._running.add(stop)
            try:
                yield runner, stop
            finally:
                with self._lock:
                    self._running.discard(stop)

    def _steps(self, request: DecodeRequest, decoder, cancel: CancelToken | None):
        """Yields (step, state) after each decision; returns the GenerationResult (no images)."""
        with self._session(cancel) as (runner, stop):
            state = decoder.start(request)
            for step in run_steps(decoder, runner, self.layout, request, state, stop):
                yield step, state
            result = result_of(decoder, request, state)
        with self._lock:
            self._last_calls = result.calls
        return result

    def interrupt(self) -> int:
        """Cancel every generation running on this pipeline now (from any thread); each raises
        `GenerationCancelled` within one step. Later calls are not affected. Returns how many."""
        with self._lock:
            running = list(self._running)
        for stop in running:
            stop.cancel()
        return len(running)

    def _finish(self, result: GenerationResult, cfg: GenerationConfig, decode_images: bool, renderer=None):
        result.config = cfg
        if decode_images:
            t0 = time.perf_counter()
            result.images = self.decode(result.tokens)
            result.timings["images"] = time.perf_counter() - t0
            if renderer is not None:
                renderer.show_final(result.images, result.tokens[0].size)
        return result

    @staticmethod
    def _check_callback(callback) -> None:
        if callback is not None and not callable(callback):
            raise InvalidInputError("callback must be callable as callback(step, total, tokens) (return False "
                                    f"to stop), got {type(callback).__name__}")

    # --- the calls ------------------------------------------------------------------------------
    def run(self, class_labels: ClassLabels, config: GenerationConfig | None = None, *,
            callback: StepCallback | None = None, cancel: CancelToken | None = None, preview=None,
            preview_every=None, decode_images: bool = True, **options) -> GenerationResult:
        """Class labels -> a `GenerationResult` (tokens, images, seeds, transformer calls, timings).

        Args:
            class_labels: a class id or name, or a list of them.
            config: a `GenerationConfig`; `options` (its field names) replace its values.
            callback: `callback(step, total, tokens)` after each decided token; return False to stop.
            cancel: a `CancelToken`; `cancel.cancel()` from any thread stops the generation.
            preview: `preview(step, total, images)` receives partial images (runtime/preview.py);
                preview_every: tokens per frame, "row" or "auto" (default).
            decode_images: False skips the image decoder (`result.images` None).

        Raises:
            InvalidInputError: an option out of range or of the wrong type, or over the memory budget.
            GenerationCancelled: stopped by `cancel`, `interrupt()` or the callback.
        """
        cfg, request, decoder = self._plan(class_labels, GenerationConfig.from_options(config, **options))
        self._check_callback(callback)
        renderer = None
        if preview is not None or preview_every is not None:  # live previews: runtime/preview.py
            renderer = callback = with_preview(self.tokenizer, cfg.grid, preview, preview_every, callback,
                                               render_last=not decode_images)
            renderer = renderer if preview is not None else None
        total = request.cells
        steps = self._steps(request, decoder, cancel)
        try:
            while True:
                step, state = next(steps)
                if callback is not None and callback(step, total, state.view(step)) is False:
                    raise GenerationCancelled(step, total, state.view(step).copy())
        except StopIteration as stop:
            result = stop.value
        finally:
            steps.close()
        return self._finish(result, cfg, decode_images, renderer)

    def stream(self, class_labels: ClassLabels, config: GenerationConfig | None = None, *,
               cancel: CancelToken | None = None, preview_every=None, decode_images: bool = True,
               **options) -> Iterator[Step]:
        """Class labels -> an iterator of `Step`s an app can drive: one per decision (partial tokens,
        and preview images when `preview_every` is given and a frame is due), the last one with
        `.result` (and the final images). Breaking out of the loop (or `cancel`) stops the
        generation; the runner is given back when the iterator is closed or exhausted.

        >>> for step in pipe.stream([7], seed=1, preview_every="row"):
        ...     if step.images: show(step.images[0])
        >>> step.result.images
        """
        cfg, request, decoder = self._plan(class_labels, GenerationConfig.from_options(config, **options))
        return self._stream(cfg, request, decoder, cancel, preview_every, decode_images)

    def _stream(self, cfg, request, decoder, cancel, preview_every, decode_images) -> Iterator[Step]:
        frames: list = []
        renderer = None if preview_every is None else PreviewRenderer(
            self.tokenizer, cfg.grid, lambda s, t, ims: frames.append(ims), preview_every, render_last=False)
        total = request.cells
        steps = self._steps(request, decoder, cancel)
        try:
            while True:
                step, state = next(steps)
                if step < total:
                    view = state.view(step)
                    if renderer is not None:
                        renderer(step, total, view)
                    yield Step(step, total, view.copy(), frames.pop() if frames else None)
                    frames.clear()
        except StopIteration as stop:
            result = stop.value
        finally:
            steps.close()
        result = self._finish(result, cfg, decode_images)
        yield Step(total, total, result.tokens.reshape(len(result.labels), -1).copy(), result.images, result)

    def generate(self, class_labels: ClassLabels, guidance_scale: float | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, seed: int | Sequence[int] = 0,
                 num_images_per_class: int = 1, callback: StepCallback | None = None,
                 parallel_window: int | None = None, grid: int | tuple[int, int] | None = None,
                 preview=None, preview_every: int | str | None = None, *, cancel: CancelToken | None = None,
                 return_result: bool = False, decoder: str | None = None,
                 jacobi_window: int | None = None, steps: int | None = None) -> list[Image.Image] | GenerationResult:
        """Class labels -> one PIL image per label (x num_images_per_class), label-major.

        Args:
            class_labels: a class id or name (case-insensitive), or a list of them.
            guidance_scale, temperature, top_k, top_p: sampling (None: the model's defaults, from
                its manifest); see `GenerationConfig`.
            seed: an integer >= 0 (image i uses seed + i) or a list of seeds, one per image.
            num_images_per_class: images per label.
            callback: `callback(step, total, tokens)` after each decided token; return False to stop.
            parallel_window: None: one token per call; k >= 1: ZipAR rows, k tokens apart.
            grid: token grid (h, w) or an int; None: the trained grid.
            preview, preview_every: live partial images (runtime/preview.py).
            cancel: a `CancelToken` to stop the generation from another thread.
            return_result: return the `GenerationResult` instead of the image list.
            decoder, jacobi_window: "sequential", "parallel" or "jacobi" (speculative Jacobi,
                `jacobi_window` drafts per call); see `GenerationConfig`.
            steps: transformer calls per image for the "anyorder" decoder (any-order models' default).

        The same seed gives the same images on every provider.
        """
        result = self.run(class_labels, callback=callback, cancel=cancel, preview=preview,
                          preview_every=preview_every, guidance_scale=guidance_scale, temperature=temperature,
                          top_k=top_k, top_p=top_p, seed=seed, num_images_per_class=num_images_per_class,
                          parallel_window=parallel_window, grid=grid, decoder=decoder, jacobi_window=jacobi_window,
                          steps=steps)
        return result if return_result else result.images

    __call__ = generate

    def generate_tokens(self, class_labels: ClassLabels, guidance_scale: float | None = None,
                        temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                        seed: int | Sequence[int] = 0, num_images_per_class: int = 1,
                        callback: StepCallback | None = None,
                        parallel_window: int | None = None, grid: int | tuple[int, int] | None = None, *,
                        cancel: CancelToken | None = None, decoder: str | None = None,
                        jacobi_window: int | None = None, steps: int | None = None) -> np.ndarray:
        """Class labels (ids or names) -> token grids `[N, h, w]` (the images not decoded); the
        options as `generate`. `run(..., decode_images=False)` gives the whole result."""
        return self.run(class_labels, callback=callback, cancel=cancel, decode_images=False,
                        guidance_scale=guidance_scale, temperature=temperature, top_k=top_k, top_p=top_p,
                        seed=seed, num_images_per_class=num_images_per_class, parallel_window=parallel_window,
                        grid=grid, decoder=decoder, jacobi_window=jacobi_window, steps=steps).tokens

    @property
    def last_calls(self) -> int:
        """Deprecated: transformer calls of the last generation finished on this pipeline (any
        thread). Use `run(...).calls` / `generate(..., return_result=True).calls`."""
        return self._last_calls

    def decode(self, tokens: np.ndarray, tile: int | None = None) -> list[Image.Image]:
        """Token grids `[N, h, w]` -> images; `tile` (an integer >= 1, token cells per side) decodes
        large grids tile by tile to bound peak memory."""
        if tile is not None:
            tile = check_int("tile", tile, 1, note=" (token cells per side; None decodes whole grids)")
        codes = np.asarray(tokens) if not isinstance(tokens, np.ndarray) else tokens
        if codes.ndim == 2:
            codes = codes[None]
        if codes.ndim != 3 or codes.size == 0 or not np.issubdtype(codes.dtype, np.integer):
            raise InvalidInputError(f"tokens must be a non-empty integer array [N, h, w] of codes, got "
                                    f"{codes.dtype} {codes.shape}")
        size = self.tokenizer.codebook_size
        if codes.min() < 0 or codes.max() >= size:
            raise InvalidInputError(f"token codes must lie in 0..{size - 1}, got {codes.min()}..{codes.max()}")
        limit = self.layout.rope_grid * 4
        n, h, w = codes.shape
        if h > limit or w > limit:
            raise InvalidInputError(f"a token grid of {h}x{w} is larger than this model decodes (at most {limit} "
                                    "per side)")
        # Memory: one decoder call's activations (a chunk of grids, or of their tiles, with the chunk's
        # whole float images when tiled) plus every image returned.
        ds, channels = self.tokenizer.downsample, self.manifest.spec.image.channels
        pixels = h * w * ds * ds * channels
        per_image = self.tokenizer.decode_bytes(min(tile, h), min(tile, w)) + 4 * pixels if tile \
            else self.tokenizer.decode_bytes(h, w)
        per_result = pixels + PIL_IMAGE_OVERHEAD  # a uint8 PIL image
        budget = self.memory_budget
        chunk = max(1, (DECODE_CHUNK_BYTES if budget is None else min(DECODE_CHUNK_BYTES, budget)) // per_image)
        if budget is not None and min(n, chunk) * per_image + n * per_result > budget:
            if per_image + per_result > budget:
                smaller = max(1, (tile or min(h, w)) // 2)
                raise InvalidInputError(
                    f"decoding one grid of {h}x{w}{f' in tiles of {tile}' if tile else ''} would need about "
                    f"{(per_image + per_result) / 2**30:.2f} GiB, over the memory budget of {budget / 2**30:.2f} GiB; "
                    f"decode it in smaller tiles (tile={smaller}) or raise the budget with "
                    "Pipeline.load(..., memory_budget=BYTES) / pipe.memory_budget = BYTES")
            most = max(1, (budget - chunk * per_image) // per_result)
            raise InvalidInputError(
                f"decoding {n} grids of {h}x{w} would return about {n * per_result / 2**30:.2f} GiB of images, "
                f"over the memory budget of {budget / 2**30:.2f} GiB; decode at most {most} grids per call, or "
                "raise the budget with Pipeline.load(..., memory_budget=BYTES) / pipe.memory_budget = BYTES")
        self._decoder_phase()
        images: list[Image.Image] = []
        for start in range(0, n, chunk):
            part = codes[start:start + chunk]
            arr = self.tokenizer.decode_tiled(part, tile) if tile else self.tokenizer.decode(part, chunk=len(part))
            images.extend(to_pil(arr))
            del arr
        return images

    def release(self) -> None:
        """Free the idle runners' KV caches (the next generation allocates anew)."""
        if self._runners is not None:
            self._runners.release()

    # --- editing (runtime/editing.py; the known-cells input of the sequential decoder) ----------
    def inpaint(self, image: ImageLike, mask: ImageLike, class_label: int | str | None = None,
                **options) -> list[Image.Image] | EditResult:
        """Regenerate the masked part of `image` (PIL or array; fit to the model's size, aspect kept,
        padded with its border colour). mask: white / True = regenerate, the input image's size, the
        model's canvas size or the token grid's; a token cell is regenerated if any of its pixels is.
        class_label None: unconditional (null class, no guidance). Options (see `edit_tokens`):
        num_images, candidates (draws reranked by the likelihood of the kept cells after the hole;
        see runtime/editing.py), guidance_scale, temperature, top_k, top_p, seed, callback, cancel,
        preview, preview_every, return_result (an EditResult instead of the image list)."""
        canvas, regen = inpaint_cells(image, mask, self.image_size, self.grid)
        return self._edit(canvas, None, regen, class_label, **options)

    def outpaint(self, image: ImageLike, box: tuple[int, int, int, int] | None = None,
                 class_label: int | str | None = None, *, place: bool = False,
                 **options) -> list[Image.Image] | EditResult:
        """Keep `box` (x0, y0, x1, y1, exclusive; default the centered half) and regenerate around it.
        place=False: the box is in the input image's pixels. place=True: the image is scaled into the
        box on the model's canvas (extend a small image). Other options as `inpaint`."""
        canvas, regen = outpaint_cells(image, box, place, self.image_size, self.grid)
        return self._edit(canvas, None, regen, class_label, **options)

    def continue_image(self, image: ImageLike, keep_rows: int, class_label: int | str | None = None,
                       **options) -> list[Image.Image] | EditResult:
        """Keep the top `keep_rows` token rows of `image` and write the rest (a prefilled prefix).
        Options as `inpaint` (no candidates: nothing known follows the hole)."""
        canvas, regen = continue_cells(image, keep_rows, self.image_size, self.grid)
        options["candidates"] = 1
        return self._edit(canvas, None, regen, class_label, **options)

    def edit_tokens(self, tokens: np.ndarray, regenerate: np.ndarray, class_label: int | str | None = None,
                    **options) -> EditResult:
        """The edit on a token grid: `tokens [h, w]`, `regenerate [h, w]` bool -> EditResult.

        Options: num_images (>= 1), candidates (>= 1), guidance_scale, temperature, top_k, top_p,
        seed (draw r of the num_images x K draws uses seed + r), callback, cancel, preview,
        preview_every."""
        source, regen = check_tokens(tokens, regenerate, self.grid, self.layout.vocab_size)
        options["return_result"] = True
        return self._edit(None, source, regen, class_label, **options)

    _EDIT_SAMPLING = ("guidance_scale", "temperature", "top_k", "top_p", "seed")

    def _edit(self, canvas, source, regen, class_label, *, num_images: int = 1, candidates: int = 4,
              callback: StepCallback | None = None, cancel: CancelToken | None = None, preview=None,
              preview_every=None, return_result: bool = False, **sampling):
        unknown = sorted(set(sampling) - set(self._EDIT_SAMPLING))
        if unknown:
            raise InvalidInputError(f"unknown edit option(s) {', '.join(unknown)}; valid: num_images, candidates, "
                                    f"callback, cancel, preview, preview_every, return_result, "
                                    f"{', '.join(self._EDIT_SAMPLING)}")
        cfg = self.config(**sampling)
        self._check_callback(callback)
        label = None if class_label is None else self.manifest.class_id(class_label)
        k = self._draws_per_image(regen, candidates, num_images)
        rows = int(num_images) * k
        check_budget("edit", rows, cfg.guided and label is not None, self.grid, self.manifest.spec.transformer,
                     self.layout.vocab_size, self.memory_budget)
        seeds = cfg.seeds(rows)
        if source is None:
            with self._lock:  # the encoder session opens on first use
                encoder = self.tokenizer.encoder
            source = np.asarray(self.tokenizer.encode(to_model_input(canvas)))[0].astype(np.int64)
            del encoder
        if preview is not None:
            n = self.grid[0] * self.grid[1]
            known = (np.tile(np.asarray(source).reshape(n), (rows, 1)), np.tile(~np.asarray(regen, bool).reshape(n),
                                                                               (rows, 1)))
            callback = with_preview(self.tokenizer, self.grid, preview, preview_every, callback, known=known)
        elif preview_every is not None:
            with_preview(self.tokenizer, self.grid, None, preview_every)  # a clear error for a bad value
        with self._session(cancel) as (runner, stop):
            result = self._complete(runner, source, regen, label, cfg, seeds, num_images, k, callback, stop)
        result.images = self.decode(result.tokens)
        if canvas is not None:
            result.canvas = Image.fromarray(canvas)
        return result if return_result else result.images

    def _draws_per_image(self, regen, candidates, num_images) -> int:
        return draws_per_image(regen, candidates, num_images)

    def _complete(self, runner, source, regen, label, cfg: GenerationConfig, seeds, num_images, k, callback, stop):
        """The edit on tokens: sequential draws with the kept cells forced, reranked (runtime/editing.py)."""
        return complete_tokens(runner, self.layout, self.grid, source, regen, label, cfg.guidance_scale,
                               cfg.sampling, seeds, num_images, k, callback, stop)


class AnyOrderPipeline(Pipeline):
    """An any-order model (family anyorder-c2i): the any-order decoder by default (runtime/anyorder.py,
    `steps` calls per grid) and edits that take every kept cell as context, one draw per image.
    It was not trained in raster order, so the raster decoders are refused."""

    _EDIT_SAMPLING = Pipeline._EDIT_SAMPLING + ("steps",)

    def config(self, config: GenerationConfig | None = None, **options) -> GenerationConfig:
        cfg = GenerationConfig.from_options(config, **options)
        if not cfg.resolved and cfg.decoder is None and cfg.parallel_window is None and cfg.jacobi_window is None:
            cfg = GenerationConfig.from_options(cfg, decoder="anyorder")
        cfg = super().config(cfg)
        if cfg.decoder != "anyorder":
            raise InvalidInputError(f"this model was trained for any-order decoding, not raster order: decoder "
                                    f"{cfg.decoder!r} would give garbage; use the anyorder decoder (steps=N)")
        return cfg

    def _draws_per_image(self, regen, candidates, num_images) -> int:
        draws_per_image(regen, candidates, num_images)  # the same checks; every kept cell is context: one draw
        return 1

    def _complete(self, runner, source, regen, label, cfg: GenerationConfig, seeds, num_images, k, callback, stop):
        return complete_any_order(runner, self.layout, self.grid, source, regen, label, cfg.guidance_scale,
                                  cfg.sampling, seeds, num_images, cfg.steps, callback=callback, cancel=stop)


# Which pipeline runs each model family the manifest names (spec.FAMILIES lists those it accepts).
# A new family (text-conditioned ...) registers its own subclass here.
PIPELINES: dict[str, type[Pipeline]] = {"llamagen-c2i": Pipeline, "anyorder-c2i": AnyOrderPipeline}
