"""Tessera's runtime: numpy + onnxruntime + pillow, never torch."""
from .errors import ExtraNotInstalledError, InvalidInputError, ModelDirectoryError, ProviderError, TesseraError
from .manifest import MANIFEST_NAME, Manifest, load_manifest
from .pipeline import Pipeline, default_model_dir
from .providers import available_providers, resolve_providers
from .sampling import SamplingConfig

__all__ = [
    "Pipeline", "default_model_dir", "Manifest", "load_manifest", "MANIFEST_NAME", "SamplingConfig",
    "available_providers", "resolve_providers", "TesseraError", "ModelDirectoryError", "ProviderError",
    "InvalidInputError", "ExtraNotInstalledError",
]
