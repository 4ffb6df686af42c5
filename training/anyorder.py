"""The any-order objective: predict the code of a cell named by a position query, over random orders.

One training sequence per image (RandAR / LPD style), `1 + 2n` tokens for `n` cells:

    [class] [code of cell o_0 @ o_0] ... [code of cell o_{n-1} @ o_{n-1}] [query @ o_0] ... [query @ o_{n-1}]

`o` is a random permutation of the cells, cut into consecutive groups with the sizes the decoding
schedule uses (`runtime.schedule.cosine_counts` for a random step count). The mask reproduces what
the decoder's calls see: a code sees the class and the codes before it in the order (the KV cache
holds decided codes in the order they were decided); the query of a cell sees the class, the codes
of earlier groups and itself, never another query (queries are never context). The loss is the
cross-entropy of the query outputs against the codes of their cells; code outputs carry no loss.
Training with the decoder's group sizes teaches the model what it is asked at inference: several
cells predicted independently from the same context.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tessera.export.transformer import GPT
from tessera.runtime.schedule import cosine_counts


def any_order_mask(counts: list[int]) -> torch.Tensor:
    """Bool `[1 + 2n, 1 + 2n]` attention mask (True = may attend) for groups of sizes `counts`."""
    n = sum(counts)
    group = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))  # group of rank k
    size = 1 + 2 * n
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[:, 0] = True  # everything sees the class
    codes = slice(1, 1 + n)
    mask[codes, codes] = torch.tril(torch.ones(n, n, dtype=torch.bool))  # codes: causal in the order
    mask[1 + n:, codes] = group[:, None] > group[None, :]  # queries: codes of earlier groups
    q = torch.arange(1 + n, size)
    mask[q, q] = True  # and themselves
    return mask


def any_order_inputs(model: GPT, codes: torch.Tensor, labels: torch.Tensor, counts: list[int],
                     gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, position_ids, mask `[B, L, L]`, targets `[B, n]`) for one batch in random orders."""
    cfg = model.cfg
    b, n = codes.shape
    order = torch.argsort(torch.rand(b, n, generator=gen), dim=1)  # one random order per image
    ordered = torch.gather(codes, 1, order)
    cell_pos = model.cell_position(order)
    ids = torch.cat([model.class_token(labels)[:, None], ordered,
                     torch.full((b, n), cfg.query_token, dtype=torch.long)], dim=1)
    pos = torch.cat([torch.zeros(b, 1, dtype=torch.long), cell_pos, cell_pos], dim=1)
    mask = any_order_mask(counts)[None].expand(b, -1, -1)
    return ids, pos, mask, ordered


def any_order_loss(model: GPT, codes: torch.Tensor, labels: torch.Tensor, gen: torch.Generator,
                   steps: int | None = None, step_range: tuple[int, int] = (4, 20)) -> torch.Tensor:
    """Mean cross-entropy (nats/token) of the queries. `steps`: the schedule's step count, or None
    to draw one uniformly from `step_range` per call (class dropout applies in training mode)."""
    cfg = model.cfg
    n = codes.shape[1]
    if steps is None:
        lo, hi = min(step_range[0], n), min(step_range[1], n)
        steps = int(torch.randint(lo, hi + 1, (1,), generator=gen))
    if model.training and cfg.class_dropout > 0:
        drop = torch.rand(labels.shape, generator=gen) < cfg.class_dropout
        labels = torch.where(drop, torch.full_like(labels, cfg.null_class), labels)
    ids, pos, mask, targets = any_order_inputs(model, codes, labels, cosine_counts(n, steps), gen)
    logits, _ = model(ids, pos, mask)
    q = logits[:, 1 + n:]
    return F.cross_entropy(q.reshape(-1, q.shape[-1]), targets.reshape(-1))


__all__ = ["any_order_mask", "any_order_inputs", "any_order_loss"]
