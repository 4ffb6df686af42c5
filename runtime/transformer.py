"""Run the exported transformer graph and own its KV cache for one generation.

Two cache layouts, named by the manifest (`graphs.transformer.kv_cache`):

* "shared-buffer" (the fused graph): one preallocated `[batch, heads, capacity, head_dim]`
  buffer per layer and K/V, bound through IO binding as both `past_key_values.*` and
  `present.*`, so each step writes only its new entries in place. Logits land in a
  preallocated array. No per-step allocation or copy of the cache. The buffers outlive a
  generation: the next one with no more rows and tokens reuses them (on the CPU a smaller
  batch takes the first rows of the cache), since attention reads only the first `length`
  entries (the graph takes lengths from the mask). A fresh GPT-B cache at batch 8 (75 MB)
  cost ~45 ms of page faults per image. `release()` frees them.
* "concat" (the portable, traced graph): `present = concat(past, new)`, fed back each step.

Callers see one interface: `start(batch, capacity)`, then `runner(ids, positions, mask)` per
call, where `mask` is `[batch, seq, length + seq]` and the new tokens are appended to the cache.
"""
from __future__ import annotations

import numpy as np

from .backend import ort
from .compat import rows_batch_over_past
from .errors import InvalidInputError, ModelDirectoryError, check_finite
from .manifest import Manifest
from .spec import TensorSig, check_session

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# Providers whose buffers live on a device ORT can allocate on, and the KV types their attention kernel
# takes; others keep the cache in host memory.
_DEVICE_OF_PROVIDER = {"CUDAExecutionProvider": ("cuda", (np.float16,))}


def kv_device(provider: str, kv_dtype) -> str:
    """Where a shared-buffer cache lives: on the device only when the provider's own attention kernel
    reads it. CUDA's GroupQueryAttention takes fp16/bf16 only, so an fp32 graph's attention runs on the
    CPU; a device cache would reach that kernel as a copy, past and present would no longer be one buffer,
    and the kernel would read the whole capacity as past (wrong logits, no error: seen on an H200 with
    onnxruntime-gpu 1.31.1, benchmarks/results/gpu.md). In host memory the CPU kernel updates it in place."""
    device, kv_types = _DEVICE_OF_PROVIDER.get(provider, ("cpu", ()))
    return device if np.dtype(kv_dtype) in [np.dtype(t) for t in kv_types] else "cpu"


_FLOAT_TYPES = tuple(_ORT_TYPES)


def check_transformer_graph(session, spec, model: str) -> None:
    """The opened transformer graph takes and gives what the manifest says: the `io` names, int64 ids
    and positions, a bool mask, float KV tensors `[batch, n_kv_head, length, head_dim]` and logits
    `[batch, sequence, vocab_size]`; else one ModelDirectoryError naming the graph and the mismatch."""
    t, io = spec.transformer, spec.io
    kv_dims = (None, t.n_kv_head, None, t.head_dim)
    kv_fields = (None, "transformer.n_kv_head", None, "transformer.dim / transformer.n_head")
    ints = ("tensor(int64)",)
    layers = spec.kv_layers
    inputs = [TensorSig(io.input_ids, ints, (None, None)), TensorSig(io.position_ids, ints, (None, None))]
    if io.query_positions is not None:
        inputs.append(TensorSig(io.query_positions, ints, (None, None)))
    inputs.append(TensorSig(io.attention_mask, ("tensor(bool)",), (None, None, None)))
    inputs += [TensorSig(n, _FLOAT_TYPES, kv_dims, kv_fields) for n in io.past_names(layers)]
    outputs = [TensorSig(io.logits, _FLOAT_TYPES, (None, None, t.vocab_size), (None, None, "transformer.vocab_size"))]
    outputs += [TensorSig(n, _FLOAT_TYPES, kv_dims, kv_fields) for n in io.present_names(layers)]
    graph = spec.graph("transformer")
    check_session(session, graph, inputs, outputs, model)
    if graph.kv_cache == "shared-buffer":  # past and present share one buffer: one element type
        types = {a.type for a in [*session.get_inputs(), *session.get_outputs()]
                 if a.name in set(io.past_names(layers)) | set(io.present_names(layers))}
        if len(types) > 1:
            raise ModelDirectoryError(f"{model}: its transformer graph ({graph.file}) does not match the manifest: "
                                      f"its past and present KV tensors differ in type ({sorted(types)}) but "
                                      "graphs.transformer.kv_cache is 'shared-buffer'; re-export the model")


class TransformerRunner:
    """One call = S query tokens at explicit positions over the cached past, under the caller's mask.

    ARPG graphs (`io.query_positions`): a call feeds S context tokens (cached) and Q mask-token queries
    at `query_positions` (never cached); `mask` is `[batch, S + Q, length + S]` and the logits are the
    queries' `[batch, Q, V]`. Called without `query_positions` (the self-test probe), the trailing
    mask-token entries of `input_ids` are the queries: they see everything, the context its mask rows."""

    def __init__(self, session: ort.InferenceSession, manifest: Manifest):
        self.session = session
        spec = manifest.spec
        self.spec = t = spec.transformer  # the model's dimensions, read where they are used
        graph = spec.graph("transformer")
        self.shared = graph.kv_cache == "shared-buffer"
        # The fused graph's broadest form takes several tokens over a past one row per call (compat.py).
        self.rows_together = rows_batch_over_past(graph)
        io = self.names = spec.io  # the graph's input/output names (manifest: graphs.transformer.io)
        self.past_names, self.present_names = io.past_names(spec.kv_layers), io.present_names(spec.kv_layers)
        self.mask_token = spec.layout.mask_token_id  # ARPG: queries are this id's embedding
        check_transformer_graph(session, spec, manifest.root.name)
        inputs = {i.name: i for i in session.get_inputs()}
        self.kv_dtype = _ORT_TYPES.get(inputs[self.past_names[0]].type, np.float32)
        outputs = {o.name: o for o in session.get_outputs()}
        self.logits_dtype = _ORT_TYPES.get(outputs[io.logits].type, np.float32)
        self.device = kv_device(session.get_providers()[0], self.kv_dtype)
        self.run_options = None  # an ort.RunOptions for every call (the load's probe: quiet_run_options())
        self.length = 0
        self.capacity = 0
        self.token_rows = 0  # token evaluations since start(): rows x tokens, summed over calls
        self.kv: list[ort.OrtValue] = []  # bound to the session for the current batch
        self._host_kv: list[np.ndarray] = []  # CPU: the allocation behind kv (may hold more rows)

    @property
    def vocab_size(self) -> int:
        """The logits' last axis."""
        return self.spec.vocab_size

    # --- cache lifecycle ---------------------------------------------------------------------
    def start(self, batch: int, capacity: int) -> None:
        """Begin a generation of `batch` rows that will hold at most `capacity` tokens."""
        self.length, self.capacity, self.batch, self.token_rows = 0, capacity, batch, 0
        if not self.shared:
            self.past = [np.zeros((batch, self.spec.n_kv_head, 0, self.spec.head_dim), self.kv_dtype) for _ in self.past_names]
            return
        if self.kv and self.kv[0].shape()[0] == batch and self.kv[0].shape()[2] >= capacity:
            return  # reuse the cache, the binding and the logits buffers of the last generation
        shape = [batch, self.spec.n_kv_head, capacity, self.spec.head_dim]
        if self.device == "cpu":
            host = self._host_kv
            if not (host and host[0].shape[0] >= batch and host[0].shape[2] >= capacity):
                self._free_buffers()  # before allocating: never two caches at once
                host = self._host_kv = [np.zeros(shape, self.kv_dtype) for _ in self.past_names]
            # A smaller batch takes the first rows of a larger cache: still one contiguous block.
            self.kv = [ort.OrtValue.ortvalue_from_numpy(a[:batch]) for a in host]
        else:
            self._free_buffers()
            self.kv = [ort.OrtValue.ortvalue_from_shape_and_type(shape, self.kv_dtype, self.device, 0)
                       for _ in self.past_names]
        self.io = self.session.io_binding()
        for past, present, value in zip(self.past_names, self.present_names, self.kv):
            self.io.bind_ortvalue_input(past, value)
            self.io.bind_ortvalue_output(present, value)
        self._logits = {}  # seq length -> (host array, OrtValue) reused across steps
        self._rows = []  # per row: an IO binding of that row's slice of the cache (bound on first use)

    def release(self) -> None:
        """Free the KV cache and the buffers bound to the session (the next `start` allocates anew)."""
        self._free_buffers()
        self.length = self.capacity = 0

    def _free_buffers(self) -> None:
        self.kv, self._host_kv, self._logits, self.io, self._rows = [], [], {}, None, []

    def truncate(self, length: int) -> None:
        """Forget cached tokens past `length` (speculative decoding rolls back this way)."""
        if not 0 <= length <= self.length:
            raise InvalidInputError(f"cannot truncate a cache of {self.length} tokens to {length}")
        if not self.shared:
            self.past = [p[:, :, :length] for p in self.past]
        self.length = length

    # --- one call ------------------------------------------------------------------------------
    def __call__(self, input_ids: np.ndarray, position_ids: np.ndarray, attention_mask: np.ndarray,
                 query_positions: np.ndarray | None = None) -> np.ndarray:
        """Append `input_ids [B, S]` at `position_ids` and return logits `[B, S, V]` (a view reused
        by the next call of the same S: copy it to keep it). ARPG graphs: see the class doc."""
        if self.names.query_positions is not None:
            return self._run_queries(input_ids, position_ids, attention_mask, query_positions)
        if query_positions is not None:
            raise InvalidInputError("query_positions are an input of ARPG graphs only")
        s = input_ids.shape[1]
        if self.capacity == 0:
            raise InvalidInputError("no KV cache: call start(batch, capacity) before running the transformer")
        if self.length + s > self.capacity:
            raise InvalidInputError(f"KV cache full: {self.length} + {s} tokens > capacity {self.capacity}")
        self.token_rows += input_ids.shape[0] * s
        if self.shared:
            if s > 1 and self.length and self.batch > 1 and not self.rows_together:
                # onnxruntime refuses this call whole on the 1.22 form: split it the way that makes fewer runs
                # (each run streams every weight once; both splits give the whole call's logits)
                if self.batch < s:
                    logits = self._run_row_by_row(input_ids, position_ids, attention_mask)
                else:
                    logits = self._run_token_by_token(input_ids, position_ids, attention_mask)
            else:
                logits = self._run_shared(input_ids, position_ids, attention_mask)
        else:
            names = self.names
            feeds = {names.input_ids: input_ids, names.position_ids: position_ids,
                     names.attention_mask: attention_mask}
            feeds.update(zip(self.past_names, self.past))
            out = self.session.run(None, feeds, self.run_options)
            logits, self.past = out[0], out[1:]
        self.length += s
        return check_finite(logits, "transformer")

    def _run_queries(self, input_ids, position_ids, attention_mask, query_positions) -> np.ndarray:
        if query_positions is None:  # the probe: trailing mask tokens are the queries
            b, total = input_ids.shape
            q = int(np.cumprod((input_ids[0] == self.mask_token)[::-1]).sum())  # trailing mask tokens
            if q == 0:
                raise InvalidInputError("an ARPG call needs at least one query (query_positions, or trailing "
                                        f"mask tokens {self.mask_token} in input_ids)")
            s = total - q
            query_positions = position_ids[:, s:]
            input_ids, position_ids = input_ids[:, :s], position_ids[:, :s]
            mask = np.ones((b, total, self.length + s), bool)
            mask[:, :s] = attention_mask[:, :s, :self.length + s]
            attention_mask = mask
        s, q = input_ids.shape[1], query_positions.shape[1]
        if self.capacity == 0:
            raise InvalidInputError("no KV cache: call start(batch, capacity) before running the transformer")
        if self.length + s > self.capacity:
            raise InvalidInputError(f"KV cache full: {self.length} + {s} tokens > capacity {self.capacity}")
        self.token_rows += input_ids.shape[0] * (s + q)
        names = self.names
        feeds = {names.input_ids: np.ascontiguousarray(input_ids), names.position_ids: np.ascontiguousarray(position_ids),
                 names.query_positions: np.ascontiguousarray(query_positions),
                 names.attention_mask: np.ascontiguousarray(attention_mask)}
        feeds.update(zip(self.past_names, self.past))
        out = self.session.run(None, feeds, self.run_options)
        logits, self.past = out[0], out[1:]
        self.length += s
        return check_finite(logits, "transformer")

    def _run_row_by_row(self, input_ids, position_ids, attention_mask) -> np.ndarray:
        """Several tokens over a past, one row per call, each row's tokens in one call (the fused 1.22
        form refuses them whole at batch > 1): each row's call binds that row's slice of the cache and
        of the logits, so the result is the whole call's and nothing is copied. The cheaper split when a
        call has more tokens than rows."""
        s = input_ids.shape[1]
        if s not in self._logits:
            host = np.empty((self.batch, s, self.vocab_size), self.logits_dtype)
            self._logits[s] = (host, ort.OrtValue.ortvalue_from_numpy(host))
        host = self._logits[s][0]
        names = self.names
        for b, io in enumerate(self._row_bindings()):
            row = np.s_[b:b + 1]  # a leading-axis slice of a C-contiguous array: contiguous, no copy
            io.bind_cpu_input(names.input_ids, input_ids[row])
            io.bind_cpu_input(names.position_ids, position_ids[row])
            io.bind_cpu_input(names.attention_mask, attention_mask[row])
            io.bind_output(names.logits, "cpu", 0, self.logits_dtype, [1, s, self.vocab_size],
                           host[row].ctypes.data)
            self.session.run_with_iobinding(io, self.run_options)
        return host

    def _run_token_by_token(self, input_ids, position_ids, attention_mask) -> np.ndarray:
        """Several tokens over a past, one token per call, all rows together: token j sees the past and
        tokens < j, which is what the whole call gives it (queries are causal in call order); the mask
        can only hide more. The cheaper split when a call has no more tokens than rows."""
        b, s = input_ids.shape
        key = ("by token", s)
        if key not in self._logits:
            self._logits[key] = (np.empty((b, s, self.vocab_size), self.logits_dtype), None)
        out, past = self._logits[key][0], self.length
        for j in range(s):
            column = np.s_[:, j:j + 1]
            out[:, j] = self._run_shared(np.ascontiguousarray(input_ids[column]),
                                         np.ascontiguousarray(position_ids[column]),
                                         np.ascontiguousarray(attention_mask[:, j:j + 1, :past + j + 1]))[:, 0]
            self.length += 1
        self.length = past  # __call__ counts the call's tokens
        return out

    def _row_bindings(self) -> list:
        """One IO binding per row whose past and present are that row's slice of the shared cache
        (made on first use in a generation's buffers, then reused)."""
        if not self._rows:
            shape = [1, self.spec.n_kv_head, self.kv[0].shape()[2], self.spec.head_dim]
            row_bytes = int(np.prod(shape)) * np.dtype(self.kv_dtype).itemsize
            for b in range(self.batch):
                io = self.session.io_binding()
                for past, present, value in zip(self.past_names, self.present_names, self.kv):
                    ptr = value.data_ptr() + b * row_bytes
                    io.bind_input(past, self.device, 0, self.kv_dtype, shape, ptr)
                    io.bind_output(present, self.device, 0, self.kv_dtype, shape, ptr)
                self._rows.append(io)
        return self._rows

    def _run_shared(self, input_ids, position_ids, attention_mask) -> np.ndarray:
        io = self.io
        names = self.names
        io.bind_cpu_input(names.input_ids, input_ids)
        io.bind_cpu_input(names.position_ids, position_ids)
        io.bind_cpu_input(names.attention_mask, attention_mask)
        s = input_ids.shape[1]
        if s not in self._logits:
            host = np.empty((self.batch, s, self.vocab_size), self.logits_dtype)
            self._logits[s] = (host, ort.OrtValue.ortvalue_from_numpy(host))
        host, value = self._logits[s]
        io.bind_ortvalue_output(names.logits, value)
        self.session.run_with_iobinding(io, self.run_options)
        return host
