"""Any-order models: the schedule, the decoder against the PyTorch reference, queries never context,
editing with every kept cell as context, and raster models left as they were."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tessera.runtime import InvalidInputError
from tessera.runtime.sampling import SamplingConfig
from tessera.runtime.schedule import cosine_counts, image_plans, plan

from conftest import DIGITS


@pytest.fixture(scope="module")
def ao_model():
    from tessera.export.build import build_gpt
    from tessera.export.config import gpt_preset

    gpt = build_gpt(gpt_preset("GPT-Tiny", order="any"), None, seed=3)
    for p in gpt.parameters():
        p.data.mul_(10.0) if p.dim() > 1 else None  # sampling decisions that depend on the weights
    return gpt


def _export(tmp_path_factory, gpt, vq, graph: str, target: str):
    from tessera.export.model_dir import ExportSpec, write_model_dir

    out = tmp_path_factory.mktemp("anyorder") / f"ao-{graph}-{target}"
    spec = ExportSpec(name="tiny-anyorder", class_names=DIGITS, include_weights=True, graph=graph,
                      generation_defaults={"guidance_scale": 2.0, "top_k": 16}, target_onnxruntime=target)
    return write_model_dir(gpt, vq, out, spec)


@pytest.fixture(scope="module")
def ao_dir(tmp_path_factory, ao_model, tiny_models):
    # the fused graph in its 1.32 form: several queries per call run batched
    return _export(tmp_path_factory, ao_model, tiny_models[1], "fused", "1.32")


@pytest.fixture(scope="module")
def ao_pipe(ao_dir):
    from tessera.runtime import Pipeline

    return Pipeline.load(ao_dir, providers="cpu")


@pytest.fixture(scope="module", params=["fused", "portable"])
def ao_any_pipe(request, ao_pipe, tmp_path_factory, ao_model, tiny_models):
    """The any-order model on each transformer graph kind."""
    from tessera.runtime import Pipeline

    if request.param == "fused":
        return ao_pipe
    return Pipeline.load(_export(tmp_path_factory, ao_model, tiny_models[1], "portable", "1.32"), providers="cpu")


# --- the schedule ----------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["locality", "random"])
@pytest.mark.parametrize("h, w, steps", [(4, 4, 4), (7, 7, 8), (7, 7, 49), (16, 16, 24), (3, 5, 1)])
def test_schedule_covers_every_cell_once_in_exactly_steps_steps(order, h, w, steps):
    groups = plan(h, w, steps, order, np.random.default_rng(1))
    assert len(groups) == steps and all(len(g) >= 1 for g in groups)
    cells = np.concatenate(groups)
    assert sorted(cells.tolist()) == list(range(h * w))
    assert [len(g) for g in groups] == cosine_counts(h * w, steps)


def test_schedule_skips_decided_cells_and_rejects_bad_steps():
    decided = np.zeros(16, bool)
    decided[[0, 5, 9]] = True
    groups = plan(4, 4, 5, "locality", np.random.default_rng(0), decided)
    assert len(groups) == 5 and sorted(np.concatenate(groups).tolist()) == np.flatnonzero(~decided).tolist()
    with pytest.raises(Exception, match="steps must be between 1"):
        cosine_counts(16, 17)
    per_image = image_plans((4, 4), 4, "random", [3, 4])
    assert [g.shape for g in per_image] == [(2, c) for c in cosine_counts(16, 4)]
    alone = image_plans((4, 4), 4, "random", [4])
    assert all((a[0] == b[1]).all() for a, b in zip(alone, per_image))  # an image plans the same in a batch


def test_locality_order_spreads_each_step():
    """Cells decided together are sampled independently: the locality order never puts two of a
    step's cells next to each other while a farther open cell exists (a 7x7 grid, 8 steps)."""
    groups = plan(7, 7, 8, "locality", np.random.default_rng(0))
    r, c = np.divmod(groups[2], 7)
    d = np.hypot(r[:, None] - r[None], c[:, None] - c[None]) + np.eye(len(r)) * 99
    assert d.min() >= 2


# --- the model and its training objective -------------------------------------------------------
def test_queries_never_context_in_the_training_mask(ao_model):
    from tessera.training.anyorder import any_order_inputs

    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 64, (2, 16), generator=gen)
    ids, pos, mask, _ = any_order_inputs(ao_model, codes, torch.tensor([1, 2]), cosine_counts(16, 4), gen)
    a, _ = ao_model(ids, pos, mask)
    changed = ids.clone()
    changed[:, 1 + 16 + 3] = 7  # one query's content
    b, _ = ao_model(changed, pos, mask)
    same = torch.ones(ids.shape[1], dtype=torch.bool)
    same[1 + 16 + 3] = False
    torch.testing.assert_close(a[:, same], b[:, same], rtol=0, atol=0)


def test_raster_models_are_unaffected():
    from tessera.export.config import gpt_preset
    from tessera.export.transformer import GPT, rope_2d_tables

    cfg = gpt_preset("GPT-Tiny")
    assert cfg.query_token is None and "order" not in cfg.to_dict()
    cos, sin = rope_2d_tables(cfg)
    assert not cos[0].any() and not sin[0].any()  # LlamaGen's class row
    torch.manual_seed(0)
    model = GPT(cfg)
    assert "query_embedding" not in model.state_dict()
    assert model.embedding_table().shape[0] == cfg.vocab_size + cfg.num_classes + 1
    any_cfg = gpt_preset("GPT-Tiny", order="any")
    assert any_cfg.query_token == 64 + 11 and any_cfg.to_dict()["order"] == "any"


def test_raster_model_refuses_the_anyorder_decoder(tiny_pipe, tiny_dir):
    assert json.loads((tiny_dir / "tessera.json").read_text())["family"] == "llamagen-c2i"
    assert tiny_pipe.layout.query_token_id is None
    with pytest.raises(InvalidInputError, match="trained in raster order"):
        tiny_pipe.run([1], decoder="anyorder")
    with pytest.raises(InvalidInputError, match="steps is an option of the anyorder decoder"):
        tiny_pipe.run([1], steps=4)


# --- the runtime against the reference ----------------------------------------------------------
@pytest.mark.parametrize("guidance, steps, order", [(1.0, 4, "locality"), (3.0, 4, "random"), (3.0, 7, "locality")])
def test_runtime_gives_the_reference_tokens(ao_any_pipe, ao_model, guidance, steps, order):
    from tessera.export.reference import generate_tokens_any_order
    from tessera.runtime.anyorder import AnyOrderDecoder
    from tessera.runtime.decoders import DecoderRequest, run_decoder
    from tessera.runtime.sampling import ImageStreams

    labels = np.array([2, 7, 0])
    sampling = SamplingConfig(1.0, 16, 1.0)
    want = generate_tokens_any_order(ao_model, labels, steps, order, guidance, sampling, seed=5)
    request = DecoderRequest(labels, (4, 4), guidance, sampling, ImageStreams((5, 6, 7), 16))
    with ao_any_pipe.model.runners.borrow() as runner:
        result = run_decoder(AnyOrderDecoder(steps, order), runner, ao_any_pipe.layout, request)
        assert runner.length == 1 + 16 - cosine_counts(16, steps)[-1]  # class + fed codes: no query
    np.testing.assert_array_equal(result.tokens, want)
    assert result.calls == steps


def test_anyorder_is_the_default_decoder_with_steps_calls(ao_pipe):
    assert ao_pipe.manifest.spec.family == "anyorder-c2i" and ao_pipe.decoders == ("anyorder",)
    r = ao_pipe.run([3, 4], seed=1, steps=5, decode_images=False)
    assert r.decoder == "anyorder" and r.calls == 5 and r.tokens.min() >= 0
    seen = []
    r8 = ao_pipe.run([3], seed=1, callback=lambda s, t, tok: seen.append(s), decode_images=False)
    assert r8.calls == 8 and seen[-1] == 16 and seen == sorted(seen)
    np.testing.assert_array_equal(r8.tokens[0], ao_pipe.run([3, 4], seed=1, decode_images=False).tokens[0])
    # generate_tokens and generate take the decoding options run takes
    np.testing.assert_array_equal(ao_pipe.generate_tokens([3, 4], seed=1, steps=5), r.tokens)
    assert ao_pipe.last_calls == 5
    # token evaluations: rows x (class + every cell as a query + every cell but the last group as context)
    assert r.stats["token_rows"] == 2 * 2 * (1 + 2 * 16 - cosine_counts(16, 5)[-1])
    with pytest.raises(InvalidInputError, match="steps must be in 1..16"):
        ao_pipe.run([3], steps=17)
    with pytest.raises(InvalidInputError, match="trained for any-order decoding"):
        ao_pipe.run([3], decoder="sequential")


def test_changing_a_query_never_changes_later_logits(ao_pipe):
    """Run the first call with the real query and with another id at the query slots: the second
    call's logits (codes and queries) are identical, since the query slots were dropped."""
    from tessera.runtime.anyorder import AnyOrderDecoder

    layout = ao_pipe.layout
    groups = image_plans((4, 4), 4, "locality", [0])
    positions = layout.cell_position(np.arange(16) // 4, np.arange(16) % 4).astype(np.int64)
    outs = []
    for first_query in (layout.query_token_id, 5):
        with ao_pipe.model.runners.borrow() as runner:
            runner.start(1, 20)
            AnyOrderDecoder._call(runner, layout.class_ids(np.array([[3]])), np.zeros((1, 1), np.int64),
                                  groups[0], positions, first_query, 1)
            assert runner.length == 1
            codes = np.arange(groups[0].shape[1])[None] + 10
            logits = AnyOrderDecoder._call(runner, codes, positions[groups[0]], groups[1], positions,
                                           layout.query_token_id, 1)
            outs.append(np.array(logits))
    np.testing.assert_array_equal(outs[0], outs[1])


# --- editing -------------------------------------------------------------------------------------
def test_inpainting_keeps_the_kept_cells_and_matches_the_reference(ao_pipe, ao_model):
    from tessera.export.reference import generate_tokens_any_order

    rng = np.random.default_rng(0)
    source = rng.integers(0, 64, (4, 4))
    regen = np.zeros((4, 4), bool)
    regen.flat[rng.permutation(16)[:8]] = True
    res = ao_pipe.edit_tokens(source, regen, class_label=4, num_images=2, candidates=4, seed=9, steps=3,
                              guidance_scale=2.0, top_k=16)
    assert res.candidates.shape == (2, 1, 4, 4) and res.tokens.shape == (2, 4, 4)
    np.testing.assert_array_equal(res.tokens[:, ~regen], np.broadcast_to(source[~regen], (2, 8)))
    want = generate_tokens_any_order(ao_model, [4, 4], 3, "locality", 2.0, SamplingConfig(1.0, 16, 1.0), seed=9,
                                     known=(np.tile(source.reshape(16), (2, 1)), ~regen.reshape(16)))
    np.testing.assert_array_equal(res.tokens, want)


def test_the_family_gives_the_query(ao_dir):
    """The query id is a rule of the family (vocab_size + num_classes + 1), not a field: a manifest
    relabelled as a raster model has no query."""
    from tessera.runtime.spec import ModelSpec

    data = json.loads((ao_dir / "tessera.json").read_text())
    assert data["family"] == "anyorder-c2i" and ModelSpec.from_manifest(data).layout.query_token_id == 64 + 11
    assert "token_layout" not in data and "order" not in data["transformer"]
    raster = json.loads(json.dumps(data))
    raster["family"] = "llamagen-c2i"
    assert ModelSpec.from_manifest(raster).layout.query_token_id is None
