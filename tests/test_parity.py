"""ONNX transformer vs PyTorch: prefill, decode steps, several query tokens at non-contiguous positions."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

ATOL = 1e-4


def _feeds(cfg, ids, pos, mask, past):
    feeds = {"input_ids": ids.numpy(), "position_ids": pos.numpy(), "attention_mask": mask.numpy()}
    for i in range(cfg.n_layer):
        feeds[f"past_key_values.{i}.key"] = past[2 * i]
        feeds[f"past_key_values.{i}.value"] = past[2 * i + 1]
    return feeds


@pytest.mark.parametrize("batch", [1, 3])
def test_prefill_and_decode_steps_match(tiny_models, any_dir, batch):
    gpt, _ = tiny_models
    cfg = gpt.cfg
    sess = ort.InferenceSession(str(any_dir / "transformer.onnx"), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(batch)
    labels = torch.randint(0, cfg.num_classes + 1, (batch,), generator=g)
    ids, pos = gpt.class_token(labels)[:, None], torch.zeros(batch, 1, dtype=torch.long)
    past_np = [np.zeros((batch, cfg.n_head, 0, cfg.head_dim), np.float32)] * (2 * cfg.n_layer)
    past_t = None
    for step in range(6):
        mask = torch.ones(batch, 1, step + 1, dtype=torch.bool)
        out = sess.run(None, _feeds(cfg, ids, pos, mask, past_np))
        with torch.no_grad():
            ref, presents = gpt(ids, pos, mask, past_t)
        np.testing.assert_allclose(out[0], ref.numpy(), atol=ATOL, rtol=0)
        for o, r in zip(out[1:], [t for kv in presents for t in kv]):
            np.testing.assert_allclose(o, r.numpy(), atol=ATOL, rtol=0)
        assert out[1].shape == (batch, cfg.n_head, step + 1, cfg.head_dim)
        past_np, past_t = out[1:], presents
        ids = torch.randint(0, cfg.vocab_size, (batch, 1), generator=g)
        pos = gpt.cell_position(torch.full((batch, 1), step))


@pytest.mark.parametrize("kind", ["portable", "fused-1.32"])
def test_several_queries_at_non_contiguous_positions(tiny_models, portable_dir, batched_dir, kind):
    """How parallel decoding calls the graph: S tokens, scattered cells, a runtime-built mask.
    (The fused graph's 1.22 form runs such calls one query at a time: tests/test_compat.py.)"""
    any_dir = portable_dir if kind == "portable" else batched_dir
    gpt, _ = tiny_models
    cfg = gpt.cfg
    sess = ort.InferenceSession(str(any_dir / "transformer.onnx"), providers=["CPUExecutionProvider"])
    batch, past_len = 2, 5
    g = torch.Generator().manual_seed(7)
    past_t = [(torch.randn(batch, cfg.n_head, past_len, cfg.head_dim, generator=g),
               torch.randn(batch, cfg.n_head, past_len, cfg.head_dim, generator=g)) for _ in range(cfg.n_layer)]
    past_np = [t.numpy() for kv in past_t for t in kv]
    cells = torch.tensor([4, 5, 9, 14])  # raster order with gaps: the graph is causal in call order
    ids = torch.randint(0, cfg.vocab_size, (batch, cells.numel()), generator=g)
    pos = gpt.cell_position(cells).expand(batch, -1).contiguous()
    mask = torch.ones(batch, cells.numel(), past_len + cells.numel(), dtype=torch.bool)
    mask[:, :, past_len:] = cells[:, None] >= cells[None, :]
    mask[1, 2, 0] = False  # rows may differ
    out = sess.run(None, _feeds(cfg, ids, pos, mask, past_np))
    with torch.no_grad():
        ref, _ = gpt(ids, pos, mask, past_t)
    np.testing.assert_allclose(out[0], ref.numpy(), atol=ATOL, rtol=0)
    # The mask is honoured: hiding a key changes that query's logits.
    mask2 = mask.clone()
    mask2[0, 3, 1] = False
    out2 = sess.run(None, _feeds(cfg, ids, pos, mask2, past_np))
    assert not np.allclose(out2[0][0, 3], out[0][0, 3])
    np.testing.assert_array_equal(out2[0][0, :3], out[0][0, :3])


def test_export_records_parity(tiny_dir):
    import json

    m = json.loads((tiny_dir / "tessera.json").read_text())
    t = m["parity"]["transformer"]
    assert set(t["by_phase"]) == {"prefill", "decode", "multi_query", "prefix_prefill"}
    assert t["max_abs_logit_error"] < 1e-4
    assert m["parity"]["tokenizer"]["decoder_max_abs_error"] < 1e-4


def test_rope_matches_llamagen_layout():
    """2D rotary: class row all zero; cell (r, c): first quarter of pairs turn by r*theta, last by c*theta."""
    from tessera.export.config import gpt_preset
    from tessera.export.transformer import rope_2d_tables

    cfg = gpt_preset("GPT-B")
    cos, sin = rope_2d_tables(cfg)
    assert cos.shape == (1 + cfg.rope_grid**2, cfg.head_dim // 2)
    assert torch.all(cos[0] == 0) and torch.all(sin[0] == 0)
    q = cfg.head_dim // 4
    theta = 10000.0 ** (-torch.arange(q, dtype=torch.float64) / q)
    r, c = 3, 11
    row = 1 + r * cfg.rope_grid + c
    torch.testing.assert_close(cos[row, :q].double(), torch.cos(r * theta), atol=1e-6, rtol=0)
    torch.testing.assert_close(sin[row, q:].double(), torch.sin(c * theta), atol=1e-6, rtol=0)
