"""ONNX-vs-PyTorch parity, measured at export: prefill, decode steps, multi-query calls, tokenizer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from .transformer import GPT
from .vq import VQModel

# fp32 graphs must match PyTorch to float rounding; anything larger is a broken export.
FP32_LOGIT_ATOL = 1e-3
FP32_IMAGE_ATOL = 1e-3
MIN_CODE_AGREEMENT = 0.99


class ParityError(RuntimeError):
    """An exported graph disagrees with the PyTorch model beyond tolerance."""


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(sess, model: GPT, ids, pos, mask, past_np, past_t):
    feeds = {"input_ids": ids.numpy(), "position_ids": pos.numpy(), "attention_mask": mask.numpy()}
    for i in range(model.cfg.n_layer):
        feeds[f"past_key_values.{i}.key"], feeds[f"past_key_values.{i}.value"] = past_np[2 * i], past_np[2 * i + 1]
    out = sess.run(None, feeds)
    with torch.no_grad():
        logits, presents = model(ids, pos, mask, past_t)
    return out[0], out[1:], logits.numpy(), presents


@torch.no_grad()
def transformer_parity(model: GPT, path: Path, batch: int = 2, decode_steps: int = 4, seed: int = 0) -> dict:
    """Max |logit| error per phase, feeding each side its own cache (errors would compound)."""
    cfg, sess = model.cfg, _session(path)
    model.eval()
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, cfg.num_classes, (batch,), generator=g)
    labels[-1] = cfg.null_class
    ids = model.class_token(labels)[:, None]
    pos = torch.zeros_like(ids)
    mask = torch.ones(batch, 1, 1, dtype=torch.bool)
    empty = [np.zeros((batch, cfg.n_head, 0, cfg.head_dim), np.float32) for _ in range(2 * cfg.n_layer)]
    o, past_np, t, past_t = _run(sess, model, ids, pos, mask, empty, None)
    errors = {"prefill": float(np.abs(o - t).max())}
    scale = float(np.abs(t).max())
    steps = []
    for j in range(decode_steps):
        tok = torch.randint(0, cfg.vocab_size, (batch, 1), generator=g)
        pos = model.cell_position(torch.full_like(tok, j))
        mask = torch.ones(batch, 1, j + 2, dtype=torch.bool)
        o, past_np, t, past_t = _run(sess, model, tok, pos, mask, past_np, past_t)
        steps.append(float(np.abs(o - t).max()))
    errors["decode"] = max(steps)
    # Several query tokens at non-contiguous cells, with a mask that hides some of the past
    # and keeps raster causality among the queries (how parallel decoding calls the graph).
    cells = torch.tensor([decode_steps + 3, decode_steps, decode_steps + cfg.grid])
    cells = cells.clamp(max=cfg.grid * cfg.grid - 1)
    s, past_len = cells.numel(), decode_steps + 1
    tok = torch.randint(0, cfg.vocab_size, (batch, s), generator=g)
    pos = model.cell_position(cells).expand(batch, -1).contiguous()
    mask = torch.ones(batch, s, past_len + s, dtype=torch.bool)
    mask[:, :, past_len:] = cells[None, :, None] >= cells[None, None, :]
    mask[0, 0, 2] = False
    o, _, t, _ = _run(sess, model, tok, pos, mask, past_np, past_t)
    errors["multi_query"] = float(np.abs(o - t).max())
    worst = max(errors.values())
    return {"max_abs_logit_error": worst, "by_phase": errors, "logit_scale": scale,
            "batch": batch, "decode_steps": decode_steps}


@torch.no_grad()
def tokenizer_parity(vq: VQModel, encoder_path: Path, decoder_path: Path, batch: int = 2, seed: int = 0) -> dict:
    vq.eval()
    g = torch.Generator().manual_seed(seed)
    grid = vq.cfg.grid
    codes = torch.randint(0, vq.cfg.codebook_size, (batch, grid, grid), generator=g)
    ref = vq.decode_codes(codes)
    dec = _session(decoder_path).run(None, {"codes": codes.numpy()})[0]
    images = ref.clamp(-1, 1)
    enc = _session(encoder_path).run(None, {"image": images.numpy()})[0]
    agree = float((enc == vq.encode_codes(images).numpy()).mean())
    return {"decoder_max_abs_error": float(np.abs(dec - ref.numpy()).max()), "encoder_code_agreement": agree}


def check(transformer: dict | None, tokenizer: dict | None, precision: str = "fp32") -> None:
    """Raise ParityError when an fp32 export is off (quantized graphs carry their own bounds)."""
    if precision != "fp32":
        return
    problems = []
    if transformer and transformer["max_abs_logit_error"] > FP32_LOGIT_ATOL:
        problems.append(f"transformer logits differ by {transformer['max_abs_logit_error']:.3g} "
                        f"(> {FP32_LOGIT_ATOL}; by phase {transformer['by_phase']})")
    if tokenizer and tokenizer["decoder_max_abs_error"] > FP32_IMAGE_ATOL:
        problems.append(f"tokenizer decoder differs by {tokenizer['decoder_max_abs_error']:.3g} (> {FP32_IMAGE_ATOL})")
    if tokenizer and tokenizer["encoder_code_agreement"] < MIN_CODE_AGREEMENT:
        problems.append(f"tokenizer encoder codes agree on only {tokenizer['encoder_code_agreement']:.1%}")
    if problems:
        raise ParityError("ONNX export does not match PyTorch: " + "; ".join(problems))
