"""The VQ tokenizer graphs: codes -> images (decoder) and images -> codes (encoder)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .errors import InvalidInputError
from .manifest import Manifest

SessionFactory = Callable[[Path], object]


class ImageTokenizer:
    """Decoder sessions open at load; the encoder (editing only) opens on first use."""

    def __init__(self, manifest: Manifest, open_session: SessionFactory):
        self.manifest = manifest
        self._open = open_session
        self.decoder = open_session(manifest.graph_path("tokenizer_decoder"))
        self._encoder = None
        tok = manifest.data["tokenizer"]
        self.codebook_size = int(tok["codebook_size"])
        self.downsample = int(tok["downsample"])

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = self._open(self.manifest.graph_path("tokenizer_encoder"))
        return self._encoder

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """codes `[B, h, w]` -> images `[B, 3, h*ds, w*ds]` (float, about [-1, 1])."""
        codes = np.asarray(codes)
        if codes.ndim != 3:
            raise InvalidInputError(f"codes must be [batch, height, width], got shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise InvalidInputError(f"codes must lie in 0..{self.codebook_size - 1}; got {codes.min()}..{codes.max()}")
        return self.decoder.run(None, {"codes": codes.astype(np.int64)})[0]

    def encode(self, images: np.ndarray) -> np.ndarray:
        """images `[B, 3, H, W]` in [-1, 1], H and W multiples of the downsampling -> codes `[B, h, w]`."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[2] % self.downsample or images.shape[3] % self.downsample:
            raise InvalidInputError(f"images must be [batch, 3, H, W] with H, W multiples of {self.downsample}; "
                                    f"got shape {images.shape}")
        return self.encoder.run(None, {"image": images})[0]
