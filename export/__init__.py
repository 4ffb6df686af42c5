"""Tessera's PyTorch export stage: model definitions, training, ONNX export (the `export` extra).

Submodules import torch; this package itself does not, so `tessera --help` stays fast.
"""
