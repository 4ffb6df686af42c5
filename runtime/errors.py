"""Errors a user can act on: each message names the problem and the fix."""
from __future__ import annotations


class TesseraError(Exception):
    """Base class of every error the runtime raises on purpose."""


class ModelDirectoryError(TesseraError):
    """The model directory is missing, incomplete, corrupt or of an unknown format."""


class ProviderError(TesseraError):
    """A requested onnxruntime execution provider is not available here."""


class InvalidInputError(TesseraError, ValueError):
    """An argument outside what the model accepts (class id, sampling option, image size ...)."""


class ExtraNotInstalledError(TesseraError):
    """A command needs an optional part of the package that is not installed."""
