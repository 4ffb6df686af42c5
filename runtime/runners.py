"""A pool of `TransformerRunner`s over one onnxruntime session: how one `Pipeline` serves threads.

An onnxruntime session may `run` from several threads at once; an IO binding and a KV cache may
not be shared. So each generation borrows a runner (its own KV cache, IO binding and logits
buffers) for its whole length and gives it back afterwards; runners are created on demand, up to
`size`, and kept (with their caches) for the next generation. More concurrent generations than
`size` wait for a runner. A single thread always gets the same runner back (last in, first out),
so a single-threaded app keeps exactly one cache, reused between generations.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from .transformer import TransformerRunner


class RunnerPool:
    def __init__(self, first: TransformerRunner, factory: Callable[[], TransformerRunner], size: int):
        self.size = max(1, int(size))
        self._factory = factory
        self._all = [first]
        self._free = [first]
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(self.size)

    @contextmanager
    def borrow(self) -> Iterator[TransformerRunner]:
        """A runner for one generation; its cache is emptied (length 0) when it comes back."""
        self._slots.acquire()
        try:
            with self._lock:
                if self._free:
                    runner = self._free.pop()
                else:
                    runner = self._factory()
                    self._all.append(runner)
            try:
                yield runner
            finally:
                if runner.capacity:
                    runner.truncate(0)  # a stopped generation leaves nothing behind
                with self._lock:
                    self._free.append(runner)
        finally:
            self._slots.release()

    @property
    def runners(self) -> list[TransformerRunner]:
        return list(self._all)

    def release(self) -> None:
        """Free the KV caches of the idle runners (the next generation allocates anew)."""
        with self._lock:
            for r in self._free:
                r.release()


__all__ = ["RunnerPool"]
