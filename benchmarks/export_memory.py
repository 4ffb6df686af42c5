"""Peak resident memory and stage times of `tessera export` on LlamaGen GPT-B + VQ-16 checkpoints.

Random weights in LlamaGen's layout (llamagen_random.py), under the published file names, so the export
infers its presets from the names as a user's would. The export runs in a fresh worker process
(tessera.bench.protocol); its peak is that process's high-water mark (VmHWM), set against the fp32
weights it loads. `--quick` exports GPT-Tiny + VQ-Tiny instead (a smoke run of the script, ~1 min).

    python benchmarks/export_memory.py [--out benchmarks/results/export_memory.md]
"""
from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from llamagen_random import export_args, write_checkpoints

from tessera.bench.env import cpu_model, load_average
from tessera.bench.protocol import run_worker

QUICK = ["--gpt", "GPT-Tiny", "--vq", "VQ-Tiny", "--random-weights"]


def export(job: dict) -> dict:
    """Worker: `tessera export` in this process (its stage lines go to the worker's log)."""
    from tessera.cli.main import main

    return {"code": main(["export", *job["args"], "--out", job["out"]])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="default benchmarks/results/export_memory.md; with --quick, printed only")
    p.add_argument("--quick", action="store_true", help="GPT-Tiny + VQ-Tiny, random weights (smoke run)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sizes = {} if args.quick else write_checkpoints(tmp)
        job = {"args": QUICK if args.quick else export_args(tmp), "out": str(tmp / "out")}
        r = run_worker(f"{__file__}:export", job, tmp, "export")
        log = (tmp / "export.log").read_text()
    if r["code"]:
        raise SystemExit(f"export failed:\n{log}")
    weights_mb = sum(sizes.values()) / 2**20 or float("nan")
    stages = re.findall(r"^export: (\w+)(?: \(([^)]*)\))? done in ([\d.]+)s$", log, re.M)
    lines = ["# `tessera export` peak memory: LlamaGen GPT-B + VQ-16 (random weights, LlamaGen layout)", "",
             f"Command: `python benchmarks/export_memory.py{' --quick' if args.quick else ''}`", "",
             f"Machine: {cpu_model()}, load average {' / '.join(f'{x:.1f}' for x in load_average())}", "",
             "| fp32 weights (GPT-B + VQ-16) | peak RSS | peak / weights | wall |", "|---|---|---|---|",
             f"| {weights_mb:.0f} MB ({', '.join(f'{k} {v / 2**20:.0f} MB' for k, v in sizes.items())}) "
             f"| {r['peak_rss_mib']:.0f} MB | {r['peak_rss_mib'] / weights_mb:.2f}x | {r['worker_s']:.1f} s |", "",
             "| stage | seconds |", "|---|---|", *[f"| {s}{f' ({d})' if d else ''} | {t} |" for s, d, t in stages]]
    out = args.out or (None if args.quick else "benchmarks/results/export_memory.md")
    if out:
        Path(out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
