"""Expected values for the JavaScript host's tests (js/test/*.test.js), made by the Python runtime.

Run with the project's venv: `.venv/bin/python js/test/make_fixtures.py` writes
js/test/fixtures/python.json; tests/test_js_fixtures.py regenerates it in memory and fails when the
committed file differs, so the JS tests always compare against what Python does today.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from tessera.runtime import schedule
from tessera.runtime.sampling import SamplingConfig, apply_guidance, sample

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "fixtures" / "python.json"
PLAN_WORD = 0x5C4ED


class _Fixed:
    """Stands in for a Generator: `random(n)` returns the given uniforms."""

    def __init__(self, u: np.ndarray):
        self.u = u

    def random(self, n: int) -> np.ndarray:
        assert n == len(self.u)
        return self.u


def rng_cases() -> list[dict]:
    cases = [{"entropy": s, "values": np.random.default_rng(s).random(6).tolist()}
             for s in (0, 1, 7, 42, 123456789, 2**32 + 5, 2**40 + 3)]
    cases += [{"entropy": [s, PLAN_WORD], "values": np.random.default_rng([s, PLAN_WORD]).random(6).tolist()}
              for s in (0, 1, 2, 99)]
    return cases


def sampler_cases() -> list[dict]:
    rng = np.random.default_rng(2024)
    cases = []
    options = [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.8), (1.3, 20, 0.9),
               (1.0, 3, 0.5), (1e-6, 0, 1.0)]
    for t, k, p in options:
        logits = (rng.standard_normal((6, 64)) * 3).astype(np.float32)
        logits[1, 10:14] = logits[1].max()  # ties at the top (greedy and top-k keep them)
        logits[2, :] = np.round(logits[2])  # many ties at the k-th value
        u = rng.random(6)
        u[0] = 0.0
        cfg = SamplingConfig(t, k, p).validate(64)
        cases.append({"temperature": t, "top_k": k, "top_p": p, "logits": logits.tolist(), "u": u.tolist(),
                      "tokens": sample(logits, cfg, _Fixed(u)).tolist()})
    return cases


def guidance_cases() -> list[dict]:
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((4, 32)) * 4).astype(np.float32)
    return [{"logits": x.tolist(), "images": 2, "scale": s, "guided": apply_guidance(x, 2, s).tolist()}
            for s in (3.0, 1.7, 4.25)]


def plan_cases() -> list[dict]:
    cases = []
    for h, w, steps, seed in ((7, 7, 8, 0), (7, 7, 8, 1), (7, 7, 8, 5), (5, 6, 4, 3), (4, 4, 16, 2), (7, 7, 1, 9)):
        groups = schedule.plan(h, w, steps, "locality", np.random.default_rng([seed, PLAN_WORD]))
        cases.append({"height": h, "width": w, "steps": steps, "seed": seed,
                      "sizes": schedule.cosine_counts(h * w, min(steps, h * w)),
                      "groups": [g.tolist() for g in groups]})
    return cases


def token_cases(model_dir: Path = ROOT / "models" / "default", pixels: bool = True) -> dict:
    from tessera.runtime.pipeline import Pipeline

    pipe = Pipeline.load(model_dir, providers="cpu")
    classes = list(range(len(pipe.manifest.spec.class_names)))
    out: dict = {"greedy": [], "sampled": [], "pixels": []}
    for seed in range(10):
        for mode, temperature in (("greedy", 0.0), ("sampled", None)):
            tokens = pipe.generate_tokens(classes, temperature=temperature, seed=[seed] * len(classes))
            out[mode].append({"seed": seed, "tokens": tokens.tolist()})
            if pixels and seed < 2:
                for c, img in enumerate(pipe.decode(tokens[:3])):
                    px = np.asarray(img, dtype=np.uint8)
                    out["pixels"].append({"mode": mode, "seed": seed, "class": c, "shape": list(px.shape),
                                          "sha256": hashlib.sha256(px.tobytes()).hexdigest()})
    # live previews, one frame per token row (runtime/preview.py): the partial images the JS stream draws
    frames: list = []
    pipe.generate([3], seed=4, preview_every="row", preview=lambda step, total, images: frames.append(
        {"step": step, "sha256": hashlib.sha256(np.asarray(images[0].convert("RGB")).tobytes()).hexdigest()}))
    out["previews"] = {"class": 3, "seed": 4, "frames": frames}
    return out


# Directories the JS tests also check (.ci/run exports them for node --test through TESSERA_JS_VARIANTS):
# name -> (source, tessera export options). The shipped any-order model re-exported as it is (the 1.22 form, which
# onnxruntime-node loads), the default model's int4 variant and its portable graph (concat KV cache, batched
# calls). Exports are deterministic: the same bytes every run.
VARIANTS = {
    "anyorder": ("anyorder", []),
    "default-int4": ("default", ["--quant", "int4"]),
    "default-portable": ("default", ["--graph", "portable"]),
}


def export_variants(out: Path) -> None:
    from tessera.cli.main import main

    for name, (source, options) in VARIANTS.items():
        code = main(["export", "--from", str(ROOT / "models" / source), "--out", str(out / name), "-q", *options])
        if code:
            raise SystemExit(f"exporting {name} failed (exit {code})")


def short_hash(tokens: list) -> str:
    """An image's tokens as the JS tests hash them: sha256 of the compact JSON, first 16 hex digits."""
    return hashlib.sha256(json.dumps(tokens, separators=(",", ":")).encode()).hexdigest()[:16]


def variant_cases() -> dict:
    from tessera.runtime.pipeline import Pipeline

    cases = {}
    with tempfile.TemporaryDirectory() as tmp:
        export_variants(Path(tmp))
        for name in VARIANTS:
            out = Path(tmp) / name
            pipe = Pipeline.load(out, providers="cpu")
            case: dict = {"transformer_sha256": hashlib.sha256((out / "transformer.onnx").read_bytes()).hexdigest()}
            for mode, temperature in (("greedy", 0.0), ("sampled", None)):
                case[mode] = [[short_hash(t) for t in pipe.generate_tokens(list(range(10)), temperature=temperature,
                                                                          seed=[seed] * 10).tolist()]
                              for seed in range(10)]
            if name.startswith("anyorder"):
                case["steps"] = [{"classes": [3, 5], "seed": 7, "steps": s,
                                  "tokens": pipe.generate_tokens([3, 5], seed=7, steps=s).tolist()} for s in (1, 4, 49)]
            cases[name] = case
    return cases


def fixtures() -> dict:
    """Everything the JS tests compare against, as one JSON-ready dict."""
    return {"rng": rng_cases(), "sampler": sampler_cases(), "guidance": guidance_cases(), "plans": plan_cases(),
            "model": "models/default", **token_cases(), "variants": variant_cases()}


def dumps(data: dict) -> str:
    return json.dumps(data, separators=(",", ":")) + "\n"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--export-variants"]:  # .ci/run: the directories the JS tests read
        export_variants(Path(sys.argv[2]))
        sys.exit(0)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(dumps(fixtures()))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
