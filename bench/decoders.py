"""The decoders benchmark's harness (benchmarks/decoders.py): sequential, parallel (ZipAR), speculative
Jacobi and any-order decoding measured the same way.

A `Setting` is one way to decode (a pipeline and its generation options); `time_settings` times
settings interleaved (each repeat runs every setting once, in turn, so load from other processes on a
shared machine falls on all of them alike); `sample_set` generates a quality set in batches and counts
the transformer calls each batch and each image needed; `accuracy_floor` and `within_floor` read a
setting against the spread of sequential decoding over seeds (the sampling noise floor); `speed_rows`
gives the columns every decoders table shares. Runtime only: scoring the quality set (a digit
classifier, torch) is the caller's.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .timing import interleaved


@dataclass(frozen=True)
class Setting:
    """One way to decode. pipe: a loaded runtime `Pipeline`; options: its generation options
    (`decoder`, `parallel_window`, `jacobi_window`, `steps`, sampling ...); order: an any-order
    schedule order other than the pipeline's (runs the any-order decoder directly)."""

    name: str
    pipe: Any
    options: Mapping[str, Any] = field(default_factory=dict)
    order: str | None = None

    def run(self, labels: Sequence[int], seed: int, **options):
        """One generation of `labels` (tokens only, no image decode) -> the runtime's GenerationResult."""
        opts = {**self.options, **options}
        if self.order is None:
            return self.pipe.run(list(labels), seed=seed, decode_images=False, **opts)
        return anyorder_decode(self.pipe, labels, seed, self.order, **opts)


def anyorder_decode(pipe, labels: Sequence[int], seed: int, order: str, **options):
    """The any-order decoder with an explicit schedule order (the pipeline always uses its default
    order): the same request `Pipeline.run` builds, decoded on a runner of the pipeline's pool."""
    from tessera.runtime.anyorder import AnyOrderDecoder
    from tessera.runtime.decoders import DecoderRequest, run_decoder
    from tessera.runtime.sampling import ImageStreams

    cfg = pipe.config(seed=seed, **options)
    labels = np.asarray(labels, np.int64)
    request = DecoderRequest(labels, cfg.grid, cfg.guidance_scale, cfg.sampling,
                             ImageStreams(cfg.seeds(len(labels)), cfg.grid[0] * cfg.grid[1]))
    pipe.transformer  # noqa: B018  (reopens the transformer where low_memory closed it)
    with pipe.model.runners.borrow() as runner:
        return run_decoder(AnyOrderDecoder(cfg.steps, order), runner, pipe.layout, request)


@dataclass
class Timed:
    """One setting's interleaved timings: seconds of each repeat and the last repeat's result."""

    seconds: list[float]
    result: Any

    @property
    def median(self) -> float:
        return float(np.median(self.seconds))

    @property
    def best(self) -> float:
        """The fastest repeat (on a shared machine noise only adds time)."""
        return float(min(self.seconds))

    @property
    def calls(self) -> int:
        return int(self.result.calls)


def time_settings(settings: Sequence[Setting], repeats: int, job: Callable[[int], tuple[Sequence[int], int]],
                  **options) -> dict[str, Timed]:
    """`repeats` rounds; in each, every setting runs once, in turn, on `job(repeat)` -> (labels, seed)."""
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        raise ValueError(f"settings need distinct names, got {names}")
    timed = interleaved({s.name: (lambda r, s=s: s.run(*job(r), **options)) for s in settings}, repeats)
    return {name: Timed(times, result) for name, (times, result) in timed.items()}


def class_labels(num_classes: int, per_class: int) -> np.ndarray:
    """`per_class` images of each class, class by class: 0, 0, ..., 1, 1, ..."""
    return np.repeat(np.arange(num_classes, dtype=np.int64), per_class)


@dataclass
class Sampled:
    """A generated quality set: images [N, 3, H, W] in [-1, 1], their labels, the seconds it took
    (tokens and image decode) and the summed counts: batches, images, calls, the calls each image
    needed (`image_calls`) and the decoders' own (Jacobi: drafts verified and accepted)."""

    images: np.ndarray
    labels: np.ndarray
    seconds: float
    counts: Counter

    @property
    def calls_per_batch(self) -> float:
        """A batch's images share its calls (its slowest image sets them)."""
        return self.counts["calls"] / self.counts["batches"]

    @property
    def calls_per_image(self) -> float:
        """The calls each image needed at its own pace (the same alone or in a batch)."""
        return self.counts["image_calls"] / self.counts["images"]

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / len(self.labels)

    @property
    def acceptance(self) -> float | None:
        """Accepted drafts / verified drafts (speculative decoding), None for the other decoders."""
        verified = self.counts.get("drafts_verified", 0)
        return self.counts.get("drafts_accepted", 0) / verified if verified else None


def sample_set(setting: Setting, labels: Sequence[int], seed: int, batch: int = 50, **options) -> Sampled:
    """`labels` generated in batches of `batch` (batch at offset i seeded `seed + i`), each batch's tokens
    decoded to images by the pipeline's tokenizer."""
    labels = np.asarray(labels, np.int64)
    counts: Counter = Counter()
    images = []
    t0 = time.perf_counter()
    for i in range(0, len(labels), batch):
        r = setting.run(labels[i:i + batch].tolist(), seed + i, **options)
        stats, n = dict(getattr(r, "stats", None) or {}), len(r.tokens)
        counts.update(batches=1, images=n, calls=r.calls, image_calls=stats.pop("image_calls", r.calls * n), **stats)
        images.append(setting.pipe.tokenizer.decode(r.tokens))
    seconds = time.perf_counter() - t0
    return Sampled(np.clip(np.concatenate(images), -1, 1), labels, seconds, counts)


def accuracy_floor(accuracies: Sequence[float], images: int) -> tuple[float, float, float]:
    """(mean, the spread to read a setting against, the binomial standard error of one run's accuracy
    over `images`): the spread is the larger of the seeds' sample standard deviation and that error,
    so three seeds that happen to agree do not make the floor narrower than one run can resolve."""
    acc = np.asarray(accuracies, np.float64)
    mean = float(acc.mean())
    se = float(np.sqrt(mean * (1 - mean) / images))
    sd = float(acc.std(ddof=1)) if acc.size > 1 else 0.0
    return mean, max(sd, se), se


def within_floor(value: float, mean: float, spread: float, k: float = 2.0) -> bool:
    """True when `value` lies within `k` spreads of `mean` (a setting indistinguishable from the floor)."""
    return abs(value - mean) <= k * spread


def speed_rows(rows: Sequence[Mapping], base: Mapping | None = None, calls: str = "calls",
               seconds: str = "seconds") -> list[list[str]]:
    """The columns every decoders table shares, one list per row: calls, fewer calls, s, speed-up, each
    against `base` (default the first row, the sequential reference)."""
    base = rows[0] if base is None else base
    return [[f"{r[calls]:.1f}".removesuffix(".0"), f"{base[calls] / r[calls]:.2f}x", f"{r[seconds]:.4f}",
             f"{base[seconds] / r[seconds]:.2f}x"] for r in rows]
