"""The ARPG objective (export/arpg.py) and a warm start from a trained LlamaGen-layout model.

Loss: each image in its own random order, cut into the groups the decoder decides per step (ARPG's
`arccos` schedule for a step count drawn per batch); a group's tokens see each other and earlier groups,
a cell's query sees the class and earlier groups only (`group_masks`), exactly what the runtime's calls
see. Cross-entropy over every cell's query. (Upstream trains one cell per group, causal; that is the
special case of `steps = cells`, which the drawn step counts may include.)

Warm start (`arpg_state_from_gpt`): a 2k-layer GPT's first k layers become the self-attention half
(the fused `wqkv` split into `to_q`/`to_k`/`to_v`), its last k the cross half (queries and output
projection only); the shared K/V projection and its norm come from layer k's; the mask token starts
from the any-order model's position query when there is one, random otherwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tessera.export.arpg import ARPG
from tessera.runtime.schedule import arpg_counts


def arpg_loss(model: ARPG, codes: torch.Tensor, labels: torch.Tensor, gen: torch.Generator,
              steps: int | None = None, step_range: tuple[int, int] = (4, 16), schedule: str = "arccos"
              ) -> torch.Tensor:
    """Mean cross-entropy (nats/token) of every cell's query, orders drawn from `gen`."""
    b, n = codes.shape
    if steps is None:
        lo, hi = min(step_range[0], n), min(step_range[1], n)
        steps = int(torch.randint(lo, hi + 1, (1,), generator=gen))
    order = torch.argsort(torch.rand(b, n, generator=gen), dim=1)
    logits = model.training_logits(codes, labels, order, arpg_counts(n, steps, schedule))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.gather(codes, 1, order).reshape(-1))


def arpg_state_from_gpt(gpt_state: dict[str, torch.Tensor], model: ARPG) -> dict[str, torch.Tensor]:
    """ARPG weights from a trained GPT's (same dim, heads, vocab and classes; twice the ARPG half)."""
    cfg = model.cfg
    d, half = cfg.dim, cfg.n_layer // 2
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}

    def block(dst: str, i: int, cross: bool) -> None:
        src = f"layers.{i}."
        q, k, v = gpt_state[src + "attention.wqkv.weight"].split(d, dim=0)
        out[dst + "attn.to_q.weight"] = q
        if not cross:
            out[dst + "attn.to_k.weight"], out[dst + "attn.to_v.weight"] = k, v
        out[dst + "attn.proj.weight"] = gpt_state[src + "attention.wo.weight"]
        for w in ("w1", "w2", "w3"):
            out[dst + f"ffn.{w}.weight"] = gpt_state[src + f"feed_forward.{w}.weight"]
        out[dst + "attn_norm.weight"] = gpt_state[src + "attention_norm.weight"]
        out[dst + "ffn_norm.weight"] = gpt_state[src + "ffn_norm.weight"]

    for i in range(half):
        block(f"layers.self_dec.{i}.", i, cross=False)
        block(f"layers.cross_dec.{i}.", half + i, cross=True)
    _, k, v = gpt_state[f"layers.{half}.attention.wqkv.weight"].split(d, dim=0)
    out["layers.to_k.weight"], out["layers.to_v.weight"] = k, v
    out["layers.norm.weight"] = gpt_state[f"layers.{half}.attention_norm.weight"]
    table = own["embeddings.weight"].clone()
    vocab, classes = cfg.vocab_size, cfg.num_classes
    table[:vocab] = gpt_state["tok_embeddings.weight"]
    if "query_embedding" in gpt_state:
        table[vocab] = gpt_state["query_embedding"][0]
    table[vocab + 1: vocab + classes + 2] = gpt_state["cls_embedding.embedding_table.weight"]
    out["embeddings.weight"] = table
    out["norm.weight"] = gpt_state["norm.weight"]
    out["head.weight"] = gpt_state["output.weight"]
    missing = sorted(set(own) - set(out))
    if missing:
        raise ValueError(f"the GPT's weights leave ARPG keys unset: {missing}")
    return out


__all__ = ["arpg_loss", "arpg_state_from_gpt"]
