"""Build the fused transformer graph directly from the weights (as onnxruntime-genai's builder does).

Why build instead of trace: the decode loop is memory-bound, and a traced graph spends a third
of each step outside the weight MatMuls (rotary in ~20 small ops per layer, KV concatenation
that copies the whole cache every token). This graph uses onnxruntime's fused kernels:

    Gather -> [SkipSimplifiedLayerNorm -> MatMul(qkv) -> Split -> RotaryEmbedding(q), RotaryEmbedding(k)
               at position_ids -> GroupQueryAttention(q, k, v; no rotary of its own, past/present may
                  share one buffer, the runtime's mask as attention_bias)
               -> MatMul(wo) -> SkipSimplifiedLayerNorm -> MatMul(w1), MatMul(w3) -> SiLU*up -> MatMul(w2)] x L
           -> SkipSimplifiedLayerNorm -> MatMul(output)

Why rotate outside GroupQueryAttention: its own rotary turns the tokens of a multi-token call by
their index from the past length, not by `position_ids`, on every build before 1.32 (our cells are
not contiguous, and a query may sit anywhere). So q|k|v are split and two RotaryEmbedding nodes
rotate q and k at `position_ids` with the model's own cos/sin table (one row per position); v passes
untouched. (One node over the packed row, as a single head of 3 x dim with partial rotary, would
spare the split, but CUDA's RotaryEmbedding takes at most 1024 values per head.)

Same inputs and outputs as the traced graph. `past_key_values.*` may be exactly the past
(present = past + new, Optimum-style) or a preallocated buffer bound as both past and present
through IO binding (present written in place; the mask's last dim says how much is valid).
Queries in one call are causal in call order (feed them in raster order); the mask can only
hide more.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from tessera.runtime.compat import OLDEST_TESTED, fused_form
from tessera.runtime.spec import GraphIO

from .config import DEFAULT_OPSET
from .transformer import GPT, rope_2d_tables


def transformer_io_names(n_layer: int) -> tuple[list[str], list[str]]:
    """The transformer graph's input and output names (Optimum / onnxruntime-genai convention), shared by
    the built graph here and the traced one (onnx_export.py)."""
    io = GraphIO()  # the names are defined once, in the model contract (runtime/spec.py)
    return io.inputs(n_layer), io.outputs(n_layer)


# onnx.save_model(..., save_as_external_data=True) moves a tensor out when sys.getsizeof(raw_data) reaches this.
EXTERNAL_SIZE_THRESHOLD = 1024


class _Graph:
    """Tiny helper to add nodes and initializers with unique names. With `data` (an open binary file
    named `location`), each initializer's bytes go to that file as it is added, laid out exactly as
    `onnx.save_model(model, save_as_external_data=True, all_tensors_to_one_file=True, location=...,
    size_threshold=1024)` lays them out; the proto then only points into it, so the weights are never
    held twice (a transposed copy plus a serialized model) in memory."""

    def __init__(self, data=None, location: str | None = None):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.data, self.location = data, location
        self.nbytes = 0  # bytes of every initializer (quantize.tensor_bytes of the finished model)

    def const(self, name: str, array: np.ndarray) -> str:
        array = np.require(array, requirements="C")
        self.nbytes += array.nbytes
        if self.data is not None and sys.getsizeof(b"") + array.nbytes >= EXTERNAL_SIZE_THRESHOLD:
            # The bytes go straight to the file: a TensorProto given raw_data keeps its memory (in
            # protobuf's arena) even after ClearField, which held the whole model a second time.
            tensor = TensorProto(name=name, dims=array.shape,
                                 data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                                 data_location=TensorProto.EXTERNAL)
            offset = self.data.tell()
            self.data.write(array.astype(array.dtype.newbyteorder("<"), copy=False).data)
            for key, value in (("location", self.location), ("offset", offset), ("length", array.nbytes)):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, str(value)
        else:
            tensor = numpy_helper.from_array(array, name)
        self.inits.append(tensor)
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str] | int, name: str, domain: str = "", **attrs):
        if isinstance(outputs, int):
            outputs = [f"{name}/out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs[0] if len(outputs) == 1 else outputs


def _t(w: torch.Tensor) -> np.ndarray:
    """nn.Linear weight [out, in] -> MatMul B [in, out]."""
    return w.detach().float().t().contiguous().numpy()


@torch.no_grad()
def build_fused_transformer(model: GPT, opset: int = DEFAULT_OPSET,
                            target_onnxruntime: str = OLDEST_TESTED) -> onnx.ModelProto:
    """The fused graph in the operator form that `target_onnxruntime` loads (runtime/compat.py),
    its weights inside the proto."""
    return _build(model, opset, target_onnxruntime, _Graph())


@torch.no_grad()
def write_fused_transformer(model: GPT, path: Path, opset: int = DEFAULT_OPSET,
                            target_onnxruntime: str = OLDEST_TESTED) -> int:
    """Write the fused graph to `path` with its weights in `<path>.data`, streamed there one tensor
    at a time (peak memory: the model plus one tensor), the same bytes `onnx.save_model` with external
    data writes. Returns the bytes of its initializers (`quantize.tensor_bytes`), so the caller can
    fold a small graph back into one file."""
    path = Path(path)
    with open(path.with_name(path.name + ".data"), "wb") as data:
        g = _Graph(data, path.name + ".data")
        proto = _build(model, opset, target_onnxruntime, g)
    onnx.save_model(proto, str(path))
    return g.nbytes


def _build(model: GPT, opset: int, target_onnxruntime: str, g: _Graph) -> onnx.ModelProto:
    cfg = model.cfg
    form = fused_form(target_onnxruntime)
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}  # fp32 weights: views, no copy
    n_head, eps = cfg.n_head, cfg.norm_eps
    inputs, outputs = transformer_io_names(cfg.n_layer)

    # Lengths for GroupQueryAttention, derived from the mask's shape [batch, seq, total].
    shape = g.node("Shape", ["attention_mask"], 1, "mask_shape")
    idx = {k: g.const(f"idx_{k}", np.array(k, np.int64)) for k in (0, 2)}
    batch = g.node("Gather", [shape, idx[0]], 1, "batch", axis=0)
    total = g.node("Gather", [shape, idx[2]], 1, "total", axis=0)
    batch_1d = g.node("Unsqueeze", [batch, g.const("axes0", np.array([0], np.int64))], 1, "batch_1d")
    one = g.const("one", np.array(1, np.int64))
    last = g.node("Sub", [total, one], 1, "last_index")
    seqlens_k = g.node("Expand", [g.node("Cast", [last], 1, "last_i32", to=TensorProto.INT32), batch_1d], 1,
                       "seqlens_k")
    total_i32 = g.node("Cast", [total], 1, "total_i32", to=TensorProto.INT32)
    # Several tokens over a past at batch > 1 need `query_seqlens` (onnxruntime 1.32+); on the older
    # form the runtime runs such a call one row at a time (runtime/compat.py).
    query_lens = []
    if form.gqa_query_seqlens:
        seq = g.node("Gather", [shape, g.const("idx_1", np.array(1, np.int64))], 1, "seq", axis=0)
        query_lens = [g.node("Expand", [g.node("Cast", [seq], 1, "seq_i32", to=TensorProto.INT32), batch_1d], 1,
                             "query_seqlens")]
    bias = g.node("Where", ["attention_mask", g.const("zero_f", np.array(0.0, np.float32)),
                            g.const("neg_inf", np.array(-np.inf, np.float32))], 1, "mask_bias")
    bias = g.node("Unsqueeze", [bias, g.const("axes1", np.array([1], np.int64))], 1, "attention_bias")

    # The model's own table (LlamaGen's 2D rows, its class row as the model has it), one row per position.
    cos, sin = rope_2d_tables(cfg)
    cos, sin = g.const("rope_cos", cos.numpy()), g.const("rope_sin", sin.numpy())
    split = g.const("qkv_split", np.array([cfg.dim] * 3, np.int64))
    rows = [sd["tok_embeddings.weight"], sd["cls_embedding.embedding_table.weight"]]
    table = torch.cat(rows + ([sd["query_embedding"]] if cfg.order == "any" else [])).numpy()
    h = g.node("Gather", [g.const("embed_table", table), "input_ids"], 1, "embed")

    residual_in = None  # output of the previous block still to be added to h
    for i in range(cfg.n_layer):
        p = f"layers.{i}."
        w_norm = g.const(f"{p}attention_norm", sd[p + "attention_norm.weight"].numpy())
        if residual_in is None:
            x = g.node("SimplifiedLayerNormalization", [h, w_norm], [f"{p}attn_in"], f"{p}attn_norm",
                       epsilon=eps, axis=-1)
        else:
            x, _, _, h = g.node("SkipSimplifiedLayerNormalization", [residual_in, h, w_norm],
                                [f"{p}attn_in", "", "", f"{p}resid_a"], f"{p}attn_norm", domain="com.microsoft",
                                epsilon=eps)
        qkv = g.node("MatMul", [x, g.const(f"{p}wqkv", _t(sd[p + "attention.wqkv.weight"]))], 1, f"{p}qkv")
        q, k, v = g.node("Split", [qkv, split], 3, f"{p}qkv_split", axis=-1)
        q, k = (g.node("RotaryEmbedding", [x, "position_ids", cos, sin], 1, f"{p}rotary_{name}",
                       domain="com.microsoft", interleaved=1) for x, name in ((q, "q"), (k, "k")))
        attn, _, _ = g.node("GroupQueryAttention",
                            [q, k, v, inputs[3 + 2 * i], inputs[4 + 2 * i], seqlens_k, total_i32, "", "",
                             "", bias, *(["", "", "", "", "", *query_lens] if query_lens else [])],
                            [f"{p}attn", outputs[1 + 2 * i], outputs[2 + 2 * i]], f"{p}gqa", domain="com.microsoft",
                            num_heads=n_head, kv_num_heads=n_head, do_rotary=0)
        o = g.node("MatMul", [attn, g.const(f"{p}wo", _t(sd[p + "attention.wo.weight"]))], 1, f"{p}wo")
        w_ffn_norm = g.const(f"{p}ffn_norm", sd[p + "ffn_norm.weight"].numpy())
        x, _, _, h = g.node("SkipSimplifiedLayerNormalization", [o, h, w_ffn_norm],
                            [f"{p}ffn_in", "", "", f"{p}resid_f"], f"{p}ffn_norm_op", domain="com.microsoft",
                            epsilon=eps)
        gate = g.node("MatMul", [x, g.const(f"{p}w1", _t(sd[p + "feed_forward.w1.weight"]))], 1, f"{p}w1")
        up = g.node("MatMul", [x, g.const(f"{p}w3", _t(sd[p + "feed_forward.w3.weight"]))], 1, f"{p}w3")
        silu = g.node("Mul", [gate, g.node("Sigmoid", [gate], 1, f"{p}sigmoid")], 1, f"{p}silu")
        act = g.node("Mul", [silu, up], 1, f"{p}swiglu")
        residual_in = g.node("MatMul", [act, g.const(f"{p}w2", _t(sd[p + "feed_forward.w2.weight"]))], 1, f"{p}w2")
    x, _, _, _ = g.node("SkipSimplifiedLayerNormalization", [residual_in, h, g.const("norm", sd["norm.weight"].numpy())],
                        ["final_normed", "", "", "final_resid"], "final_norm", domain="com.microsoft", epsilon=eps)
    g.node("MatMul", [x, g.const("output", _t(sd["output.weight"]))], ["logits"], "lm_head")

    kv = ["batch", n_head, "past_sequence", cfg.head_dim]
    graph_inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.BOOL, ["batch", "sequence", "total_sequence"]),
        *[helper.make_tensor_value_info(n, TensorProto.FLOAT, kv) for n in inputs[3:]],
    ]
    graph_outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", cfg.vocab_size]),
        *[helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", n_head, "present_sequence", cfg.head_dim])
          for n in outputs[1:]],
    ]
    graph = helper.make_graph(g.nodes, "tessera_transformer_fused", graph_inputs, graph_outputs, g.inits)
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                          helper.make_opsetid("com.microsoft", 1)],
                                    producer_name="tessera-ar")
    model_proto.ir_version = 10
    return model_proto
