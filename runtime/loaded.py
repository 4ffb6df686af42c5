"""`LoadedModel`: a model directory's graphs opened on onnxruntime and proven to run, then lent out.

The platform side of `Pipeline` (runtime/pipeline.py keeps the generation API): open each graph
with the caller's providers and session options (after `compat.check_loadable`, so an old
onnxruntime fails with one line before any session opens), run the transformer's self-test probe
(runtime/self_test.py), pool the transformer runners (runtime/runners.py) and lend one per
generation with its cancel state, and, under `low_memory`, keep one graph in memory at a time.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .compat import check_loadable, disabled_optimizers
from .config import check_int
from .decoders import CancelState
from .errors import ModelDirectoryError, ProviderError, TesseraError, first_line
from .manifest import Manifest
from .provider_fit import warn_if_unsuited
from .results import CancelToken
from .runners import RunnerPool
from .self_test import verify as verify_self_test
from .session import active_provider, check_threads, open_session, ort_version, quiet_run_options
from .tokenizer import ImageTokenizer
from .transformer import TransformerRunner

# Generations one model serves at once from different threads (each with its own KV cache).
DEFAULT_CONCURRENCY = 4
LOW_MEMORY_ENV = "TESSERA_LOW_MEMORY"  # low_memory when not given (None), for a deployment to set


def default_model_dir() -> Path:
    """The model shipped inside the package (`tessera.models/default`)."""
    from tessera.models import default_model_dir as shipped

    return shipped()


class LoadedModel:
    """The opened graphs of one model directory: `tokenizer`, the transformer runner pool, and what
    runs each graph (`graph_providers`, `providers`). `lock` guards the running set, the lazy
    encoder and the low-memory phases; callers may take it for their own small bookkeeping."""

    def __init__(self, manifest: Manifest, providers: list[str], threads: int | None = None,
                 provider_options: dict | None = None, session_options=None,
                 max_concurrency: int = DEFAULT_CONCURRENCY, low_memory: bool | None = False):
        threads = check_threads(threads)  # before any session opens
        if low_memory is None:
            low_memory = os.environ.get(LOW_MEMORY_ENV, "0").strip() not in ("", "0")
        self.manifest, self.low_memory = manifest, bool(low_memory)
        spec = manifest.spec
        installed = ort_version()
        check_loadable(spec.graphs, installed, manifest.root.name)  # before any session opens
        warn_if_unsuited(spec.graph("transformer"), providers[0], manifest.root.name)

        def opener(path: Path):
            graph = next(g for g in spec.graphs if g.file == path.name)
            return open_session(path, providers, threads, provider_options, session_options,
                                disabled_optimizers(graph, installed))

        self._opener = opener
        self.pool_size = check_int("max_concurrency", max_concurrency, 1)
        self.lock = threading.Lock()
        self.running: set[CancelState] = set()
        self._open_transformer()
        self._self_test()
        self.tokenizer = ImageTokenizer(manifest, opener, quiet_run_options)
        # What really runs each graph: onnxruntime may drop a requested provider (it warns then).
        self.graph_providers = {"transformer": active_provider(self.transformer.session),
                                "tokenizer_decoder": active_provider(self.tokenizer.decode_session)}
        self.providers = list(dict.fromkeys([self.graph_providers["transformer"], *providers]))
        if self.graph_providers["transformer"] != providers[0]:
            warn_if_unsuited(spec.graph("transformer"), self.graph_providers["transformer"], manifest.root.name)
        if self.low_memory:  # one graph in memory at a time: the tokenizer's opens when images are decoded
            self.tokenizer.close_decode_session()

    def _blame_the_provider(self, wrong: ModelDirectoryError) -> None:
        """A self-test failed on an accelerator: when the same graph passes it on the CPU, the provider computes
        it wrong (a kernel it lacks, a cache copied across devices), and that is a ProviderError, not a bad model
        directory. Raises it; returns when the CPU fails too (or the graph ran on the CPU)."""
        manifest, runner = self.manifest, self.transformer
        provider = active_provider(runner.session)
        if provider == "CPUExecutionProvider":
            return
        graph = manifest.spec.graph("transformer")
        session = open_session(manifest.graph_path("transformer"), ["CPUExecutionProvider"], 1, None, None,
                               disabled_optimizers(graph, ort_version()))
        cpu = TransformerRunner(session, manifest)
        cpu.run_options = quiet_run_options()

        def run(ids, positions, mask):
            cpu.start(ids.shape[0], ids.shape[1])
            return cpu(ids, positions, mask)

        try:
            verify_self_test(graph.self_test, run, manifest.layout, manifest.grid, manifest.root.name)
        except TesseraError:
            return
        finally:
            cpu.release()
        detail = str(wrong).partition("(")[2].partition(")")[0] or "wrong logits"
        raise ProviderError(f"{manifest.root.name}: {provider} computes its {graph.kind or ''} {graph.precision or ''} "
                            f"transformer wrong ({detail}) while CPUExecutionProvider passes the same self-test; "
                            "run it with providers='cpu' or export a variant this provider runs (e.g. "
                            "`tessera export --from DIR --quant fp16` for CUDA)") from None

    def _open_transformer(self) -> None:
        session = self._opener(self.manifest.graph_path("transformer"))
        self._transformer = TransformerRunner(session, self.manifest)  # the first runner of the pool
        self.runners = RunnerPool(self._transformer, lambda: TransformerRunner(session, self.manifest),
                                  self.pool_size)

    @property
    def transformer(self) -> TransformerRunner:
        """The first runner of the pool (reopened here if low_memory closed it)."""
        return self.transformer_phase()._transformer

    def transformer_phase(self) -> "LoadedModel":
        """low_memory: the tokenizer's decode session goes and the transformer comes back before a generation."""
        if self.low_memory and self.runners is None:
            with self.lock:
                self.tokenizer.close_decode_session()
                if self.runners is None:
                    self._open_transformer()
        return self

    def decode_phase(self) -> None:
        """low_memory: close the transformer (weights, arena, KV cache) before images are decoded,
        unless a generation on another thread still uses it."""
        if self.low_memory:
            with self.lock:
                if not self.running:
                    self._transformer = self.runners = None

    def _self_test(self) -> None:
        """The graph must compute what the manifest describes (runtime/self_test.py): one small call."""
        manifest, runner = self.manifest, self.transformer
        graph = manifest.spec.graph("transformer")

        def run(ids, positions, mask):
            runner.start(ids.shape[0], ids.shape[1])
            return runner(ids, positions, mask)

        runner.run_options = quiet_run_options()
        try:
            verify_self_test(graph.self_test, run, manifest.layout, manifest.grid, manifest.root.name)
        except ModelDirectoryError as wrong:
            self._blame_the_provider(wrong)
            raise
        except TesseraError:
            raise
        except Exception as e:  # onnxruntime's own error types: the graph cannot run as the manifest says
            raise ModelDirectoryError(
                f"{manifest.root.name}: its transformer graph ({graph.file}) fails the load's probe call under "
                f"the manifest's description (kind {graph.kind or '?'}, kv_cache {graph.kv_cache or '?'}): "
                f"{first_line(e)}. The graph file was replaced by another kind of graph (e.g. a portable one in a "
                "fused model directory) or the manifest was edited; re-export the model") from None
        finally:
            runner.run_options = None
            runner.release()

    @contextmanager
    def lend(self, cancel: CancelToken | None) -> Iterator[tuple[TransformerRunner, CancelState]]:
        """A runner lent for one generation, and its cancel state (registered for `interrupt`)."""
        stop = CancelState(cancel)
        with self.transformer_phase().runners.borrow() as runner:
            with self.lock:
                self.running.add(stop)
            try:
                yield runner, stop
            finally:
                with self.lock:
                    self.running.discard(stop)

    def interrupt(self) -> int:
        """Cancel every generation running on this model now (from any thread); returns how many."""
        with self.lock:
            running = list(self.running)
        for stop in running:
            stop.cancel()
        return len(running)

    def release(self) -> None:
        """Free the idle runners' KV caches (the next generation allocates anew)."""
        if self.runners is not None:
            self.runners.release()


__all__ = ["LoadedModel", "DEFAULT_CONCURRENCY", "LOW_MEMORY_ENV", "default_model_dir"]
