"""The numpy sampler: which tokens can be drawn, with what probability, from which uniform."""
import numpy as np
import pytest

from tessera.runtime.sampling import SamplingConfig, apply_guidance, sample, top_k_mask, top_p_cut


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


def per_row_sample(logits: np.ndarray, cfg: SamplingConfig, u: np.ndarray) -> np.ndarray:
    """The sampler's definition, one row at a time over its candidates only (the form `sample`
    had before it drew every row at once)."""
    v = logits.shape[-1]
    keep = top_k_mask(logits, cfg.top_k) if 0 < cfg.top_k < v else np.ones(logits.shape, bool)
    out = []
    for row, k, x in zip(logits, keep, u):
        cand = np.flatnonzero(k)
        vals = row[cand].astype(np.float64) * (1.0 / max(cfg.temperature, 1e-5))
        if cfg.top_p < 1.0:
            vals = top_p_cut(vals, cfg.top_p)
        cdf = np.cumsum(np.exp(vals - vals.max()))
        out.append(cand[min(int(np.searchsorted(cdf, x * cdf[-1], side="left")), cdf.size - 1)])
    return np.array(out, np.int64)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_all_rows_at_once_draw_exactly_what_one_row_at_a_time_draws(dtype):
    """Coarse logits make ties at the top-k and top-p edges; tiny temperatures drive most of the
    mass to zero. Every draw must match the per-row definition bit for bit."""
    rng = np.random.default_rng(11)
    for case in range(300):
        n, v = int(rng.integers(1, 9)), int(rng.choice([3, 17, 64, 512]))
        logits = rng.standard_normal((n, v)) * rng.choice([0.5, 3.0, 40.0])
        if case % 3 == 0:
            logits = np.round(logits)  # ties
        logits = logits.astype(dtype)
        cfg = SamplingConfig(temperature=float(rng.choice([1.0, 0.7, 1.3, 1e-3])),
                             top_k=int(rng.choice([0, 1, 2, 5, v - 1])), top_p=float(rng.choice([1.0, 0.9, 0.5, 0.1])))
        u = rng.random(n)
        assert (sample(logits, cfg, FixedUniform(*u)) == per_row_sample(logits, cfg, u)).all(), (case, cfg)


def test_a_token_of_zero_mass_is_never_drawn():
    # the first candidate's mass underflows to 0 against the second; u = 0 still draws the second
    logits = np.array([[-2000.0, 0.0, -1.0]], np.float32)
    assert sample(logits, SamplingConfig(), FixedUniform(0.0))[0] == 1
    # top-p cuts token 0 (id order first); u = 0 draws a token inside the nucleus
    logits = np.log(np.array([[0.05, 0.6, 0.35]], np.float32))
    assert sample(logits, SamplingConfig(top_p=0.5), FixedUniform(0.0))[0] == 1


def test_no_rows_draw_no_tokens():
    for cfg in (SamplingConfig(), SamplingConfig(top_k=2), SamplingConfig(top_p=0.5)):
        out = sample(np.zeros((0, 8), np.float32), cfg, np.random.default_rng(0))
        assert out.shape == (0,) and out.dtype == np.int64


def test_rows_drawn_in_blocks_draw_what_one_block_draws(monkeypatch):
    """A batch larger than one block (bounded float64 work arrays) draws the same tokens."""
    import tessera.runtime.sampling as sampling

    logits = np.random.default_rng(5).standard_normal((37, 64)).astype(np.float32)
    for cfg in (SamplingConfig(), SamplingConfig(top_k=5), SamplingConfig(top_p=0.8, temperature=0.7)):
        want = sample(logits, cfg, np.random.default_rng(9))
        monkeypatch.setattr(sampling, "SAMPLE_BLOCK", 64 * 4)  # blocks of 4 rows
        got = sample(logits, cfg, np.random.default_rng(9))
        monkeypatch.undo()
        np.testing.assert_array_equal(got, want)
