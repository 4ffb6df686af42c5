#!/usr/bin/env python
"""Decode speed of our runtime against its peers, same transformer dimensions, one run, as ratios.

    pip install -c constraints.txt -e '.[peers]'           # the peers' packages (README: Benchmarks)
    python benchmarks/decode_peers.py                      # LlamaGen GPT-B 256px, every peer (~10 min)
    python benchmarks/decode_peers.py --quick              # 2-layer GPT-B: test the harness (~3 min)
    python benchmarks/decode_peers.py --peers tessera-fp32,genai-fp32 --rounds 2
    python benchmarks/decode_peers.py --forms --rounds 6    # the fused graph's position forms, ABBA (~10 min)

Peers: tessera-fp32 / tessera-int4 (our Pipeline on `tessera export --gpt GPT-B --vq VQ-Tiny ... --random-weights`,
`--quant int4`), tessera-int4-acc4 (explicit `--int4-accuracy-level 4`; on request), torch (PyTorch eager:
`tessera.export.reference.generate_tokens`), optimum (`ORTModelForCausalLM` on a random `LlamaForCausalLM` of the
same dimensions), genai-fp32 / genai-int4 (onnxruntime-genai's builder + generator on that Llama). A requested peer
whose packages are missing fails the run before anything is measured, naming them.

Every peer runs in its own fresh worker process (tessera.bench.protocol) on `--threads` threads and generates whole
images of grid^2 tokens from one prompt token with top-k sampling: batch 2 = one image with guidance (cond + null
rows), 8 = four; the Llama peers run 2 / 8 independent rows (the same transformer work). Per (peer, batch): decode
median / p90 (intervals between sampled tokens), prefill (call -> first token), whole image (call -> last token).
The bandwidth bound comes from the same run: an onnxruntime fp32 MatMul with ~400 MB of constant weights gives the
rate this machine streams weights; bound(batch) = weight bytes read per token / that rate at M = batch.
Artifacts are cached under --cache (tessera.bench.cache keys). Results: benchmarks/results/decode_peers.md.

--forms: the decode step of the fused graph as exported now (q and k rotated at `position_ids` by a RotaryEmbedding
nodes after splitting q|k|v, before GroupQueryAttention) against the form it replaced (GroupQueryAttention rotating them itself, which turns
the tokens of a multi-token call by index), rebuilt from the same export by moving the rotation back into attention
(`index_rotary_graph`). GPT-B tessera-fp32 and tessera-int4, both forms in one worker process, the transformer alone
through the runtime's TransformerRunner (IO binding, shared KV buffer): one image's decode steps per run, runs in
ABBA order, median step time of each run. Results: benchmarks/results/explicit_positions_decode.md.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tessera.bench.cache import GPT_B_RANDOM, cache_key, cached_export
from tessera.bench.env import environment, is_noisy, load_average
from tessera.bench.env import versions as bench_versions
from tessera.bench.protocol import WorkerError, run_worker
from tessera.bench.stats import summarize_rounds
from tessera.bench.timing import callback_generation, run_rounds, should_stop

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ALL_PEERS = ["tessera-fp32", "genai-fp32", "optimum", "torch", "tessera-int4", "genai-int4", "tessera-int4-acc4"]
DEFAULT_PEERS = ALL_PEERS[:6]
GUIDANCE = 4.0
NEEDS = {"torch": ["torch"], "optimum": ["torch", "transformers", "optimum.onnxruntime", "onnx"],
         "genai": ["torch", "transformers", "tokenizers", "onnxruntime_genai", "onnx"], "tessera": ["torch", "onnx"]}
DISTRIBUTION = {"optimum.onnxruntime": "optimum-onnx", "onnxruntime_genai": "onnxruntime-genai"}
VERSIONS = ("tessera-ar", "numpy", "onnx", "onnxruntime", "onnxruntime-genai", "torch", "transformers", "optimum",
            "optimum-onnx", "tokenizers")


def shape(name: str, n_layer: int, dim: int, n_head: int, ffn: int, vocab: int, grid: int, eps: float = 1e-5,
          overrides: dict | None = None, model_dir: str | None = None, peers: list[str] | None = None) -> SimpleNamespace:
    """Transformer dimensions to run every peer at; `model_dir`: an existing directory instead of an export."""
    return SimpleNamespace(name=name, n_layer=n_layer, dim=dim, n_head=n_head, ffn=ffn, vocab=vocab, grid=grid, eps=eps,
                           overrides=overrides or {}, model_dir=model_dir, peers=peers, tokens=grid * grid)


def shapes(quick: bool, with_default: bool) -> list[SimpleNamespace]:
    out = [shape("GPT-B, 2 layers (--quick)", 2, 768, 12, 2048, 16384, 16, overrides={"n_layer": 2}) if quick
           else shape("LlamaGen GPT-B 256px", 12, 768, 12, 2048, 16384, 16)]
    path = REPO / "models" / "default" / "tessera.json"
    if with_default and path.is_file():
        from tessera.export.config import configs_from_spec
        from tessera.runtime.manifest import load_manifest

        t = configs_from_spec(load_manifest(path.parent, verify="none").spec)[0]  # the typed manifest
        out.append(shape("shipped default (models/default)", t.n_layer, t.dim, t.n_head, t.ffn_dim,
                         t.vocab_size, t.grid, t.norm_eps, model_dir=str(path.parent),
                         peers=["tessera-default", "torch"]))
    return out


def missing_packages(peers: list[str]) -> dict[str, list[str]]:
    """peer -> the packages it needs that are not installed (found without importing them)."""
    lost = {p: [DISTRIBUTION.get(m, m) for m in NEEDS.get(p.split("-")[0], []) if find_spec(m.split(".")[0]) is None
                or ("." in m and find_spec(m) is None)] for p in peers}
    return {p: pkgs for p, pkgs in lost.items() if pkgs}


def constant_matmul(op: str, x_dtype: np.dtype, w: np.ndarray, threads: int):
    """An onnxruntime CPU session of one `op` (MatMul, MatMulInteger) of an input [m, k] by the constant
    weights `w`: what a machine's weight-streaming rate and matmul peak are measured with."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    y_type = TensorProto.INT32 if op == "MatMulInteger" else TensorProto.FLOAT
    graph = helper.make_graph([helper.make_node(op, ["x", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(np.dtype(x_dtype)),
                                                             ["m", w.shape[0]])],
                              [helper.make_tensor_value_info("y", y_type, ["m", w.shape[1]])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


# --- workers (each in a fresh process) ----------------------------------------------------------
def worker_bandwidth(job: dict) -> dict:
    """Weight-streaming rate of an fp32 MatMul with ~400 MB of constant weights; numpy's read rate."""
    k = 4096
    n = int(job["mbytes"] * 1e6 / 4 / k) // 256 * 256
    w = np.random.default_rng(0).standard_normal((k, n), dtype=np.float32)
    sess = constant_matmul("MatMul", np.float32, w, job["threads"])
    out = {"weight_bytes": int(w.nbytes), "shape": [k, n], "matmul": {}}
    for m in job["ms"]:
        x = np.random.default_rng(1).standard_normal((m, k), dtype=np.float32)
        for _ in range(3):
            sess.run(None, {"x": x})
        times, t_end = [], time.perf_counter() + 2.0
        while len(times) < 5 or (time.perf_counter() < t_end and len(times) < 60):
            t = time.perf_counter()
            sess.run(None, {"x": x})
            times.append(time.perf_counter() - t)
        med = float(np.median(times))
        out["matmul"][str(m)] = {"median_ms": med * 1e3, "gbps": w.nbytes / med / 1e9}
    t = time.perf_counter()
    w.sum()
    out["numpy_sum_gbps"] = w.nbytes / (time.perf_counter() - t) / 1e9
    return out


def worker_tessera(job: dict) -> dict:
    from tessera.runtime import Pipeline

    pipe = Pipeline.load(job["model_dir"], providers="cpu", threads=job["threads"], verify="none")
    one = callback_generation(lambda rows, cb: pipe.generate_tokens(
        list(range(rows // 2)), guidance_scale=GUIDANCE, temperature=1.0, top_k=job["top_k"], seed=0, callback=cb))
    g = pipe.manifest.spec.graph("transformer")
    return {"runs": run_rounds(one, job["batches"], job["warmup"], 1, job["tokens"], job["max_s"]),
            "graph": {"kind": g.kind, "precision": g.precision, "options": g.options}}


def worker_torch(job: dict) -> dict:
    import torch

    torch.set_num_threads(job["threads"])
    from tessera.export.build import build_gpt, load_model_dir
    from tessera.export.config import gpt_preset
    from tessera.export.reference import generate_tokens
    from tessera.runtime.sampling import SamplingConfig

    model = load_model_dir(job["model_dir"])[0] if job.get("model_dir") else \
        build_gpt(gpt_preset("GPT-B", **job["overrides"]), None)
    one = callback_generation(lambda rows, cb: generate_tokens(
        model, list(range(rows // 2)), GUIDANCE, SamplingConfig(1.0, job["top_k"], 1.0), 0, cb))
    weights = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                  if not name.startswith(("tok_embeddings.", "cls_embedding.")))  # embeddings: gathered, not read
    return {"runs": run_rounds(one, job["batches"], job["warmup"], 1, job["tokens"], job["max_s"]), "weight_bytes": weights}


def weight_bytes_onnx(path: Path) -> int:
    """Bytes of constant weights a forward reads in full: initializers not consumed only by Gathers."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    consumers: dict[str, set[str]] = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, set()).add(n.op_type)
    return sum(int(np.prod(t.dims or [1])) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
               for t in m.graph.initializer
               if consumers.get(t.name) and not all(op.startswith("Gather") for op in consumers[t.name]))


# --- the Llama-shaped peers -------------------------------------------------------------------------
# A random `transformers.LlamaForCausalLM` with our transformer's dimensions, run by Optimum (`ORTModelForCausalLM`)
# and by onnxruntime-genai. All offline: the Llama directory is made locally (random weights, a tiny locally trained
# tokenizer that only genai's builder needs), Optimum exports it under HF_HUB_OFFLINE=1, genai's builder reads it
# from disk. Builds write a temporary directory renamed into place, so the cache never holds half an artifact.
EXTRA_IDS = 16  # ids past the image codes: the prompt token (id = vocab, as a class token), bos/eos/pad for HF
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def peer_versions() -> list[str]:
    """The peer packages' versions: part of the artifacts' cache key."""
    return [f"{k}=={v}" for k, v in bench_versions(("transformers", "optimum-onnx", "onnxruntime-genai",
                                                    "tokenizers")).items()]


def llama_config_dict(dim: int, n_layer: int, n_head: int, ffn: int, vocab: int, eps: float, context: int = 512) -> dict:
    v = vocab + EXTRA_IDS
    return dict(hidden_size=dim, intermediate_size=ffn, num_hidden_layers=n_layer, num_attention_heads=n_head,
                num_key_value_heads=n_head, head_dim=dim // n_head, vocab_size=v, max_position_embeddings=context,
                rms_norm_eps=eps, tie_word_embeddings=False, hidden_act="silu", attention_bias=False, mlp_bias=False,
                rope_theta=10000.0, bos_token_id=vocab + 1, eos_token_id=vocab + 2, pad_token_id=vocab + 3)


# --- the Llama-shaped peers' builds (workers) ------------------------------------------------------------------------------------------
def worker_build(job: dict) -> dict:
    """job["kind"]: "llama" (random LlamaForCausalLM + tokenizer.json), "optimum" (ORT export of it) or
    "genai-fp32" / "genai-int4" (onnxruntime-genai's builder on it) -> job["out"]."""
    out = Path(job["out"])
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if job["kind"] == "llama":  # random weights + a tiny tokenizer.json (only genai's builder reads it)
        import torch
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**job["config"])).eval().save_pretrained(tmp, safe_serialization=True)
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train_from_iterator(["a tiny local tokenizer for benchmark graphs", "image codes are token ids"],
                                trainers.BpeTrainer(vocab_size=64, special_tokens=["<unk>", "<s>", "</s>", "<pad>"]))
        PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                pad_token="<pad>").save_pretrained(tmp)
    elif job["kind"] == "optimum":
        from optimum.onnxruntime import ORTModelForCausalLM

        ORTModelForCausalLM.from_pretrained(job["llama_dir"], export=True).save_pretrained(str(tmp))
    else:
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", job["llama_dir"], "-o", str(tmp),
               "-p", job["kind"].split("-")[1], "-e", "cpu", "-c", str(out.parent / "genai-builder-cache")]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not (tmp / "genai_config.json").is_file():
            raise RuntimeError(f"genai builder failed ({r.returncode}): {(r.stderr or r.stdout)[-1500:]}")
        set_genai_threads(tmp, job["threads"])
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return {}


def set_genai_threads(model_dir: Path, threads: int) -> None:
    """genai reads its session's thread counts from genai_config.json."""
    path = Path(model_dir) / "genai_config.json"
    cfg = json.loads(path.read_text())
    cfg["model"]["decoder"].setdefault("session_options", {}).update(intra_op_num_threads=int(threads),
                                                                      inter_op_num_threads=1)
    path.write_text(json.dumps(cfg, indent=4) + "\n")


def genai_quant_facts(model_dir: Path) -> dict:
    """MatMulNBits attributes of a genai graph (bits, block size, accuracy level), for the report."""
    import onnx

    for n in onnx.load(str(Path(model_dir) / "model.onnx"), load_external_data=False).graph.node:
        if n.op_type == "MatMulNBits":
            return {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute
                    if a.name in ("bits", "block_size", "accuracy_level")}
    return {}


# --- the Llama-shaped peers' timed runs (workers) ------------------------------------------------------------------------------------
def worker_optimum(job: dict) -> dict:
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import StoppingCriteria, StoppingCriteriaList

    # The host side (sampling, cache bookkeeping) is torch: on 2 OpenMP threads its spin-waiting fights
    # onnxruntime's 2 intra-op threads on a 2-core machine, so it gets one.
    torch.set_num_threads(1)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = job["threads"], 1, 3
    model = ORTModelForCausalLM.from_pretrained(job["model_dir"], session_options=so, provider="CPUExecutionProvider")

    class Stamp(StoppingCriteria):
        def __init__(self, n: int, max_s: float | None):
            self.ts, self.n, self.max_s, self.t0 = [], n, max_s, time.perf_counter()

        def __call__(self, input_ids, scores, **kwargs):
            self.ts.append(time.perf_counter())
            return torch.full((input_ids.shape[0],), should_stop(self.t0, len(self.ts), self.n, self.max_s),
                              dtype=torch.bool, device=input_ids.device)

    def one(rows: int, n: int, max_s: float | None):
        ids = torch.full((rows, 1), job["prompt_id"], dtype=torch.long)
        torch.manual_seed(0)
        stamp = Stamp(n, max_s)
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                       do_sample=True, top_k=job["top_k"], temperature=1.0, pad_token_id=model.config.pad_token_id,
                       stopping_criteria=StoppingCriteriaList([stamp]))
        return stamp.t0, stamp.ts

    return {"io_binding": bool(model.use_io_binding),
            "runs": run_rounds(one, job["batches"], job["warmup"], 1, job["tokens"], job["max_s"])}


def worker_genai(job: dict) -> dict:
    import onnxruntime_genai as og

    set_genai_threads(job["model_dir"], job["threads"])  # the cached build may have another thread count
    model = og.Model(job["model_dir"])

    def one(rows: int, n: int, max_s: float | None):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=1 + n, min_length=1 + n, do_sample=True, top_k=job["top_k"],
                                  temperature=1.0, batch_size=rows, random_seed=0)
        t0 = time.perf_counter()
        gen = og.Generator(model, params)  # allocates the shared past/present buffer (max_length)
        gen.append_tokens(np.full((rows, 1), job["prompt_id"], np.int32))  # the prompt (prefill)
        ts: list[float] = []
        while not gen.is_done():
            gen.generate_next_token()
            ts.append(time.perf_counter())
            if should_stop(t0, len(ts), n, max_s):
                break
        return t0, ts

    return {"runs": run_rounds(one, job["batches"], job["warmup"], 1, job["tokens"], job["max_s"]),
            "quant": genai_quant_facts(job["model_dir"])}


# --- report -----------------------------------------------------------------------------------------
OURS_FOR = {"genai-fp32": "tessera-fp32", "optimum": "tessera-fp32", "torch": "tessera-fp32",
            "genai-int4": "tessera-int4"}
TARGETS = [  # (label, ours, peer, kind, need): "le": ours/peer <= need; "ge": peer/ours >= need
    ("fp32 decode <= 0.9x onnxruntime-genai fp32", "tessera-fp32", "genai-fp32", "le", 0.9),
    ("int4 decode <= 0.9x onnxruntime-genai int4", "tessera-int4", "genai-int4", "le", 0.9),
    (">= 1.3x faster than Optimum (fp32)", "tessera-fp32", "optimum", "ge", 1.3),
    (">= 4x faster than PyTorch eager (fp32)", "tessera-fp32", "torch", "ge", 4.0),
    (">= 10x faster than PyTorch eager (int4)", "tessera-int4", "torch", "ge", 10.0),
    ("fp32 decode within 1.2x of the bandwidth bound", "tessera-fp32", "bound", "le", 1.2),
]


def fmt(x, spec=".1f") -> str:
    return "—" if x is None else format(x, spec)


def bound_ms(weight_bytes, bandwidth: list[dict], rows: str, kv_bytes: float = 0.0) -> float | None:
    """ms to read the weights (+ `kv_bytes`) once at the best MatMul rate this run measured at M = rows."""
    rates = [b["matmul"][rows]["gbps"] for b in bandwidth if rows in b["matmul"]]
    return (weight_bytes + kv_bytes) / (max(rates) * 1e9) * 1e3 if weight_bytes and rates else None


def kv_bytes(shape: dict, rows: int) -> float:
    """Mean fp32 KV-cache bytes an attention step reads over a whole image."""
    return 2 * shape["n_layer"] * rows * shape["dim"] * 4 * (shape["grid"] ** 2 + 1) / 2


def precision(peer: str, r: dict) -> str:
    g, q = r.get("graph") or {}, r.get("quant") or {}
    if g.get("precision"):
        lvl = (g.get("options") or {}).get("accuracy_level")
        return g["precision"] + (f" (acc. level {lvl})" if lvl is not None else "")
    if q:
        return f"int{q.get('bits')} (block {q.get('block_size')}, acc. level {q.get('accuracy_level')})"
    return peer.split("-", 1)[1] if peer.startswith("genai-") else "fp32"


def build_report(state: dict) -> str:
    env, bw = state["environment"], state["bandwidth"]
    L = ["# Decode speed: our runtime vs its peers (same dimensions, one run)", "",
         f"- command: `{state['command']}`", f"- {env['date']}, {env['cpu']}, {env['cores']} cores, "
         f"{state['threads']} threads per peer; load average before {env['load_before']}, after {env['load_after']}",
         "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
         f"- top-k {state['top_k']}, guidance 4 for ours and torch (batch 2 = 1 image: cond + null rows; 8 = 4 "
         f"images), the Llama peers the same number of independent rows; warm-up {state['warmup']} tokens, "
         f"{state['rounds']} round(s) (a fresh process per peer and round; {state['aggregate']} of the rounds)",
         "- bandwidth: ORT fp32 MatMul streaming " + "; ".join(
             ", ".join(f"M={m} {v['gbps']:.1f} GB/s" for m, v in b["matmul"].items()) for b in bw)
         + ". Bound = weight bytes read per token / the best rate at M = batch rows; +KV adds the mean KV cache.", ""]
    for entry in state["shapes"]:
        shape, res = entry["shape"], entry["peers"]
        L += [f"## {shape['name']}: {shape['n_layer']} layers, dim {shape['dim']}, vocab {shape['vocab']}, "
              f"{shape['grid'] ** 2} tokens per image", "",
              "| peer | precision | batch rows | decode median ms | p90 ms | prefill ms | image s | weights MB/token "
              "| bound ms | bound+KV ms | ours/peer | peak RSS MiB |", "|" + "---|" * 12]
        for peer, r in res.items():
            for rows, s in r.get("stats", {}).items():
                wb = r.get("weight_bytes")
                ours = "tessera-default" if shape.get("model_dir") and peer != "tessera-default" else OURS_FOR.get(peer)
                o = res.get(ours, {}).get("stats", {}).get(rows)
                L.append(f"| {peer} | {precision(peer, r)} | {rows} | {s['median_ms']:.1f} | {s['p90_ms']:.1f} | "
                         f"{s['prefill_ms']:.1f} | {s['whole_s']:.2f}{' (est.)' if s['estimated'] else ''} | "
                         f"{fmt(wb and wb / 1e6, '.0f')} | {fmt(bound_ms(wb, bw, rows))} | "
                         f"{fmt(bound_ms(wb, bw, rows, kv_bytes(shape, int(rows))))} | "
                         f"{fmt(o and o['median_ms'] / s['median_ms'], '.2f')} | {r['peak_rss_mib']:.0f} |")
        L += [""] + [f"- **{peer}**: FAILED: {r['error']}" for peer, r in res.items() if "error" in r]
        if not shape.get("model_dir"):
            L += ["", "| target | batch rows | ours ms | peer ms | ratio | need | result |", "|" + "---|" * 7]
            for label, ours, peer, kind, need in TARGETS:
                for rows in ("2", "8"):
                    o = res.get(ours, {}).get("stats", {}).get(rows)
                    pm = bound_ms(res.get(ours, {}).get("weight_bytes"), bw, rows) if peer == "bound" else \
                        (res.get(peer, {}).get("stats", {}).get(rows) or {}).get("median_ms")
                    if o is None or pm is None:
                        L.append(f"| {label} | {rows} | {fmt(o and o['median_ms'])} | {fmt(pm)} | — | {need} | "
                                 "not measured |")
                        continue
                    ratio = o["median_ms"] / pm if kind == "le" else pm / o["median_ms"]
                    ok = ratio <= need if kind == "le" else ratio >= need
                    L.append(f"| {label} | {rows} | {o['median_ms']:.1f} | {pm:.1f} | {ratio:.2f} | "
                             f"{'<=' if kind == 'le' else '>='} {need} | {'PASS' if ok else 'FAIL'} |")
        loads = [f"{peer} " + ", ".join(f"{x:.2f}->{y:.2f}" for x, y in r["loads"]) for peer, r in res.items()
                 if r.get("loads")]
        L += ["", "1-min load average before -> after each peer's run(s): " + "; ".join(loads), ""]
    return "\n".join(L + [f"- {n}" for n in state["notes"]]) + "\n"


# --- --forms: the explicit-position graph against the index-rotating one -------------------------
def index_rotary_graph(src: Path, dst: Path) -> Path:
    """`src/transformer.onnx` in the form before explicit positions, written to `dst/transformer.onnx`: the split
    of q|k|v and the RotaryEmbedding nodes before GroupQueryAttention removed, attention taking the packed row and
    rotating q and k itself (do_rotary=1, interleaved, the same cos/sin table gathered by position_ids). The same
    weights and kernels otherwise."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src / "transformer.onnx"))
    graph = model.graph
    rotary = {n.output[0]: n for n in graph.node if n.op_type == "RotaryEmbedding"}
    splits = {o: n for n in graph.node if n.op_type == "Split" for o in n.output}
    gone = set()
    for node in graph.node:
        if node.op_type != "GroupQueryAttention" or node.input[0] not in rotary:
            continue
        rot, split = rotary[node.input[0]], splits[node.input[2]]
        gone.update({rot.output[0], node.input[1], split.output[0]})
        inputs = list(node.input) + [""] * max(0, 11 - len(node.input))
        inputs[:3] = [split.input[0], "", ""]
        inputs[7], inputs[8], inputs[9] = rot.input[2], rot.input[3], rot.input[1]
        del node.input[:]
        node.input.extend(inputs)
        kept = [a for a in node.attribute if a.name not in ("do_rotary", "rotary_interleaved")]
        del node.attribute[:]
        node.attribute.extend(kept + [helper.make_attribute("do_rotary", 1),
                                      helper.make_attribute("rotary_interleaved", 1)])
    for node in [n for n in graph.node if n.output[0] in gone]:
        graph.node.remove(node)
    dst.mkdir(parents=True, exist_ok=True)
    for f in dst.glob("transformer.onnx*"):
        f.unlink()
    onnx.save_model(model, str(dst / "transformer.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="transformer.onnx.data", size_threshold=1024)
    return dst / "transformer.onnx"


def worker_forms(job: dict) -> dict:
    """Both forms of one export in this process, runs in ABBA order: {batch: {form: [median step ms per run]}}."""
    import onnxruntime as ort

    from tessera.runtime.decoders import cell_positions
    from tessera.runtime.manifest import load_manifest
    from tessera.runtime.session import build_session_options
    from tessera.runtime.transformer import TransformerRunner

    manifest = load_manifest(job["model_dir"], verify="none")
    runners = {}
    for form, path in job["graphs"].items():
        session = ort.InferenceSession(path, build_session_options(job["threads"]), providers=["CPUExecutionProvider"])
        runners[form] = TransformerRunner(session, manifest)
    layout, grid = manifest.layout, manifest.grid
    n = grid[0] * grid[1]
    positions = cell_positions(layout, grid)
    rng = np.random.default_rng(0)
    out: dict = {}
    for rows in job["batches"]:
        ids = rng.integers(0, layout.vocab_size, (rows, n + 1)).astype(np.int64)
        ids[:, 0] = layout.class_token_offset
        pos = np.concatenate([[0], positions])
        # every feed made before the timed loop: the loop allocates nothing
        feeds = [(np.ascontiguousarray(ids[:, j:j + 1]), np.full((rows, 1), pos[j], np.int64),
                  np.ones((rows, 1, j + 1), bool)) for j in range(n + 1)]
        times = np.empty(n)

        def one_run(runner) -> tuple[float, float]:
            """(median wall ms of a step, CPU ms of this process per step): on a loaded machine the CPU time
            of a one-thread run is the steadier measure of the work a step does."""
            runner.start(rows, n + 1)
            runner(*feeds[0])
            cpu = time.process_time()
            for j in range(1, n + 1):
                t = time.perf_counter()
                runner(*feeds[j])
                times[j - 1] = time.perf_counter() - t
            return float(np.median(times)) * 1e3, (time.process_time() - cpu) / n * 1e3

        first, second = list(runners)
        for form in runners:  # warm-up: buffers, kernels, caches
            one_run(runners[form])
        got = {form: [] for form in runners}
        cpu = {form: [] for form in runners}
        for _ in range(job["rounds"]):
            for form in (first, second, second, first):
                wall, used = one_run(runners[form])
                got[form].append(wall)
                cpu[form].append(used)
        out[str(rows)] = {**got, "cpu": cpu}
    return {"runs": out}


def forms_report(command: str, env: dict, results: dict, threads: int, rounds: int) -> str:
    lines = ["# Explicit positions: decode step of the fused graph, now against the form it replaced", "",
             f"`{command}` — {env['when']}, {env['cpu']}, {threads} onnxruntime threads, load average "
             f"{env['load_before'][0]:.1f} before, {env['load_after'][0]:.1f} after (a 2-core machine shared with "
             "other sessions).", "",
             "GPT-B shape (12 layers, dim 768, 16x16 tokens), random weights; the transformer alone through the "
             "runtime's TransformerRunner (IO binding, shared KV buffer), one image's 256 decode steps per run, "
             f"{rounds} ABBA blocks per batch (A: the form before, GroupQueryAttention rotating by itself; B: now, a "
             "Split and two RotaryEmbedding nodes at position_ids first), both in one process. Cell: median over runs of each "
             "run's median step; block ratio: (B1 + B2) / (A1 + A2) per ABBA block.", "",
             "| precision | batch rows | measure | before ms | now ms | now / before (medians) | block ratios: median "
             "(min-max) |", "|---|---|---|---|---|---|---|"]

    def row(precision, rows, measure, a, b) -> str:
        blocks = [(b[2 * i] + b[2 * i + 1]) / (a[2 * i] + a[2 * i + 1]) for i in range(len(a) // 2)]
        return (f"| {precision} | {rows} | {measure} | {np.median(a):.2f} | {np.median(b):.2f} | "
                f"{np.median(b) / np.median(a):.3f} | {np.median(blocks):.3f} ({min(blocks):.3f}-{max(blocks):.3f}) |")

    for precision, r in results.items():
        for rows, got in r["runs"].items():
            lines.append(row(precision, rows, "wall, median step", got["before"], got["now"]))
            if "cpu" in got:
                lines.append(row(precision, rows, "CPU time per step", got["cpu"]["before"], got["cpu"]["now"]))
    lines += ["", "CPU time: this process's (every onnxruntime thread) per decode step, over the run; with one thread it "
              "is the work a step does, the measure least moved by other processes. With two threads it also counts "
              "their spinning."]
    return "\n".join(lines) + "\n"


def forms_main(a, argv) -> int:
    from datetime import datetime, timezone

    from tessera.bench.env import cpu_model

    cache = a.cache.resolve()
    shp = shapes(a.quick, False)[0]
    batches = [int(b) for b in a.batches.split(",")]
    env = {"when": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "cpu": cpu_model(), "load_before": load_average()}
    results = {}
    for peer in ("tessera-fp32", "tessera-int4"):
        src = artifact(cache / f"L{shp.n_layer}-d{shp.dim}-v{shp.vocab}", shp, peer, a.threads)
        before = index_rotary_graph(src, cache / "index-rotary" / src.name)
        job = {"model_dir": str(src), "graphs": {"before": str(before), "now": str(src / "transformer.onnx")},
               "threads": a.threads, "batches": batches, "rounds": a.rounds}
        print(f"[forms] {peer}: {a.rounds} ABBA blocks per batch ...", flush=True)
        results[peer.split("-")[1]] = run_worker(f"{__file__}:worker_forms", job, cache / "logs", f"forms-{peer}")
    env["load_after"] = load_average()
    command = "python benchmarks/decode_peers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = forms_report(command, env, results, a.threads, a.rounds)
    out = a.out or (cache / "explicit_positions_decode_quick.md" if a.quick
                    else HERE / "results" / "explicit_positions_decode.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report + f"\nwrote {out}")
    return 0


# --- main -----------------------------------------------------------------------------------------
QUANT = {"tessera-fp32": [], "tessera-int4": ["--quant", "int4"],
         "tessera-int4-acc4": ["--quant", "int4", "--int4-accuracy-level", "4"]}


def artifact(cache: Path, s: SimpleNamespace, peer: str, threads: int) -> Path | None:
    """A peer's model for shape `s`, built once and then reused from the cache (tessera.bench.cache keys)."""
    if peer in ("tessera-default", "torch"):
        return Path(s.model_dir) if s.model_dir else None
    if peer.startswith("tessera-"):
        return cached_export(cache.parent, peer, [*GPT_B_RANDOM, *QUANT[peer], *[x for k, v in s.overrides.items()
                                                                                 for x in ("--gpt-set", f"{k}={v}")]])
    cfg = llama_config_dict(s.dim, s.n_layer, s.n_head, s.ffn, s.vocab, s.eps)
    llama = None
    for kind, done in [("llama", "tokenizer.json"), (peer, "model.onnx" if peer == "optimum" else "genai_config.json")]:
        key = cache_key([kind, json.dumps(cfg), *peer_versions(), *map(inspect.getsource, (worker_build, set_genai_threads))],
                        code=[])
        out = cache / f"{kind}-{key}"
        if not (out / done).is_file():
            print(f"  building {kind} -> {out}", flush=True)
            run_worker(f"{__file__}:worker_build", {"kind": kind, "out": str(out), "config": cfg, "threads": threads,
                                                    "llama_dir": str(llama)}, cache / "logs", f"build-{kind}", env=OFFLINE)
        llama = llama or out
    return out


def run_peer(peer: str, shape: SimpleNamespace, path: Path | None, common: dict, cache: Path, tag: str) -> dict:
    """One timed worker for `peer`, plus the weight bytes its graph reads per token."""
    if peer.startswith("tessera"):
        r = run_worker(f"{__file__}:worker_tessera", {**common, "model_dir": str(path)}, cache / "logs", tag)
        return {**r, "weight_bytes": weight_bytes_onnx(path / "transformer.onnx")}
    if peer == "torch":
        return run_worker(f"{__file__}:worker_torch", {**common, "overrides": shape.overrides,
                                                       "model_dir": shape.model_dir}, cache / "logs", tag)
    job = {**common, "model_dir": str(path), "prompt_id": shape.vocab}
    r = run_worker(f"{__file__}:worker_{peer.split('-')[0]}", job, cache / "logs", tag, env=OFFLINE)
    return {**r, "weight_bytes": weight_bytes_onnx(path / "model.onnx")}


def merge(results: list[dict], mode: str) -> dict:
    """One peer's worker results (one per round) -> statistics per batch size."""
    out = {k: v for k, v in results[0].items() if k not in ("runs", "load_before", "load_after")}
    runs: dict[str, list] = {}
    for r in results:
        for rows, rr in r["runs"].items():
            runs.setdefault(rows, []).extend(rr)
    out["loads"] = [[r["load_before"][0], r["load_after"][0]] for r in results]
    out["peak_rss_mib"] = max(r["peak_rss_mib"] for r in results)
    out["stats"] = {rows: summarize_rounds(rr, mode) for rows, rr in runs.items()}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2-layer GPT-B (same width and vocab): test the harness")
    p.add_argument("--peers", default="default", help=f"comma-separated subset of {','.join(ALL_PEERS)}, 'default' "
                                                      f"({','.join(DEFAULT_PEERS)}) or 'all'")
    p.add_argument("--cache", type=Path, default=HERE / ".cache" / "exports")
    p.add_argument("--out", type=Path, help="markdown results (default benchmarks/results/decode_peers.md; --quick: "
                                            "under --cache)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="2,8", help="batch rows (2 per image with guidance)")
    p.add_argument("--rounds", type=int, default=1, help="passes over the peer list, a fresh process each")
    p.add_argument("--aggregate", choices=["best", "pooled"], default="best",
                   help="several rounds: each (peer, batch)'s best round, or every round's intervals pooled")
    p.add_argument("--max-run-s", type=float, default=90.0, help="cut a generation short after this many seconds, "
                                                                 "its whole-image time extrapolated (est.)")
    p.add_argument("--warmup", type=int, default=8, help="warm-up tokens per batch size")
    p.add_argument("--top-k", type=int, default=2000, help="top-k sampling for every peer (LlamaGen's demo: 2000)")
    p.add_argument("--no-default-model", action="store_true", help="skip the shipped default model's shape")
    p.add_argument("--forms", action="store_true", help="the fused graph's explicit-position form against the "
                                                        "index-rotating one it replaced (tessera fp32 and int4, ABBA "
                                                        "blocks: --rounds, default 6)")
    a = p.parse_args(argv)
    if a.forms:
        a.rounds = a.rounds if "--rounds" in (argv if argv is not None else sys.argv[1:]) else 6
        return forms_main(a, argv)
    peers = DEFAULT_PEERS if a.peers == "default" else ALL_PEERS if a.peers == "all" else \
        [x.strip() for x in a.peers.split(",") if x.strip()]
    if set(peers) - set(ALL_PEERS):
        p.error(f"unknown peers {sorted(set(peers) - set(ALL_PEERS))}; choose from {ALL_PEERS}")
    missing = missing_packages(peers)
    if missing:  # a peer that cannot run fails the benchmark, unless --peers leaves it out
        for peer, pkgs in missing.items():
            print(f"decode_peers: error: peer {peer} needs {', '.join(pkgs)} (not installed): "
                  "pip install -c constraints.txt -e '.[peers]', or leave it out with --peers", file=sys.stderr)
        return 1
    batches = [int(b) for b in a.batches.split(",")]
    if any(b % 2 for b in batches):
        p.error("batch rows must be even (2 rows per image with guidance)")
    cache = a.cache.resolve()
    state = {"command": "python benchmarks/decode_peers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
             "environment": environment(VERSIONS, REPO), "threads": a.threads, "top_k": a.top_k, "warmup": a.warmup,
             "rounds": a.rounds, "aggregate": a.aggregate, "shapes": [], "notes": [], "failed": []}
    plans = []
    for shp in shapes(a.quick, not a.no_default_model):
        res, dirs = {}, {}
        for peer in (peers if shp.peers is None else [x for x in shp.peers if x in peers + ["tessera-default"]]):
            try:
                dirs[peer] = artifact(cache / f"L{shp.n_layer}-d{shp.dim}-v{shp.vocab}", shp, peer, a.threads)
            except Exception as e:  # noqa: BLE001  (one peer's failed build must not cost the others)
                res[peer] = {"error": f"build failed: {str(e).strip().splitlines()[0][:300]}"}
        plans.append((shp, dirs, res))
    bw_job = {"threads": a.threads, "mbytes": 400, "ms": sorted({1, *batches})}
    bandwidth = [run_worker(f"{__file__}:worker_bandwidth", bw_job, cache / "logs", "bandwidth-1")]
    raw: dict[tuple[int, str], list[dict]] = {}
    for rnd in range(a.rounds):  # rounds go over the whole peer list: load bursts spread over every peer
        for si, (shape, dirs, res) in enumerate(plans):
            common = {"threads": a.threads, "batches": batches, "top_k": a.top_k, "warmup": a.warmup,
                      "tokens": shape.tokens, "max_s": a.max_run_s}
            for peer in [x for x in dirs if x not in res]:
                print(f"[{shape.name}] round {rnd + 1}/{a.rounds}: {peer} ...", flush=True)
                try:
                    raw.setdefault((si, peer), []).append(run_peer(peer, shape, dirs[peer], common, cache,
                                                                   f"{si}-{peer}-r{rnd + 1}"))
                except WorkerError as e:
                    res[peer] = {"error": str(e)[:300]}
    for (si, peer), results in raw.items():
        plans[si][2].setdefault(peer, merge(results, a.aggregate))
    bandwidth.append(run_worker(f"{__file__}:worker_bandwidth", bw_job, cache / "logs", "bandwidth-2"))
    state["bandwidth"] = bandwidth
    for shape, _, res in plans:
        state["shapes"].append({"shape": vars(shape), "peers": res})
        state["failed"] += [f"{shape.name}: {peer}: {r['error']}" for peer, r in res.items() if "error" in r]
    env = state["environment"]
    env["load_after"] = load_average()
    if is_noisy(env["load_before"][0]):
        state["notes"].append(f"the machine was loaded when the run started (1-min load {env['load_before'][0]:.2f} "
                              f"on {os.cpu_count()} cores): absolute times are pessimistic, ratios less affected.")
    report = build_report(state)
    out = a.out or (cache / "decode_peers_quick.md" if a.quick else HERE / "results" / "decode_peers.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    (cache / "last_state.json").write_text(json.dumps(state, indent=1, default=str))
    print(report + f"\nwrote {out}")
    return 1 if state["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
