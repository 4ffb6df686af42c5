"""Huge requests under a hard memory limit: each is refused with the right error before it allocates,
and the process is still alive (and the pipeline usable) afterwards. Runs in a subprocess whose
address space is capped (RLIMIT_AS), so an unbounded allocation would die here, not pass."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_AS is POSIX (no resource module)")

SCRIPT = r"""
import json, resource, sys
import numpy as np
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from tessera.runtime import Pipeline, TesseraError
pipe = Pipeline.load(providers="cpu", max_concurrency=1)
mask = np.zeros((7, 7), bool)
mask[2:4] = True  # kept cells follow the hole: candidates are drawn and reranked
cases = {
    "images": lambda: pipe.generate([1], num_images_per_class=10**9),
    "labels": lambda: pipe.generate([1] * 100000),
    "candidates": lambda: pipe.inpaint(np.zeros((28, 28)), mask, 3, candidates=10**6),
    "edit images": lambda: pipe.inpaint(np.zeros((28, 28)), mask, 3, num_images=10**7),
    "decode": lambda: pipe.decode(np.zeros((10**6, 7, 7), np.int64)),
    "big grid": lambda: pipe.generate([1] * 2000, grid=14),
}
out = {}
for name, call in cases.items():
    try:
        call()
        out[name] = "no error"
    except TesseraError as e:
        out[name] = type(e).__name__
    except BaseException as e:  # MemoryError and friends: the thing this test exists to catch
        out[name] = "RAW " + type(e).__name__
out["after"] = pipe.generate_tokens([7], seed=0).shape[0]
print(json.dumps(out))
"""


def test_huge_requests_are_refused_before_allocating_under_a_memory_limit():
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(3 * 2**30)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("after") == 1  # the pipeline still works
    assert out == {name: "InvalidInputError" for name in out}, out
