"""Export a Nitro-AR model (export/nitro.py) to a torch-free model directory (family `nitro-ar`).

Graphs (docs/model-directory.md, section 10): the text encoder (a Llama-shaped model from transformers,
its last hidden state after the final norm), the masked AR transformer, the flow head(s), and for
joint_gan the global transformer (first stage on one mask token) and the global head, plus a latent
decoder (DC-AE from diffusers for the published models; a small convolutional decoder for test models).
The tokenizer ships as a `tokenizers` JSON file. int8 variants quantize every MatMul weight (blockwise
8-bit `MatMulNBits`), the text encoder optionally to 4 bits; each graph's error against its fp32 graph on
a fixed probe is recorded in the manifest (`parity`).

Needs the export extra (torch, onnx; transformers for the text encoder).
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import math
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from tessera.runtime.spec import (MANIFEST_NAME, FileEntry, GraphSpec, LatentDecoderSpec, NitroLoop, NitroSpec,
                                  TextEncoderSpec, NITRO_GRAPHS, NITRO_VARIANT_GRAPHS)

from .errors import ExportError
from .nitro import NitroTransformer
from .quantize import external_data_threshold, nbits_weight_only, quiet_logging, save_graph

OPSET = 18
MIN_ORT = "1.22"
DCAE_LATENT_SCALE = 0.41407  # the published models' `scaling_factor` (configs/config*.yaml)
DEFAULT_ITERATIONS = {"gan": 20, "joint_gan": 2}
DEFAULT_HEAD_STEPS = {"gan": 3, "joint_gan": 6}
DEFAULT_GUIDANCE = 4.0


# --- graph wrappers ---------------------------------------------------------------------------------------
class _Transformer(nn.Module):
    def __init__(self, model: NitroTransformer):
        super().__init__()
        self.model = model

    def forward(self, tokens, mask, text):
        return self.model(tokens, mask, text)


class _GlobalTransformer(nn.Module):
    def __init__(self, model: NitroTransformer):
        super().__init__()
        self.model = model

    def forward(self, text):
        return self.model.global_forward(text)


class _RowHead(nn.Module):
    """gan's head on rows [N, C]: run as [1, N, C] so every Linear is a MatMul (quantizable), not a Gemm."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x, t, z):
        return self.head(x[None], t, z[None])[0]


class _Head(nn.Module):
    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x, t, z):
        return self.head(x, t, z)


def _export(module: nn.Module, args: tuple, path: Path, names: str, dynamic: dict) -> None:
    inputs, outputs = NITRO_GRAPHS[names]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True, dynamo=False)
    save_graph(onnx.load(str(path)), path)  # weights to <graph>.data past the threshold


def export_model_graphs(model: NitroTransformer, out: Path) -> dict[str, Path]:
    """The transformer and head graphs of `model` in `out` (fp32). Returns name -> path."""
    cfg = model.cfg
    b, cells, c = 2, cfg.cells, cfg.latent_channels
    tokens = torch.randn(b, cells, c)
    mask = (torch.rand(b, cells) > 0.5).float()
    text = torch.randn(b, cfg.text_tokens, cfg.text_dim)
    paths = {}
    batch = {0: "batch"}
    p = paths["transformer"] = out / "transformer.onnx"
    _export(_Transformer(model), (tokens, mask, text), p, "transformer",
            {"tokens": batch, "mask": batch, "text": batch, "hidden": batch})
    if cfg.variant == "gan":
        p = paths["head"] = out / "head.onnx"
        _export(_RowHead(model.diffloss.net), (torch.randn(5, c), torch.full((5,), 500.0), torch.randn(5, cfg.dim)),
                p, "head", {"x": {0: "rows"}, "t": {0: "rows"}, "z": {0: "rows"}, "velocity": {0: "rows"}})
    else:
        p = paths["global_transformer"] = out / "global_transformer.onnx"
        _export(_GlobalTransformer(model), (text,), p, "global_transformer", {"text": batch, "hidden": batch})
        p = paths["global_head"] = out / "global_head.onnx"
        _export(_Head(model.diffloss_global.net), (torch.randn(b, 1, c), torch.full((b,), 500.0),
                                                   torch.randn(b, 1, cfg.dim)),
                p, "global_head", {"x": batch, "t": batch, "z": batch, "velocity": batch})
        p = paths["head"] = out / "head.onnx"
        _export(_Head(model.diffloss.net), (tokens, torch.full((b,), 500.0), torch.randn(b, cells, cfg.dim)),
                p, "head", {"x": batch, "t": batch, "z": batch, "velocity": batch})
    return paths


# --- text encoder ---------------------------------------------------------------------------------------
class _TextEncoder(nn.Module):
    def __init__(self, llama: nn.Module):
        super().__init__()
        self.llama = llama

    def forward(self, input_ids, attention_mask):
        return self.llama(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def tiny_llama(text_dim: int, vocab_size: int, seed: int = 0) -> nn.Module:
    """A Llama-shaped text encoder with random weights (transformers' LlamaModel), for test models."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=text_dim, intermediate_size=2 * text_dim, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      rope_theta=500000.0, tie_word_embeddings=True)
    return LlamaModel(cfg).eval()


def load_llama(path: str | Path) -> nn.Module:
    """A local transformers Llama checkpoint directory (e.g. Llama-3.2-1B) as its base model (no LM head)."""
    try:
        from transformers import AutoModel
    except ImportError:
        raise ExportError("the text encoder needs transformers: pip install 'tessera-ar[export]'") from None
    return AutoModel.from_pretrained(str(path), torch_dtype=torch.float32).eval()


def export_text_encoder(llama: nn.Module, path: Path, max_tokens: int) -> None:
    """[B, max_tokens] ids + attention mask -> the final norm's states (what `hidden_states[-1]` is)."""
    ids = torch.zeros(2, max_tokens, dtype=torch.int64)
    am = torch.ones(2, max_tokens, dtype=torch.int64)
    am[0, 3:] = 0
    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings(), quiet_logging(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the dynamo exporter's progress lines and onnx_ir's INFO records
        prog = torch.onnx.export(_TextEncoder(llama), (ids, am), input_names=["input_ids", "attention_mask"],
                                 output_names=["last_hidden_state"], dynamic_shapes=({0: batch}, {0: batch}),
                                 opset_version=OPSET, dynamo=True, verbose=False)
        prog.save(str(path), external_data=True)  # a 1B encoder is past protobuf's 2 GB
    del prog
    data = path.with_name(path.name + ".data")
    if not data.exists() or data.stat().st_size <= external_data_threshold():
        save_graph(onnx.load(str(path)), path)  # one file when small


# --- tokenizer ---------------------------------------------------------------------------------------------
def tiny_tokenizer(words: list[str]) -> "object":
    """A word-level tokenizers.Tokenizer shaped like Llama 3's for test models: lower-cased words, a
    begin-of-text id prepended, pad = end-of-text. Ids: 0 unknown, 1 begin, 2 end, then the words."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {"<unk>": 0, "<|begin_of_text|>": 1, "<|end_of_text|>": 2}
    for w in words:
        vocab.setdefault(w.lower(), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", 1)])
    return tok


# --- decoder ---------------------------------------------------------------------------------------------
class TinyLatentDecoder(nn.Module):
    """A small convolutional latent -> image decoder standing in for DC-AE in test models: 1x1 conv, then
    per factor 2 a pixel shuffle and a 3x3 conv, then 3 output channels."""

    def __init__(self, latent_channels: int, downsample: int, width: int = 32, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        ups = int(round(math.log2(downsample)))
        if 2 ** ups != downsample:
            raise ExportError(f"the test decoder upsamples by powers of 2, got {downsample}")
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, width * 4, 1)]
        for _ in range(ups):
            layers += [nn.PixelShuffle(2), nn.Conv2d(width, width * 4, 3, padding=1), nn.SiLU()]
        layers[-2] = nn.Conv2d(width, 3, 3, padding=1)
        layers.pop()
        self.net = nn.Sequential(*layers)

    def forward(self, latent):
        return torch.tanh(self.net(latent))


class _DCAEDecoder(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latent):
        return self.vae.decode(latent).sample


def export_decoder(decoder: nn.Module, path: Path, latent_channels: int, grid: int) -> None:
    latent = torch.randn(1, latent_channels, grid, grid)
    _export(decoder, (latent,), path, "decoder", {"latent": {0: "batch"}, "image": {0: "batch"}})
    _normalise_perms(path)


def _normalise_perms(path: Path) -> None:
    """Negative axes in Transpose `perm` (diffusers' `movedim(-1, 1)` traces to perm [0, -1, 1, 2]) are
    refused by onnxruntime: write them as the non-negative axes they mean."""
    model = onnx.load(str(path))
    changed = False
    for node in model.graph.node:
        if node.op_type != "Transpose":
            continue
        for a in node.attribute:
            if a.name == "perm" and any(v < 0 for v in a.ints):
                rank = len(a.ints)
                fixed = [v % rank for v in a.ints]
                del a.ints[:]
                a.ints.extend(fixed)
                changed = True
    if changed:
        save_graph(model, path)


def load_dcae_decoder(path: str | Path) -> nn.Module:
    """DC-AE (diffusers' AutoencoderDC) from a local diffusers directory, as a latent -> image module."""
    try:
        from diffusers import AutoencoderDC
    except ImportError:
        raise ExportError("the DC-AE decoder needs diffusers: pip install diffusers") from None
    return _DCAEDecoder(AutoencoderDC.from_pretrained(str(path), torch_dtype=torch.float32).eval())


def random_dcae(seed: int = 0) -> nn.Module:
    """DC-AE f32c32 (SANA 1.0's shape, diffusers' AutoencoderDC) with random weights, as a latent -> image
    module: the published decoder's size and cost, for timing and memory measurements."""
    try:
        from diffusers import AutoencoderDC
    except ImportError:
        raise ExportError("the DC-AE decoder needs diffusers: pip install diffusers") from None
    torch.manual_seed(seed)
    vit = "EfficientViTBlock"
    vae = AutoencoderDC(in_channels=3, latent_channels=32, attention_head_dim=32,
                        encoder_block_types=("ResBlock",) * 3 + (vit,) * 3,
                        decoder_block_types=("ResBlock",) * 3 + (vit,) * 3,
                        encoder_layers_per_block=(2, 2, 2, 3, 3, 3), decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
                        upsample_block_type="interpolate", downsample_block_type="Conv",
                        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=DCAE_LATENT_SCALE)
    return _DCAEDecoder(vae.eval())


# --- the directory --------------------------------------------------------------------------------------
@dataclass
class NitroParts:
    """What a model directory is made of, in PyTorch (or files), before export."""

    model: NitroTransformer
    text_encoder: nn.Module  # a transformers Llama base model
    tokenizer: object  # a tokenizers.Tokenizer
    pad_token_id: int
    decoder: nn.Module  # latent [B, C, g, g] / latent_scale -> image [B, 3, H, W] in [-1, 1]
    downsample: int
    latent_scale: float = DCAE_LATENT_SCALE
    name: str = "nitro-ar"
    description: str = ""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _probe_feeds(name: str, spec_loop: NitroLoop, text: TextEncoderSpec, decoder: LatentDecoderSpec) -> dict:
    """Fixed inputs on which a quantized graph is compared with its fp32 graph."""
    rng = np.random.default_rng(20)
    g, c, d = spec_loop.grid, spec_loop.latent_channels, spec_loop.dim
    cells = g * g
    if name == "text_encoder":
        ids = rng.integers(3, 8, (2, text.max_tokens)).astype(np.int64)
        am = np.ones((2, text.max_tokens), np.int64)
        am[1, 4:] = 0
        return {"input_ids": ids, "attention_mask": am}
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    if name == "transformer":
        return {"tokens": f(2, cells, c), "mask": (rng.random((2, cells)) > 0.5).astype(np.float32),
                "text": f(2, text.max_tokens, text.hidden)}
    if name == "global_transformer":
        return {"text": f(2, text.max_tokens, text.hidden)}
    if name == "head" and spec_loop.variant == "gan":
        return {"x": f(8, c), "t": np.full(8, 667.0, np.float32), "z": f(8, d)}
    if name in ("head", "global_head"):
        n = cells if name == "head" else 1
        return {"x": f(2, n, c), "t": np.full(2, 667.0, np.float32), "z": f(2, n, d)}
    return {"latent": f(1, c, g, g)}


def _run(path: Path, feeds: dict) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    out = sess.run(None, feeds)[0]
    del sess
    return out


def quantize_graph(path: Path, bits: int, block_size: int = 32, embeddings: bool = False) -> dict:
    """Blockwise symmetric weight-only quantization of every constant-weight MatMul, in place; with
    `embeddings` (the text encoder) also the embedding table's Gather (a quarter of Llama-3.2-1B)."""
    accuracy = 4 if bits == 8 else 0
    if not embeddings:
        save_graph(nbits_weight_only(onnx.load(str(path)), bits, block_size, accuracy), path)
        return {"bits": bits, "block_size": block_size, "symmetric": True, "accuracy_level": accuracy}
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    with quiet_logging():
        q = MatMulNBitsQuantizer(onnx.load(str(path)), bits=bits, block_size=block_size, is_symmetric=True,
                                 accuracy_level=accuracy, op_types_to_quantize=("MatMul", "Gather"),
                                 quant_axes=(("MatMul", 0), ("Gather", 1)))
        q.process()
    save_graph(q.model.model, path)
    return {"bits": bits, "block_size": block_size, "symmetric": True, "accuracy_level": accuracy,
            "embeddings": True}


def write_nitro_dir(parts: NitroParts, out: str | Path, precision: str = "fp32", text_encoder_bits: int | None = None,
                    iterations: int | None = None, head_steps: int | None = None,
                    guidance_scale: float = DEFAULT_GUIDANCE, overwrite: bool = False,
                    release: bool = False) -> NitroSpec:
    """Export `parts` to a model directory. precision "fp32" or "int8" (every graph's MatMul weights, the
    decoder's convolutions stay fp32); text_encoder_bits 4 or 8 quantizes the text encoder on its own
    (default: as `precision`). `release`: drop each PyTorch part from `parts` once it is exported (the
    caller holds no other reference), so the quantization stage runs without them in memory."""
    if precision not in ("fp32", "int8"):
        raise ExportError(f"precision must be fp32 or int8 for a nitro-ar model, got {precision!r}")
    from .model_dir import _partial_prefix, _public_permissions, prepare_output

    out = Path(out)
    prepare_output(out, overwrite)  # only ever replaces a Tessera model directory
    cfg = parts.model.cfg
    variant = cfg.variant
    loop = NitroLoop(variant=variant, grid=cfg.grid, latent_channels=cfg.latent_channels, dim=cfg.dim,
                     iterations=iterations or DEFAULT_ITERATIONS[variant],
                     head_steps=head_steps or DEFAULT_HEAD_STEPS[variant], guidance_scale=float(guidance_scale),
                     num_train_timesteps=cfg.num_train_timesteps, shift=float(cfg.shift),
                     head_timestep="floor" if variant == "joint_gan" else "exact")
    if variant == "joint_gan" and loop.iterations != 2:
        raise ExportError("a joint_gan model runs 2 iterations (the global token, then one joint pass)")
    text = TextEncoderSpec(tokenizer="tokenizer.json", max_tokens=cfg.text_tokens, hidden=cfg.text_dim,
                           pad_token_id=int(parts.pad_token_id))
    dec = LatentDecoderSpec(latent_scale=float(parts.latent_scale), downsample=int(parts.downsample))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_partial_prefix(out), dir=out.parent))  # stale ones are swept at the next export
    try:
        paths = export_model_graphs(parts.model, tmp)
        if release:
            parts.model = None
        paths["text_encoder"] = tmp / "text_encoder.onnx"
        export_text_encoder(parts.text_encoder, paths["text_encoder"], cfg.text_tokens)
        if release:
            parts.text_encoder = None  # Llama-3.2-1B is 5 GB in fp32: gone before the next stage
        paths["decoder"] = tmp / "decoder.onnx"
        export_decoder(parts.decoder, paths["decoder"], cfg.latent_channels, cfg.grid)
        if release:
            parts.decoder = None
        gc.collect()
        parts.tokenizer.save(str(tmp / "tokenizer.json"))
        entries, parity = {}, {}
        for name in NITRO_VARIANT_GRAPHS[variant]:
            bits = (text_encoder_bits if name == "text_encoder" and text_encoder_bits else
                    8 if precision == "int8" and name != "decoder" else None)
            entry = {"precision": "fp32", "method": "none"}
            if bits:
                feeds = _probe_feeds(name, loop, text, dec)
                ref = _run(paths[name], feeds)
                options = quantize_graph(paths[name], bits, embeddings=name == "text_encoder")
                got = _run(paths[name], feeds)
                scale = float(np.abs(ref).max())
                err = float(np.abs(got - ref).max())
                parity[name] = {"max_abs_error_vs_fp32": err, "fp32_max_abs": scale,
                                "relative": err / scale if scale else 0.0}
                entry = {"precision": f"int{bits}", "method": "matmul-nbits-weight-only", "options": options}
            entries[name] = entry
        files = {}
        for f in sorted(tmp.iterdir()):
            files[f.name] = FileEntry(_sha256(f), f.stat().st_size)
        graphs = []
        for name in NITRO_VARIANT_GRAPHS[variant]:
            p = paths[name]
            data = p.with_name(p.name + ".data")
            ins, outs = NITRO_GRAPHS[name]
            graphs.append(GraphSpec(name=name, file=p.name, external_data=data.name if data.exists() else None,
                                    min_onnxruntime=MIN_ORT, opset=OPSET, inputs=ins, outputs=outs, **entries[name]))
        from tessera import __version__

        info = {"exported_by": {"tool": "tessera", "version": __version__}}
        if parity:
            info["parity"] = {"quantized_vs_fp32": parity}
        spec = NitroSpec(name=parts.name, description=parts.description, loop=loop, text=text, decoder=dec,
                         graphs=tuple(graphs), files=files, weights={},
                         export={"nitro": cfg.to_dict(), "precision": precision,
                                 "text_encoder_bits": text_encoder_bits}, info=info)
        (tmp / MANIFEST_NAME).write_text(json.dumps(spec.to_manifest(), indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)  # a model directory (prepare_output checked), replaced on --overwrite
        _public_permissions(tmp)  # mkdtemp's and onnx's 0600 would hide the model from other users
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return spec


def random_parts(preset: str = "nitro-test-gan", seed: int = 0) -> NitroParts:
    """Random-weight parts of a small test model (CI): the preset's transformer and heads, a two-layer
    Llama-shaped text encoder, a word-level tokenizer and a small convolutional decoder (8 px per cell)."""
    from .nitro import NITRO_PRESETS, NITRO_TEST_PRESETS, random_nitro

    cfg = {**NITRO_TEST_PRESETS, **NITRO_PRESETS}[preset]
    words = ("a red fox in the snow blue cat on green grass photo of dog white background handwritten digit seven "
             "the 7 one two three").split()
    tok = tiny_tokenizer(words)
    return NitroParts(model=random_nitro(cfg, seed=seed), text_encoder=tiny_llama(cfg.text_dim, tok.get_vocab_size(),
                                                                                    seed=seed),
                      tokenizer=tok, pad_token_id=2, decoder=TinyLatentDecoder(cfg.latent_channels, 8, seed=seed),
                      downsample=8, name=preset, description=f"{preset}: random weights, for tests")
