"""The one cache key for exported model directories, used by every benchmark that exports.

An export depends on its arguments, on the export stage's code (graph builder, quantizer), on the
onnxruntime that quantized it, and on its source (a model directory or weight files): the key hashes
all four, so a change to any of them is never measured through a stale export.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Iterable, Sequence

from tessera.runtime.errors import TesseraError


def export_sources() -> list[Path]:
    """The export stage's source files (found without importing it: it needs torch)."""
    spec = find_spec("tessera.export")
    roots = list(spec.submodule_search_locations or []) if spec else []
    return sorted(p for root in roots for p in Path(root).rglob("*.py") if "__pycache__" not in p.parts)


def source_fingerprint(path: Path) -> str:
    """A source's identity, cheaply: a directory's manifest text and each file's name and size; a file's
    name, size and modification time (hashing gigabytes of weights on every run would cost more)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        manifest = path / "tessera.json"
        if manifest.is_file():
            h.update(manifest.read_bytes())
        for f in sorted(p for p in path.iterdir() if p.is_file()):
            h.update(f"{f.name}\0{f.stat().st_size}\n".encode())
    elif path.is_file():
        st = path.stat()
        h.update(f"{path.name}\0{st.st_size}\0{int(st.st_mtime)}".encode())
    else:
        h.update(f"missing:{path}".encode())
    return h.hexdigest()


def cache_key(args: Sequence[str], sources: Iterable[Path] = (), code: Iterable[Path] | None = None) -> str:
    """12 hex digits naming one export: its arguments, its sources, the export code, onnxruntime."""
    h = hashlib.sha256(json.dumps(list(args)).encode())
    for src in sources:
        h.update(source_fingerprint(src).encode())
    for f in (export_sources() if code is None else code):
        h.update(f.name.encode() + b"\0" + Path(f).read_bytes())
    try:
        h.update(metadata.version("onnxruntime").encode())
    except metadata.PackageNotFoundError:
        pass
    return h.hexdigest()[:12]


QUANT_ALL = ("fp32", "fp16", "int8", "int4")
# The benchmarks' real-size workload: LlamaGen GPT-B 256px (16x16 tokens, vocab 16384) with random weights and a
# tokenizer shrunk to fit (VQ-Tiny at 64 px, 16384 codes). Scripts that export it with the same arguments into
# the same cache share one export.
GPT_B_RANDOM = ("--gpt", "GPT-B", "--vq", "VQ-Tiny", "--vq-set", "image_size=64", "--vq-set", "codebook_size=16384",
                "--random-weights")


def _outputs(base: Path, args: Sequence[str]) -> list[Path]:
    """The directories an export writes: BASE, or BASE-fp32 ... BASE-int4 for `--quant all`."""
    quant_all = any(a == "all" and i and args[i - 1] == "--quant" for i, a in enumerate(args)) or "--quant=all" in args
    return [base.with_name(f"{base.name}-{v}") for v in QUANT_ALL] if quant_all else [base]


def cached_export(cache: Path, name: str, args: Sequence[str], sources: Iterable[Path] = (), log=print) -> Path:
    """`tessera export ARGS --out CACHE/NAME-KEY` unless its output is already complete (with `--quant all`
    the four siblings CACHE/NAME-KEY-fp32 ...); built under a temporary name and renamed into place, so the
    cache never holds half an export. Returns CACHE/NAME-KEY."""
    sources = list(sources)
    out = Path(cache) / f"{name}-{cache_key(args, sources)}"
    if all((d / "tessera.json").is_file() for d in _outputs(out, args)):
        return out
    tmp = out.with_name(f".{out.name}.partial")
    for d in _outputs(tmp, args):
        shutil.rmtree(d, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    log(f"exporting {name} -> {out}")
    cmd = [sys.executable, "-m", "tessera.cli", "export", *args, "--out", str(tmp), "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise TesseraError(f"export of {name} failed: {last[0]}")
    for made, final in zip(_outputs(tmp, args), _outputs(out, args)):
        shutil.rmtree(final, ignore_errors=True)
        made.rename(final)
    return out
