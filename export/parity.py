"""ONNX-vs-PyTorch parity, measured at export: prefill, decode steps, multi-query calls, tokenizer."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from .arpg import ARPG
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


def _run_onnx(sess, n_layer: int, ids, pos, mask, past_np, qpos=None):
    feeds = {"input_ids": ids, "position_ids": pos, "attention_mask": mask}
    if qpos is not None:  # ARPG: the queries' cells
        feeds["query_positions"] = qpos
    for i in range(n_layer):
        feeds[f"past_key_values.{i}.key"], feeds[f"past_key_values.{i}.value"] = past_np[2 * i], past_np[2 * i + 1]
    out = sess.run(None, feeds)
    return out[0].astype(np.float32), out[1:]


@dataclass
class ProbeCall:
    """One transformer call of the parity probe and PyTorch's logits for it. past: "empty" (a fresh
    cache) or "chain" (the cache the earlier chained calls built); extends: whether this call's
    present becomes the chain's cache (prefill and decode steps do, the probes after them don't)."""

    phase: str
    ids: np.ndarray
    pos: np.ndarray
    mask: np.ndarray
    past: str
    extends: bool
    logits: np.ndarray
    qpos: np.ndarray | None = None  # ARPG graphs: the queries' cells (mask rows S.. are theirs)


@dataclass
class TransformerReference:
    """The parity probe's inputs with PyTorch's outputs, computed once. The ONNX side needs no torch
    model: an export releases its weights before any onnxruntime session opens (peak memory)."""

    calls: list[ProbeCall]
    batch: int
    decode_steps: int
    n_layer: int  # KV pairs of the graph (ARPG: the self half + the shared K/V)
    n_kv_head: int
    head_dim: int


@torch.no_grad()
def transformer_reference(model: GPT, batch: int = 2, decode_steps: int = 4, seed: int = 0) -> TransformerReference:
    """PyTorch's logits for the probe: prefill, decode steps, a multi-query call at non-contiguous
    cells over the decoded cache, and a known-prefix prefill that crosses a row. ARPG models:
    `arpg_reference`."""
    if isinstance(model, ARPG):
        return arpg_reference(model, batch, decode_steps, seed)
    cfg = model.cfg
    model.eval()
    g = torch.Generator().manual_seed(seed)
    calls: list[ProbeCall] = []

    def call(phase, ids, pos, mask, past_t, extends):
        logits, presents = model(ids, pos, mask, past_t)
        calls.append(ProbeCall(phase, ids.numpy(), pos.numpy(), mask.numpy(), "empty" if past_t is None else "chain",
                               extends, logits.numpy()))
        return presents

    labels = torch.randint(0, cfg.num_classes, (batch,), generator=g)
    labels[-1] = cfg.null_class
    ids = model.class_token(labels)[:, None]
    past_t = call("prefill", ids, torch.zeros_like(ids), torch.ones(batch, 1, 1, dtype=torch.bool), None, True)
    for j in range(decode_steps):
        tok = torch.randint(0, cfg.vocab_size, (batch, 1), generator=g)
        past_t = call("decode", tok, model.cell_position(torch.full_like(tok, j)),
                      torch.ones(batch, 1, j + 2, dtype=torch.bool), past_t, True)
    # Several query tokens at non-contiguous cells, with a mask that hides some of the past
    # and keeps raster causality among the queries (how parallel decoding calls the graph;
    # queries come in raster order, the fused graph is causal in call order).
    cells = torch.tensor([decode_steps, decode_steps + 3, decode_steps + cfg.grid])  # raster order, gaps
    cells = cells.clamp(max=cfg.grid * cfg.grid - 1)
    s, past_len = cells.numel(), decode_steps + 1
    tok = torch.randint(0, cfg.vocab_size, (batch, s), generator=g)
    mask = torch.ones(batch, s, past_len + s, dtype=torch.bool)
    mask[:, :, past_len:] = cells[None, :, None] >= cells[None, None, :]
    mask[0, 0, 2] = False
    call("multi_query", tok, model.cell_position(cells).expand(batch, -1).contiguous(), mask, past_t, False)
    # A prefill of the class token and a known prefix that crosses a row, so its positions are
    # not contiguous (editing and continuation prefill this way).
    n_known = min(cfg.grid + 2, cfg.grid * cfg.grid - 1)
    cells = torch.arange(n_known)
    ids = torch.cat([model.class_token(labels)[:, None], torch.randint(0, cfg.vocab_size, (batch, n_known),
                                                                      generator=g)], 1)
    pos = torch.cat([torch.zeros(1, dtype=torch.long), model.cell_position(cells)]).expand(batch, -1).contiguous()
    call("prefix_prefill", ids, pos, torch.ones(batch, n_known + 1, n_known + 1, dtype=torch.bool).tril(), None, False)
    return TransformerReference(calls, batch, decode_steps, cfg.n_layer, cfg.n_head, cfg.head_dim)


@torch.no_grad()
def arpg_reference(model: ARPG, batch: int = 2, decode_steps: int = 4, seed: int = 0) -> TransformerReference:
    """PyTorch's logits for the export's parity probe, along ARPG's generate loop: the class call with
    the first cells' queries, `decode_steps` calls feeding the last cells' codes plus the next queries
    (each row in its own random order), a call whose mask hides part of the cache, and an editing
    call (class + kept cells + queries) on an empty cache."""
    cfg = model.cfg
    model.eval()
    g = torch.Generator().manual_seed(seed)
    n = cfg.grid * cfg.grid
    calls: list = []

    def call(phase, ids, pos, qpos, mask, past, extends):
        s = ids.shape[1]
        logits, presents = model(ids, pos, qpos, past, mask[:, :s], mask[:, s:])
        calls.append(ProbeCall(phase, ids.numpy(), pos.numpy(), mask.numpy(), "empty" if past is None else "chain",
                               extends, logits.numpy(), qpos.numpy()))
        return presents

    labels = torch.randint(0, cfg.num_classes, (batch,), generator=g)
    labels[-1] = cfg.num_classes  # a null-class row, as guidance feeds
    orders = torch.stack([torch.randperm(n, generator=g) for _ in range(batch)])
    per = max(1, min(3, n // (decode_steps + 3)))
    ids, pos, past, length, at = model.class_token(labels)[:, None], torch.zeros(batch, 1, dtype=torch.long), None, 0, 0
    for t in range(decode_steps + 1):
        cells = orders[:, at:at + per]
        qpos = model.cell_position(cells)
        s = ids.shape[1]
        past = call("prefill" if t == 0 else "decode", ids, pos, qpos,
                    torch.ones(batch, s + per, length + s, dtype=torch.bool), past, True)
        length, at = length + s, at + per
        ids, pos = torch.randint(0, cfg.vocab_size, (batch, per), generator=g), qpos
    cells = orders[:, at:at + per]
    s = ids.shape[1]
    mask = torch.ones(batch, s + per, length + s, dtype=torch.bool)
    mask[0, 0, 1] = False  # hide a cached token from one context row and from one query
    mask[-1, s, 2] = False
    call("multi_query", ids, pos, model.cell_position(cells), mask, past, False)
    kept = orders[:, : n // 2]
    ids = torch.cat([model.class_token(labels)[:, None], torch.randint(0, cfg.vocab_size, kept.shape, generator=g)], 1)
    pos = torch.cat([torch.zeros(batch, 1, dtype=torch.long), model.cell_position(kept)], 1)
    qcells = orders[:, n // 2: n // 2 + per]
    call("prefix_prefill", ids, pos, model.cell_position(qcells),
         torch.ones(batch, ids.shape[1] + per, ids.shape[1], dtype=torch.bool), None, False)
    return TransformerReference(calls, batch, decode_steps, cfg.n_layer // 2 + 1, cfg.n_head, cfg.head_dim)


def _run_call(sess, n_layer: int, c: ProbeCall, past_np, row_by_row: bool):
    """The ONNX side of one probe call. row_by_row: several tokens over a past run one row per call,
    as the runtime does for the fused graph's 1.22 form (runtime/compat.py). ARPG calls (with query
    positions) run whole: their traced graph has no such limit."""
    if c.qpos is not None:
        return _run_onnx(sess, n_layer, c.ids, c.pos, c.mask, past_np, c.qpos)
    if row_by_row and c.ids.shape[1] > 1 and past_np[0].shape[2] and c.ids.shape[0] > 1:
        rows = [_run_onnx(sess, n_layer, c.ids[b:b + 1], c.pos[b:b + 1], c.mask[b:b + 1],
                          [p[b:b + 1] for p in past_np]) for b in range(c.ids.shape[0])]
        return (np.concatenate([o for o, _ in rows]),
                [np.concatenate([present[k] for _, present in rows]) for k in range(len(past_np))])
    return _run_onnx(sess, n_layer, c.ids, c.pos, c.mask, past_np)


def _kv_dtype(sess) -> type:
    """float16 for an fp16-KV graph, else float32 (as the runtime's TransformerRunner decides)."""
    first = next(i for i in sess.get_inputs() if i.name.startswith("past_key_values."))
    return np.float16 if first.type == "tensor(float16)" else np.float32


def _agreement(o: np.ndarray, t: np.ndarray) -> list[bool]:
    return list((o.argmax(-1) == t.argmax(-1)).reshape(-1))


def transformer_parity(model: GPT | TransformerReference, path: Path, batch: int = 2, decode_steps: int = 4,
                       seed: int = 0, row_by_row: bool = False) -> dict:
    """Max |logit| error per phase, feeding each side its own cache (errors would compound).

    Args:
        model: the PyTorch model, or its `transformer_reference` (batch, decode_steps and seed are
            then the reference's own).
        path: the transformer graph.
        row_by_row: the graph takes several tokens over a past one row per call (the fused 1.22
            form, runtime/compat.py), as the runtime runs it.
    """
    ref = model if isinstance(model, TransformerReference) else transformer_reference(model, batch, decode_steps, seed)
    sess = _session(path)
    empty = [np.zeros((ref.batch, ref.n_kv_head, 0, ref.head_dim), _kv_dtype(sess)) for _ in range(2 * ref.n_layer)]
    chain = empty
    worst: dict[str, float] = {}
    agree: dict[str, list[bool]] = {k: [] for k in ("prefill", "decode", "multi_query", "prefix_prefill")}
    for c in ref.calls:
        o, present = _run_call(sess, ref.n_layer, c, empty if c.past == "empty" else chain, row_by_row)
        if c.extends:
            chain = present
        worst[c.phase] = max(worst.get(c.phase, 0.0), float(np.abs(o - c.logits).max()))
        agree.setdefault(c.phase, []).extend(_agreement(o, c.logits))
    scale = float(np.abs(ref.calls[0].logits).max())
    if ref.calls[0].qpos is not None:  # ARPG: its first call's queries read the class alone; all calls set the scale
        scale = max(float(np.abs(c.logits).max()) for c in ref.calls)
    top = max(worst.values())
    every = [a for v in agree.values() for a in v]
    return {"max_abs_logit_error": top, "by_phase": worst, "logit_scale": scale,
            "relative_logit_error": top / max(scale, 1e-12),
            "argmax_agreement": float(np.mean(every)),
            "argmax_agreement_by_phase": {k: float(np.mean(v)) for k, v in agree.items()},
            "argmax_positions": len(every), "batch": ref.batch, "decode_steps": ref.decode_steps}


@dataclass
class TokenizerReference:
    """Codes, PyTorch's decoded images and its codes for those images (see TransformerReference)."""

    codes: np.ndarray
    images: np.ndarray
    image_codes: np.ndarray


@torch.no_grad()
def tokenizer_reference(vq: VQModel, batch: int = 2, seed: int = 0) -> TokenizerReference:
    vq.eval()
    g = torch.Generator().manual_seed(seed)
    grid = vq.cfg.grid
    codes = torch.randint(0, vq.cfg.codebook_size, (batch, grid, grid), generator=g)
    # One image at a time: at 256 px the decoder's activations outweigh a small model's weights.
    images = torch.cat([vq.decode_codes(c[None]) for c in codes])
    image_codes = torch.cat([vq.encode_codes(i[None].clamp(-1, 1)) for i in images])
    return TokenizerReference(codes.numpy(), images.numpy(), image_codes.numpy())


def tokenizer_parity(vq: VQModel | TokenizerReference, encoder_path: Path, decoder_path: Path, batch: int = 2,
                     seed: int = 0) -> dict:
    """Decoder max |pixel| error and encoder code agreement; `vq` may be its `tokenizer_reference`."""
    ref = vq if isinstance(vq, TokenizerReference) else tokenizer_reference(vq, batch, seed)
    dec = _session(decoder_path).run(None, {"codes": ref.codes})[0]
    enc = _session(encoder_path).run(None, {"image": np.clip(ref.images, -1, 1)})[0]
    from .tokenizer_quant import decoder_precision

    return {"decoder_max_abs_error": float(np.abs(dec - ref.images).max()),
            "encoder_code_agreement": float((enc == ref.image_codes).mean()),
            "decoder_precision": decoder_precision(decoder_path)}


class References:
    """PyTorch's side of an export's parity checks, computed on first use and kept, so the export can
    release the PyTorch weights before any onnxruntime session opens: the torch model and the graph's
    weights are never in memory together. fp32 graphs use the small probe, quantized ones QUANT_PARITY."""

    def __init__(self, gpt: GPT, vq: VQModel):
        self.gpt, self.vq = gpt, vq
        self._transformer: dict[str, TransformerReference] = {}
        self._tokenizer: TokenizerReference | None = None

    def transformer(self, precision: str) -> TransformerReference:
        key = "fp32" if precision == "fp32" else "quantized"
        if key not in self._transformer:
            self._transformer[key] = transformer_reference(self.gpt, **(QUANT_PARITY if key == "quantized" else {}))
        return self._transformer[key]

    def tokenizer(self) -> TokenizerReference:
        if self._tokenizer is None:
            self._tokenizer = tokenizer_reference(self.vq)
        return self._tokenizer

    def prepare_transformer(self, precisions) -> None:
        for precision in precisions:
            self.transformer(precision)

    def prepare(self, precisions) -> "References":
        """Compute every reference the given precisions' checks need (before the weights go)."""
        self.prepare_transformer(precisions)
        self.tokenizer()
        return self


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
    # A decoder variant of its own precision (--tokenizer-quant) was bounded by its PSNR when made.
    bounded_by_psnr = tokenizer and tokenizer.get("decoder_precision", "fp32") not in ("fp32", precision)
    if tokenizer and not bounded_by_psnr and not tokenizer["decoder_max_abs_error"] <= image_atol:
        problems.append(f"tokenizer decoder differs by {tokenizer['decoder_max_abs_error']:.3g} (> {image_atol})")
    if tokenizer and not tokenizer["encoder_code_agreement"] >= min_codes:
        problems.append(f"tokenizer encoder codes agree on only {tokenizer['encoder_code_agreement']:.1%}")
    if problems:
        kind = "ONNX export" if precision == "fp32" else f"{precision} variant"
        raise ParityError(f"{kind} does not match PyTorch: " + "; ".join(problems))
