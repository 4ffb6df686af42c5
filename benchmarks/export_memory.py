"""Peak resident memory and stage times of `tessera export` on LlamaGen GPT-B + VQ-16 checkpoints.

Random weights in LlamaGen's layout (our modules share its key names), saved as LlamaGen saves them
(`{"model": state_dict}` in torch's zip format) under the published file names, so the export infers
its presets from the names as a user's would. The export runs in a child process; its peak is the
kernel's high-water mark for that child (ru_maxrss), set against the fp32 weights it loads.

    python benchmarks/export_memory.py [--out benchmarks/results/export_memory.md]
"""
from __future__ import annotations

import argparse
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tessera.export.build import build_gpt, build_vq
from tessera.export.config import gpt_preset, vq_preset


def write_checkpoints(folder: Path) -> dict[str, int]:
    """c2i_B_256.pt and vq_ds16_c2i.pt with seeded random weights -> their fp32 bytes."""
    sizes = {}
    for name, model in (("c2i_B_256.pt", build_gpt(gpt_preset("c2i_B_256"), None, seed=0)),
                        ("vq_ds16_c2i.pt", build_vq(vq_preset("vq_ds16_c2i"), None, seed=0))):
        state = model.state_dict()
        torch.save({"model": state}, folder / name)
        sizes[name] = sum(t.numel() * t.element_size() for t in state.values())
        del model, state
    return sizes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/export_memory.md")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sizes = write_checkpoints(tmp)
        cmd = [sys.executable, "-m", "tessera.cli", "export", "--gpt-weights", str(tmp / "c2i_B_256.pt"),
               "--vq-weights", str(tmp / "vq_ds16_c2i.pt"), "--out", str(tmp / "out")]
        t0 = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if run.returncode:
            sys.exit(f"export failed:\n{run.stderr}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    weights_mb = sum(sizes.values()) / 2**20
    stages = re.findall(r"^export: (\w+)(?: \(([^)]*)\))? done in ([\d.]+)s$", run.stderr, re.M)
    lines = ["# `tessera export` peak memory: LlamaGen GPT-B + VQ-16 (random weights, LlamaGen layout)", "",
             "Command: `python benchmarks/export_memory.py`", "",
             f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, "
             f"load average {' / '.join(f'{x:.1f}' for x in __import__('os').getloadavg())}", "",
             "| fp32 weights (GPT-B + VQ-16) | peak RSS | peak / weights | wall |", "|---|---|---|---|",
             f"| {weights_mb:.0f} MB ({', '.join(f'{k} {v / 2**20:.0f} MB' for k, v in sizes.items())}) "
             f"| {peak_mb:.0f} MB | {peak_mb / weights_mb:.2f}x | {wall:.1f} s |", "",
             "| stage | seconds |", "|---|---|", *[f"| {s}{f' ({d})' if d else ''} | {t} |" for s, d, t in stages]]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
