"""The model directory's manifest (`tessera.json`): the one source of truth the runtime reads.

Dimensions, token layout, class names, graph files, precisions and checksums all live here;
nothing in the runtime repeats them.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import InvalidInputError, ModelDirectoryError
from .spec import FORMAT, FORMAT_VERSION, MANIFEST_NAME, ModelSpec, TokenLayout  # noqa: F401 (re-exported)

MAX_MANIFEST_BYTES = 64 << 20  # a manifest of 100,000 class names is ~5 MB; more is not a manifest


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --- a model directory is untrusted input: every name it lists stays inside it ----------------
_UNTRUSTED_FIX = "the manifest is damaged or was tampered with; re-export the model or get it from a trusted source"
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def is_plain_file_name(name) -> bool:
    """A non-empty str naming a file directly inside a directory on every OS: no separator ('/' or
    '\\'), no drive or stream (':'), not '.' or '..', not absolute, no NUL."""
    return (isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\:\0")
            and PurePosixPath(name).name == name and PureWindowsPath(name).name == name)


def file_inside(root: Path, name, field: str) -> Path:
    """`root / name` after checking that `name` is a plain file name and that the path, symlinks
    resolved, stays inside `root`; else a ModelDirectoryError naming `field`. No file is opened."""
    if not is_plain_file_name(name):
        raise ModelDirectoryError(f"{field}: not a plain file name inside the model directory ({name!r}); "
                                  + _UNTRUSTED_FIX)
    path = root / name
    try:
        real_root, real = root.resolve(), path.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise ModelDirectoryError(f"{field}: {name!r} cannot be resolved ({e}); " + _UNTRUSTED_FIX) from None
    if not real.is_relative_to(real_root):
        raise ModelDirectoryError(f"{field}: {name!r} is a symlink to {real}, outside the model directory; "
                                  "copy the file into the directory instead, or " + _UNTRUSTED_FIX)
    return path


def _quoted(name) -> str:
    return json.dumps(name) if isinstance(name, str) else repr(name)


def check_names(manifest: "Manifest") -> None:
    """Every name the manifest lists (`files`, each graph's `file` and `external_data`, `weights`)
    is a plain file name inside the model directory, each graph and weights file is listed in
    `files`, and each `files` entry has a well-formed `bytes` and `sha256`. Opens no listed file."""
    data, root = manifest.data, manifest.root
    files = data.get("files")
    if not isinstance(files, dict):
        raise ModelDirectoryError(f"{root / MANIFEST_NAME}: 'files' is not an object of file name -> "
                                  "{sha256, bytes}; " + _UNTRUSTED_FIX)
    for name, meta in files.items():
        field = f"files[{_quoted(name)}]"
        file_inside(root, name, field)
        if not isinstance(meta, dict):
            raise ModelDirectoryError(f"{field}: expected {{\"sha256\": ..., \"bytes\": ...}}, got {meta!r}; "
                                      + _UNTRUSTED_FIX)
        size, digest = meta.get("bytes"), meta.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ModelDirectoryError(f'{field}["bytes"]: expected a size in bytes (an integer >= 0), '
                                      f"got {size!r}; " + _UNTRUSTED_FIX)
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ModelDirectoryError(f'{field}["sha256"]: expected 64 hex digits, got {digest!r}; '
                                      + _UNTRUSTED_FIX)
    graphs = data.get("graphs")
    if not isinstance(graphs, dict):
        raise ModelDirectoryError(f"{root / MANIFEST_NAME}: 'graphs' is not an object of graph name -> entry; "
                                  + _UNTRUSTED_FIX)
    listed = []
    for gname, entry in graphs.items():
        gfield = f"graphs[{_quoted(gname)}]"
        if not isinstance(entry, dict):
            raise ModelDirectoryError(f"{gfield}: expected an object with a 'file', got {entry!r}; " + _UNTRUSTED_FIX)
        keys = ["file"] + (["external_data"] if entry.get("external_data") is not None else [])
        for key in keys:
            field = f'{gfield}["{key}"]'
            file_inside(root, entry.get(key), field)
            listed.append((field, entry[key]))
    weights = data.get("weights") or {}
    if not isinstance(weights, dict):
        raise ModelDirectoryError(f"{root / MANIFEST_NAME}: 'weights' is not an object of model -> file name; "
                                  + _UNTRUSTED_FIX)
    for wname, fname in weights.items():
        field = f"weights[{_quoted(wname)}]"
        file_inside(root, fname, field)
        listed.append((field, fname))
    for field, fname in listed:
        if fname not in files:
            raise ModelDirectoryError(f"{field}: {fname!r} is not listed in 'files', so it cannot be verified; "
                                      + _UNTRUSTED_FIX)


@dataclass
class Manifest:
    """A loaded model directory: `root`, the raw manifest `data`, and `spec`, the validated
    contract (runtime/spec.py) the views below read."""

    root: Path
    data: dict
    spec: ModelSpec | None = None  # set by load_manifest; for a Manifest built by hand, built on first use

    def _spec(self) -> ModelSpec:
        if self.spec is None:
            self.spec = ModelSpec.from_manifest(self.data, self.root)
        return self.spec

    # --- typed views of what the runtime needs ---------------------------------------------
    @property
    def transformer(self) -> dict:
        """The transformer section as a dict (validated; `spec.transformer` is the typed form)."""
        return self._spec().transformer.to_dict()

    @property
    def grid(self) -> tuple[int, int]:
        return self._spec().grid

    @property
    def class_names(self) -> list[str]:
        return self._spec().class_names

    @property
    def num_classes(self) -> int:
        return self._spec().num_classes

    @property
    def layout(self) -> TokenLayout:
        return self._spec().layout

    @property
    def generation_defaults(self) -> dict:
        return self._spec().generation.to_dict()

    def graph(self, name: str) -> dict:
        try:
            return self.data["graphs"][name]
        except KeyError:
            raise ModelDirectoryError(
                f"{self.root} has no '{name}' graph (it has {sorted(self.data.get('graphs', {}))}); re-export the model"
            ) from None

    def graph_path(self, name: str) -> Path:
        entry = self.graph(name)
        path = file_inside(self.root, entry.get("file") if isinstance(entry, dict) else None,
                           f'graphs[{_quoted(name)}]["file"]')
        if path.name not in self.data.get("files", {}):
            raise ModelDirectoryError(f'graphs[{_quoted(name)}]["file"]: {path.name!r} is not listed in '
                                      "'files', so it cannot be verified; " + _UNTRUSTED_FIX)
        return path

    # --- class labels -----------------------------------------------------------------------
    def class_id(self, label: int | str) -> int:
        """A class id or name -> id, or an error listing the valid ones. Names match ignoring case,
        surrounding spaces, runs of spaces and `_` for a space ("Golden_Retriever" = "golden retriever");
        an exact match wins over a looser one. A string of digits is an id, unless it is also the name of
        another class: then it is ambiguous (an error) and "id:5" or "name:5" says which is meant."""
        names = self.class_names
        if isinstance(label, str):
            text = label.strip()
            prefix, _, rest = text.partition(":")
            if label not in names and prefix.lower() in ("id", "name") and rest.strip():
                if prefix.lower() == "name":
                    return self._named(rest.strip(), label)
                label = rest.strip()  # id:5
                if not label.lstrip("-").isdigit():
                    raise InvalidInputError(f"class label {text!r}: id: takes an integer id "
                                            f"(0..{self.num_classes - 1})")
            elif not text.lstrip("-").isdigit():
                return self._named(label, label)
            else:  # digits: an id, unless a name says otherwise
                idx, named = int(text), self._find_name(label)
                if named is not None and named != idx:
                    if 0 <= idx < self.num_classes:
                        raise InvalidInputError(
                            f"class label {text!r} is ambiguous in this model: class id {idx} ({names[idx]!r}) or "
                            f"the class named {text!r} (id {named}); write id:{text} or name:{text}")
                    return named  # the id reading is out of range: only the name fits
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

    def _find_name(self, label: str) -> int | None:
        """The id whose name is `label` (exactly, else loosely: see `class_id`), or None."""
        names = self.class_names
        if label in names:
            return names.index(label)
        key = _name_key(label)
        keys = [_name_key(n) for n in names]
        return keys.index(key) if key in keys else None

    def _named(self, label: str, given: str) -> int:
        found = self._find_name(label)
        if found is not None:
            return found
        names = self.class_names
        key = _name_key(label)
        near = [f"{i}={n}" for i, n in enumerate(names) if key and key in _name_key(n)][:10]
        if near:
            raise InvalidInputError(f"unknown class name {given!r}; did you mean: {', '.join(near)}")
        shown = ", ".join(f"{i}={n}" for i, n in enumerate(names[:20]))
        raise InvalidInputError(f"unknown class name {given!r}; valid classes: {shown}"
                                + (" ..." if len(names) > 20 else ""))

    def ambiguous_names(self) -> list[tuple[int, str]]:
        """Classes whose name is the digits of another class's id (`class_id` asks which is meant)."""
        n = self.num_classes
        return [(i, name) for i, name in enumerate(self.class_names)
                if name.strip().lstrip("-").isdigit() and int(name.strip()) != i and 0 <= int(name.strip()) < n]


def _name_key(name: str) -> str:
    """A class name as `class_id` compares it: lower case, `_` as a space, single spaces, no ends."""
    return " ".join(name.replace("_", " ").lower().split())


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
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ModelDirectoryError(f"{path} is {size} bytes, more than a manifest can be "
                                      f"({MAX_MANIFEST_BYTES} bytes); " + _UNTRUSTED_FIX)
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: absurdly nested JSON
        raise ModelDirectoryError(f"{path} is not valid JSON ({type(e).__name__}: {str(e)[:200]}); "
                                  "re-export the model") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("format_version"), int):
        raise ModelDirectoryError(f"{path} is not a Tessera manifest "
                                  f"(format {data.get('format') if isinstance(data, dict) else None!r})")
    if data["format_version"] > FORMAT_VERSION:
        raise ModelDirectoryError(f"{path} has format version {data['format_version']}, newer than this runtime "
                                  f"understands ({FORMAT_VERSION}); upgrade tessera-ar")
    for key in ("transformer", "grid", "classes", "token_layout", "graphs", "files"):
        if key not in data:
            raise ModelDirectoryError(f"{path} lacks the '{key}' section; re-export the model")
    if verify not in ("full", "size", "none"):
        raise InvalidInputError(f"verify must be 'full', 'size' or 'none', got {verify!r}")
    manifest = Manifest(root, data)
    check_names(manifest)  # always: a name check opens nothing and costs nothing
    # Then the schema: every section, type, range and cross-check (runtime/spec.py); opens nothing.
    manifest.spec = ModelSpec.from_manifest(data, root)
    if verify != "none":
        _verify_listed(manifest, full=verify == "full")
    return manifest


def verify_files(manifest: Manifest, full: bool = True) -> None:
    """Check the size (and with `full` the sha256) of every file the manifest lists, after checking
    that every listed name stays inside the model directory (`check_names`)."""
    check_names(manifest)
    _verify_listed(manifest, full)


def _verify_listed(manifest: Manifest, full: bool) -> None:
    # The PyTorch weights serve re-export only: an install may leave them out (the wheel does),
    # but when present they are verified like every other file.
    export_only = set((manifest.data.get("weights") or {}).values())
    for name, meta in manifest.data["files"].items():
        f = manifest.root / name
        if name in export_only and not f.exists():
            continue
        if not f.is_file():
            raise ModelDirectoryError(f"{f} is missing from the model directory; re-export or re-copy the model")
        size = f.stat().st_size
        if size != meta["bytes"]:
            raise ModelDirectoryError(f"{f} is {size} bytes but the manifest says {meta['bytes']}: "
                                      "the file is truncated or was replaced; re-export or re-copy the model")
        if full and sha256_file(f) != meta["sha256"].lower():
            raise ModelDirectoryError(f"{f} fails its sha256 checksum: the file is corrupt or was modified; "
                                      "re-export or re-copy the model")
