"""The model contract: what a model directory's manifest (`tessera.json`) says, typed and validated.

`ModelSpec.from_manifest` is the one place the manifest is read: every section present and an
object, every field of its type (a bool is not an int) and within a sane range, and the sections
agreeing with each other (vocab == codebook, grid == image / downsample, the transformer graph's
listed inputs and outputs == the names its `io` patterns give). Any failure is one
`ModelDirectoryError` naming the field and the fix. `ModelSpec.to_manifest` is what the exporter
writes, so both sides share one definition.

The transformer graph's input/output names are written once, as patterns, under
`graphs.transformer.io` (in the spirit of onnxruntime-genai's config); manifests written before
it existed mean today's names (`GraphIO()`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .compat import MULTI_QUERY_MODES, parse_version
from .errors import InvalidInputError, ModelDirectoryError

MANIFEST_NAME = "tessera.json"
FORMAT = "tessera-model"
FORMAT_VERSION = 1
FAMILIES = ("llamagen-c2i", "anyorder-c2i")  # what this runtime knows how to run
ANY_ORDER_FAMILY = "anyorder-c2i"  # LlamaGen c2i + a position query: cells in any order (runtime/anyorder.py)
CONDITIONING_KINDS = ("class",)
GRAPH_KINDS = ("fused", "portable")
KV_CACHE_MODES = ("shared-buffer", "concat")
LAYER = "{layer}"  # the layer index in a KV name pattern
FIX = "re-export the model (tessera export --from DIR, or from its checkpoints) or get it from a trusted source"

# Ranges a model of this family can have; beyond them a manifest is damaged or hostile (issue 15).
MAX_LAYERS = MAX_HEADS = MAX_HEAD_DIM = 1024
MAX_VOCAB = 2 ** 20
MAX_CLASSES = 100_000
MAX_GRID = 256  # tokens per side
MAX_ROPE_GRID = 1024
MAX_IMAGE_SIDE = 16384
MAX_NAME = 256  # characters of a class, tensor or graph name

_REQUIRED = object()


# --- the parts -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenLayout:
    """Where tokens and positions sit in the transformer's input space."""

    vocab_size: int  # image codes are 0 .. vocab_size - 1
    class_token_offset: int  # class c is fed as class_token_offset + c
    null_class_id: int
    rope_grid: int  # cell (row, col) has position id 1 + row * rope_grid + col; the class has 0
    query_token_id: int | None = None  # any-order models: the position query (after the null class)

    def class_ids(self, labels):
        return labels + self.class_token_offset

    def cell_position(self, row, col):
        return 1 + row * self.rope_grid + col


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
        return [self.input_ids, self.position_ids, self.attention_mask, *self.past_names(n_layer)]

    def outputs(self, n_layer: int) -> list[str]:
        return [self.logits, *self.present_names(n_layer)]

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in _IO_KEYS}


_IO_KEYS = ("input_ids", "position_ids", "attention_mask", "logits", "past_key_names", "past_value_names",
            "present_key_names", "present_value_names")


@dataclass(frozen=True)
class TransformerSpec:
    dim: int
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    vocab_size: int
    num_classes: int
    grid: int  # tokens per side it was trained on
    rope_grid: int
    rope_base: float = 10000.0
    ffn_dim: int | None = None
    multiple_of: int | None = None
    norm_eps: float = 1e-5
    class_dropout: float = 0.0
    dropout: float = 0.0
    parameters: int | None = None
    extra: dict = field(default_factory=dict, hash=False)  # keys this runtime does not read, kept

    def to_dict(self) -> dict:
        d = {"dim": self.dim, "n_layer": self.n_layer, "n_head": self.n_head, "vocab_size": self.vocab_size,
             "num_classes": self.num_classes, "grid": self.grid, "rope_grid": self.rope_grid,
             "rope_base": self.rope_base, "multiple_of": self.multiple_of, "norm_eps": self.norm_eps,
             "class_dropout": self.class_dropout, "dropout": self.dropout, "head_dim": self.head_dim,
             "ffn_dim": self.ffn_dim, "n_kv_head": self.n_kv_head, "parameters": self.parameters}
        return {**{k: v for k, v in d.items() if v is not None}, **self.extra}


@dataclass(frozen=True)
class TokenizerSpec:
    codebook_size: int
    downsample: int
    grid: int | None = None
    codebook_dim: int | None = None
    ch: int | None = None
    ch_mult: tuple[int, ...] | None = None
    z_channels: int | None = None
    num_res_blocks: int | None = None
    norm_groups: int | None = None
    in_channels: int | None = None
    image_size: int | None = None
    commit_beta: float | None = None
    entropy_ratio: float | None = None
    dropout: float | None = None
    usage_slots: int | None = None
    parameters: int | None = None
    extra: dict = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict:
        d = {"codebook_size": self.codebook_size, "codebook_dim": self.codebook_dim, "ch": self.ch,
             "ch_mult": list(self.ch_mult) if self.ch_mult is not None else None, "z_channels": self.z_channels,
             "num_res_blocks": self.num_res_blocks, "norm_groups": self.norm_groups,
             "in_channels": self.in_channels, "image_size": self.image_size, "commit_beta": self.commit_beta,
             "entropy_ratio": self.entropy_ratio, "dropout": self.dropout, "usage_slots": self.usage_slots,
             "downsample": self.downsample, "grid": self.grid, "parameters": self.parameters}
        return {**{k: v for k, v in d.items() if v is not None}, **self.extra}


@dataclass(frozen=True)
class ImageSpec:
    height: int
    width: int
    channels: int = 3
    value_range: tuple[float, float] = (-1, 1)

    def to_dict(self) -> dict:
        return {"height": self.height, "width": self.width, "channels": self.channels,
                "value_range": list(self.value_range)}


@dataclass(frozen=True)
class ClassesSpec:
    names: tuple[str, ...]
    null_class_id: int

    @property
    def count(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict:
        return {"count": self.count, "names": list(self.names), "null_class_id": self.null_class_id}


@dataclass(frozen=True)
class GraphSpec:
    """One graph entry of the manifest (`graphs.<name>`)."""

    name: str
    file: str
    precision: str = "fp32"
    method: str = "none"
    opset: int | None = None
    kind: str | None = None  # transformer: "fused" or "portable"
    kv_cache: str | None = None  # transformer: "shared-buffer" or "concat"
    multi_query: str | None = None
    min_onnxruntime: str | None = None  # None: written before the field existed (compat.required_version)
    external_data: str | None = None
    options: dict | None = field(default=None, hash=False)  # quantization options
    # tokenizer decoder variants: PSNR (dB) of its image against the fp32 decoder's, measured at
    # export on a fixed probe, and the bound it had to pass (None: fp32, or written before these)
    psnr_db: float | None = None
    min_psnr_db: float | None = None
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    io: GraphIO | None = None  # the transformer's names, as patterns
    extra: dict = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict:
        d = {"file": self.file, "min_onnxruntime": self.min_onnxruntime, "kind": self.kind,
             "kv_cache": self.kv_cache, "multi_query": self.multi_query, "precision": self.precision,
             "method": self.method, "options": self.options, "opset": self.opset,
             "external_data": self.external_data, "psnr_db": self.psnr_db, "min_psnr_db": self.min_psnr_db}
        d = {k: v for k, v in d.items() if v is not None}
        d.update(self.extra)
        d.update(inputs=list(self.inputs), outputs=list(self.outputs))
        if self.io is not None:
            d["io"] = self.io.to_dict()
        return d


@dataclass(frozen=True)
class GenerationDefaults:
    guidance_scale: float = 1.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    extra: dict = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict:
        return {"guidance_scale": self.guidance_scale, "temperature": self.temperature, "top_k": self.top_k,
                "top_p": self.top_p, **self.extra}


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


_TOKEN_LAYOUT_NOTES = {
    "input_ids": "image codes 0..vocab_size-1; class c -> class_token_offset + c; "
                 "null class (guidance) -> class_token_offset + null_class_id",
    "class_position_id": 0,
    "cell_position_id": "1 + row * rope_grid + col (row-major cells)",
    "attention_mask": "bool [batch, sequence, past + sequence], True = may attend",
    "sequence": "class token, then image tokens in raster order; the token at cell j predicts cell j+1",
}
_ANY_ORDER_NOTES = {
    "sequence": "class token, then image tokens in any order at their cells' positions; a query_token_id "
                "at a cell's position predicts that cell and is never context (runtime/anyorder.py)",
}
_KNOWN_TOP = ("format", "format_version", "name", "description", "family", "conditioning", "transformer",
              "tokenizer", "image", "grid", "classes", "token_layout", "graphs", "weights", "generation_defaults",
              "files")


@dataclass(frozen=True)
class ModelSpec:
    """Everything the runtime needs to know about a model directory, validated."""

    name: str
    family: str
    transformer: TransformerSpec
    tokenizer: TokenizerSpec
    image: ImageSpec
    grid: tuple[int, int]  # (height, width) in tokens
    classes: ClassesSpec
    layout: TokenLayout
    graphs: tuple[GraphSpec, ...]
    files: dict = field(default_factory=dict, hash=False)  # name -> FileEntry
    weights: dict = field(default_factory=dict, hash=False)  # model -> file name
    generation: GenerationDefaults = GenerationDefaults()
    description: str = ""
    conditioning: str = "class"
    format_version: int = FORMAT_VERSION
    info: dict = field(default_factory=dict, hash=False)  # informational sections (exported_by, parity ...)

    # --- views -------------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return list(self.classes.names)

    @property
    def num_classes(self) -> int:
        return self.classes.count

    @property
    def io(self) -> GraphIO:
        """The transformer graph's input/output names."""
        return self.graph("transformer").io or GraphIO()

    def graph_names(self) -> list[str]:
        return [g.name for g in self.graphs]

    def graph(self, name: str) -> GraphSpec:
        for g in self.graphs:
            if g.name == name:
                return g
        raise ModelDirectoryError(f"the model has no '{name}' graph (it has {self.graph_names()}); {FIX}")

    def has_graph(self, name: str) -> bool:
        return any(g.name == name for g in self.graphs)

    # --- the manifest --------------------------------------------------------------------------
    def to_manifest(self) -> dict:
        """The manifest dict (`tessera.json`) that `from_manifest` reads back to an equal spec."""
        info = dict(self.info)
        d = {"format": FORMAT, "format_version": self.format_version, "name": self.name,
             "description": self.description, "family": self.family,
             "conditioning": {"kind": self.conditioning}}
        if "exported_by" in info:
            d["exported_by"] = info.pop("exported_by")
        d.update({
            "transformer": self.transformer.to_dict(),
            "tokenizer": self.tokenizer.to_dict(),
            "image": self.image.to_dict(),
            "grid": {"height": self.grid[0], "width": self.grid[1]},
            "classes": self.classes.to_dict(),
            "token_layout": {"vocab_size": self.layout.vocab_size, "class_token_offset": self.layout.class_token_offset,
                             **{k: v for k, v in _TOKEN_LAYOUT_NOTES.items() if k != "cell_position_id"},
                             "rope_grid": self.layout.rope_grid,
                             "cell_position_id": _TOKEN_LAYOUT_NOTES["cell_position_id"],
                             **({"query_token_id": self.layout.query_token_id, **_ANY_ORDER_NOTES}
                                if self.layout.query_token_id is not None else {})},
            "graphs": {g.name: g.to_dict() for g in self.graphs},
            "weights": dict(self.weights),
            "generation_defaults": self.generation.to_dict(),
        })
        d.update(info)
        d["files"] = {n: {"sha256": f.sha256, "bytes": f.bytes} for n, f in self.files.items()}
        return d

    @classmethod
    def from_manifest(cls, data: object, root=None) -> "ModelSpec":
        """Validate a parsed manifest; `root` (the model directory, optional) names it in errors."""
        return _Reader(f"{root}/{MANIFEST_NAME}" if root is not None else MANIFEST_NAME).spec(data)


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

    # one field ------------------------------------------------------------------------------------
    def section(self, data: dict, key: str, path: str = "", default=_REQUIRED) -> dict:
        p = f"{path}.{key}" if path else key
        if key not in data:
            if default is _REQUIRED:
                raise self.error(p, "is missing (the manifest lacks this section)")
            return default
        value = data[key]
        if not isinstance(value, dict):
            raise self.error(p, f"must be an object, got {_show(value)}")
        return value

    def integer(self, sec: dict, path: str, key: str, lo: int, hi: int, default=_REQUIRED):
        p = f"{path}.{key}"
        if key not in sec or (sec[key] is None and default is not _REQUIRED):
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
        if key not in sec or (sec[key] is None and default is not _REQUIRED):
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
        if key not in sec or (sec[key] is None and default is not _REQUIRED):
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

    def names(self, sec: dict, path: str, key: str, max_count: int, default=_REQUIRED,
              min_len: int = 1) -> tuple[str, ...]:
        p = f"{path}.{key}"
        if key not in sec:
            if default is _REQUIRED:
                raise self.error(p, "is missing (a list of names)")
            return default
        v = sec[key]
        if not isinstance(v, list) or len(v) > max_count:
            raise self.error(p, f"must be a list of at most {max_count} names, got {_show(v)}")
        for i, n in enumerate(v):
            if not isinstance(n, str) or not min_len <= len(n) <= MAX_NAME:
                raise self.error(f"{p}[{i}]", f"must be a {'non-empty ' if min_len else ''}string of at most "
                                              f"{MAX_NAME} characters, got {_show(n)}")
        return tuple(v)

    def mismatch(self, path: str, problem: str) -> ModelDirectoryError:
        return self.error(path, problem)

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
        name = self.text(data, "", "name", default="")
        description = self.text(data, "", "description", default="")
        family = data.get("family", FAMILIES[0])
        if family not in FAMILIES:
            raise ModelDirectoryError(f"{self.where}: family is {_show(family)}, a model family this runtime "
                                      f"does not know (it runs {', '.join(FAMILIES)}); upgrade tessera-ar or "
                                      f"use a model of a known family")
        cond = self.section(data, "conditioning", default={"kind": "class"})
        conditioning = self.text(cond, "conditioning", "kind", default="class", choices=CONDITIONING_KINDS)
        for key in ("transformer", "tokenizer", "image", "grid", "classes", "token_layout", "graphs", "files"):
            self.section(data, key)  # each present and an object, in a fixed order
        t = self.transformer(data["transformer"])
        k = self.tokenizer(data["tokenizer"])
        image = self.image(data["image"])
        g = data["grid"]
        grid = (self.integer(g, "grid", "height", 1, MAX_GRID), self.integer(g, "grid", "width", 1, MAX_GRID))
        classes = self.classes(data["classes"], t)
        layout = self.token_layout(data["token_layout"], t, classes, family)
        graphs = self.graphs(data["graphs"], t)
        files = self.files(data["files"])
        weights = self.weights(data)
        generation = self.generation(self.section(data, "generation_defaults", default={}))
        self.cross_check(t, k, image, grid)
        info = {key: value for key, value in data.items() if key not in _KNOWN_TOP}
        return ModelSpec(name=name, family=family, transformer=t, tokenizer=k, image=image, grid=grid,
                         classes=classes, layout=layout, graphs=graphs, files=files, weights=weights,
                         generation=generation, description=description, conditioning=conditioning,
                         format_version=version, info=info)

    def transformer(self, s: dict) -> TransformerSpec:
        p = "transformer"
        dim = self.integer(s, p, "dim", 1, 65536)
        n_layer = self.integer(s, p, "n_layer", 1, MAX_LAYERS)
        n_head = self.integer(s, p, "n_head", 1, MAX_HEADS)
        n_kv_head = self.integer(s, p, "n_kv_head", 1, n_head, default=n_head)
        head_dim = self.integer(s, p, "head_dim", 1, MAX_HEAD_DIM, default=dim // n_head or 1)
        vocab = self.integer(s, p, "vocab_size", 1, MAX_VOCAB)
        num_classes = self.integer(s, p, "num_classes", 1, MAX_CLASSES)
        grid = self.integer(s, p, "grid", 1, MAX_GRID)
        rope_grid = self.integer(s, p, "rope_grid", grid, MAX_ROPE_GRID)
        spec = TransformerSpec(
            dim=dim, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head, head_dim=head_dim, vocab_size=vocab,
            num_classes=num_classes, grid=grid, rope_grid=rope_grid,
            rope_base=self.number(s, p, "rope_base", 0, 1e12, default=10000.0, lo_open=True),
            ffn_dim=self.integer(s, p, "ffn_dim", 1, 2 ** 20, default=None),
            multiple_of=self.integer(s, p, "multiple_of", 1, 2 ** 20, default=None),
            norm_eps=self.number(s, p, "norm_eps", 0, 1, default=1e-5, lo_open=True),
            class_dropout=self.number(s, p, "class_dropout", 0, 1, default=0.0),
            dropout=self.number(s, p, "dropout", 0, 1, default=0.0),
            parameters=self.integer(s, p, "parameters", 0, 10 ** 13, default=None),
            extra={key: v for key, v in s.items() if key not in _TRANSFORMER_KEYS})
        if head_dim * n_head != dim:
            raise self.mismatch("transformer.head_dim", f"({head_dim}) x transformer.n_head ({n_head}) must equal "
                                                        f"transformer.dim ({dim})")
        if n_head % n_kv_head:
            raise self.mismatch("transformer.n_kv_head", f"({n_kv_head}) must divide transformer.n_head ({n_head})")
        return spec

    def tokenizer(self, s: dict) -> TokenizerSpec:
        p = "tokenizer"
        ch_mult = s.get("ch_mult")
        if ch_mult is not None and (not isinstance(ch_mult, list) or not 1 <= len(ch_mult) <= 11
                                    or not all(_is_int(c) and 1 <= c <= 64 for c in ch_mult)):
            raise self.error(f"{p}.ch_mult", f"must be a list of 1..11 ints in 1..64, got {_show(ch_mult)}")
        spec = TokenizerSpec(
            codebook_size=self.integer(s, p, "codebook_size", 1, MAX_VOCAB),
            downsample=self.integer(s, p, "downsample", 1, 1024),
            grid=self.integer(s, p, "grid", 1, MAX_GRID, default=None),
            codebook_dim=self.integer(s, p, "codebook_dim", 1, 65536, default=None),
            ch=self.integer(s, p, "ch", 1, 65536, default=None),
            ch_mult=tuple(ch_mult) if ch_mult is not None else None,
            z_channels=self.integer(s, p, "z_channels", 1, 65536, default=None),
            num_res_blocks=self.integer(s, p, "num_res_blocks", 0, 64, default=None),
            norm_groups=self.integer(s, p, "norm_groups", 1, 65536, default=None),
            in_channels=self.integer(s, p, "in_channels", 1, 16, default=None),
            image_size=self.integer(s, p, "image_size", 1, MAX_IMAGE_SIDE, default=None),
            commit_beta=self.number(s, p, "commit_beta", 0, 1e6, default=None),
            entropy_ratio=self.number(s, p, "entropy_ratio", 0, 1e6, default=None),
            dropout=self.number(s, p, "dropout", 0, 1, default=None),
            usage_slots=self.integer(s, p, "usage_slots", 0, 2 ** 24, default=None),
            parameters=self.integer(s, p, "parameters", 0, 10 ** 13, default=None),
            extra={key: v for key, v in s.items() if key not in _TOKENIZER_KEYS})
        if ch_mult is not None and 2 ** (len(ch_mult) - 1) != spec.downsample:
            raise self.mismatch("tokenizer.downsample", f"({spec.downsample}) must be 2 ** (len(tokenizer.ch_mult) "
                                                        f"- 1) = {2 ** (len(ch_mult) - 1)}")
        return spec

    def image(self, s: dict) -> ImageSpec:
        p = "image"
        vr = s.get("value_range", [-1, 1])
        if not (isinstance(vr, list) and len(vr) == 2 and all(_is_number(x) for x in vr) and vr[0] < vr[1]):
            raise self.error(f"{p}.value_range", f"must be [low, high] with low < high, got {_show(vr)}")
        return ImageSpec(height=self.integer(s, p, "height", 1, MAX_IMAGE_SIDE),
                         width=self.integer(s, p, "width", 1, MAX_IMAGE_SIDE),
                         channels=self.integer(s, p, "channels", 1, 16, default=3), value_range=tuple(vr))

    def classes(self, s: dict, t: TransformerSpec) -> ClassesSpec:
        p = "classes"
        count = self.integer(s, p, "count", 1, MAX_CLASSES)
        names = self.names(s, p, "names", MAX_CLASSES, min_len=0)
        if len(names) != count:
            raise self.mismatch(f"{p}.names", f"has {len(names)} names but classes.count is {count}")
        if count != t.num_classes:
            raise self.mismatch(f"{p}.count", f"({count}) must equal transformer.num_classes ({t.num_classes})")
        null = self.integer(s, p, "null_class_id", 0, MAX_CLASSES)
        if null != t.num_classes:  # the class embedding has num_classes + 1 rows, the last one the null class
            raise self.mismatch(f"{p}.null_class_id", f"must be transformer.num_classes ({t.num_classes}), the "
                                                      f"row the exporter gives the null class, got {null}")
        return ClassesSpec(names=names, null_class_id=null)

    def token_layout(self, s: dict, t: TransformerSpec, classes: ClassesSpec, family: str = FAMILIES[0]
                     ) -> TokenLayout:
        p = "token_layout"
        vocab = self.integer(s, p, "vocab_size", 1, MAX_VOCAB)
        if vocab != t.vocab_size:
            raise self.mismatch(f"{p}.vocab_size", f"({vocab}) must equal transformer.vocab_size ({t.vocab_size})")
        offset = self.integer(s, p, "class_token_offset", 0, MAX_VOCAB)
        if offset != t.vocab_size:  # class tokens follow the image codes in the embedding table
            raise self.mismatch(f"{p}.class_token_offset", f"must be transformer.vocab_size ({t.vocab_size}), "
                                                           f"where the exporter puts the class tokens, got {offset}")
        rope = self.integer(s, p, "rope_grid", 1, MAX_ROPE_GRID)
        if rope != t.rope_grid:
            raise self.mismatch(f"{p}.rope_grid", f"({rope}) must equal transformer.rope_grid ({t.rope_grid})")
        position = s.get("class_position_id", 0)
        if position != 0 or not _is_int(position):
            raise self.error(f"{p}.class_position_id", f"must be 0, got {_show(position)}")
        order = t.extra.get("order", "raster")
        if order != ("any" if family == ANY_ORDER_FAMILY else "raster"):
            raise self.mismatch("transformer.order", f"is {_show(order)} but the family is {family}: "
                                                     f"an {ANY_ORDER_FAMILY} model has order 'any', others 'raster'")
        query = None
        if family == ANY_ORDER_FAMILY:  # the query row follows the null class in the embedding table
            query = self.integer(s, p, "query_token_id", 0, 2 * MAX_VOCAB)
            if query != offset + classes.null_class_id + 1:
                raise self.mismatch(f"{p}.query_token_id", f"must be class_token_offset + null_class_id + 1 "
                                                           f"({offset + classes.null_class_id + 1}), got {query}")
        elif "query_token_id" in s:
            raise self.error(f"{p}.query_token_id", f"is only valid for family {ANY_ORDER_FAMILY}")
        return TokenLayout(vocab, offset, classes.null_class_id, rope, query)

    def graphs(self, s: dict, t: TransformerSpec) -> tuple[GraphSpec, ...]:
        for required in ("transformer", "tokenizer_decoder"):
            if required not in s:
                raise self.error(f"graphs.{required}", "is missing")
        return tuple(self.graph(name, entry, t) for name, entry in s.items())

    def graph(self, name, e, t: TransformerSpec) -> GraphSpec:
        p = f"graphs.{name}"
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise self.error(f"graphs[{_show(name)}]", "must be named by a short string")
        if not isinstance(e, dict):
            raise self.error(p, f"must be an object, got {_show(e)}")
        min_ort = self.text(e, p, "min_onnxruntime", default=None, max_len=64)
        if min_ort is not None:
            try:
                parse_version(min_ort)
            except InvalidInputError:
                raise self.error(f"{p}.min_onnxruntime", f"must be an onnxruntime version such as '1.22', "
                                                         f"got {_show(min_ort)}") from None
        options = e.get("options")
        if options is not None and not isinstance(options, dict):
            raise self.error(f"{p}.options", f"must be an object, got {_show(options)}")
        io = None
        if name == "transformer":
            io = self.io(self.section(e, "io", p, default={}), p, t.n_layer)
            default_in, default_out = io.inputs(t.n_layer), io.outputs(t.n_layer)
        else:
            default_in, default_out = _TOKENIZER_IO.get(name, ((), ()))
        max_io = 4 * MAX_LAYERS + 8
        inputs = self.names(e, p, "inputs", max_io, default=tuple(default_in))
        outputs = self.names(e, p, "outputs", max_io, default=tuple(default_out))
        if name == "transformer":
            for key, listed, want in (("inputs", inputs, default_in), ("outputs", outputs, default_out)):
                if list(listed) != want:
                    i = next((i for i, (a, b) in enumerate(zip(listed, want)) if a != b), min(len(listed), len(want)))
                    got = listed[i] if i < len(listed) else "nothing"
                    raise self.mismatch(f"{p}.{key}", f"must be the names graphs.transformer.io gives for "
                                                      f"transformer.n_layer={t.n_layer} ({len(want)} names); "
                                                      f"entry {i} is {_show(got)}, expected "
                                                      f"{_show(want[i]) if i < len(want) else 'nothing'}")
        elif name in _TOKENIZER_IO and (len(inputs), len(outputs)) != (1, 1):
            raise self.mismatch(f"{p}.inputs", f"a tokenizer graph takes one input and gives one output, the "
                                               f"manifest lists {list(inputs)} -> {list(outputs)}")
        return GraphSpec(
            name=name, file=self.text(e, p, "file", max_len=MAX_NAME),
            precision=self.text(e, p, "precision", default="fp32", max_len=64),
            method=self.text(e, p, "method", default="none", max_len=128),
            opset=self.integer(e, p, "opset", 1, 1000, default=None),
            kind=self.text(e, p, "kind", default=None, choices=GRAPH_KINDS),
            kv_cache=self.text(e, p, "kv_cache", default=None, choices=KV_CACHE_MODES),
            multi_query=self.text(e, p, "multi_query", default=None, choices=MULTI_QUERY_MODES),
            min_onnxruntime=min_ort,
            external_data=self.text(e, p, "external_data", default=None, max_len=MAX_NAME),
            options=options, inputs=inputs, outputs=outputs, io=io,
            psnr_db=self.number(e, p, "psnr_db", 0, 1000, default=None, what="a PSNR in dB, 0..1000"),
            min_psnr_db=self.number(e, p, "min_psnr_db", 0, 1000, default=None, what="a PSNR in dB, 0..1000"),
            extra={key: v for key, v in e.items() if key not in _GRAPH_KEYS})

    def io(self, s: dict, path: str, n_layer: int) -> GraphIO:
        p = f"{path}.io"
        values = {}
        for key in _IO_KEYS:
            v = s.get(key, getattr(GraphIO, key))
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
            raise self.mismatch(p, "must give every input and output a different name")
        return io

    def files(self, s: dict) -> dict:
        out = {}
        for name, meta in s.items():
            p = f"files[{_show(name)}]"
            if not isinstance(meta, dict):
                raise self.error(p, f"must be {{\"sha256\": ..., \"bytes\": ...}}, got {_show(meta)}")
            size, digest = meta.get("bytes"), meta.get("sha256")
            if not _is_int(size) or size < 0:
                raise self.error(f"{p}.bytes", f"must be an int >= 0, got {_show(size)}")
            if not isinstance(digest, str) or len(digest) != 64:
                raise self.error(f"{p}.sha256", f"must be 64 hex digits, got {_show(digest)}")
            out[name] = FileEntry(digest, size)
        return out

    def weights(self, data: dict) -> dict:
        w = data.get("weights") or {}
        if not isinstance(w, dict):
            raise self.error("weights", f"must be an object of model -> file name, got {_show(w)}")
        for key, fname in w.items():
            if not isinstance(fname, str):
                raise self.error(f"weights.{key}", f"must be a file name, got {_show(fname)}")
        return dict(w)

    def generation(self, s: dict) -> GenerationDefaults:
        p = "generation_defaults"
        return GenerationDefaults(
            guidance_scale=self.number(s, p, "guidance_scale", 0, 1e6, default=1.0,
                                       what="a finite number >= 0 (<= 1 turns guidance off)"),
            temperature=self.number(s, p, "temperature", 0, 1e6, default=1.0,
                                    what="a finite number >= 0 (0 = greedy)"),
            top_k=self.integer(s, p, "top_k", 0, MAX_VOCAB, default=0),
            top_p=self.number(s, p, "top_p", 0, 1, default=1.0, lo_open=True, what="a number in (0, 1]"),
            extra={k: v for k, v in s.items() if k not in ("guidance_scale", "temperature", "top_k", "top_p")})

    def cross_check(self, t: TransformerSpec, k: TokenizerSpec, image: ImageSpec, grid: tuple[int, int]) -> None:
        if t.vocab_size != k.codebook_size:
            raise self.mismatch("transformer.vocab_size", f"({t.vocab_size}) must equal tokenizer.codebook_size "
                                                          f"({k.codebook_size})")
        for axis, side, cells in (("height", image.height, grid[0]), ("width", image.width, grid[1])):
            if side != cells * k.downsample:
                raise self.mismatch(f"grid.{axis}", f"({cells}) must be image.{axis} ({side}) / tokenizer.downsample "
                                                    f"({k.downsample})")
            if cells != t.grid:
                raise self.mismatch(f"grid.{axis}", f"({cells}) must equal transformer.grid ({t.grid})")
        if k.grid is not None and k.grid != t.grid:
            raise self.mismatch("tokenizer.grid", f"({k.grid}) must equal transformer.grid ({t.grid})")
        if k.image_size is not None and k.image_size != image.height:
            raise self.mismatch("tokenizer.image_size", f"({k.image_size}) must equal image.height ({image.height})")
        if k.in_channels is not None and k.in_channels != image.channels:
            raise self.mismatch("tokenizer.in_channels", f"({k.in_channels}) must equal image.channels "
                                                         f"({image.channels})")


# Builders for the exporter: the same checks as `ModelSpec.from_manifest`, one section at a time.
def transformer_spec(d: dict, where: str = MANIFEST_NAME) -> TransformerSpec:
    return _Reader(where).transformer(d)


def tokenizer_spec(d: dict, where: str = MANIFEST_NAME) -> TokenizerSpec:
    return _Reader(where).tokenizer(d)


def graph_spec(name: str, entry: dict, transformer: TransformerSpec, where: str = MANIFEST_NAME) -> GraphSpec:
    return _Reader(where).graph(name, entry, transformer)


def generation_defaults(d: dict, where: str = MANIFEST_NAME) -> GenerationDefaults:
    return _Reader(where).generation(d)


_TRANSFORMER_KEYS = {f for f in TransformerSpec.__dataclass_fields__ if f != "extra"}
_TOKENIZER_KEYS = {f for f in TokenizerSpec.__dataclass_fields__ if f != "extra"}
_GRAPH_KEYS = {f for f in GraphSpec.__dataclass_fields__ if f not in ("extra", "name")}
_TOKENIZER_IO = {"tokenizer_decoder": (["codes"], ["image"]), "tokenizer_encoder": (["image"], ["codes"])}


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
