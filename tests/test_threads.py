"""One Pipeline shared by threads gives exactly the images of the same calls made one after another;
two pipelines and two processes on one model directory work too."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

CALLS = [dict(class_labels=[1, 2, 3], seed=0), dict(class_labels=[4], seed=9, guidance_scale=1.0),
         dict(class_labels=[5, 6], seed=3, parallel_window=2), dict(class_labels=["seven"], seed=1, grid=6),
         dict(class_labels=[8, 9, 0, 1], seed=7, top_k=4), dict(class_labels=[2], seed=2, temperature=0.0)]


def _run(pipe, kw):
    kw = dict(kw)
    return pipe.generate_tokens(kw.pop("class_labels"), **kw)


@pytest.mark.parametrize("max_concurrency", [1, 4])
def test_threads_on_one_pipeline_equal_sequential_calls(any_dir, max_concurrency):
    from tessera.runtime import Pipeline

    pipe = Pipeline.load(any_dir, providers="cpu", max_concurrency=max_concurrency)
    want = [_run(pipe, kw) for kw in CALLS]
    for _ in range(3):
        with ThreadPoolExecutor(len(CALLS)) as ex:
            got = list(ex.map(lambda kw: _run(pipe, kw), CALLS * 2))
        for a, b in zip(got, want * 2):
            np.testing.assert_array_equal(a, b)
    assert len(pipe.model.runners.runners) <= max_concurrency


def test_images_and_edits_from_threads(tiny_pipe):
    picture = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True

    def work(i):
        if i % 2:
            return [np.asarray(im) for im in tiny_pipe.inpaint(picture, mask, i % 10, candidates=2, seed=i)]
        return [np.asarray(im) for im in tiny_pipe.generate([i % 10, 3], seed=i)]

    want = [work(i) for i in range(8)]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(work, range(8)))
    for a, b in zip(got, want):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_two_pipelines_on_one_directory_in_two_threads(tiny_dir):
    from tessera.runtime import Pipeline

    pipes = [Pipeline.load(tiny_dir, providers="cpu") for _ in range(2)]
    want = [_run(pipes[0], kw) for kw in CALLS]
    with ThreadPoolExecutor(2) as ex:
        got = list(ex.map(lambda i: [_run(pipes[i], kw) for kw in CALLS], range(2)))
    for per_pipe in got:
        for a, b in zip(per_pipe, want):
            np.testing.assert_array_equal(a, b)


def test_two_processes_on_one_directory(tiny_dir, tiny_pipe):
    code = textwrap.dedent(f"""
        import json
        from tessera.runtime import Pipeline
        pipe = Pipeline.load(r"{tiny_dir}", providers="cpu")
        print(json.dumps(pipe.generate_tokens([1, 2, 3], seed=5).tolist()))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    want = tiny_pipe.generate_tokens([1, 2, 3], seed=5)
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        np.testing.assert_array_equal(np.array(json.loads(out.strip().splitlines()[-1])), want)
