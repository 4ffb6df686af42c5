"""Errors a user can act on: each message names the problem and the fix."""
from __future__ import annotations

import numpy as np


class TesseraError(Exception):
    """Base class of every error the runtime raises on purpose."""


class ModelDirectoryError(TesseraError):
    """The model directory is missing, incomplete, corrupt or of an unknown format."""


class NonFiniteOutputError(ModelDirectoryError):
    """A graph produced NaN or infinite values: corrupt weights (checksums cover only tampering after
    export) or an overflow; generating on would return garbage images."""


class ProviderError(TesseraError):
    """A requested onnxruntime execution provider is not available here."""


class InvalidInputError(TesseraError, ValueError):
    """An argument outside what the model accepts (class id, sampling option, image size ...)."""


class ExtraNotInstalledError(TesseraError):
    """A command needs an optional part of the package that is not installed."""


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (or its type's name): what a one-line error quotes
    of a lower layer's multi-line text (onnxruntime's, the operating system's)."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


def check_finite(values: np.ndarray, graph: str) -> np.ndarray:
    """`values`, or a NonFiniteOutputError naming `graph` when any is NaN or infinite. One float
    reduction over a call's output (about 10 us for 8 rows of 16384 logits): cheap beside the call."""
    if not np.isfinite(np.sum(values)):
        raise NonFiniteOutputError(
            f"the {graph} graph produced NaN or infinite values: its weights are corrupt or it overflowed "
            "(an fp16 variant can); re-export the model, or use its fp32 variant")
    return values
