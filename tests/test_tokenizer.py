"""Tokenizer graphs vs PyTorch: decode (codes -> image) and encode (image -> codes), any batch and grid."""
from __future__ import annotations

import numpy as np
import torch


def test_decode_matches_pytorch(tiny_models, tiny_pipe):
    _, vq = tiny_models
    codes = np.random.default_rng(0).integers(0, vq.cfg.codebook_size, (3, 5, 6))
    with torch.no_grad():
        ref = vq.decode_codes(torch.from_numpy(codes)).numpy()
    got = tiny_pipe.tokenizer.decode(codes)
    assert got.shape == (3, 3, 20, 24)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_encode_matches_pytorch_and_round_trips(tiny_models, tiny_pipe):
    _, vq = tiny_models
    images = np.random.default_rng(1).uniform(-1, 1, (2, 3, 16, 24)).astype(np.float32)
    with torch.no_grad():
        ref = vq.encode_codes(torch.from_numpy(images)).numpy()
    got = tiny_pipe.tokenizer.encode(images)
    assert got.shape == (2, 4, 6)
    np.testing.assert_array_equal(got, ref)


def test_bad_codes_and_images_are_rejected(tiny_pipe):
    import pytest

    from tessera.runtime import InvalidInputError

    with pytest.raises(InvalidInputError, match="codes must lie in 0..63"):
        tiny_pipe.tokenizer.decode(np.full((1, 4, 4), 64))
    with pytest.raises(InvalidInputError, match="multiples of 4"):
        tiny_pipe.tokenizer.encode(np.zeros((1, 3, 10, 16), np.float32))
