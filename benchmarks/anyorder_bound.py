"""How fast any-order decoding can get on this machine: measured speed-ups beside the best any
implementation of the design could reach, all measured in one run.

    python benchmarks/anyorder_bound.py                  # -> benchmarks/results/anyorder_bound.md
    python benchmarks/anyorder_bound.py --skip-gpt-b     # the digit models only

An any-order step feeds the previous step's codes (context) and this step's position queries, so an
image costs about twice the token evaluations of sequential decoding (each cell once as a query,
once as context) in far fewer calls. Where a call's cost grows with the tokens it carries (compute-
bound), fewer calls cannot buy back the doubled work. For each setting this script measures:

* the cost of one transformer call against the tokens it carries (same graph, same rows);
* time per image, sequential vs any-order, interleaved (the machine is shared);
* two floors for an any-order image: its token evaluations (counted by the runner) times the cheapest cost per token-row
  this graph reached in any call (kernel floor), and its weight FLOPs over this CPU's matmul peak
  measured in the same run (hardware floor: fp32 peak for fp32, the int8 peak for int4, whose
  weights could at best be multiplied at int8 rates). Both leave out attention, Python and the
  per-call overhead, so they are optimistic;
* the resulting bounds on the speed-up: sequential's measured time over each floor, beside the
  calls ratio (the bound where a call costs the same whatever it carries, as on an accelerator)
  and the bound of a design that would feed each cell once.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from tessera.bench.cache import GPT_B_RANDOM, cached_export
from tessera.bench.env import run_line
from tessera.bench.report import markdown_table
from tessera.bench.timing import interleaved, same_graph_sequential

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

COMMAND = "python benchmarks/anyorder_bound.py"
EXPORTS = HERE / ".cache" / "exports"
TARGETS = {"digits": 4.0, "GPT-B": 5.0}  # issue 12: time per image, any-order vs sequential


def weight_flops_per_token_row(pipe) -> float:
    """2 x the multiply-adds of every weight matrix one token row goes through (blocks and head;
    the embedding is a lookup, attention over the cache is left out), from the model's manifest (the
    FFN width follows from its `export` section, read as re-export reads it)."""
    from tessera.export.config import configs_from_spec

    t = pipe.manifest.spec.transformer
    d, hd = t.dim, t.head_dim
    ffn_dim = configs_from_spec(pipe.manifest.spec)[0].ffn_dim
    per_layer = d * hd * (t.n_head + 2 * t.n_kv_head) + t.n_head * hd * d + 3 * d * ffn_dim
    return 2.0 * (t.n_layer * per_layer + d * t.vocab_size)


def call_costs(pipe, rows: int, sizes, past: int, repeats: int) -> dict[int, float]:
    """Fastest of `repeats` calls of `s` tokens per row over a cached past of `past` tokens, seconds per s
    (the least time a call took: other work on a shared machine only adds to it, so the floors built
    from it stay floors)."""
    out = {}
    with pipe._runners.borrow() as runner:
        runner.start(rows, past + max(sizes))
        runner(np.full((rows, past), 5, np.int64), np.tile(np.arange(1, past + 1), (rows, 1)),
               np.tril(np.ones((past, past), bool))[None].repeat(rows, 0))
        for s in sizes:
            ids, pos = np.full((rows, s), 5, np.int64), np.tile(np.arange(past + 1, past + 1 + s), (rows, 1))
            mask = np.ones((rows, s, past + s), bool)
            times = []
            for _ in range(repeats + 2):
                t0 = time.perf_counter()
                runner(ids, pos, mask)
                times.append(time.perf_counter() - t0)
                runner.truncate(past)
            out[s] = float(np.min(times[2:]))
    return out


def measure(name: str, target: float, pipes: dict[int, tuple], batch: int, steps: int, guidance: float, sizes,
            past: int, repeats: int, run_kw: dict) -> dict:
    """One setting at every thread count of `pipes` ({threads: (sequential, any-order)}): call costs,
    times (all decoders and thread counts interleaved), kernel floors, and bounds against the best
    sequential time, so neither decoder is held to a thread count that does not suit it. The
    hardware floors wait for the last peak measurement (`add_hardware_bounds`)."""
    rows_per_image = 2 if guidance > 1.0 else 1
    runs = {}
    for t, (seq, ao) in pipes.items():
        runs[("sequential", t)] = lambda r, p=seq: p.run([r % 10] * batch, seed=100 * r, guidance_scale=guidance,
                                                         decode_images=False, **run_kw).stats["token_rows"]
        runs[("any-order", t)] = lambda r, p=ao: p.run([r % 10] * batch, seed=100 * r, guidance_scale=guidance,
                                                       steps=steps, decode_images=False, **run_kw).stats["token_rows"]
    results = interleaved(runs, repeats)
    timed = {k: float(np.median(times)) / batch for k, (times, _) in results.items()}
    fastest_seq = min(min(results[("sequential", t)][0]) for t in pipes) / batch  # the bounds' numerator
    # token evaluations per image, as the runner counted them (GenerationResult.stats)
    t0 = next(iter(pipes))
    e_ao, e_one = (results[(k, t0)][1] // batch for k in ("any-order", "sequential"))
    per_thread = {}
    for t, (_, ao) in pipes.items():
        costs = call_costs(ao, rows_per_image * batch, sizes, past, max(9, repeats))
        per_row = {s: c / (rows_per_image * batch * s) for s, c in costs.items()}
        # a whole any-order image is a measurement of the per-row cost too: the floor never exceeds it
        cheapest = min(min(per_row.values()), min(results[("any-order", t)][0]) / batch / e_ao)
        per_thread[t] = dict(t_seq=timed[("sequential", t)], t_ao=timed[("any-order", t)], cheapest=cheapest,
                             per_row_ms={s: 1e3 * v for s, v in per_row.items()},
                             kernel_floor=e_ao * cheapest, once_floor=e_one * cheapest)
    best = lambda key: min((v[key], t) for t, v in per_thread.items())  # noqa: E731
    (t_seq, seq_threads), (t_ao, ao_threads) = best("t_seq"), best("t_ao")
    cells = pipes[t0][1].grid[0] * pipes[t0][1].grid[1]
    row = dict(name=name, batch=batch, steps=steps, calls_ratio=cells / steps, t_seq=t_seq, seq_threads=seq_threads,
               t_ao=t_ao, ao_threads=ao_threads, measured=t_seq / t_ao, token_rows_seq=e_one, token_rows_ao=e_ao,
               flops=weight_flops_per_token_row(pipes[t0][1]), per_thread=per_thread, fastest_seq=fastest_seq,
               kernel_bound=fastest_seq / best("kernel_floor")[0], once_bound=fastest_seq / best("once_floor")[0],
               target=target)
    print({k: v for k, v in row.items() if k != "per_thread"}, flush=True)
    return row


def add_hardware_bounds(rows: list[dict], fp32: dict[int, float], int8: dict[int, float]) -> None:
    """Each row's hardware floors (every weight FLOP at the matmul peak of its thread count: the int8
    peak for int4) and its hardware bound, at the peaks measured on both sides of the timings."""
    for row in rows:
        peaks = int8 if "int4" in row["name"] else fp32
        for t, v in row["per_thread"].items():
            v["peak"] = peaks[t]
            v["hw_floor"] = row["token_rows_ao"] * row["flops"] / (peaks[t] * 1e9)
        row["hw_bound"] = row["fastest_seq"] / min(v["hw_floor"] for v in row["per_thread"].values())


def bound_table(rows: list[dict]) -> list[str]:
    return markdown_table(
        ["setting", "calls ratio", "sequential s / image (threads)", "any-order s / image (threads)",
         "measured speed-up", "bound: kernel floor", "bound: hardware floor", "kernel bound if each cell were fed once",
         "target"],
        [[f"{r['name']}, batch {r['batch']}, {r['steps']} steps", f"{r['calls_ratio']:.1f}x",
          f"{r['t_seq']:.4f} ({r['seq_threads']})", f"{r['t_ao']:.4f} ({r['ao_threads']})", f"{r['measured']:.2f}x",
          f"{r['kernel_bound']:.2f}x", f"{r['hw_bound']:.2f}x", f"{r['once_bound']:.2f}x", f"{r['target']:.0f}x"]
         for r in rows])


def detail_table(rows: list[dict]) -> list[str]:
    return markdown_table(
        ["setting", "threads", "sequential s / image", "any-order s / image", "token-rows seq / any-order",
         "cheapest ms / token-row", "MFLOP / token-row", "matmul peak (fp32 GFLOP/s, int8 GOP/s)", "kernel floor s",
         "hardware floor s"],
        [[f"{r['name']}, batch {r['batch']}", str(t), f"{v['t_seq']:.4f}", f"{v['t_ao']:.4f}",
          f"{r['token_rows_seq']} / {r['token_rows_ao']}", f"{1e3 * v['cheapest']:.4f}", f"{r['flops'] / 1e6:.1f}",
          f"{v['peak']:.0f}", f"{v['kernel_floor']:.4f}", f"{v['hw_floor']:.4f}"]
         for r in rows for t, v in r["per_thread"].items()])


def cost_table(rows: list[dict]) -> list[str]:
    return markdown_table(["setting (threads, rows per call)", "ms per token-row, by tokens per row in the call"],
                          [[f"{r['name']}, batch {r['batch']} ({t}, {2 * r['batch']})",
                            " · ".join(f"{s}: {ms:.4f}" for s, ms in sorted(v["per_row_ms"].items()))]
                           for r in rows for t, v in r["per_thread"].items()])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="onnxruntime CPU threads to try")
    ap.add_argument("--repeats", type=int, default=20, help="interleaved repeats for the digit timings")
    ap.add_argument("--gpt-b-repeats", type=int, default=3)
    ap.add_argument("--skip-gpt-b", action="store_true")
    ap.add_argument("--out", help="default benchmarks/results/anyorder_bound.md")
    args = ap.parse_args(argv)

    from pipeline_memory import matmul_peaks

    from tessera.runtime import Pipeline

    # numpy's BLAS ignores the thread count: onnxruntime's products only. A peak is the best of a few
    # products before and after the timings (other work on a shared machine only ever lowers it).
    fp32, int8 = {}, {}

    def measure_peaks() -> None:
        for t in args.threads:
            p = matmul_peaks(t)
            fp32[t], int8[t] = max(fp32.get(t, 0.0), p["ort_fp32_gflops"]), max(int8.get(t, 0.0), p["ort_int8_gops"])
        print("peaks", fp32, int8, flush=True)

    measure_peaks()
    anyorder_dir = ROOT / "models" / "anyorder"
    pipes = {t: (Pipeline.load(providers="cpu", threads=t), Pipeline.load(anyorder_dir, providers="cpu", threads=t))
             for t in args.threads}
    rows = [measure("digits fp32", TARGETS["digits"], pipes, batch, 8, 3.0, (1, 2, 4, 9, 18, 36), 20,
                    max(3, args.repeats // batch), {}) for batch in (1, 10)]
    del pipes
    for precision in () if args.skip_gpt_b else ("fp32", "int4"):
        path = cached_export(EXPORTS, f"gpt-b-anyorder-{precision}", [
            *GPT_B_RANDOM, "--gpt-set", "order=any", "--target-onnxruntime", "1.32", "--quant", precision])
        pipes = {t: (same_graph_sequential(path, providers="cpu", threads=t, verify="none"),
                     Pipeline.load(path, providers="cpu", threads=t, verify="none")) for t in args.threads}
        rows.append(measure(f"GPT-B {precision}", TARGETS["GPT-B"], pipes, 1, 24, 4.0, (1, 8, 16, 32, 64), 128,
                            args.gpt_b_repeats, {"top_k": 2000}))
        del pipes

    measure_peaks()
    add_hardware_bounds(rows, fp32, int8)

    lines = ["# Any-order decoding: measured speed-up against the bounds of this CPU", "",
             run_line(COMMAND + (" --skip-gpt-b" if args.skip_gpt_b else ""), max(args.threads)), "",
             f"onnxruntime threads tried: {args.threads}; each decoder is timed at each, all interleaved, and "
             "compared at its best (a single-token call of the digit model is slower on two threads than on one). "
             "Matmul peaks per thread count: the best of a few 2048^3 onnxruntime products (fp32 MatMul, int8 "
             "MatMulInteger) before and after the timings. Digits: the shipped raster default (sequential) and models/anyorder, default "
             "guidance 3.0. GPT-B: LlamaGen GPT-B shape, random weights, any-order mode, both decoders on the same "
             "graph, guidance 4.0, top-k 2000. Speed-up = time per image, best sequential over best any-order, at "
             "the same batch (medians over the repeats); bounds = the fastest sequential image of any repeat and "
             "thread count over the lowest floor (both are least times: other work on a shared machine only adds "
             "to them).", "",
             *bound_table(rows), "",
             "Reading: the kernel floor is what this graph's onnxruntime kernels need for an any-order image's "
             "token evaluations, were every call as cheap per token-row as the cheapest measured (the largest call, "
             "or a whole any-order image when that was cheaper) and Python, "
             "scheduling and sampling free; a kernel bound below the target means no decoding loop over these "
             "kernels reaches it here. The hardware floor puts every weight FLOP at the matmul peak measured in "
             "this run (int4 at the int8 peak): a kernel-independent estimate, as noisy as that peak. The calls ratio is the bound on a device where "
             "a call costs the same whatever it carries (latency-bound decoding, as on a GPU).", "",
             "## Where the floors come from", "",
             *detail_table(rows), "",
             "## Cost of one call per token-row (ms), against the tokens each row carries", "",
             "Fastest of repeated calls over a cached past (20 tokens for digits, 128 for GPT-B); a sequential "
             "step is 1 token, an any-order step about 2 x cells / steps.", "",
             *cost_table(rows)]
    out = Path(args.out) if args.out else HERE / "results" / "anyorder_bound.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
