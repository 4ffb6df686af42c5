"""The Llama-shaped peers of decode_peers.py (worker functions run by tessera.bench.protocol): a random
`transformers.LlamaForCausalLM` with our transformer's dimensions, run by Optimum (`ORTModelForCausalLM`) and by
onnxruntime-genai. All offline: the Llama directory is made locally (random weights, a tiny locally trained
tokenizer that only genai's builder needs), Optimum exports it under HF_HUB_OFFLINE=1, genai's builder reads it
from disk. Builds write a temporary directory renamed into place, so the cache never holds half an artifact."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tessera.bench.env import versions as bench_versions
from tessera.bench.timing import run_rounds, should_stop

EXTRA_IDS = 16  # ids past the image codes: the prompt token (id = vocab, as a class token), bos/eos/pad for HF
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def versions() -> list[str]:
    """The peer packages' versions: part of the artifacts' cache key."""
    return [f"{k}=={v}" for k, v in bench_versions(("transformers", "optimum-onnx", "onnxruntime-genai",
                                                    "tokenizers")).items()]


def llama_config_dict(dim: int, n_layer: int, n_head: int, ffn: int, vocab: int, eps: float, context: int = 512) -> dict:
    v = vocab + EXTRA_IDS
    return dict(hidden_size=dim, intermediate_size=ffn, num_hidden_layers=n_layer, num_attention_heads=n_head,
                num_key_value_heads=n_head, head_dim=dim // n_head, vocab_size=v, max_position_embeddings=context,
                rms_norm_eps=eps, tie_word_embeddings=False, hidden_act="silu", attention_bias=False, mlp_bias=False,
                rope_theta=10000.0, bos_token_id=vocab + 1, eos_token_id=vocab + 2, pad_token_id=vocab + 3)


# --- builds ------------------------------------------------------------------------------------------
def build(job: dict) -> dict:
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


# --- timed runs ------------------------------------------------------------------------------------
def run_optimum(job: dict) -> dict:
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


def run_genai(job: dict) -> dict:
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
