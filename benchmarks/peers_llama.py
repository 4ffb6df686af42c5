"""The Llama-shaped peers of `decode_peers.py`: a random `transformers.LlamaForCausalLM` with our
transformer's dimensions, run by Optimum (`ORTModelForCausalLM`) and by onnxruntime-genai.

Everything here works offline: the Llama directory is created locally (random weights, a tiny
locally trained tokenizer that only the genai builder needs), Optimum exports it with
`from_pretrained(dir, export=True)` under HF_HUB_OFFLINE=1, and genai's builder reads it from disk.

Build steps run in their own processes (called by `decode_peers.py`); each writes into a temporary
directory renamed into place when complete, so a cache directory never holds half an artifact.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench_timing import run_rounds, should_stop  # same folder (on sys.path in the workers)

# Ids past the 16384 image codes: a class-like prompt token, bos/eos/pad for the HF tooling.
EXTRA_IDS = 16
PROMPT_OFFSET = 0  # prompt token = vocab + PROMPT_OFFSET (stands in for LlamaGen's class token)


def llama_config_dict(dim: int, n_layer: int, n_head: int, ffn: int, vocab: int, eps: float,
                      context: int = 512) -> dict:
    v = vocab + EXTRA_IDS
    return dict(hidden_size=dim, intermediate_size=ffn, num_hidden_layers=n_layer, num_attention_heads=n_head,
                num_key_value_heads=n_head, head_dim=dim // n_head, vocab_size=v, max_position_embeddings=context,
                rms_norm_eps=eps, tie_word_embeddings=False, hidden_act="silu", attention_bias=False,
                mlp_bias=False, rope_theta=10000.0, bos_token_id=vocab + 1, eos_token_id=vocab + 2,
                pad_token_id=vocab + 3)


def _fresh_tmp(out: Path) -> Path:
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def _commit(tmp: Path, out: Path) -> Path:
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


# --- build steps (each in its own process) --------------------------------------------------------
def make_llama_dir(out: Path, cfg: dict) -> Path:
    """Random-weight LlamaForCausalLM + a tiny tokenizer.json, saved with save_pretrained."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tmp = _fresh_tmp(out)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    model.save_pretrained(tmp, safe_serialization=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=64, special_tokens=["<unk>", "<s>", "</s>", "<pad>"])
    tok.train_from_iterator(["a tiny local tokenizer for benchmark graphs", "image codes are token ids"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.save_pretrained(tmp)
    return _commit(tmp, out)


def build_optimum(llama_dir: Path, out: Path) -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from optimum.onnxruntime import ORTModelForCausalLM

    tmp = _fresh_tmp(out)
    model = ORTModelForCausalLM.from_pretrained(str(llama_dir), export=True)
    model.save_pretrained(str(tmp))
    return _commit(tmp, out)


def build_genai(llama_dir: Path, out: Path, precision: str, cache: Path, threads: int) -> Path:
    """`python -m onnxruntime_genai.models.builder -i DIR -o OUT -p PRECISION -e cpu -c CACHE`, then the
    session's thread counts written into genai_config.json (genai reads them from there)."""
    tmp = _fresh_tmp(out)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(llama_dir), "-o", str(tmp),
           "-p", precision, "-e", "cpu", "-c", str(cache)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0 or not (tmp / "genai_config.json").is_file():
        raise RuntimeError(f"genai builder failed ({r.returncode}): {(r.stderr or r.stdout)[-1500:]}")
    set_genai_threads(tmp, threads)
    return _commit(tmp, out)


def set_genai_threads(model_dir: Path, threads: int) -> None:
    path = Path(model_dir) / "genai_config.json"
    cfg = json.loads(path.read_text())
    so = cfg["model"]["decoder"].setdefault("session_options", {})
    so.update(intra_op_num_threads=int(threads), inter_op_num_threads=1)
    path.write_text(json.dumps(cfg, indent=4) + "\n")


def genai_quant_facts(model_dir: Path) -> dict:
    """MatMulNBits attributes of a genai graph (block size, accuracy level), for the report."""
    import onnx

    m = onnx.load(str(Path(model_dir) / "model.onnx"), load_external_data=False)
    for n in m.graph.node:
        if n.op_type == "MatMulNBits":
            return {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute
                    if a.name in ("bits", "block_size", "accuracy_level")}
    return {}


# --- timed runs (each in its own process) ---------------------------------------------------------
def run_optimum(model_dir: Path, batches: list[int], threads: int, top_k: int, warmup: int, rounds: int,
                tokens: int, prompt_id: int, io_binding: bool | None, torch_threads: int,
                max_s: float | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import StoppingCriteria, StoppingCriteriaList

    # The host-side work (sampling, cache bookkeeping) is torch; with torch on 2 OpenMP threads its
    # spin-waiting fights onnxruntime's 2 intra-op threads on a 2-core machine (measured 4.6x slower).
    torch.set_num_threads(torch_threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    model = ORTModelForCausalLM.from_pretrained(str(model_dir), session_options=so, provider="CPUExecutionProvider",
                                                use_io_binding=io_binding)

    class Stamp(StoppingCriteria):
        def __init__(self, n: int, max_s: float | None):
            self.ts: list[float] = []
            self.n, self.max_s, self.t0 = n, max_s, 0.0

        def __call__(self, input_ids, scores, **kwargs):
            self.ts.append(time.perf_counter())
            stop = should_stop(self.t0, len(self.ts), self.n, self.max_s)
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    def one(rows: int, n: int, max_s: float | None) -> tuple[float, list[float]]:
        ids = torch.full((rows, 1), prompt_id, dtype=torch.long)
        stamp = Stamp(n, max_s)
        torch.manual_seed(0)
        t0 = stamp.t0 = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                       do_sample=True, top_k=top_k, temperature=1.0, stopping_criteria=StoppingCriteriaList([stamp]),
                       pad_token_id=model.config.pad_token_id)
        return t0, stamp.ts

    return {"io_binding": bool(model.use_io_binding), "torch_threads": torch_threads,
            "runs": run_rounds(one, batches, warmup, rounds, tokens, max_s)}


def run_genai(model_dir: Path, batches: list[int], threads: int, top_k: int, warmup: int, rounds: int,
              tokens: int, prompt_id: int, max_s: float | None = None) -> dict:
    import onnxruntime_genai as og

    set_genai_threads(model_dir, threads)  # idempotent; the thread count may differ from the cached build's
    model = og.Model(str(model_dir))

    def one(rows: int, n: int, max_s: float | None) -> tuple[float, list[float]]:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=1 + n, min_length=1 + n, do_sample=True, top_k=top_k,
                                  temperature=1.0, batch_size=rows, random_seed=0)
        t0 = time.perf_counter()
        gen = og.Generator(model, params)  # allocates the shared past/present buffer (max_length)
        gen.append_tokens(np.full((rows, 1), prompt_id, np.int32))  # runs the prompt (prefill)
        ts = []
        while not gen.is_done():
            gen.generate_next_token()
            ts.append(time.perf_counter())
            if should_stop(t0, len(ts), n, max_s):
                break
        return t0, ts

    return {"runs": run_rounds(one, batches, warmup, rounds, tokens, max_s)}
