"""`Pipeline`: load a model directory, generate images from class labels (diffusers-style calls).

The generation path: `GenerationConfig` (runtime/config.py) resolved once against the manifest
names a decoder from the registry (`config.DECODERS`, runtime/decoders.py) and plans its request
(`config.plan`); the decoder runs on a transformer runner lent by the loaded model
(`LoadedModel.lend`, runtime/loaded.py: the graphs, the self-test, the runner pool, low_memory)
under the one driver (`decoders.drive`) and gives one `GenerationResult` (runtime/results.py),
whose tokens the tokenizer turns into images (`ImageTokenizer.images`). `run` and `generate` drain
the same step stream as `stream`. Editing (runtime/editing.py: `EditPipeline`, and `EditCalls`, a
base class of `Pipeline`) and previews (runtime/preview.py) sit beside it; neither imports this
module. What differs between model families (which decoders run, which is the default) is read
from the manifest, not chosen by subclass.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np
from PIL import Image

from .config import DEFAULT_MEMORY_BUDGET, GenerationConfig, class_ids, model_decoders, plan
from .decoders import DecoderRequest, check_callback, drive
from .editing import EditCalls, ImageLike  # noqa: F401 (ImageLike re-exported)
from .loaded import DEFAULT_CONCURRENCY, LoadedModel, default_model_dir  # noqa: F401 (default_model_dir re-exported)
from .manifest import Manifest, load_manifest
from .preview import PreviewRenderer, with_preview
from .providers import resolve_providers
from .results import CancelToken, GenerationResult, Step, StepCallback
from .sampling import SamplingConfig
from .transformer import TransformerRunner

# What the public calls take: a class id or name, or a list of them.
ClassLabels = Union[int, str, Sequence[Union[int, str]]]


class Pipeline(EditCalls):
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
                 low_memory: bool | None = False):
        # The platform side (runtime/loaded.py): sessions, the self-test, the runner pool, low_memory.
        self.model = LoadedModel(manifest, providers, threads, provider_options, session_options,
                                 max_concurrency, low_memory)
        self.manifest, self.tokenizer = manifest, self.model.tokenizer
        self.graph_providers, self.providers = self.model.graph_providers, self.model.providers
        self.layout, self.grid = manifest.spec.layout, manifest.spec.grid
        # The decoders this model runs, its default first (its order, from the manifest); assign
        # another tuple of `config.DECODERS` names to time a decoder on a graph not trained for it.
        self.decoders = model_decoders(manifest.spec)
        self.memory_budget = memory_budget
        self._last_calls = 0

    @property
    def low_memory(self) -> bool:
        """One graph in memory at a time (`Pipeline.load(low_memory=...)`)."""
        return self.model.low_memory

    @property
    def transformer(self) -> TransformerRunner:
        """The first runner of the pool (reopened here if low_memory closed it)."""
        return self.model.transformer

    @classmethod
    def load(cls, model_dir: str | Path | None = None, providers: str | list[str] = "auto",
             threads: int | None = None, verify: str = "full", provider_options: dict | None = None,
             session_options=None, memory_budget: int | None = DEFAULT_MEMORY_BUDGET,
             max_concurrency: int = DEFAULT_CONCURRENCY,
             low_memory: bool | None = None) -> "Pipeline | NitroPipeline":  # noqa: F821
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
        `pipe.graph_providers` names the provider that runs each graph. A text-to-image model directory
        (family nitro-ar) opens as a `NitroPipeline` (runtime/nitro.py): `pipe.generate(prompts=[...])`.
        """
        manifest = load_manifest(model_dir if model_dir is not None else default_model_dir(), verify=verify)
        if manifest.text_to_image:  # a nitro-ar directory: its own pipeline, `generate(prompts=[...])`
            from .nitro import NitroPipeline

            return NitroPipeline(manifest, resolve_providers(providers), threads, bool(low_memory))
        return cls(manifest, resolve_providers(providers), threads, provider_options, session_options,
                   memory_budget, max_concurrency, low_memory)

    # --- options ----------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return self.manifest.spec.class_names

    @property
    def image_size(self) -> tuple[int, int]:
        """The trained image's (height, width) in pixels."""
        return self.grid[0] * self.tokenizer.downsample, self.grid[1] * self.tokenizer.downsample

    def config(self, config: GenerationConfig | None = None, **options) -> GenerationConfig:
        """`config` with `options` replaced, resolved against this model's defaults and decoders, validated."""
        return GenerationConfig.from_options(config, **options).resolve(self.manifest.spec, self.decoders)

    def sampling_options(self, guidance_scale: float | None = None, temperature: float | None = None,
                         top_k: int | None = None, top_p: float | None = None) -> tuple[float, SamplingConfig]:
        """(guidance_scale, SamplingConfig) with unset options from the manifest's defaults, validated."""
        cfg = self.config(guidance_scale=guidance_scale, temperature=temperature, top_k=top_k, top_p=top_p)
        return cfg.guidance_scale, cfg.sampling

    def labels(self, class_labels: ClassLabels, num_images_per_class: int = 1) -> np.ndarray:
        """Class ids or names -> ids `[len(labels) * num_images_per_class]`, label-major."""
        spec = self.manifest.spec
        return class_ids(class_labels, num_images_per_class, spec.classes.class_id, spec.num_classes)

    def grid_size(self, grid: int | tuple[int, int] | None) -> tuple[int, int]:
        """The token grid to generate: the trained one, or a larger one within the rotary table."""
        return self.config(grid=grid).grid

    def _plan(self, class_labels, config: GenerationConfig | None, options: dict):
        """Validate everything and check the memory budget before anything is allocated (`config.plan`)."""
        cfg = self.config(config, **options)
        return (cfg, *plan(cfg, class_labels, self.manifest.spec, self.memory_budget))

    def _steps(self, cfg: GenerationConfig, request: DecoderRequest, decoder, cancel, callback, decode_images: bool,
               renderer=None, frames: list | None = None) -> Iterator[Step]:
        """The step stream every call drains (`run` to its end, `stream` step by step): with `frames`,
        one `Step` per decision with the preview frame the callback rendered into `frames`, if any;
        always a last `Step` with the result and its images."""
        total = request.cells
        with self.model.lend(cancel) as (runner, stop):
            state = decoder.start(request)
            for step in drive(decoder, runner, self.layout, request, state, callback, stop):
                if frames is not None and step < total:
                    yield Step(step, total, state.view(step).copy(), frames.pop() if frames else None)
                    frames.clear()
            result = state.result(decoder, request)
        with self.model.lock:
            self._last_calls = result.calls
        result.config = cfg
        if decode_images:
            t0 = time.perf_counter()
            result.images = self.decode(result.tokens)
            result.timings["images"] = time.perf_counter() - t0
            if renderer is not None:
                renderer.show_final(result.images, total)
        yield Step(total, total, result.tokens.reshape(len(result.labels), -1).copy(), result.images, result)

    def interrupt(self) -> int:
        """Cancel every generation running on this pipeline now (from any thread); each raises
        `GenerationCancelled` within one step. Later calls are not affected. Returns how many."""
        return self.model.interrupt()

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
            decode_images: False skips the image decoding (`result.images` None).

        Raises:
            InvalidInputError: an option out of range or of the wrong type, or over the memory budget.
            GenerationCancelled: stopped by `cancel`, `interrupt()` or the callback.
        """
        cfg, decoder, request = self._plan(class_labels, config, options)
        check_callback(callback)
        renderer = None
        if preview is not None or preview_every is not None:  # live previews: runtime/preview.py
            callback = with_preview(self.tokenizer, cfg.grid, preview, preview_every, callback,
                                    render_last=not decode_images)
            renderer = callback if preview is not None else None
        for last in self._steps(cfg, request, decoder, cancel, callback, decode_images, renderer):
            pass
        return last.result

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
        cfg, decoder, request = self._plan(class_labels, config, options)
        frames: list = []
        renderer = None if preview_every is None else PreviewRenderer(
            self.tokenizer, cfg.grid, lambda s, t, ims: frames.append(ims), preview_every, render_last=False)
        return self._steps(cfg, request, decoder, cancel, renderer, decode_images, None, frames)

    def generate(self, class_labels: ClassLabels, guidance_scale: float | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, seed: int | Sequence[int] = 0,
                 num_images_per_class: int = 1, callback: StepCallback | None = None,
                 parallel_window: int | None = None, grid: int | tuple[int, int] | None = None,
                 preview=None, preview_every: int | str | None = None, *, cancel: CancelToken | None = None,
                 return_result: bool = False, decoder: str | None = None,
                 jacobi_window: int | None = None, steps: int | None = None,
                 schedule: str | None = None, guidance_schedule: str | None = None) -> list[Image.Image] | GenerationResult:
        """Class labels -> one PIL image per label (x num_images_per_class), label-major.

        Args:
            class_labels: a class id or name (case-insensitive), or a list of them.
            guidance_scale, temperature, top_k, top_p: sampling (None: the model's defaults, from
                its manifest); see `GenerationConfig`.
            seed: an integer >= 0 (image i uses seed + i) or a list of seeds, one per image.
            num_images_per_class: images per label.
            callback: `callback(step, total, tokens)` after each decided token; return False to stop.
            grid: token grid (h, w) or an int; None: the trained grid.
            preview, preview_every: live partial images (runtime/preview.py).
            cancel: a `CancelToken` to stop the generation from another thread.
            return_result: return the `GenerationResult` instead of the image list.
            decoder: a decoder's name (`config.DECODERS`; None: the model's default), with its option:
                parallel_window (ZipAR rows k tokens apart), jacobi_window (speculative Jacobi
                drafts per call) or steps (transformer calls per grid, any-order and ARPG models; ARPG
                also schedule and guidance_schedule); see `GenerationConfig`.

        The same seed gives the same images on every provider.
        """
        result = self.run(class_labels, callback=callback, cancel=cancel, preview=preview,
                          preview_every=preview_every, guidance_scale=guidance_scale, temperature=temperature,
                          top_k=top_k, top_p=top_p, seed=seed, num_images_per_class=num_images_per_class,
                          parallel_window=parallel_window, grid=grid, decoder=decoder, jacobi_window=jacobi_window,
                          steps=steps, schedule=schedule, guidance_schedule=guidance_schedule)
        return result if return_result else result.images

    __call__ = generate

    def generate_tokens(self, class_labels: ClassLabels, guidance_scale: float | None = None,
                        temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                        seed: int | Sequence[int] = 0, num_images_per_class: int = 1,
                        callback: StepCallback | None = None,
                        parallel_window: int | None = None, grid: int | tuple[int, int] | None = None, *,
                        cancel: CancelToken | None = None, decoder: str | None = None,
                        jacobi_window: int | None = None, steps: int | None = None,
                        schedule: str | None = None, guidance_schedule: str | None = None) -> np.ndarray:
        """Class labels (ids or names) -> token grids `[N, h, w]` (the images not decoded); the
        options as `generate`. `run(..., decode_images=False)` gives the whole result."""
        return self.run(class_labels, callback=callback, cancel=cancel, decode_images=False,
                        guidance_scale=guidance_scale, temperature=temperature, top_k=top_k, top_p=top_p,
                        seed=seed, num_images_per_class=num_images_per_class, parallel_window=parallel_window,
                        grid=grid, decoder=decoder, jacobi_window=jacobi_window, steps=steps, schedule=schedule,
                        guidance_schedule=guidance_schedule).tokens

    @property
    def last_calls(self) -> int:
        """Deprecated: transformer calls of the last generation finished on this pipeline (any
        thread). Use `run(...).calls` / `generate(..., return_result=True).calls`."""
        return self._last_calls

    def decode(self, tokens: np.ndarray, tile: int | None = None) -> list[Image.Image]:
        """Token grids `[N, h, w]` -> images; `tile` (an integer >= 1, token cells per side) decodes
        large grids tile by tile to bound peak memory."""
        return self.tokenizer.images(tokens, tile, self.memory_budget, self.model.decode_phase)

    def release(self) -> None:
        """Free the idle runners' KV caches (the next generation allocates anew)."""
        self.model.release()
