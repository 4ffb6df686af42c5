"""The model contract: what a model directory's manifest (`tessera.json`) says, typed and validated.

`ModelSpec.from_manifest` is the one place the manifest is read: every section present and an
object, every field of its type (a bool is not an int) and within a sane range, every name it lists
a plain file name listed in `files`, the self-test probe within the model's tables. Any failure is
one `ModelDirectoryError` naming the field and the fix. `ModelSpec.to_manifest` is what the exporter
writes, so both sides share one definition; docs/model-directory.md is its normative description.

Format 2 keeps one field per fact: what follows from others (class token ids, the null class, the
image size, the transformer graph's input list) is a rule, not a copy. The runtime reads and checks
the sections it uses; `export` (architecture and training fields that only re-export needs) is the
exporter's, checked by it (export/config.py). A format-1 manifest is read through `upgrade_v1`, the
one place that knows format 1.

A text-to-image model (family `nitro-ar`, docs/model-directory.md section 10) has its own sections, read
into a `NitroSpec` by `NitroSpec.from_manifest` with the same field readers (manifest.load_manifest picks
the reader by the family).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import PurePosixPath, PureWindowsPath

from .errors import InvalidInputError, ModelDirectoryError
from .versions import release_numbers

MANIFEST_NAME = "tessera.json"
FORMAT = "tessera-model"
FORMAT_VERSION = 2
FAMILIES = ("llamagen-c2i", "anyorder-c2i", "arpg-c2i")  # what this runtime knows how to run
ANY_ORDER_FAMILY = "anyorder-c2i"  # LlamaGen c2i + a position query: cells in any order (runtime/anyorder.py)
ARPG_FAMILY = "arpg-c2i"  # ARPG: self half + shared K/V + cross half of mask-token queries (runtime/arpg.py)
ARPG_SCHEDULES = ("arccos", "cosine")  # cells per step (runtime/schedule.arpg_counts)
GUIDANCE_SCHEDULES = ("linear", "constant")  # guidance per step (runtime/schedule.guidance_at)
CONDITIONING_KINDS = ("class",)
GRAPH_KINDS = ("fused", "portable")
KV_CACHE_MODES = ("shared-buffer", "concat")
# `graphs.transformer.multi_query`, written until the fused graph rotated by position itself: a graph
# that said "one-query-per-call" rotates several tokens of one call by index, so it is refused.
LEGACY_MULTI_QUERY = ("batched", "one-query-per-call")
LAYER = "{layer}"  # the layer index in a KV name pattern
REEXPORT = "tessera export --from DIR --out NEW"
FIX = f"re-export the model ({REEXPORT}, or from its checkpoints) or get it from a trusted source"
UNTRUSTED_FIX = "the manifest is damaged or was tampered with; re-export the model or get it from a trusted source"

# Ranges a model of this family can have; beyond them a manifest is damaged or hostile (issue 15).
MAX_LAYERS = MAX_HEADS = MAX_HEAD_DIM = 1024
MAX_VOCAB = 2 ** 20
MAX_CLASSES = 100_000
MAX_GRID = 256  # tokens per side
MAX_ROPE_GRID = 1024
MAX_IMAGE_SIDE = 16384
MAX_NAME = 256  # characters of a class, tensor or graph name
MAX_PROBE_TOKENS = 16  # tokens per row of the recorded self-test call
MAX_PROBE_VALUES = 128  # logits per row it records

_REQUIRED = object()
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def is_plain_file_name(name) -> bool:
    """A non-empty str naming a file directly inside a directory on every OS: no separator ('/' or
    '\\'), no drive or stream (':'), not '.' or '..', not absolute, no NUL."""
    return (isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\:\0")
            and PurePosixPath(name).name == name and PureWindowsPath(name).name == name)


def quoted(name) -> str:
    """A listed name as the errors show it: JSON for a string (escapes visible), repr otherwise."""
    return json.dumps(name) if isinstance(name, str) else repr(name)


# --- the parts -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenLayout:
    """Where tokens and positions sit in the transformer's input space (derived from `transformer`
    and the family: docs/model-directory.md, section 5)."""

    vocab_size: int  # image codes are 0 .. vocab_size - 1
    class_token_offset: int  # class c is fed as class_token_offset + c (= vocab_size)
    null_class_id: int  # = num_classes
    rope_grid: int  # cell (row, col) has position id 1 + row * rope_grid + col; the class has 0
    query_token_id: int | None = None  # any-order models: the position query (after the null class)
    mask_token_id: int | None = None  # ARPG models: the query embedding (= vocab_size; classes follow it)

    def class_ids(self, labels):
        return labels + self.class_token_offset

    def cell_position(self, row, col):
        return 1 + row * self.rope_grid + col

    @property
    def embedding_rows(self) -> int:
        """Input ids the graph's embedding table has: codes, classes, the null class (and the query;
        ARPG: the mask token before the classes, an unused drop token after the null class)."""
        return self.class_token_offset + self.null_class_id + 1 + (self.query_token_id is not None) \
            + (self.mask_token_id is not None)

    @property
    def positions(self) -> int:
        """Position ids the rotary table has: the class's 0, then rope_grid x rope_grid cells."""
        return 1 + self.rope_grid ** 2


@dataclass(frozen=True)
class GraphIO:
    """The transformer graph's input and output names; KV names are patterns with `{layer}`."""

    input_ids: str = "input_ids"
    position_ids: str = "position_ids"
    attention_mask: str = "attention_mask"
    logits: str = "logits"
    past_key_names: str = "past_key_values.{layer}.key"
    past_value_names: str = "past_key_values.{layer}.value"
    present_key_names: str = "present.{layer}.key"
    present_value_names: str = "present.{layer}.value"
    query_positions: str | None = None  # ARPG graphs: the cells the mask-token queries ask for

    def layer(self, i: int) -> tuple[str, str, str, str]:
        """Layer i's (past key, past value, present key, present value) names."""
        return tuple(p.replace(LAYER, str(i)) for p in (self.past_key_names, self.past_value_names,
                                                          self.present_key_names, self.present_value_names))

    def past_names(self, n_layer: int) -> list[str]:
        """past key 0, past value 0, past key 1, ... (the graph's input order)."""
        return [n for i in range(n_layer) for n in self.layer(i)[:2]]

    def present_names(self, n_layer: int) -> list[str]:
        return [n for i in range(n_layer) for n in self.layer(i)[2:]]

    def inputs(self, n_layer: int) -> list[str]:
        queries = [self.query_positions] if self.query_positions is not None else []
        return [self.input_ids, self.position_ids, *queries, self.attention_mask, *self.past_names(n_layer)]

    def outputs(self, n_layer: int) -> list[str]:
        return [self.logits, *self.present_names(n_layer)]

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in _IO_KEYS}
        if self.query_positions is not None:
            d["query_positions"] = self.query_positions
        return d


_IO_KEYS = ("input_ids", "position_ids", "attention_mask", "logits", "past_key_names", "past_value_names",
            "present_key_names", "present_value_names")


@dataclass(frozen=True)
class TransformerSpec:
    """The model's shape: the canonical home of every dimension (docs/model-directory.md, section 2)."""

    dim: int
    n_layer: int
    n_head: int
    n_kv_head: int  # the heads the KV cache holds
    vocab_size: int  # image codes; the logits' last axis; the decoder's codebook
    num_classes: int  # class embedding rows, + 1 for the null class
    grid: int  # tokens per side it was trained on (the grid is square)
    rope_grid: int  # side of the rotary table: the largest grid it can generate
    parameters: int | None = None  # informational

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    def to_dict(self) -> dict:
        d = {"dim": self.dim, "n_layer": self.n_layer, "n_head": self.n_head, "n_kv_head": self.n_kv_head,
             "vocab_size": self.vocab_size, "num_classes": self.num_classes, "grid": self.grid,
             "rope_grid": self.rope_grid, "parameters": self.parameters}
        return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True)
class TokenizerSpec:
    downsample: int  # pixels per token side
    parameters: int | None = None  # informational
    # Floats per output pixel in the decoder's widest activation (channels x resolution): what the
    # runtime plans decode memory by. None: unknown, planned as 512.
    activation_per_pixel: float | None = None

    def to_dict(self) -> dict:
        d = {"downsample": self.downsample, "parameters": self.parameters,
             "activation_per_pixel": self.activation_per_pixel}
        return {k: v for k, v in d.items() if v is not None}


def activation_per_pixel(ch: int, ch_mult) -> float:
    """A VQ decoder's widest activation in floats per output pixel: level i has ch * ch_mult[i]
    channels at 1 / 4**i of the output's pixels."""
    return float(max(ch * m / 4 ** i for i, m in enumerate(ch_mult)))


@dataclass(frozen=True)
class ImageSpec:
    channels: int = 3  # the decoder output's axis 1: 1 (grey) or 3 (RGB)

    def to_dict(self) -> dict:
        return {"channels": self.channels}


@dataclass(frozen=True)
class ClassesSpec:
    """The class names (`classes.names`, one per class id) and how a label given by a user resolves."""

    names: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"names": list(self.names)}

    def class_id(self, label: int | str) -> int:
        """A class id or name -> id, or an error listing the valid ones. Names match ignoring case,
        surrounding spaces, runs of spaces and `_` for a space ("Golden_Retriever" = "golden retriever");
        an exact match wins over a looser one. A string of digits is an id, unless it is also the name of
        another class: then it is ambiguous (an error) and "id:5" or "name:5" says which is meant."""
        names = self.names
        if isinstance(label, str):
            text = label.strip()
            prefix, _, rest = text.partition(":")
            if label not in names and prefix.lower() in ("id", "name") and rest.strip():
                if prefix.lower() == "name":
                    return self._named(rest.strip(), label)
                label = rest.strip()  # id:5
                if not label.lstrip("-").isdigit():
                    raise InvalidInputError(f"class label {text!r}: id: takes an integer id "
                                            f"(0..{len(self.names) - 1})")
            elif not text.lstrip("-").isdigit():
                return self._named(label, label)
            else:  # digits: an id, unless a name says otherwise
                idx, named = int(text), self._find_name(label)
                if named is not None and named != idx:
                    if 0 <= idx < len(self.names):
                        raise InvalidInputError(
                            f"class label {text!r} is ambiguous in this model: class id {idx} ({names[idx]!r}) or "
                            f"the class named {text!r} (id {named}); write id:{text} or name:{text}")
                    return named  # the id reading is out of range: only the name fits
        try:
            idx = int(label)
        except (TypeError, ValueError):
            raise InvalidInputError(f"class label {label!r} is neither an id nor a name") from None
        if not 0 <= idx < len(self.names):
            raise InvalidInputError(
                f"class id {idx} is out of range: this model has classes 0..{len(self.names) - 1}"
                + (f" ({', '.join(names[:10])}{' ...' if len(names) > 10 else ''})" if names else "")
            )
        return idx

    def _find_name(self, label: str) -> int | None:
        """The id whose name is `label` (exactly, else loosely: see `class_id`), or None."""
        names = self.names
        if label in names:
            return names.index(label)
        key = _name_key(label)
        keys = [_name_key(n) for n in names]
        return keys.index(key) if key in keys else None

    def _named(self, label: str, given: str) -> int:
        found = self._find_name(label)
        if found is not None:
            return found
        names = self.names
        key = _name_key(label)
        near = [f"{i}={n}" for i, n in enumerate(names) if key and key in _name_key(n)][:10]
        if near:
            raise InvalidInputError(f"unknown class name {given!r}; did you mean: {', '.join(near)}")
        shown = ", ".join(f"{i}={n}" for i, n in enumerate(names[:20]))
        raise InvalidInputError(f"unknown class name {given!r}; valid classes: {shown}"
                                + (" ..." if len(names) > 20 else ""))

    def ambiguous_names(self) -> list[tuple[int, str]]:
        """Classes whose name is the digits of another class's id (`class_id` asks which is meant)."""
        n = len(self.names)
        return [(i, name) for i, name in enumerate(self.names)
                if name.strip().lstrip("-").isdigit() and int(name.strip()) != i and 0 <= int(name.strip()) < n]


def _name_key(name: str) -> str:
    """A class name as `class_id` compares it: lower case, `_` as a space, single spaces, no ends."""
    return " ".join(name.replace("_", " ").lower().split())


@dataclass(frozen=True)
class SelfTestSpec:
    """The transformer's recorded probe (runtime/self_test.py): one causal call of `input_ids` at
    `position_ids` (two rows), and the last position's logits at `indices`."""

    input_ids: tuple[tuple[int, ...], ...]
    position_ids: tuple[tuple[int, ...], ...]
    indices: tuple[int, ...]
    values: tuple[tuple[float, ...], ...]
    tolerance: float

    def to_dict(self) -> dict:
        return {"input_ids": [list(r) for r in self.input_ids], "position_ids": [list(r) for r in self.position_ids],
                "indices": list(self.indices), "values": [list(r) for r in self.values], "tolerance": self.tolerance}


@dataclass(frozen=True)
class GraphSpec:
    """One graph entry of the manifest (`graphs.<name>`)."""

    name: str
    file: str
    min_onnxruntime: str  # the oldest onnxruntime that loads it (runtime/compat.py)
    precision: str = "fp32"
    method: str = "none"
    opset: int | None = None  # informational
    external_data: str | None = None
    options: dict | None = field(default=None, hash=False)  # quantization options (informational)
    kind: str | None = None  # transformer: "fused" or "portable"
    kv_cache: str | None = None  # transformer: "shared-buffer" or "concat"
    io: GraphIO | None = None  # transformer: its names, as patterns
    # transformer: a fused graph of an older tessera (`multi_query: one-query-per-call`) whose multi-token
    # calls rotate by index; read so that it can be re-exported, never run (not written back)
    rotates_by_index: bool = False
    self_test: SelfTestSpec | None = None  # transformer: None only while the exporter writes it
    inputs: tuple[str, ...] = ()  # tokenizer graphs: listed; the transformer: from `io`
    outputs: tuple[str, ...] = ()
    # tokenizer decoder variants: PSNR (dB) of its image against the fp32 decoder's on a fixed probe,
    # and the bound it had to pass
    psnr_db: float | None = None
    min_psnr_db: float | None = None

    def to_dict(self) -> dict:
        d = {"file": self.file, "external_data": self.external_data, "min_onnxruntime": self.min_onnxruntime,
             "kind": self.kind, "kv_cache": self.kv_cache,
             "precision": self.precision, "method": self.method, "options": self.options, "opset": self.opset,
             "psnr_db": self.psnr_db, "min_psnr_db": self.min_psnr_db}
        d = {k: v for k, v in d.items() if v is not None}
        if self.io is not None:
            d["io"] = self.io.to_dict()
        else:
            d.update(inputs=list(self.inputs), outputs=list(self.outputs))
        if self.self_test is not None:
            d["self_test"] = self.self_test.to_dict()
        return d


@dataclass(frozen=True)
class GenerationDefaults:
    """What a host uses for an option its caller leaves unset; these defaults turn each option off."""

    guidance_scale: float = 1.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    # Few-step decoders (any-order, ARPG): calls per grid; ARPG: its cells-per-step and guidance
    # schedules. None: not recorded (the decoder's own default).
    steps: int | None = None
    schedule: str | None = None
    guidance_schedule: str | None = None

    def to_dict(self) -> dict:
        d = {"guidance_scale": self.guidance_scale, "temperature": self.temperature, "top_k": self.top_k,
             "top_p": self.top_p, "steps": self.steps, "schedule": self.schedule,
             "guidance_schedule": self.guidance_schedule}
        return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


_TOP = ("format", "format_version", "name", "description", "family", "conditioning", "transformer", "tokenizer",
        "image", "classes", "graphs", "generation_defaults", "export", "weights", "files")


class _GraphLookup:
    """The manifest's graphs by name: one lookup for the class-conditional and the text-to-image specs."""

    graphs: tuple

    def graph_names(self) -> list[str]:
        return [g.name for g in self.graphs]

    def graph(self, name: str) -> GraphSpec:
        for g in self.graphs:
            if g.name == name:
                return g
        raise ModelDirectoryError(f"the model has no '{name}' graph (it has {self.graph_names()}); {FIX}")

    def has_graph(self, name: str) -> bool:
        return any(g.name == name for g in self.graphs)


@dataclass(frozen=True)
class ModelSpec(_GraphLookup):
    """Everything the runtime needs to know about a model directory, validated."""

    name: str
    family: str
    transformer: TransformerSpec
    tokenizer: TokenizerSpec
    image: ImageSpec
    classes: ClassesSpec
    graphs: tuple[GraphSpec, ...]
    generation: GenerationDefaults = GenerationDefaults()
    files: dict = field(default_factory=dict, hash=False)  # name -> FileEntry
    weights: dict = field(default_factory=dict, hash=False)  # model -> file name (re-export only)
    description: str = ""
    conditioning: str = "class"
    export: dict = field(default_factory=dict, hash=False)  # the exporter's section (export/config.py)
    info: dict = field(default_factory=dict, hash=False)  # informational sections (exported_by, parity ...)
    format_version: int = field(default=FORMAT_VERSION, compare=False)  # as found on disk (1: upgraded)

    # --- derived facts (docs/model-directory.md: rules, not fields) --------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        """The trained grid (height, width) in tokens."""
        return self.transformer.grid, self.transformer.grid

    @property
    def image_size(self) -> tuple[int, int]:
        """The trained image (height, width) in pixels."""
        return self.grid[0] * self.tokenizer.downsample, self.grid[1] * self.tokenizer.downsample

    @cached_property
    def layout(self) -> TokenLayout:
        return token_layout(self.transformer, self.family)

    @property
    def class_names(self) -> list[str]:
        return list(self.classes.names)

    @property
    def num_classes(self) -> int:
        return self.transformer.num_classes

    @property
    def kv_layers(self) -> int:
        """KV pairs the transformer graph takes and gives: one per layer, or for ARPG one per
        self-attention layer (the first half) plus the shared K/V."""
        return kv_layers(self.transformer, self.family)

    @property
    def io(self) -> GraphIO:
        """The transformer graph's input/output names."""
        return self.graph("transformer").io

    def with_graph(self, graph: GraphSpec) -> "ModelSpec":
        """This spec with the graph of the same name replaced."""
        return replace(self, graphs=tuple(graph if g.name == graph.name else g for g in self.graphs))

    # --- the manifest --------------------------------------------------------------------------
    def to_manifest(self) -> dict:
        """The manifest dict (`tessera.json`, format 2) that `from_manifest` reads back to an equal spec."""
        info = dict(self.info)
        d = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": self.name,
             "description": self.description, "family": self.family, "conditioning": {"kind": self.conditioning}}
        if "exported_by" in info:
            d["exported_by"] = info.pop("exported_by")
        d.update({
            "transformer": self.transformer.to_dict(),
            "tokenizer": self.tokenizer.to_dict(),
            "image": self.image.to_dict(),
            "classes": self.classes.to_dict(),
            "graphs": {g.name: g.to_dict() for g in self.graphs},
            "generation_defaults": self.generation.to_dict(),
            "export": self.export,
            "weights": dict(self.weights),
        })
        d.update(info)
        d["files"] = {n: {"sha256": f.sha256, "bytes": f.bytes} for n, f in self.files.items()}
        return d

    @classmethod
    def from_manifest(cls, data: object, root=None) -> "ModelSpec":
        """Validate a parsed manifest (format 2, or format 1 through `upgrade_v1`); `root` (the model
        directory, optional) names it in errors."""
        return _Reader(f"{root}/{MANIFEST_NAME}" if root is not None else MANIFEST_NAME).spec(data)


def token_layout(t: TransformerSpec, family: str) -> TokenLayout:
    """The layout the transformer fields and the family give (docs/model-directory.md, section 5):
    class tokens follow the codes, the null class follows the classes, then the query (any order)."""
    if family == ARPG_FAMILY:  # codes, the mask token, classes, the null class, a drop token
        return TokenLayout(t.vocab_size, t.vocab_size + 1, t.num_classes, t.rope_grid, mask_token_id=t.vocab_size)
    query = t.vocab_size + t.num_classes + 1 if family == ANY_ORDER_FAMILY else None
    return TokenLayout(t.vocab_size, t.vocab_size, t.num_classes, t.rope_grid, query)


def kv_layers(t: TransformerSpec, family: str) -> int:
    """See `ModelSpec.kv_layers`."""
    return t.n_layer // 2 + 1 if family == ARPG_FAMILY else t.n_layer


def probe_inputs(layout: TokenLayout, grid: tuple[int, int]) -> tuple[list[list[int]], list[list[int]]]:
    """The self-test call's (input_ids, position_ids), two rows: the class token of class 0 and of the
    null class, then four cells in raster order that cross a row boundary (docs, section 6)."""
    h, w = grid
    n = h * w
    cells = sorted({0, min(1, n - 1), min(w, n - 1), n - 1})
    tokens = [(k * 7919 + 3) % layout.vocab_size for k in range(len(cells))]
    ids = [[layout.class_ids(label), *tokens] for label in (0, layout.null_class_id)]
    positions = [0, *(layout.cell_position(c // w, c % w) for c in cells)]
    if layout.mask_token_id is not None:  # ARPG: one query (the mask token), at the middle cell
        ids = [[*row, layout.mask_token_id] for row in ids]
        positions.append(layout.cell_position((n // 2) // w, (n // 2) % w))
    return ids, [positions, list(positions)]


# --- validation ------------------------------------------------------------------------------------
def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and (not isinstance(v, float) or math.isfinite(v))


class _Reader:
    def __init__(self, where: str):
        self.where = where

    def error(self, path: str, problem: str) -> ModelDirectoryError:
        return ModelDirectoryError(f"{self.where}: {path} {problem}; {FIX}")

    def untrusted(self, path: str, problem: str) -> ModelDirectoryError:
        return ModelDirectoryError(f"{self.where}: {path}: {problem}; {UNTRUSTED_FIX}")

    # one field ------------------------------------------------------------------------------------
    def section(self, data: dict, key: str, path: str = "", default=_REQUIRED, known: tuple = ()) -> dict:
        """An object field; with `known`, a key it does not list is refused (a typo is not ignored)."""
        p = f"{path}.{key}" if path else key
        if key not in data:
            if default is _REQUIRED:
                raise self.error(p, "is missing (the manifest lacks this section)")
            return default
        value = data[key]
        if not isinstance(value, dict):
            raise self.error(p, f"must be an object, got {_show(value)}")
        unknown = [k for k in value if k not in known]
        if known and unknown:
            raise self.error(f"{p}.{unknown[0]}", f"is not a field of format {FORMAT_VERSION} (its fields: "
                                                  f"{', '.join(known)})")
        return value

    def integer(self, sec: dict, path: str, key: str, lo: int, hi: int, default=_REQUIRED):
        p = f"{path}.{key}"
        if key not in sec:
            if default is _REQUIRED:
                raise self.error(p, f"is missing (an int in {lo}..{hi})")
            return default
        v = sec[key]
        if not _is_int(v) or not lo <= v <= hi:
            raise self.error(p, f"must be an int in {lo}..{hi}, got {_show(v)}")
        return v

    def number(self, sec: dict, path: str, key: str, lo: float, hi: float, default=_REQUIRED,
               lo_open: bool = False, what: str | None = None):
        p = f"{path}.{key}"
        if key not in sec:
            if default is _REQUIRED:
                raise self.error(p, "is missing")
            return default
        v = sec[key]
        ok = _is_number(v) and (lo < v if lo_open else lo <= v) and v <= hi
        if not ok:
            rng = what or f"a finite number in {'(' if lo_open else '['}{lo}, {hi}]"
            raise self.error(p, f"must be {rng}, got {_show(v)}")
        return v

    def text(self, sec: dict, path: str, key: str, default=_REQUIRED, choices=None, max_len: int = 4096):
        p = f"{path}.{key}" if path else key
        if key not in sec:
            if default is _REQUIRED:
                raise self.error(p, "is missing")
            return default
        v = sec[key]
        if choices is not None:
            if v not in choices:
                raise self.error(p, f"must be one of {', '.join(map(repr, choices))}, got {_show(v)}")
        elif not isinstance(v, str) or len(v) > max_len:
            raise self.error(p, f"must be a string of at most {max_len} characters, got {_show(v)}")
        return v

    def names(self, sec: dict, path: str, key: str, max_count: int, min_len: int = 1) -> tuple[str, ...]:
        p = f"{path}.{key}"
        if key not in sec:
            raise self.error(p, "is missing (a list of names)")
        v = sec[key]
        if not isinstance(v, list) or len(v) > max_count:
            raise self.error(p, f"must be a list of at most {max_count} names, got {_show(v)}")
        for i, n in enumerate(v):
            if not isinstance(n, str) or not min_len <= len(n) <= MAX_NAME:
                raise self.error(f"{p}[{i}]", f"must be a {'non-empty ' if min_len else ''}string of at most "
                                              f"{MAX_NAME} characters, got {_show(n)}")
        return tuple(v)

    def matrix(self, sec: dict, path: str, key: str, rows: int, cols: tuple[int, int], ok, what: str) -> tuple:
        """`rows` lists of the same length in cols[0]..cols[1], each element passing `ok`."""
        p = f"{path}.{key}"
        v = sec.get(key)
        if not (isinstance(v, list) and len(v) == rows and all(isinstance(r, list) for r in v)
                and cols[0] <= len(v[0]) <= cols[1] and all(len(r) == len(v[0]) for r in v)
                and all(ok(x) for r in v for x in r)):
            raise self.error(p, f"must be {rows} rows of {cols[0]}..{cols[1]} {what}, got {_show(v)}")
        return tuple(tuple(r) for r in v)

    # the sections ------------------------------------------------------------------------------------
    def spec(self, data: object) -> ModelSpec:
        if not isinstance(data, dict):
            raise ModelDirectoryError(f"{self.where}: the manifest must be a JSON object, got "
                                      f"{type(data).__name__}; {FIX}")
        if data.get("format") != FORMAT:
            raise self.error("format", f"must be {FORMAT!r}, got {_show(data.get('format'))}")
        version = data.get("format_version")
        if not _is_int(version) or version < 1:
            raise self.error("format_version", f"must be an int >= 1, got {_show(version)}")
        if version > FORMAT_VERSION:
            raise ModelDirectoryError(f"{self.where} has format version {version}, newer than this runtime "
                                      f"understands ({FORMAT_VERSION}); upgrade tessera-ar")
        if version < FORMAT_VERSION:
            data = upgrade_v1(data, self)
        family = self.text(data, "", "family", max_len=MAX_NAME)
        if family not in FAMILIES:
            raise ModelDirectoryError(f"{self.where}: family is {_show(family)}, a model family this runtime "
                                      f"does not know (it runs {', '.join(FAMILIES)}); upgrade tessera-ar or "
                                      f"use a model of a known family")
        cond = self.section(data, "conditioning", known=("kind",))
        conditioning = self.text(cond, "conditioning", "kind", choices=CONDITIONING_KINDS)
        files = self.files(data)  # names first: a hostile name is refused before anything else
        weights = self.weights(data, files)
        t = self.transformer(self.section(data, "transformer", known=_TRANSFORMER_KEYS))
        if family == ARPG_FAMILY and t.n_layer % 2:
            raise self.error("transformer.n_layer", f"must be even for family {ARPG_FAMILY} (a self-attention "
                                                    f"half and a cross-attention half), got {t.n_layer}")
        graphs = self.graphs(self.section(data, "graphs"), t, token_layout(t, family), files, family)
        k = self.section(data, "tokenizer", known=("downsample", "parameters", "activation_per_pixel"))
        tokenizer = TokenizerSpec(downsample=self.integer(k, "tokenizer", "downsample", 1, 1024),
                                  parameters=self.integer(k, "tokenizer", "parameters", 0, 10 ** 13, default=None),
                                  activation_per_pixel=self.number(k, "tokenizer", "activation_per_pixel", 0, 2 ** 20,
                                                                   default=None, lo_open=True))
        if t.grid * tokenizer.downsample > MAX_IMAGE_SIDE:
            raise self.error("tokenizer.downsample", f"x transformer.grid ({tokenizer.downsample} x {t.grid}) "
                                                     f"must be at most {MAX_IMAGE_SIDE} pixels")
        image = ImageSpec(self.integer(self.section(data, "image", known=("channels",)), "image", "channels", 1, 16))
        c = self.section(data, "classes", known=("names",))
        names = self.names(c, "classes", "names", MAX_CLASSES, min_len=0)
        if len(names) != t.num_classes:
            raise self.error("classes.names", f"has {len(names)} names but transformer.num_classes is {t.num_classes}")
        export = self.section(data, "export")  # the exporter's: it checks the fields (export/config.py)
        return ModelSpec(
            name=self.text(data, "", "name"), description=self.text(data, "", "description"), family=family,
            conditioning=conditioning, transformer=t, tokenizer=tokenizer, image=image, classes=ClassesSpec(names),
            graphs=graphs, generation=self.generation(self.section(data, "generation_defaults", known=_GENERATION)),
            files=files, weights=weights, export=export, format_version=version,
            info={key: value for key, value in data.items() if key not in _TOP})

    def transformer(self, s: dict) -> TransformerSpec:
        p = "transformer"
        dim = self.integer(s, p, "dim", 1, 65536)
        n_head = self.integer(s, p, "n_head", 1, MAX_HEADS)
        n_kv_head = self.integer(s, p, "n_kv_head", 1, n_head)
        if dim % n_head or not dim // n_head <= MAX_HEAD_DIM:
            raise self.error("transformer.dim", f"({dim}) must be transformer.n_head ({n_head}) x a head size "
                                                f"in 1..{MAX_HEAD_DIM}")
        if n_head % n_kv_head:
            raise self.error("transformer.n_kv_head", f"({n_kv_head}) must divide transformer.n_head ({n_head})")
        grid = self.integer(s, p, "grid", 1, MAX_GRID)
        return TransformerSpec(
            dim=dim, n_layer=self.integer(s, p, "n_layer", 1, MAX_LAYERS), n_head=n_head, n_kv_head=n_kv_head,
            vocab_size=self.integer(s, p, "vocab_size", 1, MAX_VOCAB),
            num_classes=self.integer(s, p, "num_classes", 1, MAX_CLASSES), grid=grid,
            rope_grid=self.integer(s, p, "rope_grid", grid, MAX_ROPE_GRID),
            parameters=self.integer(s, p, "parameters", 0, 10 ** 13, default=None))

    def graphs(self, s: dict, t: TransformerSpec, layout: TokenLayout, files: dict,
               family: str = FAMILIES[0]) -> tuple[GraphSpec, ...]:
        for required in ("transformer", "tokenizer_decoder"):
            if required not in s:
                raise self.error(f"graphs.{required}", "is missing")
        return tuple(self.graph(name, entry, t, layout, files, family) for name, entry in s.items())

    def listed(self, files: dict, path: str, name) -> str:
        """A name a section lists: a plain file name that `files` lists (so it is verified)."""
        if not is_plain_file_name(name):
            raise self.untrusted(path, f"not a plain file name inside the model directory ({name!r})")
        if name not in files:
            raise self.untrusted(path, f"{name!r} is not listed in 'files', so it cannot be verified")
        return name

    def graph(self, name, e, t: TransformerSpec, layout: TokenLayout, files: dict,
              family: str = FAMILIES[0]) -> GraphSpec:
        p = f"graphs.{name}"
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise self.error(f"graphs[{_show(name)}]", "must be named by a short string")
        transformer = name == "transformer" and t is not None  # t None: a text-to-image model's plain graphs
        known = _GRAPH_KEYS + (_TRANSFORMER_GRAPH_KEYS if transformer else ("inputs", "outputs"))
        e = self.section({name: e}, name, "graphs", known=known)
        where = f"graphs[{quoted(name)}]"
        file = self.listed(files, f'{where}["file"]', e.get("file"))
        external = self.listed(files, f'{where}["external_data"]', e["external_data"]) \
            if "external_data" in e else None
        min_ort = self.text(e, p, "min_onnxruntime", max_len=64)
        if not release_numbers(min_ort):
            raise self.error(f"{p}.min_onnxruntime", f"must be an onnxruntime version such as '1.22', "
                                                     f"got {_show(min_ort)}")
        options = e.get("options")
        if options is not None and not isinstance(options, dict):
            raise self.error(f"{p}.options", f"must be an object, got {_show(options)}")
        graph = GraphSpec(
            name=name, file=file, external_data=external, min_onnxruntime=min_ort,
            precision=self.text(e, p, "precision", max_len=64), method=self.text(e, p, "method", max_len=128),
            opset=self.integer(e, p, "opset", 1, 1000, default=None), options=options,
            psnr_db=self.number(e, p, "psnr_db", 0, 1000, default=None, what="a PSNR in dB, 0..1000"),
            min_psnr_db=self.number(e, p, "min_psnr_db", 0, 1000, default=None, what="a PSNR in dB, 0..1000"))
        if not transformer:
            most = 1 if t is not None else 8
            inputs, outputs = self.names(e, p, "inputs", most), self.names(e, p, "outputs", most)
            if t is not None and (len(inputs), len(outputs)) != (1, 1):
                raise self.error(f"{p}.inputs", f"a tokenizer graph takes one input and gives one output, the "
                                                f"manifest lists {list(inputs)} -> {list(outputs)}")
            return replace(graph, inputs=inputs, outputs=outputs)
        kv_cache = self.text(e, p, "kv_cache", choices=KV_CACHE_MODES)
        # written until the fused graph rotated by position itself; the runtime refuses to run such a
        # graph (compat.check_loadable), the exporter still re-exports its directory
        by_index = "multi_query" in e and self.text(e, p, "multi_query", choices=LEGACY_MULTI_QUERY) != "batched"
        layers = kv_layers(t, family)
        io = self.io(self.section(e, "io", p), p, layers, family == ARPG_FAMILY)
        kind = self.text(e, p, "kind", choices=GRAPH_KINDS)
        if family == ARPG_FAMILY and kv_cache != "concat":
            raise self.error(f"{p}.kv_cache", f"must be 'concat' for family {ARPG_FAMILY} (its graph is traced), "
                                              f"got {_show(kv_cache)}")
        probe = self.self_test(self.section(e, "self_test", p, default=None, known=_SELF_TEST_KEYS), layout)
        return replace(graph, kind=kind, kv_cache=kv_cache, io=io, self_test=probe, rotates_by_index=by_index,
                       inputs=tuple(io.inputs(layers)), outputs=tuple(io.outputs(layers)))

    def io(self, s: dict, path: str, n_layer: int, queries: bool = False) -> GraphIO:
        p = f"{path}.io"
        values = {}
        if not queries and "query_positions" in s:
            raise self.error(f"{p}.query_positions", f"is an input of {ARPG_FAMILY} graphs only")
        for key in _IO_KEYS + (("query_positions",) if queries else ()):
            v = s.get(key)
            pattern = key.endswith("_names")
            if not isinstance(v, str) or not 0 < len(v) <= MAX_NAME or (
                    pattern and (v.count(LAYER) != 1 or v.replace(LAYER, "").count("{") or v.count("}") != 1)) or (
                    not pattern and ("{" in v or "}" in v)):
                want = f"a name with {LAYER} once" if pattern else "a tensor name"
                raise self.error(f"{p}.{key}", f"must be {want} (at most {MAX_NAME} characters), got {_show(v)}")
            values[key] = v
        io = GraphIO(**values)
        names = io.inputs(n_layer) + io.outputs(n_layer)
        if len(set(names)) != len(names):
            raise self.error(p, "must give every input and output a different name")
        return io

    def self_test(self, s: dict | None, layout: TokenLayout) -> SelfTestSpec | None:
        """The recorded probe, bounded: ids within the embedding table, positions within the rotary
        table, a few tokens; whether they are the layout's probe is checked when it runs (self_test.py)."""
        if s is None:
            return None
        p = "graphs.transformer.self_test"
        ids = self.matrix(s, p, "input_ids", 2, (1, MAX_PROBE_TOKENS),
                          lambda x: _is_int(x) and 0 <= x < layout.embedding_rows,
                          f"token ids in 0..{layout.embedding_rows - 1} (the embedding table)")
        positions = self.matrix(s, p, "position_ids", 2, (len(ids[0]), len(ids[0])),
                                lambda x: _is_int(x) and 0 <= x < layout.positions,
                                f"position ids in 0..{layout.positions - 1} (the rotary table)")
        indices = s.get("indices")
        if not (isinstance(indices, list) and 1 <= len(indices) <= MAX_PROBE_VALUES and len(set(map(repr, indices)))
                == len(indices) and all(_is_int(i) and 0 <= i < layout.vocab_size for i in indices)):
            raise self.error(f"{p}.indices", f"must be 1..{MAX_PROBE_VALUES} distinct ids in "
                                             f"0..{layout.vocab_size - 1}, got {_show(indices)}")
        indices = tuple(indices)
        values = self.matrix(s, p, "values", 2, (len(indices), len(indices)), _is_number,
                             "finite numbers (one per index)")
        tolerance = self.number(s, p, "tolerance", 0, 1, lo_open=True)
        return SelfTestSpec(ids, positions, indices, values, tolerance)

    def files(self, data: dict) -> dict:
        s = data.get("files")
        if not isinstance(s, dict):
            raise self.untrusted("files", "'files' is not an object of file name -> {sha256, bytes}")
        out = {}
        for name, meta in s.items():
            p = f"files[{quoted(name)}]"
            if not is_plain_file_name(name):
                raise self.untrusted(p, f"not a plain file name inside the model directory ({name!r})")
            if not isinstance(meta, dict):
                raise self.untrusted(p, f"expected {{\"sha256\": ..., \"bytes\": ...}}, got {_show(meta)}")
            size, digest = meta.get("bytes"), meta.get("sha256")
            if not _is_int(size) or size < 0:
                raise self.untrusted(f'{p}["bytes"]', f"expected a size in bytes (an integer >= 0), got {_show(size)}")
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                raise self.untrusted(f'{p}["sha256"]', f"expected 64 hex digits, got {_show(digest)}")
            out[name] = FileEntry(digest, size)
        return out

    def weights(self, data: dict, files: dict) -> dict:
        w = data.get("weights")
        if not isinstance(w, dict):
            raise self.untrusted("weights", f"'weights' is not an object of model -> file name, got {_show(w)}")
        for key, fname in w.items():
            self.listed(files, f"weights[{quoted(key)}]", fname)
        return dict(w)

    def generation(self, s: dict) -> GenerationDefaults:
        p = "generation_defaults"
        return GenerationDefaults(
            steps=self.integer(s, p, "steps", 1, MAX_GRID ** 2, default=None),
            schedule=self.text(s, p, "schedule", default=None, choices=ARPG_SCHEDULES),
            guidance_schedule=self.text(s, p, "guidance_schedule", default=None, choices=GUIDANCE_SCHEDULES),
            guidance_scale=self.number(s, p, "guidance_scale", 0, 1e6,
                                       what="a finite number >= 0 (<= 1 turns guidance off)"),
            temperature=self.number(s, p, "temperature", 0, 1e6, what="a finite number >= 0 (0 = greedy)"),
            top_k=self.integer(s, p, "top_k", 0, MAX_VOCAB),
            top_p=self.number(s, p, "top_p", 0, 1, lo_open=True, what="a number in (0, 1]"))


_TRANSFORMER_KEYS = ("dim", "n_layer", "n_head", "n_kv_head", "vocab_size", "num_classes", "grid", "rope_grid",
                     "parameters")
_GRAPH_KEYS = ("file", "external_data", "min_onnxruntime", "precision", "method", "options", "opset", "psnr_db",
               "min_psnr_db")
_TRANSFORMER_GRAPH_KEYS = ("kind", "kv_cache", "multi_query", "io", "self_test")
_SELF_TEST_KEYS = ("input_ids", "position_ids", "indices", "values", "tolerance")
_GENERATION = ("guidance_scale", "temperature", "top_k", "top_p", "steps", "schedule", "guidance_schedule")


def generation_defaults(d: dict, where: str = MANIFEST_NAME) -> GenerationDefaults:
    """Generation defaults for the exporter: the options given, the others off; checked as at load."""
    r = _Reader(where)
    return r.generation(r.section({"generation_defaults": {**GenerationDefaults().to_dict(), **d}},
                                  "generation_defaults", known=_GENERATION))


# --- format 1 --------------------------------------------------------------------------------------
# Format 1 wrote these facts twice; each copy had to equal its canonical field, and still must.
_V1_DROPPED_TRANSFORMER = ("head_dim", "ffn_dim", "order")
_V1_DROPPED_TOKENIZER = ("codebook_size", "grid", "image_size", "in_channels")
_V1_TOKENIZER_IO = {"tokenizer_decoder": (["codes"], ["image"]), "tokenizer_encoder": (["image"], ["codes"])}


def upgrade_v1(data: dict, r: _Reader) -> dict:
    """A format-1 manifest as format 2, in memory (the directory is not changed): every copy format 1
    kept is checked against its canonical field and dropped, architecture and training fields move
    to `export`, and the defaults format 1 allowed for absent fields are written out (what they meant
    then: a fused graph without `min_onnxruntime` is the 1.32 form, batched). A self-test gets its
    probe inputs from the layout formula. `tessera export --from DIR --out NEW` writes it to disk."""
    t, k = r.section(data, "transformer"), r.section(data, "tokenizer")
    image, grid, classes = r.section(data, "image"), r.section(data, "grid"), r.section(data, "classes")
    layout, graphs = r.section(data, "token_layout"), r.section(data, "graphs")
    family = data.get("family", FAMILIES[0])
    vocab, n_classes = r.integer(t, "transformer", "vocab_size", 1, MAX_VOCAB), \
        r.integer(t, "transformer", "num_classes", 1, MAX_CLASSES)
    side, rope = r.integer(t, "transformer", "grid", 1, MAX_GRID), r.integer(t, "transformer", "rope_grid", 1,
                                                                             MAX_ROPE_GRID)
    dim, n_head = r.integer(t, "transformer", "dim", 1, 65536), r.integer(t, "transformer", "n_head", 1, MAX_HEADS)
    n_layer = r.integer(t, "transformer", "n_layer", 1, MAX_LAYERS)
    pixels = side * r.integer(k, "tokenizer", "downsample", 1, 1024)
    channels = r.integer(image, "image", "channels", 1, 16, default=3)
    anyorder = family == ANY_ORDER_FAMILY
    copies = [  # (copy, its section, key, canonical field, value)
        ("transformer.head_dim", t, "head_dim", "transformer.dim / transformer.n_head", dim // n_head),
        ("transformer.order", t, "order", "the family's order", "any" if anyorder else "raster"),
        ("tokenizer.codebook_size", k, "codebook_size", "transformer.vocab_size", vocab),
        ("tokenizer.grid", k, "grid", "transformer.grid", side),
        ("tokenizer.image_size", k, "image_size", "transformer.grid x tokenizer.downsample", pixels),
        ("tokenizer.in_channels", k, "in_channels", "image.channels", channels),
        ("image.height", image, "height", "transformer.grid x tokenizer.downsample", pixels),
        ("image.width", image, "width", "transformer.grid x tokenizer.downsample", pixels),
        ("image.value_range", image, "value_range", "the decoder's range", [-1, 1]),
        ("grid.height", grid, "height", "transformer.grid", side),
        ("grid.width", grid, "width", "transformer.grid", side),
        ("classes.count", classes, "count", "transformer.num_classes", n_classes),
        ("classes.null_class_id", classes, "null_class_id", "transformer.num_classes", n_classes),
        ("token_layout.vocab_size", layout, "vocab_size", "transformer.vocab_size", vocab),
        ("token_layout.class_token_offset", layout, "class_token_offset", "transformer.vocab_size", vocab),
        ("token_layout.rope_grid", layout, "rope_grid", "transformer.rope_grid", rope),
        ("token_layout.class_position_id", layout, "class_position_id", "0", 0),
        ("token_layout.query_token_id", layout, "query_token_id", "vocab_size + num_classes + 1 (family "
                                                                  f"{ANY_ORDER_FAMILY} only)",
         vocab + n_classes + 1 if anyorder else None),
    ]
    for path, section, key, canonical, want in copies:
        got = section.get(key)
        if (key in section or (want is not None and key == "query_token_id")) and \
                not (got == want and type(got) is type(want)):
            raise r.error(path, f"({_show(got)}) must equal {canonical} ({want})")
    probe = probe_inputs(TokenLayout(vocab, vocab, n_classes, rope, vocab + n_classes + 1 if anyorder else None),
                         (side, side))
    new_graphs = {}
    for name, e in graphs.items():
        if not isinstance(e, dict):
            new_graphs[name] = e  # refused by the format-2 reader, naming the field
            continue
        e = {"precision": "fp32", "method": "none", **e}
        e.setdefault("min_onnxruntime", "1.32" if e.get("kind") == "fused" else "1.22")
        if name in _V1_TOKENIZER_IO:
            e = {"inputs": _V1_TOKENIZER_IO[name][0], "outputs": _V1_TOKENIZER_IO[name][1], **e}
        if name == "transformer":
            e = {"kind": "portable", "kv_cache": "concat", "io": GraphIO().to_dict(), **e}
            io = r.io(r.section(e, "io", "graphs.transformer"), "graphs.transformer", n_layer)
            for key, want in (("inputs", io.inputs(n_layer)), ("outputs", io.outputs(n_layer))):
                listed = e.pop(key, want)
                if listed != want:
                    raise r.error(f"graphs.transformer.{key}", f"must be the names graphs.transformer.io gives for "
                                                               f"transformer.n_layer={n_layer} ({len(want)} names), "
                                                               f"got {_show(listed)}")
            if isinstance(e.get("self_test"), dict):
                e["self_test"] = {"input_ids": probe[0], "position_ids": probe[1], **e["self_test"]}
        new_graphs[name] = e
    keep_t = (*_TRANSFORMER_KEYS, *_V1_DROPPED_TRANSFORMER)
    out = {key: value for key, value in data.items() if key not in (
        "format_version", "grid", "token_layout", "transformer", "tokenizer", "image", "classes", "graphs",
        "generation_defaults")}
    defaults = data.get("generation_defaults", {})
    out.update(
        format_version=FORMAT_VERSION, name=data.get("name", ""), description=data.get("description", ""),
        family=family, conditioning=data.get("conditioning", {"kind": "class"}),
        transformer={"n_kv_head": n_head, **{key: v for key, v in t.items() if key in _TRANSFORMER_KEYS}},
        tokenizer={**{key: v for key, v in k.items() if key in ("downsample", "parameters")},
                   **({"activation_per_pixel": activation_per_pixel(k["ch"], k["ch_mult"])}
                      if _is_int(k.get("ch")) and isinstance(k.get("ch_mult"), list) and k["ch_mult"]
                      and all(_is_int(m) and m > 0 for m in k["ch_mult"]) and 0 < k["ch"] <= 2 ** 16 else {})},
        image={"channels": channels}, classes={"names": classes.get("names")}, graphs=new_graphs,
        generation_defaults={**GenerationDefaults().to_dict(), **defaults} if isinstance(defaults, dict)
        else defaults,
        export={"transformer": {key: v for key, v in t.items() if key not in keep_t},
                "tokenizer": {key: v for key, v in k.items()
                              if key not in ("downsample", "parameters", *_V1_DROPPED_TOKENIZER)}},
        weights=data.get("weights") or {})
    return out


# --- a graph opened against its spec ----------------------------------------------------------------
@dataclass(frozen=True)
class TensorSig:
    """What the runtime expects of one graph input or output: its name, the element types it can
    feed or read, and its rank with the static sizes it relies on (None: any)."""

    name: str
    types: tuple[str, ...]
    dims: tuple[int | None, ...]
    fields: tuple[str | None, ...] = ()  # the manifest field each static size comes from


def check_session(session, graph: GraphSpec, inputs: list[TensorSig], outputs: list[TensorSig],
                  model: str) -> None:
    """Compare an opened graph's inputs and outputs (names, element types, static sizes) with what the
    manifest says; one ModelDirectoryError naming the graph and the first mismatch."""
    def fail(problem: str) -> ModelDirectoryError:
        return ModelDirectoryError(
            f"{model}: its {graph.name} graph ({graph.file}) does not match the manifest: {problem}. The graph "
            f"file was replaced by another graph or the manifest was edited; {FIX}")

    for kind, expected, actual in (("input", inputs, session.get_inputs()), ("output", outputs, session.get_outputs())):
        have = {a.name: a for a in actual}
        missing = [e.name for e in expected if e.name not in have]
        if missing:
            raise fail(f"it lacks the {kind}s {missing[:4]}{' ...' if len(missing) > 4 else ''} "
                       f"(its {kind}s are {[a.name for a in actual][:6]}{' ...' if len(actual) > 6 else ''})")
        unexpected = [a.name for a in actual if a.name not in {e.name for e in expected}]
        if unexpected and kind == "input":  # an input the runtime does not feed would fail at the first call
            raise fail(f"it has inputs the manifest does not list: {unexpected[:4]}")
        if kind == "output" and [a.name for a in actual][:len(expected)] != [e.name for e in expected]:
            raise fail(f"its outputs are {[a.name for a in actual][:6]}, in another order than "
                       f"{[e.name for e in expected][:6]}")
        for e in expected:
            a = have[e.name]
            if a.type not in e.types:
                raise fail(f"{kind} {e.name!r} is {a.type}, expected {' or '.join(e.types)}")
            shape = a.shape
            if shape is None:
                continue
            if len(shape) != len(e.dims):
                raise fail(f"{kind} {e.name!r} has rank {len(shape)} {list(shape)}, expected rank {len(e.dims)}")
            for axis, (got, want) in enumerate(zip(shape, e.dims)):
                if want is not None and isinstance(got, int) and not isinstance(got, bool) and got != want:
                    source = e.fields[axis] if axis < len(e.fields) and e.fields[axis] else "the manifest"
                    raise fail(f"{kind} {e.name!r} has size {got} on axis {axis} ({list(shape)}), but {source} "
                               f"says {want}")


# --- the text-to-image family (Nitro-AR) ------------------------------------------------------------
NITRO_FAMILY = "nitro-ar"  # masked AR over continuous latent tokens, text-conditioned (runtime/nitro.py)
TEXT_FAMILIES = (NITRO_FAMILY,)
NITRO_VARIANTS = ("gan", "joint_gan")
HEAD_TIMESTEPS = ("exact", "floor")
# The graphs each variant runs, with their inputs and outputs (docs/model-directory.md, section 10).
NITRO_GRAPHS = {
    "text_encoder": (("input_ids", "attention_mask"), ("last_hidden_state",)),
    "transformer": (("tokens", "mask", "text"), ("hidden",)),
    "head": (("x", "t", "z"), ("velocity",)),
    "global_transformer": (("text",), ("hidden",)),
    "global_head": (("x", "t", "z"), ("velocity",)),
    "decoder": (("latent",), ("image",)),
}
NITRO_VARIANT_GRAPHS = {
    "gan": ("text_encoder", "transformer", "head", "decoder"),
    "joint_gan": ("text_encoder", "global_transformer", "global_head", "transformer", "head", "decoder"),
}
_NITRO_KEYS = ("variant", "grid", "latent_channels", "dim", "iterations", "head_steps", "guidance_scale",
               "num_train_timesteps", "shift", "head_timestep")
_TEXT_KEYS = ("tokenizer", "max_tokens", "hidden", "pad_token_id")
_DECODER_KEYS = ("latent_scale", "downsample", "image_channels")
_NITRO_TOP = ("format", "format_version", "name", "description", "family", "conditioning", "nitro", "text",
              "decoder", "graphs", "export", "weights", "files")


@dataclass(frozen=True)
class NitroLoop:
    """The sampling loop of a Nitro-AR model, as data (docs/model-directory.md, section 10)."""

    variant: str  # "gan": MaskGIT iterations + a per-cell head; "joint_gan": global token, then one joint pass
    grid: int  # cells per side
    latent_channels: int  # channels of one latent cell
    dim: int  # the transformer's hidden state width (the heads' condition)
    iterations: int  # gan: transformer calls per image (joint_gan: always 2)
    head_steps: int  # Euler steps of the flow head per decision
    guidance_scale: float  # on velocities; guidance is on exactly when > 1
    num_train_timesteps: int = 1000
    shift: float = 1.0
    head_timestep: str = "exact"  # "floor": the head is fed floor(t) (joint_gan), the Euler update the exact sigma

    @property
    def cells(self) -> int:
        return self.grid * self.grid

    def to_dict(self) -> dict:
        return {"variant": self.variant, "grid": self.grid, "latent_channels": self.latent_channels, "dim": self.dim,
                "iterations": self.iterations, "head_steps": self.head_steps, "guidance_scale": self.guidance_scale,
                "num_train_timesteps": self.num_train_timesteps, "shift": self.shift,
                "head_timestep": self.head_timestep}


@dataclass(frozen=True)
class TextEncoderSpec:
    """How a prompt becomes the transformer's text states."""

    tokenizer: str  # a tokenizers JSON file in the model directory
    max_tokens: int  # ids padded (with pad_token_id) or truncated to this many
    hidden: int  # width of the encoder's states
    pad_token_id: int

    def to_dict(self) -> dict:
        return {"tokenizer": self.tokenizer, "max_tokens": self.max_tokens, "hidden": self.hidden,
                "pad_token_id": self.pad_token_id}


@dataclass(frozen=True)
class LatentDecoderSpec:
    """The latent -> image decoder: it is fed latent / latent_scale as [B, C, grid, grid]."""

    latent_scale: float
    downsample: int  # pixels per latent cell side
    image_channels: int = 3

    def to_dict(self) -> dict:
        return {"latent_scale": self.latent_scale, "downsample": self.downsample,
                "image_channels": self.image_channels}


@dataclass(frozen=True)
class NitroSpec(_GraphLookup):
    """A text-to-image (family `nitro-ar`) model directory's manifest, validated."""

    name: str
    loop: NitroLoop
    text: TextEncoderSpec
    decoder: LatentDecoderSpec
    graphs: tuple[GraphSpec, ...]
    files: dict = field(default_factory=dict, hash=False)
    weights: dict = field(default_factory=dict, hash=False)
    description: str = ""
    family: str = NITRO_FAMILY
    conditioning: str = "text"
    export: dict = field(default_factory=dict, hash=False)
    info: dict = field(default_factory=dict, hash=False)  # informational sections (exported_by, parity ...)
    format_version: int = field(default=FORMAT_VERSION, compare=False)

    @property
    def grid(self) -> tuple[int, int]:
        return self.loop.grid, self.loop.grid

    @property
    def image_size(self) -> tuple[int, int]:
        side = self.loop.grid * self.decoder.downsample
        return side, side

    def to_manifest(self) -> dict:
        info = dict(self.info)
        d = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": self.name, "description": self.description,
             "family": self.family, "conditioning": {"kind": self.conditioning}}
        if "exported_by" in info:
            d["exported_by"] = info.pop("exported_by")
        d.update({"nitro": self.loop.to_dict(), "text": self.text.to_dict(), "decoder": self.decoder.to_dict(),
                  "graphs": {g.name: g.to_dict() for g in self.graphs}, "export": self.export,
                  "weights": dict(self.weights)})
        d.update(info)
        d["files"] = {n: {"sha256": f.sha256, "bytes": f.bytes} for n, f in self.files.items()}
        return d

    @classmethod
    def from_manifest(cls, data: object, root=None) -> "NitroSpec":
        r = _Reader(f"{root}/{MANIFEST_NAME}" if root is not None else MANIFEST_NAME)
        if not isinstance(data, dict) or data.get("family") != NITRO_FAMILY:
            raise r.error("family", f"must be {NITRO_FAMILY!r} for a text-to-image model")
        return _read_nitro(r, data)


def _read_nitro(r: _Reader, data: dict) -> NitroSpec:
    if data.get("format") != FORMAT:
        raise r.error("format", f"must be {FORMAT!r}, got {_show(data.get('format'))}")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise r.error("format_version", f"must be {FORMAT_VERSION} for a {NITRO_FAMILY} model, got {_show(version)}")
    cond = r.section(data, "conditioning", known=("kind",))
    r.text(cond, "conditioning", "kind", choices=("text",))
    files = r.files(data)
    weights = r.weights(data, files)
    s = r.section(data, "nitro", known=_NITRO_KEYS)
    p = "nitro"
    variant = r.text(s, p, "variant", choices=NITRO_VARIANTS)
    grid = r.integer(s, p, "grid", 4, MAX_GRID)
    if grid % 4:
        raise r.error("nitro.grid", f"must be a multiple of 4 (the transformer halves and quarters it), got {grid}")
    loop = NitroLoop(
        variant=variant, grid=grid, latent_channels=r.integer(s, p, "latent_channels", 1, 4096),
        dim=r.integer(s, p, "dim", 1, 65536), iterations=r.integer(s, p, "iterations", 1, grid * grid),
        head_steps=r.integer(s, p, "head_steps", 1, 1000),
        guidance_scale=r.number(s, p, "guidance_scale", 0, 1e6, what="a finite number >= 0 (<= 1 turns guidance off)"),
        num_train_timesteps=r.integer(s, p, "num_train_timesteps", 2, 10 ** 6),
        shift=r.number(s, p, "shift", 0, 1e6, lo_open=True),
        head_timestep=r.text(s, p, "head_timestep", choices=HEAD_TIMESTEPS))
    t = r.section(data, "text", known=_TEXT_KEYS)
    text = TextEncoderSpec(tokenizer=r.listed(files, "text.tokenizer", t.get("tokenizer")),
                           max_tokens=r.integer(t, "text", "max_tokens", 1, 65536),
                           hidden=r.integer(t, "text", "hidden", 1, 65536),
                           pad_token_id=r.integer(t, "text", "pad_token_id", 0, 2 ** 31 - 1))
    d = r.section(data, "decoder", known=_DECODER_KEYS)
    decoder = LatentDecoderSpec(latent_scale=r.number(d, "decoder", "latent_scale", 0, 1e6, lo_open=True),
                                downsample=r.integer(d, "decoder", "downsample", 1, 1024),
                                image_channels=r.integer(d, "decoder", "image_channels", 1, 4))
    if grid * decoder.downsample > MAX_IMAGE_SIDE:
        raise r.error("decoder.downsample", f"x nitro.grid ({decoder.downsample} x {grid}) must be at most "
                                            f"{MAX_IMAGE_SIDE} pixels")
    gs = r.section(data, "graphs")
    needed = NITRO_VARIANT_GRAPHS[variant]
    for name in needed:
        if name not in gs:
            raise r.error(f"graphs.{name}", f"is missing (a {variant} model runs {', '.join(needed)})")
    graphs = []
    for name, entry in gs.items():
        if name not in needed:
            raise r.error(f"graphs.{name}", f"is not a graph of a {variant} model (it runs {', '.join(needed)})")
        g = r.graph(name, entry, None, None, files)
        want_in, want_out = NITRO_GRAPHS[name]
        if g.inputs != want_in or g.outputs != want_out:
            raise r.error(f"graphs.{name}", f"must take {list(want_in)} and give {list(want_out)}, the manifest "
                                            f"lists {list(g.inputs)} -> {list(g.outputs)}")
        graphs.append(g)
    return NitroSpec(name=r.text(data, "", "name"), description=r.text(data, "", "description"), loop=loop,
                     text=text, decoder=decoder, graphs=tuple(graphs), files=files, weights=weights,
                     export=r.section(data, "export"), format_version=version,
                     info={k: v for k, v in data.items() if k not in _NITRO_TOP})

