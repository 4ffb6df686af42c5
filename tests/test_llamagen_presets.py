"""LlamaGen's published checkpoints: presets, file-name inference, mismatch errors, the 384 grid,
ImageNet class names and LlamaGen's sampling defaults in the manifest.

The state dicts are written out here from LlamaGen's key layout (gpt.py / vq_model.py), not from our
modules. The big presets (up to 3.1B parameters) are only checked on meta tensors: no weights are
ever allocated for them.
"""
from __future__ import annotations

import argparse
import json
import re

import pytest
import torch

from llamagen_layout import gpt_shapes, vq_shapes
from tessera.export.config import GPT_PRESET_INFO, LLAMAGEN_SAMPLING, gpt_preset, vq_preset
from tessera.export.errors import InvalidInputError
from tessera.export.presets import (checkpoint_shapes, check_gpt_shapes, check_vq_shapes, gpt_dims,
                                    gpt_preset_for_file, imagenet_class_names, vq_dims, vq_preset_for_file)

# LlamaGen's published checkpoints: (dim, layers, heads, FFN hidden, grid), written out by hand.
LLAMAGEN = {
    "c2i_B_256": (768, 12, 12, 2048, 16), "c2i_B_384": (768, 12, 12, 2048, 24),
    "c2i_L_256": (1024, 24, 16, 2816, 16), "c2i_L_384": (1024, 24, 16, 2816, 24),
    "c2i_XL_384": (1280, 36, 20, 3584, 24), "c2i_XXL_384": (1536, 48, 24, 4096, 24),
    "c2i_3B_384": (3200, 24, 32, 8704, 24),
}


def meta(shapes: dict) -> dict:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def random(shapes: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()}


def export_args(*argv: str) -> argparse.Namespace:
    from tessera.export.cli import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def export(*argv: str):
    from tessera.export.cli import run

    return run(export_args(*argv))


# --- the presets -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LLAMAGEN)
def test_every_published_checkpoint_has_a_preset(name):
    d, layers, heads, ffn, grid = LLAMAGEN[name]
    cfg = gpt_preset(name)
    assert (cfg.dim, cfg.n_layer, cfg.n_head, cfg.ffn_dim, cfg.grid) == (d, layers, heads, ffn, grid)
    assert (cfg.vocab_size, cfg.num_classes, cfg.block_size) == (16384, 1000, grid * grid)
    info = GPT_PRESET_INFO[name]
    assert info.image_size == int(name.rsplit("_", 1)[1]) == grid * 16
    assert info.tokenizer == "vq_ds16_c2i" and info.imagenet
    assert info.generation_defaults == dict(guidance_scale=4.0, temperature=1.0, top_k=2000, top_p=1.0)
    assert info.fsdp == (name in ("c2i_XXL_384", "c2i_3B_384"))


def test_tokenizer_presets_and_the_old_names():
    assert vq_preset("vq_ds16_c2i").downsample == 16 and vq_preset("vq_ds16_c2i").grid == 16
    assert vq_preset("vq_ds8_c2i").downsample == 8 and vq_preset("vq_ds8_c2i").grid == 32  # 256 px / 8
    assert vq_preset("VQ-16") == vq_preset("vq_ds16_c2i") and vq_preset("VQ-8") == vq_preset("vq_ds8_c2i")
    for old, new in (("GPT-B", "c2i_B_256"), ("GPT-L", "c2i_L_256")):
        assert gpt_preset(old) == gpt_preset(new)
    assert gpt_preset("GPT-XL").grid == 16 and gpt_preset("GPT-Tiny").dim == 64 and gpt_preset("GPT-Digits").grid == 7


@pytest.mark.parametrize("path, preset", [
    ("c2i_XL_384.pt", "c2i_XL_384"), ("/ckpts/c2i_B_256.pt", "c2i_B_256"), ("C2I_xxl_384.PT", "c2i_XXL_384"),
    ("hf://FoundationVision/LlamaGen/c2i_3B_384.pt", "c2i_3B_384"), (r"D:\w\c2i_L_256.safetensors", "c2i_L_256"),
    ("c2i_L_384 (1).pt", "c2i_L_384"),
    ("c2i_XL_512.pt", None), ("t2i_XL_stage1_256.pt", None), ("c2i_B_2560.pt", None), ("gpt.pt", None), (None, None)])
def test_gpt_preset_from_file_name(path, preset):
    assert gpt_preset_for_file(path) == preset


@pytest.mark.parametrize("path, preset", [("vq_ds16_c2i.pt", "vq_ds16_c2i"), ("x/VQ_DS8_C2I.pt", "vq_ds8_c2i"),
                                          ("vq_ds16_t2i.pt", None), ("vq_ds16_c2ix.pt", None), ("vq.pt", None)])
def test_vq_preset_from_file_name(path, preset):
    assert vq_preset_for_file(path) == preset


# --- shapes of every published layout (meta tensors: nothing allocated) ------------------------------
@pytest.mark.parametrize("name", LLAMAGEN)
def test_big_checkpoint_shapes_fit_their_preset(tmp_path, name):
    d, layers, _, ffn, _ = LLAMAGEN[name]
    path = tmp_path / f"{name}.pt"
    # XXL and 3B are FSDP-saved: a flat state dict at the top level; the others under "model"
    state = meta(gpt_shapes(d, ffn, layers))
    torch.save(state if GPT_PRESET_INFO[name].fsdp else {"model": state, "steps": 1}, path)
    shapes = checkpoint_shapes(path)
    assert gpt_dims(shapes) == dict(dim=d, n_layer=layers, vocab_size=16384, num_classes=1000, ffn_dim=ffn)
    check_gpt_shapes(gpt_preset(name), shapes, "x", name)  # fits: no error
    other = "c2i_B_384" if name != "c2i_B_384" and not name.startswith("c2i_B") else "c2i_L_384"
    with pytest.raises(InvalidInputError, match=rf"does not fit --gpt {other}: the checkpoint has dim {d}, "
                                                rf"n_layer {layers}.*LlamaGen's .*{name}.*the preset has dim "
                                                rf"{gpt_preset(other).dim}"):
        check_gpt_shapes(gpt_preset(other), shapes, "x", other)


@pytest.mark.parametrize("name, mult", [("vq_ds16_c2i", (1, 1, 2, 2, 4)), ("vq_ds8_c2i", (1, 2, 2, 4))])
def test_tokenizer_shapes_fit_their_preset(tmp_path, name, mult):
    from safetensors.torch import save_file

    path = tmp_path / f"{name}.safetensors"  # the header alone gives the shapes
    save_file({k: torch.zeros(s) for k, s in vq_shapes(ch=4, mult=mult, z=4, e=2, codes=4, slots=4).items()},
              str(path))
    assert vq_dims(checkpoint_shapes(path))["ch_mult"] == list(mult)
    full = vq_shapes(mult=mult)
    check_vq_shapes(vq_preset(name), full, "x", name)
    other = "vq_ds8_c2i" if name == "vq_ds16_c2i" else "vq_ds16_c2i"
    with pytest.raises(InvalidInputError, match=rf"does not fit --vq {other}: .*ch_mult {re.escape(str(list(mult)))}, "
                                                rf"z_channels 256 \({2 ** (len(mult) - 1)}x downsampling\)"
                                                r".*differing: ch_mult"):
        check_vq_shapes(vq_preset(other), full, "x", other)


# --- inference and mismatch errors through `tessera export` -------------------------------------------
@pytest.fixture()
def files(tmp_path):
    """Named placeholder files: the checks below fail before any weight is read."""
    def make(*names):
        for n in names:
            torch.save({}, tmp_path / n)
        return [str(tmp_path / n) for n in names]
    return make


def test_file_names_pick_both_presets(files, tmp_path):
    from tessera.export.cli import _config  # the config loader resolve() uses
    from tessera.export.presets import resolve

    g, v = files("c2i_XL_384.pt", "vq_ds16_c2i.pt")
    chosen = resolve(None, g, {}, None, v, {}, _config)
    assert (chosen.gpt_preset, chosen.vq_preset, chosen.gpt.grid, chosen.vq.image_size) == \
        ("c2i_XL_384", "vq_ds16_c2i", 24, 384)
    assert chosen.generation_defaults() == LLAMAGEN_SAMPLING and chosen.class_names()[207] == "golden retriever"
    # no --vq and a tokenizer file of another name: the tokenizer the preset was trained on
    chosen = resolve(None, g, {}, None, None, {}, _config)
    assert chosen.vq_preset == "vq_ds16_c2i" and chosen.vq.grid == 24
    # the old pairing of the README, made right: GPT-B with its own 256 px file
    g256, = files("c2i_B_256.pt")
    assert resolve("GPT-B", g256, {}, "VQ-16", v, {}, _config).vq.image_size == 256


@pytest.mark.parametrize("argv, pattern", [
    # a file name that says 384 given a 256 preset (the README's old pairing)
    (["--gpt", "GPT-XL", "--gpt-weights", "{d}/c2i_XL_384.pt", "--vq-weights", "{d}/vq_ds16_c2i.pt"],
     r"c2i_XL_384.pt is LlamaGen's c2i_XL_384 \(384 px: grid 24.*but --gpt GPT-XL has grid 16 "
     r"\(the file needs grid 24\); use --gpt c2i_XL_384"),
    (["--gpt", "c2i_B_256", "--gpt-weights", "{d}/c2i_B_384.pt", "--vq-weights", "{d}/vq_ds16_c2i.pt"],
     r"c2i_B_384.pt is LlamaGen's c2i_B_384.*--gpt c2i_B_256 has grid 16"),
    # the file's size class vs the preset's
    (["--gpt", "c2i_B_256", "--gpt-weights", "{d}/c2i_L_256.pt", "--vq-weights", "{d}/vq_ds16_c2i.pt"],
     r"is LlamaGen's c2i_L_256.*has dim 768, n_layer 12, n_head 12 \(the file needs dim 1024, n_layer 24"),
    # the grid vs the tokenizer's image size
    (["--gpt-weights", "{d}/c2i_B_384.pt", "--vq-weights", "{d}/vq_ds16_c2i.pt", "--vq-set", "image_size=256"],
     r"--gpt c2i_B_384 has grid 24 \(24x24 tokens, 384 px\), but the tokenizer --vq vq_ds16_c2i makes 256 px "
     r"images at 16x downsampling = grid 16; .*image_size=384"),
    # a transformer and a tokenizer whose codes it was not trained on
    (["--gpt-weights", "{d}/c2i_B_256.pt", "--vq-weights", "{d}/vq_ds8_c2i.pt"],
     r"--gpt c2i_B_256 was trained on vq_ds16_c2i's codes, but --vq vq_ds8_c2i is a different tokenizer "
     r"\(8x downsampling"),
    (["--gpt-weights", "{d}/c2i_B_256.pt", "--vq", "vq_ds8_c2i", "--vq-weights", "{d}/vq_ds16_c2i.pt"],
     r"vq_ds16_c2i.pt is LlamaGen's vq_ds16_c2i \(16x downsampling.*but --vq vq_ds8_c2i has ch_mult"),
    # LlamaGen's 3B: head_dim 100, which onnxruntime's GroupQueryAttention does not take
    (["--gpt-weights", "{d}/c2i_3B_384.pt", "--vq-weights", "{d}/vq_ds16_c2i.pt"],
     r"--gpt c2i_3B_384 has head_dim 100 \(dim 3200 / 32 heads\), but --graph fused .*--graph portable"),
    # nothing says the preset
    (["--gpt-weights", "{d}/gpt.pt", "--vq-weights", "{d}/vq_ds16_c2i.pt"],
     r"--gpt not given, and the file name 'gpt.pt' is not one of LlamaGen's or ARPG's checkpoints \(c2i_B_256.*give --gpt"),
    (["--gpt", "GPT-Tiny", "--gpt-weights", "{d}/gpt.pt", "--vq-weights", "{d}/vq.pt"],
     r"--vq not given, and the file name 'vq.pt' is not one of LlamaGen's tokenizers"),
])
def test_mismatches_are_errors_naming_both_sides(tmp_path, files, argv, pattern):
    files("c2i_XL_384.pt", "c2i_3B_384.pt", "c2i_B_384.pt", "c2i_B_256.pt", "c2i_L_256.pt", "vq_ds16_c2i.pt",
          "vq_ds8_c2i.pt",
          "gpt.pt", "vq.pt")
    argv = [a.replace("{d}", str(tmp_path)) for a in argv]
    with pytest.raises(InvalidInputError, match=pattern):
        export(*argv, "--out", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_preset_dims_vs_checkpoint_shapes_is_an_error_before_building(tmp_path):
    """A GPT-L-shaped file (meta tensors: a full-size model would never fit this test) under a neutral
    name, given as GPT-B: the shapes say so before any model is built."""
    torch.save({"model": meta(gpt_shapes(1024, 2816, 24))}, tmp_path / "weights.pt")
    torch.save(meta(vq_shapes()), tmp_path / "vq_ds16_c2i.pt")
    with pytest.raises(InvalidInputError, match=r"--gpt-weights weights.pt does not fit --gpt GPT-B: the checkpoint "
                                                r"has dim 1024, n_layer 24, .*ffn_dim 2816 \(LlamaGen's c2i_L_256 or "
                                                r"c2i_L_384\); the preset has dim 768, n_layer 12.*ffn_dim 2048"):
        export("--gpt", "GPT-B", "--gpt-weights", str(tmp_path / "weights.pt"),
               "--vq-weights", str(tmp_path / "vq_ds16_c2i.pt"), "--out", str(tmp_path / "out"))


# --- loading and exporting small-dims models in LlamaGen's layout ------------------------------------
TINY_GPT = ["--gpt-set", "dim=64", "--gpt-set", "n_layer=2", "--gpt-set", "n_head=1", "--gpt-set", "vocab_size=64"]
TINY_VQ = ["--vq-set", "codebook_size=64", "--vq-set", "codebook_dim=4", "--vq-set", "ch=8", "--vq-set",
           "z_channels=8", "--vq-set", "num_res_blocks=1", "--vq-set", "norm_groups=4", "--vq-set", "usage_slots=64"]


def test_fsdp_flat_state_dict_loads(tmp_path):
    """XXL / 3B files are FSDP full state dicts: the tensors at the top level, plain key names."""
    from tessera.export.build import build_gpt

    cfg = gpt_preset("c2i_3B_384", dim=200, n_layer=2, n_head=2, vocab_size=64)  # head_dim 100, as the 3B
    state = random(gpt_shapes(200, cfg.ffn_dim, 2, vocab=64))
    torch.save(state, tmp_path / "c2i_3B_384.pt")
    check_gpt_shapes(cfg, checkpoint_shapes(tmp_path / "c2i_3B_384.pt"), "x", "c2i_3B_384")
    model = build_gpt(cfg, tmp_path / "c2i_3B_384.pt")
    assert torch.equal(model.layers[1].attention.wqkv.weight, state["layers.1.attention.wqkv.weight"])


def test_384_export_needs_no_preset_flags(tmp_path):
    """c2i_B_384.pt + vq_ds16_c2i.pt (small dims by override, LlamaGen's layout): a 24x24 grid, 384 px,
    the ImageNet names and LlamaGen's sampling defaults in the manifest; names resolve to ids."""
    from tessera.runtime.manifest import load_manifest

    torch.save({"model": random(gpt_shapes(64, 256, 2, vocab=64))}, tmp_path / "c2i_B_384.pt")
    torch.save({"model": random(vq_shapes(ch=8, z=8, e=4, codes=64, res=1, slots=64), seed=1)},
               tmp_path / "vq_ds16_c2i.pt")
    out = export("--gpt-weights", str(tmp_path / "c2i_B_384.pt"), "--vq-weights", str(tmp_path / "vq_ds16_c2i.pt"),
                 *TINY_GPT, *TINY_VQ, "--out", str(tmp_path / "m"))
    data = json.loads((out / "tessera.json").read_text())
    assert data["transformer"]["grid"] == 24 and data["transformer"]["dim"] == 64
    assert data["tokenizer"]["downsample"] == 16  # 24 x 16 = 384 px
    assert data["generation_defaults"] == {"guidance_scale": 4.0, "temperature": 1.0, "top_k": 2000, "top_p": 1.0}
    names = data["classes"]["names"]
    assert names == imagenet_class_names() and names[207] == "golden retriever" and len(set(names)) == 1000
    m = load_manifest(out)
    assert m.spec.image_size == (384, 384)
    assert m.class_id("golden retriever") == 207
    assert m.class_id("  Golden_Retriever ") == m.class_id("GOLDEN  retriever") == 207
    assert m.class_id("Cardigan Welsh corgi") == 264 and m.class_id("cardigan") == 474
    assert m.class_id("207") == 207
    with pytest.raises(Exception, match=r"did you mean: .*207=golden retriever"):
        m.class_id("retriever")
    from tessera.runtime.pipeline import Pipeline

    r = Pipeline.load(out, providers="cpu").generate("golden retriever", seed=0, return_result=True)
    assert r.images[0].size == (384, 384) and r.tokens.reshape(-1).shape == (576,)  # top_k 2000 > 64 codes


def test_imagenet_names_file():
    names = imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[999] == "toilet tissue"
    assert len({n.lower() for n in names}) == 1000  # distinct even ignoring case
    assert all(n == n.strip() and "," not in n and n for n in names)


def test_custom_class_count_and_our_presets(tmp_path, files):
    """A custom class count gets 0..N-1 instead of ImageNet names; our own presets keep the runtime's
    defaults."""
    from tessera.export.cli import _config
    from tessera.export.presets import resolve

    chosen = resolve("c2i_B_256", None, {"num_classes": 10}, None, None, {}, _config)
    assert chosen.class_names() is None and chosen.generation_defaults() == LLAMAGEN_SAMPLING
    assert resolve("GPT-Tiny", None, {}, "VQ-Tiny", None, {}, _config).generation_defaults() == {}
