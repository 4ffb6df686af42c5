"""ARPG (randomized parallel decoding, arXiv 2503.10568) in one readable file: `arpg-c2i`.

State-dict keys follow ARPG's published checkpoints (`embeddings`, `layers.self_dec.{i}.attn.to_q`,
`layers.to_k`, `layers.cross_dec.{i}.attn.to_q`, `norm`, `head`, ...), so they load strictly.

The network feeds each image cell once:

* the first `n_layer // 2` blocks are ordinary self-attention over the decided tokens (each rotated at
  its own cell), with a KV cache per block;
* one RMSNorm + a shared `to_k` / `to_v` then make ONE key/value per decided token (the key rotated at
  the token's cell), cached once (YOCO style);
* the last `n_layer // 2` blocks are cross-attention only: the queries are the learned mask-token
  embedding rotated at the *target* cells; they read the shared K/V and are never cached.

Input ids share one table of `V + 1 + C + 2` rows: codes `0..V-1`, the mask token `V`, class `c` at
`V + 1 + c`, the null class (guidance) at `V + C + 1` and an unused drop token `V + C + 2`.
Rotary positions: 0 is the class slot (an all-zero table row, as LlamaGen: the class's rotated q and
k are zero vectors, its value still counts), cell `c` (row-major) is `1 + c`.

One forward serves inference, the reference loop and ONNX export:

    logits, presents = model(input_ids, position_ids, query_positions, past)

`past` / `presents` hold `n_layer // 2` self-attention (k, v) pairs followed by the shared (k, v),
each `[batch, heads, length, head_dim]`. With no masks everything a call feeds sees everything in the
cache and in the call, as upstream's generate loop does; training passes explicit masks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import GPTConfig
from .transformer import FeedForward, RMSNorm, apply_rope, rope_2d_tables

KV = tuple[torch.Tensor, torch.Tensor]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Plain softmax attention `[B, H, Sq, D]` x `[B, H, Sk, D]` (standard ONNX ops when traced);
    `mask` bool `[B, Sq, Sk]`, True where a query may attend, or None (everything)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if mask is not None:
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    b, s, d = x.shape
    return x.view(b, s, n_head, d // n_head)


class SelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.to_q = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.to_k = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.to_v = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, mask, past: KV | None):
        b, s, d = x.shape
        q = apply_rope(_heads(self.to_q(x), self.n_head), cos, sin).transpose(1, 2)
        k = apply_rope(_heads(self.to_k(x), self.n_head), cos, sin).transpose(1, 2)
        v = _heads(self.to_v(x), self.n_head).transpose(1, 2)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        y = _attend(q, k, v, mask).transpose(1, 2).reshape(b, s, d)
        return self.drop(self.proj(y)), (k, v)


class CrossAttention(nn.Module):
    """Queries only (`to_q`, `proj`): keys and values are the shared K/V."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.to_q = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, k, v, mask):
        b, s, d = x.shape
        q = apply_rope(_heads(self.to_q(x), self.n_head), cos, sin).transpose(1, 2)
        y = _attend(q, k, v, mask).transpose(1, 2).reshape(b, s, d)
        return self.drop(self.proj(y))


class SelfBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.ffn = FeedForward(cfg)
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, cos, sin, mask, past):
        a, present = self.attn(self.attn_norm(x), cos, sin, mask, past)
        h = x + a
        return h + self.ffn(self.ffn_norm(h)), present


class CrossBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attn = CrossAttention(cfg)
        self.ffn = FeedForward(cfg)
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, cos, sin, k, v, mask):
        h = x + self.attn(self.attn_norm(x), cos, sin, k, v, mask)
        return h + self.ffn(self.ffn_norm(h))


class TwoPass(nn.Module):
    """Upstream's `Decoder_Decoder`: self blocks, the shared K/V projection, cross blocks."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        half = cfg.n_layer // 2
        self.self_dec = nn.ModuleList(SelfBlock(cfg) for _ in range(half))
        self.cross_dec = nn.ModuleList(CrossBlock(cfg) for _ in range(half))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.to_k = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.to_v = nn.Linear(cfg.dim, cfg.dim, bias=False)


class ARPG(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.order != "arpg":
            raise ValueError(f"ARPG needs a config with order 'arpg', got {cfg.order!r}")
        if cfg.n_layer % 2:
            raise ValueError(f"ARPG splits its layers into two halves: n_layer must be even, got {cfg.n_layer}")
        self.cfg = cfg
        self.embeddings = nn.Embedding(cfg.vocab_size + 1 + cfg.num_classes + 2, cfg.dim)
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.layers = TwoPass(cfg)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_2d_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    # --- token layout -------------------------------------------------------------------
    @property
    def mask_token(self) -> int:
        return self.cfg.vocab_size

    def class_token(self, labels: torch.Tensor) -> torch.Tensor:
        """Class ids (null class = num_classes) -> ids in the shared input table."""
        return labels + self.cfg.vocab_size + 1

    def cell_position(self, cell: torch.Tensor) -> torch.Tensor:
        """Row-major cell index -> rotary table row (the grid is the model's own)."""
        g = self.cfg.grid
        return 1 + (cell // g) * self.cfg.rope_grid + cell % g

    @property
    def n_half(self) -> int:
        return self.cfg.n_layer // 2

    # --- forward --------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, query_positions: torch.Tensor,
                past: list[KV] | None = None, self_mask: torch.Tensor | None = None,
                cross_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, list[KV]]:
        """Feed `input_ids [B, S]` at `position_ids`, ask for the cells at `query_positions [B, Q]`:
        logits `[B, Q, V]` and the presents (`n_layer // 2` self pairs, then the shared pair)."""
        x = self.embed_drop(F.embedding(input_ids, self.embeddings.weight))
        cos, sin = self.rope_cos[position_ids], self.rope_sin[position_ids]
        presents: list[KV] = []
        for i, block in enumerate(self.layers.self_dec):
            x, kv = block(x, cos, sin, self_mask, None if past is None else past[i])
            presents.append(kv)
        xn = self.layers.norm(x)
        k = apply_rope(_heads(self.layers.to_k(xn), self.cfg.n_head), cos, sin).transpose(1, 2)
        v = _heads(self.layers.to_v(xn), self.cfg.n_head).transpose(1, 2)
        if past is not None:
            k, v = torch.cat([past[-1][0], k], dim=2), torch.cat([past[-1][1], v], dim=2)
        presents.append((k, v))
        b, nq = query_positions.shape
        q = self.embeddings.weight[self.mask_token].expand(b, nq, -1)
        qcos, qsin = self.rope_cos[query_positions], self.rope_sin[query_positions]
        for block in self.layers.cross_dec:
            q = block(q, qcos, qsin, k, v, cross_mask)
        return self.head(self.norm(q)).float(), presents

    def training_logits(self, codes: torch.Tensor, labels: torch.Tensor, order: torch.Tensor,
                        counts: list[int] | None = None) -> torch.Tensor:
        """Teacher-forced logits `[B, n, V]` for the cells in `order [B, n]` (per image), with class
        dropout in training mode. `counts`: the decoder's group sizes (cells decided per step), so the
        masks reproduce what its calls see (a group's tokens see each other, a query sees earlier
        groups only); None = one cell per group, exactly upstream's causal training."""
        cfg = self.cfg
        b, n = codes.shape
        if self.training and cfg.class_dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < cfg.class_dropout
            labels = torch.where(drop, torch.full_like(labels, cfg.num_classes), labels)
        ordered = torch.gather(codes, 1, order)
        cells = self.cell_position(order)
        ids = torch.cat([self.class_token(labels)[:, None], ordered[:, :-1]], dim=1)
        pos = torch.cat([torch.zeros(b, 1, dtype=torch.long, device=codes.device), cells[:, :-1]], dim=1)
        self_mask, cross_mask = group_masks(counts or [1] * n, codes.device)
        logits, _ = self.forward(ids, pos, cells, None, self_mask[None].expand(b, -1, -1),
                                 cross_mask[None].expand(b, -1, -1))
        return logits

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def group_masks(counts: list[int], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Training masks for one order cut into groups of `counts` (cells decided per step).

    Sequence `[class, x_0 .. x_{n-2}]` (x in decoding order), queries for cells 0..n-1. A token of
    group g sees the class and every token of groups <= g (tokens fed in one call see each other); the
    class sees itself; the query of a cell in group g sees the class and the tokens of groups < g.
    """
    n = sum(counts)
    group = torch.repeat_interleave(torch.arange(len(counts), device=device), torch.tensor(counts, device=device))
    tok = group[:-1]
    self_mask = torch.zeros(n, n, dtype=torch.bool, device=device)
    self_mask[:, 0] = True
    self_mask[1:, 1:] = tok[None, :] <= tok[:, None]
    cross_mask = torch.zeros(n, n, dtype=torch.bool, device=device)
    cross_mask[:, 0] = True
    cross_mask[:, 1:] = tok[None, :] < group[:, None]
    return self_mask, cross_mask


class ARPGForExport(nn.Module):
    """Flat signature for ONNX export: past/present as separate named tensors."""

    def __init__(self, model: ARPG):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, query_positions, *past_flat):
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(len(past_flat) // 2)]
        logits, presents = self.model(input_ids, position_ids, query_positions, past)
        return (logits, *[t for kv in presents for t in kv])


__all__ = ["ARPG", "ARPGForExport", "group_masks"]
