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

# Quantized graphs carry their own, looser bounds, checked at export. The transformer's error is
# relative: max |logit error| / max |fp32 logit| over prefill, decode steps and a multi-query call
# (each side feeding its own KV cache); argmax agreement counts every logit row of those calls.
# Chosen from measurements on random weights, which are harsher than trained ones (near-tied
# logits, noise amplified layer by layer):
#                 GPT-Tiny x10 (test fixture)     6 layers x 384d, vocab 1024, weights x2.5
#   fp16          rel 0.003, agreement 1.00        rel 0.002, agreement 1.00
#   int8 (nbits8) rel 0.04,  agreement 1.00        rel 0.046, agreement 0.90
#   int8 dynamic  rel 0.09,  agreement 0.94        rel 0.09,  agreement 0.81
#   int4 (bs 32)  rel 0.58,  agreement 0.58        rel 0.53,  agreement 0.35-0.42
# int4 on random weights is dominated by quantization noise; its bound only catches a broken graph
# (a chance argmax agrees 1/vocab of the time). Tokenizer: fp16 decoder max error 0.003, encoder
# codes 99-100 % equal; int8/int4 variants keep the tokenizer fp32 (the fp32 bounds apply).
QUANT_BOUNDS = {
    "fp16": {"relative_logit_error": 0.03, "argmax_agreement": 0.95, "image_atol": 0.03, "code_agreement": 0.95},
    "int8": {"relative_logit_error": 0.25, "argmax_agreement": 0.75, "image_atol": FP32_IMAGE_ATOL,
             "code_agreement": MIN_CODE_AGREEMENT},
    "int4": {"relative_logit_error": 1.0, "argmax_agreement": 0.2, "image_atol": FP32_IMAGE_ATOL,
             "code_agreement": MIN_CODE_AGREEMENT},
}
# Parity sizes for quantized variants: more logit rows make argmax agreement meaningful.
QUANT_PARITY = {"batch": 4, "decode_steps": 8}


from .errors import ExportError  # noqa: E402


class ParityError(ExportError):
    """An exported graph disagrees with the PyTorch model beyond tolerance."""


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run_onnx(sess, n_layer: int, ids, pos, mask, past_np):
    feeds = {"input_ids": ids, "position_ids": pos, "attention_mask": mask}
    for i in range(n_layer):
        feeds[f"past_key_values.{i}.key"], feeds[f"past_key_values.{i}.value"] = past_np[2 * i], past_np[2 * i + 1]
    out = sess.run(None, feeds)
    return out[0].astype(np.float32), out[1:]


def _run(sess, model: GPT, ids, pos, mask, past_np, past_t, one_query_per_call: bool = False):
    """Both sides of one call. one_query_per_call: the ONNX side runs the queries one by one over
    its growing past, as the runtime does for the fused graph's 1.22 form (runtime/compat.py)."""
    n_layer = model.cfg.n_layer
    if one_query_per_call and ids.shape[1] > 1:
        rows, past_len = [], past_np[0].shape[2]
        for j in range(ids.shape[1]):
            o, past_np = _run_onnx(sess, n_layer, ids[:, j:j + 1].numpy(), pos[:, j:j + 1].numpy(),
                                   mask[:, j:j + 1, :past_len + j + 1].numpy(), past_np)
            rows.append(o)
        o = np.concatenate(rows, axis=1)
    else:
        o, past_np = _run_onnx(sess, n_layer, ids.numpy(), pos.numpy(), mask.numpy(), past_np)
    with torch.no_grad():
        logits, presents = model(ids, pos, mask, past_t)
    return o, past_np, logits.numpy(), presents


def _kv_dtype(sess) -> type:
    """float16 for an fp16-KV graph, else float32 (as the runtime's TransformerRunner decides)."""
    first = next(i for i in sess.get_inputs() if i.name.startswith("past_key_values."))
    return np.float16 if first.type == "tensor(float16)" else np.float32


def _agreement(o: np.ndarray, t: np.ndarray) -> list[bool]:
    return list((o.argmax(-1) == t.argmax(-1)).reshape(-1))


@torch.no_grad()
def transformer_parity(model: GPT, path: Path, batch: int = 2, decode_steps: int = 4, seed: int = 0,
                       multi_query: str = "batched") -> dict:
    """Max |logit| error per phase, feeding each side its own cache (errors would compound).
    multi_query: the graph's form (runtime/compat.py); "one-query-per-call" runs the
    multi-query call as the runtime does for that form."""
    cfg, sess = model.cfg, _session(path)
    model.eval()
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, cfg.num_classes, (batch,), generator=g)
    labels[-1] = cfg.null_class
    ids = model.class_token(labels)[:, None]
    pos = torch.zeros_like(ids)
    mask = torch.ones(batch, 1, 1, dtype=torch.bool)
    empty = [np.zeros((batch, cfg.n_head, 0, cfg.head_dim), _kv_dtype(sess)) for _ in range(2 * cfg.n_layer)]
    o, past_np, t, past_t = _run(sess, model, ids, pos, mask, empty, None)
    errors = {"prefill": float(np.abs(o - t).max())}
    agree = {"prefill": _agreement(o, t), "decode": [], "multi_query": [], "prefix_prefill": []}
    scale = float(np.abs(t).max())
    steps = []
    for j in range(decode_steps):
        tok = torch.randint(0, cfg.vocab_size, (batch, 1), generator=g)
        pos = model.cell_position(torch.full_like(tok, j))
        mask = torch.ones(batch, 1, j + 2, dtype=torch.bool)
        o, past_np, t, past_t = _run(sess, model, tok, pos, mask, past_np, past_t)
        steps.append(float(np.abs(o - t).max()))
        agree["decode"] += _agreement(o, t)
    errors["decode"] = max(steps)
    # Several query tokens at non-contiguous cells, with a mask that hides some of the past
    # and keeps raster causality among the queries (how parallel decoding calls the graph;
    # queries come in raster order, the fused graph is causal in call order).
    cells = torch.tensor([decode_steps, decode_steps + 3, decode_steps + cfg.grid])  # raster order, gaps
    cells = cells.clamp(max=cfg.grid * cfg.grid - 1)
    s, past_len = cells.numel(), decode_steps + 1
    tok = torch.randint(0, cfg.vocab_size, (batch, s), generator=g)
    pos = model.cell_position(cells).expand(batch, -1).contiguous()
    mask = torch.ones(batch, s, past_len + s, dtype=torch.bool)
    mask[:, :, past_len:] = cells[None, :, None] >= cells[None, None, :]
    mask[0, 0, 2] = False
    o, _, t, _ = _run(sess, model, tok, pos, mask, past_np, past_t, multi_query == "one-query-per-call")
    errors["multi_query"] = float(np.abs(o - t).max())
    agree["multi_query"] = _agreement(o, t)
    # A prefill of the class token and a known prefix that crosses a row, so its positions are
    # not contiguous (editing and continuation prefill this way).
    n_known = min(cfg.grid + 2, cfg.grid * cfg.grid - 1)
    cells = torch.arange(n_known)
    ids = torch.cat([model.class_token(labels)[:, None], torch.randint(0, cfg.vocab_size, (batch, n_known),
                                                                      generator=g)], 1)
    pos = torch.cat([torch.zeros(1, dtype=torch.long), model.cell_position(cells)]).expand(batch, -1).contiguous()
    mask = torch.ones(batch, n_known + 1, n_known + 1, dtype=torch.bool).tril()
    o, _, t, _ = _run(sess, model, ids, pos, mask, empty, None, multi_query == "one-query-per-call")
    errors["prefix_prefill"] = float(np.abs(o - t).max())
    agree["prefix_prefill"] = _agreement(o, t)
    worst = max(errors.values())
    every = [a for v in agree.values() for a in v]
    return {"max_abs_logit_error": worst, "by_phase": errors, "logit_scale": scale,
            "relative_logit_error": worst / max(scale, 1e-12),
            "argmax_agreement": float(np.mean(every)),
            "argmax_agreement_by_phase": {k: float(np.mean(v)) for k, v in agree.items()},
            "argmax_positions": len(every), "batch": batch, "decode_steps": decode_steps}


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
    """Raise ParityError when an export is off: fp32 to float rounding, quantized within QUANT_BOUNDS.
    Comparisons are written so that a NaN measurement fails (NaN compares false to any bound)."""
    problems = []
    if precision == "fp32":
        if transformer and not transformer["max_abs_logit_error"] <= FP32_LOGIT_ATOL:
            problems.append(f"transformer logits differ by {transformer['max_abs_logit_error']:.3g} "
                            f"(> {FP32_LOGIT_ATOL}; by phase {transformer['by_phase']})")
        image_atol, min_codes = FP32_IMAGE_ATOL, MIN_CODE_AGREEMENT
    else:
        if precision not in QUANT_BOUNDS:
            raise ValueError(f"no parity bounds for precision {precision!r}")
        b = QUANT_BOUNDS[precision]
        if transformer and not transformer["relative_logit_error"] <= b["relative_logit_error"]:
            problems.append(f"{precision} transformer logits differ by {transformer['max_abs_logit_error']:.3g} = "
                            f"{transformer['relative_logit_error']:.1%} of the logit scale "
                            f"(> {b['relative_logit_error']:.0%}; by phase {transformer['by_phase']})")
        if transformer and not transformer["argmax_agreement"] >= b["argmax_agreement"]:
            problems.append(f"{precision} transformer argmax agrees with fp32 on only "
                            f"{transformer['argmax_agreement']:.1%} of rows (< {b['argmax_agreement']:.0%})")
        image_atol, min_codes = b["image_atol"], b["code_agreement"]
    if tokenizer and not tokenizer["decoder_max_abs_error"] <= image_atol:
        problems.append(f"tokenizer decoder differs by {tokenizer['decoder_max_abs_error']:.3g} (> {image_atol})")
    if tokenizer and not tokenizer["encoder_code_agreement"] >= min_codes:
        problems.append(f"tokenizer encoder codes agree on only {tokenizer['encoder_code_agreement']:.1%}")
    if problems:
        kind = "ONNX export" if precision == "fp32" else f"{precision} variant"
        raise ParityError(f"{kind} does not match PyTorch: " + "; ".join(problems))
