"""The VQ tokenizer graphs: codes -> images (decoder) and images -> codes (encoder); token grids ->
PIL images (`ImageTokenizer.images`: the checks, the memory budget, chunks or tiles, the 8-bit rule)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from .config import check_int
from .errors import InvalidInputError, ModelDirectoryError, check_finite, first_line
from .manifest import Manifest
from .spec import TensorSig, check_session

SessionFactory = Callable[[Path], object]

# Peak memory of a decode, per image, in units of the decoder's widest activation (channels x pixels x
# 4 bytes at its widest level): onnxruntime's CPU arena, im2col and residual buffers, with room to spare
# (benchmarks/results/memory.md, "Decoding many grids at once").
ACTIVATION_FACTOR = 16
# Bytes of activations one decoder call may plan: a larger batch is decoded in chunks of this size, so
# thousands of grids take the memory of a few hundred (a chunk holds at least one image).
DECODE_CHUNK_BYTES = 256 << 20
PIL_IMAGE_OVERHEAD = 4096  # bytes a returned PIL image holds beyond its pixels (object, header; ~1.6 KB measured)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """`[B, C, H, W]` floats in [-1, 1] -> `[B, H, W, C]` uint8 (LlamaGen's mapping)."""
    x = (np.asarray(images, dtype=np.float32) + 1.0) * 127.5 + 0.5
    return np.clip(x, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def to_pil(images: np.ndarray) -> list[Image.Image]:
    arr = to_uint8(images)
    if arr.shape[-1] == 1:
        return [Image.fromarray(a[..., 0], mode="L") for a in arr]
    return [Image.fromarray(a, mode="RGB") for a in arr]


class ImageTokenizer:
    """The decode session opens at load; the encoder (editing only) opens on first use. Sessions come
    from `open_session` (runtime/loaded.py opens them on onnxruntime), so this module imports no
    onnxruntime: `to_uint8` and the image rules serve the previews of a process without it.
    `probe_options()` gives the run options of the load's probe call (quiet: its failure becomes one line)."""

    def __init__(self, manifest: Manifest, open_session: SessionFactory,
                 probe_options: Callable[[], Any] = lambda: None):
        self.manifest = manifest
        self.spec = spec = manifest.spec
        self._open, self._probe_options = open_session, probe_options
        self.codebook_size = spec.transformer.vocab_size  # the decoder's codes are the transformer's
        self.downsample = spec.tokenizer.downsample
        self.precision = spec.graph("tokenizer_decoder").precision  # the variant the manifest records
        self._probed = False
        self._decode_session = self._open_decode_session()  # checked at load: a bad graph fails there, not after a generation
        self._encoder = None

    def _open_decode_session(self):
        session = self._open(self.manifest.graph_path("tokenizer_decoder"))
        self._check("tokenizer_decoder", session)
        if not self._probed:  # once: low_memory reopens the same file
            self._probe_decoder(session)
            self._probed = True
        return session

    def _swapped(self, name: str, problem: str) -> ModelDirectoryError:
        graph = self.spec.graph(name)
        return ModelDirectoryError(
            f"{self.manifest.root.name}: its {name} graph ({graph.file}) does not fit the manifest: {problem}. The "
            "graph file was replaced by another model's or the manifest was edited; re-export the model")

    def _probe_decoder(self, decoder) -> None:
        """One 2x2 decode with the manifest's first and last codes: a decoder made for a smaller codebook
        fails on the last code, one of another downsampling returns another image size. (A larger
        codebook cannot be seen this way: its extra codes are never fed.)"""
        size, ds = self.codebook_size, self.downsample
        codes = np.array([[[0, size - 1], [size // 2, 1 % size]]], np.int64)
        name = self.spec.graph("tokenizer_decoder").inputs[0]
        try:
            image = decoder.run(None, {name: codes}, self._probe_options())[0]
        except Exception as e:  # onnxruntime's own error types
            text = first_line(e, 160)
            raise self._swapped("tokenizer_decoder", f"it fails on codes 0..{size - 1} of the manifest's codebook "
                                f"of {size} ({text})") from None
        want = (1, self.spec.image.channels, 2 * ds, 2 * ds)
        if tuple(image.shape) != want:
            raise self._swapped("tokenizer_decoder", f"a 2x2 grid of codes gives an image of shape {tuple(image.shape)}"
                                f", not {want} ({ds}x downsampling)")

    @property
    def decode_session(self):
        """The session of the `tokenizer_decoder` graph (codes -> images); reopened here after
        `close_decode_session`."""
        session = self._decode_session
        if session is None:
            session = self._decode_session = self._open_decode_session()
        return session

    @decode_session.setter
    def decode_session(self, session) -> None:
        self._decode_session = session

    def close_decode_session(self) -> None:
        """Drop the decode session (its weights and activation arena), e.g. while the transformer
        generates on a memory-limited device (`Pipeline.load(low_memory=True)`)."""
        self._decode_session = None

    @property
    def encoder(self):
        if self._encoder is None:
            encoder = self._open(self.manifest.graph_path("tokenizer_encoder"))
            self._check("tokenizer_encoder", encoder)
            self._encoder = encoder
        return self._encoder

    def _check(self, name: str, session) -> None:
        """The opened graph takes and gives what the manifest says (names, element types, channels);
        else one ModelDirectoryError naming the graph and the mismatch."""
        graph, channels = self.spec.graph(name), self.spec.image.channels
        codes = TensorSig(None, ("tensor(int64)",), (None, None, None))
        if name == "tokenizer_decoder":  # codes [B, h, w] -> image [B, C, H, W]
            ins = [TensorSig(graph.inputs[0], codes.types, codes.dims)]
            outs = [TensorSig(graph.outputs[0], ("tensor(float)", "tensor(float16)"), (None, channels, None, None),
                              (None, "image.channels"))]
        else:  # image [B, C, H, W] (fed as float32) -> codes [B, h, w]
            ins = [TensorSig(graph.inputs[0], ("tensor(float)",), (None, channels, None, None),
                             (None, "image.channels"))]
            outs = [TensorSig(graph.outputs[0], codes.types, codes.dims)]
        check_session(session, graph, ins, outs, self.manifest.root.name)

    def decode_bytes(self, h: int, w: int) -> int:
        """Estimated peak bytes of decoding one h x w grid: ACTIVATION_FACTOR x the widest activation
        (the manifest's `tokenizer.activation_per_pixel`; 512 floats per pixel when it names none),
        plus the float image it returns."""
        pixels = h * w * self.downsample ** 2
        widest = int((self.spec.tokenizer.activation_per_pixel or 512) * pixels)
        return ACTIVATION_FACTOR * widest * 4 + self.spec.image.channels * pixels * 4

    def chunk_size(self, h: int, w: int, limit: int | None = None) -> int:
        """Grids of h x w decoded per decoder call so that one call plans at most `limit` bytes
        (default DECODE_CHUNK_BYTES); at least one."""
        limit = DECODE_CHUNK_BYTES if limit is None else limit
        return max(1, int(limit) // max(1, self.decode_bytes(h, w)))

    def decode(self, codes: np.ndarray, chunk: int | None = None) -> np.ndarray:
        """codes `[B, h, w]` -> images `[B, 3, h*ds, w*ds]` (float, about [-1, 1]), decoded `chunk` grids
        per call (default `chunk_size`: bounded memory whatever B is)."""
        codes = np.asarray(codes)
        if codes.ndim != 3:
            raise InvalidInputError(f"codes must be [batch, height, width], got shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise InvalidInputError(f"codes must lie in 0..{self.codebook_size - 1}; got {codes.min()}..{codes.max()}")
        session = self.decode_session
        name = self.spec.graph("tokenizer_decoder").inputs[0]
        b = codes.shape[0]
        chunk = chunk or self.chunk_size(codes.shape[1], codes.shape[2])
        if b <= chunk:
            return check_finite(session.run(None, {name: codes.astype(np.int64)})[0], "tokenizer_decoder")
        out = None
        for start in range(0, b, chunk):
            part = session.run(None, {name: codes[start:start + chunk].astype(np.int64)})[0]
            check_finite(part, "tokenizer_decoder")
            if out is None:
                out = np.empty((b, *part.shape[1:]), part.dtype)
            out[start:start + part.shape[0]] = part
        return out

    def decode_tiled(self, codes: np.ndarray, tile: int, overlap: int | None = None) -> np.ndarray:
        """Decode a large grid tile by tile (peak memory of one `tile x tile` decode).

        Tiles overlap by `overlap` tokens (default tile // 4); each output pixel comes from the
        tile whose interior it is in, the seams falling mid-overlap, where the conv decoder's
        receptive field has the most context on both sides. Not the untiled image: the decoder's
        GroupNorm statistics and attention see one tile at a time (the error is measured in
        benchmarks/results/memory.md), so tiling is for grids too large to decode at once, never a default.
        """
        codes = np.asarray(codes)
        if codes.ndim != 3:
            raise InvalidInputError(f"codes must be [batch, height, width], got shape {codes.shape}")
        overlap = tile // 4 if overlap is None else overlap
        if tile < 1 or not 0 <= overlap < tile:
            raise InvalidInputError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
        b, h, w = codes.shape
        if h <= tile and w <= tile:
            return self.decode(codes)
        ds = self.downsample
        ys, xs = _tile_starts(h, tile, overlap), _tile_starts(w, tile, overlap)
        out = None
        for iy, y0 in enumerate(ys):
            for ix, x0 in enumerate(xs):
                th, tw = min(tile, h - y0), min(tile, w - x0)
                img = self.decode(codes[:, y0:y0 + th, x0:x0 + tw])
                if out is None:
                    out = np.empty((b, img.shape[1], h * ds, w * ds), img.dtype)
                (a0, a1), (b0, b1) = _owned(ys, iy, th, h), _owned(xs, ix, tw, w)
                out[:, :, a0 * ds:a1 * ds, b0 * ds:b1 * ds] = img[:, :, (a0 - y0) * ds:(a1 - y0) * ds,
                                                                  (b0 - x0) * ds:(b1 - x0) * ds]
        return out

    def images(self, tokens: np.ndarray, tile: int | None = None, memory_budget: int | None = None,
               before_decode: Callable[[], None] | None = None) -> list[Image.Image]:
        """Token grids `[N, h, w]` (or one `[h, w]`) -> PIL images, after checking the codes, the grid
        size and `memory_budget` (bytes: one decoder call's activations plus every image returned);
        `tile` decodes large grids tile by tile. `before_decode` runs once the checks pass (low_memory
        closes the transformer there)."""
        if tile is not None:
            tile = check_int("tile", tile, 1, note=" (token cells per side; None decodes whole grids)")
        codes = np.asarray(tokens) if not isinstance(tokens, np.ndarray) else tokens
        if codes.ndim == 2:
            codes = codes[None]
        if codes.ndim != 3 or codes.size == 0 or not np.issubdtype(codes.dtype, np.integer):
            raise InvalidInputError(f"tokens must be a non-empty integer array [N, h, w] of codes, got "
                                    f"{codes.dtype} {codes.shape}")
        size = self.codebook_size
        if codes.min() < 0 or codes.max() >= size:
            raise InvalidInputError(f"token codes must lie in 0..{size - 1}, got {codes.min()}..{codes.max()}")
        limit = self.spec.layout.rope_grid * 4
        n, h, w = codes.shape
        if h > limit or w > limit:
            raise InvalidInputError(f"a token grid of {h}x{w} is larger than this model decodes (at most {limit} "
                                    "per side)")
        # Memory: one decoder call's activations (a chunk of grids, or of their tiles, with the chunk's
        # whole float images when tiled) plus every image returned.
        pixels = h * w * self.downsample ** 2 * self.spec.image.channels
        per_image = self.decode_bytes(min(tile, h), min(tile, w)) + 4 * pixels if tile else self.decode_bytes(h, w)
        per_result = pixels + PIL_IMAGE_OVERHEAD  # a uint8 PIL image
        budget = memory_budget
        chunk = max(1, (DECODE_CHUNK_BYTES if budget is None else min(DECODE_CHUNK_BYTES, budget)) // per_image)
        if budget is not None and min(n, chunk) * per_image + n * per_result > budget:
            if per_image + per_result > budget:
                smaller = max(1, (tile or min(h, w)) // 2)
                raise InvalidInputError(
                    f"decoding one grid of {h}x{w}{f' in tiles of {tile}' if tile else ''} would need about "
                    f"{(per_image + per_result) / 2**30:.2f} GiB, over the memory budget of {budget / 2**30:.2f} GiB; "
                    f"decode it in smaller tiles (tile={smaller}) or raise the budget with "
                    "Pipeline.load(..., memory_budget=BYTES) / pipe.memory_budget = BYTES")
            most = max(1, (budget - chunk * per_image) // per_result)
            raise InvalidInputError(
                f"decoding {n} grids of {h}x{w} would return about {n * per_result / 2**30:.2f} GiB of images, "
                f"over the memory budget of {budget / 2**30:.2f} GiB; decode at most {most} grids per call, or "
                "raise the budget with Pipeline.load(..., memory_budget=BYTES) / pipe.memory_budget = BYTES")
        if before_decode is not None:
            before_decode()
        images: list[Image.Image] = []
        for start in range(0, n, chunk):
            part = codes[start:start + chunk]
            arr = self.decode_tiled(part, tile) if tile else self.decode(part, chunk=len(part))
            images.extend(to_pil(arr))
            del arr
        return images

    def encode(self, images: np.ndarray) -> np.ndarray:
        """images `[B, 3, H, W]` in [-1, 1], H and W multiples of the downsampling -> codes `[B, h, w]`."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[2] % self.downsample or images.shape[3] % self.downsample:
            raise InvalidInputError(f"images must be [batch, 3, H, W] with H, W multiples of {self.downsample}; "
                                    f"got shape {images.shape}")
        encoder = self.encoder
        codes = encoder.run(None, {self.spec.graph("tokenizer_encoder").inputs[0]: images})[0]
        want = (images.shape[0], images.shape[2] // self.downsample, images.shape[3] // self.downsample)
        if tuple(codes.shape) != want:
            raise self._swapped("tokenizer_encoder", f"images of {images.shape[2]}x{images.shape[3]} px give codes of "
                                f"shape {tuple(codes.shape)}, not {want} ({self.downsample}x downsampling)")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise self._swapped("tokenizer_encoder", f"it gives codes {codes.min()}..{codes.max()}, outside the "
                                f"manifest's codebook of {self.codebook_size}")
        return codes


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile - overlap))
    return starts + [size - tile]


def _owned(starts: list[int], i: int, length: int, size: int) -> tuple[int, int]:
    """The token range tile i writes: from mid-overlap with the previous tile to mid-overlap with the next."""
    lo = 0 if i == 0 else (starts[i] + starts[i - 1] + length) // 2
    hi = size if i == len(starts) - 1 else (starts[i + 1] + starts[i] + length) // 2
    return lo, hi
