"""LlamaGen GPT-B + VQ-16 checkpoints with seeded random weights, for the benchmarks that load LlamaGen files.

Our modules share LlamaGen's state-dict key names, so the models built from the presets are saved as
LlamaGen saves them (`{"model": state_dict}`, torch's zip format) under the published file names, and an
export infers its presets from the names as a user's would. The initialisations are the real models'
scales (linear and embedding weights N(0, 0.02) as LlamaGen's init; convolutions and GroupNorm at
PyTorch's defaults), so a decoded image spans about [-2, 2] like a trained one's instead of collapsing
to 0, which would make any PSNR look good.
"""
from __future__ import annotations

from pathlib import Path

GPT_B, VQ_16 = "c2i_B_256.pt", "vq_ds16_c2i.pt"


def write_checkpoints(folder: Path) -> dict[str, int]:
    """FOLDER/c2i_B_256.pt and FOLDER/vq_ds16_c2i.pt (kept when already there) -> their sizes in bytes."""
    import torch

    from tessera.export.build import build_gpt, build_vq
    from tessera.export.config import gpt_preset, vq_preset

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, build in ((GPT_B, lambda: build_gpt(gpt_preset("c2i_B_256"), None, seed=0)),
                        (VQ_16, lambda: build_vq(vq_preset("vq_ds16_c2i"), None, seed=0))):
        if not (folder / name).is_file():
            torch.save({"model": build().state_dict()}, folder / name)
    return {name: (folder / name).stat().st_size for name in (GPT_B, VQ_16)}  # fp32 tensors + a small zip header


def export_args(folder: Path) -> list[str]:
    """`tessera export` arguments that load the two checkpoints of FOLDER."""
    return ["--gpt-weights", str(Path(folder) / GPT_B), "--vq-weights", str(Path(folder) / VQ_16)]
