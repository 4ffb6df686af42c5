"""ARPG (`arpg-c2i`): the schedule's arithmetic, training masks against inference calls, checkpoint
loading, the export (graph parity, quantized variants, presets from file names) and the runtime
decoder against the PyTorch reference loop, editing included. Their own code is compared in
tests/test_arpg_upstream.py (needs their source)."""
from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch

from tessera.runtime import InvalidInputError
from tessera.runtime.sampling import SamplingConfig
from tessera.runtime.schedule import arpg_counts, guidance_at, random_orders

from conftest import DIGITS


@pytest.fixture(scope="module")
def arpg_model():
    from tessera.export.build import build_gpt
    from tessera.export.config import gpt_preset

    model = build_gpt(gpt_preset("ARPG-Tiny"), None, seed=4)
    for p in model.parameters():
        p.data.mul_(10.0) if p.dim() > 1 else None  # sampling decisions that depend on the weights
    return model


@pytest.fixture(scope="module")
def arpg_dir(tmp_path_factory, arpg_model, tiny_models):
    from tessera.export.model_dir import ExportSpec, write_model_dir

    out = tmp_path_factory.mktemp("arpg") / "tiny-arpg"
    spec = ExportSpec(name="tiny-arpg", class_names=DIGITS, include_weights=True,
                      generation_defaults={"guidance_scale": 2.0, "top_k": 16, "steps": 5})
    return write_model_dir(arpg_model, tiny_models[1], out, spec)


@pytest.fixture(scope="module")
def arpg_pipe(arpg_dir):
    from tessera.runtime import Pipeline

    return Pipeline.load(arpg_dir, providers="cpu")


# --- the schedule ---------------------------------------------------------------------------------
def _upstream_counts(n, steps, schedule):
    """ARPG's generate loop arithmetic, written out: float64 mask ratio, int() truncation."""
    out, last = [], 0
    for step in range(steps):
        r = (np.arccos(1.0 * (step + 1) / steps) / (math.pi * 0.5) if schedule == "arccos"
             else np.cos(math.pi / 2.0 * (step + 1) / steps))
        masked = max(1, min(n - last - 1, int(n * r)))
        pred = n - last if step == steps - 1 else n - last - masked
        out.append(pred)
        last += pred
    return out


@pytest.mark.parametrize("schedule", ["arccos", "cosine"])
def test_counts_are_upstreams_and_never_empty(schedule):
    for n in (16, 49, 256):
        for steps in range(1, n + 1):
            got = arpg_counts(n, steps, schedule)
            assert got == _upstream_counts(n, steps, schedule) and min(got) >= 1 and sum(got) == n
    assert arpg_counts(256, 64)[:4] == [3, 3, 2, 3]
    # float32 would put cos(pi/3) under 0.5: 256 cells, 3 steps, cosine -> 128 open after step 2
    assert arpg_counts(256, 3, "cosine") == [35, 93, 128]
    with pytest.raises(Exception, match="steps must be between 1 and the number of cells to decide \\(16\\)"):
        arpg_counts(16, 17)


def test_guidance_schedule_and_orders():
    assert guidance_at(4.0, 128, 256, "linear") == 2.5 and guidance_at(4.0, 0, 256, "constant") == 4.0
    a = random_orders([5, 6], np.arange(16))
    assert sorted(a[0]) == list(range(16)) and not np.array_equal(a[0], a[1])
    np.testing.assert_array_equal(random_orders([6], np.arange(16))[0], a[1])  # a seed names an image


# --- training masks reproduce the inference calls ----------------------------------------------------
def test_training_logits_equal_the_decoders_calls(arpg_model):
    """Teacher forcing with group masks gives, for every cell, the logits the step-by-step calls give
    when they feed the true codes: what the model is trained on is what the decoder asks."""
    from tessera.export.arpg import generate_arpg

    cfg = arpg_model.cfg
    n = cfg.grid ** 2
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, cfg.vocab_size, (2, n), generator=g)
    order = torch.stack([torch.randperm(n, generator=g) for _ in range(2)])
    counts = arpg_counts(n, 5)
    with torch.no_grad():
        want = arpg_model.training_logits(codes, torch.tensor([1, 3]), order, counts)
    got = []

    class Forced:  # the loop's steps with the true codes fed instead of draws
        pass

    ids = arpg_model.class_token(torch.tensor([1, 3]))[:, None]
    pos = torch.zeros(2, 1, dtype=torch.long)
    past, start = None, 0
    with torch.no_grad():
        for c in counts:
            cells = order[:, start:start + c]
            logits, past = arpg_model(ids, pos, arpg_model.cell_position(cells), past)
            got.append(logits)
            ids, pos = torch.gather(codes, 1, cells), arpg_model.cell_position(cells)
            start += c
    torch.testing.assert_close(torch.cat(got, 1), want, atol=2e-5, rtol=1e-5)
    assert generate_arpg  # the reference loop uses the same calls (tested against the runtime below)


def test_arpg_loss_trains():
    from tessera.export.arpg import ARPG
    from tessera.export.config import gpt_preset
    from training.arpg import arpg_loss

    torch.manual_seed(0)
    model = ARPG(gpt_preset("ARPG-Tiny"))
    codes = torch.randint(0, 64, (8, 16))
    labels = torch.randint(0, 10, (8,))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    first = None
    for _ in range(30):
        loss = arpg_loss(model, codes, labels, g)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 1.0  # it memorises a tiny batch


# --- checkpoints ---------------------------------------------------------------------------------------
class Payload:
    """A class a pickle may name that is not argparse.Namespace."""
def test_checkpoint_layouts_load_strictly(tmp_path, arpg_model):
    from tessera.export.build import build_gpt
    from tessera.export.checkpoints import CheckpointError

    sd = {k: v.clone() for k, v in arpg_model.state_dict().items()}
    torch.save({"model": sd, "args": argparse.Namespace(model="ARPG-L", lr=1e-4)}, tmp_path / "train.pt")
    loaded = build_gpt(arpg_model.cfg, tmp_path / "train.pt")
    assert torch.equal(loaded.layers.to_k.weight, sd["layers.to_k.weight"])

    torch.save({"model": sd, "extra": Payload()}, tmp_path / "evil.pt")  # any other class: refused
    with pytest.raises(CheckpointError, match="weights_only=True"):
        build_gpt(arpg_model.cfg, tmp_path / "evil.pt")
    bad = dict(sd)
    bad["layers.cross_dec.0.attn.to_k.weight"] = bad.pop("layers.to_k.weight")
    torch.save({"model": bad}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"(?s)missing \(1\): layers.to_k.weight.*unexpected \(1\)"):
        build_gpt(arpg_model.cfg, tmp_path / "bad.pt")


def test_presets_from_file_names():
    from tessera.export.config import GPT_PRESET_INFO, gpt_preset
    from tessera.export.presets import gpt_preset_for_file

    for file, preset, dims, cfg in (("arpg_300m.pt", "ARPG-L", (1024, 24, 16), 4.5),
                                    ("ckpts/ARPG_700M.pt", "ARPG-XL", (1280, 36, 20), 6.0),
                                    ("arpg_1b.pt", "ARPG-XXL", (1536, 48, 24), 7.5)):
        assert gpt_preset_for_file(file) == preset
        c = gpt_preset(preset)
        assert (c.dim, c.n_layer, c.n_head, c.grid, c.rope_grid, c.order, c.ffn_dim) == (*dims, 16, 16, "arpg",
                                                                                          {1024: 2816, 1280: 3584,
                                                                                           1536: 4096}[dims[0]])
        d = GPT_PRESET_INFO[preset].generation_defaults
        assert (d["steps"], d["guidance_scale"], d["schedule"], d["guidance_schedule"]) == (64, cfg, "arccos",
                                                                                             "linear")
    assert gpt_preset_for_file("arpg_300m_ema.pt") == "ARPG-L"  # a suffix after "_" keeps the name
    assert gpt_preset_for_file("arpg_300mx.pt") is None and gpt_preset_for_file("xarpg_1b.pt") is None


def test_export_needs_no_flag_beyond_the_file_names(tmp_path, capsys):
    """arpg_300m.pt + vq_ds16_c2i.pt (ARPG's layout at small dims by override, with the training
    file's Namespace): ARPG-L's grid, the ImageNet names, the model zoo's sampling in the manifest."""
    from tessera.cli.main import main
    from tessera.runtime.manifest import load_manifest

    from test_llamagen_presets import TINY_VQ, random
    from llamagen_layout import vq_shapes

    from tessera.export.arpg import ARPG
    from tessera.export.config import gpt_preset

    cfg = gpt_preset("ARPG-L", dim=64, n_layer=2, n_head=1, vocab_size=64)
    torch.save({"model": ARPG(cfg).state_dict(), "args": argparse.Namespace(gpt_model="ARPG-L")},
               tmp_path / "arpg_300m.pt")
    torch.save({"model": random(vq_shapes(ch=8, mult=(1, 1, 2, 2, 4), z=8, e=4, codes=64, res=1, slots=64))},
               tmp_path / "vq_ds16_c2i.pt")
    code = main(["export", "--gpt-weights", str(tmp_path / "arpg_300m.pt"), "--vq-weights",
                 str(tmp_path / "vq_ds16_c2i.pt"), "--gpt-set", "dim=64", "--gpt-set", "n_layer=2", "--gpt-set",
                 "n_head=1", "--gpt-set", "vocab_size=64", *TINY_VQ, "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr()
    spec = load_manifest(tmp_path / "out").spec
    assert spec.family == "arpg-c2i" and spec.grid == (16, 16) and spec.image_size == (256, 256)
    assert spec.class_names[207] == "golden retriever"
    g = spec.generation
    assert (g.steps, g.guidance_scale, g.schedule, g.guidance_schedule, g.top_k) == (64, 4.5, "arccos", "linear", 0)
    assert spec.kv_layers == 2 and spec.io.query_positions == "query_positions"


# --- the graph and the runtime ---------------------------------------------------------------------
def test_manifest_and_graph(arpg_dir, arpg_pipe):
    spec = arpg_pipe.manifest.spec
    assert spec.family == "arpg-c2i" and arpg_pipe.decoders == ("arpg",)
    assert spec.layout.mask_token_id == 64 and spec.layout.class_ids(0) == 65 and spec.layout.embedding_rows == 77
    parity = spec.info["parity"]["transformer"]
    assert parity["max_abs_logit_error"] < 1e-4 and set(parity["by_phase"]) == {"prefill", "decode", "multi_query",
                                                                                 "prefix_prefill"}
    names = [i.name for i in arpg_pipe.model.transformer.session.get_inputs()]
    assert names[:4] == ["input_ids", "position_ids", "query_positions", "attention_mask"]
    assert len(names) == 4 + 2 * (spec.transformer.n_layer // 2 + 1)


@pytest.mark.parametrize("guidance, steps, schedule, gsched", [(1.0, 4, "arccos", "linear"),
                                                               (3.0, 5, "arccos", "linear"),
                                                               (3.0, 16, "cosine", "constant")])
def test_runtime_gives_the_reference_tokens(arpg_pipe, arpg_model, guidance, steps, schedule, gsched):
    from tessera.export.arpg import generate_arpg

    sampling = SamplingConfig(1.0, 16, 1.0)
    want = generate_arpg(arpg_model, [2, 7, 0], steps, guidance, gsched, schedule, sampling, seed=5)
    r = arpg_pipe.run([2, 7, 0], seed=5, steps=steps, schedule=schedule, guidance_schedule=gsched,
                      guidance_scale=guidance, top_k=16, decode_images=False)
    np.testing.assert_array_equal(r.tokens, want)
    assert r.calls == steps and r.decoder == "arpg"
    # a seed names an image: image 1 alone with its seed is the same image
    alone = arpg_pipe.run([7], seed=6, steps=steps, schedule=schedule, guidance_schedule=gsched,
                          guidance_scale=guidance, top_k=16, decode_images=False)
    np.testing.assert_array_equal(alone.tokens[0], r.tokens[1])


def test_defaults_options_and_errors(arpg_pipe, tiny_pipe):
    seen = []
    r = arpg_pipe.run([3], seed=1, callback=lambda s, t, tok: seen.append(s), decode_images=False)
    assert r.calls == 5 and seen == sorted(seen) and seen[-1] == 16  # the manifest's 5 steps
    with pytest.raises(InvalidInputError, match="steps must be in 1..16"):
        arpg_pipe.run([3], steps=17)
    with pytest.raises(InvalidInputError, match="ARPG model.*use the arpg decoder"):
        arpg_pipe.run([3], decoder="sequential")
    with pytest.raises(InvalidInputError, match="schedule must be one of arccos, cosine"):
        arpg_pipe.run([3], schedule="linear")
    with pytest.raises(InvalidInputError, match="decoder 'arpg' needs an ARPG model"):
        tiny_pipe.run([3], decoder="arpg")
    with pytest.raises(InvalidInputError, match="schedule is an option of the arpg decoder"):
        tiny_pipe.run([3], schedule="cosine")


def test_cancel_stops_between_calls(arpg_pipe):
    from tessera.runtime import GenerationCancelled

    with pytest.raises(GenerationCancelled):
        arpg_pipe.run([3], seed=1, callback=lambda s, t, tok: s < 5, decode_images=False)


def test_inpainting_keeps_every_kept_cell_and_matches_the_reference(arpg_pipe, arpg_model):
    from tessera.export.arpg import generate_arpg

    rng = np.random.default_rng(0)
    source = rng.integers(0, 64, (4, 4))
    regen = np.zeros((4, 4), bool)
    regen.flat[rng.permutation(16)[:9]] = True
    res = arpg_pipe.edit_tokens(source, regen, class_label=4, num_images=2, seed=9, steps=3, guidance_scale=2.0,
                                top_k=16)
    np.testing.assert_array_equal(res.tokens[:, ~regen], np.broadcast_to(source[~regen], (2, 7)))
    want = generate_arpg(arpg_model, [4, 4], 3, 2.0, "linear", "arccos", SamplingConfig(1.0, 16, 1.0), seed=9,
                         known=(np.tile(source.reshape(16), (2, 1)), ~regen.reshape(16)))
    np.testing.assert_array_equal(res.tokens, want)
    # more steps than regenerated cells: as many steps as cells
    res = arpg_pipe.edit_tokens(source, regen, class_label=4, seed=9, steps=12)
    np.testing.assert_array_equal(res.tokens[0][~regen], source[~regen])


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_variants_pass_their_parity(tmp_path, tiny_models, precision):
    """Weights at 3x init (the fixture's 10x makes int4 on 64-wide matrices pure noise)."""
    from tessera.export.build import build_gpt
    from tessera.export.config import gpt_preset
    from tessera.export.model_dir import ExportSpec, write_model_dir
    from tessera.runtime import Pipeline

    model = build_gpt(gpt_preset("ARPG-Tiny"), None, seed=4)
    for p in model.parameters():
        p.data.mul_(3.0) if p.dim() > 1 else None
    out = write_model_dir(model, tiny_models[1], tmp_path / precision,
                          ExportSpec(name="q", class_names=DIGITS, generation_defaults={"steps": 4}), precision)
    pipe = Pipeline.load(out, providers="cpu")
    assert pipe.manifest.spec.graph("transformer").precision == precision
    assert pipe.run([1, 2], decode_images=False).calls == 4


def test_position_aware_queries_are_an_option_off_for_upstream(tmp_path):
    """Upstream's first call gives every cell the same logits (its queries read the class alone);
    `query_pos_embed` (our digit model) makes them depend on the cell; the graph keeps parity."""
    from tessera.export.arpg import ARPG, trace_arpg
    from tessera.export.config import gpt_preset
    from tessera.export.parity import transformer_parity

    torch.manual_seed(0)
    cells = torch.tensor([[1, 6, 11]])
    for flag in (False, True):
        model = ARPG(gpt_preset("ARPG-Tiny", query_pos_embed=flag)).eval()
        assert ("query_pos" in model.state_dict()) == flag
        if flag:
            torch.nn.init.normal_(model.query_pos)
        with torch.no_grad():
            logits, _ = model(model.class_token(torch.tensor([[2]])), torch.zeros(1, 1, dtype=torch.long), cells)
        assert torch.allclose(logits[0, 0], logits[0, 1]) != flag
    trace_arpg(model, tmp_path / "t.onnx", 18)
    assert transformer_parity(model, tmp_path / "t.onnx")["max_abs_logit_error"] < 1e-4
