"""Editing: inpainting, outpainting, continuation, candidate reranking, the `tessera edit` command."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from tessera.runtime import InvalidInputError
from tessera.cli.main import main
from tessera.runtime.editing import score_known
from tessera.runtime.decoders import cell_positions
from tessera.runtime.sampling import apply_guidance


@pytest.fixture(scope="module")
def picture():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))


def _encode(pipe, image):
    x = np.asarray(image.convert("RGB"), np.float32).transpose(2, 0, 1)[None] / 127.5 - 1
    return pipe.tokenizer.encode(x)[0]


def _kept_identical(r):
    assert r.tokens.shape[1:] == r.keep.shape
    assert (r.tokens[:, r.keep] == r.source[r.keep]).all()
    assert 0 < r.keep.sum() < r.keep.size


def test_inpaint_keeps_tokens_outside_the_mask(tiny_pipe, picture):
    mask = np.zeros((16, 16), bool)
    mask[5:7, 5:11] = True  # touches cells (1, 1..2): any masked pixel regenerates its cell
    r = tiny_pipe.inpaint(picture, mask, "three", num_images=2, candidates=3, seed=1, return_result=True)
    expected_keep = np.ones((4, 4), bool)
    expected_keep[1, 1:3] = False
    assert (r.keep == expected_keep).all()
    assert (r.source == _encode(tiny_pipe, picture)).all()
    _kept_identical(r)
    assert len(r.images) == 2 and all(im.size == (16, 16) and im.mode == "RGB" for im in r.images)
    images = tiny_pipe.inpaint(picture, mask, seed=1)  # no class: unconditional
    assert len(images) == 1 and images[0].size == (16, 16)


def test_masks_of_every_accepted_kind(tiny_pipe, picture):
    cells = np.zeros((4, 4), bool)
    cells[2, 3] = True
    pil = Image.fromarray(np.kron(cells, np.ones((4, 4))).astype(np.uint8) * 255)
    r1 = tiny_pipe.inpaint(picture, cells, 1, return_result=True)
    r2 = tiny_pipe.inpaint(picture, pil, 1, return_result=True)
    assert (r1.keep == ~cells).all() and (r2.keep == ~cells).all()
    # A larger input (fit to 16x16): its mask is mapped with it.
    big = picture.resize((48, 48), Image.NEAREST)
    mask = np.zeros((48, 48), bool)
    mask[0:3, 0:3] = True
    r3 = tiny_pipe.inpaint(big, mask, 1, return_result=True)
    assert r3.keep.sum() == 15 and not r3.keep[0, 0]


def test_outpaint_and_continue_keep_their_tokens(tiny_pipe, picture):
    r = tiny_pipe.outpaint(picture, (4, 4, 12, 12), 5, return_result=True)
    assert (r.keep == np.pad(np.ones((2, 2), bool), 1)).all()
    _kept_identical(r)
    r = tiny_pipe.outpaint(picture, "4,4,12,12", place=True, return_result=True)  # extend: drawn into the box
    assert r.keep.sum() == 4
    _kept_identical(r)
    assert np.asarray(r.canvas).shape == (16, 16, 3)
    r = tiny_pipe.continue_image(picture, keep_rows=2, class_label=7, num_images=3, return_result=True)
    assert r.keep[:2].all() and not r.keep[2:].any()
    assert r.scores.shape == (3, 1)  # nothing known after the hole: one draw per image
    _kept_identical(r)
    # Non-square input of another size: fit, padded, still a 16x16 result.
    odd = Image.new("L", (30, 20), 0)
    assert tiny_pipe.continue_image(odd, 1)[0].size == (16, 16)


def _reference_scores(pipe, draws, label, g, scored):
    """Teacher forcing one token per call (the generation path), independent of score_known."""
    layout, runner = pipe.layout, pipe.transformer
    b, n = draws.shape
    pos = cell_positions(layout, pipe.grid)
    rows = np.concatenate([np.full(b, label), np.full(b, layout.null_class_id)])
    runner.start(2 * b, n + 1)
    logits = [np.array(runner(layout.class_ids(rows)[:, None], np.zeros((2 * b, 1), np.int64),
                              np.ones((2 * b, 1, 1), bool))[:, -1])]
    for j in range(n - 1):
        ids = np.concatenate([draws[:, j], draws[:, j]])[:, None]
        logits.append(np.array(runner(ids, np.full((2 * b, 1), pos[j]), np.ones((2 * b, 1, j + 2), bool))[:, -1]))
    total = np.zeros(b)
    for j in np.flatnonzero(scored):
        lg = apply_guidance(logits[j], b, g).astype(np.float64)
        lp = lg - np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1, keepdims=True)) - lg.max(-1, keepdims=True)
        total += lp[np.arange(b), draws[:, j]]
    return total


def test_reranking_keeps_the_most_likely_candidate(tiny_pipe, picture):
    mask = np.zeros((4, 4), bool)
    mask[0, 1:3] = True  # a hole near the top: 13 known cells after it are scored
    r = tiny_pipe.inpaint(picture, mask, 2, num_images=2, candidates=5, seed=3, guidance_scale=2.0,
                          return_result=True)
    assert r.candidates.shape == (2, 5, 4, 4) and r.scores.shape == (2, 5)
    assert (r.chosen == r.scores.argmax(1)).all()
    assert (r.tokens == r.candidates[np.arange(2), r.chosen]).all()
    assert len({tuple(c.ravel()) for c in r.candidates[0]}) > 1, "the draws should differ"
    scored = (~mask).ravel() & (np.arange(16) > 1)
    draws = r.candidates.reshape(10, 16)
    ref = _reference_scores(tiny_pipe, draws, 2, 2.0, scored)
    np.testing.assert_allclose(r.scores.ravel(), ref, rtol=1e-4, atol=1e-3)
    got = score_known(tiny_pipe.transformer, tiny_pipe.layout, tiny_pipe.grid, draws, np.full(10, 2), 2.0, scored)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("call, message", [
    (lambda p, im: p.inpaint(im, np.zeros((5, 5), bool)), "mask is 5x5"),
    (lambda p, im: p.inpaint(im, np.zeros((16, 16), bool)), "selects nothing"),
    (lambda p, im: p.inpaint(im, np.zeros((16, 16, 3), bool)), "2-D"),
    (lambda p, im: p.inpaint("photo.png", np.ones((4, 4), bool)), "PIL image or a numpy array"),
    (lambda p, im: p.inpaint(np.full((16, 16), 2.0), np.ones((4, 4), bool)), "[0, 1]"),
    (lambda p, im: p.inpaint(np.zeros((0, 16)), np.ones((4, 4), bool)), "empty"),
    (lambda p, im: p.inpaint(im, np.ones((4, 4), bool), candidates=0), "candidates"),
    (lambda p, im: p.inpaint(im, np.ones((4, 4), bool), class_label="eleven"), "unknown class"),
    (lambda p, im: p.outpaint(im, (4, 4, 40, 12)), "outside"),
    (lambda p, im: p.outpaint(im, (4, 4, 3, 12)), "empty"),
    (lambda p, im: p.outpaint(im, (5, 5, 7, 7)), "no whole token cell"),
    (lambda p, im: p.outpaint(im, (0, 0, 16, 16)), "whole image"),
    (lambda p, im: p.outpaint(im, "1,2,3"), "four"),
    (lambda p, im: p.continue_image(im, 4), "1..3"),
    (lambda p, im: p.continue_image(im, 0), "1..3"),
    (lambda p, im: p.edit_tokens(np.zeros((3, 3), np.int64), np.ones((4, 4), bool)), "grid of shape"),
])
def test_bad_inputs_get_clear_errors(tiny_pipe, picture, call, message):
    with pytest.raises(InvalidInputError, match=message.replace("[", r"\[").replace(".", r"\.")):
        call(tiny_pipe, picture)


def test_edit_command(tiny_dir, tmp_path, picture, capsys):
    src, mask = tmp_path / "in.png", tmp_path / "mask.png"
    picture.save(src)
    m = np.zeros((16, 16), np.uint8)
    m[8:, :] = 255
    Image.fromarray(m).save(mask)
    base = ["--model", str(tiny_dir), "-q"]
    assert main(["edit", "inpaint", str(src), "--mask", str(mask), "--class", "3", "--out", str(tmp_path / "a.png"),
                 *base]) == 0
    assert main(["edit", "outpaint", str(src), "--box", "4,4,12,12", "-n", "2", "--grid", "--scale", "2",
                 "--out", str(tmp_path / "b.png"), *base]) == 0
    assert main(["edit", "continue", str(src), "--keep-rows", "1", "--out", str(tmp_path / "c.png"),
                 "--preview-dir", str(tmp_path / "frames"), *base]) == 0
    assert Image.open(tmp_path / "a.png").size == (16, 16)
    assert Image.open(tmp_path / "c.png").size == (16, 16)
    assert sorted(p.name for p in (tmp_path / "frames").iterdir())[-1] == "frame-0016.png"
    capsys.readouterr()
    assert main(["edit", "inpaint", str(src), "--mask", str(tmp_path / "none.png"), *base]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["edit", "continue", str(src), "--keep-rows", "7", *base]) == 1
    assert "keep_rows" in capsys.readouterr().err


# --- the shipped model: inpainted digits are the requested class ------------------------------
def _default_available():
    from tessera.models import default_model_dir

    return (default_model_dir() / "tessera.json").is_file()


@pytest.mark.skipif(not _default_available(), reason="the shipped default model (models/default) is not built yet")
def test_inpainted_digits_match_the_requested_class():
    import torch
    from tessera.runtime import Pipeline
    from tessera.training.data import mnist_split
    from tessera.training.digit_classifier import get_classifier

    clf = get_classifier()  # cached outside the tree; trained (~2 min, train split) if absent
    data = mnist_split(as_torch=False)
    x, y = np.asarray(data["test_x"]), np.asarray(data["test_y"])
    pipe = Pipeline.load(os.environ.get("TESSERA_TEST_DIGITS_MODEL"), providers="cpu")
    # One held-out digit per class; its lower 4 of 7 token rows and a centre block are regenerated
    # for the digit's own class, and for the next class.
    idx = [int(np.flatnonzero(y == c)[0]) for c in range(10)]
    mask = np.zeros((7, 7), bool)
    mask[3:, :] = True
    mask[2:5, 2:5] = True
    outs, targets = [], []
    for i in idx:
        img = ((x[i].transpose(1, 2, 0) + 1) / 2).clip(0, 1)
        for target in (int(y[i]), (int(y[i]) + 1) % 10):
            outs.append(pipe.inpaint(img, mask, target, candidates=2, seed=i)[0])
            targets.append(target)
    batch = np.stack([np.asarray(o.convert("RGB"), np.float32).transpose(2, 0, 1) / 127.5 - 1 for o in outs])
    pred = clf.predict(torch.from_numpy(batch)).numpy()
    agree = float((pred == np.asarray(targets)).mean())
    assert agree >= 0.6, f"classifier agrees with the requested class on {agree:.0%} of inpainted digits"
