"""Stopping a generation (a token, `interrupt()`, the callback returning False) within one step,
the pipeline usable afterwards; streaming steps with partial tokens and preview frames."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from tessera.runtime import CancelToken, GenerationCancelled, Pipeline


class CountingRunner:
    """Counts the transformer calls of the pipeline's runners (wraps the pool's runners)."""

    def __init__(self, pipe):
        self.calls = 0
        for runner in pipe.model.runners.runners:
            original = runner._run_shared if runner.shared else None
            if original is None:
                continue

            def counted(*a, _orig=original):
                self.calls += 1
                return _orig(*a)

            runner._run_shared = counted


@pytest.fixture
def pipe(tiny_dir):
    return Pipeline.load(tiny_dir, providers="cpu")


def test_callback_returning_false_stops_within_one_step(pipe):
    want = pipe.generate_tokens([1, 2], seed=3)
    counter = CountingRunner(pipe)
    seen = []

    def callback(step, total, tokens):
        seen.append(step)
        return step < 5  # False at step 5

    with pytest.raises(GenerationCancelled) as e:
        pipe.generate([1, 2], seed=3, callback=callback)
    assert seen == [1, 2, 3, 4, 5] and e.value.step == 5 and e.value.total == 16
    assert counter.calls == 5, "prefill + 4 decode calls: nothing runs after the callback said stop"
    np.testing.assert_array_equal(e.value.tokens, want.reshape(2, -1)[:, :5])
    assert pipe.transformer.length == 0, "the KV cache is emptied"
    np.testing.assert_array_equal(pipe.generate_tokens([1, 2], seed=3), want)  # usable, same images


def test_token_cancelled_from_another_thread(pipe):
    token, reached, release = CancelToken(), threading.Event(), threading.Event()
    steps, errors = [], []

    def callback(step, total, tokens):
        steps.append(step)
        if step == 3:
            reached.set()
            release.wait(10)  # the main thread cancels while this step is in progress

    def work():
        try:
            pipe.generate_tokens([4], seed=0, grid=8, callback=callback, cancel=token)
        except GenerationCancelled as e:
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    assert reached.wait(30)
    token.cancel()
    release.set()
    t.join(30)
    assert errors and errors[0].step == 3 and steps == [1, 2, 3], "stopped before the next transformer call"
    np.testing.assert_array_equal(pipe.generate_tokens([4], seed=0, grid=8),
                                  Pipeline.load(pipe.manifest.root, providers="cpu").generate_tokens([4], seed=0, grid=8))


def test_interrupt_stops_every_running_generation_and_not_later_ones(pipe):
    reached, release = threading.Barrier(3), threading.Event()
    outcome = {}

    def work(i):
        first = []

        def callback(step, total, tokens):
            if step >= 2 and not first:  # parallel decoding decides several cells per step
                first.append(step)
                reached.wait(30)
                release.wait(30)
        try:
            pipe.generate_tokens([i], seed=i, parallel_window=1 if i else None, callback=callback)
            outcome[i] = "finished"
        except GenerationCancelled as e:
            outcome[i] = e.step == first[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    reached.wait(30)
    assert pipe.interrupt() == 2
    release.set()
    for t in threads:
        t.join(30)
    assert outcome == {0: True, 1: True}, "each stopped at the step it was in"
    assert pipe.generate_tokens([0], seed=0).shape == (1, 4, 4)  # later calls run


def test_edit_can_be_cancelled(pipe):
    picture = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(GenerationCancelled):
        pipe.inpaint(picture, np.ones((4, 4), bool), 3, callback=lambda s, t, tok: s < 2)
    assert len(pipe.inpaint(picture, np.ones((4, 4), bool), 3)) == 1


def test_stream_yields_partial_tokens_and_frames(pipe):
    want = pipe.generate([3, 5], seed=2, return_result=True)
    steps = list(pipe.stream([3, 5], seed=2, preview_every="row"))
    assert [s.step for s in steps] == list(range(1, 17)) and all(s.total == 16 for s in steps)
    for s in steps[:-1]:
        np.testing.assert_array_equal(s.tokens, want.tokens.reshape(2, -1)[:, :s.step])
        assert s.result is None
    assert [s.step for s in steps if s.images] == [4, 8, 12, 16]
    last = steps[-1]
    assert last.done and last.result.calls == 16
    np.testing.assert_array_equal(last.result.tokens, want.tokens)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(last.images, want.images))


def test_leaving_a_stream_early_leaves_the_pipeline_usable(pipe):
    want = pipe.generate_tokens([6], seed=1)
    stream = pipe.stream([6], seed=1)
    for step in stream:
        if step.step == 3:
            break
    stream.close()
    assert pipe.transformer.length == 0
    np.testing.assert_array_equal(pipe.generate_tokens([6], seed=1), want)
    token = CancelToken()
    with pytest.raises(GenerationCancelled):
        for step in pipe.stream([6], seed=1, cancel=token):
            if step.step == 2:
                token.cancel()
    np.testing.assert_array_equal(pipe.generate_tokens([6], seed=1), want)
