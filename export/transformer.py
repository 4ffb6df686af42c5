"""Class-conditional image transformer in LlamaGen's c2i design, in one readable file.

State-dict keys follow LlamaGen (`tok_embeddings`, `cls_embedding.embedding_table`,
`layers.{i}.attention.wqkv`, ...), so its released checkpoints load strictly.

One forward serves training, the reference generation loop and ONNX export:

    logits, presents = model(input_ids, position_ids, attention_mask, past)

* `input_ids` share one id space: image codes are `0..V-1`, class `c` is `V + c`, the null
  class (guidance) is `V + num_classes`.
* `position_ids` index the 2D rotary table: 0 is the class position (all-zero rows, as
  LlamaGen), grid cell (row, col) is `1 + row * rope_grid + col`.
* Any-order models (`cfg.order == "any"`) add one input id, the position query
  `cfg.query_token` (one learned row after the null class): fed at a cell's position it asks
  "which code goes here?". Their class row of the rotary table is the identity rotation
  instead of zeros: with relative (rotary) positions only, a zero-rotated class carries no
  position, and a model that may start anywhere would not know where on the grid it is.
  The class then anchors the grid at the rotary origin.
* `attention_mask` is bool `[batch, seq, past + seq]`, True where a query may attend. None
  means plain causal attention with no past (training).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import GPTConfig

KV = tuple[torch.Tensor, torch.Tensor]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


class LabelEmbedder(nn.Module):
    """Class embeddings with one extra row, the null class used for guidance."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.w2(F.silu(self.w1(x)) * self.w3(x)))


def rope_2d_tables(cfg: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables `[1 + rope_grid**2, head_dim // 2]`, row 0 (the class position) all zero.

    The first head_dim/4 rotation pairs turn by `row * theta`, the last head_dim/4 by
    `col * theta`, theta_i = base ** (-i / (head_dim / 4)), exactly as LlamaGen computes them.
    """
    half = cfg.head_dim // 2
    freqs = 1.0 / (cfg.rope_base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    t = torch.arange(cfg.rope_grid, dtype=freqs.dtype)
    f = torch.outer(t, freqs)  # [G, head_dim/4]
    g = cfg.rope_grid
    grid = torch.cat([f[:, None, :].expand(-1, g, -1), f[None, :, :].expand(g, -1, -1)], dim=-1)
    grid = grid.reshape(g * g, half)
    zero = torch.zeros(1, half)
    anchored = cfg.order == "any" or cfg.anchor_class
    first_cos = torch.ones(1, half) if anchored else zero  # any-order: class at the origin
    return torch.cat([first_cos, torch.cos(grid)]), torch.cat([zero, torch.sin(grid)])


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x0, x1), (x2, x3), ... of `x [B, S, H, D]` by `cos/sin [B, S, D/2]`."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = xs[..., 0], xs[..., 1]
    c, s = cos.unsqueeze(2), sin.unsqueeze(2)
    out = torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1)
    return out.flatten(3).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, mask, past: KV | None):
        b, s, d = x.shape
        q, k, v = self.wqkv(x).split(d, dim=-1)
        q = apply_rope(q.view(b, s, self.n_head, self.head_dim), cos, sin).transpose(1, 2)
        k = apply_rope(k.view(b, s, self.n_head, self.head_dim), cos, sin).transpose(1, 2)
        v = v.view(b, s, self.n_head, self.head_dim).transpose(1, 2)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        if mask is None:  # training: causal, no cache
            drop = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
            scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
            y = torch.matmul(torch.softmax(scores, dim=-1), v)
        y = y.transpose(1, 2).reshape(b, s, d)
        return self.resid_drop(self.wo(y)), (k, v)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, cos, sin, mask, past):
        a, present = self.attention(self.attention_norm(x), cos, sin, mask, past)
        h = x + a
        return h + self.feed_forward(self.ffn_norm(h)), present


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.cls_embedding = LabelEmbedder(cfg.num_classes, cfg.dim)
        if cfg.order == "any":
            self.query_embedding = nn.Parameter(torch.randn(1, cfg.dim) * 0.02)
        self.tok_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_2d_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    # --- token layout -------------------------------------------------------------------
    def class_token(self, labels: torch.Tensor) -> torch.Tensor:
        """Class ids (null class = num_classes) -> ids in the shared input space."""
        return labels + self.cfg.vocab_size

    def cell_position(self, cell: torch.Tensor, grid: int | None = None) -> torch.Tensor:
        """Row-major cell index on a `grid`-wide image -> rotary position id."""
        g = grid or self.cfg.grid
        return 1 + (cell // g) * self.cfg.rope_grid + cell % g

    def embedding_table(self) -> torch.Tensor:
        """The one input table: codes, classes, null class (and the position query, any-order)."""
        parts = [self.tok_embeddings.weight, self.cls_embedding.embedding_table.weight]
        if self.cfg.order == "any":
            parts.append(self.query_embedding)
        return torch.cat(parts, dim=0)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.embedding_table())

    # --- forward --------------------------------------------------------------------------
    def forward(self, input_ids, position_ids, attention_mask=None, past: list[KV] | None = None):
        h = self.tok_dropout(self.embed(input_ids))
        cos, sin = self.rope_cos[position_ids], self.rope_sin[position_ids]
        presents = []
        for i, layer in enumerate(self.layers):
            h, kv = layer(h, cos, sin, attention_mask, None if past is None else past[i])
            presents.append(kv)
        logits = self.output(self.norm(h)).float()
        return logits, presents

    def training_logits(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits `[B, grid**2, V]` for `codes [B, grid**2]`, with class dropout."""
        if self.training and self.cfg.class_dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.cfg.class_dropout
            labels = torch.where(drop, torch.full_like(labels, self.cfg.null_class), labels)
        ids = torch.cat([self.class_token(labels)[:, None], codes[:, :-1]], dim=1)
        cells = torch.arange(codes.shape[1], device=codes.device)
        pos = torch.cat([torch.zeros(1, dtype=torch.long, device=codes.device), self.cell_position(cells[:-1])])
        logits, _ = self.forward(ids, pos.expand(codes.shape[0], -1))
        return logits

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class GPTForExport(nn.Module):
    """Flat signature for ONNX export: past/present as separate named tensors."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, attention_mask, *past_flat):
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(len(past_flat) // 2)]
        logits, presents = self.model(input_ids, position_ids, attention_mask, past)
        return (logits, *[t for kv in presents for t in kv])
