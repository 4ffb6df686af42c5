#!/usr/bin/env python
"""Quantized variants side by side: file size, load time, peak memory, speed and quality.

    python benchmarks/quant_variants.py                    # full run (~15 min on 2 cores once exports are cached)
    python benchmarks/quant_variants.py --quick            # smoke run: 2-layer GPT-B, few images
    python benchmarks/quant_variants.py --skip gpt-b:fp16  # leave out a slow variant (or --skip fp16: everywhere)
    python benchmarks/quant_variants.py --memory-investigation   # session-option sweep even if the target passes

Variants: fp32, fp16, int8, int4 (`tessera export --quant all`, int4 at the CLI's default accuracy level) and
int4-alt (the other level of 0 / 4), of two models: `default` (models/default re-exported with `--from`) and
`gpt-b` (LlamaGen GPT-B 256px dimensions, random weights, VQ-Tiny tokenizer at 64 px: a real-size workload whose
quality columns only show quantization noise). Exports are cached by tessera.bench.cache keys under --cache.

Per variant, `tessera bench` (tessera.bench.run, fresh runtime-only worker processes): graphs' size, load time,
sha256 time, peak RSS after load and of one whole image (VmHWM) above the runtime-import baseline, prefill /
decode / s per image at batch 2 (one image with guidance), token agreement and teacher-forced logit error vs
fp32. Added here: the default model's conditional accuracy and Fréchet distance (benchmarks/eval_default.py on
--per-class images per digit, classifier runs/classifier.pt) with token agreement on that set; targets (int8 within
1 point of fp32's accuracy, int4 within 3; GPT-B int4 peak <= 1.3 x graphs + 150 MiB); when that memory target
fails, the int4 GPT-B memory worker under onnxruntime session options that may lower it.
Results: benchmarks/results/quant_variants.md and .png (--quick: under the cache).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from tessera.bench.cache import GPT_B_RANDOM, cached_export
from tessera.bench.plot import write_plot
from tessera.bench.protocol import run_worker
from tessera.bench.quality import token_agreement
from tessera.bench.report import markdown_table, model_table, render, speed_table
from tessera.bench.run import BenchConfig, run_bench

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VARIANTS = ("fp32", "fp16", "int8", "int4", "int4-alt")
ACC_TARGETS = {"int8": 0.01, "int4": 0.03, "int4-alt": 0.03}  # max accuracy drop vs fp32
MEMORY_FACTOR, MEMORY_SLACK_MIB = 1.3, 150.0
MEMORY_OPTIONS = [("as exported", None), ("session.disable_prepacking=1", {"session.disable_prepacking": "1"}),
                  ("enable_cpu_mem_arena=False", {"enable_cpu_mem_arena": False}),
                  ("device allocator for initializers", {"session.use_device_allocator_for_initializers": "1"}),
                  ("disable_prepacking + no arena", {"session.disable_prepacking": "1", "enable_cpu_mem_arena": False}),
                  ("weights inline in transformer.onnx (no external data)", "inline")]


def quality_images(job: dict) -> dict:
    """Worker (runtime only): the quality set's tokens and decoded images, in chunks, saved as .npy."""
    from tessera.runtime import Pipeline

    pipe = Pipeline.load(job["model_dir"], providers="cpu", threads=job["threads"], verify="none")
    labels, toks, ims = np.asarray(job["labels"]), [], []
    for k in range(0, len(labels), 250):
        toks.append(pipe.generate_tokens(labels[k:k + 250].tolist(), seed=job["seed"] + k))
        ims.append(np.clip(pipe.tokenizer.decode(toks[-1]), -1, 1).astype(np.float32))
    np.save(Path(job["out"]) / "tokens.npy", np.concatenate(toks))
    np.save(Path(job["out"]) / "images.npy", np.concatenate(ims))
    return {}


class QualityEval:
    """benchmarks/eval_default.py's digit evaluation of images a worker generated (torch, in this process)."""

    def __init__(self, classifier: str):
        import eval_default as ev

        from tessera.training.data import mnist_split, to_gray01
        from tessera.training.digit_classifier import get_classifier

        self.ev, self.data = ev, mnist_split()
        self.clf = get_classifier(classifier, data=self.data)
        train = to_gray01(self.data["train_x"]).flatten(1)
        self.extra = {"real_feats": self.clf.features(self.data["test_x"]), "train_flat": train,
                      "heldout_nn": ev.nearest_train_distance(self.data["test_x"], train)}

    def __call__(self, images: np.ndarray, per_class: int, seed: int) -> dict:
        import torch

        r = self.ev.evaluate_generator(lambda _labels, _seed: torch.from_numpy(images), self.data, self.clf,
                                       per_class=per_class, seed=seed, num_classes=10, **self.extra)
        return {k: r[k] for k in ("accuracy", "frechet_distance", "n_images", "generated_not_closer_than_heldout")}


def int4_levels() -> dict:
    """{"int4": the export CLI's default --int4-accuracy-level, "int4-alt": the other of 0 / 4} (torch-free)."""
    from tessera.export.cli import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    default = int(p.get_default("int4_accuracy_level") or 0)
    return {"int4": default, "int4-alt": 0 if default == 4 else 4}


def exports(cache: Path, name: str, source: list[str], variants: list[str], alt: int) -> dict[str, Path]:
    base = cached_export(cache, name, [*source, "--quant", "all"])
    dirs = {v: base.with_name(f"{base.name}-{v}") for v in variants if v != "int4-alt"}
    if "int4-alt" in variants:
        dirs["int4-alt"] = cached_export(cache, f"{name}-int4-acc{alt}",
                                         [*source, "--quant", "int4", "--int4-accuracy-level", str(alt)])
    return dirs  # in VARIANTS order: fp32 first, the reference


def measure(name: str, dirs: dict[str, Path], a, quality: QualityEval | None) -> dict:
    guidance, top_k = (4.0, 0) if name == "gpt-b" else (None, None)  # gpt-b: LlamaGen's c2i settings
    cfg = BenchConfig(list(dirs.values()), ["cpu"], [2], a.rounds, a.warmup, a.threads, guidance_scale=guidance,
                      top_k=top_k)
    run = run_bench(cfg, lambda s: print(f"  {name}: {s}", flush=True))
    for row, variant in zip(run["rows"], dirs):
        row["name"] = f"{name} {variant}"
    entry = {"run": run, "quality": {}}
    if quality is not None:
        labels = np.arange(10).repeat(a.per_class).tolist()
        for v, d in dirs.items():
            out = a.cache / "quality" / v
            out.mkdir(parents=True, exist_ok=True)
            print(f"  {name}: quality set, {v} ...", flush=True)
            run_worker(f"{__file__}:quality_images", {"model_dir": str(d), "threads": a.threads, "labels": labels,
                                                      "seed": a.seed, "out": str(out)}, a.cache / "logs", f"quality-{v}")
            q = quality(np.load(out / "images.npy"), a.per_class, a.seed)
            if v != "fp32" and "fp32" in dirs:
                mine, ref = np.load(out / "tokens.npy"), np.load(a.cache / "quality" / "fp32" / "tokens.npy")
                q.update(token_agreement=token_agreement(ref, mine), images_identical=float(
                    (mine.reshape(len(mine), -1) == ref.reshape(len(ref), -1)).all(1).mean()))
            entry["quality"][v] = q
    return entry


def memory_limit(row: dict) -> float:
    return MEMORY_FACTOR * row["graphs_mib"] + MEMORY_SLACK_MIB


def targets(state: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, passed or None when not measured)."""
    out = []
    q = state["models"].get("default", {}).get("quality", {})
    for v, drop in ACC_TARGETS.items():
        acc, ref = q.get(v, {}).get("accuracy"), q.get("fp32", {}).get("accuracy")
        ok = None if acc is None or ref is None else ref - acc <= drop + 1e-9
        out.append((f"default {state['labels'][v]}: conditional accuracy within {drop * 100:.0f} point(s) of fp32",
                    "—" if ok is None else f"{acc:.1%} vs {ref:.1%}", ok))
    rows = {r["name"]: r for r in state["models"].get("gpt-b", {}).get("run", {}).get("rows", [])}
    for v in ("int4", "int4-alt"):
        r = rows.get(f"gpt-b {v}")
        above = r and r.get("peak_rss_image_mib") and r["peak_rss_image_mib"] - r["baseline_mib"]
        out.append((f"GPT-B {state['labels'][v]}: peak RSS above baseline <= 1.3 x graphs + 150 MiB",
                    "—" if not above else f"{above:.0f} MiB vs limit {memory_limit(r):.0f} MiB",
                    None if not above else above <= memory_limit(r)))
    return out


def memory_sweep(int4_dir: Path, a, source: list[str]) -> list[dict]:
    """The int4 GPT-B memory worker (load + one image) under each MEMORY_OPTIONS entry."""
    rows = []
    for label, opts in MEMORY_OPTIONS:
        d = cached_export(a.cache, "gpt-b-int4-inline", [*source, "--quant", "int4", "--external-data-threshold",
                                                         str(2**31 - 1)]) if opts == "inline" else int4_dir
        cfg = BenchConfig([d], ["cpu"], [2], 1, 0, a.threads, guidance_scale=4.0, top_k=0, speed=False,
                          session_options=None if opts == "inline" else opts)
        run = run_bench(cfg, lambda s: print(f"  memory: {label}: {s}", flush=True))
        r, base = run["rows"][0], run["rows"][0].get("baseline_mib", 0)
        rows.append({"label": label, "error": "; ".join(run["errors"]) or None, "image_s": sum(
            (r.get("one_image") or {}).get(k, 0) for k in ("tokens_s", "decode_s")), "above_baseline_mib":
            r.get("peak_rss_image_mib", base) - base, "load_above_baseline_mib": r.get("peak_rss_load_mib", base) - base})
    return rows


def build_report(state: dict) -> str:
    L = ["# Quantized variants", "", f"`{state['command']}`", ""]
    for name, entry in state["models"].items():
        run = entry["run"]
        L += [f"## {name}: {state['titles'][name]}", "", *[f"- {h}" for h in render(run).splitlines()[:3]], ""]
        L += markdown_table(*model_table(run)) + [""] + markdown_table(*speed_table(run)) + [""]
        L += [f"- {n}" for n in run["notes"] + [f"FAILED: {e}" for e in run["errors"]]]
        if entry["quality"]:
            L += ["", f"Quality set: {state['per_class']} images per digit, the model's default sampling.", "",
                  "| variant | accuracy | Fréchet distance | token agreement | identical images |", "|---|---|---|---|---|"]
            L += [f"| {state['labels'][v]} | {q['accuracy']:.1%} | {q['frechet_distance']:.2f} | "
                  f"{q.get('token_agreement', 1.0):.1%} | {q.get('images_identical', 1.0):.1%} |"
                  for v, q in entry["quality"].items()]
        L.append("")
    L += ["## Targets", "", "| target | measured | result |", "|---|---|---|"]
    L += [f"| {t} | {m} | {'not measured' if ok is None else '**PASS**' if ok else '**FAIL**'} |"
          for t, m, ok in state["targets"]]
    if state.get("memory_sweep"):
        L += ["", "## Memory investigation (int4 GPT-B, load + one image)", "",
              "| session option | peak above baseline MiB | after load MiB | one image s |", "|---|---|---|---|"]
        L += [f"| {r['label']} | {r['above_baseline_mib']:.0f} | {r['load_above_baseline_mib']:.0f} | "
              f"{r['image_s']:.2f} |" + (f" FAILED: {r['error']}" if r["error"] else "") for r in state["memory_sweep"]]
    return "\n".join(L + ["", "fp16 is a GPU variant: slow on the CPU provider by design."]) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2-layer GPT-B, few images, output under the cache")
    p.add_argument("--models", default="default,gpt-b")
    p.add_argument("--skip", action="append", default=[], metavar="[MODEL:]VARIANT")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, help="speed workers per variant, round-robin (default 3; --quick 1)")
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--per-class", type=int, help="quality images per digit (default 100; --quick 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the quality set")
    p.add_argument("--classifier", default=str(REPO / "runs" / "classifier.pt"))
    p.add_argument("--memory-investigation", action="store_true")
    p.add_argument("--cache", type=Path, default=HERE / ".cache" / "exports")
    p.add_argument("--out", type=Path, help="markdown path (the plot goes next to it as .png)")
    a = p.parse_args(argv)
    a.rounds, a.per_class = a.rounds or (1 if a.quick else 3), a.per_class or (5 if a.quick else 100)
    skip = {(m or mm, v) for item in a.skip for part in item.split(",") if part.strip()
            for m, _, v in [part.strip().rpartition(":")] for mm in ("default", "gpt-b")}
    if {v for _, v in skip} - set(VARIANTS):
        p.error(f"--skip: unknown variant; choose from {', '.join(VARIANTS)}")
    sys.path.insert(0, str(HERE))
    levels = int4_levels()
    state = {"command": "python benchmarks/quant_variants.py " + " ".join(argv if argv is not None else sys.argv[1:]),
             "per_class": a.per_class, "models": {}, "labels": {**{v: v for v in VARIANTS},
                                                               "int4": f"int4 (acc-level {levels['int4']}, default)",
                                                               "int4-alt": f"int4 acc-level {levels['int4-alt']}"},
             "titles": {"default": "the shipped digit model (models/default, re-exported)",
                        "gpt-b": "LlamaGen GPT-B 256px shape, random weights" + (", 2 layers" if a.quick else "")}}
    sources = {"default": ["--from", str(REPO / "models" / "default")],
               "gpt-b": [*GPT_B_RANDOM, *(["--gpt-set", "n_layer=2"] if a.quick else [])]}
    for name in [m.strip() for m in a.models.split(",") if m.strip()]:
        variants = [v for v in VARIANTS if (name, v) not in skip]
        dirs = exports(a.cache, name, sources[name], variants, levels["int4-alt"])
        quality = QualityEval(a.classifier) if name == "default" and (Path(a.classifier).is_file() or not a.quick) \
            else None
        state["models"][name] = measure(name, dirs, a, quality)
        state.setdefault("dirs", {})[name] = {v: str(d) for v, d in dirs.items()}
    state["targets"] = targets(state)
    memory_failed = any(ok is False and t.startswith("GPT-B int4 (") for t, _, ok in state["targets"])
    if "gpt-b" in state["models"] and "int4" in state["dirs"]["gpt-b"] and (memory_failed or a.memory_investigation):
        state["memory_sweep"] = memory_sweep(Path(state["dirs"]["gpt-b"]["int4"]), a, sources["gpt-b"])
    out = a.out or (a.cache / "quant_variants.md" if a.quick else HERE / "results" / "quant_variants.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_report(state))
    (a.cache / "last_run.json").write_text(json.dumps(state, indent=1, default=str))
    write_plot({**next(iter(state["models"].values()))["run"],
                "rows": [r for e in state["models"].values() for r in e["run"]["rows"]]}, out.with_suffix(".png"))
    print(out.read_text() + f"\nwrote {out} and {out.with_suffix('.png')}")
    return 1 if any(e["run"]["errors"] for e in state["models"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
