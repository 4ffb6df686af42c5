"""Speculative Jacobi decoding: the model's distribution kept, greedy = sequential, per-seed images,
fewer calls, the KV cache rolled back to the decided cells, bad options as one-line errors."""
from __future__ import annotations

import numpy as np
import pytest

from tessera.runtime import InvalidInputError
from tessera.runtime.decoders import DecoderRequest, cell_positions, run_decoder
from tessera.runtime.jacobi import JacobiDecoder, probabilities, verify
from tessera.runtime.sampling import ImageStreams, SamplingConfig, apply_guidance

SAMPLED = dict(guidance_scale=2.0, temperature=1.0, top_k=3)  # few outcomes per cell: counts that say something
GRID = (2, 3)  # a small grid keeps the draws fast
DRAWS = 2000


def chi2_limit(df: int, z: float = 3.29) -> float:
    """Wilson-Hilferty: the chi-square value exceeded with probability ~5e-4 (z = 3.29)."""
    return df * (1 - 2 / (9 * df) + z * np.sqrt(2 / (9 * df))) ** 3


def exact_first_two(pipe, label: int) -> np.ndarray:
    """The model's joint distribution of cells 0 and 1 under SAMPLED, from the transformer directly."""
    layout, cfg = pipe.layout, SamplingConfig(1.0, SAMPLED["top_k"], 1.0)
    rows = np.array([[layout.class_ids(np.array([label]))[0]], [layout.class_ids(np.array([layout.null_class_id]))[0]]])
    pos0 = int(cell_positions(layout, GRID)[0])
    v = layout.vocab_size
    joint = np.zeros((v, v))
    with pipe.model.runners.borrow() as runner:
        runner.start(2, 3)
        p0 = probabilities(apply_guidance(runner(rows, np.zeros((2, 1), np.int64), np.ones((2, 1, 1), bool))[:, 0],
                                          1, SAMPLED["guidance_scale"]), cfg)[0]
        for x0 in np.flatnonzero(p0):
            runner.start(2, 3)
            ids = np.concatenate([rows, np.full((2, 1), x0)], axis=1)
            pos = np.array([[0, pos0]] * 2)
            logits = runner(ids, pos, np.tril(np.ones((2, 2), bool))[None].repeat(2, 0))[:, 1]
            joint[x0] = p0[x0] * probabilities(apply_guidance(logits, 1, SAMPLED["guidance_scale"]), cfg)[0]
    return joint


def chi2(counts: np.ndarray, expected: np.ndarray) -> tuple[float, int]:
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a token the model gives probability 0 was drawn"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()), int(keep.sum()) - 1


@pytest.fixture(scope="module")
def pipe(portable_dir):
    """The portable graph: a call's queries in one session run (fast at thousands of rows)."""
    from tessera.runtime import Pipeline

    return Pipeline.load(portable_dir, providers="cpu")


@pytest.fixture(scope="module")
def draws(pipe):
    """DRAWS images of one class, sequential and Jacobi (window 2), one batch each, other seeds."""
    labels = [4] * DRAWS
    seq = pipe.run(labels, seed=0, grid=GRID, decode_images=False, **SAMPLED)
    jac = pipe.run(labels, seed=10 ** 6, grid=GRID, decoder="jacobi", jacobi_window=2, decode_images=False, **SAMPLED)
    return seq, jac


def test_first_two_cells_follow_the_model(pipe, draws):
    """The joint of cells 0 and 1 (the first call's draft, accepted or corrected, and the next) against
    the model's exact probabilities; sequential sampling passes the same check."""
    joint = exact_first_two(pipe, 4)
    v = joint.shape[0]
    for result in draws:
        t = result.tokens.reshape(DRAWS, -1)
        counts = np.bincount(t[:, 0] * v + t[:, 1], minlength=v * v).reshape(v, v).astype(float)
        stat, df = chi2(counts, joint * DRAWS)
        assert stat < chi2_limit(df), (result.decoder, stat, df)


@pytest.mark.parametrize("cell", [3, 5])
def test_later_cells_match_sequential_sampling(draws, cell):
    """Cells decided from Jacobi-refreshed drafts: the same marginal as sequential sampling (two-sample
    chi-square), and acceptance happened (otherwise this checks nothing new)."""
    seq, jac = (r.tokens.reshape(DRAWS, -1)[:, cell] for r in draws)
    a, b = np.bincount(seq, minlength=64).astype(float), np.bincount(jac, minlength=64).astype(float)
    keep = (a + b) > 0
    a, b = a[keep], b[keep]
    expected = (a + b) / 2
    stat = float((((a - expected) ** 2 + (b - expected) ** 2) / expected).sum())
    assert stat < chi2_limit(int(keep.sum()) - 1), stat
    assert draws[1].stats["drafts_accepted"] > DRAWS // 10


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0, top_k=1)])
@pytest.mark.parametrize("window", [1, 4, 16])
def test_greedy_is_sequential_decoding(any_pipe, sampling, window):
    seq = any_pipe.run([1, 6, 9], guidance_scale=2.0, seed=3, decode_images=False, **sampling)
    jac = any_pipe.run([1, 6, 9], guidance_scale=2.0, seed=3, decoder="jacobi", jacobi_window=window,
                       decode_images=False, **sampling)
    np.testing.assert_array_equal(jac.tokens, seq.tokens)
    assert jac.decoder == "jacobi" and jac.calls < seq.calls == 16


def test_greedy_on_the_batched_form(batched_dir):
    """The 1.32 form runs a call's queries in one session run: the same tokens."""
    from tessera.runtime import Pipeline

    pipe = Pipeline.load(batched_dir, providers="cpu")
    seq = pipe.run([2, 7], temperature=0.0, guidance_scale=2.0, decode_images=False)
    jac = pipe.run([2, 7], temperature=0.0, guidance_scale=2.0, decoder="jacobi", decode_images=False)
    np.testing.assert_array_equal(jac.tokens, seq.tokens)


def test_an_image_depends_on_its_seed_only(any_pipe):
    """Same seed, same image: twice, alone or in a batch of other classes and seeds."""
    opts = dict(decoder="jacobi", jacobi_window=4, decode_images=False, **SAMPLED)
    batch = any_pipe.run([3, 8, 3, 0], seed=[11, 12, 13, 14], **opts)
    np.testing.assert_array_equal(batch.tokens, any_pipe.run([3, 8, 3, 0], seed=[11, 12, 13, 14], **opts).tokens)
    for i, (label, seed) in enumerate([(3, 11), (8, 12), (0, 14)]):
        alone = any_pipe.run([label], seed=seed, **opts)
        np.testing.assert_array_equal(alone.tokens[0], batch.tokens[[0, 1, 3][i]])


def test_fewer_calls_and_the_cache_holds_the_decided_cells(tiny_pipe):
    """After each call the cache holds the class token and every decided cell but the newest (one
    image), and each call decides at least one cell."""
    layout, n = tiny_pipe.layout, 16
    request = DecoderRequest(np.array([5]), (4, 4), 2.0, SamplingConfig(1.0, 3, 1.0), ImageStreams([7], n))
    seen = []
    with tiny_pipe.model.runners.borrow() as runner:
        def check(step, total, tokens):
            seen.append(step)
            assert runner.length == step and (tokens[0, :step] >= 0).all() and (tokens[0, step:] == -1).all()
        result = run_decoder(JacobiDecoder(4), runner, layout, request, check)
    assert seen == sorted(set(seen)) and seen[-1] == n
    assert result.calls == len(seen) < n and result.stats["drafts_accepted"] > 0
    assert result.stats["drafts_accepted"] <= result.stats["drafts_verified"]


def test_verify_accepts_up_to_the_first_rejection():
    q = np.eye(4)[[1, 2, 3]]  # drafts 1, 2, 3, each drawn from a one-hot q
    p = np.eye(4)[[1, 2, 0, 3]]  # the model agrees on the first two only
    cells, accepted = verify(np.array([1, 2, 3]), q, p, np.zeros(3), 0.5, bonus=True)
    assert cells.tolist() == [1, 2, 0] and accepted == 2
    cells, accepted = verify(np.array([1, 2]), q[:2], p[:3], np.zeros(2), 0.5, bonus=True)
    assert cells.tolist() == [1, 2, 0] and accepted == 2  # all pass: the bonus from p[2]


@pytest.mark.parametrize("options, message", [
    (dict(decoder="jacobi", jacobi_window=0), "jacobi_window must be >= 1"),
    (dict(jacobi_window=2.5), "jacobi_window must be >= 1"),
    (dict(decoder="zipar"), "decoder must be one of sequential, parallel, jacobi"),
    (dict(decoder="jacobi", parallel_window=2), "parallel_window is an option of the parallel decoder"),
    (dict(decoder="sequential", jacobi_window=2), "jacobi_window is an option of the jacobi decoder"),
    (dict(decoder="parallel"), "decoder 'parallel' needs parallel_window"),
])
def test_bad_options_are_one_line_errors(tiny_pipe, options, message):
    with pytest.raises(InvalidInputError, match=message) as e:
        tiny_pipe.run([1], decode_images=False, **options)
    assert "\n" not in str(e.value)


def test_cli_bad_window_is_one_error_line(tiny_dir, capsys, tmp_path):
    from tessera.cli.main import main

    assert main(["generate", "3", "--model", str(tiny_dir), "--jacobi-window", "0", "-q",
                 "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tessera: error: jacobi_window must be >= 1")
    assert main(["generate", "3", "--model", str(tiny_dir), "--decoder", "jacobi", "--jacobi-window", "3", "-q",
                 "-o", str(tmp_path / "y.png")]) == 0 and (tmp_path / "y.png").is_file()


def test_known_cells_are_refused():
    request = DecoderRequest(np.array([1]), (2, 2), 1.0, SamplingConfig(), ImageStreams([0], 4),
                            known=(np.zeros((1, 4), np.int64), np.ones((1, 4), bool)))
    with pytest.raises(InvalidInputError, match="takes no known cells"):
        next(JacobiDecoder(2).steps(None, None, request, JacobiDecoder(2).start(request)))
