"""A model directory on disk: its manifest (`tessera.json`) read once into a `ModelSpec`
(runtime/spec.py: every type, range, cross-check and listed name), then the file system's part
(symlinks stay inside the directory, sizes and checksums). Nothing in the runtime reads the manifest
file again or repeats what the spec holds.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidInputError, ModelDirectoryError
from .spec import (FORMAT, FORMAT_VERSION, MANIFEST_NAME, REEXPORT, UNTRUSTED_FIX,  # noqa: F401 (re-exported)
                   TEXT_FAMILIES, ModelSpec, NitroSpec, TokenLayout, is_plain_file_name, quoted)

MAX_MANIFEST_BYTES = 64 << 20  # a manifest of 100,000 class names is ~5 MB; more is not a manifest


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --- a model directory is untrusted input: every name it lists stays inside it ----------------
def file_inside(root: Path, name, field: str) -> Path:
    """`root / name` after checking that `name` is a plain file name and that the path, symlinks
    resolved, stays inside `root`; else a ModelDirectoryError naming `field`. No file is opened."""
    if not is_plain_file_name(name):
        raise ModelDirectoryError(f"{field}: not a plain file name inside the model directory ({name!r}); "
                                  + UNTRUSTED_FIX)
    path = root / name
    try:
        real_root, real = root.resolve(), path.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise ModelDirectoryError(f"{field}: {name!r} cannot be resolved ({e}); " + UNTRUSTED_FIX) from None
    if not real.is_relative_to(real_root):
        raise ModelDirectoryError(f"{field}: {name!r} is a symlink to {real}, outside the model directory; "
                                  "copy the file into the directory instead, or " + UNTRUSTED_FIX)
    return path


def check_names(root: Path, spec: ModelSpec) -> None:
    """Every file the manifest lists, symlinks resolved, stays inside the model directory. (That each
    name is a plain file name listed in `files` with a well-formed entry, the manifest reader checked.)
    Opens no listed file."""
    for name in spec.files:
        file_inside(root, name, f"files[{quoted(name)}]")


@dataclass(frozen=True)
class Manifest:
    """A loaded model directory: its `root` and `spec`, the validated contract (runtime/spec.py)
    that everything reads; the manifest file is read once, by `load_manifest`."""

    root: Path
    spec: ModelSpec | NitroSpec

    @property
    def text_to_image(self) -> bool:
        """A prompt-conditioned model (runtime/nitro.py runs it), not a class-conditional one."""
        return isinstance(self.spec, NitroSpec)

    # --- shorthands for the spec's most used facts ------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        return self.spec.grid

    @property
    def class_names(self) -> list[str]:
        return self.spec.class_names

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def layout(self) -> TokenLayout:
        return self.spec.layout

    def graph_path(self, name: str) -> Path:
        """The graph's file, its name checked again against the directory as it is now (a symlink
        swapped in after loading is refused)."""
        return file_inside(self.root, self.spec.graph(name).file, f'graphs[{quoted(name)}]["file"]')

    # --- class labels: resolved by the spec's classes (runtime/spec.py, `ClassesSpec`) ------------
    def class_id(self, label: int | str) -> int:
        """A class id or name -> id (`ClassesSpec.class_id`)."""
        return self.spec.classes.class_id(label)

    def ambiguous_names(self) -> list[tuple[int, str]]:
        return self.spec.classes.ambiguous_names()


def load_manifest(model_dir: str | Path, verify: str = "full") -> Manifest:
    """Read and check a model directory.

    verify: "full" checks size and sha256 of every listed file, "size" only sizes (fast, catches
    truncation), "none" skips both. A format-1 manifest is read through its upgrade (spec.upgrade_v1).
    """
    if verify not in ("full", "size", "none"):
        raise InvalidInputError(f"verify must be 'full', 'size' or 'none', got {verify!r}")
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelDirectoryError(f"model directory {root} does not exist; pass a directory made by `tessera export`")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ModelDirectoryError(f"{root} is not a Tessera model directory: {MANIFEST_NAME} is missing. "
                                  "Pass a directory made by `tessera export`.")
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ModelDirectoryError(f"{path} is {size} bytes, more than a manifest can be "
                                      f"({MAX_MANIFEST_BYTES} bytes); " + UNTRUSTED_FIX)
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: absurdly nested JSON
        raise ModelDirectoryError(f"{path} is not valid JSON ({type(e).__name__}: {str(e)[:200]}); "
                                  "re-export the model") from None
    # The schema: every section, type, range and name (runtime/spec.py); opens nothing.
    # A text-to-image model (family nitro-ar) has its own sections (runtime/spec.py, NitroSpec).
    text = isinstance(data, dict) and data.get("family") in TEXT_FAMILIES
    manifest = Manifest(root, (NitroSpec if text else ModelSpec).from_manifest(data, root))
    check_names(root, manifest.spec)  # symlinks: still opens nothing
    if verify != "none":
        _verify_listed(manifest, full=verify == "full")
    return manifest


def verify_files(manifest: Manifest, full: bool = True) -> None:
    """Check the size (and with `full` the sha256) of every file the manifest lists, after checking
    that every listed name stays inside the model directory (`check_names`)."""
    check_names(manifest.root, manifest.spec)
    _verify_listed(manifest, full)


def _verify_listed(manifest: Manifest, full: bool) -> None:
    # The PyTorch weights serve re-export only: an install may leave them out (the wheel does),
    # but when present they are verified like every other file.
    export_only = set(manifest.spec.weights.values())
    for name, entry in manifest.spec.files.items():
        f = manifest.root / name
        if name in export_only and not f.exists():
            continue
        if not f.is_file():
            raise ModelDirectoryError(f"{f} is missing from the model directory; re-export or re-copy the model")
        size = f.stat().st_size
        if size != entry.bytes:
            raise ModelDirectoryError(f"{f} is {size} bytes but the manifest says {entry.bytes}: "
                                      "the file is truncated or was replaced; re-export or re-copy the model")
        if full and sha256_file(f) != entry.sha256.lower():
            raise ModelDirectoryError(f"{f} fails its sha256 checksum: the file is corrupt or was modified; "
                                      "re-export or re-copy the model")
