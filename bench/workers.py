"""The measurements of `tessera bench`, each run inside a fresh worker process (protocol.py).

`memory`: import the runtime, load, generate and decode one image with guidance: the whole
pipeline's peak resident memory, nothing else in the process. `speed`: load (timed), then per batch
size a short warm-up and one whole generation timed token by token, plus the tokens and the
teacher-forced logits the quality columns compare. Both import only the runtime.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .memory import snapshot
from .timing import timed_run


def _load(job: dict):
    from tessera.runtime import Pipeline

    t = time.perf_counter()
    pipe = Pipeline.load(job["model_dir"], providers=job["provider"], threads=job.get("threads"), verify="none",
                         session_options=job.get("session_options"))
    return pipe, time.perf_counter() - t


def _options(job: dict) -> dict:
    return {k: job[k] for k in ("guidance_scale", "temperature", "top_k", "top_p") if job.get(k) is not None}


def _labels(pipe, images: int) -> list[int]:
    return [i % pipe.manifest.num_classes for i in range(images)]


def memory(job: dict) -> dict:
    """Peak RSS after import, after load, and after one whole image (tokens + tokenizer decode)."""
    from tessera.runtime import Pipeline  # noqa: F401  (the baseline: what importing the runtime costs)

    out = {"after_import": snapshot()}
    pipe, out["load_s"] = _load(job)
    out["after_load"] = snapshot()
    t0 = time.perf_counter()
    tokens = pipe.generate_tokens(_labels(pipe, 1), seed=job.get("seed", 0), **_options(job))
    t1 = time.perf_counter()
    pipe.decode(tokens, tile=job.get("tile"))
    out["image"] = {"tokens_s": t1 - t0, "decode_s": time.perf_counter() - t1,
                    "guidance_scale": float(pipe.config(**_options(job)).guidance_scale)}
    out["after_image"] = snapshot()
    out["provider"] = pipe.graph_providers["transformer"]
    from tessera.runtime.manifest import verify_files

    t = time.perf_counter()
    verify_files(pipe.manifest, full=True)  # what `verify="full"` adds to a load (page cache warm)
    out["sha256_s"] = time.perf_counter() - t
    return out


def _generate(pipe, rows: int, job: dict, warmup: int | None = None) -> tuple[dict | None, np.ndarray | None]:
    """One generation of `rows` transformer rows (2 per image with guidance): a warm-up of `warmup`
    tokens, or a whole timed image batch including the tokenizer decode."""
    from tessera.runtime import GenerationCancelled

    opts = _options(job)
    images = max(1, rows // (2 if pipe.config(**opts).guided else 1))
    stamps: list[float] = []

    def on_token(step, total, tokens):
        stamps.append(time.perf_counter())
        return None if warmup is None or step < warmup else False

    t0 = time.perf_counter()
    try:
        result = pipe.run(_labels(pipe, images), seed=job.get("seed", 0), callback=on_token,
                          decode_images=warmup is None, **opts)
    except GenerationCancelled:
        return None, None
    end = time.perf_counter()
    record = timed_run(t0, stamps, len(stamps), end)
    record.update(images=images, tokens_s=stamps[-1] - t0, image_s=(end - t0) / images)
    return record, result.tokens


def speed(job: dict) -> dict:
    """Load time, then per batch size: prefill, per-token intervals, time per image; and with `work`,
    the first batch's tokens and teacher-forced logits saved for the quality comparison."""
    from .quality import teacher_forced_logits

    pipe, load_s = _load(job)
    out: dict = {"load_s": load_s, "runs": {}, "provider": pipe.graph_providers["transformer"]}
    first_tokens = None
    for rows in job["batches"]:
        if job.get("warmup"):
            _generate(pipe, rows, job, warmup=job["warmup"])
        record, tokens = _generate(pipe, rows, job)
        out["runs"][str(rows)] = record
        first_tokens = tokens if first_tokens is None else first_tokens
    work = job.get("work")
    if work:
        work = Path(work)
        np.save(work / "tokens.npy", first_tokens)
        ref = np.load(job["reference_tokens"]) if job.get("reference_tokens") else first_tokens
        t = time.perf_counter()
        try:
            np.save(work / "logits.npy", teacher_forced_logits(pipe, _labels(pipe, 1)[0], ref[0]))
        except Exception as e:  # a decoder family without raster teacher forcing: reported, not fatal
            out["teacher_forced_error"] = f"{type(e).__name__}: {e}"
        out["teacher_forced_s"] = time.perf_counter() - t
    return out
