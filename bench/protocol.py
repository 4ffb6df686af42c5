"""The worker-process protocol: every measurement runs in a fresh Python process, so no thread
pool, allocator, page-cache warmth of weights or peak-memory mark carries over from one to the next.

    parent: run_worker("tessera.bench.workers:speed", job, workdir)     -> the worker's dict
    child:  python -m tessera.bench.protocol TARGET JOB.json RESULT.json

TARGET is `package.module:function` or `path/to/script.py:function`; the function takes the job
dict and returns a JSON-able dict. The child adds its load average before/after and its peak
resident memory. A worker that raises, crashes or runs past its timeout is a WorkerError naming it.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from tessera.runtime.errors import TesseraError

from .env import load_average
from .memory import peak_rss_mib


class WorkerError(TesseraError):
    """A measurement's worker process failed: its error, or its exit status and last output."""


def resolve(target: str) -> Callable[[dict], dict]:
    """`module:function` or `file.py:function` -> the function (in the worker process)."""
    where, sep, name = target.rpartition(":")
    if not sep or not where or not name:
        raise WorkerError(f"worker target must be 'module:function' or 'file.py:function', got {target!r}")
    if where.endswith(".py"):
        path = Path(where).resolve()
        sys.path.insert(0, str(path.parent))  # a script's sibling modules import by bare name
        spec = importlib.util.spec_from_file_location(f"_bench_worker_{path.stem}", path)
        if spec is None or not path.is_file():
            raise WorkerError(f"worker script not found: {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise WorkerError(f"worker target {target!r}: no function {name!r}")
    return fn


def child(target: str, job_file: str, result_file: str) -> int:
    """The worker side: run TARGET on the job, write {"ok": result} or {"error": ..., "traceback": ...}."""
    load0 = load_average()
    try:
        job = json.loads(Path(job_file).read_text())
        out = resolve(target)(job)
        if not isinstance(out, dict):
            raise WorkerError(f"worker {target} returned {type(out).__name__}, not a dict")
        peak, source = peak_rss_mib()
        out.update(load_before=load0, load_after=load_average(), peak_rss_mib=peak, rss_source=source)
        Path(result_file).write_text(json.dumps({"ok": out}))
        return 0
    except BaseException as e:  # noqa: BLE001  (reported to the parent, whatever it was)
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        Path(result_file).write_text(json.dumps({"error": f"{type(e).__name__}: {text}" if text else type(e).__name__,
                                                 "traceback": traceback.format_exc()}))
        return 1


def run_worker(target: str, job: dict, workdir: Path, tag: str = "worker", timeout: float | None = 1800,
               env: dict[str, str] | None = None, cwd: Path | None = None) -> dict:
    """Run TARGET(job) in a fresh process; its output goes to WORKDIR/TAG.log. Returns its dict, with
    `worker_s` (wall time of the whole process, start-up included)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    job_file, result_file, log = (workdir / f"{tag}.job.json", workdir / f"{tag}.result.json", workdir / f"{tag}.log")
    job_file.write_text(json.dumps(job))
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "tessera.bench.protocol", target, str(job_file), str(result_file)]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                               timeout=timeout, cwd=str(cwd) if cwd else None)
        except subprocess.TimeoutExpired:
            raise WorkerError(f"{tag}: no result after {timeout:.0f} s (log {log})") from None
    seconds = time.perf_counter() - t0
    try:
        result = json.loads(result_file.read_text())
    except (OSError, ValueError):
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        raise WorkerError(f"{tag}: the worker exited with status {r.returncode} and wrote no result "
                          f"(killed, or out of memory?): {tail or 'no output'} (log {log})") from None
    if "error" in result:
        raise WorkerError(f"{tag}: {result['error']} (log {log})")
    return {**result["ok"], "worker_s": seconds}


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print("usage: python -m tessera.bench.protocol TARGET JOB.json RESULT.json", file=sys.stderr)
        sys.exit(2)
    sys.exit(child(*sys.argv[1:]))
