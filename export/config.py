"""Model dimensions and presets: the one place the export stage defines them.

The exported manifest (`tessera.json`) is built from these dataclasses, so the runtime
never repeats a dimension; it reads them back from the manifest.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from tessera.runtime.errors import ModelDirectoryError
from tessera.runtime.spec import (ANY_ORDER_FAMILY, ARPG_FAMILY, FIX, ImageSpec, ModelSpec, TokenizerSpec, TransformerSpec,
                                  activation_per_pixel)


DEFAULT_OPSET = 18  # ONNX opset of exported graphs (>= 18 lets int4 quantize Gather too)


def find_multiple(n: int, k: int) -> int:
    """Round `n` up to a multiple of `k` (LlamaGen's FFN sizing rule)."""
    return n if n % k == 0 else n + k - (n % k)


@dataclass
class GPTConfig:
    """A class-conditional transformer in LlamaGen's c2i design."""

    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    vocab_size: int = 16384  # image codes (the tokenizer's codebook size)
    num_classes: int = 1000  # + 1 null class (id == num_classes) for guidance
    grid: int = 16  # image tokens per side the model was trained on
    rope_grid: int = 0  # side of the 2D rotary table; 0 -> 2 * grid (room for larger grids)
    rope_base: float = 10000.0
    multiple_of: int = 256
    norm_eps: float = 1e-5
    class_dropout: float = 0.1  # training only: share of labels replaced by the null class
    dropout: float = 0.0  # training only: residual/attention dropout
    order: str = "raster"  # "raster" (LlamaGen), "any" (position queries) or "arpg" (export/arpg.py)
    # ARPG only: the class's rotary row is the identity (the class at the rotary origin, anchoring the grid)
    # instead of LlamaGen's zeros; published ARPG checkpoints use zeros (False).
    anchor_class: bool = False
    # ARPG only: a learned embedding per rotary position added to the mask-token queries. Upstream's
    # queries differ only by their rotation, so a call whose queries read one key (the first call: the
    # class alone) gives every cell the same distribution; this makes them position-aware. False for
    # published ARPG checkpoints.
    query_pos_embed: bool = False

    def __post_init__(self) -> None:
        if self.order not in ("raster", "any", "arpg"):
            raise ValueError(f"order must be 'raster', 'any' or 'arpg', got {self.order!r}")
        if self.dim % self.n_head:
            raise ValueError(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        if self.head_dim % 4:
            raise ValueError(f"head_dim {self.head_dim} must be a multiple of 4 for 2D rotary")
        if (self.anchor_class or self.query_pos_embed) and self.order != "arpg":
            raise ValueError("anchor_class and query_pos_embed are ARPG options")
        if self.rope_grid == 0:
            self.rope_grid = 2 * self.grid
        if self.rope_grid < self.grid:
            raise ValueError(f"rope_grid {self.rope_grid} is smaller than grid {self.grid}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def ffn_dim(self) -> int:
        return find_multiple(int(2 * 4 * self.dim / 3), self.multiple_of)

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def block_size(self) -> int:
        return self.grid * self.grid

    @property
    def query_token(self) -> int | None:
        """Input id of the position query (the row after the null class), any-order models only."""
        return self.vocab_size + self.num_classes + 1 if self.order == "any" else None

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.order == "raster":  # raster configs stay as they were before any-order models existed
            del d["order"]
        for flag in ("anchor_class", "query_pos_embed"):  # ARPG options, written only when set
            if not d[flag]:
                del d[flag]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class VQConfig:
    """A VQ image tokenizer in LlamaGen's VQ design (l2-normalised codebook)."""

    codebook_size: int = 16384
    codebook_dim: int = 8
    ch: int = 128
    ch_mult: tuple = (1, 1, 2, 2, 4)  # len - 1 = number of 2x downsamplings
    z_channels: int = 256
    num_res_blocks: int = 2  # encoder; the decoder uses one more per level, as LlamaGen
    norm_groups: int = 32
    in_channels: int = 3
    image_size: int = 256  # training / default image side (pixels)
    commit_beta: float = 0.25
    entropy_ratio: float = 0.0
    dropout: float = 0.0
    usage_slots: int = 65536  # LlamaGen's `codebook_used` buffer length (kept for strict loading)

    def __post_init__(self) -> None:
        self.ch_mult = tuple(self.ch_mult)
        if self.image_size % self.downsample:
            raise ValueError(f"image_size {self.image_size} is not a multiple of downsample {self.downsample}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid(self) -> int:
        return self.image_size // self.downsample

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VQConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# LlamaGen's transformer sizes (gpt.py: GPT_B ... GPT_3B; vocab 16384, 1000 classes, no biases).
# head_dim 64, except GPT-3B's 100 (3200 / 32).
LLAMAGEN_SIZES: dict[str, dict] = {
    "B": dict(dim=768, n_layer=12, n_head=12),  # 111M
    "L": dict(dim=1024, n_layer=24, n_head=16),  # 343M
    "XL": dict(dim=1280, n_layer=36, n_head=20),  # 775M
    "XXL": dict(dim=1536, n_layer=48, n_head=24),  # 1.4B
    "3B": dict(dim=3200, n_layer=24, n_head=32),  # 3.1B
}

# LlamaGen's sampling defaults (autoregressive/sample/sample_c2i.py): cfg-scale 4.0, top-k 2000,
# temperature 1.0, top-p 1.0, guidance on every step. Recorded as the manifest's generation defaults
# of every LlamaGen preset (--default-* flags override them).
LLAMAGEN_SAMPLING: dict = dict(guidance_scale=4.0, temperature=1.0, top_k=2000, top_p=1.0)


@dataclass(frozen=True)
class PresetInfo:
    """What a preset says beyond its dimensions: LlamaGen's published checkpoint facts."""

    checkpoint: str | None = None  # LlamaGen's file name (without .pt)
    image_size: int | None = None  # pixels per side the checkpoint was trained at
    tokenizer: str | None = None  # the tokenizer preset whose codes it was trained on
    imagenet: bool = False  # 1000 ImageNet classes: the manifest records their names
    generation_defaults: dict | None = None
    fsdp: bool = False  # saved by FSDP: a flat state dict at the top level of the file
    params: str = ""
    fid: float | None = None  # LlamaGen's reported FID-50k (ImageNet at the preset's image size)


# Published class-conditional checkpoints (LlamaGen README): name -> (size, image side, params, FID).
_C2I = {"c2i_B_256": ("B", 256, "111M", 5.46), "c2i_B_384": ("B", 384, "111M", 6.09),
        "c2i_L_256": ("L", 256, "343M", 3.80), "c2i_L_384": ("L", 384, "343M", 3.07),
        "c2i_XL_384": ("XL", 384, "775M", 2.62), "c2i_XXL_384": ("XXL", 384, "1.4B", 2.34),
        "c2i_3B_384": ("3B", 384, "3.1B", 2.18)}

# ARPG's published ImageNet 256 checkpoints (hp-l33/ARPG model zoo, on LlamaGen's VQ-16 codes):
# preset -> (dims, file name, parameters, model-zoo FID at 64 steps, its guidance scale).
ARPG_SIZES: dict[str, tuple[dict, str, str, float, float]] = {
    "ARPG-L": (dict(dim=1024, n_layer=24, n_head=16), "arpg_300m", "320M", 2.44, 4.5),
    "ARPG-XL": (dict(dim=1280, n_layer=36, n_head=20), "arpg_700m", "719M", 2.10, 6.0),
    "ARPG-XXL": (dict(dim=1536, n_layer=48, n_head=24), "arpg_1b", "1.3B", 1.94, 7.5),
}


def arpg_sampling(guidance_scale: float) -> dict:
    """ARPG's model-zoo sampling: 64 steps, arccos schedule, linear guidance schedule, no top-k/top-p."""
    return dict(guidance_scale=guidance_scale, temperature=1.0, top_k=0, top_p=1.0, steps=64, schedule="arccos",
                guidance_schedule="linear")


GPT_PRESETS: dict[str, dict] = {
    # LlamaGen's sizes at 256 px (grid 16); the c2i_* presets below carry the image size too.
    "GPT-B": dict(LLAMAGEN_SIZES["B"]),
    "GPT-L": dict(LLAMAGEN_SIZES["L"]),
    "GPT-XL": dict(LLAMAGEN_SIZES["XL"]),
    **{name: dict(LLAMAGEN_SIZES[size], grid=side // 16) for name, (size, side, _, _) in _C2I.items()},
    # Ours: the shipped MNIST default (7x7 grid, 512 codes, 10 classes).
    "GPT-Digits": dict(dim=192, n_layer=4, n_head=3, vocab_size=512, num_classes=10, grid=7,
                       multiple_of=64, class_dropout=0.1, dropout=0.1),
    # Tiny random-weight model for tests (seconds to export).
    "GPT-Tiny": dict(dim=64, n_layer=2, n_head=4, vocab_size=64, num_classes=10, grid=4, multiple_of=32),
    # ARPG's sizes at 256 px: the rotary table is the trained 16x16 grid (upstream's), no room beyond it.
    **{name: dict(dims, grid=16, rope_grid=16, order="arpg") for name, (dims, *_) in ARPG_SIZES.items()},
    "ARPG-Tiny": dict(dim=64, n_layer=4, n_head=4, vocab_size=64, num_classes=10, grid=4, rope_grid=4,
                      multiple_of=32, order="arpg"),
}

VQ_PRESETS: dict[str, dict] = {
    "vq_ds16_c2i": dict(),  # LlamaGen's 16x tokenizer (72M): 256 px -> 16x16 codes, 384 px -> 24x24
    "vq_ds8_c2i": dict(ch_mult=(1, 2, 2, 4)),  # LlamaGen's 8x tokenizer (70M): 256 px -> 32x32 codes
    "VQ-16": dict(),  # = vq_ds16_c2i
    "VQ-8": dict(ch_mult=(1, 2, 2, 4)),  # = vq_ds8_c2i
    # Ours: 28x28 digits -> 7x7 codes from a 512-entry codebook.
    "VQ-Digits": dict(codebook_size=512, codebook_dim=8, ch=24, ch_mult=(1, 2, 2), z_channels=32,
                      num_res_blocks=1, norm_groups=8, image_size=28, usage_slots=512),
    "VQ-Tiny": dict(codebook_size=64, codebook_dim=4, ch=16, ch_mult=(1, 2, 2), z_channels=16, num_res_blocks=1,
                    norm_groups=4, image_size=16, usage_slots=64),
}

GPT_PRESET_INFO: dict[str, PresetInfo] = {
    **{name: PresetInfo(image_size=256, tokenizer="vq_ds16_c2i", imagenet=True,
                        generation_defaults=LLAMAGEN_SAMPLING) for name in ("GPT-B", "GPT-L", "GPT-XL")},
    **{name: PresetInfo(checkpoint=name, image_size=side, tokenizer="vq_ds16_c2i", imagenet=True,
                        generation_defaults=LLAMAGEN_SAMPLING, fsdp=size in ("XXL", "3B"), params=params, fid=fid)
       for name, (size, side, params, fid) in _C2I.items()},
    **{name: PresetInfo(checkpoint=ckpt, image_size=256, tokenizer="vq_ds16_c2i", imagenet=True,
                        generation_defaults=arpg_sampling(cfg), params=params, fid=fid)
       for name, (_, ckpt, params, fid, cfg) in ARPG_SIZES.items()},
}

# Tokenizers that work at any image size (a convolutional network): with these presets the image
# size follows the transformer's grid (grid x downsample) unless image_size is set explicitly.
VQ_PRESET_INFO: dict[str, PresetInfo] = {
    "vq_ds16_c2i": PresetInfo(checkpoint="vq_ds16_c2i", params="72M"),
    "vq_ds8_c2i": PresetInfo(checkpoint="vq_ds8_c2i", params="70M"),
    "VQ-16": PresetInfo(params="72M"),
    "VQ-8": PresetInfo(params="70M"),
}


def gpt_preset(name: str, **overrides) -> GPTConfig:
    if name not in GPT_PRESETS:
        raise ValueError(f"unknown transformer preset {name!r}; choose one of {sorted(GPT_PRESETS)}")
    return GPTConfig(**{**GPT_PRESETS[name], **overrides})


def vq_preset(name: str, **overrides) -> VQConfig:
    if name not in VQ_PRESETS:
        raise ValueError(f"unknown tokenizer preset {name!r}; choose one of {sorted(VQ_PRESETS)}")
    return VQConfig(**{**VQ_PRESETS[name], **overrides})


# --- the manifest's sections <-> the configs: the one conversion ----------------------------------
# The manifest's `export` section holds what only re-export needs (the runtime never reads it):
# the training fields of the transformer and the tokenizer's architecture. Everything else the
# configs hold is a canonical manifest field (`transformer.*`, `tokenizer.downsample`, `image.channels`).
_EXPORT_TRANSFORMER = {"rope_base": (float, 0.0, 1e12), "multiple_of": (int, 1, 2 ** 20),
                       "norm_eps": (float, 0.0, 1.0), "class_dropout": (float, 0.0, 1.0),
                       "dropout": (float, 0.0, 1.0)}
_EXPORT_TOKENIZER = {"codebook_dim": (int, 1, 65536), "ch": (int, 1, 65536), "ch_mult": (list, 1, 64),
                     "z_channels": (int, 1, 65536), "num_res_blocks": (int, 0, 64), "norm_groups": (int, 1, 65536),
                     "commit_beta": (float, 0.0, 1e6), "entropy_ratio": (float, 0.0, 1e6), "dropout": (float, 0.0, 1.0),
                     "usage_slots": (int, 0, 2 ** 24)}


def manifest_sections(gpt: GPTConfig, vq: VQConfig, gpt_parameters: int | None = None,
                      vq_parameters: int | None = None) -> tuple[TransformerSpec, TokenizerSpec, ImageSpec, dict]:
    """The configs as the manifest's `transformer`, `tokenizer`, `image` and `export` sections."""
    transformer = TransformerSpec(dim=gpt.dim, n_layer=gpt.n_layer, n_head=gpt.n_head, n_kv_head=gpt.n_head,
                                  vocab_size=gpt.vocab_size, num_classes=gpt.num_classes, grid=gpt.grid,
                                  rope_grid=gpt.rope_grid, parameters=gpt_parameters)
    export = {"transformer": {k: getattr(gpt, k) for k in _EXPORT_TRANSFORMER}
              | ({"anchor_class": gpt.anchor_class, "query_pos_embed": gpt.query_pos_embed}
                 if gpt.order == "arpg" else {}),
              "tokenizer": {k: list(v) if isinstance(v, tuple) else v
                            for k, v in ((k, getattr(vq, k)) for k in _EXPORT_TOKENIZER)}}
    return (transformer, TokenizerSpec(downsample=vq.downsample, parameters=vq_parameters,
                                      activation_per_pixel=activation_per_pixel(vq.ch, vq.ch_mult)),
            ImageSpec(channels=vq.in_channels), export)


def configs_from_spec(spec: ModelSpec, where: str = "tessera.json") -> tuple[GPTConfig, VQConfig]:
    """The configs of a model directory for re-export: its canonical fields and its `export` section,
    which is checked here (the runtime does not read it): every field present, of its type and range."""
    def section(key: str, table: dict) -> dict:
        s = spec.export.get(key)
        if key == "transformer" and spec.family == ARPG_FAMILY and isinstance(s, dict):
            table = {**table, "anchor_class": (bool, 0, 1), "query_pos_embed": (bool, 0, 1)}
        if not isinstance(s, dict):
            raise ModelDirectoryError(f"{where}: export.{key} must be an object, got {s!r}; {FIX}")
        out = {}
        for name, (kind, lo, hi) in table.items():
            v = s.get(name)
            if kind is bool:
                ok, want = isinstance(v, bool), "true or false"
            elif kind is list:
                ok = isinstance(v, list) and 1 <= len(v) <= 11 and all(
                    isinstance(c, int) and not isinstance(c, bool) and lo <= c <= hi for c in v)
                want = f"a list of 1..11 ints in {lo}..{hi}"
            else:
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or isinstance(v, int)) \
                    and math.isfinite(v) and lo <= v <= hi
                want = f"{'an int' if kind is int else 'a finite number'} in {lo}..{hi}"
            if not ok:
                raise ModelDirectoryError(f"{where}: export.{key}.{name} must be {want}, got {v!r}; {FIX}")
            out[name] = v
        unknown = sorted(set(s) - set(table))
        if unknown:
            raise ModelDirectoryError(f"{where}: export.{key}.{unknown[0]} is not an export field "
                                      f"(its fields: {', '.join(table)}); {FIX}")
        return out

    t, k = spec.transformer, spec.tokenizer
    if t.n_kv_head != t.n_head:
        raise ModelDirectoryError(f"{where}: transformer.n_kv_head ({t.n_kv_head}) must equal transformer.n_head "
                                  f"({t.n_head}) for a model this exporter builds (no grouped queries); {FIX}")
    train, arch = section("transformer", _EXPORT_TRANSFORMER), section("tokenizer", _EXPORT_TOKENIZER)
    if 2 ** (len(arch["ch_mult"]) - 1) != k.downsample:
        raise ModelDirectoryError(f"{where}: tokenizer.downsample ({k.downsample}) must be 2 ** (len(export.tokenizer."
                                  f"ch_mult) - 1) = {2 ** (len(arch['ch_mult']) - 1)}; {FIX}")
    try:
        gpt = GPTConfig(dim=t.dim, n_layer=t.n_layer, n_head=t.n_head, vocab_size=t.vocab_size,
                        num_classes=t.num_classes, grid=t.grid, rope_grid=t.rope_grid,
                        order={ANY_ORDER_FAMILY: "any", ARPG_FAMILY: "arpg"}.get(spec.family, "raster"), **train)
        vq = VQConfig(codebook_size=t.vocab_size, in_channels=spec.image.channels,
                      image_size=t.grid * k.downsample, **arch)
    except ValueError as e:
        raise ModelDirectoryError(f"{where}: the manifest describes a model this exporter cannot build ({e}); "
                                  f"{FIX}") from None
    return gpt, vq


__all__ = ["GPTConfig", "VQConfig", "GPT_PRESETS", "VQ_PRESETS", "GPT_PRESET_INFO", "VQ_PRESET_INFO",
           "LLAMAGEN_SAMPLING", "LLAMAGEN_SIZES", "ARPG_SIZES", "arpg_sampling", "PresetInfo", "gpt_preset", "vq_preset", "find_multiple",
           "manifest_sections", "configs_from_spec"]
