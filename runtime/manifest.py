"""The model directory's manifest (`tessera.json`): the one source of truth the runtime reads.

Dimensions, token layout, class names, graph files, precisions and checksums all live here;
nothing in the runtime repeats them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidInputError, ModelDirectoryError

MANIFEST_NAME = "tessera.json"
FORMAT = "tessera-model"
FORMAT_VERSION = 1


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class TokenLayout:
    """Where tokens and positions sit in the transformer's input space."""

    vocab_size: int  # image codes are 0 .. vocab_size - 1
    class_token_offset: int  # class c is fed as class_token_offset + c
    null_class_id: int
    rope_grid: int  # cell (row, col) has position id 1 + row * rope_grid + col; the class has 0

    def class_ids(self, labels):
        return labels + self.class_token_offset

    def cell_position(self, row, col):
        return 1 + row * self.rope_grid + col


@dataclass
class Manifest:
    root: Path
    data: dict

    # --- typed views of what the runtime needs ---------------------------------------------
    @property
    def transformer(self) -> dict:
        return self.data["transformer"]

    @property
    def grid(self) -> tuple[int, int]:
        g = self.data["grid"]
        return int(g["height"]), int(g["width"])

    @property
    def class_names(self) -> list[str]:
        return list(self.data["classes"]["names"])

    @property
    def num_classes(self) -> int:
        return int(self.data["classes"]["count"])

    @property
    def layout(self) -> TokenLayout:
        t = self.data["token_layout"]
        return TokenLayout(int(t["vocab_size"]), int(t["class_token_offset"]), int(self.data["classes"]["null_class_id"]),
                           int(t["rope_grid"]))

    @property
    def generation_defaults(self) -> dict:
        return dict(self.data.get("generation_defaults", {}))

    def graph(self, name: str) -> dict:
        try:
            return self.data["graphs"][name]
        except KeyError:
            raise ModelDirectoryError(
                f"{self.root} has no '{name}' graph (it has {sorted(self.data.get('graphs', {}))}); re-export the model"
            ) from None

    def graph_path(self, name: str) -> Path:
        return self.root / self.graph(name)["file"]

    # --- class labels -----------------------------------------------------------------------
    def class_id(self, label: int | str) -> int:
        """A class id or name (case-insensitive) -> id, or an error listing the valid ones."""
        names = self.class_names
        if isinstance(label, str) and not label.strip().lstrip("-").isdigit():
            lowered = [n.lower() for n in names]
            if label.strip().lower() in lowered:
                return lowered.index(label.strip().lower())
            shown = ", ".join(f"{i}={n}" for i, n in enumerate(names[:20]))
            raise InvalidInputError(f"unknown class name {label!r}; valid classes: {shown}"
                                    + (" ..." if len(names) > 20 else ""))
        try:
            idx = int(label)
        except (TypeError, ValueError):
            raise InvalidInputError(f"class label {label!r} is neither an id nor a name") from None
        if not 0 <= idx < self.num_classes:
            raise InvalidInputError(
                f"class id {idx} is out of range: this model has classes 0..{self.num_classes - 1}"
                + (f" ({', '.join(names[:10])}{' ...' if len(names) > 10 else ''})" if names else "")
            )
        return idx


def load_manifest(model_dir: str | Path, verify: str = "full") -> Manifest:
    """Read and check a model directory.

    verify: "full" checks size and sha256 of every listed file, "size" only sizes (fast, catches
    truncation), "none" skips both.
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelDirectoryError(f"model directory {root} does not exist; pass a directory made by `tessera export`")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ModelDirectoryError(f"{root} is not a Tessera model directory: {MANIFEST_NAME} is missing. "
                                  "Pass a directory made by `tessera export`.")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelDirectoryError(f"{path} is not valid JSON ({e}); re-export the model") from e
    if data.get("format") != FORMAT or not isinstance(data.get("format_version"), int):
        raise ModelDirectoryError(f"{path} is not a Tessera manifest (format {data.get('format')!r})")
    if data["format_version"] > FORMAT_VERSION:
        raise ModelDirectoryError(f"{path} has format version {data['format_version']}, newer than this runtime "
                                  f"understands ({FORMAT_VERSION}); upgrade tessera-ar")
    for key in ("transformer", "grid", "classes", "token_layout", "graphs", "files"):
        if key not in data:
            raise ModelDirectoryError(f"{path} lacks the '{key}' section; re-export the model")
    manifest = Manifest(root, data)
    if verify not in ("full", "size", "none"):
        raise InvalidInputError(f"verify must be 'full', 'size' or 'none', got {verify!r}")
    if verify != "none":
        verify_files(manifest, full=verify == "full")
    return manifest


def verify_files(manifest: Manifest, full: bool = True) -> None:
    for name, meta in manifest.data["files"].items():
        f = manifest.root / name
        if not f.is_file():
            raise ModelDirectoryError(f"{f} is missing from the model directory; re-export or re-copy the model")
        size = f.stat().st_size
        if size != meta["bytes"]:
            raise ModelDirectoryError(f"{f} is {size} bytes but the manifest says {meta['bytes']}: "
                                      "the file is truncated or was replaced; re-export or re-copy the model")
        if full and sha256_file(f) != meta["sha256"]:
            raise ModelDirectoryError(f"{f} fails its sha256 checksum: the file is corrupt or was modified; "
                                      "re-export or re-copy the model")
