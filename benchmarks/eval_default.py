"""Evaluate the shipped MNIST default (tokenizer + class-conditional transformer) on the held-out split.

    python benchmarks/eval_default.py                               # the shipped models/default
    python benchmarks/eval_default.py --vq runs/vq --gpt runs/gpt   # training runs (training/train_*.py)

Reports, on the fixed held-out split of `tessera.training.data` (last 60 images per class):
* tokenizer: reconstruction PSNR (gray, [0, 1] scale), codebook usage, evaluation-classifier
  accuracy on the originals vs on the reconstructions;
* generation, for a guidance-scale sweep (`--per-class` images per class each): conditional
  accuracy per class and overall (share classified as the requested class), Fréchet distance
  to the held-out images in the classifier's feature space, and a memorisation check: each
  generated image's L2 distance (gray pixels in [0, 1], 784-d) to its nearest TRAIN image,
  compared with the same for the held-out real images (generated should be no closer).

Generation goes through a `generate_fn(labels, seed) -> images [N, 3, 28, 28] in [-1, 1]`, so any
backend (this PyTorch reference, an ONNX runtime, ...) can be evaluated with `evaluate_generator`;
`score_images` scores images generated elsewhere (benchmarks/decoders.py: the runtime's decoders).
The CLI default builds it with `torch_generate_fn`: the PyTorch reference loop of the export stage
(`tessera.export.reference.generate_tokens`: LlamaGen's KV-cached loop and guidance, the runtime's sampler).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable

import numpy as np
import torch

from tessera.export.build import load_model_dir, load_run
from tessera.export.reference import generate_tokens
from tessera.export.transformer import GPT
from tessera.export.vq import VQModel
from tessera.runtime.sampling import SamplingConfig
from tessera.training.data import SPLIT_DESCRIPTION, mnist_split, psnr, to_gray01
from tessera.training.digit_classifier import DigitClassifier, frechet_distance, get_classifier
from tessera.training.train_tokenizer import evaluate_vq, load_vq

GenerateFn = Callable[[torch.Tensor, int], torch.Tensor]

# Recommended default sampling settings for the MNIST model (chosen with this script's sweep).
DEFAULT_SAMPLING = dict(guidance_scale=3.0, temperature=1.0, top_k=0, top_p=1.0)


def torch_generate_fn(gpt: GPT, vq: VQModel, guidance_scale: float = 1.0, temperature: float = 1.0,
                      top_k: int = 0, top_p: float = 1.0, batch_size: int = 250) -> GenerateFn:
    """A `generate_fn(labels, seed) -> images [N, 3, 28, 28] in [-1, 1]` over the PyTorch models."""
    gpt.eval()
    vq.eval()

    @torch.no_grad()
    def generate(labels: torch.Tensor, seed: int) -> torch.Tensor:
        labels = np.asarray(labels, dtype=np.int64)
        sampling = SamplingConfig(temperature, top_k, top_p)
        out = []
        for i in range(0, len(labels), batch_size):
            codes = generate_tokens(gpt, labels[i:i + batch_size], guidance_scale, sampling, seed=seed + i)
            out.append(vq.decode_codes(torch.from_numpy(codes)).clamp(-1, 1))
        return torch.cat(out)

    return generate


def nearest_train_distance(images: torch.Tensor, train_flat: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """L2 distance (gray pixels in [0, 1], 784-d) from each image to its nearest train image."""
    q = to_gray01(torch.as_tensor(images).float()).flatten(1)
    return torch.cat([torch.cdist(q[i:i + batch_size], train_flat).min(1).values for i in range(0, len(q), batch_size)])


def _dist_stats(d: torch.Tensor) -> dict:
    d = d.double()
    return dict(median=round(float(d.median()), 4), mean=round(float(d.mean()), 4), min=round(float(d.min()), 4),
                p05=round(float(torch.quantile(d, 0.05)), 4))


def evaluate_generator(generate_fn: GenerateFn, data: dict, clf: DigitClassifier, per_class: int = 50,
                       seed: int = 0, num_classes: int = 10, real_feats: torch.Tensor | None = None,
                       train_flat: torch.Tensor | None = None, heldout_nn: torch.Tensor | None = None) -> dict:
    """Conditional accuracy, Fréchet distance to held-out, memorisation check for one generate_fn."""
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    t0 = time.time()
    images = generate_fn(labels, seed)
    gen_time = time.time() - t0
    pred = clf.predict(images)
    per_cls = {str(c): round(float((pred[labels == c] == c).float().mean()), 4) for c in range(num_classes)}
    real_feats = real_feats if real_feats is not None else clf.features(data["test_x"])
    train_flat = train_flat if train_flat is not None else to_gray01(data["train_x"]).flatten(1)
    heldout_nn = heldout_nn if heldout_nn is not None else nearest_train_distance(data["test_x"], train_flat)
    gen_nn = nearest_train_distance(images, train_flat)
    return dict(
        n_images=len(images), generation_time_s=round(gen_time, 1),
        accuracy=round(float((pred == labels).float().mean()), 4), accuracy_per_class=per_cls,
        frechet_distance=round(frechet_distance(clf.features(images), real_feats), 3),
        nearest_train_l2_generated=_dist_stats(gen_nn), nearest_train_l2_heldout=_dist_stats(heldout_nn),
        generated_not_closer_than_heldout=bool(gen_nn.median() >= heldout_nn.median()),
        mean_pixel_std_across_samples=round(float(to_gray01(images).std(0).mean()), 4),
        _images=images)


def held_out() -> tuple[dict, DigitClassifier]:
    """The held-out split and the evaluation classifier (trained once, cached under ~/.cache/tessera)."""
    data = mnist_split()
    return data, get_classifier(None, data)


def score_images(images: np.ndarray, labels: np.ndarray, data: dict, clf: DigitClassifier,
                 real_feats: torch.Tensor | None = None) -> dict:
    """Conditional accuracy (share classified as the requested class) and Fréchet distance to the held-out
    split, of images [N, 3, 28, 28] in [-1, 1] generated elsewhere (the runtime: tessera.bench.decoders)."""
    images = torch.from_numpy(np.asarray(images, np.float32)).clamp(-1, 1)
    pred = clf.predict(images)
    real_feats = real_feats if real_feats is not None else clf.features(data["test_x"])
    return {"accuracy": float((pred == torch.from_numpy(np.asarray(labels))).float().mean()),
            "frechet": frechet_distance(clf.features(images), real_feats)}


def run_eval(vq: VQModel, generators: dict, clf: DigitClassifier, data: dict | None = None, per_class: int = 50,
             seed: int = 0, log=print) -> dict:
    """Tokenizer metrics + one `evaluate_generator` per entry of `generators` ({name: generate_fn})."""
    data = data if data is not None else mnist_split()
    test_x, test_y = data["test_x"], data["test_y"]
    with torch.no_grad():
        recon = torch.cat([vq.decode_codes(vq.encode_codes(test_x[i:i + 200])).clamp(-1, 1)
                           for i in range(0, len(test_x), 200)])
    real_feats = clf.features(test_x)
    train_flat = to_gray01(data["train_x"]).flatten(1)
    heldout_nn = nearest_train_distance(test_x, train_flat)
    ref_idx = torch.randperm(len(data["train_x"]), generator=torch.Generator().manual_seed(seed))[: len(test_x)]
    tok = evaluate_vq(vq, test_x)
    result = dict(
        split=SPLIT_DESCRIPTION,
        tokenizer=dict(heldout_psnr_db=round(psnr(recon, test_x), 3), heldout_codes_used=tok["codes_used"],
                       train_codes_used=evaluate_vq(vq, data["train_x"])["codes_used"],
                       codebook_size=tok["codebook_size"], heldout_code_perplexity=round(tok["code_perplexity"], 1),
                       classifier_accuracy_originals=round(clf.accuracy(test_x, test_y), 4),
                       classifier_accuracy_reconstructions=round(clf.accuracy(recon, test_y), 4),
                       frechet_distance_reconstructions=round(frechet_distance(clf.features(recon), real_feats), 3)),
        reference=dict(frechet_distance_train_vs_heldout=round(
                           frechet_distance(clf.features(data["train_x"][ref_idx]), real_feats), 3),
                       nearest_train_l2_heldout=_dist_stats(heldout_nn),
                       classifier=clf.info),
        generation={},
    )
    log(json.dumps(result["tokenizer"]))
    for name, fn in generators.items():
        r = evaluate_generator(fn, data, clf, per_class, seed, real_feats=real_feats, train_flat=train_flat,
                               heldout_nn=heldout_nn)
        r.pop("_images")
        result["generation"][str(name)] = r
        log(f"{name}: acc {r['accuracy']} FD {r['frechet_distance']} nn-median gen "
            f"{r['nearest_train_l2_generated']['median']} vs held-out {r['nearest_train_l2_heldout']['median']} "
            f"({r['generation_time_s']} s)")
    return result


def save_grid(images: torch.Tensor, path: str, nrow: int) -> None:
    from PIL import Image

    g = (to_gray01(images) * 255).round().byte().numpy()
    n, h, w = g.shape
    rows = (n + nrow - 1) // nrow
    canvas = np.zeros((rows * h, nrow * w), dtype=np.uint8)
    for i in range(n):
        canvas[(i // nrow) * h:(i // nrow + 1) * h, (i % nrow) * w:(i % nrow + 1) * w] = g[i]
    Image.fromarray(canvas).save(path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, metavar="MODEL_DIR",
                   help="a model directory exported with its PyTorch weights (default: models/default, unless "
                        "--vq and --gpt name training runs)")
    p.add_argument("--vq", default=None, help="a tokenizer training run (config.json + vq.safetensors)")
    p.add_argument("--gpt", default=None, help="a transformer training run (config.json + gpt.safetensors)")
    p.add_argument("--classifier", default=None,
                   help="cached evaluation classifier, trained if absent (default: ~/.cache/tessera/classifier.pt)")
    p.add_argument("--out", default="benchmarks/results/default_eval.json")
    p.add_argument("--scales", default="1.0,2.0,3.0,4.0", help="guidance scales to sweep")
    p.add_argument("--default-scale", type=float, default=DEFAULT_SAMPLING["guidance_scale"])
    p.add_argument("--temperature", type=float, default=DEFAULT_SAMPLING["temperature"])
    p.add_argument("--top-k", type=int, default=DEFAULT_SAMPLING["top_k"])
    p.add_argument("--top-p", type=float, default=DEFAULT_SAMPLING["top_p"])
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--grid", default=None, help="optional PNG path: a sample grid at the default scale (10 per class)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    data = mnist_split()
    if (a.vq is None) != (a.gpt is None) or (a.model and a.vq):
        p.error("give --model MODEL_DIR, or both --vq and --gpt")
    if a.vq:
        vq, gpt, source = load_vq(a.vq), load_run(a.gpt, "gpt"), dict(vq=a.vq, gpt=a.gpt)
    else:
        model = a.model or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models",
                                        "default")
        gpt, vq, _ = load_model_dir(model)
        source = dict(model_dir=a.model or "models/default")
    clf = get_classifier(a.classifier, data=data)
    scales = [float(s) for s in a.scales.split(",") if s]
    samp = dict(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p)
    gens = {f"cfg={s:g}": torch_generate_fn(gpt, vq, guidance_scale=s, **samp) for s in scales}
    t0 = time.time()
    result = {"command": " ".join(["python benchmarks/eval_default.py", *(sys.argv[1:] if argv is None else argv)]),
              **run_eval(vq, gens, clf, data, a.per_class, a.seed)}
    result["sampling"] = dict(samp, guidance_scales=scales, per_class=a.per_class, seed=a.seed,
                              backend="PyTorch reference loop (tessera.export.reference, KV-cached)")
    default_key = f"cfg={a.default_scale:g}"
    result["default"] = dict(guidance_scale=a.default_scale, **samp,
                             metrics=result["generation"].get(default_key))
    result["models"] = dict(**source, vq_params=vq.num_params(), gpt_params=gpt.num_params())
    result["eval_time_s"] = round(time.time() - t0, 1)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    if a.grid:
        fn = torch_generate_fn(gpt, vq, guidance_scale=a.default_scale, **samp)
        save_grid(fn(torch.arange(10).repeat_interleave(10), a.seed + 1), a.grid, nrow=10)
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
