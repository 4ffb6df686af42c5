"""A seed names an image: image i of a call is the image of seed + i alone, in a batch or in a sheet."""
from __future__ import annotations

import numpy as np
import pytest

from tessera.runtime import GenerationConfig, InvalidInputError


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_an_image_is_the_same_alone_and_in_a_batch(any_pipe, guidance):
    p = any_pipe
    for s in (0, 5, 123):
        pair = p.generate_tokens([7, 3], seed=s, guidance_scale=guidance)
        np.testing.assert_array_equal(p.generate_tokens([7], seed=s, guidance_scale=guidance)[0], pair[0])
        np.testing.assert_array_equal(p.generate_tokens([3], seed=s + 1, guidance_scale=guidance)[0], pair[1])
        assert not np.array_equal(pair[0], p.generate_tokens([7], seed=s + 1, guidance_scale=guidance)[0])


def test_num_images_per_class_and_seed_lists(tiny_pipe):
    p = tiny_pipe
    sheet = p.generate_tokens([2, 5], seed=10, num_images_per_class=3)  # images 2,2,2,5,5,5 -> seeds 10..15
    for i, label in enumerate([2, 2, 2, 5, 5, 5]):
        np.testing.assert_array_equal(p.generate_tokens([label], seed=10 + i)[0], sheet[i])
    listed = p.generate_tokens([5, 2], seed=[14, 11])
    np.testing.assert_array_equal(listed, sheet[[4, 1]])
    r = p.run([2, 5], GenerationConfig(seed=10, num_images_per_class=3), decode_images=False)
    assert r.seeds == tuple(range(10, 16))
    with pytest.raises(InvalidInputError, match="seed lists 1 seeds but the call makes 2 image"):
        p.generate_tokens([1, 2], seed=[3])


def test_parallel_decoding_names_images_by_seed_too(tiny_pipe):
    pair = tiny_pipe.generate_tokens([1, 8], seed=4, parallel_window=2)
    np.testing.assert_array_equal(tiny_pipe.generate_tokens([8], seed=5, parallel_window=2)[0], pair[1])


def test_images_follow_their_tokens(tiny_pipe):
    sheet = tiny_pipe.generate([4, 6], seed=2)
    alone = tiny_pipe.generate([6], seed=3)
    assert np.array_equal(np.asarray(sheet[1]), np.asarray(alone[0]))


def test_edit_draw_r_uses_seed_plus_r(tiny_pipe):
    mask = np.zeros((4, 4), bool)
    mask[2:] = True  # nothing kept after the hole: one draw per image
    tokens = np.random.default_rng(0).integers(0, tiny_pipe.layout.vocab_size, (4, 4))
    two = tiny_pipe.edit_tokens(tokens, mask, 3, num_images=2, seed=8)
    one = tiny_pipe.edit_tokens(tokens, mask, 3, num_images=1, seed=9)
    np.testing.assert_array_equal(two.tokens[1], one.tokens[0])


def test_reference_loop_takes_seed_lists(tiny_models, tiny_pipe):
    from tessera.export.reference import generate_tokens

    gpt, _ = tiny_models
    ref = generate_tokens(gpt, [3, 1], 2.0, tiny_pipe.sampling_options(guidance_scale=2.0)[1], seed=[40, 7])
    np.testing.assert_array_equal(ref, tiny_pipe.generate_tokens([3, 1], guidance_scale=2.0, seed=[40, 7]))
    np.testing.assert_array_equal(ref[1], tiny_pipe.generate_tokens([1], guidance_scale=2.0, seed=7)[0])
