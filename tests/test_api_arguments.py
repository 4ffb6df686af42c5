"""Wrong-typed or out-of-range Python API arguments get an InvalidInputError naming the argument
and what it accepts (no raw TypeError / ValueError / MemoryError, no hang); budgets are checked
before anything is allocated."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tessera.runtime import GenerationCancelled, InvalidInputError, Pipeline


@pytest.mark.parametrize("kwargs, names", [
    (dict(class_labels=3.0), "class_labels must be a class id"),
    (dict(class_labels=None), "class_labels must be a class id"),
    (dict(class_labels=np.array(3.5)), "class_labels must be a class id"),
    (dict(class_labels=[1, None]), "class labels must be integer ids"),
    (dict(class_labels=[True]), "class labels must be integer ids"),
    (dict(class_labels=[2.7]), "class labels must be integer ids"),
    (dict(seed=-1), "seed must be >= 0"),
    (dict(seed=None), "seed must be an integer >= 0"),
    (dict(seed=1.5), "seed must be an integer >= 0"),
    (dict(seed="3"), "seed must be an integer >= 0"),
    (dict(seed=[1, -2]), r"seed\[1\] must be >= 0"),
    (dict(top_k=float("nan")), "top_k must be >= 0"),
    (dict(top_k=2.5), "top_k must be >= 0"),
    (dict(temperature="hot"), "temperature must be >= 0"),
    (dict(top_p=float("inf")), r"top_p must be in \(0, 1\]"),
    (dict(guidance_scale=None, temperature=float("nan")), "temperature"),
    (dict(grid=(3,)), "grid must be an integer or a pair"),
    (dict(grid="7"), "grid must be an integer or a pair"),
    (dict(grid=7.0), "grid must be an integer or a pair"),
    (dict(grid=(0, 4)), "outside what this model's rotary table covers"),
    (dict(num_images_per_class="2"), "num_images_per_class must be >= 1"),
    (dict(num_images_per_class=2.0), "num_images_per_class must be >= 1"),
    (dict(parallel_window="2"), "parallel_window must be >= 1"),
    (dict(callback=3), "callback must be callable"),
    (dict(cancel="stop"), "cancel must be a CancelToken"),
])
def test_wrong_arguments_name_the_argument(tiny_pipe, kwargs, names):
    kwargs = {"class_labels": [1], **kwargs}
    with pytest.raises(InvalidInputError, match=names):
        tiny_pipe.generate(kwargs.pop("class_labels"), **kwargs)


def test_zero_d_integer_label_is_one_label(tiny_pipe):
    np.testing.assert_array_equal(tiny_pipe.generate_tokens(np.array(3), seed=1), tiny_pipe.generate_tokens([3], seed=1))


def test_unknown_options_are_named(tiny_pipe):
    with pytest.raises(InvalidInputError, match="unknown generation option.*guidance"):
        tiny_pipe.run([1], guidance=3.0)
    with pytest.raises(InvalidInputError, match="unknown edit option.*strength"):
        tiny_pipe.inpaint(np.zeros((16, 16, 3), np.uint8), np.ones((4, 4), bool), strength=0.5)


@pytest.mark.parametrize("call, message", [
    (lambda p: p.generate([1], num_images_per_class=10**9), "would need about .* GiB"),
    (lambda p: p.generate([1] * 10**6), "would need about .* GiB"),
    (lambda p: p.inpaint(np.zeros((16, 16, 3), np.uint8), np.eye(4, dtype=bool), 1, candidates=10**6),
     "edit: .* would need about"),
])
def test_huge_requests_are_refused_before_allocation(tiny_pipe, call, message):
    with pytest.raises(InvalidInputError, match=message) as e:
        call(tiny_pipe)
    assert "memory_budget" in str(e.value), "the message names the override"


def test_the_memory_budget_can_be_raised_or_lowered(tiny_dir):
    pipe = Pipeline.load(tiny_dir, providers="cpu", memory_budget=1 << 20)
    with pytest.raises(InvalidInputError, match="at most \\d+ images per call"):
        pipe.generate_tokens([1] * 64)
    pipe.memory_budget = None
    assert pipe.generate_tokens([1] * 64).shape == (64, 4, 4)


@pytest.mark.parametrize("codes, message", [
    (np.zeros((0, 4, 4), np.int64), "non-empty integer array"),
    (np.full((1, 4, 4), np.nan), "non-empty integer array"),
    (np.array([["a"]]), "non-empty integer array"),
    (np.full((1, 4, 4), 10**6), "must lie in"),
    (np.zeros((1, 500, 500), np.int64), "larger than this model decodes"),
])
def test_decode_refuses_bad_codes(tiny_pipe, codes, message):
    with pytest.raises(InvalidInputError, match=message):
        tiny_pipe.decode(codes)


def test_huge_images_are_refused_with_the_limit(tiny_pipe, tmp_path, monkeypatch):
    from tessera.runtime import image_processing

    path = tmp_path / "huge.png"
    Image.new("1", (15000, 15000)).save(path)  # 225 megapixels: PIL's decompression-bomb error
    with pytest.raises(InvalidInputError, match="limit of 67,108,864 pixels|limit is 67,108,864 pixels"):
        image_processing.load_image(path)
    monkeypatch.setattr(image_processing, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(InvalidInputError, match="over the limit of 100 pixels"):
        tiny_pipe.inpaint(np.zeros((16, 16, 3), np.uint8), np.ones((4, 4), bool))


def test_a_cancelled_or_refused_call_leaves_the_pipeline_usable(tiny_pipe):
    want = tiny_pipe.generate_tokens([2], seed=0)
    with pytest.raises(InvalidInputError):
        tiny_pipe.generate_tokens([2], seed=0, num_images_per_class=10**9)
    with pytest.raises(GenerationCancelled):
        tiny_pipe.generate_tokens([2], seed=0, callback=lambda *a: False)
    np.testing.assert_array_equal(tiny_pipe.generate_tokens([2], seed=0), want)


@pytest.mark.parametrize("providers", [123, [], ["cpu", 5], {"cpu": 1}])
def test_providers_of_the_wrong_type(providers):
    from tessera.runtime import InvalidInputError, Pipeline

    with pytest.raises(InvalidInputError, match="providers must be"):
        Pipeline.load(providers=providers)


@pytest.mark.parametrize("threads", [10**12, -1, 0, 1025, 2.0, "4", True])
def test_threads_out_of_range_or_of_the_wrong_type(tiny_dir, threads):
    with pytest.raises(InvalidInputError, match=r"threads must be an integer in 1\.\.1024"):
        Pipeline.load(tiny_dir, providers="cpu", threads=threads)


def test_threads_in_range_load(tiny_dir):
    assert Pipeline.load(tiny_dir, providers="cpu", threads=np.int64(1)).generate_tokens([1]).shape == (1, 4, 4)


@pytest.mark.parametrize("tile", ["a", 0, -3, 2.5, True])
def test_decode_tile_of_the_wrong_type(tiny_pipe, tile):
    with pytest.raises(InvalidInputError, match=r"tile must be >= 1 \(an integer\)"):
        tiny_pipe.decode(np.zeros((1, 4, 4), np.int64), tile=tile)


@pytest.mark.parametrize("box", [(float("nan"), 0, 5, 5), (0, 0, float("inf"), 5), (0, -float("inf"), 5, 5),
                                 "nan,0,5,5", "0,0,inf,5", "0,0,1e400,5"])
def test_outpaint_box_nan_or_infinite(tiny_pipe, box):
    with pytest.raises(InvalidInputError, match="the box must be four finite integers"):
        tiny_pipe.outpaint(np.zeros((16, 16, 3), np.uint8), box, 1)


def test_decode_of_many_grids_runs_in_chunks_with_the_images_of_one_call(tiny_pipe, monkeypatch):
    """Thousands of grids are decoded a bounded chunk at a time: each decoder call stays within the
    chunk, and the images are those of one call."""
    from tessera.runtime import tokenizer as tokenizer_mod

    codes = np.random.default_rng(0).integers(0, 64, (50, 4, 4))
    want = [np.asarray(im) for im in tiny_pipe.decode(codes)]
    per = tiny_pipe.tokenizer.decode_bytes(4, 4)
    monkeypatch.setattr(tokenizer_mod, "DECODE_CHUNK_BYTES", 7 * per)
    batches = []
    decoder = tiny_pipe.tokenizer.decode_session

    class Recording:
        def __getattr__(self, name):
            return getattr(decoder, name)

        def run(self, outputs, feeds, *rest):
            batches.append(next(iter(feeds.values())).shape[0])
            return decoder.run(outputs, feeds, *rest)

    monkeypatch.setattr(tiny_pipe.tokenizer, "_decode_session", Recording())
    got = [np.asarray(im) for im in tiny_pipe.decode(codes)]
    assert batches == [7] * 7 + [1]
    assert all(np.array_equal(a, b) for a, b in zip(got, want)) and len(got) == 50
    batches.clear()
    tiny_pipe.tokenizer.decode(codes)  # the tokenizer's own decode (previews) is chunked too
    assert batches == [7] * 7 + [1]


def test_decode_over_the_budget_names_what_fits(tiny_dir):
    pipe = Pipeline.load(tiny_dir, providers="cpu", memory_budget=64 << 20)
    with pytest.raises(InvalidInputError, match=r"decode at most \d+ grids per call.*memory_budget"):
        pipe.decode(np.zeros((20000, 4, 4), np.int64))
    pipe.memory_budget = 100_000  # below one grid's decode (about 0.27 MB)
    with pytest.raises(InvalidInputError, match=r"decoding one grid of 4x4 .*smaller tiles \(tile=2\)"):
        pipe.decode(np.zeros((1, 4, 4), np.int64))
    pipe.memory_budget = None
    assert len(pipe.decode(np.zeros((3, 4, 4), np.int64))) == 3
