"""`tessera bench`: measure model directories on this device (tessera.bench), print a table, and
write JSON / markdown / a plot on request. Exit 1 when any measurement failed."""
from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

from .options import HelpFormatter

EXAMPLES = """examples:
  tessera export --from models/default --quant all --out /tmp/v      four variants: /tmp/v-fp32 ... /tmp/v-int4
  tessera bench /tmp/v-fp32 /tmp/v-int8 /tmp/v-int4                 ratios to the first directory
  tessera bench gpt-b-int4 --batch 2 --rounds 1 --memory-only       peak RSS of one whole image
  tessera bench DIR --providers cpu,cuda --json run.json --markdown run.md --plot run.png
"""


class BenchHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The shared option help, with the description and the examples kept as written."""


def add_bench_parser(sub) -> None:
    b = sub.add_parser("bench", help="measure model directories here: size, load, memory, speed, quality",
                       formatter_class=BenchHelpFormatter, epilog=EXAMPLES,
                       description=textwrap.fill("Measure each model directory on each provider, every measurement in a fresh "
                                   "process: graph size, load time, peak resident memory (after load, and of one "
                                   "whole image with guidance: tokens + tokenizer decode), prefill, per-token decode "
                                   "(median, p90) and time per image per batch size, and quality against the first "
                                   "directory (tokens under the same seed; teacher-forced logit error and argmax "
                                   "agreement). Times are meant as ratios within one run.", 100))
    b.add_argument("model_dirs", nargs="+", metavar="MODEL_DIR", help="model directories; the first is the reference")
    b.add_argument("--providers", default="cpu", help="comma-separated execution providers or aliases")
    b.add_argument("--batch", default="2,8", help="transformer batch rows to time, 2 per image with guidance")
    b.add_argument("--rounds", type=int, default=2, help="speed workers per directory and provider, interleaved")
    b.add_argument("--warmup", type=int, default=8, help="warm-up tokens per batch size before timing")
    b.add_argument("--threads", type=int, help="CPU threads per graph, 1..1024 (default: onnxruntime's choice)")
    b.add_argument("--seed", type=int, default=0, help="seed of every generation (the quality comparison's too)")
    b.add_argument("--guidance", type=float, help="guidance scale (default: each model's default)")
    b.add_argument("--top-k", type=int, help="top-k sampling (default: each model's default)")
    what = b.add_mutually_exclusive_group()
    what.add_argument("--memory-only", action="store_true", help="only the memory worker (load + one image)")
    what.add_argument("--speed-only", action="store_true", help="only the speed workers")
    b.add_argument("--json", metavar="FILE", help="write every number as JSON")
    b.add_argument("--markdown", metavar="FILE", help="write the tables as markdown")
    b.add_argument("--plot", metavar="FILE.png", help="write a plot (needs the 'plot' extra: matplotlib)")
    b.add_argument("--overwrite", action="store_true",
                   help="replace existing --json / --markdown / --plot files (default: an error, before measuring)")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    b.set_defaults(func=cmd_bench)


def progress_printer(enabled: bool):
    """Progress lines on stderr, each with the time since the run started."""
    t0 = time.perf_counter()

    def show(text: str) -> None:
        if enabled:
            print(f"[{time.perf_counter() - t0:6.1f}s] {text}", file=sys.stderr, flush=True)

    return show


def cmd_bench(args: argparse.Namespace) -> int:
    from tessera.bench.plot import require_matplotlib, write_plot
    from tessera.bench.report import render, write_json, write_markdown
    from tessera.bench.run import BenchConfig, parse_int_list, run_bench
    from tessera.runtime.errors import InvalidInputError

    from tessera.runtime.session import check_threads

    from .output import check_new_files

    if args.plot:
        require_matplotlib()  # before minutes of measuring
    check_threads(args.threads)
    check_new_files([Path(p) for p in (args.json, args.markdown, args.plot) if p], args.overwrite)
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    if not providers:
        raise InvalidInputError(f"--providers takes comma-separated provider names, got {args.providers!r}")
    cfg = BenchConfig([Path(d) for d in args.model_dirs], providers, parse_int_list(args.batch, "--batch"),
                      args.rounds, args.warmup, args.threads, args.seed, args.guidance, args.top_k,
                      speed=not args.memory_only, memory=not args.speed_only)
    run = run_bench(cfg, progress_printer(not args.quiet))
    run["command"] = "tessera bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "tessera bench"
    print(render(run))
    for path, write in ((args.json, write_json), (args.markdown, write_markdown), (args.plot, write_plot)):
        if path:
            write(run, Path(path))
    return 1 if run["errors"] else 0
