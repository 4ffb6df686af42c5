"""The generation core on its own (numpy only, no onnxruntime): the decoder registry, guidance decided
once on the request, one guided-sampling function, and the driver running every decoder on a
stand-in transformer whose logits are exact for every call shape, so the decoders must agree."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tessera.runtime.config import DECODERS, GenerationConfig
from tessera.runtime.decoders import DecoderRequest, run_decoder
from tessera.runtime.results import CancelToken, GenerationCancelled
from tessera.runtime.sampling import ImageStreams, SamplingConfig, apply_guidance, sample, sample_guided
from tessera.runtime.spec import TokenLayout

VOCAB, CLASSES, GRID = 12, 3, (3, 4)
RASTER = TokenLayout(VOCAB, VOCAB, CLASSES, 4)
ANY_ORDER = TokenLayout(VOCAB, VOCAB, CLASSES, 4, query_token_id=VOCAB + CLASSES + 1)


class BigramRunner:
    """A numpy stand-in for `TransformerRunner`: an entry's logits depend on its token and position
    only, so they are the same whatever the call carries (a causal model, exactly)."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.vocab_size = VOCAB
        self.tokens = (rng.normal(size=(VOCAB + CLASSES + 2, VOCAB)) * 3).astype(np.float32)
        self.positions = rng.normal(size=(1 + 4 * 4, VOCAB)).astype(np.float32)
        self.length = self.capacity = self.token_rows = 0

    def start(self, batch: int, capacity: int) -> None:
        self.length, self.capacity, self.token_rows = 0, capacity, 0

    def __call__(self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray) -> np.ndarray:
        assert mask.shape == (*ids.shape, self.length + ids.shape[1]) and self.length + ids.shape[1] <= self.capacity
        self.length += ids.shape[1]
        self.token_rows += ids.size
        return self.tokens[ids] + self.positions[positions]

    def truncate(self, length: int) -> None:
        self.length = length


def _run(name: str, layout=RASTER, guidance=2.0, temperature=1.0, known=None, callback=None, cancel=None, **option):
    labels = np.array([0, 2, 1])
    decoder = DECODERS[name](*option.values())
    request = DecoderRequest(labels, GRID, guidance, SamplingConfig(temperature, 0, 1.0),
                             ImageStreams([5, 6, 7], GRID[0] * GRID[1]), known)
    return run_decoder(decoder, BigramRunner(), layout, request, callback, cancel)


def test_every_registered_decoder_declares_its_name_order_option_and_memory_rule():
    for name, decoder in DECODERS.items():
        assert decoder.name == name and decoder.order in ("raster", "any", "arpg")
        assert decoder.option is None or decoder.option.name in GenerationConfig.FIELDS
        instance = decoder() if decoder.option is None else decoder(2)
        assert instance.queries((16, 16)) >= 1


def test_guidance_is_decided_once_when_the_request_is_built():
    off = DecoderRequest(np.array([1, 2]), GRID, 1.0, SamplingConfig(), None)
    on = DecoderRequest(np.array([1, 2]), GRID, 2.5, SamplingConfig(), None)
    assert off.guidance is None and off.rows(RASTER).tolist() == [1, 2]
    assert on.guidance == 2.5 and on.rows(RASTER).tolist() == [1, 2, CLASSES, CLASSES]


def test_sample_guided_is_guidance_then_one_draw_per_image_and_query():
    logits = np.random.default_rng(1).normal(size=(4, 3, VOCAB)).astype(np.float32)  # 2 images, guided
    cfg = SamplingConfig(1.0, 5, 0.9)
    want = sample(np.ascontiguousarray(apply_guidance(logits, 2, 3.0).transpose(1, 0, 2)).reshape(6, VOCAB), cfg,
                  ImageStreams([3, 4], 3))
    np.testing.assert_array_equal(sample_guided(logits, 2, 3.0, cfg, ImageStreams([3, 4], 3)), want)
    one = sample_guided(logits[:2, 0], 2, None, cfg, ImageStreams([3, 4], 1))  # unguided, one query per row
    np.testing.assert_array_equal(one, sample(logits[:2, 0], cfg, ImageStreams([3, 4], 1)))


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_the_raster_decoders_agree_where_they_are_exact(guidance):
    seq = _run("sequential", guidance=guidance)
    assert seq.calls == 12 and seq.stats["token_rows"] > 0
    # rows a full row apart: sequential decoding, token for token
    np.testing.assert_array_equal(_run("parallel", guidance=guidance, window=GRID[1]).tokens, seq.tokens)
    greedy = _run("sequential", guidance=guidance, temperature=0.0).tokens
    np.testing.assert_array_equal(_run("jacobi", guidance=guidance, temperature=0.0, window=3).tokens, greedy)


def test_the_any_order_decoder_keeps_known_cells_and_takes_steps_calls():
    n = GRID[0] * GRID[1]
    tokens = np.tile(np.arange(n) % VOCAB, (3, 1))
    mask = np.tile(np.arange(n) < 5, (3, 1))
    result = _run("anyorder", layout=ANY_ORDER, known=(tokens, mask), steps=3)
    assert result.calls == 3 and result.tokens.min() >= 0
    np.testing.assert_array_equal(result.tokens.reshape(3, n)[:, :5], tokens[:, :5])


def test_the_driver_stops_on_a_false_callback_and_on_cancel():
    with pytest.raises(GenerationCancelled) as stopped:
        _run("sequential", callback=lambda step, total, tokens: step < 4)
    assert stopped.value.step == 4 and stopped.value.tokens.shape == (3, 4)
    token = CancelToken()
    with pytest.raises(GenerationCancelled):
        _run("parallel", callback=lambda *a: token.cancel(), cancel=token, window=1)


def test_the_core_runs_without_onnxruntime():
    code = ("import sys, runpy; sys.modules['onnxruntime'] = None; "
            f"m = runpy.run_path({__file__!r}); m['test_the_raster_decoders_agree_where_they_are_exact'](2.0); "
            "m['test_the_any_order_decoder_keeps_known_cells_and_takes_steps_calls'](); "
            "print('onnxruntime' in sys.modules and sys.modules['onnxruntime'] is not None)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
