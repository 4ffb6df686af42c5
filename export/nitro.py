"""Nitro-AR (AMD's masked autoregressive text-to-image model) in PyTorch, for export and as the reference.

Two published variants share one transformer shape (MMDiT-style joint attention over the image cells
and the prompt's tokens, bidirectional, blocks in three stages at full, 1/2 + 1/4 and full resolution):

- `gan` (Nitro-AR-512px-GAN): LayerNorm blocks; a per-cell flow head (an MLP with AdaLN, as in MAR)
  turns each decided cell's hidden state into a 32-channel latent token in a few Euler steps;
- `joint_gan` (Nitro-AR-512px-Joint-GAN): RMSNorm blocks; a global head draws one token from the first
  stage's output on a single mask token, then the transformer runs once on that token tiled over the
  grid and a transformer head (attention over all cells, per-cell AdaLN) denoises every cell jointly.

The modules here are written from the published description and checked against AMD's code read
locally (not in CI); their state-dict keys are the checkpoints' keys, loaded strictly. `sample` is the
sampling loop in PyTorch, fp32, with the generation order and the head noise passed in, so the ONNX
loop of the runtime (runtime/nitro.py) can be compared with it exactly.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tessera.runtime.nitro import flow_schedule, maskgit_counts  # noqa: F401 (the loop's schedules)

from .errors import ExportError

VARIANTS = ("gan", "joint_gan")


@dataclass(frozen=True)
class NitroConfig:
    """The shape of a Nitro-AR model. The defaults are the published 512 px models."""

    variant: str = "gan"
    dim: int = 768  # transformer width
    n_head: int = 24  # transformer heads (head size dim // n_head = 32)
    stages: tuple[int, int, int] = (4, 16, 4)  # blocks at full, reduced, full resolution
    latent_channels: int = 32  # one cell of the DC-AE f32c32 latent
    grid: int = 16  # cells per side (512 px / 32)
    text_dim: int = 2048  # the text encoder's hidden size (Llama-3.2-1B)
    text_tokens: int = 128  # prompts padded / truncated to this many tokens
    mlp_mult: int = 3  # transformer feed-forward width = mlp_mult x dim
    head_width: int = 768
    head_depth: int = 8
    head_heads: int = 12  # joint_gan's transformer head (head size 64)
    head_mlp: int = 2048  # joint_gan's transformer head: SwiGLU hidden width (int(width * 4 * 2 / 3))
    pos_embed_max: int = 96  # the sin-cos table is cropped from a pos_embed_max^2 grid (SD3's scheme)
    num_train_timesteps: int = 1000  # the flow scheduler the heads were trained with
    shift: float = 1.0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ExportError(f"Nitro-AR variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.grid % 4 or self.grid > self.pos_embed_max:
            raise ExportError(f"Nitro-AR grid must be a multiple of 4 and at most {self.pos_embed_max}, "
                              f"got {self.grid}")
        if self.dim % self.n_head or self.head_width % self.head_heads or self.dim % 16:
            raise ExportError("Nitro-AR dim must divide by n_head and by 16, head_width by head_heads")

    @property
    def cells(self) -> int:
        return self.grid * self.grid

    @property
    def rms(self) -> bool:
        return self.variant == "joint_gan"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stages"] = list(self.stages)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NitroConfig":
        d = dict(d)
        if "stages" in d:
            d["stages"] = tuple(d["stages"])
        return cls(**d)


NITRO_PRESETS = {
    "Nitro-AR-512px-GAN": NitroConfig(variant="gan"),
    "Nitro-AR-512px-Joint-GAN": NitroConfig(variant="joint_gan"),
}
# Small configs of the same code paths, for tests and CI.
NITRO_TEST_PRESETS = {
    "nitro-test-gan": NitroConfig(variant="gan", dim=64, n_head=4, stages=(1, 2, 1), grid=8, text_dim=48,
                                  text_tokens=16, head_width=64, head_depth=2, head_heads=2, head_mlp=96),
    "nitro-test-joint": NitroConfig(variant="joint_gan", dim=64, n_head=4, stages=(1, 2, 1), grid=8, text_dim=48,
                                    text_tokens=16, head_width=64, head_depth=2, head_heads=2, head_mlp=96),
}
_NAME = re.compile(r"(?<![A-Za-z0-9])Nitro-AR-512px-(Joint-GAN|GAN)(?![A-Za-z0-9])", re.IGNORECASE)


def nitro_preset_for_file(path: str | None) -> str | None:
    """`.../Nitro-AR-512px-Joint-GAN.safetensors` -> "Nitro-AR-512px-Joint-GAN"; None for other names."""
    m = _NAME.search(re.split(r"[\\/]", str(path or "").rstrip("/\\"))[-1])
    if not m:
        return None
    return "Nitro-AR-512px-Joint-GAN" if m.group(1).lower() == "joint-gan" else "Nitro-AR-512px-GAN"


# --- building blocks ------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """x / rms(x) * weight (eps 1e-6), computed in fp32 as the checkpoints' code does."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps))).to(x.dtype)


def _norm(cfg: NitroConfig, dim: int, affine: bool = True, eps: float = 1e-6) -> nn.Module:
    """The block norm of each variant: RMSNorm (always with a weight) for joint_gan, LayerNorm for gan."""
    return RMSNorm(dim) if cfg.rms else nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)


def sincos_2d(dim: int, grid: int, base: int, scale: float, table: int) -> np.ndarray:
    """SD3's fixed 2D sin-cos positions: a `table` x `table` grid with coordinates i / (table / base) / scale,
    cropped to the central `grid` x `grid`; per cell [column embedding | row embedding], each [sin | cos]."""
    coords = np.arange(table, dtype=np.float32) / (table / base) / scale
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))

    def one(pos):
        out = np.outer(pos.reshape(-1).astype(np.float64), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    cols, rows = np.meshgrid(coords, coords, indexing="xy")  # cols[i, j] = coords[j], rows[i, j] = coords[i]
    emb = np.concatenate([one(cols), one(rows)], axis=1).reshape(table, table, dim)
    top = (table - grid) // 2
    return emb[top:top + grid, top:top + grid].reshape(grid * grid, dim).astype(np.float32)


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """[cos | sin] of t x geometric frequencies (DiT's timestep features; t in 0..1000, fractional allowed)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t))


class JointAttention(nn.Module):
    """One attention over [image cells ; text tokens], separate projections per stream, RMS qk-norm per head.
    Key names follow the checkpoints (diffusers' Attention with added_kv_proj_dim)."""

    def __init__(self, dim: int, heads: int, context_out: bool):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.add_q_proj, self.add_k_proj, self.add_v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.norm_q, self.norm_k = RMSNorm(self.head_dim), RMSNorm(self.head_dim)
        self.norm_added_q, self.norm_added_k = RMSNorm(self.head_dim), RMSNorm(self.head_dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.to_add_out = nn.Linear(dim, dim) if context_out else None

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, c: torch.Tensor):
        n = x.shape[1]
        q = torch.cat([self.norm_q(self._split(self.to_q(x))), self.norm_added_q(self._split(self.add_q_proj(c)))], 2)
        k = torch.cat([self.norm_k(self._split(self.to_k(x))), self.norm_added_k(self._split(self.add_k_proj(c)))], 2)
        v = torch.cat([self._split(self.to_v(x)), self._split(self.add_v_proj(c))], 2)
        o = F.scaled_dot_product_attention(q, k, v)
        o = o.transpose(1, 2).reshape(x.shape[0], -1, self.heads * self.head_dim)
        xo, co = o[:, :n], o[:, n:]
        return self.to_out[0](xo), (self.to_add_out(co) if self.to_add_out is not None else None)


class FeedForward(nn.Module):
    """Linear -> GELU (tanh) -> Linear; keys `net.0.proj`, `net.2` as in the checkpoints."""

    def __init__(self, dim: int, mult: int):
        super().__init__()
        self.net = nn.ModuleList([nn.Module(), nn.Identity(), nn.Linear(dim * mult, dim)])
        self.net[0].proj = nn.Linear(dim, dim * mult)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](F.gelu(self.net[0].proj(x), approximate="tanh"))


class JointBlock(nn.Module):
    """Pre-norm joint-attention block without timestep modulation; the last block of the model keeps only
    the image stream (`context_pre_only`)."""

    def __init__(self, cfg: NitroConfig, last: bool):
        super().__init__()
        dim = cfg.dim
        self.last = last
        self.norm1 = _norm(cfg, dim, eps=1e-5)
        self.norm1_context = _norm(cfg, dim, eps=1e-5)
        self.attn = JointAttention(dim, cfg.n_head, context_out=not last)
        self.norm2 = _norm(cfg, dim, affine=False)
        self.ff = FeedForward(dim, cfg.mlp_mult)
        if not last:
            self.norm2_context = _norm(cfg, dim, affine=False)
            self.ff_context = FeedForward(dim, cfg.mlp_mult)

    def forward(self, x: torch.Tensor, c: torch.Tensor):
        a, ca = self.attn(self.norm1(x), self.norm1_context(c))
        x = x + a
        x = x + self.ff(self.norm2(x))
        if self.last:
            return x, c
        c = c + ca
        return x, c + self.ff_context(self.norm2_context(c))


class _Resample(nn.Module):
    """PixelUnshuffle / PixelShuffle by `ratio`, then 1x1 conv -> GELU (tanh) -> 1x1 conv (keys `body.1`, `body.3`)."""

    def __init__(self, dim: int, ratio: int, down: bool):
        super().__init__()
        inner = dim * ratio * ratio if down else dim // (ratio * ratio)
        self.body = nn.Sequential(nn.PixelUnshuffle(ratio) if down else nn.PixelShuffle(ratio),
                                  nn.Conv2d(inner, dim, 1), nn.GELU("tanh"), nn.Conv2d(dim, dim, 1))

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        b, n, d = x.shape
        y = self.body(x.transpose(1, 2).reshape(b, d, side, side))
        return y.flatten(2).transpose(1, 2)


class NitroTransformer(nn.Module):
    """The masked AR transformer: image cells (masked ones replaced by the mask token) + prompt states ->
    one hidden state per cell. Also holds the heads (`diffloss`, and for joint_gan `diffloss_global`)."""

    def __init__(self, cfg: NitroConfig):
        super().__init__()
        self.cfg = cfg
        d, g = cfg.dim, cfg.grid
        self.x_proj = nn.Linear(cfg.latent_channels, d)
        self.z_proj_ln = _norm(cfg, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.latent_channels))
        scale = max(g // 16, 1)
        self.register_buffer("pos_embed_lv0", torch.from_numpy(
            sincos_2d(d, g, g, scale, cfg.pos_embed_max))[None], persistent=False)
        self.context_embedder = nn.Linear(cfg.text_dim, d)
        n_stages = len(cfg.stages)
        self.block_groups = nn.ModuleList(
            nn.ModuleList(JointBlock(cfg, last=(s == n_stages - 1 and i == n - 1)) for i in range(n))
            for s, n in enumerate(cfg.stages))
        self.downsamplers = nn.ModuleList([nn.ModuleList([_Resample(d, 2, True), _Resample(d, 4, True)])])
        self.upsamplers = nn.ModuleList([nn.ModuleList([_Resample(d, 2, False), _Resample(d, 4, False)])])
        self.mergers = nn.ModuleList([nn.Sequential(nn.Linear(3 * d, d), nn.GELU("tanh"), nn.Linear(d, d))])
        if cfg.variant == "gan":
            self.diffloss = nn.Module()
            self.diffloss.net = MLPHead(cfg)
        else:
            self.global_z_proj = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
            self.diffloss = nn.Module()
            self.diffloss.net = TransformerHead(cfg)
            self.diffloss_global = nn.Module()
            self.diffloss_global.net = TransformerHead(cfg)

    def _stage(self, s: int, x: torch.Tensor, c: torch.Tensor):
        for block in self.block_groups[s]:
            x, c = block(x, c)
        return x, c

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """tokens [B, cells, C], mask [B, cells] (1 = masked: the cell is fed as the mask token), text
        [B, T, text_dim] -> hidden states [B, cells, dim]."""
        g = self.cfg.grid
        x = torch.where(mask[..., None] > 0.5, self.mask_token.to(tokens.dtype), tokens)
        x = self.z_proj_ln(self.x_proj(x) + self.pos_embed_lv0)
        c = self.context_embedder(text)
        x, c = self._stage(0, x, c)
        skip = x
        x = torch.cat([self.downsamplers[0][0](x, g), self.downsamplers[0][1](x, g)], 1)
        x, c = self._stage(1, x, c)
        x2, x4 = x[:, :(g // 2) ** 2], x[:, (g // 2) ** 2:]
        x = torch.cat([self.upsamplers[0][0](x2, g // 2), self.upsamplers[0][1](x4, g // 4), skip], 2)
        x = self.mergers[0](x) + self.pos_embed_lv0
        x, _ = self._stage(2, x, c)
        return x

    def global_forward(self, text: torch.Tensor) -> torch.Tensor:
        """joint_gan, iteration 1: the first stage on one mask token (no position) + the prompt, then
        `global_z_proj` -> [B, 1, dim], the global head's condition."""
        b = text.shape[0]
        x = self.z_proj_ln(self.x_proj(self.mask_token.expand(b, 1, -1)))
        x, _ = self._stage(0, x, self.context_embedder(text))
        return self.global_z_proj(x)


class _ResBlock(nn.Module):
    def __init__(self, w: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(w, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(w, 3 * w))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(self.in_ln(x) * (1 + scale) + shift)


class _FinalLayer(nn.Module):
    def __init__(self, w: int, out: int, rms: bool):
        super().__init__()
        self.norm_final = RMSNorm(w) if rms else nn.LayerNorm(w, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(w, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(w, 2 * w))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


class MLPHead(nn.Module):
    """`gan`'s flow head (MAR's SimpleMLPAdaLN): (noisy token x [N, C], timestep t [N], condition z [N, dim])
    -> velocity [N, C], each row independent."""

    def __init__(self, cfg: NitroConfig):
        super().__init__()
        w = cfg.head_width
        self.time_embed = TimestepEmbedder(w)
        self.cond_embed = nn.Linear(cfg.dim, w)
        self.input_proj = nn.Linear(cfg.latent_channels, w)
        self.res_blocks = nn.ModuleList(_ResBlock(w) for _ in range(cfg.head_depth))
        self.final_layer = _FinalLayer(w, cfg.latent_channels, rms=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = self.input_proj(x)
        y = self.time_embed(t) + self.cond_embed(z)
        for block in self.res_blocks:
            h = block(h, y)
        return self.final_layer(h, y)


class _HeadAttention(nn.Module):
    def __init__(self, w: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(w, 3 * w, bias=False)
        self.proj = nn.Linear(w, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, w))


class _SwiGLU(nn.Module):
    """fc2(GELU(fc1_g(x)) * fc1_x(x)) (timm's SwiGLU with the exact GELU, as the checkpoint was built)."""

    def __init__(self, w: int, hidden: int):
        super().__init__()
        self.fc1_g, self.fc1_x, self.fc2 = nn.Linear(w, hidden), nn.Linear(w, hidden), nn.Linear(hidden, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1_g(x)) * self.fc1_x(x))


class _HeadBlock(nn.Module):
    def __init__(self, cfg: NitroConfig):
        super().__init__()
        w = cfg.head_width
        self.norm1, self.norm2 = RMSNorm(w), RMSNorm(w)
        self.attn = _HeadAttention(w, cfg.head_heads)
        self.mlp = _SwiGLU(w, cfg.head_mlp)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(w, 6 * w))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.ada_lin(c).chunk(6, dim=-1)
        x = x + self.attn(self.norm1(x) * (1 + scale1) + shift1) * gamma1
        return x + self.mlp(self.norm2(x) * (1 + scale2) + shift2) * gamma2


class TransformerHead(nn.Module):
    """`joint_gan`'s heads: (noisy tokens x [B, N, C], timestep t [B], conditions z [B, N, dim]) -> velocities
    [B, N, C]; the N tokens attend to each other (N = cells with positions, or N = 1 for the global head)."""

    def __init__(self, cfg: NitroConfig):
        super().__init__()
        w = cfg.head_width
        self.time_embed = TimestepEmbedder(w)
        self.cond_embed = nn.Linear(cfg.dim, w)
        self.input_proj = nn.Linear(cfg.latent_channels, w)
        self.t_norm, self.c_norm = RMSNorm(w), RMSNorm(w)
        self.register_buffer("pos_embed_lv0", torch.from_numpy(
            sincos_2d(w, cfg.grid, cfg.grid, 1, cfg.pos_embed_max))[None], persistent=False)
        self.res_blocks = nn.ModuleList(_HeadBlock(cfg) for _ in range(cfg.head_depth))
        self.final_layer = _FinalLayer(w, cfg.latent_channels, rms=True)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = self.input_proj(x)
        if h.shape[1] > 1:
            h = h + self.pos_embed_lv0
        c = self.t_norm(self.time_embed(t)[:, None]) + self.c_norm(self.cond_embed(z))
        for block in self.res_blocks:
            h = block(h, c)
        return self.final_layer(h, c)


# --- checkpoints --------------------------------------------------------------------------------------------
def infer_config(state: dict, variant: str | None = None) -> NitroConfig:
    """A config from a checkpoint's tensor shapes (the variant from its keys when not given)."""
    joint = "diffloss_global.net.input_proj.weight" in state
    if variant is not None and (variant == "joint_gan") != joint:
        raise ExportError(f"the checkpoint is a {'joint_gan' if joint else 'gan'} model, not {variant}")
    try:
        dim, channels = state["x_proj.weight"].shape
        text_dim = state["context_embedder.weight"].shape[1]
        stages = tuple(len({k.split(".")[2] for k in state if k.startswith(f"block_groups.{s}.")}) for s in range(3))
        head_width = state["diffloss.net.input_proj.weight"].shape[0]
        head_depth = len({k.split(".")[3] for k in state if k.startswith("diffloss.net.res_blocks.")})
        head_dim = state["block_groups.0.0.attn.norm_q.weight"].shape[0]
        mult = state["block_groups.0.0.ff.net.0.proj.weight"].shape[0] // dim
        head_mlp = state["diffloss.net.res_blocks.0.mlp.fc1_g.weight"].shape[0] if joint else 2048
    except KeyError as e:
        raise ExportError(f"not a Nitro-AR checkpoint: tensor {e} is missing") from None
    base = NITRO_PRESETS["Nitro-AR-512px-Joint-GAN" if joint else "Nitro-AR-512px-GAN"]
    return replace(base, dim=dim, n_head=dim // head_dim, stages=stages, latent_channels=channels, text_dim=text_dim,
                   head_width=head_width, head_depth=head_depth, head_heads=max(head_width // 64, 1),
                   head_mlp=head_mlp, mlp_mult=mult)


def load_nitro(state: dict, cfg: NitroConfig | None = None) -> NitroTransformer:
    """A model with the checkpoint's weights, every key used and every tensor's shape matched (strict)."""
    cfg = cfg or infer_config(state)
    model = NitroTransformer(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {what} (first: {v[0]})" for what, v in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)) if v]
        raise ExportError(f"the checkpoint does not fit a Nitro-AR {cfg.variant} model: " + ", ".join(parts))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def random_nitro(cfg: NitroConfig, seed: int = 0, scale: float = 0.05) -> NitroTransformer:
    """A model with random weights of every tensor, the zero-initialised ones included (so every path
    carries signal), for tests and timing."""
    g = torch.Generator().manual_seed(seed)
    model = NitroTransformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and ("norm" in name or "_ln" in name):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (scale if p.dim() < 2 else 1 / math.sqrt(p[0].numel())))
    return model.eval()


# --- the sampling loop (reference) -------------------------------------------------------------------------
@torch.no_grad()
def head_sample(head: nn.Module, z: torch.Tensor, noise: torch.Tensor, steps: int, guidance: float,
                cfg: NitroConfig, truncate: bool) -> torch.Tensor:
    """Euler flow sampling from `noise` conditioned on `z` ([uncond; cond] rows when guidance != 1,
    sharing the noise); guidance mixes the velocities: v_u + g (v_c - v_u)."""
    t_list, sig = flow_schedule(steps, cfg.num_train_timesteps, cfg.shift, floor_timesteps=truncate)
    x = noise.float()
    guided = guidance != 1.0
    for i in range(steps):
        xin = torch.cat([x, x]) if guided else x
        t = torch.full((xin.shape[0],), float(t_list[i]))
        v = head(xin, t, z)
        if guided:
            vu, vc = v.chunk(2)
            v = vu + guidance * (vc - vu)
        x = x + (torch.tensor(sig[i + 1]) - torch.tensor(sig[i])) * v
    return x


@torch.no_grad()
def sample(model: NitroTransformer, text: torch.Tensor, null_text: torch.Tensor, orders: np.ndarray,
           noise: np.ndarray, global_noise: np.ndarray | None = None, iterations: int = 20,
           head_steps: int | None = None, guidance: float = 4.0, callback=None) -> torch.Tensor:
    """The released sampling loop in fp32 with injected randomness: text [B, T, text_dim], null_text
    [1, T, text_dim] (the empty prompt), orders [B, cells] (a permutation per image), noise [B, cells, C]
    (cell c starts its flow from noise[b, c]), global_noise [B, C] (joint_gan). Returns the latent
    tokens [B, cells, C] (row-major cells). `callback(iteration, tokens)` sees each partial latent."""
    cfg = model.cfg
    b, cells = text.shape[0], cfg.cells
    guided = guidance != 1.0
    ctx = torch.cat([null_text.expand(b, -1, -1), text]) if guided else text
    noise_t = torch.from_numpy(np.asarray(noise, np.float32))
    if cfg.variant == "joint_gan":
        steps = head_steps or 6
        zg = model.global_forward(ctx)
        gnoise = torch.from_numpy(np.asarray(global_noise, np.float32))[:, None]
        gtok = head_sample(model.diffloss_global.net, zg, gnoise, steps, guidance, cfg, truncate=True)  # [B, 1, C]
        tokens = gtok.expand(b, cells, -1)
        if callback:
            callback(0, tokens.clone())
        zero = torch.zeros(b, cells)
        h = model(torch.cat([tokens, tokens]) if guided else tokens, torch.cat([zero, zero]) if guided else zero, ctx)
        out = head_sample(model.diffloss.net, h, noise_t, steps, guidance, cfg, truncate=True)
        if callback:
            callback(1, out.clone())
        return out
    steps = head_steps or 3
    tokens = torch.zeros(b, cells, cfg.latent_channels)
    masked = torch.ones(b, cells)
    orders = np.asarray(orders)
    done = 0
    counts = maskgit_counts(cells, iterations)
    for it, count in enumerate(counts):
        if count:
            h = model(torch.cat([tokens, tokens]) if guided else tokens,
                      torch.cat([masked, masked]) if guided else masked, ctx)
            sel = np.zeros((b, cells), bool)
            for r in range(b):
                sel[r, orders[r, cells - done - count:cells - done]] = True  # decided from the order's end
            rows, cols = np.nonzero(sel)  # row-major, as the release gathers them
            z = h[rows, cols] if not guided else torch.cat([h[:b][rows, cols], h[b:][rows, cols]])
            x = head_sample(model.diffloss.net, z, noise_t[rows, cols], steps, guidance, cfg, truncate=False)
            tokens[rows, cols] = x
            masked[rows, cols] = 0
            done += count
        if callback:
            callback(it, tokens.clone())
    return tokens
