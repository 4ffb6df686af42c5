"""Tessera's runtime: numpy + onnxruntime + pillow, never torch."""
from .errors import ExtraNotInstalledError, InvalidInputError, ModelDirectoryError, ProviderError, TesseraError
from .manifest import MANIFEST_NAME, Manifest, load_manifest
from .config import GenerationConfig
from .decoding import Decoder, DecodeRequest
from .generation import SequentialDecoder
from .parallel import ParallelDecoder
from .pipeline import Pipeline, default_model_dir
from .providers import available_providers, resolve_providers
from .results import CancelToken, GenerationCancelled, GenerationResult, Step
from .sampling import ImageStreams, SamplingConfig

__all__ = [
    "Pipeline", "default_model_dir", "Manifest", "load_manifest", "MANIFEST_NAME", "SamplingConfig",
    "GenerationConfig", "GenerationResult", "Step", "CancelToken", "GenerationCancelled", "ImageStreams",
    "Decoder", "DecodeRequest", "SequentialDecoder", "ParallelDecoder",
    "available_providers", "resolve_providers", "TesseraError", "ModelDirectoryError", "ProviderError",
    "InvalidInputError", "ExtraNotInstalledError",
]
