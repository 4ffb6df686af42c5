"""The numpy sampler: which tokens can be drawn, with what probability, from which uniform."""
import numpy as np
import pytest

from tessera.runtime.sampling import SamplingConfig, apply_guidance, sample, top_k_mask


class FixedUniform:
    """Stands in for a numpy Generator: `random(n)` returns the given uniforms."""

    def __init__(self, *u: float):
        self.u = np.array(u, np.float64)

    def random(self, n: int) -> np.ndarray:
        assert n == self.u.size
        return self.u


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def test_inverse_cdf_over_candidates_in_token_id_order():
    logits = np.log(np.array([[0.1, 0.4, 0.2, 0.3]], np.float32))
    cdf = np.cumsum([0.1, 0.4, 0.2, 0.3])
    for u, want in [(0.0, 0), (0.05, 0), (cdf[0] + 1e-6, 1), (cdf[1] - 1e-6, 1), (cdf[1] + 1e-6, 2),
                    (cdf[2] + 1e-6, 3), (0.999999, 3)]:
        assert sample(logits, SamplingConfig(), FixedUniform(u))[0] == want, u
    # top-k 2 keeps tokens 1 and 3 (0.4 and 0.3), still in id order: cdf 4/7 then 1
    assert sample(logits, SamplingConfig(top_k=2), FixedUniform(0.5))[0] == 1
    assert sample(logits, SamplingConfig(top_k=2), FixedUniform(0.6))[0] == 3


def test_top_k_keeps_ties_like_llamagen():
    logits = np.array([[1.0, 3.0, 2.0, 2.0, 0.0]], np.float32)
    assert top_k_mask(logits, 2).tolist() == [[False, True, True, True, False]]
    drawn = {int(sample(logits, SamplingConfig(top_k=2), np.random.default_rng(s))[0]) for s in range(200)}
    assert drawn == {1, 2, 3}


def test_top_p_keeps_the_smallest_nucleus():
    probs = np.array([0.5, 0.05, 0.3, 0.15], np.float32)
    logits = np.log(probs)[None]
    drawn = {int(sample(logits, SamplingConfig(top_p=0.7), np.random.default_rng(s))[0]) for s in range(300)}
    assert drawn == {0, 2}  # 0.5 alone is under 0.7; 0.5 + 0.3 crosses it
    drawn = {int(sample(logits, SamplingConfig(top_p=0.3), np.random.default_rng(s))[0]) for s in range(100)}
    assert drawn == {0}  # the most likely token always stays


def test_empirical_frequencies_match_softmax_with_temperature_and_top_k():
    rng = np.random.default_rng(0)
    row = rng.standard_normal(12).astype(np.float32) * 2
    n = 20000
    cfg = SamplingConfig(temperature=0.7, top_k=5)
    toks = sample(np.tile(row, (n, 1)), cfg, np.random.default_rng(1))
    top5 = np.argsort(-row)[:5]
    want = np.zeros(12)
    want[top5] = softmax(row[top5].astype(np.float64) / 0.7)
    freq = np.bincount(toks, minlength=12) / n
    assert set(np.flatnonzero(freq)) <= set(top5)
    assert np.abs(freq - want).max() < 4 * np.sqrt(want.max() / n)


def test_greedy_and_seeded_draws():
    logits = np.random.default_rng(3).standard_normal((3, 50)).astype(np.float32)
    assert (sample(logits, SamplingConfig(temperature=0), None) == logits.argmax(-1)).all()
    a = sample(logits, SamplingConfig(top_k=10, top_p=0.9), np.random.default_rng(7))
    b = sample(logits, SamplingConfig(top_k=10, top_p=0.9), np.random.default_rng(7))
    assert a.dtype == np.int64 and (a == b).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_guidance_into_a_buffer_equals_the_allocating_form(dtype):
    logits = np.random.default_rng(0).standard_normal((6, 64)).astype(dtype)
    want = apply_guidance(logits, 3, 4.0)
    buf = np.empty((3, 64), np.float32)
    got = apply_guidance(logits, 3, 4.0, out=buf)
    assert got is buf and np.array_equal(got, want.astype(np.float32))
