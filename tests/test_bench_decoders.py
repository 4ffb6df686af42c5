"""The decoders benchmark's harness (tessera.bench.decoders): a setting runs what the pipeline runs,
settings are timed in turn, a quality set counts the calls each batch and image needed, the
noise floor cannot be narrower than one run resolves, and an explicit any-order schedule order
reaches the decoder. Tiny models; seconds."""
from __future__ import annotations

import numpy as np
import pytest

from tessera.bench.decoders import (Setting, accuracy_floor, class_labels, sample_set, speed_rows, time_settings,
                                    within_floor)

from conftest import DIGITS


def test_a_setting_runs_what_the_pipeline_runs(tiny_pipe):
    for options in ({}, {"parallel_window": 1}, {"decoder": "jacobi", "jacobi_window": 2}):
        got = Setting("s", tiny_pipe, options).run([1, 2], 5)
        want = tiny_pipe.run([1, 2], seed=5, decode_images=False, **options)
        assert np.array_equal(got.tokens, want.tokens) and got.calls == want.calls and got.images is None


def test_sample_set_counts_calls_per_batch_and_per_image(tiny_pipe):
    labels = class_labels(3, 2)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    seq = sample_set(Setting("sequential", tiny_pipe), labels, seed=7, batch=4)
    cells = int(np.prod(tiny_pipe.grid_size(None)))
    assert seq.images.shape[0] == 6 and seq.images.min() >= -1 and seq.images.max() <= 1
    assert seq.counts["batches"] == 2 and seq.calls_per_batch == cells and seq.calls_per_image == cells
    assert seq.acceptance is None and seq.seconds_per_image > 0
    # the second batch starts at offset 4: seeded seed + 4, as a direct run of those labels
    direct = tiny_pipe.run(labels[4:].tolist(), seed=11, decode_images=False)
    assert np.allclose(seq.images[4:], np.clip(tiny_pipe.tokenizer.decode(direct.tokens), -1, 1), atol=1e-5)
    jac = sample_set(Setting("jacobi", tiny_pipe, {"decoder": "jacobi", "jacobi_window": 4}), labels, seed=7, batch=6)
    assert jac.counts["drafts_verified"] > 0 and 0 <= jac.acceptance <= 1
    assert jac.calls_per_image <= jac.calls_per_batch <= cells  # each image at its own pace; the batch waits


def test_settings_are_timed_in_turn():
    order = []

    class Pipe:
        def run(self, labels, seed, decode_images, **options):
            order.append((options["tag"], seed))
            return type("Result", (), {"calls": 3, "tokens": np.zeros((1, 2, 2))})()

    settings = [Setting("a", Pipe(), {"tag": "a"}), Setting("b", Pipe(), {"tag": "b"})]
    timed = time_settings(settings, 3, lambda r: ([0], 10 * r))
    assert order == [("a", 0), ("b", 0), ("a", 10), ("b", 10), ("a", 20), ("b", 20)]
    assert len(timed["a"].seconds) == 3 and timed["a"].best <= timed["a"].median and timed["b"].calls == 3
    with pytest.raises(ValueError, match="distinct names"):
        time_settings([settings[0], settings[0]], 1, lambda r: ([0], 0))


def test_the_noise_floor_is_never_narrower_than_one_run_resolves():
    mean, spread, se = accuracy_floor([0.9, 0.9, 0.9], images=100)  # seeds that happen to agree
    assert mean == pytest.approx(0.9) and se == pytest.approx(0.03) and spread == se
    mean, spread, se = accuracy_floor([0.80, 0.90, 1.00], images=10_000)
    assert spread == pytest.approx(0.1)
    assert within_floor(0.95, 0.9, 0.03) and not within_floor(0.97, 0.9, 0.03)


def test_speed_rows_read_against_the_first_row():
    rows = [{"calls": 49, "seconds": 1.0}, {"calls": 12.5, "seconds": 0.5}]
    assert speed_rows(rows) == [["49", "1.00x", "1.0000", "1.00x"], ["12.5", "3.92x", "0.5000", "2.00x"]]


def test_an_explicit_schedule_order_reaches_the_any_order_decoder(tmp_path_factory, tiny_models):
    from tessera.export.build import build_gpt
    from tessera.export.config import gpt_preset
    from tessera.export.model_dir import ExportSpec, write_model_dir
    from tessera.runtime import Pipeline

    gpt = build_gpt(gpt_preset("GPT-Tiny", order="any"), None, seed=3)
    for p in gpt.parameters():
        p.data.mul_(10.0) if p.dim() > 1 else None
    spec = ExportSpec(name="tiny-anyorder", class_names=DIGITS, include_weights=True, graph="fused",
                      generation_defaults={"guidance_scale": 2.0, "top_k": 16}, target_onnxruntime="1.32")
    pipe = Pipeline.load(write_model_dir(gpt, tiny_models[1], tmp_path_factory.mktemp("ao") / "ao", spec),
                         providers="cpu")
    default = pipe.run([3, 4], seed=2, steps=4, decode_images=False)
    locality = Setting("locality", pipe, {"steps": 4}, order="locality").run([3, 4], 2)
    shuffled = Setting("random", pipe, {"steps": 4}, order="random").run([3, 4], 2)
    assert np.array_equal(locality.tokens, default.tokens) and locality.calls == default.calls == 4
    assert shuffled.calls == 4 and not np.array_equal(shuffled.tokens, default.tokens)
    with pytest.raises(Exception, match="order must be one of"):
        Setting("bad", pipe, {"steps": 4}, order="spiral").run([3], 0)
