#!/usr/bin/env python
"""GPU check: every graph kind and precision on CUDA against the CPU fp32 run and PyTorch, GPT-B decode
speed against the PyTorch reference loop on the same GPU, and any-order against sequential decoding.

    bash benchmarks/gpu_check.sh                                # on the GPU machine: fresh venv + onnxruntime-gpu
    python benchmarks/gpu_check.py --provider cuda              # the same, in an environment that has onnxruntime-gpu
    python benchmarks/gpu_check.py --provider cpu --out /tmp/gpu_dry.md           # dry run of the whole script on CPU
    python benchmarks/gpu_check.py --provider cpu --out /tmp/gpu_dry.md --quick   # GPT-Tiny only (~1 min)
    python benchmarks/gpu_check.py --provider cpu --out /tmp/gpu_dry.md --anyorder-only --rounds 1  # last stage (~1 min)

Models (random weights, exported into --work, default a temp dir; an existing export there is reused):
  GPT-Tiny + VQ-Tiny     fused and portable graphs x fp32, fp16, int8, int4
  GPT-B    + VQ-Tiny     (LlamaGen GPT-B, 16x16 grid, vocab 16384; the tokenizer's grid and codebook made to
                         fit) fused graph x fp32, fp16, int4 (the GPT-B exports dominate the run time)
  GPT-B any-order        (the same, `order=any`) portable graph x fp32, fp16 (see ANYORDER_STEPS for why portable)

Per model directory, on --provider: the provider that really runs the transformer and the tokenizer
decoder, greedy tokens (2 images) and sampled tokens (guidance 2, top-k 16) compared with the same
model directory kind's fp32 export on the CPU and with PyTorch (fp32, CPU), and the max |logit| error
against PyTorch over a fixed teacher-forced call scenario (`tessera.export.ort_probe.scenario`).

Timing (GPT-B fp16 and int4, fused): per-token decode latency, median of the intervals between
consecutive sampled tokens (one transformer call + sampling), batch 2 (one image with guidance)
and 8 (four images with guidance), top-k 16; the PyTorch KV-cached reference loop runs on the same
device (fp32, and fp16 on CUDA) with the same numpy sampler. Ratios = ours / PyTorch.

Any-order (last; skipped with a note when too little of --budget-s is left, e.g. on a whole CPU dry run
unless --budget-s 0): LlamaGen GPT-B in any-order mode (`--gpt-set order=any`, random weights), portable
graph x fp16 (then fp32 while time is left), one image with guidance 4.0 (batch 2), top-k 16, on
--provider: sequential decoding on the same graph (the base Pipeline, one token per call) against the
any-order decoder at 24 and 16 steps. Calls
and seconds per image (median over --rounds after a warm-up round), speed-up over sequential and the
calls ratio: on a GPU, where a call costs about the same for 2 or 60 token rows, the speed-up should
approach the calls ratio (on a CPU those calls are compute-bound: benchmarks/results/anyorder.md).

Results: markdown tables, written to benchmarks/results/gpu.md only with --provider cuda (unless --out
is given); the CPU dry run writes to --out (default: a temp file), never over the GPU results. The
file is rewritten after each stage, so a run stopped by a time limit still leaves what it measured.
Exit status: 0 when every directory loaded and ran on the requested provider, 1 otherwise, 2 when
the requested provider cannot run here at all.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tessera.bench.env import cpu_model
from tessera.bench.quality import token_agreement
from tessera.bench.report import markdown_table
from tessera.bench.stats import interval_stats
from tessera.bench.timing import callback_generation, interleaved, same_graph_sequential

REPO = Path(__file__).resolve().parent.parent
GPU_RESULTS = REPO / "benchmarks" / "results" / "gpu.md"
PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
LABELS = [1, 2]  # two images for the token checks
SAMPLED = {"guidance_scale": 2.0, "top_k": 16, "temperature": 1.0}
TIMING_GUIDANCE = 4.0
TIMING_TOP_K = 16
TIMING_BATCHES = {2: [1], 8: [1, 2, 3, 4]}  # rows -> class labels (guidance doubles them)
# The tokenizer made to fit GPT-B's 16x16 grid and 16384 codes (as benchmarks/decode_peers.py exports it).
GPT_B_VQ = {"image_size": 16 * 4, "codebook_size": 16384}
# Any-order stage. Graph: the portable one (standard operators), because gpu_check.sh installs
# onnxruntime-gpu 1.31.1, which cannot load the fused graph's 1.32 form (GroupQueryAttention with
# query_seqlens); the fused 1.22 form that it loads runs a multi-token call one query at a time
# (runtime/compat.py), so any-order steps would cost as many calls as sequential decoding. The portable
# graph runs a step's queries in one batched call, and portable fp16 suits CUDA (runtime/provider_fit.py).
ANYORDER_STEPS = (24, 16)
ANYORDER_PRECISIONS = ("fp16", "fp32")  # timed in this order; fp32 only while time is left
ANYORDER_LABELS = [1]  # one image; guidance makes it 2 rows
ANYORDER_EXPORT_S = 60.0  # a cold GPT-B export (fp32 + fp16; 19 s on a 2-core CPU): the stage needs this left
ANYORDER_MIN_TIMING_S = 30.0  # and this for the warm-up round (each round is measured before the next starts)
BUDGET_MARGIN_S = 30.0  # of --budget-s, for gpu_check.sh's venv set-up before this script starts, and the report


# ==================================================================================================
# onnxruntime: the requested provider must really run here
# ==================================================================================================
def prepare_onnxruntime(provider: str) -> dict:
    """Import onnxruntime, let it find the CUDA/cuDNN libraries and check that `provider` runs a session
    here. Returns facts for the report; exits 2 when it cannot run.

    onnxruntime-gpu 1.31 is built for CUDA 13 (`onnxruntime.capi.build_and_package_info.cuda_version`),
    as the GPU machine's torch: importing torch first loads those libraries from torch's nvidia packages,
    where the onnxruntime CUDA provider finds them by name (onnxruntime's documented way with a compatible
    torch); `onnxruntime.preload_dlls()` (>= 1.21) then also tries nvidia packages in its own site-packages."""
    if provider == "cuda":
        import torch  # noqa: F401  (its CUDA libraries, before onnxruntime opens the CUDA provider)
    import onnxruntime as ort

    facts = {"onnxruntime": ort.__version__, "onnxruntime_file": str(Path(ort.__file__).parent),
             "available": list(ort.get_available_providers())}
    try:
        from onnxruntime.capi import build_and_package_info as info

        facts["onnxruntime_cuda"] = getattr(info, "cuda_version", None)
    except ImportError:
        pass
    if provider == "cuda" and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
            facts["preload_dlls"] = "called"
        except Exception as e:  # reported; the probe below says whether CUDA runs anyway
            facts["preload_dlls"] = f"failed: {type(e).__name__}: {e}"
    from tessera.runtime.backend import installed_flavours
    from tessera.runtime.providers import probe_provider

    facts["flavours"] = installed_flavours()
    name = PROVIDERS[provider]
    why = None if name in facts["available"] else f"{name} is not in this onnxruntime build ({facts['available']})"
    why = why or probe_provider(name)
    if why is not None:
        print(f"gpu_check: {name} cannot run here: {why}\n  onnxruntime {facts['onnxruntime']} from "
              f"{facts['onnxruntime_file']}, flavours installed: {facts['flavours']}, preload_dlls: "
              f"{facts.get('preload_dlls', 'not called')}, built for CUDA {facts.get('onnxruntime_cuda')}.\n  Its CUDA "
              "provider needs that CUDA's runtime, cuBLAS, cuRAND (and cuDNN 9) libraries; see benchmarks/gpu_check.sh.",
              file=sys.stderr)
        sys.exit(2)
    return facts


def torch_facts(device: str) -> dict:
    import torch

    facts = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "device": device}
    if device == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(0)
    else:
        facts["cpu"] = cpu_model()
        facts["threads"] = torch.get_num_threads()
    return facts


# ==================================================================================================
# Models: specs and exports
# ==================================================================================================
@dataclass
class ModelSpec:
    name: str
    gpt_preset: str
    vq_overrides: dict
    kinds: tuple[str, ...]
    precisions: tuple[str, ...]
    timing: bool = False  # time decode of this model's fp16 and int4 fused exports
    gpt_overrides: dict = field(default_factory=dict)  # GPTConfig fields (order="any")
    dirs: dict = field(default_factory=dict)  # (kind, precision) -> model directory

    def build(self):
        from tessera.export.build import build_gpt, build_vq
        from tessera.export.config import gpt_preset, vq_preset

        gpt = build_gpt(gpt_preset(self.gpt_preset, **self.gpt_overrides), None, seed=0)
        return gpt, build_vq(vq_preset("VQ-Tiny", **self.vq_overrides), None, seed=0)


def model_specs(quick: bool) -> list[ModelSpec]:
    """GPT-Tiny everywhere; GPT-B (timing) with VQ-Tiny made to its 16x16 grid and 16384 codes,
    as benchmarks/decode_peers.py exports it (`--vq-set image_size=64 --vq-set codebook_size=16384`)."""
    specs = [ModelSpec("GPT-Tiny", "GPT-Tiny", {}, ("fused", "portable"), ("fp32", "fp16", "int8", "int4"))]
    if not quick:
        specs.append(ModelSpec("GPT-B", "GPT-B", GPT_B_VQ, ("fused",), ("fp32", "fp16", "int4"), timing=True))
    return specs


def anyorder_spec(preset: str = "GPT-B", vq_overrides: dict | None = None) -> ModelSpec:
    """The any-order stage's model: `preset` with position queries, portable graph (see ANYORDER_STEPS)."""
    return ModelSpec(f"{preset}-anyorder", preset, GPT_B_VQ if vq_overrides is None else vq_overrides,
                     ("portable",), ("fp32", "fp16"), gpt_overrides={"order": "any"})


def kind_dirs(spec: ModelSpec, work: Path, kind: str) -> dict[str, Path]:
    """precision -> the model directory of one kind of `spec` in `work`."""
    from tessera.export.model_dir import variant_dirs

    return variant_dirs(work / f"{spec.name.lower()}-{kind}", spec.precisions)


def complete(dirs: dict[str, Path]) -> bool:
    return all((d / "tessera.json").is_file() for d in dirs.values())


def exported(spec: ModelSpec, work: Path) -> bool:
    """Every directory of `spec` is already in `work` (export() reuses them)."""
    return all(complete(kind_dirs(spec, work, kind)) for kind in spec.kinds)


def export(spec: ModelSpec, gpt, vq, work: Path, log) -> None:
    """Export each kind's precisions (fp32 once per kind) into `work`, or reuse what is there."""
    from tessera.export.model_dir import ExportSpec, write_model_dirs

    for kind in spec.kinds:
        out = work / f"{spec.name.lower()}-{kind}"
        dirs = kind_dirs(spec, work, kind)
        if not complete(dirs):
            t0 = time.perf_counter()
            names = [f"class {i}" for i in range(gpt.cfg.num_classes)]
            write_model_dirs(gpt, vq, out, ExportSpec(name=out.name, class_names=names, include_weights=False,
                                                      graph=kind, target_onnxruntime="1.31", overwrite=True),
                             precisions=spec.precisions)
            log(f"exported {out.name}-{{{','.join(spec.precisions)}}} in {time.perf_counter() - t0:.0f} s")
        spec.dirs.update({(kind, p): d for p, d in dirs.items()})


# ==================================================================================================
# Checks of one model directory
# ==================================================================================================
def torch_scenario_logits(gpt, calls: list[dict]) -> list[np.ndarray]:
    """PyTorch's logits for the scenario calls, each over the KV cache of the calls before it."""
    import torch

    past, out = None, []
    with torch.inference_mode():
        for c in calls:
            logits, past = gpt(*(torch.from_numpy(c[k]) for k in ("ids", "pos", "mask")), past)
            out.append(logits.numpy())
    return out


def scenario_error(pipe, gpt) -> tuple[float, float]:
    """Max |logit| error of `pipe.transformer` against PyTorch over `ort_probe.scenario`, and that
    error relative to the largest PyTorch logit."""
    from tessera.export.ort_probe import SCENARIO_ROWS, scenario

    layout = pipe.layout
    calls = scenario(layout.vocab_size, layout.class_token_offset, layout.null_class_id, pipe.grid, layout.rope_grid)
    runner = pipe.transformer
    runner.start(SCENARIO_ROWS, sum(c["ids"].shape[1] for c in calls))
    ours = [np.array(runner(c["ids"], c["pos"], c["mask"]), np.float32) for c in calls]
    runner.release()
    ref = torch_scenario_logits(gpt, calls)
    err = max(float(np.abs(o - r).max()) for o, r in zip(ours, ref))
    return err, err / max(max(float(np.abs(r).max()) for r in ref), 1e-12)


def token_runs(pipe) -> dict[str, np.ndarray]:
    return {"greedy": pipe.generate_tokens(LABELS, guidance_scale=1.0, temperature=0.0, seed=0),
            "sampled": pipe.generate_tokens(LABELS, seed=0, **SAMPLED)}


def torch_token_runs(gpt, device: str) -> dict[str, np.ndarray]:
    """The runs of `token_runs` through the PyTorch reference loop, fp32, on `device` (on the CPU it
    equals `tessera.export.reference.generate_tokens`; on the GPU it saves minutes for GPT-B)."""
    import copy

    from tessera.runtime.sampling import SamplingConfig

    model = gpt if device == "cpu" else copy.deepcopy(gpt).to(device)
    return {"greedy": torch_generate(model, LABELS, 1.0, SamplingConfig(temperature=0.0)),
            "sampled": torch_generate(model, LABELS, SAMPLED["guidance_scale"],
                                      SamplingConfig(SAMPLED["temperature"], SAMPLED["top_k"]))}


def check_dir(path: Path, provider: str, gpt, cpu_tokens: dict | None, torch_tokens: dict) -> dict:
    """Load `path` on `provider`, say what really runs it, compare its tokens and logits."""
    from tessera.runtime import Pipeline

    row = {"dir": path.name, "requested": PROVIDERS[provider]}
    t0 = time.perf_counter()
    try:
        pipe = Pipeline.load(path, providers=provider, verify="size")
    except Exception as e:
        row["load"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
        return row
    row["load"] = "ok"
    row["load_s"] = time.perf_counter() - t0
    row["transformer_providers"] = pipe.transformer.session.get_providers()
    row["graph_providers"] = dict(pipe.graph_providers)
    tokens = token_runs(pipe)
    row["tokens"] = tokens
    for kind in ("greedy", "sampled"):
        if cpu_tokens is not None:
            row[f"{kind}_vs_cpu"] = token_agreement(tokens[kind], cpu_tokens[kind])
        row[f"{kind}_vs_torch"] = token_agreement(tokens[kind], torch_tokens[kind])
    row["logit_err"], row["logit_rel"] = scenario_error(pipe, gpt)
    manifest = json.loads((path / "tessera.json").read_text())
    row["export_rel"] = manifest["parity"]["transformer"]["relative_logit_error"]
    row["ran_on_requested"] = all(p == PROVIDERS[provider] for p in row["graph_providers"].values())
    return row


def check_model(spec: ModelSpec, gpt, provider: str, log) -> list[dict]:
    """Every directory of `spec` on `provider`; tokens compared with the kind's fp32 directory on CPU."""
    from tessera.runtime import Pipeline

    t0 = time.perf_counter()
    torch_tokens = torch_token_runs(gpt, "cuda" if provider == "cuda" else "cpu")
    log(f"{spec.name}: PyTorch reference tokens in {time.perf_counter() - t0:.1f} s")
    rows = []
    for kind in spec.kinds:
        t0 = time.perf_counter()
        cpu_tokens = token_runs(Pipeline.load(spec.dirs[(kind, "fp32")], providers="cpu", verify="size"))
        log(f"{spec.name} {kind}: CPU fp32 tokens in {time.perf_counter() - t0:.1f} s")
        for precision in spec.precisions:
            t0 = time.perf_counter()
            row = check_dir(spec.dirs[(kind, precision)], provider, gpt, cpu_tokens, torch_tokens)
            row.update(model=spec.name, kind=kind, precision=precision)
            rows.append(row)
            log(f"checked {row['dir']} on {provider}: {row['load']} ({time.perf_counter() - t0:.1f} s)")
    return rows


# ==================================================================================================
# Decode timing
# ==================================================================================================
def timed_tokens(run, n: int) -> list[float]:
    """`run(callback)` generates; the time each of its first `n` tokens was sampled (tessera.bench.timing)."""
    return callback_generation(lambda _rows, callback: run(callback))(0, n, None)[1]


def decode_stats(run, tokens: int, rounds: int) -> dict:
    """Median / p90 of the intervals between consecutive tokens over `rounds` generations (after a
    short warm-up generation)."""
    timed_tokens(run, min(8, tokens))
    return interval_stats(np.concatenate([np.diff(timed_tokens(run, tokens)) for _ in range(rounds)]) * 1e3)


def torch_generate(gpt, labels, guidance_scale: float, sampling, seed: int = 0, callback=None) -> np.ndarray:
    """The PyTorch reference loop (tessera.export.reference) on the model's device and dtype."""
    from tessera.export.reference import generate_tokens

    return generate_tokens(gpt, labels, guidance_scale, sampling, seed, callback)


def time_decode(spec: ModelSpec, gpt, provider: str, tokens: int, rounds: int, log) -> list[dict]:
    """Ours (fp16, int4 fused) and PyTorch (fp32; fp16 on CUDA) per batch size, same device."""
    import copy

    import torch

    from tessera.runtime import Pipeline
    from tessera.runtime.sampling import SamplingConfig

    sampling = SamplingConfig(top_k=TIMING_TOP_K)
    rows = []
    for precision in ("fp16", "int4"):
        if ("fused", precision) not in spec.dirs:
            continue
        pipe = Pipeline.load(spec.dirs[("fused", precision)], providers=provider, verify="size")
        engine = f"tessera {precision} ({pipe.graph_providers['transformer'].replace('ExecutionProvider', '')})"
        for batch, labels in TIMING_BATCHES.items():
            run = lambda cb, labels=labels: pipe.generate_tokens(labels, TIMING_GUIDANCE, top_k=TIMING_TOP_K,
                                                                seed=0, callback=cb)
            rows.append({"engine": engine, "precision": precision, "batch": batch, **decode_stats(run, tokens, rounds)})
            log(f"timed {engine} batch {batch}: {rows[-1]['median_ms']:.2f} ms/token")
        pipe = None  # free its sessions before the next precision
    device = "cuda" if provider == "cuda" else "cpu"
    dtypes = [torch.float32, torch.float16] if device == "cuda" else [torch.float32]
    for dtype in dtypes:
        model = copy.deepcopy(gpt).to(device=device, dtype=dtype)
        engine = f"torch {str(dtype).replace('torch.float', 'fp')} ({device})"
        for batch, labels in TIMING_BATCHES.items():
            run = lambda cb, labels=labels: torch_generate(model, labels, TIMING_GUIDANCE, sampling, 0, cb)
            rows.append({"engine": engine, "precision": f"torch-{dtype}", "batch": batch,
                         **decode_stats(run, tokens, rounds)})
            log(f"timed {engine} batch {batch}: {rows[-1]['median_ms']:.2f} ms/token")
        model = None
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


# ==================================================================================================
# Any-order decoding
# ==================================================================================================
def anyorder_settings(pipe, steps: tuple[int, ...]) -> dict[str, Callable[[int], int]]:
    """name -> run(repeat): one image with guidance, decoded without images; returns its transformer calls."""
    def setting(**options) -> Callable[[int], int]:
        return lambda r: pipe.run(ANYORDER_LABELS, guidance_scale=TIMING_GUIDANCE, top_k=TIMING_TOP_K, seed=r,
                                  decode_images=False, **options).calls

    return {"sequential": setting(), **{f"any-order, {st} steps": setting(decoder="anyorder", steps=st)
                                        for st in steps}}


def time_anyorder(path: Path, provider: str, steps: tuple[int, ...], rounds: int,
                  seconds_left: Callable[[], float]) -> list[dict] | str:
    """Seconds per image of each setting (median over rounds, interleaved, after one warm-up round), as
    rows; as many rounds (up to `rounds`) as the warm-up round says fit in `seconds_left()`, or a note
    saying why none did."""
    pipe = same_graph_sequential(path, providers=provider, verify="size")
    settings = anyorder_settings(pipe, steps)
    t0 = time.perf_counter()
    interleaved(settings, 1)
    round_s = time.perf_counter() - t0
    rounds = int(min(rounds, seconds_left() // round_s))
    if rounds < 1:
        return f"{path.name}: not timed, a round takes {round_s:.0f} s and {max(seconds_left(), 0):.0f} s are left"
    timed = interleaved(settings, rounds)
    on = pipe.graph_providers["transformer"]
    return [{"dir": path.name, "decoding": name, "transformer_on": on, "requested": PROVIDERS[provider],
             "calls": calls, "seconds": float(np.median(times)), "rounds": rounds}
            for name, (times, calls) in timed.items()]


def anyorder_stage(provider: str, work: Path, rounds: int, seconds_left: Callable[[], float], rows: list[dict],
                   notes: list[str], save: Callable[[], None], log) -> None:
    """Export the any-order GPT-B (or reuse it) and time it per precision, into `rows` (the report is
    saved after each precision); skipped, with a note, when the time left cannot hold it."""
    t0 = time.perf_counter()
    spec = anyorder_spec()
    need = ANYORDER_MIN_TIMING_S + (0.0 if exported(spec, work) else ANYORDER_EXPORT_S)
    if seconds_left() < need:
        notes.append(f"any-order stage skipped: {max(seconds_left(), 0):.0f} s of the budget left, it needs about "
                     f"{need:.0f} s (rerun it alone: --anyorder-only, with --work to reuse its export)")
        return
    export(spec, *spec.build(), work, log)  # the weights are freed when it returns
    for precision in ANYORDER_PRECISIONS:
        result = time_anyorder(spec.dirs[("portable", precision)], provider, ANYORDER_STEPS, rounds, seconds_left)
        if isinstance(result, str):
            notes.append(f"any-order stage: {result}")
            break
        rows += result
        save()
        log(f"timed any-order {precision}: " + ", ".join(f"{r['decoding']} {r['seconds']:.3f} s" for r in result))
    notes.append(f"any-order stage {time.perf_counter() - t0:.0f} s")


# ==================================================================================================
# Report
# ==================================================================================================
def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def provider_cell(provider: str, requested: str) -> str:
    """The provider's short name, in bold when it is not the one requested (a fallback)."""
    short = provider.replace("ExecutionProvider", "")
    return short if provider == requested else f"**{short}**"


def check_table(rows: list[dict]) -> list[str]:
    def cells(r: dict) -> list[str]:
        if r.get("load") != "ok":
            return [r["dir"], r["kind"], r["precision"], f"**{r.get('load')}**"] + ["-"] * 8
        gp = r["graph_providers"]
        return [r["dir"], r["kind"], r["precision"], f"ok ({r['load_s']:.1f} s)",
                *(provider_cell(gp[g], r["requested"]) for g in ("transformer", "tokenizer_decoder")),
                *(pct(r.get(f"{k}_vs_{ref}")) for k in ("greedy", "sampled") for ref in ("cpu", "torch")),
                f"{r['logit_err']:.2e} ({r['logit_rel']:.2%})", f"{r['export_rel']:.2%}"]

    return markdown_table(["model dir", "kind", "precision", "load", "transformer on", "decoder on",
                           "greedy = CPU fp32", "greedy = torch", "sampled = CPU fp32", "sampled = torch",
                           "max logit err vs torch (rel)", "export parity (rel, CPU)"], [cells(r) for r in rows])


def timing_table(rows: list[dict]) -> list[str]:
    ref = {(r["precision"], r["batch"]): r["median_ms"] for r in rows if r["engine"].startswith("torch")}
    torch_kinds = sorted({p for p, _ in ref})
    return markdown_table(
        ["engine", "batch", "median ms/token", "p90 ms", "row-tokens/s", "intervals",
         *(f"vs {p.replace('torch-torch.float', 'torch fp')}" for p in torch_kinds)],
        [[r["engine"], str(r["batch"]), f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}",
          f"{r['batch'] * 1e3 / r['median_ms']:.0f}", str(r["n"]),
          *(f"{r['median_ms'] / ref[(p, r['batch'])]:.2f}x" if (p, r["batch"]) in ref else "-" for p in torch_kinds)]
         for r in rows])


def anyorder_table(rows: list[dict]) -> list[str]:
    """Per directory: speed-up and calls ratio against its sequential row."""
    seq = {r["dir"]: r for r in rows if r["decoding"] == "sequential"}
    return markdown_table(
        ["model dir", "transformer on", "decoding", "calls / image", "s / image", "speed-up", "calls ratio",
         "rounds"],
        [[r["dir"], provider_cell(r["transformer_on"], r["requested"]), r["decoding"], str(r["calls"]),
          f"{r['seconds']:.4f}", f"{seq[r['dir']]['seconds'] / r['seconds']:.2f}x",
          f"{seq[r['dir']]['calls'] / r['calls']:.2f}x", str(r["rounds"])] for r in rows])


def write_report(out: Path, args, env: dict, checks: list[dict], timing: list[dict], anyorder: list[dict],
                 notes: list[str]) -> None:
    lines = [f"# GPU check ({'CPU dry run' if args.provider == 'cpu' else 'CUDA'})", "",
             f"`python benchmarks/gpu_check.py {' '.join(sys.argv[1:])}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             "", "Environment: " + ", ".join(f"{k} `{v}`" for k, v in env.items()), "",
             "## Every graph kind and precision", "",
             f"Random weights. Token agreement: share of equal tokens, 2 images ({LABELS}); greedy = no guidance, "
             f"sampled = guidance {SAMPLED['guidance_scale']}, top-k {SAMPLED['top_k']}, seed 0 (autoregressive: "
             "one differing token changes what follows, so quantized variants of random-weight models, whose "
             "logits are nearly tied, agree little). CPU fp32 = the same kind's fp32 directory on "
             "CPUExecutionProvider; torch = the PyTorch fp32 KV-cached loop on the checked device (CPU on a CPU run, the GPU on a CUDA run). Logit error: the teacher-forced calls of "
             "`tessera.export.ort_probe.scenario` through the runtime's KV-cache runner; relative = / max |torch "
             "logit|. A provider in **bold** is not the one requested.", ""]
    lines += check_table(checks) if checks else ["(not reached)"]
    lines += ["", "## GPT-B decode", "",
              f"Per-token decode latency (median of intervals between sampled tokens), guidance {TIMING_GUIDANCE}, "
              f"top-k {TIMING_TOP_K}, {args.tokens} tokens x {args.rounds} rounds after a warm-up; batch 2 = one "
              "image with guidance, 8 = four. PyTorch: the KV-cached reference loop on the same device. "
              "Ratios = ours / PyTorch (< 1: faster).", ""]
    lines += timing_table(timing) if timing else ["(not reached or --quick)"]
    lines += ["", "## GPT-B any-order decoding", "",
              f"LlamaGen GPT-B in any-order mode, random weights, portable graph (onnxruntime-gpu 1.31 loads the "
              f"fused graph only in its 1.22 form, which runs a step's queries one per call). One image, guidance "
              f"{TIMING_GUIDANCE} (2 rows), top-k {TIMING_TOP_K}, images not decoded. Sequential = the same graph "
              "through the base pipeline, one token per call. Seconds per image: median over the rounds "
              "(settings interleaved) after a warm-up round. Speed-up and calls ratio: sequential / this row; "
              "where a call's cost hardly depends on its token count, the speed-up approaches the calls ratio.", ""]
    lines += anyorder_table(anyorder) if anyorder else ["(not reached, skipped or --quick: see the notes)"]
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


# ==================================================================================================
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--provider", choices=sorted(PROVIDERS), default="cuda")
    p.add_argument("--out", type=Path, help="markdown report (default: benchmarks/results/gpu.md with "
                                            "--provider cuda, a temp file otherwise)")
    p.add_argument("--work", type=Path, help="export folder, reused when it holds the exports (default: temp)")
    p.add_argument("--quick", action="store_true", help="GPT-Tiny only: no GPT-B, no timing")
    p.add_argument("--tokens", type=int, default=None, help="tokens timed per generation (default: 256 on CUDA, "
                                                             "32 on CPU)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (exports, CPU references)")
    p.add_argument("--budget-s", type=float, default=float(os.environ.get("TESSERA_GPU_BUDGET_S", 280)),
                   help="the whole run's time limit (gpu_check.sh's; default $TESSERA_GPU_BUDGET_S or 280); the "
                        "any-order stage is skipped when too little of it is left; 0: no limit")
    p.add_argument("--anyorder-only", action="store_true", help="only the any-order stage (no checks, no decode "
                                                                 "timing); --work reuses its export")
    args = p.parse_args(argv)
    if args.tokens is None:
        args.tokens = 256 if args.provider == "cuda" else 32
    if args.out is None:
        args.out = GPU_RESULTS if args.provider == "cuda" else Path(tempfile.gettempdir()) / "gpu_check_cpu.md"
    if args.provider != "cuda" and args.out.resolve() == GPU_RESULTS.resolve():
        p.error(f"--provider {args.provider} must not overwrite the GPU results {GPU_RESULTS}; choose another --out")
    if args.quick and args.anyorder_only:
        p.error("--quick leaves out GPT-B, so it has no any-order stage: choose one")
    if not 3 <= args.tokens <= 256:
        p.error("--tokens must be in 3..256 (a 16x16 grid)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", flush=True)  # noqa: E731
    env = prepare_onnxruntime(args.provider)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.provider == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA device: the PyTorch reference cannot run on the GPU")
    env = {"python": platform.python_version(), **env, **torch_facts("cuda" if args.provider == "cuda" else "cpu")}
    env.pop("available", None)
    log(f"onnxruntime {env['onnxruntime']} ({env['onnxruntime_file']}), {PROVIDERS[args.provider]} runs here")
    work = args.work or Path(tempfile.mkdtemp(prefix="tessera-gpu-check-"))
    checks, timing, anyorder, notes = [], [], [], []
    save = lambda: write_report(args.out, args, env, checks, timing, anyorder, notes)  # noqa: E731
    limit = (args.budget_s or float("inf")) - BUDGET_MARGIN_S
    seconds_left = lambda: limit - (time.perf_counter() - t_start)  # noqa: E731
    status = 0
    for spec in [] if args.anyorder_only else model_specs(args.quick):
        try:
            gpt, vq = spec.build()
            export(spec, gpt, vq, work, log)
            checks += check_model(spec, gpt, args.provider, log)
            save()
            if spec.timing:
                timing += time_decode(spec, gpt, args.provider, args.tokens, args.rounds, log)
        except Exception as e:  # recorded: the report shows how far the check got
            traceback.print_exc()
            notes.append(f"{spec.name}: stopped by {type(e).__name__}: {str(e).strip()[:300]}")
            status = 1
        save()
    if args.quick:
        notes.append("any-order stage: not run (--quick leaves out GPT-B)")
    else:
        try:
            anyorder_stage(args.provider, work, args.rounds, seconds_left, anyorder, notes, save, log)
        except Exception as e:  # recorded, as the stages above
            traceback.print_exc()
            notes.append(f"any-order stage: stopped by {type(e).__name__}: {str(e).strip()[:300]}")
            status = 1
    bad = [r["dir"] for r in checks if r.get("load") != "ok" or not r.get("ran_on_requested")]
    bad += sorted({r["dir"] for r in anyorder if r["transformer_on"] != r["requested"]})
    if bad:
        notes.append(f"not loaded or not run on {PROVIDERS[args.provider]}: {', '.join(bad)}")
        status = 1
    notes.append(f"whole run {time.perf_counter() - t_start:.0f} s; exports in {work}")
    save()
    log(f"wrote {args.out} (status {status})")
    return status


if __name__ == "__main__":
    sys.exit(main())
