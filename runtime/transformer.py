"""Run the exported transformer graph: named KV-cache tensors in, logits and present KV out."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .manifest import Manifest

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class TransformerRunner:
    """One call = S query tokens at explicit positions over a past of P tokens, under the caller's mask."""

    def __init__(self, session: ort.InferenceSession, manifest: Manifest):
        self.session = session
        t = manifest.transformer
        self.n_layer, self.n_head, self.head_dim = int(t["n_layer"]), int(t["n_head"]), int(t["head_dim"])
        self.vocab_size = int(t["vocab_size"])
        inputs = {i.name: i for i in session.get_inputs()}
        self.past_names = [f"past_key_values.{i}.{kv}" for i in range(self.n_layer) for kv in ("key", "value")]
        self.output_names = ["logits"] + [f"present.{i}.{kv}" for i in range(self.n_layer) for kv in ("key", "value")]
        missing = [n for n in ["input_ids", "position_ids", "attention_mask", *self.past_names] if n not in inputs]
        if missing:
            from .errors import ModelDirectoryError
            raise ModelDirectoryError(f"transformer graph lacks inputs {missing[:4]}; it does not match its manifest. "
                                      "Re-export the model.")
        self.kv_dtype = _ORT_TYPES.get(inputs[self.past_names[0]].type, np.float32)

    def empty_past(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, self.n_head, 0, self.head_dim), self.kv_dtype) for _ in self.past_names]

    def __call__(self, input_ids: np.ndarray, position_ids: np.ndarray, attention_mask: np.ndarray,
                 past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feeds = {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": attention_mask}
        feeds.update(zip(self.past_names, past))
        out = self.session.run(self.output_names, feeds)
        return out[0], out[1:]
