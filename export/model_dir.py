"""Write a complete model directory (graphs, manifest, weights) atomically, or nothing at all."""
from __future__ import annotations

import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

import onnx
import torch
from safetensors.torch import save_file

from tessera.runtime.compat import OLDEST_TESTED, fused_form
from tessera.runtime.errors import InvalidInputError, ModelDirectoryError
from tessera.runtime.manifest import FORMAT, MANIFEST_NAME, is_plain_file_name, sha256_file
from tessera.runtime.spec import (ANY_ORDER_FAMILY, ARPG_FAMILY, ClassesSpec, FileEntry, GraphIO, GraphSpec, ModelSpec,
                                  SelfTestSpec, generation_defaults)

from . import parity
from .config import GPTConfig, VQConfig, manifest_sections
from .onnx_export import DEFAULT_OPSET, export_tokenizer, export_transformer
from .progress import StageCallback, stage
from .quantize import PRECISIONS, QuantOptions, data_file, finalize_graph, quantize_graphs
from .tokenizer_quant import quantize_decoder
from .transformer import GPT
from .vq import VQModel

GRAPH_FILES = {"transformer": "transformer.onnx", "tokenizer_decoder": "tokenizer_decoder.onnx",
               "tokenizer_encoder": "tokenizer_encoder.onnx"}
WEIGHT_FILES = {"transformer": "gpt.safetensors", "tokenizer": "vq.safetensors"}
_GRAPH_FACTS = ("kind", "kv_cache")  # what export_transformer says of the graph it wrote


from .errors import ExportError  # noqa: E402  (defined in errors.py, under TesseraError; re-exported here)


@dataclass
class ExportSpec:
    name: str
    class_names: list[str]
    generation_defaults: dict = field(default_factory=dict)
    description: str = ""
    opset: int = DEFAULT_OPSET
    include_weights: bool = False
    extra_files: list[Path] = field(default_factory=list)  # model card, sample sheets ...
    overwrite: bool = False
    graph: str = "fused"  # transformer graph kind: "fused" (onnxruntime kernels) or "portable" (standard ops)
    # The oldest onnxruntime the graphs must load on (runtime/compat.py): the fused graph takes the
    # newest operator form that build accepts. The default loads on every tested build.
    target_onnxruntime: str = OLDEST_TESTED
    # Graphs whose tensors pass this many bytes keep them in `<graph>.onnx.data` (None: the
    # $TESSERA_EXTERNAL_DATA_THRESHOLD environment variable, else 16 MiB: memory-mapped weights).
    external_data_threshold: int | None = None
    # Free the PyTorch weights once the graphs, the weight files and the parity references are made
    # (export peak memory: the torch model and the graph's onnxruntime copy are never held together).
    # The models are unusable afterwards: only a caller that is done with them (the CLI) sets this.
    release_weights: bool = False


def package_version() -> str:
    try:
        return metadata.version("tessera-ar")
    except metadata.PackageNotFoundError:
        return "unknown"


def check_compatible(gpt: GPTConfig, vq: VQConfig, class_names: list[str]) -> None:
    problems = []
    if gpt.vocab_size != vq.codebook_size:
        problems.append(f"transformer vocab {gpt.vocab_size} != tokenizer codebook {vq.codebook_size}")
    if gpt.grid != vq.grid:
        problems.append(f"transformer grid {gpt.grid} != tokenizer grid {vq.grid} "
                        f"({vq.image_size}px / {vq.downsample})")
    if len(class_names) != gpt.num_classes:
        problems.append(f"{len(class_names)} class names for {gpt.num_classes} classes")
    if problems:
        raise ExportError("transformer and tokenizer do not fit together: " + "; ".join(problems))


def not_a_model_dir(path: Path) -> str | None:
    """None when `path` is a Tessera model directory (its root holds a regular tessera.json whose
    format is "tessera-model"), else what is there instead, for an error message."""
    if path.is_symlink():
        return f"a symlink (to {os.readlink(path)})"
    if not path.is_dir():
        return "a file, not a directory" if path.is_file() else "not a directory"
    manifest = path / MANIFEST_NAME
    if manifest.is_symlink() or not manifest.is_file():
        return f"a directory without a {MANIFEST_NAME} manifest, not a Tessera model directory"
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return f"a directory whose {MANIFEST_NAME} is not valid JSON, not a Tessera model directory"
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return f"a directory whose {MANIFEST_NAME} is not a Tessera manifest, not a Tessera model directory"
    return None


def _refuse_replacing(out: Path, what: str) -> ExportError:
    return ExportError(f"{out} is {what}: --overwrite only ever replaces a Tessera model directory, so nothing "
                       "was touched; choose another --out, or move that away yourself")


def record_self_test(root: Path, precision: str) -> SelfTestSpec:
    """Run the finished transformer graph through the runtime, as a user's load will
    (runtime/self_test.py), and return what its probe call gives."""
    from tessera.runtime import self_test
    from tessera.runtime.manifest import load_manifest
    from tessera.runtime.session import open_session
    from tessera.runtime.transformer import TransformerRunner

    manifest = load_manifest(root, verify="none")
    runner = TransformerRunner(open_session(manifest.graph_path("transformer"), ["CPUExecutionProvider"]), manifest)

    def run(ids, positions, mask):
        runner.start(ids.shape[0], ids.shape[1])
        return runner(ids, positions, mask)

    return self_test.record(run, manifest.layout, manifest.grid, precision)


def check_finite_weights(model: torch.nn.Module, what: str) -> None:
    """A NaN or infinite weight makes every image garbage, and a NaN parity error compares false
    against its bound: refuse it, naming the tensors. Reading a mapped checkpoint brings it into
    memory, so each model is checked just before its own export (never both resident at once)."""
    bad = [f"{what}.{name}" for name, t in model.state_dict().items()
           if t.is_floating_point() and not t.is_meta and not torch.isfinite(t).all()]  # meta: released, checked
    if bad:
        raise ExportError(f"{len(bad)} weight tensor(s) hold NaN or infinite values ({', '.join(bad[:4])}"
                          f"{' ...' if len(bad) > 4 else ''}); the checkpoint is corrupt or diverged in training")


def prepare_output(out: Path, overwrite: bool) -> None:
    """Fail before any work if the destination is taken or cannot be written. `overwrite` only ever
    replaces a Tessera model directory (see `not_a_model_dir`): a user's files are never touched.
    Also removes the stale partial directories of dead exports to `out` (`remove_stale_partials`)."""
    if out.name in ("", ".", ".."):
        raise ExportError(f"--out {out} must name the model directory itself (e.g. --out models/mine)")
    if out.exists() or out.is_symlink():
        what = not_a_model_dir(out)
        if what is not None:
            if overwrite:
                raise _refuse_replacing(out, what)
            raise ExportError(f"{out} already exists and is {what}; choose another --out "
                              "(--overwrite only ever replaces a Tessera model directory)")
        if not overwrite:
            raise ExportError(f"{out} already exists; pass --overwrite to replace it")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=parent, prefix=".tessera-probe-")
        probe.close()
    except OSError as e:
        raise ExportError(f"cannot write into {parent} ({e.strerror or e}); choose another --out") from e
    remove_stale_partials(out)


# A partial directory is `.OUT.partial-PID-XXXXXXXX` (tempfile.mkdtemp's 8 random characters) next to
# OUT; older exports wrote `.OUT.partial-XXXXXXXX`.
STALE_PARTIAL_AGE_S = 3600.0


def _partial_prefix(out: Path) -> str:
    return f".{out.name}.partial-{os.getpid()}-"


def _process_gone(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate it: rely on the age rule alone
        return True
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def remove_stale_partials(out: Path, max_age_s: float = STALE_PARTIAL_AGE_S) -> list[Path]:
    """Remove what dead exports to `out` left behind. The rule (safe by construction): only a real
    directory (not a symlink) next to `out` whose name is exactly `.{out.name}.partial-` + [PID-] +
    mkdtemp's 8 random characters, in which nothing was modified for `max_age_s` (1 hour), and, when
    its name carries the exporting process id, that process no longer runs on this machine. A killed
    export (SIGTERM, Ctrl-C) cleans up itself; this is for SIGKILL, power loss and the like."""
    parent = out.resolve().parent
    pattern = re.compile(re.escape(f".{out.name}.partial-") + r"(?:(\d+)-)?[a-z0-9_]{8}")
    removed: list[Path] = []
    young: list[Path] = []
    try:
        candidates = list(parent.iterdir())
    except OSError:
        return removed
    now = time.time()
    for path in candidates:
        m = pattern.fullmatch(path.name)
        if m is None or path.is_symlink() or not path.is_dir():
            continue
        try:
            newest = max([path.stat().st_mtime] + [f.lstat().st_mtime for f in path.iterdir()])
        except OSError:
            continue
        if m.group(1) is not None and not _process_gone(int(m.group(1))):
            continue  # a running export's
        if now - newest < max_age_s:
            young.append(path)
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        warnings.warn(f"removed {len(removed)} partial director{'y' if len(removed) == 1 else 'ies'} of killed "
                      f"exports to {out.name} ({', '.join(p.name for p in removed[:3])}"
                      f"{' ...' if len(removed) > 3 else ''})", RuntimeWarning, stacklevel=2)
    if young:
        which = f"{young[0].name} (and {len(young) - 1} more)" if len(young) > 1 else young[0].name
        warnings.warn(f"{which} beside {out.name} looks left by a killed export, changed less than "
                      f"{max_age_s / 3600:g} h ago: it is removed by the first export to {out.name} after that "
                      "(or delete it yourself if no other machine is exporting there)", RuntimeWarning, stacklevel=2)
    return removed


# The watchdog: a small process that outlives a killed export. It reads its instructions from a pipe
# whose write end only the export holds, so the pipe closes when the export ends in any way, SIGKILL and
# the out-of-memory killer included. Records end in NUL (a path may hold a newline): "old PATH" announces
# that OUT is about to be renamed aside to PATH; "done" that the export finished or cleaned up after
# itself. On end-of-file without "done" it removes the partial directory and, if OUT was renamed aside,
# puts the old directory back (or, when the new one is already in place, removes the old one): the same
# end state as a cleanly failed export.
_WATCHDOG = r"""
import os, shutil, signal, sys
for name in ("SIGINT", "SIGTERM", "SIGHUP"):
    if hasattr(signal, name):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
tmp, out = sys.argv[1], sys.argv[2]
records = sys.stdin.buffer.read().split(b"\0")  # blocks until the export closes the pipe or dies
if b"done" in records:
    sys.exit(0)
old = next((os.fsdecode(r[4:]) for r in records if r.startswith(b"old ")), None)
def real_dir(p):
    return os.path.isdir(p) and not os.path.islink(p)
if old and real_dir(old):
    if real_dir(out):
        shutil.rmtree(old, ignore_errors=True)
    elif not os.path.lexists(out):
        os.rename(old, out)
if real_dir(tmp):
    shutil.rmtree(tmp, ignore_errors=True)
"""


class _Watchdog:
    """Removes the partial directory (and undoes a half-done replacement) if the export process is
    killed where it cannot clean up itself (SIGKILL, the OOM killer). Without a usable Python
    executable (an embedded or frozen interpreter) there is none, and `remove_stale_partials` is left."""

    def __init__(self, tmp: Path, out: Path):
        self.proc = None
        exe = sys.executable
        if not exe or getattr(sys, "frozen", False) or not os.path.isfile(exe):
            return
        try:
            self.proc = subprocess.Popen([exe, "-I", "-S", "-c", _WATCHDOG, str(tmp), str(out.absolute())],
                                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError:
            self.proc = None

    def _send(self, line: str) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.write(os.fsencode(line) + b"\0")
                self.proc.stdin.flush()
            except OSError:  # it died: the export goes on without it
                self.proc = None

    def old(self, path: Path) -> None:
        """OUT is about to be renamed aside to `path`."""
        self._send(f"old {path.absolute()}")

    def done(self) -> None:
        """The export finished or cleaned up itself: the watchdog exits without touching anything."""
        if self.proc is None:
            return
        self._send("done")
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.proc = None


class _TerminateGuard:
    """While an export runs in the main thread, SIGTERM (whose default action kills the process on
    the spot, leaving `.OUT.partial-*` behind) raises SystemExit(143) so the cleanup runs; while the
    finished directory is moved into place (`held`) it is deferred until the move is done. Installed
    only over the default action (an application's own handler or SIG_IGN is left alone); the previous
    handler is restored by `restore`."""

    def __init__(self):
        self.installed = False
        self.held = False
        self.pending = False
        sigterm = getattr(signal, "SIGTERM", None)
        if sigterm is None or threading.current_thread() is not threading.main_thread():
            return
        try:
            if signal.getsignal(sigterm) is signal.SIG_DFL:
                signal.signal(sigterm, self._handler)
                self.installed = True
        except (ValueError, OSError):
            pass

    def _handler(self, signum, frame):
        if self.held:
            self.pending = True
            return
        raise SystemExit(128 + signum)

    def hold(self) -> None:
        self.held = True

    def restore(self) -> None:
        """Put the default action back (unless someone replaced our handler meanwhile); a SIGTERM
        deferred by `hold` then ends the export: SystemExit(143)."""
        if self.installed:
            if signal.getsignal(signal.SIGTERM) == self._handler:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self.installed = False
        if self.pending:
            self.pending = False
            raise SystemExit(128 + signal.SIGTERM)


def _install(tmp: Path, out: Path, watchdog: _Watchdog | None = None) -> None:
    """Move the finished `tmp` to `out`. An existing `out` must (still) be a Tessera model directory:
    it is renamed aside to a fresh unique `.OUT.old-*`, `tmp` renamed to `out`, and only then is the old
    one removed; a failure in between puts the old directory back."""
    if not (out.exists() or out.is_symlink()):
        tmp.rename(out)
        return
    what = not_a_model_dir(out)  # it may have changed while the export ran
    if what is not None:
        raise _refuse_replacing(out, what)
    while True:
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        if not (old.exists() or old.is_symlink()):
            break
    if watchdog is not None:
        watchdog.old(old)  # a kill between the renames: the watchdog puts the old directory back
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        if old.is_dir() and not (out.exists() or out.is_symlink()):
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def variant_dirs(out: str | Path, precisions: list[str] | tuple[str, ...]) -> dict[str, Path]:
    """`--quant all`: OUT-fp32, OUT-fp16, OUT-int8, OUT-int4, siblings of OUT."""
    out = Path(out)
    return {p: out.with_name(f"{out.name}-{p}") for p in precisions}


def _graph_entries(spec: ExportSpec, root: Path, quant_entries: dict[str, dict],
                   facts: dict[str, dict] | None = None) -> dict:
    """Each graph's file, exporter facts, precision, method (+ options), opset and external data file."""
    graphs = {}
    for name, fname in GRAPH_FILES.items():
        entry = {"file": fname, "min_onnxruntime": OLDEST_TESTED, **(facts or {}).get(name, {}),
                 "precision": "fp32", "method": "none", **quant_entries.get(name, {}), "opset": spec.opset}
        if data_file(root / fname).exists():
            entry["external_data"] = data_file(root / fname).name
        graphs[name] = entry
    return graphs


def _manifest(gpt: GPT, vq: VQModel, spec: ExportSpec, parity_report: dict, files: dict[str, dict],
              graphs: dict | None = None) -> ModelSpec:
    """The manifest as the runtime's contract (`tessera.runtime.spec.ModelSpec`), read back by it from
    what it writes: a manifest the runtime would refuse is an ExportError here, not a surprise at load.
    The transformer's self-test is added once its graph can run (`record_self_test`)."""
    g, v = gpt.cfg, vq.cfg
    graphs = graphs or {n: {"file": f, "min_onnxruntime": OLDEST_TESTED, "precision": "fp32", "method": "none",
                            "opset": spec.opset, **({"kind": "fused", "kv_cache": "shared-buffer"}
                                                  if n == "transformer" else {})}
                        for n, f in GRAPH_FILES.items()}
    tokenizer_io = {"tokenizer_decoder": (("codes",), ("image",)), "tokenizer_encoder": (("image",), ("codes",))}
    transformer, tokenizer, image, export = manifest_sections(g, v, gpt.num_params(), vq.num_params())
    entries = []
    for name, entry in graphs.items():
        entry = dict(entry)
        if name == "transformer":  # the graph's names, written once as patterns
            entry["io"] = GraphIO(query_positions="query_positions") if g.order == "arpg" else GraphIO()
        else:
            entry["inputs"], entry["outputs"] = tokenizer_io[name]
        entries.append(GraphSpec(name=name, **entry))
    try:
        model = ModelSpec(
            name=spec.name, description=spec.description, conditioning="class",
            family={"any": ANY_ORDER_FAMILY, "arpg": ARPG_FAMILY}.get(g.order, "llamagen-c2i"),
            transformer=transformer, tokenizer=tokenizer, image=image,
            classes=ClassesSpec(names=tuple(spec.class_names)), graphs=tuple(entries),
            files={name: FileEntry(meta["sha256"], meta["bytes"]) for name, meta in files.items()},
            weights=dict(WEIGHT_FILES) if spec.include_weights else {},
            generation=generation_defaults(dict(spec.generation_defaults)), export=export,
            info={"exported_by": {"package": "tessera-ar", "version": package_version(), "torch": torch.__version__,
                                  "onnx": onnx.__version__, "python": platform.python_version()},
                  "parity": parity_report})
        return ModelSpec.from_manifest(model.to_manifest())  # every check the runtime makes at load
    except ModelDirectoryError as e:
        raise ExportError(f"this export would write a manifest the runtime refuses: {e}") from None


def _write_manifest(root: Path, model: ModelSpec) -> None:
    (root / MANIFEST_NAME).write_text(json.dumps(model.to_manifest(), indent=2) + "\n")


def _parity(refs: parity.References, tmp: Path, precision: str, transformer_facts: dict) -> dict:
    report = {
        "precision": precision,
        "transformer": parity.transformer_parity(refs.transformer(precision), tmp / GRAPH_FILES["transformer"],
                                                 row_by_row=transformer_facts.get("kind") == "fused" and not fused_form(
                                                     transformer_facts["min_onnxruntime"]).gqa_query_seqlens),
        "tokenizer": parity.tokenizer_parity(refs.tokenizer(), tmp / GRAPH_FILES["tokenizer_encoder"],
                                             tmp / GRAPH_FILES["tokenizer_decoder"]),
    }
    if precision != "fp32":
        report["bounds"] = dict(parity.QUANT_BOUNDS[precision])
    return report


def release_weights(*models: torch.nn.Module) -> None:
    """Drop the models' parameters and buffers (moved to the meta device: shapes kept, memory freed)."""
    for model in models:
        model.to("meta")


def _save_weights(model: torch.nn.Module, kind: str, tmp: Path, fp32_source: Path | None) -> None:
    """A model's PyTorch weights for re-export (kind "transformer" or "tokenizer"): copied from the
    checked fp32 directory when there is one (the models may be released by now), else saved."""
    source = Path(fp32_source) / WEIGHT_FILES[kind] if fp32_source is not None else None
    if source is not None and source.is_file():
        shutil.copy2(source, tmp / WEIGHT_FILES[kind])
    else:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHT_FILES[kind]))


def _public_permissions(folder: Path) -> None:
    """mkdtemp makes a private (0700) folder and safetensors writes 0600 files: a model directory is
    meant to be shared, so give it the permissions a plain mkdir/open would (umask applied)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def write_model_dir(gpt: GPT, vq: VQModel, out: str | Path, spec: ExportSpec, precision: str = "fp32",
                    quant: QuantOptions | None = None, fp32_source: Path | None = None,
                    progress: StageCallback | None = None, references: parity.References | None = None) -> Path:
    """Export, quantize to `precision`, check parity, write the manifest; move into `out` only once all
    of it succeeded. `fp32_source`: a checked fp32 model directory of the same models whose graphs are
    copied instead of exported again (used by `write_model_dirs`). `progress`: an optional stage
    callback (export/progress.py) told of the export, parity, quantize and write stages. `references`:
    the PyTorch side of the parity checks, when the caller computed it already (`write_model_dirs`).
    With `spec.release_weights` the models' weights are freed once exported (see ExportSpec)."""
    out = Path(out)
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    quant = quant or QuantOptions()
    try:
        quant.validate()
    except ValueError as e:
        raise ExportError(str(e)) from None
    threshold = spec.external_data_threshold if spec.external_data_threshold is not None \
        else quant.external_data_threshold
    quant = QuantOptions(**{**quant.__dict__, "external_data_threshold": threshold})
    check_compatible(gpt.cfg, vq.cfg, spec.class_names)
    try:
        fused_form(spec.target_onnxruntime)  # before any work: a target below the oldest tested
    except InvalidInputError as e:
        raise ExportError(str(e)) from None
    for f in spec.extra_files:
        if not Path(f).is_file():
            raise ExportError(f"extra file {f} does not exist")
        if not is_plain_file_name(Path(f).name):  # the runtime refuses a listed name it cannot trust
            raise ExportError(f"extra file {f}: its name must not contain '\\' or ':'; rename it")
        reserved = {*GRAPH_FILES.values(), *WEIGHT_FILES.values(), MANIFEST_NAME}
        if Path(f).name in reserved or Path(f).name.endswith(".onnx.data"):
            raise ExportError(f"extra file {f} would replace the model's own {Path(f).name}; rename it")
    prepare_output(out, spec.overwrite)
    tmp = watchdog = None
    guard = _TerminateGuard()  # SIGTERM -> SystemExit: the partial directory is removed below
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_partial_prefix(out), dir=out.resolve().parent))
        watchdog = _Watchdog(tmp, out)  # SIGKILL: the watchdog removes it
        graphs = {name: tmp / fname for name, fname in GRAPH_FILES.items()}
        facts: dict[str, dict] = {}
        refs = references or parity.References(gpt, vq)
        needed = {precision} if fp32_source is not None else {"fp32", precision}  # fp32 parity, then the variant's

        def done_with(model, kind: str) -> None:
            """Compute what the checks need from `model`, save its weights, then (if asked) free it: the
            transformer goes before the tokenizer is traced, so the two never peak together."""
            if kind == "transformer":
                refs.prepare_transformer(needed)
            else:
                refs.tokenizer()
            if spec.include_weights:
                _save_weights(model, kind, tmp, fp32_source)
            if spec.release_weights:
                release_weights(model)

        if fp32_source is not None:
            with stage(progress, "export", f"{precision}, graphs copied from {Path(fp32_source).name}"):
                from tessera.runtime.manifest import load_manifest

                for graph in load_manifest(fp32_source, verify="none").spec.graphs:  # exporter facts carry over
                    facts[graph.name] = {k: getattr(graph, k) for k in ("min_onnxruntime", *_GRAPH_FACTS)
                                         if getattr(graph, k) is not None}
                for path in graphs.values():
                    for src in (Path(fp32_source) / path.name, data_file(Path(fp32_source) / path.name)):
                        if src.exists():
                            shutil.copy2(src, tmp / src.name)
                done_with(gpt, "transformer")
                done_with(vq, "tokenizer")
        else:
            with stage(progress, "export", f"fp32, {spec.graph} graph"):
                # One model at a time, each checked just before: the tokenizer's trace holds its graph
                # twice, so it goes while the transformer's (memory-mapped) weights are still unread.
                check_finite_weights(vq, "tokenizer")
                export_tokenizer(vq, graphs["tokenizer_encoder"], graphs["tokenizer_decoder"], spec.opset)
                for name in ("tokenizer_encoder", "tokenizer_decoder"):
                    finalize_graph(graphs[name], threshold)
                done_with(vq, "tokenizer")
                check_finite_weights(gpt, "transformer")
                # The fused graph streams its weights into its data file as it is built (final as written).
                facts["transformer"] = export_transformer(gpt, graphs["transformer"], spec.opset, spec.graph,
                                                          spec.target_onnxruntime, threshold)
                if facts["transformer"]["kind"] != "fused":
                    finalize_graph(graphs["transformer"], threshold)
                done_with(gpt, "transformer")
        if fp32_source is None:
            if precision != "fp32":  # a broken export must not hide behind quantization bounds
                with stage(progress, "parity", "fp32"):
                    fp32 = _parity(refs, tmp, "fp32", facts["transformer"])
                    parity.check(fp32["transformer"], fp32["tokenizer"])
        if precision == "fp32":
            entries = quantize_graphs(graphs, precision, quant)  # nothing to convert: no stage to show
        else:
            with stage(progress, "quantize", precision):
                try:
                    entries = quantize_graphs(graphs, precision, quant)
                except Exception as e:
                    raise ExportError(str(e)) from e
        if quant.tokenizer not in (None, "fp32"):  # the decoder's own precision, its PSNR measured and bounded
            with stage(progress, "quantize", f"tokenizer decoder {quant.tokenizer}"):
                entries["tokenizer_decoder"] = quantize_decoder(graphs["tokenizer_decoder"], quant.tokenizer,
                                                                vq.cfg.codebook_size, vq.cfg.grid,
                                                                quant.tokenizer_min_psnr, threshold)
        with stage(progress, "parity", precision):
            report = _parity(refs, tmp, precision, facts.get("transformer", {}))
            parity.check(report["transformer"], report["tokenizer"], precision)
        with stage(progress, "write", str(out)):
            for f in spec.extra_files:
                shutil.copy2(f, tmp / Path(f).name)
            files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                     for p in sorted(tmp.iterdir()) if p.is_file()}
            model = _manifest(gpt, vq, spec, report, files, _graph_entries(spec, tmp, entries, facts))
            _write_manifest(tmp, model)  # the self-test runs the graph through the runtime, which reads it
            probe = record_self_test(tmp, precision)
            _write_manifest(tmp, model.with_graph(replace(model.graph("transformer"), self_test=probe)))
            _public_permissions(tmp)
            guard.hold()  # from here a SIGTERM waits until the directory is in place (see restore)
            _install(tmp, out, watchdog)
        return out
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if watchdog is not None:
            watchdog.done()
        guard.restore()


def write_model_dirs(gpt: GPT, vq: VQModel, out: str | Path, spec: ExportSpec,
                     precisions: list[str] | tuple[str, ...] = PRECISIONS,
                     quant: QuantOptions | None = None, progress: StageCallback | None = None) -> list[Path]:
    """One model directory per precision, `OUT-<precision>` (see `variant_dirs`). The fp32 graphs are
    exported and checked once; each variant is written atomically on its own. `progress`: as in
    `write_model_dir`. With `spec.release_weights` the weights are freed once the last export that
    needs them is done (every variant's parity reference is computed before)."""
    dirs = variant_dirs(out, precisions)
    for d in dirs.values():  # fail before any work if a destination is taken
        prepare_output(d, spec.overwrite)
    refs = parity.References(gpt, vq).prepare(dirs)
    written = []
    source = None
    # Without an fp32 directory every variant exports from the models: only the last may free them.
    keep = replace(spec, release_weights=False)
    if "fp32" in dirs:
        source = write_model_dir(gpt, vq, dirs["fp32"], spec, "fp32", quant, progress=progress, references=refs)
        written.append(source)
    rest = [p for p in dirs if p != "fp32"]
    for i, precision in enumerate(rest):
        last = i == len(rest) - 1
        written.append(write_model_dir(gpt, vq, dirs[precision], spec if source or last else keep, precision,
                                       quant, fp32_source=source, progress=progress, references=refs))
    return written
