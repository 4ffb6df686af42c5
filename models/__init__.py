"""Shipped model directories (data only): `default/` is the MNIST digit generator trained here;
`anyorder/` the same digits drawn in any order, a whole image in a few transformer calls."""
from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL = "default"
ANYORDER_MODEL = "anyorder"


def models_root() -> Path:
    return Path(__file__).resolve().parent


def default_model_dir() -> Path:
    return models_root() / DEFAULT_MODEL


def anyorder_model_dir() -> Path:
    return models_root() / ANYORDER_MODEL
