#!/usr/bin/env python
"""GPU check: Tessera's graphs on CUDA against PyTorch and the CPU, and their speed against PyTorch on the same GPU.

    TESSERA_GPU_WHEELS=DIR bash benchmarks/gpu_check.sh                       # on the GPU machine: see its header
    python benchmarks/gpu_check.py --provider cpu --quick --out /tmp/gpu.md   # where Tessera is installed

Stages (the report is rewritten after each, so a run stopped by its time limit keeps what it measured):
1. Every graph kind and precision of a tiny model on --provider, judged against PyTorch with the export's
   bounds and token for token against the same directory on the CPU (tessera.export.ort_matrix.check_provider).
2. Decode speed of `tessera bench` (fp32, fp16, int4 fused) against the PyTorch KV-cached loop
   (tessera.export.reference) on the same device, fp32 and, on CUDA, fp16.
3. Sequential, parallel, Jacobi and any-order decoding timed on one any-order fused graph (fp16 on CUDA).
4. ARPG (an ARPG graph of the same shape, `arpg-c2i`) at several step counts against sequential decoding.
Stages 2-4 run LlamaGen GPT-B with random weights (16x16 tokens); --quick runs GPT-Tiny throughout.
Exit status: 0 every check passed on --provider, 1 one failed or ran elsewhere, 2 --provider cannot run here.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch  # before onnxruntime, which then finds the CUDA libraries torch loaded

import tessera
from tessera.bench.cache import GPT_B_RANDOM, cached_export
from tessera.bench.env import cpu_model, versions
from tessera.bench.quality import token_agreement
from tessera.bench.report import markdown_table
from tessera.bench.run import BenchConfig, run_bench
from tessera.bench.stats import summarize_rounds
from tessera.bench.timing import callback_generation, interleaved, run_rounds, same_graph_sequential
from tessera.runtime.providers import full_name, probe_provider

RESULTS = Path(__file__).resolve().parent / "results" / "gpu.md"
GUIDANCE, TOP_K, BATCHES, PRECISIONS = 4.0, 16, [2, 8], ("fp32", "fp16", "int4")  # batch rows: 2 per image
# model -> its export arguments, and stage 3's settings: ZipAR window, Jacobi drafts, any-order steps
MODELS = {"GPT-B": (list(GPT_B_RANDOM), (4, 8, (24, 16))),
          "GPT-Tiny": (["--gpt", "GPT-Tiny", "--vq", "VQ-Tiny", "--random-weights"], (2, 4, (8, 4)))}
STAGE_MIN_S = 30  # a stage of the full check starts only with this much of the budget left
SECTIONS = {  # stage -> title, what its table shows
    "correctness": ("Every graph kind and precision", "GPT-Tiny, random weights. Passed: within the export's bounds "
                    "of PyTorch fp32 (fp32: logits within 1e-3, PyTorch's sampled and greedy tokens, the CPU's "
                    "parallel-decoding tokens), every graph on the requested provider."),
    "speed": ("Decode speed", f"ms per token: median interval between sampled tokens over whole images, guidance "
              f"{GUIDANCE}, top-k {TOP_K}; 2 rows = one image with guidance, 8 = four. Ours: `tessera bench`; PyTorch: "
              "the KV-cached reference loop on the same device. Ratios: ours / PyTorch (< 1: faster)."),
    "decoders": ("Decoders against sequential decoding", f"One image, guidance {GUIDANCE}, top-k {TOP_K}, no pixels; "
                 "all on one any-order fused graph (fp16 on CUDA; onnxruntime-gpu 1.31 loads its 1.22 form, where a "
                 "call of several tokens over a past runs one row or one token per run, whichever makes fewer runs). "
                 "Ratios: sequential / this row."),
    "arpg": ("ARPG against sequential decoding", f"One image, guidance {GUIDANCE}, top-k {TOP_K}, no pixels, fp32: "
             "an ARPG graph (half self-attention, shared K/V, half cross-attention; each cell fed once) against "
             "the LlamaGen graph of the same dimensions decoding sequentially, both traced (portable) graphs, so "
             "both run whole on the provider. Ratios: sequential / this row."),
}
ARPG_STEPS = {"GPT-B": (64, 32, 16), "GPT-Tiny": (8, 4)}


def start(provider: str) -> dict:
    """What the report says about this run; exits 2 when `provider` cannot run a session here."""
    import onnxruntime as ort

    why = probe_provider(provider)
    if why is None and provider == "cuda" and not torch.cuda.is_available():
        why = "torch sees no CUDA device, so the PyTorch reference cannot run on the GPU"
    if why is not None:
        print(f"gpu_check: {full_name(provider)} cannot run here: {why} (onnxruntime {ort.__version__} from "
              f"{Path(ort.__file__).parent}; see benchmarks/gpu_check.sh)", file=sys.stderr)
        sys.exit(2)
    return {**versions(("numpy", "onnxruntime", "onnxruntime-gpu", "torch")), "onnxruntime module":
            f"{ort.__version__} in {Path(ort.__file__).parent}", "tessera": str(Path(tessera.__file__).parent),
            "device": torch.cuda.get_device_name(0) if provider == "cuda" else cpu_model()}


def correctness(args, work: Path, ctx: dict) -> tuple[list[str], bool]:
    from tessera.export.ort_matrix import check_provider, tiny_model_dirs

    ctx["tiny"] = tiny_model_dirs(Path(tempfile.mkdtemp(prefix="tiny-", dir=work)))
    results = check_provider(ctx["tiny"], args.provider)
    rows = [[label, *(r["providers"].get(g, "-") for g in ("transformer", "tokenizer_decoder")),
             "yes" if r["ok"] else "**no**", r["why"]] for label, r in results.items()]
    return (markdown_table(["model directory", "transformer on", "decoder on", "passed", "detail"], rows),
            all(r["ok"] for r in results.values()))


def speed(args, work: Path, ctx: dict) -> tuple[list[str], bool]:
    """Ours through `tessera bench` (fresh worker processes), then the PyTorch loop in this process."""
    from tessera.export.build import build_gpt, load_model_dir
    from tessera.export.config import gpt_preset
    from tessera.export.reference import generate_tokens
    from tessera.runtime.sampling import SamplingConfig

    base = ctx["tiny"]["tiny fused fp32"].with_name("tiny-fused") if args.quick else \
        cached_export(work, "gpt-b", [*MODELS["GPT-B"][0], "--quant", "all"], log=ctx["log"])
    dirs = [base.with_name(f"{base.name}-{p}") for p in PRECISIONS]  # --quick: stage 1's, which hold their weights
    gpt = load_model_dir(dirs[0])[0] if args.quick else build_gpt(gpt_preset("GPT-B"), None, 0)  # as the export: seed 0
    run = run_bench(BenchConfig(dirs, [args.provider], BATCHES, args.rounds, memory=False, guidance_scale=GUIDANCE,
                                top_k=TOP_K), progress=ctx["log"], workdir=work / "bench")
    device, sampling, ref, agree = "cuda" if args.provider == "cuda" else "cpu", SamplingConfig(top_k=TOP_K), {}, None
    for dtype in (torch.float32, torch.float16)[: 2 if device == "cuda" else 1]:
        model, name = copy.deepcopy(gpt).to(device, dtype), "torch " + str(dtype)[-7:].replace("float", "fp")
        gen = lambda rows, cb: generate_tokens(model, list(range(rows // 2)), GUIDANCE, sampling, 0, cb)  # noqa: E731
        runs = run_rounds(callback_generation(gen), BATCHES, 8, args.rounds, gpt.cfg.grid ** 2)
        ref.update({(name, int(b)): summarize_rounds(r) for b, r in runs.items()})
        ours = work / "bench" / f"{args.provider}-0" / "tokens.npy"  # tessera bench: the fp32 directory's first image
        if dtype == torch.float32 and ours.is_file():
            agree = token_agreement(np.load(ours), generate_tokens(model, [0], GUIDANCE, sampling, 0))
    names = sorted({n for n, _ in ref})
    line = lambda engine, on, b, s: [engine, on, str(b), f"{s['median_ms']:.2f}", f"{s['p90_ms']:.2f}", *(  # noqa: E731
        f"{s['median_ms'] / ref[(n, b)]['median_ms']:.2f}x" for n in names)]
    rows = [line(f"tessera {r['precision']}", r.get("active_provider", "?"), int(b), s)
            for r in run["rows"] for b, s in r.get("batches", {}).items()]
    rows += [line(n, device, b, s) for (n, b), s in ref.items()]
    same = [f"{r['precision']} {r['quality']['token_agreement']:.1%}" for r in run["rows"]
            if "token_agreement" in r.get("quality", {})] + ([f"PyTorch fp32 {agree:.1%}"] if agree is not None else [])
    return (markdown_table(["engine", "on", "batch rows", "ms / token", "p90 ms", *(f"vs {n}" for n in names)], rows)
            + ["", f"Tokens equal to tessera fp32's on {args.provider} (one image): {', '.join(same)}"]
            + [f"FAILED: {e}" for e in run["errors"]], not run["errors"])


def decoders(args, work: Path, ctx: dict) -> tuple[list[str], bool]:
    """Each decoder's seconds and calls per image on one graph: the median of --rounds interleaved rounds."""
    model = "GPT-Tiny" if args.quick else "GPT-B"
    precision, (export_args, (window, drafts, steps)) = "fp16" if args.provider == "cuda" else "fp32", MODELS[model]
    path = cached_export(work, f"{model.lower()}-anyorder-fused-{precision}", [
        *export_args, "--gpt-set", "order=any", "--graph", "fused", "--quant", precision], log=ctx["log"])
    pipe = same_graph_sequential(path, providers=args.provider, verify="size")
    options = {"sequential": {}, f"parallel, window {window}": {"parallel_window": window},
               f"jacobi, {drafts} drafts": {"decoder": "jacobi", "jacobi_window": drafts},
               **{f"any-order, {s} steps": {"decoder": "anyorder", "steps": s} for s in steps}}
    runs = {name: (lambda r, o=o: pipe.run([1], guidance_scale=GUIDANCE, top_k=TOP_K, seed=r, decode_images=False,
                                           **o).calls) for name, o in options.items()}
    timed = {k: (float(np.median(t[1:])), calls) for k, (t, calls) in interleaved(runs, args.rounds + 1).items()}
    (seq_s, seq_calls), on = timed["sequential"], pipe.graph_providers["transformer"]
    rows = [[k, on, str(c), f"{s:.4f}", f"{seq_s / s:.2f}x", f"{seq_calls / c:.2f}x"]
            for k, (s, c) in timed.items()]
    head = ["decoding", "transformer on", "calls / image", "s / image", "speed-up", "calls ratio"]
    return markdown_table(head, rows) + ["", f"{path.name}: median of {args.rounds} round(s) after a warm-up round."], \
        on == full_name(args.provider)


def run_line(args, when: str) -> str:
    """How this report was made: gpu_check.sh's command and settings when it ran us (it sets GPU_CHECK_*)."""
    if os.environ.get("GPU_CHECK_COMMAND"):
        return f"`{os.environ['GPU_CHECK_COMMAND'].strip()}` with {os.environ.get('GPU_CHECK_ENV', '')}, {when}"
    return f"`python benchmarks/gpu_check.py {' '.join(args.argv)}`, {when}"


def arpg(args, work: Path, ctx: dict) -> tuple[list[str], bool]:
    """ARPG's seconds and calls per image against sequential decoding of the same shape: median of --rounds."""
    from tessera.runtime import Pipeline

    model = "GPT-Tiny" if args.quick else "GPT-B"
    export_args = MODELS[model][0]
    seq = Pipeline.load(cached_export(work, f"{model.lower()}-portable-fp32", [*export_args, "--graph", "portable"],
                                      log=ctx["log"]), providers=args.provider, verify="size")
    arpg_pipe = Pipeline.load(cached_export(work, f"{model.lower()}-arpg-fp32", [*export_args, "--gpt-set",
                                                                                 "order=arpg"], log=ctx["log"]),
                              providers=args.provider, verify="size")
    runs = {"sequential": lambda r: seq.run([1], guidance_scale=GUIDANCE, top_k=TOP_K, seed=r,
                                           decode_images=False).calls}
    for steps in ARPG_STEPS[model]:
        runs[f"ARPG, {steps} steps"] = lambda r, s=steps: arpg_pipe.run(
            [1], guidance_scale=GUIDANCE, top_k=TOP_K, seed=r, steps=s, decode_images=False).calls
    timed = {k: (float(np.median(t[1:])), calls) for k, (t, calls) in interleaved(runs, args.rounds + 1).items()}
    (seq_s, seq_calls) = timed["sequential"]
    on = {arpg_pipe.graph_providers["transformer"], seq.graph_providers["transformer"]}
    rows = [[k, ", ".join(sorted(on)), str(c), f"{s:.4f}", f"{seq_s / s:.2f}x", f"{seq_calls / c:.2f}x"]
            for k, (s, c) in timed.items()]
    head = ["decoding", "transformer on", "calls / image", "s / image", "speed-up", "calls ratio"]
    return markdown_table(head, rows) + ["", f"median of {args.rounds} round(s) after a warm-up round."], \
        on == {full_name(args.provider)}


def write_report(args, env: dict, sections: dict, notes: list[str]) -> None:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"# GPU check ({'CUDA' if args.provider == 'cuda' else 'CPU dry run'}{', --quick' if args.quick else ''})",
             "", run_line(args, when), "",
             "Environment: " + ", ".join(f"{k} `{v}`" for k, v in env.items())]
    for key, (title, text) in SECTIONS.items():
        lines += ["", f"## {title}", "", text, "", *sections.get(key, ["(not reached)"])]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines + ["", "## Notes", "", *(f"- {n}" for n in notes)]) + "\n")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--provider", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--out", type=Path, help="the report (default: benchmarks/results/gpu.md on CUDA, a temp file else)")
    p.add_argument("--work", type=Path, help="export folder; the exports found there are reused (default: temp)")
    p.add_argument("--quick", action="store_true", help="GPT-Tiny in every stage: a dry run of the whole check")
    p.add_argument("--rounds", type=int, default=2, choices=range(1, 11), metavar="N", help="timing rounds (1-10)")
    p.add_argument("--budget-s", type=float, default=float(os.environ.get("TESSERA_GPU_BUDGET_S", 280)),
                   help="seconds for the whole run (default $TESSERA_GPU_BUDGET_S or 280; 0: no limit)")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.out = args.out or (RESULTS if args.provider == "cuda" else Path(tempfile.gettempdir()) / "gpu_check_cpu.md")
    if args.provider != "cuda" and args.out.resolve() == RESULTS.resolve():
        p.error(f"--provider {args.provider} must not overwrite the GPU results {RESULTS}; choose another --out")
    return args


def main(argv=None) -> int:
    args, t_start = parse_args(argv), time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", flush=True)  # noqa: E731
    env = start(args.provider)
    work = args.work or Path(tempfile.mkdtemp(prefix="tessera-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    seconds_left = lambda: (args.budget_s or float("inf")) - (time.perf_counter() - t_start)  # noqa: E731
    sections, notes, failed, ctx = {}, [], [], {"log": log}
    for name, run in (("correctness", correctness), ("speed", speed), ("decoders", decoders), ("arpg", arpg)):
        t0 = time.perf_counter()
        if seconds_left() < STAGE_MIN_S and not args.quick:
            notes.append(f"{name}: skipped, {seconds_left():.0f} s of the budget left")
            continue
        try:
            sections[name], ok = run(args, work, ctx)
            failed += [] if ok else [name]
        except Exception as e:  # recorded: the report shows how far the check got
            traceback.print_exc()
            notes.append(f"{name}: stopped by {type(e).__name__}: {str(e).strip()[:300]}")
            failed.append(name)
        notes.append(f"{name}: {time.perf_counter() - t0:.0f} s")
        log(f"{name}: {'FAILED' if name in failed else 'done'}")
        write_report(args, env, sections, notes)
    notes.append(f"whole run {time.perf_counter() - t_start:.0f} s; exports in {work}")
    write_report(args, env, sections, notes)
    log(f"wrote {args.out}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
