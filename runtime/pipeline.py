"""`Pipeline`: load a model directory, generate images from class labels (diffusers-style calls)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .compat import check_loadable, disabled_optimizers
from .errors import InvalidInputError
from .generation import StepCallback, generate_tokens
from .parallel import generate_tokens_parallel
from .images import to_pil
from .manifest import Manifest, load_manifest
from .providers import resolve_providers
from .sampling import SamplingConfig
from .provider_fit import warn_if_unsuited
from .session import active_provider, open_session, ort_version
from .tokenizer import ImageTokenizer
from .transformer import TransformerRunner


def default_model_dir() -> Path:
    """The model shipped inside the package (`tessera.models/default`)."""
    from tessera.models import default_model_dir as shipped

    return shipped()


class Pipeline:
    """Class-conditional image generation from an exported model directory.

    >>> pipe = Pipeline.load()                      # the shipped default model
    >>> images = pipe.generate([3, "seven"], seed=0)
    """

    def __init__(self, manifest: Manifest, providers: list[str], threads: int | None = None,
                 provider_options: dict | None = None, session_options=None):
        self.manifest = manifest
        graphs = manifest.data["graphs"]
        installed = ort_version()
        check_loadable(graphs, installed, manifest.root.name)  # before any session opens
        warn_if_unsuited(graphs, providers[0], manifest.root.name)

        def opener(path: Path):
            entry = next((g for g in graphs.values() if g.get("file") == path.name), {})
            return open_session(path, providers, threads, provider_options, session_options,
                                disabled_optimizers(entry, installed))

        self.transformer = TransformerRunner(opener(manifest.graph_path("transformer")), manifest)
        self.tokenizer = ImageTokenizer(manifest, opener)
        # What really runs each graph: onnxruntime may drop a requested provider (it warns then).
        self.graph_providers = {"transformer": active_provider(self.transformer.session),
                                "tokenizer_decoder": active_provider(self.tokenizer.decoder)}
        self.providers = list(dict.fromkeys([self.graph_providers["transformer"], *providers]))
        if self.graph_providers["transformer"] != providers[0]:
            warn_if_unsuited(graphs, self.graph_providers["transformer"], manifest.root.name)
        self.layout = manifest.layout
        self.grid = manifest.grid
        self.last_calls = 0

    @classmethod
    def load(cls, model_dir: str | Path | None = None, providers: str | list[str] = "auto",
             threads: int | None = None, verify: str = "full", provider_options: dict | None = None,
             session_options=None) -> "Pipeline":
        """Open `model_dir` (default: the shipped model) on the best or the requested providers.

        Args:
            model_dir: a directory made by `tessera export`; None: the shipped default model.
            providers: "auto" (the best provider whose device is really there), one name or alias
                ("cpu", "cuda", "dml", ...) or a list in priority order.
            threads: CPU threads per graph (default: onnxruntime's choice).
            verify: "full" (sha256 of every file), "size" (fast) or "none".
            provider_options: {provider or alias: {option: value}}, e.g. {"cuda": {"device_id": 1}}.
            session_options: an onnxruntime.SessionOptions, or a dict of its attributes and
                config entries, e.g. {"intra_op_num_threads": 2, "session.intra_op.allow_spinning": "0"}.

        `pipe.providers` lists the providers in use, the one that runs the transformer first;
        `pipe.graph_providers` names the provider that runs each graph.
        """
        manifest = load_manifest(model_dir if model_dir is not None else default_model_dir(), verify=verify)
        return cls(manifest, resolve_providers(providers), threads, provider_options, session_options)

    # --- the calls ---------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return self.manifest.class_names

    def sampling_options(self, guidance_scale=None, temperature=None, top_k=None, top_p=None):
        """Fill unset options from the manifest's generation defaults and validate them."""
        d = self.manifest.generation_defaults
        g = float(d.get("guidance_scale", 1.0) if guidance_scale is None else guidance_scale)
        if not np.isfinite(g) or g < 0:
            raise InvalidInputError(f"guidance_scale must be >= 0 (<= 1 turns guidance off), got {g}")
        cfg = SamplingConfig(
            temperature=float(d.get("temperature", 1.0) if temperature is None else temperature),
            top_k=int(d.get("top_k", 0) if top_k is None else top_k),
            top_p=float(d.get("top_p", 1.0) if top_p is None else top_p),
        )
        try:
            return g, cfg.validate(self.layout.vocab_size)
        except ValueError as e:
            raise InvalidInputError(str(e)) from None

    def labels(self, class_labels: int | str | Sequence[int | str], num_images_per_class: int = 1) -> np.ndarray:
        if isinstance(class_labels, (int, str, np.integer)):
            class_labels = [class_labels]
        if num_images_per_class < 1:
            raise InvalidInputError(f"num_images_per_class must be >= 1, got {num_images_per_class}")
        ids = [self.manifest.class_id(c) for c in class_labels for _ in range(num_images_per_class)]
        if not ids:
            raise InvalidInputError("give at least one class label")
        return np.asarray(ids, dtype=np.int64)

    def grid_size(self, grid: int | tuple[int, int] | None) -> tuple[int, int]:
        """The token grid to generate: the trained one, or a larger one within the rotary table."""
        if grid is None:
            return self.grid
        h, w = (grid, grid) if isinstance(grid, (int, np.integer)) else tuple(grid)
        limit = self.layout.rope_grid
        if not (0 < h <= limit and 0 < w <= limit):
            raise InvalidInputError(f"grid {h}x{w} is outside what this model's rotary table covers "
                                    f"(1..{limit} per side; trained on {self.grid[0]}x{self.grid[1]})")
        return int(h), int(w)

    def generate_tokens(self, class_labels, guidance_scale: float | None = None, temperature: float | None = None,
                        top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                        num_images_per_class: int = 1, callback: StepCallback | None = None,
                        parallel_window: int | None = None, grid: int | tuple[int, int] | None = None
                        ) -> np.ndarray:
        """Class labels (ids or names) -> token grids `[N, h, w]`.

        parallel_window: decode rows in parallel, each `parallel_window` tokens behind the row above
        (ZipAR-style; fewer transformer calls, see runtime/parallel.py). None: one token per call.
        grid: generate a larger token grid than trained (quality degrades away from the trained size).
        `self.last_calls` holds the number of transformer calls of the last generation.
        """
        g, sampling = self.sampling_options(guidance_scale, temperature, top_k, top_p)
        labels = self.labels(class_labels, num_images_per_class)
        size = self.grid_size(grid)
        if parallel_window is None:
            tokens = generate_tokens(self.transformer, self.layout, size, labels, g, sampling, int(seed), callback)
            self.last_calls = size[0] * size[1]
            return tokens
        if int(parallel_window) < 1:
            raise InvalidInputError(f"parallel_window must be >= 1 (or None for sequential), got {parallel_window}")
        tokens, self.last_calls = generate_tokens_parallel(self.transformer, self.layout, size, labels, g, sampling,
                                                           int(seed), int(parallel_window), callback)
        return tokens

    def decode(self, tokens: np.ndarray, tile: int | None = None) -> list[Image.Image]:
        """Token grids -> images; `tile` decodes large grids tile by tile to bound peak memory."""
        if tile:
            return to_pil(self.tokenizer.decode_tiled(tokens, tile))
        return to_pil(self.tokenizer.decode(tokens))

    def generate(self, class_labels, guidance_scale: float | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                 num_images_per_class: int = 1, callback: StepCallback | None = None,
                 parallel_window: int | None = None, grid: int | tuple[int, int] | None = None,
                 preview=None, preview_every: int | str | None = None) -> list[Image.Image]:
        """Class labels -> one PIL image per label (x num_images_per_class). Unset options use the
        model's defaults from its manifest. The same seed gives the same images on every provider."""
        renderer = None
        if preview is not None or preview_every is not None:  # live previews: runtime/preview.py
            from .preview import with_preview

            callback = renderer = with_preview(self.tokenizer, self.grid_size(grid), preview, preview_every, callback)
        tokens = self.generate_tokens(class_labels, guidance_scale, temperature, top_k, top_p, seed,
                                      num_images_per_class, callback, parallel_window, grid)
        final = getattr(renderer, "final_images", None) if preview is not None else None
        return final if final is not None else self.decode(tokens)  # the last frame is the full decode

    __call__ = generate

    # --- editing (runtime/editing.py): the same sampling options as generate --------------------
    def inpaint(self, image, mask, class_label=None, **options):
        """Regenerate the masked part of `image` (PIL or array; fit to the model's size, aspect kept,
        padded with its border colour). mask: white / True = regenerate, the input image's size, the
        model's canvas size or the token grid's; a token cell is regenerated if any of its pixels is.
        class_label None: unconditional (null class, no guidance). Options: num_images, candidates
        (draws reranked by the likelihood of the kept cells after the hole; see runtime/editing.py),
        guidance_scale, temperature, top_k, top_p, seed, callback, preview, preview_every,
        return_result (an EditResult with tokens, scores and images instead of the image list)."""
        from .editing import inpaint

        return inpaint(self, image, mask, class_label, **options)

    def outpaint(self, image, box=None, class_label=None, **options):
        """Keep `box` (x0, y0, x1, y1, exclusive; default the centered half) and regenerate around it.
        place=False: the box is in the input image's pixels. place=True: the image is scaled into the
        box on the model's canvas (extend a small image). Other options as `inpaint`."""
        from .editing import outpaint

        return outpaint(self, image, box, class_label, **options)

    def continue_image(self, image, keep_rows: int, class_label=None, **options):
        """Keep the top `keep_rows` token rows of `image` and write the rest (a prefilled prefix).
        Options as `inpaint` (no candidates: nothing known follows the hole)."""
        from .editing import continue_image

        return continue_image(self, image, keep_rows, class_label, **options)

    def edit_tokens(self, tokens, regenerate, class_label=None, **options):
        """The edit on a token grid: `tokens [h, w]`, `regenerate [h, w]` bool -> EditResult."""
        from .editing import edit_tokens

        return edit_tokens(self, tokens, regenerate, class_label, **options)
