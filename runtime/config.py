"""`GenerationConfig`: every option of one generation in one frozen object, checked in one place.

Unset options (None) take the model's generation defaults from its manifest when the config is
`resolve`d; a resolved config holds only concrete, validated values. Each invalid value raises an
`InvalidInputError` naming the argument and the range it accepts, wrong types included (no raw
TypeError / ValueError from deep inside numpy).

A seed names an image: image i of a call draws from its own random stream, seeded with
`seed + i` (or `seed[i]` when a list is given, one per image), so image i is the same alone,
in a batch or in a sheet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from .anyorder import AnyOrderDecoder
from .arpg import ArpgDecoder
from .decoders import Decoder, DecoderRequest, SequentialDecoder
from .errors import InvalidInputError
from .jacobi import JacobiDecoder
from .parallel import ParallelDecoder
from .sampling import ImageStreams, SamplingConfig, guidance_on, image_seeds
from .spec import ARPG_FAMILY, ARPG_SCHEDULES, GUIDANCE_SCHEDULES, GenerationDefaults, ModelSpec, TransformerSpec

# Default memory a single generation may plan to use (KV cache, logits, sampler buffers); a
# request above it is refused before anything is allocated. Override per pipeline with
# `Pipeline.load(..., memory_budget=BYTES)` or `pipe.memory_budget = BYTES` (None: no check).
DEFAULT_MEMORY_BUDGET = 4 << 30
# The decoders the `decoder` option names (runtime/decoders.py). A model runs those of its order
# (raster, or any order with a position query), the first one by default.
DECODERS: dict[str, type[Decoder]] = {d.name: d for d in (SequentialDecoder, ParallelDecoder, JacobiDecoder,
                                                           AnyOrderDecoder, ArpgDecoder)}
# What a decoder for the other order is told, by the model's order.
_WRONG_ORDER = {
    "raster": "this model was trained in raster order and has no position query: the {name} decoder needs an "
              "any-order model (manifest family anyorder-c2i)",
    "any": "this model was trained for any-order decoding, not raster order: decoder {name!r} would give garbage; "
           "use the anyorder decoder (steps=N)",
    "arpg": "this model is an ARPG model (manifest family arpg-c2i): decoder {name!r} cannot run it; use the arpg "
            "decoder (steps=N)",
}
# What a model of another family is told when it asks for the ARPG decoder.
_NOT_ARPG = "decoder 'arpg' needs an ARPG model (manifest family arpg-c2i); this model runs {allowed}"


def model_order(spec: ModelSpec) -> str:
    """"arpg" for an ARPG model, "any" for a model with a position query (any-order training), else
    "raster"."""
    if spec.family == ARPG_FAMILY:
        return "arpg"
    return "raster" if spec.layout.query_token_id is None else "any"


def model_decoders(spec: ModelSpec) -> tuple[str, ...]:
    """The decoders a model runs, its default first: those of its order."""
    order = model_order(spec)
    return tuple(name for name, d in DECODERS.items() if d.order == order)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def check_int(name: str, v, lo: int, hi: int | None = None, note: str = "") -> int:
    """`v` as an int in lo..hi, else an InvalidInputError naming `name` and the range."""
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise InvalidInputError(f"{name} must be {rng} (an integer){note}, got {v!r}")
    return int(v)


def check_real(name: str, v, lo: float, hi: float | None = None, lo_open: bool = False, note: str = "") -> float:
    """`v` as a finite float in [lo, hi] ((lo, hi] with `lo_open`), else an InvalidInputError."""
    ok = _is_real(v) and math.isfinite(float(v)) and (float(v) > lo if lo_open else float(v) >= lo) \
        and (hi is None or float(v) <= hi)
    if not ok:
        left = "(" if lo_open else "["
        rng = f"{'>' if lo_open else '>='} {lo:g}" if hi is None else f"in {left}{lo:g}, {hi:g}]"
        raise InvalidInputError(f"{name} must be {rng} (a finite number){note}, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class GenerationConfig:
    """The options of one generation (diffusers-style names).

    Args:
        guidance_scale: classifier-free guidance (LlamaGen's form); <= 1 turns it off. None: the
            model's default.
        temperature: >= 0; 0 is greedy. None: the model's default.
        top_k: integer >= 0; 0 keeps every token. None: the model's default.
        top_p: in (0, 1]; 1 keeps every token. None: the model's default.
        seed: an integer >= 0 (image i uses `seed + i`) or a list of integers >= 0, one per image.
        num_images_per_class: images per class label (integer >= 1).
        parallel_window: None decodes one token per call (sequential); an integer >= 1 decodes rows
            in parallel, each this many tokens behind the row above (ZipAR, runtime/parallel.py).
        grid: the token grid (h, w) or one int for a square; None: the trained grid. Each side at
            most the model's rotary table (`rope_grid`).
        decoder: a name in `DECODERS`; None: the decoder whose option (`Decoder.option`) is
            given, else the model's default (the first decoder of the model's order).
        jacobi_window: draft tokens per image per call for speculative Jacobi decoding
            (runtime/jacobi.py), an integer >= 1; None: 4.
        steps: transformer calls per grid for the any-order and ARPG decoders (runtime/anyorder.py,
            runtime/arpg.py), an integer in 1..cells; None: the model's default
            (generation_defaults.steps), else 8.
        schedule: ARPG: cells decided per step, "arccos" or "cosine"; None: the model's default, else
            arccos.
        guidance_schedule: ARPG: "linear" (guidance grows from 1 to guidance_scale with the share of
            the grid decided) or "constant"; None: the model's default, else linear.
    """

    guidance_scale: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | tuple[int, ...] = 0
    num_images_per_class: int = 1
    parallel_window: int | None = None
    grid: int | tuple[int, int] | None = None
    decoder: str | None = None
    jacobi_window: int | None = None
    steps: int | None = None
    schedule: str | None = None
    guidance_schedule: str | None = None
    resolved: bool = field(default=False, repr=False, compare=False)

    FIELDS = ("guidance_scale", "temperature", "top_k", "top_p", "seed", "num_images_per_class",
              "parallel_window", "grid", "decoder", "jacobi_window", "steps", "schedule", "guidance_schedule")

    @classmethod
    def from_options(cls, config: "GenerationConfig | None" = None, **options) -> "GenerationConfig":
        """`config` (or the defaults) with the given options replaced; unknown names are an error."""
        unknown = sorted(set(options) - set(cls.FIELDS))
        if unknown:
            raise InvalidInputError(f"unknown generation option(s) {', '.join(unknown)}; "
                                    f"valid: {', '.join(cls.FIELDS)}")
        if config is not None and not isinstance(config, GenerationConfig):
            raise InvalidInputError(f"config must be a GenerationConfig, got {type(config).__name__}")
        base = config if config is not None else cls()
        return replace(base, resolved=False, **options) if options else base

    # --- resolution against the model --------------------------------------------------------
    def resolve(self, spec: ModelSpec, decoders: Sequence[str] | None = None) -> "GenerationConfig":
        """Fill unset options from the model's generation defaults (`spec.generation`), validate
        everything, and return a config of concrete values (`resolved=True`). `decoders`: the
        decoder names allowed, the default first (None: `model_decoders(spec)`). Idempotent."""
        if self.resolved:
            return self
        d = spec.generation

        def pick(name):
            v = getattr(self, name)
            return (getattr(d, name), " (the model's default)") if v is None else (v, "")

        g, note = pick("guidance_scale")
        g = check_real("guidance_scale", g, 0.0, note=" (<= 1 turns guidance off)" + note)
        t, note = pick("temperature")
        t = check_real("temperature", t, 0.0, note=" (0 = greedy)" + note)
        k, note = pick("top_k")
        k = min(check_int("top_k", k, 0, note=" (0 = off)" + note), int(spec.layout.vocab_size))
        p, note = pick("top_p")
        p = check_real("top_p", p, 0.0, 1.0, lo_open=True, note=" (1 = off)" + note)
        n = check_int("num_images_per_class", self.num_images_per_class, 1)
        seed = self.seed
        if _is_int(seed):
            seed = check_int("seed", seed, 0, note=" (or a list of them, one per image)")
        elif isinstance(seed, (list, tuple, np.ndarray)) and len(seed) > 0:
            seed = tuple(check_int(f"seed[{i}]", s, 0) for i, s in enumerate(seed))
        else:
            raise InvalidInputError(f"seed must be an integer >= 0 or a non-empty list of them (one per image), "
                                    f"got {seed!r}")
        grid = self._grid(spec.layout.rope_grid, spec.grid)
        name, options = self._decoder(tuple(decoders or model_decoders(spec)), model_order(spec), d, grid)
        for field_name, choices in (("schedule", ARPG_SCHEDULES), ("guidance_schedule", GUIDANCE_SCHEDULES)):
            value = getattr(self, field_name)
            if name != ArpgDecoder.name:
                if value is not None:
                    raise InvalidInputError(f"{field_name} is an option of the arpg decoder (ARPG models), "
                                            f"not of {name!r}")
                continue
            if value is None:
                value = getattr(d, field_name) or choices[0]
            if value not in choices:
                raise InvalidInputError(f"{field_name} must be one of {', '.join(choices)}, got {value!r}")
            options[field_name] = value
        return GenerationConfig(g, t, k, p, seed, n, grid=grid, decoder=name, resolved=True, **options)

    def _decoder(self, allowed: tuple[str, ...], order: str, defaults: GenerationDefaults,
                 grid: tuple[int, int]) -> tuple[str, dict]:
        """The decoder's name and its option's value; an option given to another decoder is an error."""
        name = self.decoder
        if name is None:  # the allowed decoder whose option is given, else the model's default
            name = next((a for a in allowed if DECODERS[a].option is not None
                         and getattr(self, DECODERS[a].option.name) is not None), allowed[0])
        if not isinstance(name, str) or name not in DECODERS:
            raise InvalidInputError(f"decoder must be one of {', '.join(DECODERS)}, got {name!r}")
        if name not in allowed:
            if name == ArpgDecoder.name:
                raise InvalidInputError(_NOT_ARPG.format(allowed=", ".join(allowed)))
            raise InvalidInputError(_WRONG_ORDER[order].format(name=name))
        own = DECODERS[name].option
        for other in DECODERS.values():
            opt = other.option
            if opt is not None and opt is not own and getattr(self, opt.name) is not None:
                models = {"any": " (any-order models)", "arpg": " (ARPG models)"}.get(other.order, "")
                raise InvalidInputError(f"{opt.name} is an option of the {other.name} decoder{models}, "
                                        f"not of {name!r}")
        if own is None:
            return name, {}
        value, note = getattr(self, own.name), ""
        if value is None and own.model_default:
            value = getattr(defaults, own.name, None)
            note = "" if value is None else " (the model's default)"
        if value is None:
            value = own.default
        if value is None:
            raise InvalidInputError(f"decoder {name!r} needs {own.name} (an integer >= 1)")
        cells = grid[0] * grid[1] if own.per_grid else None
        return name, {own.name: check_int(own.name, value, 1, cells, note=own.note + note)}

    def _grid(self, limit: int, trained: tuple[int, int]) -> tuple[int, int]:
        grid = self.grid
        if grid is None:
            return int(trained[0]), int(trained[1])
        if _is_int(grid):
            h = w = grid
        elif isinstance(grid, (tuple, list)) and len(grid) == 2 and all(_is_int(v) for v in grid):
            h, w = grid
        else:
            raise InvalidInputError(f"grid must be an integer or a pair (height, width) of integers in 1..{limit} "
                                    f"(token cells), got {grid!r}")
        if not (0 < h <= limit and 0 < w <= limit):
            raise InvalidInputError(f"grid {h}x{w} is outside what this model's rotary table covers "
                                    f"(1..{limit} per side; trained on {trained[0]}x{trained[1]})")
        return int(h), int(w)

    # --- views of a resolved config ------------------------------------------------------------
    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.temperature, self.top_k, self.top_p)

    @property
    def guided(self) -> bool:
        return guidance_on(self.guidance_scale)

    def seeds(self, images: int) -> tuple[int, ...]:
        """The seed of each image of a call of `images` images."""
        if not _is_int(self.seed) and len(self.seed) != images:
            raise InvalidInputError(f"seed lists {len(self.seed)} seeds but the call makes {images} image(s): "
                                    "give one seed per image, or one integer (image i uses seed + i)")
        return image_seeds(self.seed, images)


def class_ids(class_labels, num_images_per_class: int, class_id: Callable[[int | str], int],
              num_classes: int) -> np.ndarray:
    """Class ids or names (one or a list) -> ids `[len(labels) * num_images_per_class]`, label-major;
    `class_id` maps one label to its id (`ClassesSpec.class_id`: names, ranges, suggestions)."""
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
            raise InvalidInputError(f"class labels must be integer ids (0..{num_classes - 1}) "
                                    f"or class names, got {label!r} ({type(label).__name__})")
    if len(class_labels) == 0:
        raise InvalidInputError("give at least one class label")
    return np.repeat(np.asarray([class_id(c) for c in class_labels], dtype=np.int64), n)


def memory_estimate(images: int, guided: bool, grid: tuple[int, int], transformer: TransformerSpec,
                    vocab_size: int, queries: int = 1) -> int:
    """Bytes a generation of `images` images plans to hold: the KV cache (float32 upper bound),
    the logits of one call of `queries` rows per image (`Decoder.queries`) and the sampler's
    per-row buffers, the token grids and uniforms."""
    rows = images * (2 if guided else 1)
    n = grid[0] * grid[1]
    capacity = 1 + n + grid[0]
    kv = rows * transformer.n_layer * 2 * transformer.n_kv_head * transformer.head_dim * capacity * 4
    logits = rows * queries * vocab_size * 4 * 3  # the call's logits, guidance and the top-k partition
    return int(kv + logits + images * n * 16 + rows * (n + 1) ** 2 // 2)


def check_budget(what: str, images: int, guided: bool, grid: tuple[int, int], transformer: TransformerSpec,
                 vocab_size: int, budget: int | None, queries: int = 1) -> None:
    """Refuse (InvalidInputError) a request whose memory estimate exceeds `budget` bytes."""
    if budget is None:
        return
    need = memory_estimate(images, guided, grid, transformer, vocab_size, queries)
    if need > budget:
        per = max(1, memory_estimate(1, guided, grid, transformer, vocab_size, queries))
        raise InvalidInputError(
            f"{what}: {images} image(s) at grid {grid[0]}x{grid[1]} would need about {need / 2**30:.2f} GiB "
            f"(KV cache and logits), over the memory budget of {budget / 2**30:.2f} GiB; split the request "
            f"(at most {max(1, budget // per)} images per call) or raise the budget with "
            "Pipeline.load(..., memory_budget=BYTES) / pipe.memory_budget = BYTES (None: no check)")



def plan(cfg: GenerationConfig, class_labels, spec: ModelSpec, budget: int | None) -> tuple[Decoder, DecoderRequest]:
    """A resolved config and class labels -> (its decoder, the request it runs), everything validated
    and the memory budget checked before anything is allocated."""
    decoder = DECODERS[cfg.decoder].from_config(cfg)
    listed = isinstance(class_labels, (list, tuple)) or (isinstance(class_labels, np.ndarray)
                                                         and class_labels.ndim > 0)
    count = len(class_labels) if listed else 1  # the labels are checked after the budget
    check_budget("generate", count * cfg.num_images_per_class, cfg.guided, cfg.grid, spec.transformer,
                 spec.layout.vocab_size, budget, decoder.queries(cfg.grid))
    labels = class_ids(class_labels, cfg.num_images_per_class, spec.classes.class_id, spec.num_classes)
    streams = ImageStreams(cfg.seeds(labels.shape[0]), cfg.grid[0] * cfg.grid[1])
    return decoder, DecoderRequest(labels, cfg.grid, cfg.guidance_scale, cfg.sampling, streams)


__all__ = ["GenerationConfig", "DEFAULT_MEMORY_BUDGET", "DECODERS", "model_decoders", "model_order", "class_ids",
           "memory_estimate", "check_budget", "plan", "check_int", "check_real"]
