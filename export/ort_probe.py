"""Run model directories on whatever onnxruntime this interpreter has; write what came out.

The support matrix (export/ort_matrix.py) runs this module with each tested onnxruntime version's
interpreter: `python -m tessera.export.ort_probe OUT.npz DIR [DIR ...]`. It imports the runtime
only (never torch), so it runs in an environment that holds nothing but an old onnxruntime.
`ort_matrix.check_provider` calls `probe` in-process on another execution provider (the GPU check).
For each directory it records the load error, or the logits of a fixed call scenario (prefill,
decode steps, multi-token calls over a past at non-contiguous and out-of-order positions, through the
runtime's own KV-cache runner), the same calls made one token per call,
generated token grids (sampled with guidance, greedy, parallel) and their decoded images.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

SCENARIO_ROWS = 2
DECODE_STEPS = 4
LABELS = (1, 2)
SAMPLED = {"guidance_scale": 2.0, "top_k": 16, "temperature": 1.0, "seed": 0}


def scenario(vocab_size: int, class_token_offset: int, null_class_id: int, grid: tuple[int, int],
             rope_grid: int) -> list[dict]:
    """The calls of the logits check, in order: the class token and a known prefix that crosses a
    row, single-token decode steps, then three queries at non-contiguous cells over that past
    with one past entry hidden, then three queries per row at cells out of raster order (each row its own)."""
    rng = np.random.default_rng(0)
    h, w = grid
    r = SCENARIO_ROWS
    cell_pos = lambda c: 1 + (c // w) * rope_grid + c % w  # noqa: E731 (the manifest's layout)
    known = min(w + 2, h * w - DECODE_STEPS - 1)  # a prefix that crosses a row: non-contiguous positions
    ids = np.concatenate([[[class_token_offset + LABELS[0]], [class_token_offset + null_class_id]],
                          rng.integers(0, vocab_size, (r, known))], axis=1).astype(np.int64)
    pos = np.concatenate([[0], cell_pos(np.arange(known))]).astype(np.int64)
    calls = [{"ids": ids, "pos": np.broadcast_to(pos, (r, known + 1)).copy(),
              "mask": np.broadcast_to(np.tril(np.ones((known + 1, known + 1), bool)), (r, known + 1, known + 1)).copy()}]
    for j in range(known, known + DECODE_STEPS):
        calls.append({"ids": rng.integers(0, vocab_size, (r, 1)).astype(np.int64),
                      "pos": np.full((r, 1), cell_pos(j), np.int64), "mask": np.ones((r, 1, j + 2), bool)})
    first = known + DECODE_STEPS
    cells = np.minimum(np.array([first, first + 3, first + w]), h * w - 1)
    s, past = len(cells), first + 1
    mask = np.ones((r, s, past + s), bool)
    mask[:, :, past:] = cells[None, :, None] >= cells[None, None, :]
    mask[0, 0, 2] = False
    calls.append({"ids": rng.integers(0, vocab_size, (r, s)).astype(np.int64),
                  "pos": np.broadcast_to(cell_pos(cells), (r, s)).astype(np.int64).copy(), "mask": mask})
    # queries out of raster order, as the any-order decoder sends them: each row its own cells, last first
    past += s
    cells = np.stack([np.minimum(np.array([h * w - 1, 2, w + 1]), h * w - 1),
                      np.minimum(np.array([w - 1, h * w - 2, 1]), h * w - 1)])[:r]
    mask = np.ones((r, s, past + s), bool)
    mask[:, :, past:] = np.tril(np.ones((s, s), bool))
    calls.append({"ids": rng.integers(0, vocab_size, (r, s)).astype(np.int64), "pos": cell_pos(cells).astype(np.int64),
                  "mask": mask})
    return calls


def probe(model_dir: Path, providers: str = "cpu") -> dict:
    """The arrays listed above for one directory on `providers`, and under "graph_providers" the
    provider onnxruntime really ran each graph on (it may fall back to the CPU without failing)."""
    from tessera.runtime import Pipeline

    pipe = Pipeline.load(model_dir, providers=providers)
    layout = pipe.layout
    out: dict = {"graph_providers": dict(pipe.graph_providers)}
    runner = pipe.transformer
    calls = scenario(layout.vocab_size, layout.class_token_offset, layout.null_class_id, pipe.grid,
                     layout.rope_grid)
    runner.start(SCENARIO_ROWS, sum(c["ids"].shape[1] for c in calls))
    for k, c in enumerate(calls):
        out[f"logits_{k}"] = np.array(runner(c["ids"], c["pos"], c["mask"]), np.float32)
    # The same calls, one token per call: a multi-token call must give exactly these (queries are causal
    # in call order, the mask can only hide more).
    runner.start(SCENARIO_ROWS, sum(c["ids"].shape[1] for c in calls))
    for k, c in enumerate(calls):
        past, parts = runner.length, []
        for j in range(c["ids"].shape[1]):
            one = np.s_[:, j:j + 1]
            parts.append(np.array(runner(np.ascontiguousarray(c["ids"][one]), np.ascontiguousarray(c["pos"][one]),
                                         np.ascontiguousarray(c["mask"][:, j:j + 1, :past + j + 1])), np.float32))
        out[f"logits_one_by_one_{k}"] = np.concatenate(parts, axis=1)
    runner.release()
    out["tokens_sampled"] = pipe.generate_tokens(list(LABELS), **SAMPLED)
    out["tokens_greedy"] = pipe.generate_tokens(list(LABELS), guidance_scale=1.0, temperature=0.0)
    out["tokens_parallel"] = pipe.generate_tokens(list(LABELS), parallel_window=2, **SAMPLED)
    out["images"] = pipe.tokenizer.decode(out["tokens_sampled"]).astype(np.float32)
    return out


def main(argv: list[str]) -> int:
    import onnxruntime

    target, dirs = Path(argv[0]), argv[1:]
    arrays, status = {}, {"onnxruntime": onnxruntime.__version__, "dirs": {}, "providers": {}}
    for i, d in enumerate(dirs):
        try:
            result = probe(Path(d))
            status["providers"][d] = result.pop("graph_providers")
            for key, value in result.items():
                arrays[f"{i}/{key}"] = value
            status["dirs"][d] = "ok"
        except Exception as e:  # recorded, not raised: the matrix shows every failure
            status["dirs"][d] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
    np.savez(target, status=np.array(json.dumps(status)), **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
