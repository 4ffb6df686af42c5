#!/usr/bin/env python
"""Decode speed of our runtime against its peers, same transformer dimensions, one run, as ratios.

    python benchmarks/decode_peers.py                      # LlamaGen GPT-B 256px, every peer (~10 min)
    python benchmarks/decode_peers.py --quick              # 2-layer GPT-B: test the harness (~3 min)
    python benchmarks/decode_peers.py --peers tessera-fp32,genai-fp32 --rounds 2
    python benchmarks/decode_peers.py --profile            # + onnxruntime op-time breakdown, ours vs genai

Peers (`--peers`, comma-separated; default all):
  tessera-fp32 / tessera-int4   our `Pipeline` on `tessera export --gpt GPT-B --vq VQ-Tiny ... --random-weights`
                                (fp32, and `--quant int4` when that option exists)
  tessera-int4-acc4             ours, int4 with an explicit `--int4-accuracy-level 4` (int8 compute, genai's CPU
                                default); not in the default set
  torch                         PyTorch eager: `tessera.export.reference.generate_tokens` (LlamaGen's KV-cached loop)
  optimum                       Optimum `ORTModelForCausalLM` on a random `LlamaForCausalLM` of the same dimensions
  genai-fp32 / genai-int4       onnxruntime-genai's builder + generator on that Llama directory

Every peer runs in its own process (no thread pool or allocator shared between peers), on
`--threads` threads (2): torch.set_num_threads, onnxruntime intra_op_num_threads, genai's
session_options. Each generates whole images of grid^2 tokens (256) from one prompt token (our
class token) with top-k sampling: batch 2 = one image with classifier-free guidance (cond + null
rows) and batch 8 = four images with guidance; the Llama peers run 2 / 8 independent rows (the
same transformer work; guidance itself is one numpy subtraction). Reported per (peer, batch):
per-token decode latency (median, p90 of the intervals between consecutive sampled tokens, i.e.
one forward + one sampling step), prefill (call start -> first token sampled, cache setup included),
whole image (call start -> 256th token).

The memory-bandwidth bound is measured in the same run: an onnxruntime fp32 MatMul [M, K] x [K, N]
with ~400 MB of constant weights (M = 1, 2, 8) gives the rate at which this machine streams weights
through a MatMul; bound(batch) = weight bytes read per token / that rate at M = batch.

Artifacts (exports, Llama directory, Optimum and genai builds) are cached under `--cache`
(benchmarks/.cache/) and reused on reruns. Results: a markdown table printed and written to
benchmarks/results/decode_peers.md (--quick: benchmarks/.cache/decode_peers_quick.md).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_env import cpu_model, versions as _versions  # noqa: E402
from bench_timing import StopGeneration, run_rounds, should_stop  # noqa: E402,F401  (peers_llama's too)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_CACHE = HERE / ".cache"
DEFAULT_OUT = HERE / "results" / "decode_peers.md"
ALL_PEERS = ["tessera-fp32", "genai-fp32", "optimum", "torch", "tessera-int4", "genai-int4", "tessera-int4-acc4"]
DEFAULT_PEERS = ALL_PEERS[:6]  # tessera-int4-acc4 only on request (int4 exports use level 4 by default now)
GUIDANCE = 4.0  # > 1: two rows (cond + null class) per image, as LlamaGen generates


# ==================================================================================================
# Shapes
# ==================================================================================================
@dataclass
class Shape:
    name: str
    n_layer: int
    dim: int
    n_head: int
    ffn: int
    vocab: int
    grid: int
    eps: float = 1e-5
    gpt_preset: str = "GPT-B"
    gpt_overrides: dict = field(default_factory=dict)
    model_dir: str | None = None  # an existing model directory (the shipped default) instead of an export
    peers: list[str] | None = None  # None: every requested peer

    @property
    def tokens(self) -> int:
        return self.grid * self.grid

    @property
    def key(self) -> str:
        return f"{self.gpt_preset.lower()}-L{self.n_layer}-d{self.dim}-v{self.vocab}-g{self.grid}"


def gpt_b_shape(quick: bool) -> Shape:
    if quick:
        return Shape("GPT-B, 2 layers (--quick)", 2, 768, 12, 2048, 16384, 16, gpt_overrides={"n_layer": 2})
    return Shape("LlamaGen GPT-B 256px", 12, 768, 12, 2048, 16384, 16)


def default_model_shape() -> Shape | None:
    path = REPO / "models" / "default" / "tessera.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    t = m["transformer"]
    return Shape("shipped default (models/default)", int(t["n_layer"]), int(t["dim"]), int(t["n_head"]),
                 int(t["ffn_dim"]), int(t["vocab_size"]), int(m["grid"]["height"]), float(t.get("norm_eps", 1e-5)),
                 gpt_preset="default", model_dir=str(path.parent), peers=["tessera-default", "torch"])


# ==================================================================================================
# Shared by the workers: timing of whole generations, statistics
# ==================================================================================================
def summarize(runs: list[dict]) -> dict:
    iv = np.concatenate([np.asarray(r["intervals_ms"]) for r in runs])
    return {"median_ms": float(np.median(iv)), "p90_ms": float(np.percentile(iv, 90)),
            "mean_ms": float(iv.mean()), "n": int(iv.size),
            "prefill_ms": float(np.median([r["prefill_s"] for r in runs]) * 1e3),
            "whole_s": float(np.median([r["whole_s"] for r in runs])), "rounds": len(runs),
            "estimated": any(r.get("estimated") for r in runs)}


def summarize_rounds(runs: list[dict], mode: str = "best") -> dict:
    """Statistics over the rounds of one (peer, batch): "best" takes the round with the lowest median
    decode latency (on a shared machine noise only adds time), "pooled" pools every round's intervals."""
    per_round = [summarize([r]) for r in runs]
    if mode == "pooled" or len(runs) == 1:
        out = summarize(runs)
    else:
        out = dict(min(per_round, key=lambda s: s["median_ms"]))
    out.update(rounds=len(runs), aggregate=mode, round_medians_ms=[round(s["median_ms"], 2) for s in per_round])
    return out


def merge_rounds(results: list[dict], mode: str) -> dict:
    """Worker results of one peer, one per round -> one entry with statistics per batch size."""
    acc = {k: v for k, v in results[0].items() if k not in ("runs", "load_before", "load_after")}
    runs: dict[str, list] = {}
    for r in results:
        for rows, rr in r["runs"].items():
            runs.setdefault(rows, []).extend(rr)
    acc["loads"] = [[r["load_before"][0], r["load_after"][0]] for r in results if "load_before" in r]
    rss = [r["peak_rss_mb"] for r in results if r.get("peak_rss_mb") and r.get("rss_source") == "VmHWM"]
    acc["peak_rss_mb"] = max(rss) if rss else None
    acc["stats"] = {rows: summarize_rounds(rr, mode) for rows, rr in runs.items()}
    return acc


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM: reset at exec, unlike ru_maxrss, which a worker
    would inherit from the orchestrator)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


# ==================================================================================================
# Workers (each runs in its own process: `--worker KIND --job FILE --result FILE`)
# ==================================================================================================
def worker_bandwidth(job: dict) -> dict:
    """Weight-streaming rate of an fp32 MatMul with ~400 MB of constant weights; numpy read rate."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k = 4096
    n = int(job.get("mbytes", 400) * 1e6 / 4 / k) // 256 * 256
    w = np.random.default_rng(0).standard_normal((k, n), dtype=np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "bw",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.intra_op_num_threads = job["threads"]
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    blob = model.SerializeToString()
    del model, graph
    sess = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
    del blob
    out = {"weight_bytes": int(w.nbytes), "shape": [k, n], "matmul": {}}
    for m in job.get("ms", [1, 2, 8]):
        x = np.random.default_rng(1).standard_normal((m, k), dtype=np.float32)
        for _ in range(3):
            sess.run(None, {"x": x})
        times = []
        t_end = time.perf_counter() + job.get("seconds", 2.0)
        while len(times) < 5 or (time.perf_counter() < t_end and len(times) < 60):
            t = time.perf_counter()
            sess.run(None, {"x": x})
            times.append(time.perf_counter() - t)
        med = float(np.median(times))
        out["matmul"][str(m)] = {"median_ms": med * 1e3, "best_ms": min(times) * 1e3, "gbps": w.nbytes / med / 1e9,
                                 "reps": len(times)}
    del sess
    times = []
    for _ in range(5):
        t = time.perf_counter()
        w.sum()
        times.append(time.perf_counter() - t)
    out["numpy_sum_gbps"] = w.nbytes / float(np.median(times)) / 1e9  # numpy reduces on one thread
    return out


def worker_tessera(job: dict) -> dict:
    from tessera.runtime import Pipeline

    pipe = Pipeline.load(job["model_dir"], providers="cpu", threads=job["threads"], verify="none")
    total = pipe.grid[0] * pipe.grid[1]

    def one(rows: int, n: int, max_s: float | None):
        images = rows // 2  # guidance: a cond and a null row per image
        ts: list[float] = []

        def callback(step, _total, _tokens):
            ts.append(time.perf_counter())
            if step < total and should_stop(t0, step, n, max_s):
                raise StopGeneration

        t0 = time.perf_counter()
        try:
            pipe.generate_tokens(list(range(images)), guidance_scale=GUIDANCE, temperature=1.0, top_k=job["top_k"],
                                 top_p=1.0, seed=0, callback=callback)
        except StopGeneration:
            pass
        return t0, ts

    runs = run_rounds(one, job["batches"], job["warmup"], job["rounds"], job["tokens"], job.get("max_s"))
    g = pipe.manifest.graph("transformer")
    return {"runs": runs, "graph": {k: g.get(k) for k in ("kind", "kv_cache", "precision", "method", "options")}}


def worker_torch(job: dict) -> dict:
    import torch

    torch.set_num_threads(job["threads"])
    from tessera.export import reference
    from tessera.export.build import build_gpt, load_model_dir
    from tessera.export.config import GPTConfig, gpt_preset
    from tessera.runtime.manifest import load_manifest
    from tessera.runtime.sampling import SamplingConfig

    note = "random weights"
    if job.get("model_dir"):
        manifest = load_manifest(job["model_dir"], verify="none")
        if manifest.data.get("weights"):
            model, _, _ = load_model_dir(job["model_dir"])
            note = "the model directory's weights"
        else:
            model = build_gpt(GPTConfig.from_dict(manifest.data["transformer"]), None)
    else:
        model = build_gpt(gpt_preset(job["preset"], **job.get("overrides", {})), None)
    model.eval()
    stamps: list[float] = []
    ctl = {"n": 0, "t0": 0.0, "max_s": None}

    def hook(_module, _inputs, _output):  # after each forward: prefill, then one per decoded token
        stamps.append(time.perf_counter())
        if len(stamps) < job["tokens"] and should_stop(ctl["t0"], len(stamps), ctl["n"], ctl["max_s"]):
            raise StopGeneration

    model.register_forward_hook(hook)
    sampling = SamplingConfig(temperature=1.0, top_k=job["top_k"], top_p=1.0)

    def one(rows: int, n: int, max_s: float | None):
        stamps.clear()
        t0 = time.perf_counter()
        ctl.update(n=n, t0=t0, max_s=max_s)
        try:
            reference.generate_tokens(model, list(range(rows // 2)), guidance_scale=GUIDANCE, sampling=sampling, seed=0)
        except StopGeneration:
            pass
        return t0, list(stamps)

    runs = run_rounds(one, job["batches"], job["warmup"], job["rounds"], job["tokens"], job.get("max_s"))
    embed = ("tok_embeddings.", "cls_embedding.")
    wbytes = sum(p.numel() * p.element_size() for name, p in model.named_parameters() if not name.startswith(embed))
    return {"runs": runs, "weight_bytes": int(wbytes), "weights": note, "torch_threads": torch.get_num_threads()}


def worker_optimum(job: dict) -> dict:
    import peers_llama

    return peers_llama.run_optimum(Path(job["model_dir"]), job["batches"], job["threads"], job["top_k"], job["warmup"],
                                   job["rounds"], job["tokens"], job["prompt_id"], job.get("io_binding"),
                                   job.get("torch_threads", 1), job.get("max_s"))


def worker_genai(job: dict) -> dict:
    import peers_llama

    out = peers_llama.run_genai(Path(job["model_dir"]), job["batches"], job["threads"], job["top_k"], job["warmup"],
                                job["rounds"], job["tokens"], job["prompt_id"], job.get("max_s"))
    out["quant"] = peers_llama.genai_quant_facts(Path(job["model_dir"]))
    return out


def worker_build_llama(job: dict) -> dict:
    import peers_llama

    peers_llama.make_llama_dir(Path(job["out"]), job["config"])
    return {}


def worker_build_optimum(job: dict) -> dict:
    import peers_llama

    peers_llama.build_optimum(Path(job["llama_dir"]), Path(job["out"]))
    return {}


def worker_profile(job: dict) -> dict:
    """onnxruntime profiles of a short decode (batch 2 rows) of our graphs and genai's, op time by op type.
    The graphs take turns for `passes` passes (a fresh session each); each keeps its fastest pass."""
    import gc

    import onnxruntime as ort

    prof_dir = Path(job["out_dir"])
    prof_dir.mkdir(parents=True, exist_ok=True)
    n = job["tokens"]

    def tessera(label: str, model_dir: str, pass_no: int) -> dict:
        from tessera.runtime.generation import generate_tokens
        from tessera.runtime.manifest import load_manifest
        from tessera.runtime.sampling import SamplingConfig
        from tessera.runtime.session import session_options
        from tessera.runtime.transformer import TransformerRunner

        manifest = load_manifest(model_dir, verify="none")
        so = session_options(job["threads"])  # the runtime's own options, plus profiling
        so.enable_profiling = True
        so.profile_file_prefix = str(prof_dir / f"{label}-p{pass_no}")
        sess = ort.InferenceSession(str(manifest.graph_path("transformer")), so, providers=["CPUExecutionProvider"])
        runner = TransformerRunner(sess, manifest)

        def cb(step, _t, _x):
            if step >= n:
                raise StopGeneration

        try:
            generate_tokens(runner, manifest.layout, manifest.grid, np.array([0]), GUIDANCE,
                            SamplingConfig(1.0, job["top_k"], 1.0), 0, cb)
        except StopGeneration:
            pass
        return aggregate_profile(sess.end_profiling())

    def genai(label: str, model_dir: str, pass_no: int) -> dict:
        import onnxruntime_genai as og

        prefix = prof_dir / f"{label}-p{pass_no}"
        cfg = og.Config(model_dir)
        cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {"enable_profiling": str(prefix)}}}}))
        model = og.Model(cfg)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=1 + n, min_length=1 + n, do_sample=True, top_k=job["top_k"],
                                  batch_size=2, random_seed=0)
        gen = og.Generator(model, params)
        gen.append_tokens(np.full((2, 1), job["prompt_id"], np.int32))
        while not gen.is_done():
            gen.generate_next_token()
        del gen, params, model, cfg  # the profile file is written when the session closes
        gc.collect()
        files = sorted(prof_dir.glob(f"{prefix.name}*.json"), key=lambda p: p.stat().st_mtime)
        if not files:
            raise RuntimeError(f"genai wrote no profile under {prefix}")
        return aggregate_profile(str(files[-1]))

    best: dict[str, dict] = {}
    for pass_no in range(job.get("passes", 2)):
        for label, kind, model_dir in job["graphs"]:
            agg = (tessera if kind == "tessera" else genai)(label, model_dir, pass_no)
            per_run = agg["model_run_us"] / max(agg["runs"], 1)
            if label not in best or per_run < best[label]["model_run_us"] / max(best[label]["runs"], 1):
                best[label] = agg
    return best


def aggregate_profile(path: str) -> dict:
    events = json.loads(Path(path).read_text())
    by_op: dict[str, float] = {}
    runs = 0
    run_us = 0.0
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + float(e.get("dur", 0))
        elif e.get("cat") == "Session" and e.get("name") == "model_run":
            runs += 1
            run_us += float(e.get("dur", 0))
    return {"file": str(path), "runs": runs, "model_run_us": run_us, "op_us": by_op}


WORKERS = {"bandwidth": worker_bandwidth, "tessera": worker_tessera, "torch": worker_torch, "optimum": worker_optimum,
           "genai": worker_genai, "build-llama": worker_build_llama, "build-optimum": worker_build_optimum,
           "profile": worker_profile}


def worker_main(kind: str, job_file: str, result_file: str) -> int:
    sys.path.insert(0, str(HERE))
    job = json.loads(Path(job_file).read_text())
    load0 = os.getloadavg()
    out = WORKERS[kind](job)
    out.update(load_before=load0, load_after=os.getloadavg(), peak_rss_mb=peak_rss_mb(), rss_source="VmHWM")
    Path(result_file).write_text(json.dumps(out))
    return 0


# ==================================================================================================
# Orchestration
# ==================================================================================================
class Runner:
    def __init__(self, cache: Path, verbose: bool):
        self.cache = cache
        self.logs = cache / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.verbose = verbose

    def worker(self, kind: str, job: dict, tag: str, timeout: float = 1800) -> dict:
        job_file = self.logs / f"{tag}.job.json"
        result_file = self.logs / f"{tag}.result.json"
        log = self.logs / f"{tag}.log"
        job_file.write_text(json.dumps(job))
        result_file.unlink(missing_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--job", str(job_file),
               "--result", str(result_file)]
        with open(log, "w") as f:
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=str(REPO))
        if r.returncode != 0 or not result_file.is_file():
            tail = log.read_text()[-2000:]
            raise RuntimeError(f"{tag} failed (exit {r.returncode}); log {log}:\n{tail}")
        return json.loads(result_file.read_text())

    def command(self, cmd: list[str], tag: str, timeout: float = 1800) -> None:
        log = self.logs / f"{tag}.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        with open(log, "w") as f:
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=str(REPO))
        if r.returncode != 0:
            raise RuntimeError(f"{tag} failed (exit {r.returncode}); log {log}:\n{log.read_text()[-2000:]}")


def export_fingerprint() -> str:
    """Hash of the export stage's sources (+ the onnxruntime that quantizes): cached exports are keyed by it,
    so that a change to the graph builder or the quantizer is never measured through a stale export."""
    import hashlib
    from importlib import metadata
    from importlib.util import find_spec

    h = hashlib.sha256()
    spec = find_spec("tessera.export")
    for root in (spec.submodule_search_locations or []):
        for f in sorted(Path(root).glob("*.py")):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    h.update(metadata.version("onnxruntime").encode())
    return h.hexdigest()[:10]


def pkg_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "none"


def tessera_cli() -> list[str]:
    return [sys.executable, "-c", "import sys; from tessera.cli.main import main; sys.exit(main(sys.argv[1:]))"]


def tessera_has_int4() -> bool:
    r = subprocess.run([*tessera_cli(), "export", "--help"], capture_output=True, text=True)
    return r.returncode == 0 and "int4" in r.stdout


class Artifacts:
    """Build (or reuse from the cache) every peer's model for one shape."""

    def __init__(self, runner: Runner, shape: Shape, threads: int, log=print):
        self.r = runner
        self.shape = shape
        self.threads = threads
        self.root = runner.cache / shape.key
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.build_s: dict[str, float] = {}

    def _timed(self, name: str, path: Path, ready: Path, build) -> Path:
        if ready.exists():
            self.log(f"  reuse {path.relative_to(self.r.cache.parent) if path.is_relative_to(self.r.cache.parent) else path}")
            return path
        self.log(f"  building {name} -> {path} ...")
        t = time.perf_counter()
        build()
        self.build_s[name] = time.perf_counter() - t
        self.log(f"  built {name} in {self.build_s[name]:.0f}s")
        return path

    def tessera(self, variant: str) -> Path:
        s = self.shape
        out = self.root / f"tessera-{variant}-{export_fingerprint()}"
        cmd = [*tessera_cli(), "export", "--gpt", s.gpt_preset, "--vq", "VQ-Tiny",
               "--vq-set", f"image_size={s.grid * 4}", "--vq-set", f"codebook_size={s.vocab}",
               "--random-weights", "--out", str(out), "--overwrite"]
        for k, v in s.gpt_overrides.items():
            cmd += ["--gpt-set", f"{k}={v}"]
        if variant == "int4":
            cmd += ["--quant", "int4"]
        elif variant == "int4-acc4":  # explicit, whatever the default level is
            cmd += ["--quant", "int4", "--int4-accuracy-level", "4"]
        return self._timed(f"tessera-{variant}", out, out / "tessera.json",
                           lambda: self.r.command(cmd, f"{s.key}.export-tessera-{variant}"))

    def llama(self) -> Path:
        import peers_llama

        s = self.shape
        out = self.root / f"llama-tf{pkg_version('transformers')}"
        cfg = peers_llama.llama_config_dict(s.dim, s.n_layer, s.n_head, s.ffn, s.vocab, s.eps)
        return self._timed("llama", out, out / "tokenizer.json",
                           lambda: self.r.worker("build-llama", {"out": str(out), "config": cfg},
                                                 f"{s.key}.build-llama"))

    def optimum(self) -> Path:
        llama = self.llama()
        out = self.root / f"optimum-{pkg_version('optimum-onnx')}-tf{pkg_version('transformers')}"
        return self._timed("optimum", out, out / "model.onnx",
                           lambda: self.r.worker("build-optimum", {"llama_dir": str(llama), "out": str(out)},
                                                 f"{self.shape.key}.build-optimum"))

    def genai(self, precision: str) -> Path:
        import peers_llama

        llama = self.llama()
        out = self.root / f"genai-{precision}-{pkg_version('onnxruntime-genai')}"
        return self._timed(f"genai-{precision}", out, out / "genai_config.json",
                           lambda: peers_llama.build_genai(llama, out, precision, self.root / "genai-builder-cache",
                                                           self.threads))


def weight_bytes_onnx(path: Path) -> int:
    """Bytes of constant weights a forward reads in full: every initializer consumed by a node other than
    a Gather (embedding tables are only gathered: a few rows per token)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    consumers: dict[str, set[str]] = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, set()).add(n.op_type)
    total = 0
    for t in m.graph.initializer:
        ops = consumers.get(t.name, set())
        if not ops or all(op.startswith("Gather") for op in ops):
            continue
        numel = int(np.prod(t.dims)) if t.dims else 1
        total += numel * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return total


def kv_bytes_per_token(shape: Shape, rows: int) -> float:
    """Average KV-cache bytes an attention step reads over a whole image (fp32 K and V, mean length)."""
    mean_len = (shape.tokens + 1) / 2
    return 2 * shape.n_layer * rows * shape.dim * 4 * mean_len


# ==================================================================================================
# Report
# ==================================================================================================
def versions() -> dict:
    return _versions(("tessera-ar", "numpy", "onnx", "onnxruntime", "onnxruntime-genai", "torch", "transformers",
                      "optimum", "optimum-onnx", "tokenizers"))


def fmt(x, spec=".1f", none="—"):
    return none if x is None else format(x, spec)


# Which of our variants a peer is compared with.
OURS_FOR = {"genai-fp32": "tessera-fp32", "optimum": "tessera-fp32", "torch": "tessera-fp32",
            "genai-int4": "tessera-int4", "tessera-int4-acc4": None, "tessera-int4": None, "tessera-fp32": None}
PRECISION = {"torch": "fp32", "optimum": "fp32"}


def precision_label(peer: str, r: dict) -> str:
    """From what the worker read off the graph: ours from the manifest, genai from its MatMulNBits nodes."""
    g = r.get("graph") or {}
    q = r.get("quant") or {}
    if g.get("precision"):
        opts = g.get("options") or {}
        lvl = opts.get("accuracy_level")
        return g["precision"] + (f" (MatMulNBits, block {opts.get('block_size')}, acc. level {lvl})"
                                 if lvl is not None else "")
    if q:
        return f"int{q.get('bits')} (MatMulNBits, block {q.get('block_size')}, acc. level {q.get('accuracy_level')})"
    if r.get("precision"):
        return r["precision"]
    if peer.startswith(("genai-", "tessera-")) and peer != "tessera-default":
        return peer.split("-", 1)[1]
    return PRECISION.get(peer, "")

TARGETS = [  # (label, ours, peer, kind, need): kind "le": ours/peer <= need; "ge": peer/ours >= need
    ("fp32 decode <= 0.9x onnxruntime-genai fp32", "tessera-fp32", "genai-fp32", "le", 0.9),
    ("int4 decode <= 0.9x onnxruntime-genai int4", "tessera-int4", "genai-int4", "le", 0.9),
    (">= 1.3x faster than Optimum (fp32)", "tessera-fp32", "optimum", "ge", 1.3),
    (">= 4x faster than PyTorch eager (fp32)", "tessera-fp32", "torch", "ge", 4.0),
    (">= 10x faster than PyTorch eager (int4)", "tessera-int4", "torch", "ge", 10.0),
    ("fp32 decode within 1.2x of the bandwidth bound", "tessera-fp32", "bound", "le", 1.2),
    # Not the shipped int4 default: the same int4 weights with int8 compute (genai's CPU setting), for reference.
    ("(variant int4-acc4) int4 decode <= 0.9x onnxruntime-genai int4", "tessera-int4-acc4", "genai-int4", "le", 0.9),
    ("(variant int4-acc4) >= 10x faster than PyTorch eager", "tessera-int4-acc4", "torch", "ge", 10.0),
]


def bandwidth_rate(bw: dict | None, rows: int) -> float | None:
    """GB/s of weight streaming at M = rows: the best over the bandwidth measurements of this run."""
    if not bw:
        return None
    rates = [b["matmul"][str(rows)]["gbps"] for b in bw["runs"] if str(rows) in b.get("matmul", {})]
    return max(rates) if rates else None


def read_ms(weight_bytes: int | None, bw: dict | None, shape: Shape, rows: int, kv: bool = False) -> float | None:
    """ms to read the weights (and with `kv`, the mean KV cache) once at this run's MatMul rate for
    `rows` rows: the bound, and with the cache the floor any fp32 decode step spends on memory."""
    rate = bandwidth_rate(bw, rows)
    if not weight_bytes or not rate:
        return None
    return (weight_bytes + (kv_bytes_per_token(shape, rows) if kv else 0)) / (rate * 1e9) * 1e3


def needed_time(ms: float, bound: float | None) -> str:
    return f"{ms:.1f}" + (f" ({ms / bound:.2f}x)" if bound else "")


def build_report(state: dict) -> str:
    L: list[str] = []
    a = L.append
    a("# Decode speed: our runtime vs its peers (same dimensions, one run)")
    a("")
    a(f"- command: `{state['command']}`")
    a(f"- date: {state['started']} -> {state['finished']} UTC ({state['elapsed_s'] / 60:.1f} min)")
    a(f"- machine: {state['cpu']}, {state['cores']} cores; {state['threads']} threads per peer "
      f"(torch.set_num_threads, intra_op_num_threads, genai session_options)")
    a(f"- load average (1/5/15 min): start {'/'.join(f'{x:.2f}' for x in state['load_start'])}, end "
      f"{'/'.join(f'{x:.2f}' for x in state['load_end'])}; machine shared with other work, compare ratios")
    a("- versions: " + ", ".join(f"{k} {v}" for k, v in state["versions"].items()))
    a(f"- sampling: temperature 1, top-k {state['top_k']}; ours and torch with guidance scale {GUIDANCE} "
      "(batch 2 = 1 image, batch 8 = 4 images, cond + null rows); Llama peers: the same number of independent rows")
    how = ("the round with the lowest median (best of the rounds: on a shared machine noise only adds time)"
           if state.get("aggregate", "pooled") == "best" else "intervals pooled over the rounds")
    a(f"- per peer: warm-up of {state['warmup']} tokens per batch size, then {state['rounds']} round(s) of one whole "
      f"image per batch size, a fresh process per peer and round, peers interleaved; decode = interval between "
      f"consecutive sampled tokens (forward + sampling); reported: {how}")
    a("")
    bw = state.get("bandwidth")
    if bw:
        a("## Memory bandwidth (measured in this run)")
        a("")
        a("| measurement | " + " | ".join(f"run {i + 1}" for i in range(len(bw["runs"]))) + " |")
        a("|---|" + "---|" * len(bw["runs"]))
        for m in bw["runs"][0]["matmul"]:
            a(f"| ORT fp32 MatMul [{m}, {bw['runs'][0]['shape'][0]}] x {bw['runs'][0]['shape']} "
              f"({bw['runs'][0]['weight_bytes'] / 1e6:.0f} MB), GB/s | "
              + " | ".join(f"{b['matmul'][m]['gbps']:.1f} ({b['matmul'][m]['median_ms']:.1f} ms)" for b in bw["runs"])
              + " |")
        a("| numpy float32 sum (1 thread), GB/s | " + " | ".join(f"{b['numpy_sum_gbps']:.1f}" for b in bw["runs"]) + " |")
        a("")
        a("Bound(batch) = weight bytes read per token / best MatMul rate at M = batch rows in this run; "
          "`+KV` adds the mean fp32 KV-cache bytes read per step over a 256-token image.")
        a("")
    for shape_res in state["shapes"]:
        shape = Shape(**shape_res["shape"])
        res = shape_res["peers"]
        a(f"## {shape.name}: {shape.n_layer} layers, dim {shape.dim}, {shape.n_head} heads, FFN {shape.ffn}, "
          f"vocab {shape.vocab}, {shape.tokens} tokens per image")
        a("")
        a(f"| peer | precision | batch rows | decode median ms | p90 ms | prefill ms | image s ({shape.tokens} tok) | "
          "weights MB/token | bound ms | bound+KV ms | x bound | ours/peer (median) | peak RSS MB |")
        a("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for peer, r in res.items():
            if "error" in r or "skipped" in r:
                continue
            for rows, s in r["stats"].items():
                rows_i = int(rows)
                wb = r.get("weight_bytes")
                bound, bound_kv = read_ms(wb, bw, shape, rows_i), read_ms(wb, bw, shape, rows_i, kv=True)
                ours = OURS_FOR.get(peer)
                if shape.model_dir and peer != "tessera-default":
                    ours = "tessera-default"
                ratio = None
                if ours and ours in res and "stats" in res[ours] and rows in res[ours]["stats"]:
                    ratio = res[ours]["stats"][rows]["median_ms"] / s["median_ms"]
                a(f"| {peer} | {precision_label(peer, r)} | {rows} | {s['median_ms']:.1f} | "
                  f"{s['p90_ms']:.1f} | {s['prefill_ms']:.1f} | {s['whole_s']:.2f}{' (est.)' if s.get('estimated') else ''} | "
                  f"{fmt(wb / 1e6 if wb else None, '.0f')} | {fmt(bound)} | {fmt(bound_kv)} | "
                  f"{fmt(s['median_ms'] / bound if bound else None, '.2f')} | "
                  f"{fmt(ratio, '.2f') if ratio else ('—' if ours is None else 'n/a')}"
                  f"{f' (vs {ours})' if ratio else ''} | {fmt(r.get('peak_rss_mb'), '.0f')} |")
        a("")
        skipped = [(p, r.get("skipped") or r.get("error")) for p, r in res.items() if "error" in r or "skipped" in r]
        for p, why in skipped:
            a(f"- **{p}**: {'skipped' if 'skipped' in res[p] else 'FAILED'}: {why}")
        if any(s.get("estimated") for r in res.values() for s in r.get("stats", {}).values()):
            a(f"- (est.): a generation passed --max-run-s and was cut short; its whole-image time is prefill + "
              f"{shape.tokens - 1} x its mean interval.")
        if skipped or any(s.get("estimated") for r in res.values() for s in r.get("stats", {}).values()):
            a("")
        if not shape.model_dir:
            a("### Targets")
            a("")
            a("| target | batch rows | ours ms | peer ms | ratio | need | result | ours would need ms (x fp32 floor) |")
            a("|---|---|---|---|---|---|---|---|")
            for label, ours, peer, kind, need in TARGETS:
                if label.startswith("(variant") and ours not in res:
                    continue
                for rows in ("2", "8"):
                    o = res.get(ours, {}).get("stats", {}).get(rows)
                    if peer == "bound":
                        p_ms = read_ms(res.get(ours, {}).get("weight_bytes"), bw, shape, int(rows))
                    else:
                        ps = res.get(peer, {}).get("stats", {}).get(rows)
                        p_ms = ps["median_ms"] if ps else None
                    if o is None or p_ms is None:
                        a(f"| {label} | {rows} | {fmt(o['median_ms'] if o else None)} | {fmt(p_ms)} | — | "
                          f"{'<=' if kind == 'le' else '>='} {need} | not measured | |")
                        continue
                    ratio = o["median_ms"] / p_ms if kind == "le" else p_ms / o["median_ms"]
                    ok = ratio <= need if kind == "le" else ratio >= need
                    rname = "ours/peer" if kind == "le" else "peer/ours"
                    floor = read_ms(res[ours].get("weight_bytes"), bw, shape, int(rows), kv=True) \
                        if ours == "tessera-fp32" else None
                    a(f"| {label} | {rows} | {o['median_ms']:.1f} | {p_ms:.1f} | {ratio:.2f} ({rname}) | "
                      f"{'<=' if kind == 'le' else '>='} {need} | {'PASS' if ok else 'FAIL'} | "
                      f"{needed_time(p_ms * need if kind == 'le' else p_ms / need, floor)} |")
            a("")
            a("*ours would need*: the decode time that meets the target in this run; for fp32, as a multiple of "
              "the fp32 floor (`bound+KV`: the weights and the mean KV cache read once at the rate a bare MatMul of "
              "the same rows reached in this run). Near 1.00x, a target leaves no time for anything but those "
              "reads: attention and norm arithmetic, sampling and the call itself. int4 decode is bound by its "
              "int8 kernels, not by bytes, so it has no such floor here.")
            a("")
        notes = []
        for peer, r in res.items():
            extra = {k: r[k] for k in ("graph", "quant", "io_binding", "torch_threads", "weights") if k in r}
            if extra:
                notes.append(f"{peer}: " + ", ".join(f"{k} {v}" for k, v in extra.items()))
            meds = {rows: st.get("round_medians_ms") for rows, st in r.get("stats", {}).items()}
            if any(v and len(v) > 1 for v in meds.values()):
                notes.append(f"{peer}: median decode ms per round: "
                             + "; ".join(f"batch {rows}: {', '.join(f'{m:.1f}' for m in v)}" for rows, v in meds.items()))
            if r.get("loads"):
                notes.append(f"{peer}: 1-min load average before -> after its run(s): "
                             + ", ".join(f"{a:.2f} -> {b:.2f}" for a, b in r["loads"]))
        if notes:
            a("<details><summary>per-peer settings and load</summary>")
            a("")
            for n in notes:
                a(f"- {n}")
            a("")
            a("</details>")
            a("")
        if shape_res.get("build_s"):
            a("Artifacts built this run (s): " + ", ".join(f"{k} {v:.0f}" for k, v in shape_res["build_s"].items())
              + f"; cached under `{state['cache']}`.")
            a("")
    prof = state.get("profile")
    if prof:
        a("## onnxruntime profile, batch 2 decode: kernel time per forward by op type (ms; fastest of 2 passes)")
        a("")
        a(prof)
        a("")
    for n in state.get("notes", []):
        a(f"- {n}")
    return "\n".join(L) + "\n"


def profile_table(p: dict) -> str:
    cols = list(p)
    ops = sorted({op for c in cols for op in p[c]["op_us"]},
                 key=lambda op: -max(p[c]["op_us"].get(op, 0) / max(p[c]["runs"], 1) for c in cols))
    lines = ["| op type | " + " | ".join(f"{c} ms/forward" for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for op in ops:
        lines.append(f"| {op} | " + " | ".join(f"{p[c]['op_us'].get(op, 0) / max(p[c]['runs'], 1) / 1e3:.2f}"
                                               for c in cols) + " |")
    lines.append("| **sum of kernels** | " + " | ".join(
        f"{sum(p[c]['op_us'].values()) / max(p[c]['runs'], 1) / 1e3:.2f}" for c in cols) + " |")
    lines.append("| **model_run (session)** | " + " | ".join(
        f"{p[c]['model_run_us'] / max(p[c]['runs'], 1) / 1e3:.2f} ({p[c]['runs']} runs)" for c in cols) + " |")
    return "\n".join(lines)


# ==================================================================================================
# Main
# ==================================================================================================
def state_file(cache: Path, quick: bool) -> Path:
    return cache / ("last_state_quick.json" if quick else "last_state.json")


def rebuild_report(cache: Path, mode: str, out: Path | None, quick: bool = False) -> int:
    state = json.loads(state_file(cache, quick).read_text())
    logs = cache / "logs"
    for shape_res in state["shapes"]:
        key = Shape(**shape_res["shape"]).key
        for peer, r in list(shape_res["peers"].items()):
            files = sorted(logs.glob(f"{key}.run-{peer}.r*.result.json"))
            if not files or "error" in r or "skipped" in r:
                continue
            merged = merge_rounds([json.loads(f.read_text()) for f in files], mode)
            for k in ("weight_bytes", "precision"):  # added by the orchestrator, not the worker
                if k in r:
                    merged[k] = r[k]
            shape_res["peers"][peer] = merged
    state["aggregate"] = mode
    state["command"] += f"  (report rebuilt: --rebuild-report --aggregate {mode})"
    report = build_report(state)
    print(report)
    out_path = out or Path(state.get("out") or DEFAULT_OUT)
    out_path.write_text(report)
    print(f"wrote {out_path}")
    return 0


def run_peer(runner: Runner, peer: str, shape: Shape, model_dir: Path | None, common: dict, prompt_id: int,
             args, tag: str) -> dict:
    """One timed worker process for `peer`; adds the weight bytes its graph reads per token."""
    if peer.startswith("tessera"):
        r = runner.worker("tessera", {**common, "model_dir": str(model_dir)}, tag)
        r["weight_bytes"] = weight_bytes_onnx(model_dir / "transformer.onnx")
        if peer == "tessera-default":
            r["precision"] = (r.get("graph") or {}).get("precision", "")
        return r
    if peer == "torch":
        job = {**common, "preset": shape.gpt_preset, "overrides": shape.gpt_overrides, "model_dir": shape.model_dir}
        return runner.worker("torch", job, tag)
    if peer == "optimum":
        iob = {"auto": None, "on": True, "off": False}[args.optimum_io_binding]
        r = runner.worker("optimum", {**common, "model_dir": str(model_dir), "prompt_id": prompt_id, "io_binding": iob,
                                      "torch_threads": args.optimum_torch_threads}, tag)
        r["weight_bytes"] = weight_bytes_onnx(model_dir / "model.onnx")
        return r
    if peer.startswith("genai"):
        r = runner.worker("genai", {**common, "model_dir": str(model_dir), "prompt_id": prompt_id}, tag)
        r["weight_bytes"] = weight_bytes_onnx(model_dir / "model.onnx")
        return r
    raise ValueError(f"unknown peer {peer}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2-layer GPT-B (same width and vocab): test the harness")
    p.add_argument("--peers", default="default",
                   help=f"comma-separated subset of {','.join(ALL_PEERS)}, 'default' ({','.join(DEFAULT_PEERS)}) or 'all'")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="artifact cache (default benchmarks/.cache)")
    p.add_argument("--out", type=Path, help="markdown results file (default benchmarks/results/decode_peers.md; "
                                            "--quick: benchmarks/.cache/decode_peers_quick.md)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="2,8", help="batch rows (2 per image with guidance; default 2,8)")
    p.add_argument("--rounds", type=int, default=1,
                   help="passes over the peer list, one whole image per peer and batch size each (default 1)")
    p.add_argument("--max-run-s", type=float, default=90.0,
                   help="cut a generation short after this many seconds and extrapolate its whole-image time "
                        "from its mean interval (flagged est.; default 90)")
    p.add_argument("--aggregate", choices=["best", "pooled"], default="best",
                   help="several rounds: report each (peer, batch)'s best round (default) or pool the rounds")
    p.add_argument("--rebuild-report", action="store_true",
                   help="rebuild the report of the last run (with --quick: of the last quick run) from the cache "
                        "(last_state*.json + the per-round worker results under logs/), e.g. with another "
                        "--aggregate; measures nothing")
    p.add_argument("--build-only", action="store_true", help="build / reuse the cached artifacts, measure nothing")
    p.add_argument("--profile-tokens", type=int, default=32, help="decode steps profiled with --profile")
    p.add_argument("--warmup", type=int, default=8, help="warm-up tokens per batch size (default 8)")
    p.add_argument("--top-k", type=int, default=2000, help="top-k sampling for every peer (LlamaGen's demo: 2000)")
    p.add_argument("--no-default-model", action="store_true", help="skip the shipped default model's shape")
    p.add_argument("--profile", action="store_true",
                   help="also profile our fp32 graph and genai's (onnxruntime profiling, batch 2, 32 decode steps)")
    p.add_argument("--optimum-io-binding", choices=["auto", "on", "off"], default="auto",
                   help="Optimum's use_io_binding (auto: Optimum's default for the provider)")
    p.add_argument("--optimum-torch-threads", type=int, default=1,
                   help="torch threads in the Optimum process (its sampling runs in torch; default 1, see notes)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.job, args.result)

    sys.path.insert(0, str(HERE))
    if args.rebuild_report:
        return rebuild_report(args.cache.resolve(), args.aggregate, args.out, args.quick)
    peers = DEFAULT_PEERS if args.peers == "default" else ALL_PEERS if args.peers == "all" else [x.strip() for x in args.peers.split(",") if x.strip()]
    unknown = [x for x in peers if x not in ALL_PEERS]
    if unknown:
        p.error(f"unknown peers {unknown}; choose from {ALL_PEERS}")
    batches = [int(b) for b in args.batches.split(",")]
    if any(b % 2 for b in batches):
        p.error("batch rows must be even (2 rows per image with guidance)")
    out_path = args.out or (args.cache / "decode_peers_quick.md" if args.quick else DEFAULT_OUT)
    cache = args.cache.resolve()
    runner = Runner(cache, verbose=True)
    started = datetime.now(timezone.utc)
    t_start = time.perf_counter()
    state = {"command": "python " + " ".join([os.path.relpath(__file__, REPO)] + (argv if argv is not None else sys.argv[1:])),
             "started": started.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(), "cores": os.cpu_count(),
             "threads": args.threads, "load_start": os.getloadavg(),
             "versions": {**versions(), "export-sources": export_fingerprint()}, "top_k": args.top_k,
             "warmup": args.warmup, "rounds": args.rounds, "aggregate": args.aggregate, "cache": os.path.relpath(cache, REPO), "shapes": [],
             "notes": []}
    print(f"decode_peers: peers {peers}, batches {batches}, threads {args.threads}, load {state['load_start']}")

    shapes = [gpt_b_shape(args.quick)]
    dflt = None if args.no_default_model else default_model_shape()
    if dflt is not None:
        shapes.append(dflt)
    elif not args.no_default_model:
        state["notes"].append("models/default/tessera.json does not exist yet: the shipped default's shape was not run.")

    # 1. artifacts first (not timed against anything), so that runs follow each other closely
    has_int4 = tessera_has_int4()
    plans = []
    for shape in shapes:
        print(f"[{shape.name}] artifacts in {cache / shape.key}")
        art = Artifacts(runner, shape, args.threads)
        res: dict[str, dict] = {}
        dirs: dict[str, Path] = {}
        todo = peers if shape.peers is None else [x for x in shape.peers if x in peers or x == "tessera-default"]
        for peer in todo:
            try:
                if peer == "tessera-default":
                    dirs[peer] = Path(shape.model_dir)
                elif peer.startswith("tessera-"):
                    variant = peer.split("-", 1)[1]
                    if variant != "fp32" and not has_int4:
                        res[peer] = {"skipped": "`tessera export --quant int4` does not exist in this tree yet"}
                        continue
                    dirs[peer] = art.tessera(variant)
                elif peer == "optimum":
                    dirs[peer] = art.optimum()
                elif peer.startswith("genai-"):
                    dirs[peer] = art.genai(peer.split("-", 1)[1])
                elif peer == "torch":
                    dirs[peer] = Path()
            except Exception as e:  # one peer failing to build must not cost the others
                res[peer] = {"error": f"build failed: {str(e).strip().splitlines()[0][:300]}"}
                print(f"  {peer}: {res[peer]['error']}\n{e}")
        plans.append((shape, art, todo, dirs, res))
    if args.build_only:
        for shape, art, todo, dirs, res in plans:
            print(f"[{shape.name}] " + ", ".join(f"{k}: {v}" for k, v in {**{p: str(d) for p, d in dirs.items()},
                                                                          **res}.items()))
        return 0

    # 2. bandwidth, then every peer, then bandwidth again
    bw_job = {"threads": args.threads, "mbytes": 400, "ms": sorted(set([1] + batches))}
    bandwidth = {"runs": []}
    print("bandwidth ...")
    bandwidth["runs"].append(runner.worker("bandwidth", bw_job, "bandwidth-1"))
    print("  " + ", ".join(f"M={m}: {v['gbps']:.1f} GB/s" for m, v in bandwidth["runs"][-1]["matmul"].items())
          + f", numpy {bandwidth['runs'][-1]['numpy_sum_gbps']:.1f} GB/s")
    import peers_llama

    # Rounds go over the whole peer list (a fresh process per peer and round), so that a change of
    # machine load during the run spreads over every peer instead of landing on one.
    raw: dict[tuple[int, str], list[dict]] = {}
    for rnd in range(args.rounds):
        for si, (shape, art, todo, dirs, res) in enumerate(plans):
            common = {"threads": args.threads, "batches": batches, "top_k": args.top_k, "warmup": args.warmup,
                      "rounds": 1, "tokens": shape.tokens, "max_s": args.max_run_s}
            prompt_id = shape.vocab + peers_llama.PROMPT_OFFSET
            for peer in todo:
                if peer in res:  # skipped, failed to build, or failed in an earlier round
                    continue
                tag = f"{shape.key}.run-{peer}.r{rnd + 1}"
                print(f"[{shape.name}] round {rnd + 1}/{args.rounds}: {peer} ...", flush=True)
                t = time.perf_counter()
                try:
                    r = run_peer(runner, peer, shape, dirs.get(peer), common, prompt_id, args, tag)
                except Exception as e:
                    res[peer] = {"error": str(e).strip().splitlines()[0][:300]}
                    print(f"  {peer} FAILED: {e}")
                    continue
                stats = {rows: summarize(runs) for rows, runs in r["runs"].items()}
                print("  " + "; ".join(f"batch {rows}: decode {st['median_ms']:.1f} ms (p90 {st['p90_ms']:.1f}), "
                                       f"prefill {st['prefill_ms']:.1f} ms, image {st['whole_s']:.2f} s"
                                       f"{' (est.)' if st['estimated'] else ''}"
                                       for rows, st in stats.items()) + f"  [{time.perf_counter() - t:.0f}s]",
                      flush=True)
                raw.setdefault((si, peer), []).append(r)
    for (si, peer), results in raw.items():
        res = plans[si][4]
        if peer not in res:
            res[peer] = merge_rounds(results, args.aggregate)
    print("bandwidth (again) ...")
    try:
        bandwidth["runs"].append(runner.worker("bandwidth", bw_job, "bandwidth-2"))
    except Exception as e:
        state["notes"].append(f"second bandwidth measurement failed: {e}")
    state["bandwidth"] = bandwidth

    if args.profile:
        shape, art, todo, dirs, res = plans[0]
        graphs = [(peer, "tessera" if peer.startswith("tessera") else "genai", str(dirs[peer]))
                  for peer in ("tessera-fp32", "genai-fp32", "tessera-int4", "tessera-int4-acc4", "genai-int4")
                  if peer in dirs]
        job = {"threads": args.threads, "top_k": args.top_k, "tokens": args.profile_tokens, "passes": 2,
               "prompt_id": shape.vocab + peers_llama.PROMPT_OFFSET, "out_dir": str(cache / "profiles"),
               "graphs": graphs}
        print("profile ...", flush=True)
        try:
            prof = runner.worker("profile", job, "profile")
            prof = {k: v for k, v in prof.items() if isinstance(v, dict) and "op_us" in v}
            state["profile"] = profile_table(prof)
            print(state["profile"])
        except Exception as e:
            state["notes"].append(f"profiling failed: {e}")

    for shape, art, todo, dirs, res in plans:
        state["shapes"].append({"shape": asdict(shape), "peers": res, "build_s": art.build_s})
    if state["load_start"][0] > 1.6:
        state["notes"].append(f"the machine was loaded when the run started (1-min load {state['load_start'][0]:.2f} "
                              f"on {os.cpu_count()} cores): absolute times are pessimistic, ratios less affected.")
    state["notes"].append("Optimum: the torch side (sampling, cache bookkeeping) runs on "
                          f"{args.optimum_torch_threads} torch thread(s): with 2 OpenMP threads spinning next to "
                          "onnxruntime's 2 intra-op threads it ran ~4.6x slower on this 2-core machine.")
    state["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    state["load_end"] = os.getloadavg()
    state["elapsed_s"] = time.perf_counter() - t_start
    report = build_report(state)
    print()
    print(report)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(report)
    state["out"] = str(out_path)
    state_file(cache, args.quick).write_text(json.dumps(state, indent=1, default=str))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
