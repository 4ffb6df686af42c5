"""docs/model-directory.md is the contract a host in another language is written from: every manifest
field the runtime reads or the exporter writes is in it, and its worked examples are what the runtime
computes (so the document cannot drift from the code without a failing test)."""
from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from tessera.runtime import spec as spec_module
from tessera.runtime.tokenizer import to_uint8
from tessera.runtime.manifest import load_manifest
from tessera.runtime.sampling import SamplingConfig, sample
from tessera.runtime.schedule import cosine_counts
from tessera.runtime.self_test import probe_call

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "model-directory.md").read_text()
MODELS = [ROOT / "models" / "default", ROOT / "models" / "anyorder"]
FORMAT1 = ROOT / "tests" / "data" / "format1"  # the shipped models' manifests as format 1 wrote them
INFORMATIONAL = ("exported_by", "parity")  # sections the document names as informational, not field by field
LEAVES = ("graphs.transformer.self_test", "weights", "export.transformer", "export.tokenizer")


def documented(key: str) -> bool:
    return f"`{key}`" in DOC


def manifest_keys(data: dict, prefix: str = "") -> set[str]:
    """Dotted keys of a manifest; graph names become `<name>` where the document uses the pattern."""
    out = set()
    for k, v in data.items():
        if not prefix and k in INFORMATIONAL + ("files",):
            out.add(k)
            continue
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and key not in LEAVES:
            out |= manifest_keys(v, key)
        else:
            out.add(key)
    return out


def doc_form(key: str) -> list[str]:
    """The spellings under which the document may list `key` (a graph field by its own name or `<name>`)."""
    m = re.match(r"graphs\.([a-z_]+)\.(.+)", key)
    forms = [key]
    if m:
        forms.append(f"graphs.<name>.{m.group(2)}")
    return forms


def section(title: str) -> str:
    return DOC.split(title)[1].split("\n## ")[0].split("\n### ")[0]


@pytest.mark.parametrize("model", MODELS + [ROOT / "models" / "arpg"], ids=lambda p: p.name)
def test_every_field_of_a_shipped_manifest_is_documented(model):
    data = json.loads((model / "tessera.json").read_text())
    missing = sorted(k for k in manifest_keys(data) if not any(documented(f) for f in doc_form(k)))
    missing += [f"graphs.transformer.self_test.{k}" for k in data["graphs"]["transformer"]["self_test"]
                if not documented(f"graphs.transformer.self_test.{k}")]
    export = section("### `files`, `weights`, `export`")  # the exporter's fields, named in its paragraph
    missing += [f"export.{part}.{k}" for part in ("transformer", "tokenizer") for k in data["export"][part]
                if f"`{k}`" not in export]
    assert not missing, f"fields missing from docs/model-directory.md: {missing}"


@pytest.mark.parametrize("name", ["default", "anyorder"])
def test_every_format_1_field_has_a_documented_fate(name):
    """A host reading format 1 learns from section 9 (or section 2) what each of its fields becomes."""
    data = json.loads((FORMAT1 / f"{name}.json").read_text())
    versions = section("## 9. Versions of this contract")
    export = section("### `files`, `weights`, `export`")
    keys = manifest_keys(data) | {f"graphs.transformer.self_test.{k}" for k in data["graphs"]["transformer"]["self_test"]}
    missing = sorted(k for k in keys if not any(f"`{f}`" in versions or documented(f) for f in doc_form(k))
                     and not (k.split(".")[0] in ("transformer", "tokenizer") and f"`{k.split('.')[-1]}`" in export))
    assert not missing, f"format-1 fields whose fate docs/model-directory.md does not say: {missing}"


def test_every_field_of_the_typed_manifest_is_documented():
    sections = {"transformer": spec_module.TransformerSpec, "tokenizer": spec_module.TokenizerSpec,
                "image": spec_module.ImageSpec, "classes": spec_module.ClassesSpec,
                "graphs.transformer.io": spec_module.GraphIO, "graphs.transformer.self_test": spec_module.SelfTestSpec,
                "generation_defaults": spec_module.GenerationDefaults}
    missing = [f"{name}.{f.name}" for name, cls in sections.items() for f in fields(cls)
               if not documented(f"{name}.{f.name}")]
    transformer_only = ("io", "self_test", "kind", "kv_cache", "rotates_by_index")
    missing += [f"graphs.<name>.{f.name}" for f in fields(spec_module.GraphSpec)
                if f.name not in ("name", *transformer_only) and not documented(f"graphs.<name>.{f.name}")]
    missing += [f"graphs.transformer.{k}" for k in ("kind", "kv_cache", "multi_query")
                if not documented(f"graphs.transformer.{k}")]
    assert not missing, f"ModelSpec fields missing from docs/model-directory.md: {missing}"


def test_the_documented_choices_are_the_runtimes():
    assert f"`format_version` | int | `{spec_module.FORMAT_VERSION}`" in DOC
    for family in spec_module.FAMILIES:
        assert f'`"{family}"`' in DOC
    for value in spec_module.GRAPH_KINDS + spec_module.KV_CACHE_MODES + spec_module.LEGACY_MULTI_QUERY:
        assert f'`"{value}"`' in DOC or f"`{value}`" in DOC, value


def test_the_self_test_worked_example_is_the_probe():
    manifest = load_manifest(ROOT / "models" / "default", verify="none")
    ids, positions, mask = probe_call(manifest.layout, manifest.grid)
    assert f"`ids = {ids.tolist()}`" in DOC
    assert f"positions `{positions[0].tolist()}`" in DOC
    assert mask[0].tolist() == np.tril(np.ones((5, 5), bool)).tolist()
    recorded = manifest.spec.graph("transformer").self_test  # what a host replays
    assert [list(r) for r in recorded.input_ids] == ids.tolist()
    assert [list(r) for r in recorded.position_ids] == positions.tolist()


def test_the_documented_layout_rules_are_the_runtimes():
    """Section 5's ids and table sizes, from the transformer fields alone, for both shipped families."""
    for model in MODELS:
        spec = load_manifest(model, verify="none").spec
        t, layout = spec.transformer, spec.layout
        assert layout.class_ids(3) == t.vocab_size + 3 and layout.null_class_id == t.num_classes
        assert layout.embedding_rows == t.vocab_size + t.num_classes + 1 + (spec.family == "anyorder-c2i")
        assert layout.query_token_id == (t.vocab_size + t.num_classes + 1 if spec.family == "anyorder-c2i" else None)
        assert layout.positions == 1 + t.rope_grid ** 2 and layout.cell_position(2, 3) == 1 + 2 * t.rope_grid + 3
        assert spec.image_size == (t.grid * spec.tokenizer.downsample,) * 2


def test_the_seed_stream_example_is_numpys():
    first = np.random.default_rng(0).random(3)
    assert ", ".join(repr(float(v)) for v in first) in " ".join(DOC.split())


def test_the_image_rule_examples_are_the_runtimes():
    pairs = re.findall(r"`(-?[0-9.]+) -> (\d+)`", DOC.split("## 8. Images")[1])
    assert len(pairs) >= 5
    x = np.array([float(a) for a, _ in pairs], np.float32).reshape(1, 1, 1, -1)
    assert to_uint8(x).ravel().tolist() == [int(b) for _, b in pairs]


def test_the_cosine_counts_example():
    assert ", ".join(map(str, cosine_counts(49, 8))) in DOC


def test_the_sampling_rule_as_written_gives_the_runtimes_tokens():
    """Section 7.4 implemented from the text alone, against `sample`, over rows with ties and cuts."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(64, 40)).astype(np.float32)
    logits[::4, :6] = logits[::4, :1]  # ties at the top, and at the k-th value for some rows
    for cfg in (SamplingConfig(1.0, 0, 1.0), SamplingConfig(0.7, 5, 1.0), SamplingConfig(1.3, 0, 0.6),
                SamplingConfig(1.0, 8, 0.8), SamplingConfig(0.0, 0, 1.0)):
        u = np.random.default_rng(11).random(64)
        want = sample(logits, cfg, np.random.default_rng(11))
        assert [as_documented(row, cfg, ui) for row, ui in zip(logits, u)] == want.tolist(), cfg


def as_documented(g: np.ndarray, cfg: SamplingConfig, u: float) -> int:
    if cfg.temperature == 0:
        return int(np.flatnonzero(g == g.max())[0])  # lowest id among the largest
    v = g.astype(np.float64) * (1 / max(cfg.temperature, 1e-5))
    if 0 < cfg.top_k < g.size:
        kth = np.sort(g)[::-1][cfg.top_k - 1]
        v[g < kth] = -np.inf
    if cfg.top_p < 1:
        order = sorted(range(g.size), key=lambda i: (-v[i], i))
        ranked = v[order]
        cum = np.cumsum(np.exp(ranked - ranked[0]))
        cum /= cum[-1]
        for rank in range(1, g.size):
            if cum[rank - 1] > cfg.top_p:
                v[order[rank]] = -np.inf
    w = np.exp(v - v.max())
    total = np.cumsum(w)
    return int(next(i for i in range(g.size) if w[i] > 0 and total[i] >= u * total[-1]))


def documented_locality_plan(h: int, w: int, steps: int, seed: int) -> list[list[int]]:
    """Section 7.6's "locality" order, implemented from the text alone."""
    import math

    rng = np.random.default_rng([seed, 0x5C4ED])
    m = h * w
    sizes, done = [], 0
    for t in range(1, steps + 1):
        target = m - math.floor(m * math.cos(math.pi / 2 * t / steps) + 1e-9)
        target = min(max(target, done + 1), m - (steps - t))
        sizes.append(target - done)
        done = target
    decided: list[int] = []
    groups = []
    for c in sizes:
        cand = [k for k in range(m) if k not in decided]
        dist = lambda a, b: math.sqrt((a // w - b // w) ** 2 + (a % w - b % w) ** 2)  # noqa: E731
        near = [min((dist(k, d) for d in decided), default=0.0) for k in cand]
        far = [math.inf] * len(cand)
        ties = rng.random(c * len(cand)).reshape(c, len(cand)) * 1e-3
        picks = []
        for p in range(c):
            score = [min(far[j], 1e6) * 1000 - near[j] + ties[p][j] for j in range(len(cand))]
            j = max(range(len(cand)), key=lambda i: (score[i], -i))
            picks.append(cand[j])
            far = [min(far[i], dist(cand[i], cand[j])) for i in range(len(cand))]
            far[j] = -math.inf
        decided += picks
        groups.append(picks)
    return groups


@pytest.mark.parametrize("h, w, steps, seed", [(7, 7, 8, 0), (7, 7, 8, 5), (4, 6, 5, 11), (3, 3, 9, 2)])
def test_the_locality_order_as_written_is_the_runtimes(h, w, steps, seed):
    from tessera.runtime.schedule import image_plans

    got = [g[0].tolist() for g in image_plans((h, w), steps, "locality", [seed])]
    assert got == documented_locality_plan(h, w, steps, seed)


def test_the_documented_arpg_layout_is_the_runtimes():
    """Section 5's ARPG table and 2's KV layers, on the shipped ARPG digit model."""
    spec = load_manifest(ROOT / "models" / "arpg", verify="none").spec
    t, layout = spec.transformer, spec.layout
    assert layout.mask_token_id == t.vocab_size and layout.class_ids(3) == t.vocab_size + 1 + 3
    assert layout.class_ids(layout.null_class_id) == t.vocab_size + 1 + t.num_classes
    assert layout.embedding_rows == t.vocab_size + t.num_classes + 3 and spec.kv_layers == t.n_layer // 2 + 1
    assert spec.io.inputs(spec.kv_layers)[:4] == ["input_ids", "position_ids", "query_positions", "attention_mask"]
    assert "`4, 4, 4, 5, 5, 5, 7, 15`" in DOC and "`1, 3, 5, 6, 7, 9, 9, 9`" in DOC
