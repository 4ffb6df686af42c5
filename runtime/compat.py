"""Which onnxruntime builds a graph needs: written once at export, checked once at load.

onnxruntime's contrib operators grow inputs from release to release, and a graph that uses a
newer form does not load on an older build ("This is an invalid model. In Node, ...
GroupQueryAttention"). Accelerator flavours of onnxruntime can lag the CPU package by several
releases, so the exporter writes the form of the *target* build and records in the manifest the
oldest onnxruntime that loads each graph (`graphs.<name>.min_onnxruntime`); the runtime compares it
with the installed version before opening anything.

The fused transformer rotates q and k itself (RotaryEmbedding at `position_ids`) before
GroupQueryAttention, so every call, of one token or many, at any positions, is exact on every
form. The forms differ in what one call may hold:

* ``1.22``: GroupQueryAttention with 11 inputs (the mask as `attention_bias`). It loads on every
  build from 1.22 on. Several tokens over a past are refused at batch > 1 ("batch_size must be 1
  when sequence_length > 1 and past context is given"), so the runtime splits such a call, one row
  per run (each row's tokens together) or one token per run (all rows together), whichever makes
  fewer runs; the logits are the whole call's. Decode steps and first calls are one run.
* ``1.32``: adds `query_seqlens`, which lifts that limit: every call is one call.

Versions here are those the support-matrix test (tests/test_ort_matrix.py) installs and runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .errors import InvalidInputError, ModelDirectoryError
from .spec import REEXPORT, GraphSpec
from .versions import release_numbers

OLDEST_TESTED = "1.22"


@dataclass(frozen=True)
class FusedForm:
    """One operator form of the fused transformer graph."""

    min_onnxruntime: str  # the oldest onnxruntime that loads it
    gqa_query_seqlens: bool  # GroupQueryAttention takes `query_seqlens` (input 16): rows batch over a past


FUSED_FORMS = (  # oldest first
    FusedForm("1.22", gqa_query_seqlens=False),
    FusedForm("1.32", gqa_query_seqlens=True),
)


def parse_version(text: str) -> tuple[int, ...]:
    """'1.22.2.post3' -> (1, 22, 2); '1.24.0.dev20250101' -> (1, 24, 0); not a version: an error."""
    parts = release_numbers(text)
    if not parts:
        raise InvalidInputError(f"{text!r} is not an onnxruntime version (expected e.g. 1.22 or 1.31.1)")
    return parts


def fused_form(target_onnxruntime: str) -> FusedForm:
    """The newest fused form that `target_onnxruntime` loads, or an error below the oldest tested."""
    target = parse_version(target_onnxruntime)
    fitting = [f for f in FUSED_FORMS if parse_version(f.min_onnxruntime) <= target]
    if not fitting:
        raise InvalidInputError(
            f"target onnxruntime {target_onnxruntime} is older than the oldest tested build ({OLDEST_TESTED}); "
            f"use --target-onnxruntime {OLDEST_TESTED} or newer, or --graph portable")
    return fitting[-1]


def rows_batch_over_past(graph: GraphSpec) -> bool:
    """Whether one call may hold several tokens over a past for several rows (else it is split):
    the traced graph and the fused 1.32 form may; the fused 1.22 form may not."""
    return graph.kind != "fused" or fused_form(graph.min_onnxruntime).gqa_query_seqlens


def check_loadable(graphs: Iterable[GraphSpec], installed: str, model_name: str) -> None:
    """One line naming the version found, the version needed and the fix, before any session opens
    (each `min_onnxruntime` is a version: the manifest reader checked it); the same for a graph of an
    older tessera that rotates by index."""
    have = parse_version(installed)
    for graph in graphs:
        if graph.rotates_by_index:
            raise ModelDirectoryError(
                f"{model_name}: its transformer graph was exported by an older tessera and rotates the tokens "
                "of a multi-token call by their index, not their position (graphs.transformer.multi_query is "
                f"'one-query-per-call'); re-export it: {REEXPORT} (or from its checkpoints)")
        need = graph.min_onnxruntime
        if have < parse_version(need):
            fix = (f"re-export it for this build: tessera export --from DIR --target-onnxruntime {installed}"
                   if graph.kind == "fused" and have >= parse_version(OLDEST_TESTED)
                   else "re-export it with: tessera export --from DIR --graph portable")
            raise ModelDirectoryError(
                f"{model_name}: its {graph.name} graph needs onnxruntime >= {need}, but {installed} is installed; "
                f"upgrade onnxruntime (or your accelerator's flavour of it), or {fix}")


@dataclass(frozen=True)
class OptimizerBug:
    """A graph optimizer of some onnxruntime builds that breaks loading one kind of our graphs."""

    optimizer: str
    kind: str  # graph kind in the manifest ("portable", "fused") or "" for the tokenizer graphs
    precision: str
    first_bad: str  # oldest build seen failing
    fixed_in: str  # oldest build after first_bad seen working
    seen: str


OPTIMIZER_BUGS = (
    OptimizerBug("SimplifiedLayerNormFusion", "portable", "fp16", "1.24", "1.31",
                 "fails to load with 'Attempting to get index by a name which does not exist: "
                 "InsertedPrecisionFreeCast_...' on 1.24.4 and 1.27.0; 1.22.1 and 1.31.1 load it"),
)


def disabled_optimizers(graph: GraphSpec, installed: str) -> list[str]:
    """Optimizers to switch off for this graph on the installed onnxruntime."""
    have = parse_version(installed)
    return [bug.optimizer for bug in OPTIMIZER_BUGS
            if (graph.kind or "") == bug.kind and graph.precision == bug.precision
            and parse_version(bug.first_bad) <= have < parse_version(bug.fixed_in)]
