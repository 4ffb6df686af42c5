"""Train the class-conditional transformer (preset `GPT-Digits`) on tokenizer codes of MNIST.

    python -m tessera.training.train_transformer --vq runs/vq --out runs/gpt --steps 500 --batch-size 128

The trained tokenizer (`--vq`, a directory with vq.safetensors + config.json) encodes the train
split once, in memory (optionally also `--aug-copies` randomly shifted copies, +-1 pixel, to
widen the data). Training: cross-entropy on `GPT.training_logits` (class dropout from the
config, 0.1 -> the null class for classifier-free guidance), AdamW with weight decay, linear
warmup + cosine decay. Every `--eval-every` steps the token loss on the held-out split is
measured; the weights with the lowest held-out loss are the ones saved (early stopping
against memorisation). Resumable from `out/checkpoint.pt`; writes `out/gpt.safetensors`,
`out/config.json` (GPTConfig.to_dict()) and `out/metrics.json`.

`--order any` trains an any-order model instead (training/anyorder.py: position queries over random
orders); `--init DIR` starts from a trained model's weights (gpt.safetensors in DIR, e.g. the shipped
default), the new query row freshly initialised, so the any-order objective is a fine-tune.
`--vq` also takes a model directory (tessera.json + vq.safetensors), reusing its tokenizer unchanged.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from tessera.export.arpg import ARPG
from tessera.export.config import gpt_preset
from tessera.export.transformer import GPT
from tessera.export.vq import VQModel

from .anyorder import any_order_loss
from .arpg import arpg_loss, arpg_state_from_gpt
from .data import SPLIT_DESCRIPTION, mnist_split
from .train_tokenizer import (augment, load_vq, lr_at, rng_state, save_checkpoint, seed_everything,
                              set_rng_state, write_json)


@torch.no_grad()
def encode_all(vq: VQModel, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """images `[N, 3, H, W]` -> flattened codes `[N, h*w]` (int64)."""
    vq.eval()
    out = [vq.encode_codes(images[i:i + batch_size]).flatten(1) for i in range(0, len(images), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def token_loss(model: GPT | ARPG, codes: torch.Tensor, labels: torch.Tensor, batch_size: int = 300) -> float:
    """Mean teacher-forced cross-entropy (nats/token) in eval mode (no class dropout). Any-order
    models: the query loss at 8 steps over orders fixed by a seed (the same at every check)."""
    was = model.training
    model.eval()
    tot, n = 0.0, 0
    gen = torch.Generator().manual_seed(1234)
    for i in range(0, len(codes), batch_size):
        c, y = codes[i:i + batch_size], labels[i:i + batch_size]
        if model.cfg.order == "any":
            tot += float(any_order_loss(model, c, y, gen, steps=8)) * c.numel()
        elif model.cfg.order == "arpg":
            tot += float(arpg_loss(model, c, y, gen, steps=8)) * c.numel()
        else:
            logits = model.training_logits(c, y)
            tot += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), c.reshape(-1), reduction="sum"))
        n += c.numel()
    model.train(was)
    return tot / n


def load_vq_or_model_dir(path: str) -> VQModel:
    """A tokenizer from a training run directory, or the one a model directory ships (its
    tessera.json tokenizer section + vq.safetensors)."""
    if not os.path.exists(os.path.join(path, "tessera.json")):
        return load_vq(path)
    from tessera.export.build import load_model_dir

    return load_model_dir(path)[1]  # the manifest's canonical fields + its `export` section, checked


def train_transformer(out_dir: str, vq: str | VQModel = "runs/vq", steps: int = 500, batch_size: int = 128,
                      lr: float = 1e-3, seed: int = 0, resume: bool = True, subset: int | None = None,
                      progress: bool = True, preset: str = "GPT-Digits", weight_decay: float = 0.05,
                      warmup: int = 50, ckpt_every: int = 100, eval_every: int = 50, aug_copies: int = 2,
                      threads: int = 1, data: dict | None = None, config_overrides: dict | None = None,
                      order: str = "raster", init: str | None = None, anchor_class: bool = False,
                      query_pos_embed: bool = False, arpg_schedule: str = "arccos") -> dict:
    """Train (or resume) the transformer into `out_dir`; returns the metrics dict (also metrics.json).

    `vq`: tokenizer directory or a VQModel. `subset`: first `subset` train images only (tests).
    `config_overrides`: GPTConfig fields to override on the preset (vocab/grid must match the tokenizer).
    `order`: "raster" (LlamaGen), "any" (position queries) or "arpg" (training/arpg.py); `init`: directory
    whose gpt.safetensors the model starts from (rows it lacks, the query, keep their fresh initialisation;
    an ARPG model is warm-started from a GPT of twice its half depth, `arpg_state_from_gpt`).
    `anchor_class`, `query_pos_embed`: ARPG options (GPTConfig); an ARPG `init` may lack `query_pos`
    (it starts at zero: the fine-tune starts from the model as it was). `arpg_schedule`: the group sizes
    ARPG training cuts its orders into ("arccos" or "cosine", as the decoder's `schedule`).
    """
    from safetensors.torch import save_file
    from tqdm import tqdm

    torch.set_num_threads(threads)
    os.makedirs(out_dir, exist_ok=True)
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    data = data if data is not None else mnist_split()
    tok = load_vq_or_model_dir(vq) if isinstance(vq, str) else vq.eval()
    train_x, train_y = data["train_x"], data["train_y"]
    if subset is not None:
        train_x, train_y = train_x[:subset], train_y[:subset]

    # Encode once, in memory: originals + `aug_copies` shifted copies (fixed by the seed).
    t_enc = time.time()
    aug_gen = torch.Generator().manual_seed(seed + 1)
    codes = [encode_all(tok, train_x)]
    for _ in range(aug_copies):
        codes.append(encode_all(tok, augment(train_x, aug_gen, 1)))
    train_codes, train_labels = torch.cat(codes), train_y.repeat(1 + aug_copies)
    clean_train_codes = codes[0]
    test_codes, test_labels = encode_all(tok, data["test_x"]), data["test_y"]
    t_enc = time.time() - t_enc

    extra = {**({"anchor_class": True} if anchor_class else {}),
             **({"query_pos_embed": True} if query_pos_embed else {})}
    cfg = gpt_preset(preset, **{**(config_overrides or {}), "order": order, **extra})
    if cfg.vocab_size != tok.cfg.codebook_size or cfg.block_size != tok.cfg.grid ** 2:
        raise ValueError(f"transformer preset {preset} (vocab {cfg.vocab_size}, grid {cfg.grid}) does not match "
                         f"the tokenizer (codebook {tok.cfg.codebook_size}, grid {tok.cfg.grid})")
    model = ARPG(cfg) if order == "arpg" else GPT(cfg)
    if init is not None and order == "arpg":
        from safetensors.torch import load_file

        state = load_file(os.path.join(init, "gpt.safetensors"))
        if "embeddings.weight" in state:  # an ARPG model: continue from it
            missing, unexpected = model.load_state_dict(state, strict=False)
            if unexpected or set(missing) - {"query_pos"}:
                raise ValueError(f"--init {init}: weights do not fit (missing {missing}, unexpected {unexpected})")
        else:
            model.load_state_dict(arpg_state_from_gpt(state, model))
    elif init is not None:
        from safetensors.torch import load_file

        missing, unexpected = model.load_state_dict(load_file(os.path.join(init, "gpt.safetensors")), strict=False)
        if unexpected or set(missing) - {"query_embedding"}:
            raise ValueError(f"--init {init}: weights do not fit the preset (missing {missing}, unexpected {unexpected})")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)],
                            lr=lr, betas=(0.9, 0.95))
    hparams = dict(preset=preset, steps=steps, batch_size=batch_size, lr=lr, seed=seed, subset=subset,
                   weight_decay=weight_decay, warmup=warmup, schedule="linear warmup + cosine to 0.1*lr",
                   aug_copies=aug_copies, class_dropout=cfg.class_dropout, dropout=cfg.dropout, threads=threads,
                   eval_every=eval_every, train_sequences=len(train_codes), order=order, init=init,
                   anchor_class=anchor_class, query_pos_embed=query_pos_embed, arpg_schedule=arpg_schedule)

    ckpt_path = os.path.join(out_dir, "checkpoint.pt")
    start, elapsed, history, evals = 0, 0.0, [], []
    best = dict(loss=float("inf"), step=0, state=None)
    if resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        set_rng_state(ck["rng"], gen)
        start, elapsed, history, evals, best = ck["step"], ck["elapsed"], ck["history"], ck["evals"], ck["best"]
    model.train()

    # A class-balanced probe of the (un-augmented) train set, the size of the held-out split.
    train_probe = torch.arange(0, len(clean_train_codes), max(1, len(clean_train_codes) // len(test_codes)))

    def run_eval(step: int) -> None:
        held = token_loss(model, test_codes, test_labels)
        tr = token_loss(model, clean_train_codes[train_probe], train_y[train_probe])
        evals.append(dict(step=step, heldout_loss=round(held, 4), train_loss=round(tr, 4)))
        if held < best["loss"]:
            best.update(loss=held, step=step, state={k: v.clone() for k, v in model.state_dict().items()})

    t0 = time.time()
    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not progress, desc="gpt", mininterval=5)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        idx = torch.randint(0, len(train_codes), (batch_size,), generator=gen)
        c, y = train_codes[idx], train_labels[idx]
        if order == "any":
            loss = any_order_loss(model, c, y, gen)
        elif order == "arpg":
            loss = arpg_loss(model, c, y, gen, schedule=arpg_schedule)
        else:
            logits = model.training_logits(c, y)
            loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), c.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history.append([step, loss.item()])
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            run_eval(step + 1)
            if progress:
                bar.write(f"step {step + 1}: {evals[-1]}")
        if progress:
            bar.set_postfix(loss=f"{history[-1][1]:.4f}", refresh=False)
        if (step + 1) % ckpt_every == 0 or step + 1 == steps:
            save_checkpoint(ckpt_path, model=model.state_dict(), optimizer=opt.state_dict(), step=step + 1,
                            rng=rng_state(gen), elapsed=elapsed + time.time() - t0, history=history,
                            evals=evals, best=best, hparams=hparams)
    bar.close()
    wall = elapsed + time.time() - t0

    final_state = best["state"] if best["state"] is not None else model.state_dict()
    save_file({k: v.contiguous() for k, v in final_state.items()}, os.path.join(out_dir, "gpt.safetensors"))
    write_json(os.path.join(out_dir, "config.json"), cfg.to_dict())
    last = [h[1] for h in history[-50:]]
    metrics = dict(stage="transformer", steps=steps, wall_time_s=round(wall, 1), encode_time_s=round(t_enc, 1),
                   s_per_step=round(wall / max(1, steps), 3),
                   final_loss=float(np.mean(last)) if last else float("nan"),
                   saved_step=best["step"], saved_heldout_loss=best["loss"],
                   final_heldout_loss=evals[-1]["heldout_loss"] if evals else None,
                   final_train_eval_loss=evals[-1]["train_loss"] if evals else None,
                   evals=evals, num_params=model.num_params(), hparams=hparams, split=SPLIT_DESCRIPTION,
                   loss_curve=[[h[0], round(h[1], 4)] for h in history[:: max(1, len(history) // 50)]])
    write_json(os.path.join(out_dir, "metrics.json"), metrics)
    return metrics


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--vq", default="runs/vq", help="trained tokenizer directory (vq.safetensors + config.json)")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="GPT-Digits")
    p.add_argument("--subset", type=int, default=None)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--aug-copies", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--order", choices=("raster", "any", "arpg"), default="raster")
    p.add_argument("--anchor-class", action="store_true", help="ARPG: the class at the rotary origin")
    p.add_argument("--query-pos-embed", action="store_true", help="ARPG: position-aware queries (learned, from 0)")
    p.add_argument("--arpg-schedule", choices=("arccos", "cosine"), default="arccos",
                   help="ARPG: the schedule whose group sizes training uses (the decoder's --schedule)")
    p.add_argument("--init", default=None, help="start from this directory's gpt.safetensors (fine-tune)")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    m = train_transformer(a.out, vq=a.vq, steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                          resume=not a.no_resume, subset=a.subset, progress=not a.no_progress, preset=a.preset,
                          weight_decay=a.weight_decay, warmup=a.warmup, ckpt_every=a.ckpt_every,
                          eval_every=a.eval_every, aug_copies=a.aug_copies, threads=a.threads,
                          order=a.order, init=a.init, anchor_class=a.anchor_class,
                          query_pos_embed=a.query_pos_embed, arpg_schedule=a.arpg_schedule)
    print(json.dumps({k: v for k, v in m.items() if k not in ("loss_curve",)}, indent=2))
    return m


if __name__ == "__main__":
    main()
