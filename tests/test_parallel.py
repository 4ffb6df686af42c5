"""Parallel (ZipAR-style) decoding and grids larger than trained."""
from __future__ import annotations

import numpy as np
import pytest

from tessera.runtime import InvalidInputError


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_window_as_wide_as_the_image_is_sequential_decoding(any_pipe, guidance):
    seq = any_pipe.run([1, 6], guidance_scale=guidance, seed=4, decode_images=False)
    assert seq.calls == 16 and seq.decoder == "sequential"
    par = any_pipe.run([1, 6], guidance_scale=guidance, seed=4, parallel_window=4, decode_images=False)
    np.testing.assert_array_equal(par.tokens, seq.tokens)
    assert par.calls == 16 and par.decoder == "parallel"


@pytest.mark.parametrize("window, calls", [(1, 7), (2, 10), (3, 13)])
def test_small_windows_need_fewer_calls(tiny_pipe, window, calls):
    """A 4x4 grid: row r starts `window` tokens behind row r-1 -> 4 + 3 * window calls."""
    result = tiny_pipe.generate([2, 3, 4], seed=1, parallel_window=window, return_result=True)
    tokens = result.tokens
    assert result.calls == calls and len(result.images) == 3
    assert set(result.timings) == {"prefill", "decode", "images"}
    assert tokens.shape == (3, 4, 4) and tokens.min() >= 0 and tokens.max() < tiny_pipe.layout.vocab_size
    np.testing.assert_array_equal(tokens, tiny_pipe.generate_tokens([2, 3, 4], seed=1, parallel_window=window))


def test_both_graph_kinds_agree_under_parallel_decoding(tiny_dir, portable_dir):
    """The fused graph is causal in call order, the portable one follows the mask alone: with
    entries in raster order they must give the same tokens."""
    from tessera.runtime import Pipeline

    a = Pipeline.load(tiny_dir, providers="cpu").generate_tokens([0, 9], seed=2, parallel_window=1)
    b = Pipeline.load(portable_dir, providers="cpu").generate_tokens([0, 9], seed=2, parallel_window=1)
    np.testing.assert_array_equal(a, b)


def test_parallel_callback_counts_every_cell(tiny_pipe):
    seen = []
    r = tiny_pipe.run([5], seed=0, parallel_window=2, callback=lambda s, n, t: seen.append(s), decode_images=False)
    assert seen[-1] == 16 and seen == sorted(seen) and len(seen) == r.calls


def test_larger_grid_than_trained(tiny_pipe):
    images = tiny_pipe.generate([3], grid=6, seed=0)
    assert images[0].size == (24, 24)
    tokens = tiny_pipe.generate_tokens([3], grid=(5, 7), seed=0, parallel_window=2)
    assert tokens.shape == (1, 5, 7)
    with pytest.raises(InvalidInputError, match="outside what this model's rotary table covers"):
        tiny_pipe.generate_tokens([3], grid=9)
    with pytest.raises(InvalidInputError, match="parallel_window must be >= 1"):
        tiny_pipe.generate_tokens([3], parallel_window=0)


@pytest.mark.parametrize("grid", [5, 8])
@pytest.mark.parametrize("window", [1, 2, 3])
def test_parallel_decoding_fits_the_rotary_table_at_every_grid(any_pipe, grid, window):
    """The cache holds the class token and the cells only (proxies are dropped after each call): the
    largest grid (rope_grid) fits the fused graph's cos/sin cache at every window."""
    assert any_pipe.layout.rope_grid == 8
    r = any_pipe.run([1, 2], grid=grid, parallel_window=window, seed=0, decode_images=False)
    assert r.tokens.shape == (2, grid, grid) and r.tokens.min() >= 0
    assert r.calls == grid + (grid - 1) * window


def _default_available():
    from tessera.models import default_model_dir

    return (default_model_dir() / "tessera.json").is_file()


@pytest.mark.skipif(not _default_available(), reason="the shipped default model is not built")
def test_shipped_model_largest_grid_with_every_window():
    """`--grid-size 14 --parallel-window 2` crashed in GroupQueryAttention (cos_cache shorter than
    the cache with its proxies)."""
    from tessera.runtime import Pipeline

    pipe = Pipeline.load(providers="cpu")
    rope = pipe.layout.rope_grid
    for window in (1, 2, 3):
        r = pipe.run([3], grid=rope, parallel_window=window, seed=1)
        assert r.tokens.shape == (1, rope, rope) and r.calls == rope + (rope - 1) * window
        assert r.images[0].size == (rope * 4, rope * 4)


def test_cli_parallel_and_grid(tiny_dir, tmp_path):
    from PIL import Image

    from tessera.cli.main import main

    out = tmp_path / "big.png"
    assert main(["generate", "2", "--model", str(tiny_dir), "--parallel-window", "2", "--grid-size", "6",
                 "--out", str(out), "-q"]) == 0
    assert Image.open(out).size == (24, 24)


def test_tiled_decode(tiny_pipe):
    tok = tiny_pipe.tokenizer
    codes = np.random.default_rng(0).integers(0, tok.codebook_size, (2, 10, 13))
    full = tok.decode(codes)
    tiled = tok.decode_tiled(codes, tile=6, overlap=2)
    assert tiled.shape == full.shape == (2, 3, 40, 52)
    # GroupNorm and attention see one tile, not the whole grid, so tiles are an approximation;
    # still far closer to the full decode than an image of other codes is.
    other = tok.decode(np.roll(codes, 3, axis=2))
    assert np.abs(tiled - full).mean() < 0.8 * np.abs(other - full).mean()
    np.testing.assert_array_equal(tok.decode_tiled(codes[:, :6, :6], tile=6), tok.decode(codes[:, :6, :6]))
    with pytest.raises(InvalidInputError, match="overlap < tile"):
        tok.decode_tiled(codes, tile=4, overlap=4)


def test_tile_ownership_covers_every_token_once():
    from tessera.runtime.tokenizer import _owned, _tile_starts

    for size, tile, overlap in [(10, 6, 2), (13, 6, 2), (31, 8, 3), (7, 7, 1), (9, 4, 0)]:
        starts = _tile_starts(size, tile, overlap)
        spans = [_owned(starts, i, min(tile, size - s), size) for i, s in enumerate(starts)]
        assert spans[0][0] == 0 and spans[-1][1] == size
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert all(s <= lo and hi <= s + tile for (lo, hi), s in zip(spans, starts))
