"""Shipped model directories (data only): `default/` is the MNIST digit generator trained here."""
from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL = "default"


def models_root() -> Path:
    return Path(__file__).resolve().parent


def default_model_dir() -> Path:
    return models_root() / DEFAULT_MODEL
