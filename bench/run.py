"""The orchestration of `tessera bench`: which worker runs when, and how their results combine.

Per provider: one memory worker per directory, then `rounds` speed workers per directory, the
directories taking turns within each round so a burst of load from other work spreads over all of
them. The first directory runs first in round 1: its tokens and logits are the quality reference.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tessera.runtime.errors import InvalidInputError, TesseraError

from .env import environment, is_noisy, load_average
from .protocol import WorkerError, run_worker
from .quality import logit_error, token_agreement
from .stats import ratio, spread, summarize_rounds

NOISY_SPREAD = 0.25  # rounds of one measurement further apart than this: the machine was busy
Progress = Callable[[str], None]


@dataclass
class BenchConfig:
    """What `tessera bench` measures; every field has a CLI option."""

    model_dirs: list[Path]
    providers: list[str] = field(default_factory=lambda: ["cpu"])
    batches: list[int] = field(default_factory=lambda: [2, 8])
    rounds: int = 2
    warmup: int = 8
    threads: int | None = None
    seed: int = 0
    guidance_scale: float | None = None  # None: each model's default
    top_k: int | None = None
    speed: bool = True
    memory: bool = True
    timeout_s: float = 1800.0
    session_options: dict | None = None  # onnxruntime attributes / config entries (Pipeline.load)


def parse_int_list(text: str, option: str, low: int = 1) -> list[int]:
    """"2,8" -> [2, 8]; anything else is a one-line InvalidInputError naming the option."""
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    try:
        values = [int(x) for x in items]
    except ValueError:
        raise InvalidInputError(f"{option} takes comma-separated integers, e.g. 2,8; got {text!r}") from None
    if not values or any(v < low for v in values):
        raise InvalidInputError(f"{option} takes integers >= {low}, e.g. 2,8; got {text!r}")
    return list(dict.fromkeys(values))


def check_config(cfg: BenchConfig) -> list[dict]:
    """Every directory opened (manifest read, file sizes checked) before any worker starts -> one
    description per directory; a bad directory or option is a one-line TesseraError."""
    from tessera.runtime.manifest import load_manifest

    if not cfg.model_dirs:
        raise InvalidInputError("tessera bench needs at least one model directory")
    if cfg.rounds < 1 or cfg.warmup < 0:
        raise InvalidInputError(f"--rounds must be >= 1 and --warmup >= 0, got {cfg.rounds} and {cfg.warmup}")
    if not cfg.speed and not cfg.memory:
        raise InvalidInputError("nothing to measure: both speed and memory are off")
    from tessera.runtime.providers import resolve_providers

    for provider in cfg.providers:
        resolve_providers(provider)  # an unknown or absent provider: a one-line ProviderError now
    out = []
    for d in cfg.model_dirs:
        m = load_manifest(d, verify="size")
        guidance = cfg.guidance_scale if cfg.guidance_scale is not None else \
            float(m.spec.generation.guidance_scale)
        if guidance > 1.0 and any(b % 2 for b in cfg.batches):
            raise InvalidInputError(f"--batch counts transformer rows, 2 per image with guidance ({m.root.name}: "
                                    f"guidance {guidance:g}); use even sizes, e.g. 2,8")
        graphs = [p for p in Path(d).iterdir() if p.name.endswith((".onnx", ".onnx.data"))]
        out.append({"dir": str(d), "name": display_name(Path(d)), "graphs_mib": sum(p.stat().st_size for p in graphs)
                    / float(1 << 20), "precision": m.spec.graph("transformer").precision, "guidance": guidance,
                    "grid": list(m.grid)})
    return out


def display_name(path: Path) -> str:
    """The directory as the user named it, relative to the working directory when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _job(cfg: BenchConfig, model_dir: str, provider: str) -> dict:
    return {"model_dir": str(Path(model_dir).resolve()), "provider": provider, "threads": cfg.threads,
            "seed": cfg.seed, "guidance_scale": cfg.guidance_scale, "top_k": cfg.top_k,
            "session_options": cfg.session_options}


def run_bench(cfg: BenchConfig, progress: Progress = lambda _s: None, workdir: Path | None = None) -> dict:
    """Measure every (directory, provider); returns the run as one JSON-able dict (report.py renders it).
    A worker that fails is recorded in `errors` and its row left partial; the caller decides the exit status."""
    models = check_config(cfg)
    run: dict = {"environment": environment(), "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in
                                                            asdict(cfg).items() if k != "model_dirs"},
                 "rows": [], "errors": [], "notes": []}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
        work = Path(workdir or tmp)
        total = len(cfg.providers) * len(models) * ((1 if cfg.memory else 0) + (cfg.rounds if cfg.speed else 0))
        done = [0]

        def worker(target: str, job: dict, tag: str, what: str) -> dict | None:
            done[0] += 1
            progress(f"[{done[0]}/{total}] {what}")
            try:
                return run_worker(f"tessera.bench.workers:{target}", job, work / "logs", tag, cfg.timeout_s)
            except WorkerError as e:
                run["errors"].append(str(e))
                progress(f"  FAILED: {e}")
                return None

        for provider in cfg.providers:
            rows = [{**m, "provider": provider, "speed_rounds": [], "memory": None} for m in models]
            if cfg.memory:
                for i, (m, row) in enumerate(zip(models, rows)):
                    row["memory"] = worker("memory", _job(cfg, m["dir"], provider), f"{provider}-{i}-memory",
                                           f"{m['name']} on {provider}: memory of one image")
            if cfg.speed:
                for r in range(cfg.rounds):
                    for i, (m, row) in enumerate(zip(models, rows)):
                        job = {**_job(cfg, m["dir"], provider), "batches": cfg.batches, "warmup": cfg.warmup}
                        if r == 0:
                            qdir = work / f"{provider}-{i}"
                            qdir.mkdir(parents=True, exist_ok=True)
                            job["work"] = str(qdir)
                            ref = work / f"{provider}-0" / "tokens.npy"
                            if i > 0 and ref.is_file():
                                job["reference_tokens"] = str(ref)
                        res = worker("speed", job, f"{provider}-{i}-speed-r{r + 1}",
                                     f"{m['name']} on {provider}: speed, round {r + 1}/{cfg.rounds}")
                        if res is not None:
                            row["speed_rounds"].append(res)
            _quality(rows, work, provider)
            run["rows"] += [_combine(row) for row in rows]
    _check_providers(run)
    _ratios(run["rows"])
    env = run["environment"]
    env["load_after"] = load_average()
    env["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    _flag_noise(run)
    return run


def _quality(rows: list[dict], work: Path, provider: str) -> None:
    """Token agreement and teacher-forced logit error of each directory against the first."""
    ref_dir = work / f"{provider}-0"
    for i, row in enumerate(rows):
        if i == 0:
            continue
        mine = work / f"{provider}-{i}"
        q: dict = {}
        try:
            q["token_agreement"] = token_agreement(np.load(ref_dir / "tokens.npy"), np.load(mine / "tokens.npy"))
            q.update(logit_error(np.load(ref_dir / "logits.npy"), np.load(mine / "logits.npy")))
        except (OSError, ValueError) as e:
            q["error"] = f"not comparable with the first directory: {e}"
        row["quality"] = q


def _combine(row: dict) -> dict:
    """Rounds of one (directory, provider) -> its statistics."""
    rounds = row.pop("speed_rounds")
    mem = row.pop("memory")
    if mem:
        row["baseline_mib"] = mem["after_import"]["peak_mib"]
        row["peak_rss_load_mib"] = mem["after_load"]["peak_mib"]
        row["peak_rss_image_mib"] = mem["after_image"]["peak_mib"]
        row["rss_source"] = mem["after_image"]["source"]
        row["one_image"] = mem["image"]
        row["sha256_s"] = mem.get("sha256_s")
        row["active_provider"] = mem["provider"]
    loads = [r["load_s"] for r in rounds] + ([mem["load_s"]] if mem else [])
    row["load_s"] = statistics.median(loads) if loads else None
    row["load_average"] = [[r["load_before"][0], r["load_after"][0]] for r in rounds]
    if rounds:
        row["active_provider"] = rounds[0]["provider"]
        row["batches"] = {}
        for rows_ in rounds[0]["runs"]:
            runs = [r["runs"][rows_] for r in rounds if rows_ in r["runs"]]
            stats = summarize_rounds(runs, "pooled")
            stats["image_s"] = statistics.median(r["image_s"] for r in runs)
            stats["images"] = runs[0]["images"]
            row["batches"][rows_] = stats
        if rounds[0].get("teacher_forced_error"):
            row.setdefault("quality", {})["teacher_forced_error"] = rounds[0]["teacher_forced_error"]
    return row


def _check_providers(run: dict) -> None:
    """A provider onnxruntime dropped (it falls back to the CPU) would measure the wrong thing: an error."""
    from tessera.runtime.providers import full_name

    for row in run["rows"]:
        active = row.get("active_provider")
        if active and active != full_name(row["provider"]):
            run["errors"].append(f"{row['name']}: asked for {row['provider']}, but onnxruntime ran {active}")


def _ratios(rows: list[dict]) -> None:
    """Each row's decode, per-image time and peak memory as ratios to the first directory's, same provider."""
    first: dict[str, dict] = {}
    for row in rows:
        ref = first.setdefault(row["provider"], row)
        row["vs_first"] = {
            "peak_rss_image": ratio(row.get("peak_rss_image_mib"), ref.get("peak_rss_image_mib")),
            **{f"decode_{b}": ratio(s["median_ms"], ref.get("batches", {}).get(b, {}).get("median_ms"))
               for b, s in row.get("batches", {}).items()},
            **{f"image_s_{b}": ratio(s["image_s"], ref.get("batches", {}).get(b, {}).get("image_s"))
               for b, s in row.get("batches", {}).items()}}


def _flag_noise(run: dict) -> None:
    env = run["environment"]
    cores = env.get("cores") or os.cpu_count() or 1
    busy = is_noisy(env["load_before"][0], cores)
    apart = [f"{row['name']} ({row['provider']}) batch {b}: round medians "
             f"{', '.join(f'{x:.2f}' for x in s['round_medians_ms'])} ms"
             for row in run["rows"] for b, s in row.get("batches", {}).items()
             if spread(s.get("round_medians_ms", [])) > NOISY_SPREAD]
    run["noisy"] = bool(busy or apart)
    if busy:  # the cause is known: say it
        run["notes"].append(f"noisy machine: 1-min load average {env['load_before'][0]:.2f} on {cores} cores before "
                            "the run (other work competed for the CPU); absolute times are pessimistic")
    if apart:  # rounds disagree on a quiet machine too (short steps jitter): the reader should know
        run["notes"].append(f"rounds more than {NOISY_SPREAD:.0%} apart: " + "; ".join(apart))
    if run["noisy"]:
        run["notes"].append("compare ratios within this run")


def failed(run: dict) -> bool:
    return bool(run["errors"])


__all__ = ["BenchConfig", "run_bench", "check_config", "parse_int_list", "failed", "TesseraError"]
