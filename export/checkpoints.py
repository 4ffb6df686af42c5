"""Load weights from `.safetensors` or LlamaGen `.pt` files, strictly and without running pickled code."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from .errors import ExportError

# LlamaGen keeps weights under one of these keys, or at the top level.
_NESTED_KEYS = ("model", "module", "state_dict", "ema")


class CheckpointError(ExportError, ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from e
    try:
        obj = _torch_load(path)
    except Exception as e:
        raise CheckpointError(
            f"{path} could not be loaded with weights_only=True ({type(e).__name__}: {e}). "
            "Only plain tensor checkpoints are accepted; convert others to .safetensors."
        ) from e
    if isinstance(obj, dict):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict (expected tensors under {_NESTED_KEYS} or top level)")
    return obj


# Classes a checkpoint may pickle besides tensors and plain containers: ARPG's training files store
# their `argparse.Namespace` of arguments next to the weights. Exactly these, never arbitrary pickles.
SAFE_CLASSES = (argparse.Namespace,)


def safe_load(path: Path, mmap: bool):
    """`torch.load(weights_only=True)` that also accepts `SAFE_CLASSES`."""
    with torch.serialization.safe_globals(list(SAFE_CLASSES)):
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)


def _torch_load(path: Path):
    """Memory-mapped where the file allows it (torch's zip format): tensors stay in the page cache
    until used, and `load_strict` hands them to the model without a second copy (export peak memory)."""
    try:
        return safe_load(path, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):  # a legacy (pre-zip) file cannot be mapped: read it whole
            raise
        return safe_load(path, mmap=False)


def convertible(source: torch.dtype, target: torch.dtype) -> bool:
    """Whether a checkpoint tensor of `source` may be loaded into a model tensor of `target`: the same
    dtype, or one real float precision into another (fp16 / bf16 / fp64 checkpoints into fp32). A bool,
    integer or complex tensor where the model holds floats (or the reverse) is a different quantity,
    not a precision: casting it would export garbage weights without a word."""
    if source == target:
        return True
    return source.is_floating_point and target.is_floating_point  # complex dtypes are not floating point


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], what: str = "model",
                optional: tuple[str, ...] = ()) -> None:
    """Load `state` into `model`, or raise one error listing every missing, unexpected and mis-shaped key.

    Keys in `optional` may be absent from the checkpoint (e.g. bookkeeping buffers).
    """
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}  # torch.compile prefix
    own = model.state_dict()
    missing = [k for k in own if k not in state and k not in optional]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    dtypes = [f"{k}: checkpoint {str(state[k].dtype).removeprefix('torch.')} vs model "
              f"{str(own[k].dtype).removeprefix('torch.')}" for k in own if k in state
              and not convertible(state[k].dtype, own[k].dtype)]
    if missing or unexpected or shapes or dtypes:
        lines = [f"checkpoint does not match the {what}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes),
                             ("dtype mismatch (only float precisions convert)", dtypes)):
            if items:
                shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
                lines.append(f"  {title} ({len(items)}): " + "; ".join(shown))
        lines.append("  Check the preset / config (dimensions, vocab, classes) against the checkpoint.")
        raise CheckpointError("\n".join(lines))
    # assign: the model takes the checkpoint's tensors (converted only where the dtype differs)
    # instead of copying them into its freshly initialised ones, which are freed one by one.
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False, assign=True)
