"""Worker functions for tests/test_bench_harness.py (run in fresh processes by tessera.bench.protocol)."""
import os
import time

import numpy as np


def echo(job):
    block = np.ones(job.get("mib", 0) << 20, np.uint8)  # touched: counts in the peak
    return {"x": job.get("x"), "pid": os.getpid(), "touched": int(block[-1:].sum())}


def fails(job):
    raise ValueError("bad job value 7")


def crashes(job):
    os._exit(3)


def not_a_dict(job):
    return [1, 2]


def sleeps(job):
    time.sleep(job["s"])
    return {}
