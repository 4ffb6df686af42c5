"""The export stage's errors: all under `tessera.runtime.errors.TesseraError`, so that an application
(or the `tessera` CLI) catches one base class for every failure it can explain to a user.

    TesseraError
      InvalidInputError        a bad argument (unknown preset, bad KEY=VALUE, missing file ...)
      ExportError              the export could not produce a complete, correct model directory
        ParityError            an exported graph disagrees with the PyTorch model beyond tolerance
        QuantizationError      a graph could not be converted to the requested precision
"""
from __future__ import annotations

from tessera.runtime.errors import InvalidInputError, TesseraError

__all__ = ["TesseraError", "InvalidInputError", "ExportError"]


class ExportError(TesseraError, RuntimeError):
    """The export could not produce a complete, correct model directory."""
