"""Tessera: compact autoregressive image generation with ONNX Runtime.

One import name, assembled from the repository's top-level folders (setup.cfg `package_dir`):

    tessera.runtime    runtime/    numpy + onnxruntime + pillow, never torch: load a model directory, generate
    tessera.export     export/     PyTorch models -> ONNX graphs + manifest, parity checks (the `export` extra)
    tessera.training   training/   training the shipped digit model (the `train` extra)
    tessera.cli        cli/        the `tessera` command: the only layer that knows both runtime and export
    tessera.models     models/     the shipped model directories (data)
    tessera.examples   examples/   the Tk viewer: python -m tessera.examples.tk_viewer

Layers (tests/test_layers.py checks them): runtime <- export <- training, runtime/export <- cli.
This module imports nothing heavy: `import tessera` stays instant.
"""
from __future__ import annotations

try:
    from importlib.metadata import PackageNotFoundError, version as _version

    __version__ = _version("tessera-ar")
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"

__all__ = ["__version__"]
