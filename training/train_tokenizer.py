"""Train the VQ tokenizer (preset `VQ-Digits`) on the MNIST train split.

    python -m tessera.training.train_tokenizer --out runs/vq --steps 800 --batch-size 64

Reproducible (seeded torch / numpy / python RNGs, seeded batch order), resumable: every
`--ckpt-every` steps `out/checkpoint.pt` holds model + optimizer + step + RNG states, and a run
started again with the same `--out` continues from it. At the end it writes
`out/vq.safetensors`, `out/config.json` (VQConfig.to_dict()) and `out/metrics.json`.

Loss: L1 + L2 reconstruction + VQ (codebook + commitment) loss. Codes unused over the last
`--reinit-every` steps are re-initialised from encoder outputs of the current batch, which
keeps the 512-entry codebook in use.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from tessera.export.config import vq_preset
from tessera.export.vq import VQModel

from .data import SPLIT_DESCRIPTION, mnist_split, psnr


# --- helpers shared with train_transformer ------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(gen: torch.Generator) -> dict:
    return dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate(),
                batches=gen.get_state())


def set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    gen.set_state(state["batches"])


def lr_at(step: int, steps: int, lr: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warmup then cosine decay to `min_ratio * lr`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def save_checkpoint(path: str, **state) -> None:
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def write_json(path: str, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def load_vq(path: str) -> VQModel:
    """A trained tokenizer from a directory holding vq.safetensors + config.json."""
    from tessera.export.build import load_run

    return load_run(path, "vq")


def augment(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Light augmentation: random integer translation by up to `max_shift` pixels (background fill)."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    out = torch.empty_like(x)
    for i in range(b):
        out[i] = pad[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out


@torch.no_grad()
def evaluate_vq(model: VQModel, images: torch.Tensor, batch_size: int = 200) -> dict:
    """Held-out reconstruction PSNR (gray, [0,1]) and codebook usage."""
    was = model.training
    model.eval()
    recons, codes = [], []
    for i in range(0, len(images), batch_size):
        c = model.encode_codes(images[i:i + batch_size])
        codes.append(c)
        recons.append(model.decode_codes(c).clamp(-1, 1))
    model.train(was)
    recon, codes = torch.cat(recons), torch.cat(codes)
    counts = torch.bincount(codes.flatten(), minlength=model.cfg.codebook_size).float()
    p = counts / counts.sum()
    perplexity = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    return dict(psnr=psnr(recon, images), codes_used=int((counts > 0).sum()),
                codebook_size=model.cfg.codebook_size, code_perplexity=perplexity,
                mse_01=float(((recon - images) / 2).pow(2).mean()))


# --- training -------------------------------------------------------------------------
def train_tokenizer(out_dir: str, steps: int = 800, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                    resume: bool = True, subset: int | None = None, progress: bool = True,
                    preset: str = "VQ-Digits", weight_decay: float = 1e-4, warmup: int = 50,
                    ckpt_every: int = 100, reinit_every: int = 50, shift: int = 1, threads: int = 1,
                    evaluate: bool = True, data: dict | None = None) -> dict:
    """Train (or resume) a tokenizer into `out_dir`; returns the metrics dict (also written to metrics.json).

    `subset`: use only the first `subset` training images (tests). `data`: a `mnist_split()` dict
    to reuse (default: loaded here).
    """
    from safetensors.torch import save_file
    from tqdm import tqdm

    torch.set_num_threads(threads)
    os.makedirs(out_dir, exist_ok=True)
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    data = data if data is not None else mnist_split()
    train_x = data["train_x"] if subset is None else data["train_x"][:subset]
    cfg = vq_preset(preset)
    model = VQModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    hparams = dict(preset=preset, steps=steps, batch_size=batch_size, lr=lr, seed=seed, subset=subset,
                   weight_decay=weight_decay, warmup=warmup, reinit_every=reinit_every, shift=shift,
                   threads=threads, loss="L1 + L2 reconstruction + VQ (beta %.2f)" % cfg.commit_beta)

    ckpt_path = os.path.join(out_dir, "checkpoint.pt")
    start, elapsed, history = 0, 0.0, []
    usage = torch.zeros(cfg.codebook_size)
    n_reinit = 0
    if resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        set_rng_state(ck["rng"], gen)
        start, elapsed, history = ck["step"], ck["elapsed"], ck["history"]
        usage, n_reinit = ck["usage"], ck["n_reinit"]
    model.train()

    t0 = time.time()
    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not progress, desc="vq", mininterval=5)
    loss_val = float("nan")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        idx = torch.randint(0, len(train_x), (batch_size,), generator=gen)
        x = augment(train_x[idx], gen, shift)
        z = model.quant_conv(model.encoder(x))
        zq, vq_loss, codes = model.quantize(z)
        recon = model.decoder(model.post_quant_conv(zq))
        rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        loss = rec + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_val = loss.item()
        history.append([step, loss_val, rec.item()])
        usage += torch.bincount(codes.flatten(), minlength=cfg.codebook_size).float()
        if reinit_every and (step + 1) % reinit_every == 0 and step + 1 < steps:
            dead = (usage == 0).nonzero().flatten()
            if len(dead):
                with torch.no_grad():
                    zf = z.detach().permute(0, 2, 3, 1).reshape(-1, cfg.codebook_dim)
                    pick = torch.randint(0, len(zf), (len(dead),), generator=gen)
                    model.quantize.embedding.weight.data[dead] = F.normalize(zf[pick], dim=-1)
                n_reinit += len(dead)
            usage.zero_()
        if progress:
            bar.set_postfix(loss=f"{loss_val:.4f}", rec=f"{rec.item():.4f}", refresh=False)
        if (step + 1) % ckpt_every == 0 or step + 1 == steps:
            save_checkpoint(ckpt_path, model=model.state_dict(), optimizer=opt.state_dict(), step=step + 1,
                            rng=rng_state(gen), elapsed=elapsed + time.time() - t0, history=history,
                            usage=usage, n_reinit=n_reinit, hparams=hparams)
    bar.close()
    wall = elapsed + time.time() - t0

    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out_dir, "vq.safetensors"))
    write_json(os.path.join(out_dir, "config.json"), cfg.to_dict())
    last = [h[1] for h in history[-50:]]
    metrics = dict(stage="tokenizer", steps=steps, wall_time_s=round(wall, 1),
                   s_per_step=round(wall / max(1, steps), 3),
                   final_loss=float(np.mean(last)) if last else float("nan"),
                   final_recon_loss=float(np.mean([h[2] for h in history[-50:]])) if history else float("nan"),
                   dead_codes_reinitialised=n_reinit, num_params=model.num_params(), hparams=hparams,
                   split=SPLIT_DESCRIPTION)
    if evaluate:
        metrics["heldout"] = evaluate_vq(model, data["test_x"])
        metrics["train_usage"] = evaluate_vq(model, train_x[:2000])["codes_used"]
    metrics["loss_curve"] = [[h[0], round(h[1], 5)] for h in history[:: max(1, len(history) // 50)]]
    write_json(os.path.join(out_dir, "metrics.json"), metrics)
    return metrics


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (checkpoint, weights, config, metrics)")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="VQ-Digits")
    p.add_argument("--subset", type=int, default=None)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--reinit-every", type=int, default=50, help="re-init codes unused for this many steps (0: off)")
    p.add_argument("--shift", type=int, default=1, help="max random translation (pixels); 0 disables augmentation")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    m = train_tokenizer(a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                        resume=not a.no_resume, subset=a.subset, progress=not a.no_progress, preset=a.preset,
                        weight_decay=a.weight_decay, warmup=a.warmup, ckpt_every=a.ckpt_every,
                        reinit_every=a.reinit_every, shift=a.shift, threads=a.threads)
    print(json.dumps({k: v for k, v in m.items() if k != "loss_curve"}, indent=2))
    return m


if __name__ == "__main__":
    main()
