"""Build PyTorch models from presets / config files and weight files (or an existing model directory)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from tessera.runtime.errors import ModelDirectoryError
from tessera.runtime.manifest import load_manifest
from tessera.runtime.spec import ModelSpec

from .arpg import ARPG
from .checkpoints import load_strict, read_state_dict
from .config import GPTConfig, VQConfig, configs_from_spec, gpt_preset, vq_preset
from .transformer import GPT
from .vq import VQModel


def _parse_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_overrides(items: list[str] | None) -> dict:
    """["num_classes=10", "ch_mult=[1,2,2]"] -> {"num_classes": 10, "ch_mult": [1, 2, 2]}."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = _parse_value(v.strip())
    return out


def gpt_config(spec: str, overrides: dict | None = None) -> GPTConfig:
    """A preset name (GPT-B ...) or a JSON config file."""
    if Path(spec).is_file():
        return GPTConfig.from_dict({**json.loads(Path(spec).read_text()), **(overrides or {})})
    return gpt_preset(spec, **(overrides or {}))


def vq_config(spec: str, overrides: dict | None = None) -> VQConfig:
    if Path(spec).is_file():
        return VQConfig.from_dict({**json.loads(Path(spec).read_text()), **(overrides or {})})
    return vq_preset(spec, **(overrides or {}))


def build_gpt(cfg: GPTConfig, weights: str | Path | None, seed: int = 0) -> GPT | ARPG:
    """The transformer (an ARPG one for `order: arpg`) with `weights`, or seeded random weights when None."""
    if weights is None:  # seed only for random weights: loading must not reset the caller's RNG
        torch.manual_seed(seed)
    model = ARPG(cfg) if cfg.order == "arpg" else GPT(cfg)
    if weights is not None:
        what = f"{'ARPG ' if cfg.order == 'arpg' else ''}transformer ({cfg.dim}d x {cfg.n_layer} layers)"
        load_strict(model, read_state_dict(weights), what=what)
    return model.eval()


def build_vq(cfg: VQConfig, weights: str | Path | None, seed: int = 0) -> VQModel:
    """The tokenizer with `weights`, or seeded random weights when None."""
    if weights is None:
        torch.manual_seed(seed)
    model = VQModel(cfg)
    if weights is not None:
        load_strict(model, read_state_dict(weights), what="VQ tokenizer", optional=("quantize.codebook_used",))
    return model.eval()


def load_run(path: str | Path, kind: str):
    """A training run's result (`config.json` + `gpt.safetensors` or `vq.safetensors`), kind "gpt" or "vq"."""
    path = Path(path)
    if kind == "gpt":
        return build_gpt(gpt_config(str(path / "config.json")), path / "gpt.safetensors")
    return build_vq(vq_config(str(path / "config.json")), path / "vq.safetensors")


def load_model_dir(model_dir: str | Path) -> tuple[GPT | ARPG, VQModel, ModelSpec]:
    """Rebuild the PyTorch models of a model directory exported with its weights (format 2, or 1
    through the runtime's upgrade), and return its spec. The directory is untrusted input:
    `load_manifest` checks that every name it lists is a plain file name inside it and verifies sizes
    and checksums before anything is read; the `export` section is checked by `configs_from_spec`."""
    from .model_dir import ExportError

    manifest = load_manifest(model_dir, verify="full")
    spec = manifest.spec  # validated: types, ranges and cross-checks (tessera.runtime.spec)
    weights = spec.weights
    if not weights:
        raise ExportError(f"{model_dir} was exported without its PyTorch weights (no --include-weights), so it "
                          "cannot be re-exported; export again from the original checkpoints (--gpt-weights, "
                          "--vq-weights) with --include-weights")
    missing = [k for k in ("transformer", "tokenizer") if k not in weights]
    if missing:
        raise ModelDirectoryError(f"{model_dir}: the manifest's 'weights' lacks {' and '.join(missing)}; "
                                  "export again from the original checkpoints with --include-weights")
    root = manifest.root
    absent = [weights[k] for k in ("transformer", "tokenizer") if not (root / weights[k]).is_file()]
    if absent:  # an installed copy leaves the export-only weights out (the runtime does not need them)
        raise ExportError(f"{model_dir} lists its PyTorch weights but {' and '.join(absent)} are not there (an "
                          "installed copy leaves them out); re-export from a copy that has them, e.g. the "
                          "source repository's models/ folder")
    gpt_cfg, vq_cfg = configs_from_spec(spec, str(root / "tessera.json"))
    return build_gpt(gpt_cfg, root / weights["transformer"]), build_vq(vq_cfg, root / weights["tokenizer"]), spec
