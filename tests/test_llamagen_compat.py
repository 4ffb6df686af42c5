"""LlamaGen checkpoints load strictly: GPT-B and VQ-16 state dicts in LlamaGen's key layout.

The expected keys are written out here from LlamaGen's published layout (not derived from our
modules), with random values built in the test: no large files in git.
"""
from __future__ import annotations

import pickle

import pytest
import torch

from llamagen_layout import gpt_shapes, vq_shapes
from tessera.export.checkpoints import CheckpointError, load_strict, read_state_dict


def llamagen_gpt_b() -> dict[str, torch.Tensor]:
    return {k: torch.randn(s) * 0.02 for k, s in gpt_shapes(768, 2048, 12).items()}


def llamagen_vq16() -> dict[str, torch.Tensor]:
    return {k: torch.randn(s) * 0.02 for k, s in vq_shapes().items()}


@pytest.fixture(scope="module")
def gpt_b_state():
    return llamagen_gpt_b()


@pytest.mark.parametrize("wrap", ["model", "module", "state_dict", None])
def test_gpt_b_pt_checkpoint_loads_strictly(tmp_path, gpt_b_state, wrap):
    from tessera.export.build import build_gpt
    from tessera.export.config import gpt_preset

    path = tmp_path / "c2i_B_256.pt"
    torch.save({wrap: gpt_b_state, "epoch": 5} if wrap else gpt_b_state, path)
    model = build_gpt(gpt_preset("GPT-B"), path)
    assert torch.equal(model.layers[11].feed_forward.w2.weight, gpt_b_state["layers.11.feed_forward.w2.weight"])
    assert model.num_params() == sum(t.numel() for t in gpt_b_state.values())


def test_vq16_checkpoint_loads_strictly_and_decodes(tmp_path):
    from safetensors.torch import save_file

    from tessera.export.build import build_vq
    from tessera.export.config import vq_preset

    state = llamagen_vq16()
    path = tmp_path / "vq_ds16_c2i.safetensors"
    save_file(state, str(path))
    vq = build_vq(vq_preset("VQ-16"), path)
    assert torch.equal(vq.decoder.conv_blocks[3].upsample.conv.weight,
                       state["decoder.conv_blocks.3.upsample.conv.weight"])
    with torch.no_grad():
        assert vq.decode_codes(torch.zeros(1, 2, 2, dtype=torch.long)).shape == (1, 3, 32, 32)


def test_mismatched_checkpoint_lists_every_problem(tmp_path, gpt_b_state):
    from tessera.export.build import build_gpt
    from tessera.export.config import gpt_preset

    bad = dict(gpt_b_state)
    del bad["norm.weight"]
    bad["extra.weight"] = torch.zeros(1)
    bad["output.weight"] = torch.zeros(1000, 768)
    path = tmp_path / "bad.pt"
    torch.save({"model": bad}, path)
    with pytest.raises(CheckpointError) as err:
        build_gpt(gpt_preset("GPT-B"), path)
    msg = str(err.value)
    assert "missing (1): norm.weight" in msg
    assert "unexpected (1): extra.weight" in msg
    assert "output.weight: checkpoint (1000, 768) vs model (16384, 768)" in msg


class Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": Evil()}}, f)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_state_dict(path)
    assert "pickled code ran" not in capsys.readouterr().out


def test_missing_or_corrupt_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_state_dict(tmp_path / "junk.safetensors")


def test_load_strict_accepts_exact_match():
    from tessera.export.config import gpt_preset
    from tessera.export.transformer import GPT

    a, b = GPT(gpt_preset("GPT-Tiny")), GPT(gpt_preset("GPT-Tiny"))
    load_strict(b, a.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.uint8, torch.complex64])
def test_checkpoint_tensors_that_are_not_floats_are_refused_not_cast(tmp_path, capsys, dtype):
    """A bool / integer / complex tensor where the model holds float weights is another quantity, not a
    precision: it was once cast to float32 and exported without a word."""
    from safetensors.torch import save_file

    from tessera.cli.main import main
    from tessera.export.build import build_gpt, build_vq
    from tessera.export.config import gpt_preset, vq_preset

    gpt = build_gpt(gpt_preset("GPT-Tiny"), None, seed=0)
    state = {k: v.clone() for k, v in gpt.state_dict().items()}
    state["norm.weight"] = (state["norm.weight"] > 0).to(dtype)
    if dtype is torch.complex64:  # safetensors has no complex type: a torch checkpoint
        path = tmp_path / "gpt.pt"
        torch.save(state, path)
    else:
        path = tmp_path / "gpt.safetensors"
        save_file(state, str(path))
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(CheckpointError, match=rf"dtype mismatch .*norm.weight: checkpoint {name} vs model float32"):
        build_gpt(gpt_preset("GPT-Tiny"), path)
    vq = tmp_path / "vq.safetensors"
    save_file(build_vq(vq_preset("VQ-Tiny"), None, seed=0).state_dict(), str(vq))
    out = tmp_path / "out"
    assert main(["export", "--gpt", "GPT-Tiny", "--vq", "VQ-Tiny", "--gpt-weights", str(path), "--vq-weights",
                 str(vq), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tessera: error: ") and f"norm.weight: checkpoint {name} vs model float32" in err
    assert not out.exists()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_checkpoints_in_another_float_precision_load(tmp_path, dtype):
    from safetensors.torch import save_file

    from tessera.export.build import build_gpt
    from tessera.export.config import gpt_preset

    state = {k: v.to(dtype) for k, v in build_gpt(gpt_preset("GPT-Tiny"), None, seed=0).state_dict().items()}
    save_file(state, str(tmp_path / "gpt.safetensors"))
    gpt = build_gpt(gpt_preset("GPT-Tiny"), tmp_path / "gpt.safetensors")
    assert all(v.dtype == torch.float32 for v in gpt.state_dict().values())
    assert torch.equal(gpt.state_dict()["norm.weight"], state["norm.weight"].float())
