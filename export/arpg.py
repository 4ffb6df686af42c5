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
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import GPTConfig
from .transformer import FeedForward, RMSNorm, rope_2d_tables

KV = tuple[torch.Tensor, torch.Tensor]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain softmax attention `[B, H, Sq, D]` x `[B, H, Sk, D]` (standard ONNX ops when traced);
    `bias` `[B, 1, Sq, Sk]`: 0 where a query may attend, -inf elsewhere (`_bias`), or None (everything)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if bias is not None:
        scores = scores + bias
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _bias(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A bool mask `[B, Sq, Sk]` (True = may attend) as an additive bias, made once per call."""
    if mask is None:
        return None
    zero = torch.zeros((), dtype=torch.float32)
    return torch.where(mask, zero, torch.full((), float("-inf"))).unsqueeze(1)


def rope_pairs(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LlamaGen's tables `[P, D/2]` widened to `[P, D]` for `rotate`: cos per element, sin signed
    (-sin on the first of each pair, +sin on the second)."""
    return cos.repeat_interleave(2, dim=-1), torch.stack([-sin, sin], dim=-1).flatten(-2)


def rotate(x: torch.Tensor, cos2: torch.Tensor, sin2: torch.Tensor) -> torch.Tensor:
    """LlamaGen's rotation of adjacent pairs, `(x0 c - x1 s, x1 c + x0 s)`, as `x * cos2 + swap(x) * sin2`
    (the same products and sums): `x [B, S, H, D]`, tables `[B, S, D]`. Fewer graph nodes than the
    pairwise form, which matters for calls of a few tokens."""
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return x * cos2.unsqueeze(2) + swapped * sin2.unsqueeze(2)


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
        q = rotate(_heads(self.to_q(x), self.n_head), cos, sin).transpose(1, 2)
        k = rotate(_heads(self.to_k(x), self.n_head), cos, sin).transpose(1, 2)
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
        q = rotate(_heads(self.to_q(x), self.n_head), cos, sin).transpose(1, 2)
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
        if cfg.query_pos_embed:  # ours, off for ARPG's checkpoints (GPTConfig.query_pos_embed); starts at zero
            self.query_pos = nn.Parameter(torch.zeros(1 + cfg.rope_grid ** 2, cfg.dim))
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.layers = TwoPass(cfg)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_pairs(*rope_2d_tables(cfg))
        self.register_buffer("rope_cos", cos, persistent=False)  # [positions, head_dim] (rope_pairs)
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
        self_bias, cross_bias = _bias(self_mask), _bias(cross_mask)
        cos, sin = self.rope_cos[position_ids], self.rope_sin[position_ids]
        presents: list[KV] = []
        for i, block in enumerate(self.layers.self_dec):
            x, kv = block(x, cos, sin, self_bias, None if past is None else past[i])
            presents.append(kv)
        xn = self.layers.norm(x)
        k = rotate(_heads(self.layers.to_k(xn), self.cfg.n_head), cos, sin).transpose(1, 2)
        v = _heads(self.layers.to_v(xn), self.cfg.n_head).transpose(1, 2)
        if past is not None:
            k, v = torch.cat([past[-1][0], k], dim=2), torch.cat([past[-1][1], v], dim=2)
        presents.append((k, v))
        b, nq = query_positions.shape
        q = self.embeddings.weight[self.mask_token].expand(b, nq, -1)
        if self.cfg.query_pos_embed:
            q = q + F.embedding(query_positions, self.query_pos)
        qcos, qsin = self.rope_cos[query_positions], self.rope_sin[query_positions]
        for block in self.layers.cross_dec:
            q = block(q, qcos, qsin, k, v, cross_bias)
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
    """Flat signature for ONNX export: past/present as separate named tensors, one mask
    `[B, S + Q, past + S]` (the S context rows, then the Q query rows)."""

    def __init__(self, model: ARPG):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, query_positions, attention_mask, *past_flat):
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(len(past_flat) // 2)]
        s = input_ids.shape[1]
        logits, presents = self.model(input_ids, position_ids, query_positions, past,
                                      attention_mask[:, :s], attention_mask[:, s:])
        return (logits, *[t for kv in presents for t in kv])


def arpg_io():
    """The ARPG graph's names (the manifest's `graphs.transformer.io`)."""
    from tessera.runtime.spec import GraphIO

    return GraphIO(query_positions="query_positions")


@torch.no_grad()
def trace_arpg(model: ARPG, path, opset: int) -> dict:
    """The ARPG graph in standard ONNX ops (any onnxruntime): S context tokens appended to the caches
    (present = concat(past, new)), Q queries never cached. Returns the manifest's graph facts."""
    import warnings

    from tessera.runtime.compat import OLDEST_TESTED

    cfg = model.cfg
    model.eval()
    b, s, q, p = 2, 3, 2, 2
    layers = cfg.n_layer // 2 + 1
    io = arpg_io()
    ids = torch.randint(0, cfg.vocab_size, (b, s))
    pos = torch.arange(1, s + 1).expand(b, -1).contiguous()
    qpos = torch.arange(s + 1, s + 1 + q).expand(b, -1).contiguous()
    mask = torch.ones(b, s + q, p + s, dtype=torch.bool)
    past = [torch.zeros(b, cfg.n_head, p, cfg.head_dim) for _ in range(2 * layers)]
    inputs, outputs = io.inputs(layers), io.outputs(layers)
    dyn = {io.input_ids: {0: "batch", 1: "sequence"}, io.position_ids: {0: "batch", 1: "sequence"},
           io.query_positions: {0: "batch", 1: "queries"},
           io.attention_mask: {0: "batch", 1: "rows", 2: "total_sequence"},
           io.logits: {0: "batch", 1: "queries"}}
    dyn.update({n: {0: "batch", 2: "past_sequence"} for n in io.past_names(layers)})
    dyn.update({n: {0: "batch", 2: "total_sequence"} for n in io.present_names(layers)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ARPGForExport(model), (ids, pos, qpos, mask, *past), str(path), input_names=inputs,
                          output_names=outputs, dynamic_axes=dyn, opset_version=opset, do_constant_folding=True,
                          dynamo=False)
    return {"kind": "portable", "kv_cache": "concat", "min_onnxruntime": OLDEST_TESTED}


__all__ = ["ARPG", "ARPGForExport", "group_masks"]


@torch.inference_mode()
def generate_arpg(model: ARPG, labels, steps: int, guidance_scale: float = 1.0, guidance_schedule: str = "linear",
                  schedule: str = "arccos", sampling=None, seed=0, orders: np.ndarray | None = None,
                  known: tuple[np.ndarray, np.ndarray] | None = None,
                  on_step: Callable[[int, np.ndarray, np.ndarray], None] | None = None) -> np.ndarray:
    """ARPG's generate loop in fp32, written plainly: class ids -> token grids `[B, grid, grid]`.

    Step 0 feeds the class (and the null class for guidance); step t feeds the codes sampled at step
    t-1 at their own cells, plus one query per cell of this step, never cached. Cells per step follow
    `schedule` (`arpg_counts`); guidance `uncond + (cond - uncond) * s` with `s` from `guidance_at`
    (linear in the share decided after the step). `orders [B, open cells]`: the cells of each image in
    decoding order (default: drawn from each image's seed, `random_orders`). `known`: `(tokens [B, n],
    kept [n] bool)`, kept cells fed as context in the first call (editing). Draws: the runtime's sampler
    and per-image streams. `on_step(step, cells [B, c], guided logits [B, c, V])` sees every step.
    """
    from tessera.runtime.sampling import ImageStreams, SamplingConfig, apply_guidance, image_seeds, sample
    from tessera.runtime.schedule import arpg_counts, guidance_at, random_orders

    model.eval()
    cfg, dev = model.cfg, next(model.parameters()).device
    sampling = (sampling or SamplingConfig()).validate(cfg.vocab_size)
    labels = np.asarray(labels, dtype=np.int64)
    b, n = labels.shape[0], cfg.grid * cfg.grid
    guided = guidance_scale > 1.0
    rows = np.concatenate([labels, np.full_like(labels, cfg.num_classes)]) if guided else labels
    rep = rows.shape[0] // b
    seeds = image_seeds(seed, b)
    rng = ImageStreams(seeds, n)
    kept = np.zeros(n, bool) if known is None else np.asarray(known[1], bool)
    out = np.full((b, n), -1, dtype=np.int64)
    if known is not None:
        out[:, kept] = np.asarray(known[0])[:, kept]
    open_cells = np.flatnonzero(~kept)
    orders = random_orders(seeds, open_cells) if orders is None else np.asarray(orders, dtype=np.int64)
    if orders.shape != (b, len(open_cells)) or any(set(o) != set(open_cells) for o in orders.tolist()):
        raise ValueError(f"orders must be [{b}, {len(open_cells)}], each a permutation of the open cells")
    counts = arpg_counts(len(open_cells), steps, schedule)
    pos_of = model.cell_position(torch.arange(n)).numpy()
    kc = np.flatnonzero(kept)
    ids = np.concatenate([model.class_token(torch.from_numpy(rows)).numpy()[:, None],
                          np.tile(out[:, kc], (rep, 1))], axis=1)
    pos = np.concatenate([np.zeros((rows.shape[0], 1), np.int64), np.tile(pos_of[kc], (rows.shape[0], 1))], axis=1)
    past, start = None, 0
    for t, c in enumerate(counts):
        cells = orders[:, start:start + c]
        start += c
        qpos = np.tile(pos_of[cells], (rep, 1))
        logits, past = model(torch.from_numpy(ids).to(dev), torch.from_numpy(pos).to(dev),
                             torch.from_numpy(qpos).to(dev), past)
        step = logits.float().cpu().numpy()
        if guided:
            scale = guidance_at(guidance_scale, len(kc) + start, n, guidance_schedule)
            step = apply_guidance(step, b, scale)
        if on_step is not None:
            on_step(t, cells, step)
        toks = sample(np.ascontiguousarray(step.transpose(1, 0, 2)).reshape(c * b, -1), sampling, rng).reshape(c, b).T
        np.put_along_axis(out, cells, toks, axis=1)
        ids, pos = np.tile(toks, (rep, 1)), qpos
    return out.reshape(b, cfg.grid, cfg.grid)


__all__ += ["generate_arpg", "trace_arpg", "arpg_io"]
