"""The runtime's loop gives exactly the PyTorch reference loop's tokens for a fixed seed."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tessera.runtime.sampling import SamplingConfig


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("sampling", [SamplingConfig(1.0, 0, 1.0), SamplingConfig(0.9, 8, 1.0),
                                      SamplingConfig(1.0, 0, 0.8), SamplingConfig(0.0, 0, 1.0)],
                         ids=["plain", "top_k", "top_p", "greedy"])
def test_runtime_tokens_equal_pytorch_reference(tiny_models, any_pipe, guidance, sampling):
    from tessera.export.reference import generate_tokens

    gpt, _ = tiny_models
    labels = [0, 3, 7, 9]
    ref = generate_tokens(gpt, labels, guidance, sampling, seed=11)
    got = any_pipe.generate_tokens(labels, guidance_scale=guidance, temperature=sampling.temperature,
                                    top_k=sampling.top_k, top_p=sampling.top_p, seed=11)
    assert got.shape == (4, gpt.cfg.grid, gpt.cfg.grid)
    np.testing.assert_array_equal(got, ref)


def test_graph_kinds_are_recorded(tiny_pipe, portable_dir):
    from tessera.runtime import Pipeline

    portable = Pipeline.load(portable_dir, providers="cpu")
    graphs = {p.manifest.spec.graph("transformer").kind: (p.manifest.spec.graph("transformer").kv_cache,
                                                           p.transformer.shared) for p in (tiny_pipe, portable)}
    assert graphs == {"fused": ("shared-buffer", True), "portable": ("concat", False)}


def test_result_reports_tokens_calls_and_timings(tiny_pipe):
    r = tiny_pipe.generate([3, 4], seed=2, return_result=True)
    np.testing.assert_array_equal(r.tokens, tiny_pipe.generate_tokens([3, 4], seed=2))
    assert r.calls == 16 and r.seeds == (2, 3) and r.labels.tolist() == [3, 4] and r.decoder == "sequential"
    assert r.stats["token_rows"] == 4 * 16  # 2 images x 2 guidance rows, one token per call (class + 15 cells)
    assert len(r.images) == 2 and all(r.timings[k] > 0 for k in ("prefill", "decode", "images"))
    assert r.config.guidance_scale == 2.0 and r.config.top_k == 16  # the manifest's defaults, resolved


def test_runner_rejects_overflow_and_truncates(tiny_pipe):
    from tessera.runtime import InvalidInputError

    runner = tiny_pipe.transformer
    runner.start(1, 2)
    ones = lambda t: np.ones((1, 1, t), bool)  # noqa: E731
    runner(np.array([[70]]), np.zeros((1, 1), np.int64), ones(1))
    runner(np.array([[3]]), np.ones((1, 1), np.int64), ones(2))
    with pytest.raises(InvalidInputError, match="KV cache full"):
        runner(np.array([[3]]), np.ones((1, 1), np.int64), ones(3))
    runner.truncate(1)
    assert runner.length == 1


def test_cache_reused_across_generations_gives_a_fresh_runners_tokens(tiny_dir):
    """The second generation runs over the first one's stale cache entries: none may be read."""
    from tessera.runtime import InvalidInputError, Pipeline

    pipe, fresh = Pipeline.load(tiny_dir, providers="cpu"), Pipeline.load(tiny_dir, providers="cpu")
    pipe.generate_tokens([1, 2, 3, 4], guidance_scale=3.0, seed=0)
    kv = pipe.transformer.kv[0]
    got = pipe.generate_tokens([5, 6, 7, 8], guidance_scale=3.0, seed=9)
    assert pipe.transformer.kv[0] is kv, "same batch and capacity: the cache is reused"
    np.testing.assert_array_equal(got, fresh.generate_tokens([5, 6, 7, 8], guidance_scale=3.0, seed=9))
    one = pipe.generate_tokens([5], guidance_scale=3.0, seed=9)  # fewer rows: the first rows of the cache
    host = pipe.transformer._host_kv[0]
    assert pipe.transformer.kv[0].shape()[0] == 2 and host.shape[0] == 8
    np.testing.assert_array_equal(one, fresh.generate_tokens([5], guidance_scale=3.0, seed=9))
    pipe.generate_tokens([1, 2, 3, 4, 5], guidance_scale=3.0, seed=9)  # more rows: a larger cache
    assert pipe.transformer._host_kv[0].shape[0] == 10
    pipe.transformer.release()
    assert pipe.transformer.kv == []
    with pytest.raises(InvalidInputError, match="call start"):
        pipe.transformer(np.zeros((2, 1), np.int64), np.zeros((2, 1), np.int64), np.ones((2, 1, 1), bool))
    np.testing.assert_array_equal(got, pipe.generate_tokens([5, 6, 7, 8], guidance_scale=3.0, seed=9))


def test_guidance_changes_tokens(tiny_pipe):
    a = tiny_pipe.generate_tokens([1, 2, 3], guidance_scale=1.0, seed=5)
    b = tiny_pipe.generate_tokens([1, 2, 3], guidance_scale=4.0, seed=5)
    assert not np.array_equal(a, b)


def test_seed_determinism(tiny_pipe):
    a = tiny_pipe.generate_tokens([4, 4], seed=1)
    assert np.array_equal(a, tiny_pipe.generate_tokens([4, 4], seed=1))
    assert not np.array_equal(a, tiny_pipe.generate_tokens([4, 4], seed=2))


def test_generate_returns_images_and_names_resolve(tiny_pipe):
    images = tiny_pipe.generate(["three", 7], num_images_per_class=2, seed=0)
    assert len(images) == 4
    assert all(isinstance(im, Image.Image) and im.size == (16, 16) and im.mode == "RGB" for im in images)
    t_names = tiny_pipe.generate_tokens(["three", "SEVEN"], seed=0)
    t_ids = tiny_pipe.generate_tokens([3, 7], seed=0)
    np.testing.assert_array_equal(t_names, t_ids)


def test_callback_sees_every_token(tiny_pipe):
    seen = []
    tokens = tiny_pipe.generate_tokens([5], seed=0, callback=lambda s, n, t: seen.append((s, n, t[:, -1].copy())))
    n = tokens.size
    assert [s for s, _, _ in seen] == list(range(1, n + 1))
    np.testing.assert_array_equal(np.concatenate([t for *_, t in seen]), tokens.reshape(-1))


def test_manifest_defaults_are_used(tiny_pipe):
    """The tiny model's manifest sets guidance 2.0 and top_k 16."""
    a = tiny_pipe.generate_tokens([2], seed=3)
    b = tiny_pipe.generate_tokens([2], seed=3, guidance_scale=2.0, top_k=16)
    np.testing.assert_array_equal(a, b)


def test_known_cells_are_kept(tiny_pipe):
    from tessera.runtime.decoders import generate_tokens

    p = tiny_pipe
    n = p.grid[0] * p.grid[1]
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, p.layout.vocab_size, (2, n))
    mask = np.zeros((2, n), bool)
    mask[0, [1, 5, 6, 11]] = True
    mask[1, 8:] = True
    g, sampling = p.sampling_options()
    out = generate_tokens(p.transformer, p.layout, p.grid, np.array([3, 4]), g, sampling, 0,
                          known=(tokens, mask)).reshape(2, n)
    np.testing.assert_array_equal(out[mask], tokens[mask])


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_known_prefix_is_prefilled_exactly(tiny_models, any_pipe, guidance):
    """All cells but the last known: greedy decoding must pick PyTorch's argmax for the last one."""
    import torch

    from tessera.runtime.decoders import generate_tokens

    gpt, _ = tiny_models
    p = any_pipe
    n = p.grid[0] * p.grid[1]
    labels = np.array([2, 7])
    tokens = np.random.default_rng(1).integers(0, p.layout.vocab_size, (2, n))
    mask = np.ones((2, n), bool)
    mask[:, -1] = False
    out = generate_tokens(p.transformer, p.layout, p.grid, labels, guidance, SamplingConfig(0.0), 0,
                          known=(tokens, mask)).reshape(2, n)
    with torch.no_grad():
        lab = torch.from_numpy(labels)
        rows = torch.cat([lab, torch.full_like(lab, gpt.cfg.null_class)]) if guidance > 1 else lab
        toks = torch.from_numpy(tokens).repeat(rows.shape[0] // 2, 1)
        gpt.eval()
        ids = torch.cat([gpt.class_token(rows)[:, None], toks[:, :-1]], 1)
        pos = torch.cat([torch.zeros(1, dtype=torch.long), gpt.cell_position(torch.arange(n - 1))])
        mask_t = torch.ones(rows.shape[0], n, n, dtype=torch.bool).tril()
        lg, _ = gpt(ids, pos.expand(rows.shape[0], -1), mask_t)
        last = lg[:, -1].numpy()
        if guidance > 1:
            last = last[2:] + (last[:2] - last[2:]) * guidance
    np.testing.assert_array_equal(out[:, -1], last.argmax(-1))
    np.testing.assert_array_equal(out[:, :-1], tokens[:, :-1])
