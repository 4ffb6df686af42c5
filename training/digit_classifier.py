"""A small MNIST digit classifier used only for evaluation (accuracy, Fréchet distance features).

Trained on the TRAIN part of the fixed split (`tessera.training.data.mnist_split`), seeded, about a
minute on one CPU core, cached outside the source tree: at the path the caller gives, else
$TESSERA_CACHE/classifier.pt, else ~/.cache/tessera/classifier.pt (XDG_CACHE_HOME respected):

    clf = get_classifier()      # trains once, then loads
    clf.predict(images)    # images [N, 3, 28, 28] in [-1, 1] -> labels [N]
    clf.features(images)   # -> [N, 128] penultimate-layer features (for a Fréchet distance)
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 128


class DigitCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)
        self.drop = nn.Dropout(0.3)

    @staticmethod
    def prep(images: torch.Tensor) -> torch.Tensor:
        """[N, 3, 28, 28] in [-1, 1] -> gray [N, 1, 28, 28] clamped to [-1, 1]."""
        return images.float().mean(1, keepdim=True).clamp(-1, 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv1(self.prep(images))), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.features(images)))


class DigitClassifier:
    """Inference wrapper: batched, no grad, eval mode."""

    def __init__(self, model: DigitCNN, info: dict | None = None):
        self.model = model.eval()
        self.info = info or {}

    @torch.no_grad()
    def logits(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        images = torch.as_tensor(images)
        return torch.cat([self.model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).argmax(1)

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        images = torch.as_tensor(images)
        return torch.cat([self.model.features(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self.predict(images) == torch.as_tensor(labels)).float().mean())


def _shift(x: torch.Tensor, gen: torch.Generator, m: int = 2) -> torch.Tensor:
    b, _, h, w = x.shape
    pad = F.pad(x, (m,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * m + 1, (b,), generator=gen)
    dy = torch.randint(0, 2 * m + 1, (b,), generator=gen)
    return torch.stack([pad[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def train_classifier(data: dict, epochs: int = 15, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
                     threads: int = 1) -> DigitClassifier:
    """Train on data['train_x'/'train_y'] only; reports held-out accuracy in `info`."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DigitCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    x, y = data["train_x"], data["train_y"]
    n_steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=n_steps)
    t0 = time.time()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(_shift(x[idx], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    clf = DigitClassifier(model)
    clf.info = dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, train_time_s=round(time.time() - t0, 1),
                    heldout_accuracy=clf.accuracy(data["test_x"], data["test_y"]),
                    trained_on="train split only (4400 images)")
    return clf


def cache_dir() -> Path:
    """Where Tessera caches things it can rebuild: $TESSERA_CACHE, else $XDG_CACHE_HOME/tessera,
    else ~/.cache/tessera. Never inside the source tree or an installed package."""
    if os.environ.get("TESSERA_CACHE"):
        return Path(os.environ["TESSERA_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "tessera"


def get_classifier(path: str | os.PathLike | None = None, data: dict | None = None, retrain: bool = False,
                   **train_kwargs) -> DigitClassifier:
    """Load the cached classifier at `path` (default: `cache_dir() / "classifier.pt"`), or train it
    (train split only, about a minute) and cache it there."""
    path = str(path) if path is not None else str(cache_dir() / "classifier.pt")
    if os.path.exists(path) and not retrain:
        ck = torch.load(path, weights_only=True)  # tensors and plain values only: no pickled code runs
        model = DigitCNN()
        model.load_state_dict(ck["model"])
        return DigitClassifier(model, ck.get("info"))
    if data is None:
        from .data import mnist_split

        data = mnist_split()
    clf = train_classifier(data, **train_kwargs)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(dict(model=clf.model.state_dict(), info=clf.info), path)
    return clf


def frechet_distance(f1: np.ndarray | torch.Tensor, f2: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets `[N, F]` (FID formula)."""
    from scipy import linalg

    f1, f2 = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():
        eps = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="train/cache the evaluation digit classifier")
    p.add_argument("--path", default=None, help="cache file (default: ~/.cache/tessera/classifier.pt)")
    p.add_argument("--retrain", action="store_true")
    a = p.parse_args()
    c = get_classifier(a.path, retrain=a.retrain)
    print(c.info)
