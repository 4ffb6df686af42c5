"""Which preset a checkpoint is, and whether the presets, file names and tensor shapes agree.

LlamaGen's checkpoints do not store their grid (the rotary table is computed, not saved): a 384 px
checkpoint has the same keys and shapes as a 256 px one. The file name (`c2i_XL_384.pt`) and the
tokenizer's image size are what tell them apart, so this module reads the name, picks the preset
when no --gpt / --vq is given, and turns every disagreement it can see (the name vs the preset,
the grid vs the tokenizer's image size, the preset's dimensions vs the checkpoint's tensor shapes)
into one error that names both sides. It never guesses.

torch-free except `checkpoint_shapes` on a `.pt` file (imported there).
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from .config import GPT_PRESET_INFO, GPT_PRESETS, VQ_PRESET_INFO, VQ_PRESETS, GPTConfig, PresetInfo, VQConfig
from .errors import InvalidInputError

IMAGENET_CLASSES = Path(__file__).with_name("data") / "imagenet_classes.txt"

_GPT_NAME = re.compile(r"(?<![A-Za-z0-9])c2i_(B|L|XL|XXL|3B)_(256|384)(?![0-9])", re.IGNORECASE)
_ARPG_NAME = re.compile(r"(?<![A-Za-z0-9])arpg_(300m|700m|1b)(?![A-Za-z0-9])", re.IGNORECASE)
_VQ_NAME = re.compile(r"(?<![A-Za-z0-9])vq_ds(8|16)_c2i(?![A-Za-z0-9])", re.IGNORECASE)
_GPT_DIMS = ("dim", "n_layer", "n_head")  # what a file name fixes besides the grid
_VQ_DIMS = ("codebook_size", "codebook_dim", "ch", "ch_mult", "z_channels")


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names (export/data/imagenet_classes.txt; source in data/README.md)."""
    names = IMAGENET_CLASSES.read_text(encoding="utf-8").splitlines()
    assert len(names) == 1000, f"{IMAGENET_CLASSES} must hold 1000 names, holds {len(names)}"
    return names


def _file_name(path: str | None) -> str:
    """The last component of a path or a hub address (hf://owner/repo/c2i_B_256.pt)."""
    return re.split(r"[\\/]", str(path).rstrip("/\\"))[-1] if path else ""


def gpt_preset_for_file(path: str | None) -> str | None:
    """`c2i_XL_384.pt` (any folder, any suffix) -> "c2i_XL_384", `arpg_300m.pt` -> "ARPG-L"; None for
    names LlamaGen and ARPG did not publish."""
    a = _ARPG_NAME.search(_file_name(path))
    if a:
        return {"300m": "ARPG-L", "700m": "ARPG-XL", "1b": "ARPG-XXL"}[a.group(1).lower()]
    m = _GPT_NAME.search(_file_name(path))
    if not m:
        return None
    size = {"b": "B", "l": "L", "xl": "XL", "xxl": "XXL", "3b": "3B"}[m.group(1).lower()]
    return f"c2i_{size}_{m.group(2)}"


def vq_preset_for_file(path: str | None) -> str | None:
    """`vq_ds16_c2i.pt` -> "vq_ds16_c2i"; None for other names."""
    m = _VQ_NAME.search(_file_name(path))
    return f"vq_ds{m.group(1)}_c2i" if m else None


def _describe_gpt(c: GPTConfig) -> str:
    return (f"grid {c.grid} ({c.grid}x{c.grid} tokens), dim {c.dim}, {c.n_layer} layers, {c.n_head} heads, "
            f"vocab {c.vocab_size}, {c.num_classes} classes")


def _describe_vq(c: VQConfig) -> str:
    return (f"{c.downsample}x downsampling (ch_mult {list(c.ch_mult)}), codebook {c.codebook_size}x"
            f"{c.codebook_dim}, ch {c.ch}, z_channels {c.z_channels}")


@dataclass
class Resolved:
    gpt: GPTConfig
    vq: VQConfig
    gpt_preset: str | None  # the preset name the transformer config came from (None: a config file)
    vq_preset: str | None

    @property
    def info(self) -> PresetInfo:
        return GPT_PRESET_INFO.get(self.gpt_preset or "", PresetInfo())

    def generation_defaults(self) -> dict:
        return dict(self.info.generation_defaults or {})

    def class_names(self) -> list[str] | None:
        """ImageNet names for an ImageNet preset that still has 1000 classes, else None (0..N-1)."""
        return imagenet_class_names() if self.info.imagenet and self.gpt.num_classes == 1000 else None


def resolve(gpt: str | None, gpt_weights: str | None, gpt_overrides: dict,
            vq: str | None, vq_weights: str | None, vq_overrides: dict, load_config) -> Resolved:
    """--gpt/--vq (or the presets the weight file names imply) + overrides -> checked configs.

    `load_config(spec, overrides, cls, presets, flag)` builds a config from a preset name or a JSON
    file (export/cli.py's `_config`, which reports its own errors).
    """
    gname, vname = gpt_preset_for_file(gpt_weights), vq_preset_for_file(vq_weights)
    published = ", ".join([n for n in GPT_PRESET_INFO if n.startswith("c2i")]
                          + [f"{i.checkpoint} ({n})" for n, i in GPT_PRESET_INFO.items() if n.startswith("ARPG")])
    if gpt is None:
        if gname is None:
            raise InvalidInputError(
                "--gpt not given, and " + (f"the file name {_file_name(gpt_weights)!r} is not one of LlamaGen's or "
                                           f"ARPG's checkpoints ({published})"
                                           if gpt_weights else "no --gpt-weights file names a preset")
                + "; give --gpt PRESET|CONFIG.json")
        gpt = gname
    gcfg = load_config(gpt, gpt_overrides, GPTConfig, GPT_PRESETS, "--gpt")
    gpt_is_preset = gpt in GPT_PRESETS and not Path(gpt).is_file()
    if vq is None:
        vq = vname or GPT_PRESET_INFO.get(gpt if gpt_is_preset else "", PresetInfo()).tokenizer
        if vq is None:
            raise InvalidInputError(
                "--vq not given, and " + (f"the file name {_file_name(vq_weights)!r} is not one of LlamaGen's "
                                          "tokenizers (vq_ds16_c2i, vq_ds8_c2i)" if vq_weights
                                          else f"--gpt {gpt} does not name the tokenizer it was trained with")
                + "; give --vq PRESET|CONFIG.json")
    vq_is_preset = vq in VQ_PRESETS and not Path(vq).is_file()
    if vq_is_preset and vq in VQ_PRESET_INFO and "image_size" not in vq_overrides:
        # a convolutional tokenizer works at any size: it follows the transformer's grid
        downsample = 2 ** (len(vq_overrides.get("ch_mult", VQ_PRESETS[vq].get("ch_mult", VQConfig.ch_mult))) - 1)
        vq_overrides = {**vq_overrides, "image_size": gcfg.grid * downsample}
    vcfg = load_config(vq, vq_overrides, VQConfig, VQ_PRESETS, "--vq")

    if gname is not None:
        want = GPTConfig(**GPT_PRESETS[gname])
        fields = ("grid",) + tuple(k for k in _GPT_DIMS if k not in gpt_overrides)
        bad = [k for k in fields if getattr(gcfg, k) != getattr(want, k)]
        if bad:
            side = GPT_PRESET_INFO[gname].image_size
            who = "ARPG's" if want.order == "arpg" else "LlamaGen's"
            raise InvalidInputError(
                f"--gpt-weights {_file_name(gpt_weights)} is {who} {gname} ({side} px: {_describe_gpt(want)}), "
                f"but --gpt {gpt} has {', '.join(f'{k} {getattr(gcfg, k)}' for k in bad)} "
                f"(the file needs {', '.join(f'{k} {getattr(want, k)}' for k in bad)}); use --gpt {gname} or leave "
                "--gpt out (if the file name is wrong, rename the file)")
    if vname is not None:
        want = VQConfig(**VQ_PRESETS[vname])
        bad = [k for k in _VQ_DIMS if k not in vq_overrides and getattr(vcfg, k) != getattr(want, k)]
        if "ch_mult" in vq_overrides and vcfg.downsample != want.downsample:
            bad.append("ch_mult")
        if bad:
            raise InvalidInputError(
                f"--vq-weights {_file_name(vq_weights)} is LlamaGen's {vname} ({_describe_vq(want)}), but --vq {vq} "
                f"has {', '.join(f'{k} {getattr(vcfg, k)}' for k in bad)}; use --vq {vname} or leave --vq out")
    check_pair(gcfg, vcfg, gpt if gpt_is_preset else None, vq)
    return Resolved(gcfg, vcfg, gpt if gpt_is_preset else None, vq if vq_is_preset else None)


def check_pair(gcfg: GPTConfig, vcfg: VQConfig, gpt_preset: str | None, vq: str) -> None:
    """The transformer's grid against the tokenizer's image size; a LlamaGen transformer against the
    tokenizer whose codes it was trained on."""
    info = GPT_PRESET_INFO.get(gpt_preset or "", PresetInfo())
    who = f"--gpt {gpt_preset}" if gpt_preset else "the transformer"
    alias = {"VQ-16": "vq_ds16_c2i", "VQ-8": "vq_ds8_c2i"}.get(vq, vq)
    if info.tokenizer and alias in VQ_PRESET_INFO and alias != info.tokenizer:
        raise InvalidInputError(f"{who} was trained on {info.tokenizer}'s codes, but --vq {vq} is a different "
                                f"tokenizer ({_describe_vq(vcfg)}); use --vq {info.tokenizer}")
    if gcfg.grid * vcfg.downsample != vcfg.image_size:
        raise InvalidInputError(
            f"{who} has grid {gcfg.grid} ({gcfg.grid}x{gcfg.grid} tokens"
            + (f", {info.image_size} px" if info.image_size == gcfg.grid * 16 else "")
            + f"), but the tokenizer --vq {vq} makes "
            f"{vcfg.image_size} px images at {vcfg.downsample}x downsampling = grid {vcfg.grid}; set the tokenizer's "
            f"image size to {gcfg.grid * vcfg.downsample} (--vq-set image_size={gcfg.grid * vcfg.downsample}) or "
            "pick the preset of the other resolution")


def check_graph(gcfg: GPTConfig, graph: str, preset: str | None) -> None:
    """onnxruntime's GroupQueryAttention (the fused graph) takes head sizes that are multiples of 8;
    LlamaGen's 3B has 100 (3200 / 32 heads)."""
    if graph == "fused" and gcfg.head_dim % 8:
        raise InvalidInputError(
            f"{f'--gpt {preset}' if preset else 'the transformer'} has head_dim {gcfg.head_dim} (dim {gcfg.dim} / "
            f"{gcfg.n_head} heads), but --graph fused uses onnxruntime's GroupQueryAttention, which needs a "
            "multiple of 8; export it with --graph portable")


# --- tensor shapes ---------------------------------------------------------------------------------
_NESTED_KEYS = ("model", "module", "state_dict", "ema")  # as checkpoints.read_state_dict


def checkpoint_shapes(path: str | Path) -> dict[str, tuple[int, ...]] | None:
    """Every tensor's shape, without reading the weights (a safetensors header; a `.pt` file through
    torch's memory map). None when the file cannot be read that way: loading reports that later."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            with open(path, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                if n > 100_000_000:
                    return None
                header = json.loads(f.read(n))
            return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
        from .checkpoints import safe_load

        obj = safe_load(path, mmap=True)
    except Exception:
        return None
    if isinstance(obj, dict):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        return None
    return {str(k): tuple(v.shape) for k, v in obj.items() if hasattr(v, "shape")}


def _strip(shapes: dict) -> dict:
    return {k.removeprefix("_orig_mod."): tuple(v) for k, v in shapes.items()}


def gpt_dims(shapes: dict) -> dict | None:
    """LlamaGen (or ARPG) transformer dimensions read off its state dict's shapes (n_head is not in them)."""
    s = _strip(shapes)
    if "embeddings.weight" in s:
        return arpg_dims(s)
    try:
        vocab, dim = s["tok_embeddings.weight"]
        rows = s["cls_embedding.embedding_table.weight"][0]
        ffn = s["layers.0.feed_forward.w1.weight"][0]
    except (KeyError, ValueError, IndexError):
        return None
    layers = len({k.split(".")[1] for k in s if k.startswith("layers.") and k.endswith(".attention.wqkv.weight")})
    return dict(dim=dim, n_layer=layers, vocab_size=vocab, num_classes=rows - 1, ffn_dim=ffn)


def arpg_dims(s: dict) -> dict | None:
    """ARPG's dimensions: its one table holds codes, the mask token, classes, the null class, a drop token."""
    try:
        rows, dim = s["embeddings.weight"]
        vocab = s["head.weight"][0]
        ffn = s["layers.self_dec.0.ffn.w1.weight"][0]
    except (KeyError, ValueError, IndexError):
        return None
    half = len({k.split(".")[2] for k in s if k.startswith("layers.self_dec.") and k.endswith(".attn.to_q.weight")})
    return dict(dim=dim, n_layer=2 * half, vocab_size=vocab, num_classes=rows - vocab - 3, ffn_dim=ffn)


def vq_dims(shapes: dict) -> dict | None:
    """LlamaGen tokenizer dimensions read off its state dict's shapes."""
    s = _strip(shapes)
    try:
        codebook_size, codebook_dim = s["quantize.embedding.weight"]
        z_channels = s["post_quant_conv.weight"][0]
        ch = s["encoder.conv_in.weight"][0]
        levels = len({k.split(".")[2] for k in s if k.startswith("encoder.conv_blocks.")})
        mult = [s[f"encoder.conv_blocks.{i}.res.0.conv1.weight"][0] // ch for i in range(levels)]
    except (KeyError, ValueError, IndexError, ZeroDivisionError):
        return None
    return dict(codebook_size=codebook_size, codebook_dim=codebook_dim, ch=ch, ch_mult=mult, z_channels=z_channels)


def _same_size(d: dict) -> str:
    hits = [n for n, p in GPT_PRESETS.items() if n in GPT_PRESET_INFO and n.startswith("c2i")
            and (c := GPTConfig(**p)).dim == d["dim"] and c.n_layer == d["n_layer"] and c.ffn_dim == d["ffn_dim"]]
    llamagen = hits and d["vocab_size"] == 16384 and d["num_classes"] == 1000
    return f" (LlamaGen's {' or '.join(hits)})" if llamagen else ""


def check_gpt_shapes(cfg: GPTConfig, shapes: dict | None, what: str, preset: str) -> None:
    """The config's dimensions against a checkpoint's shapes: one error naming both, or nothing (also
    when the shapes are not LlamaGen's layout: strict loading then lists every key)."""
    d = gpt_dims(shapes or {})
    if d is None:
        return
    want = dict(dim=cfg.dim, n_layer=cfg.n_layer, vocab_size=cfg.vocab_size, num_classes=cfg.num_classes,
                ffn_dim=cfg.ffn_dim)
    bad = [k for k in want if want[k] != d[k]]
    if bad:
        raise InvalidInputError(
            f"{what} does not fit --gpt {preset}: the checkpoint has "
            + ", ".join(f"{k} {d[k]}" for k in want) + _same_size(d) + "; the preset has "
            + ", ".join(f"{k} {want[k]}" for k in want) + f" (differing: {', '.join(bad)})")


def check_vq_shapes(cfg: VQConfig, shapes: dict | None, what: str, preset: str) -> None:
    d = vq_dims(shapes or {})
    if d is None:
        return
    want = dict(codebook_size=cfg.codebook_size, codebook_dim=cfg.codebook_dim, ch=cfg.ch,
                ch_mult=list(cfg.ch_mult), z_channels=cfg.z_channels)
    bad = [k for k in want if want[k] != d[k]]
    if bad:
        raise InvalidInputError(
            f"{what} does not fit --vq {preset}: the checkpoint has " + ", ".join(f"{k} {d[k]}" for k in want)
            + f" ({2 ** (len(d['ch_mult']) - 1)}x downsampling); the preset has "
            + ", ".join(f"{k} {want[k]}" for k in want) + f" (differing: {', '.join(bad)})")


__all__ = ["Resolved", "resolve", "check_pair", "check_graph", "gpt_preset_for_file", "vq_preset_for_file",
           "imagenet_class_names",
           "checkpoint_shapes", "gpt_dims", "vq_dims", "check_gpt_shapes", "check_vq_shapes", "IMAGENET_CLASSES"]
