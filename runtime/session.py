"""Open onnxruntime sessions with errors a user can act on, never a bare onnxruntime traceback."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .backend import ort
from .errors import InvalidInputError, ModelDirectoryError, ProviderError, first_line
from . import providers as _providers
from .providers import full_name

_OPTION_VALUE_TYPES = (str, int, float, bool)
# The most CPU threads a graph may be given: far above any CPU's cores, far below what would exhaust
# the process (onnxruntime starts each thread of its pool up front).
MAX_THREADS = 1024


def check_threads(threads) -> int | None:
    """`threads` as an int in 1..MAX_THREADS, or None (onnxruntime's choice); else an InvalidInputError
    naming the range (a bool, a float, a negative or a huge count never reaches onnxruntime)."""
    if threads is None:
        return None
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (int, np.integer)) \
            or not 1 <= threads <= MAX_THREADS:
        raise InvalidInputError(f"threads must be an integer in 1..{MAX_THREADS} (CPU threads per graph; "
                                f"None or no --threads: onnxruntime's choice), got {threads!r}")
    return int(threads)


def quiet_run_options() -> "ort.RunOptions":
    """RunOptions for a probe call whose failure is turned into one error line: onnxruntime's own
    log line for the failed node (printed before the exception) is left out."""
    options = ort.RunOptions()
    options.log_severity_level = 4  # fatal only
    return options


def ort_version() -> str:
    """The imported onnxruntime's version string, e.g. '1.22.2' (backend.onnxruntime_version() gives ints)."""
    return str(getattr(ort, "__version__", "") or "0")


def session_options(threads: int | None = None) -> ort.SessionOptions:
    threads = check_threads(threads)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


def parse_key_values(items: Iterable[str] | None) -> dict[str, str]:
    """["k=v", ...] (e.g. repeated --session-option / --provider-option) -> {"k": "v"}; values stay strings."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"option {item!r} is not of the form key=value")
        out[key.strip()] = value.strip()
    return out



def _option_str(value: Any) -> str:
    return ("1" if value else "0") if isinstance(value, bool) else str(value)


def _is_attribute(key: str) -> bool:
    return not key.startswith("_") and isinstance(getattr(ort.SessionOptions, key, None), property)


def _coerce(key: str, value: Any, current: Any) -> Any:
    """`value` (often a string from the command line) as the type of the SessionOptions attribute `key`."""
    def bad(expected: str) -> InvalidInputError:
        return InvalidInputError(f"session option {key}={value!r}: expected {expected}")

    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.strip().lower() in ("1", "true", "yes", "on")
        raise bad("true/false or 1/0")
    members = getattr(type(current), "__members__", None)
    if members:  # a pybind11 enum (GraphOptimizationLevel, ExecutionMode, ExecutionOrder)
        if isinstance(value, type(current)):
            return value
        if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
            wanted = value.strip().upper()
            for name, member in members.items():
                if wanted in (name, name.removeprefix("ORT_")):
                    return member
            raise bad("one of " + ", ".join(members))
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise bad("one of " + ", ".join(members)) from None
        for member in members.values():
            if int(member) == number:
                return member
        raise bad("one of " + ", ".join(f"{n} ({int(m)})" for n, m in members.items()))
    if isinstance(current, int):
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, float) and not value.is_integer():
            raise bad("an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise bad("an integer") from None
    if isinstance(current, str):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise bad("a string")
        return str(value)
    return value


def build_session_options(threads: int | None = None,
                          options: "ort.SessionOptions | Mapping[str, Any] | None" = None) -> ort.SessionOptions:
    """The SessionOptions for one graph: tessera's defaults (quiet logs, all optimizations, `threads`) plus
    `options`, either an ort.SessionOptions (used as is; its log level is made quiet unless set and `threads`
    fills an unset intra_op_num_threads) or a dict: SessionOptions attributes (intra_op_num_threads,
    graph_optimization_level="ORT_ENABLE_BASIC", enable_mem_pattern=False ...) are set, keys with a '.'
    are session config entries ("session.intra_op.allow_spinning": "0"). A bad key or value is an
    InvalidInputError naming it.
    """
    threads = check_threads(threads)
    if options is None:
        return session_options(threads)
    if isinstance(options, ort.SessionOptions):
        if options.log_severity_level == ort.SessionOptions().log_severity_level:
            options.log_severity_level = 3
        if threads and not options.intra_op_num_threads:
            options.intra_op_num_threads = int(threads)
        return options
    if not isinstance(options, Mapping):
        raise InvalidInputError(f"session_options must be an onnxruntime.SessionOptions or a dict, not "
                                f"{type(options).__name__}")
    opts = session_options(threads)
    for key, value in options.items():
        if not isinstance(key, str) or not key:
            raise InvalidInputError(f"session option name {key!r} must be a non-empty string")
        if "." in key:
            if not isinstance(value, _OPTION_VALUE_TYPES):
                raise InvalidInputError(f"session config entry {key}: value {value!r} must be a string or a number")
            try:
                opts.add_session_config_entry(key, _option_str(value))
            except Exception as e:
                raise InvalidInputError(f"session config entry {key}={value!r} was refused: {first_line(e)}") from None
        elif _is_attribute(key):
            coerced = _coerce(key, value, getattr(opts, key))
            try:
                setattr(opts, key, coerced)
            except Exception as e:
                raise InvalidInputError(f"session option {key}={value!r} was refused: {first_line(e)}") from None
        else:
            known = sorted(k for k in dir(ort.SessionOptions) if _is_attribute(k))
            raise InvalidInputError(f"unknown session option {key!r}: use a SessionOptions attribute "
                                    f"({', '.join(known)}) or a config entry such as "
                                    "'session.intra_op.allow_spinning'")
    return opts


# Options a provider gets unless the caller sets them: the same numbers as the CPU, as the self-test and the
# export's parity bounds assume. CUDA's default TF32 matmuls and convolutions (10-bit mantissa) put fp32 logits
# 0.2% of their scale off and images 1.4e-3 off on an H200 (benchmarks/results/gpu.md); pass
# provider_options={"cuda": {"use_tf32": 1}} to trade that for speed.
EXACT_DEFAULTS: dict[str, dict[str, str]] = {"CUDAExecutionProvider": {"use_tf32": "0"}}


def build_provider_options(providers: list[str],
                           options: Mapping[str, Mapping[str, Any]] | None) -> list[dict[str, str]] | None:
    """{provider name or alias: {key: value}} -> onnxruntime's provider_options list aligned with `providers`
    (None when there are none), over EXACT_DEFAULTS. Options for a known provider that is not in `providers`
    (e.g. CUDA options when 'auto' chose the CPU) are left out; an unknown provider name or a non-scalar value
    is an InvalidInputError."""
    options = {} if options is None else options
    if not isinstance(options, Mapping):
        raise InvalidInputError(f"provider_options must be a dict of provider -> dict, not {type(options).__name__}")
    known = set(ort.get_all_providers()) | set(providers) | set(_providers.plugin_providers()) if options else set()
    by_provider: dict[str, dict[str, str]] = {p: dict(EXACT_DEFAULTS[p]) for p in providers if p in EXACT_DEFAULTS}
    for name, values in options.items():
        full = full_name(name) if isinstance(name, str) else name
        if full not in known:
            raise InvalidInputError(f"provider_options for unknown provider {name!r}; use a provider name or "
                                    "alias (cpu, cuda, tensorrt, rocm, migraphx, dml, coreml, openvino, qnn, webgpu)")
        if not isinstance(values, Mapping):
            raise InvalidInputError(f"provider_options[{name!r}] must be a dict of option -> value, not "
                                    f"{type(values).__name__}")
        entry = by_provider.setdefault(full, {})
        for key, value in values.items():
            if not isinstance(key, str) or not key:
                raise InvalidInputError(f"provider option name {key!r} for {full} must be a non-empty string")
            if not isinstance(value, _OPTION_VALUE_TYPES):
                raise InvalidInputError(f"provider option {full} {key}={value!r}: the value must be a string or "
                                        "a number")
            entry[key] = _option_str(value)
    if not any(by_provider.get(p) for p in providers):
        return None
    return [by_provider.get(p, {}) for p in providers]


def _loads_plainly(path: Path, providers: list[str]) -> bool:
    """Whether the graph opens without the user's options (so that those options made it fail)."""
    try:
        _create(path, session_options(), list(providers), None, {})
    except Exception:
        return False
    return True


# SessionOptions objects (given by the caller, reused for every graph) that already got tessera's devices.
_CONFIGURED: dict[int, tuple[Any, tuple]] = {}


def uses_plugin(providers: list[str]) -> bool:
    """Whether `providers` include a plugin EP (an onnxruntime-ep-* package), which a session gets through
    SessionOptions.add_provider_for_devices instead of the providers list."""
    return any(_providers.plugin_provider(p) is not None for p in providers)


def add_providers_for_devices(opts: "ort.SessionOptions", providers: list[str],
                              per_provider: list[dict[str, str]] | None) -> None:
    """Put `providers` (priority order) into `opts` the plugin-EP way: each one's preferred OrtEpDevice
    (GPU, then NPU, then CPU) with its options. CPU is onnxruntime's implicit fallback and is added only
    when it has options; a built-in provider without an EP device goes through SessionOptions.add_provider."""
    for i, name in enumerate(providers):
        options = dict(per_provider[i]) if per_provider else {}
        if name == "CPUExecutionProvider" and not options:
            continue
        devices = _providers.plugin_devices(name)
        if devices:
            opts.add_provider_for_devices(devices[:1], options)
        elif _providers.plugin_provider(name) is not None:
            raise RuntimeError(f"onnxruntime lists no device for {name}")
        elif hasattr(opts, "add_provider"):
            opts.add_provider(name, options)
        else:
            raise RuntimeError(f"{name} cannot be combined with a plugin execution provider in this onnxruntime")


def _create(path: Path, opts: "ort.SessionOptions", providers: list[str],
            per_provider: list[dict[str, str]] | None, extra: dict, shared: bool = False) -> ort.InferenceSession:
    """ort.InferenceSession for `path` on `providers`: the providers list, or devices when a plugin EP is in it.
    shared: `opts` is the caller's object (reused for each graph), so its devices are added only once."""
    _providers.load_provider_libraries(providers)
    if not uses_plugin(providers):
        kwargs = dict(extra)
        if per_provider is not None:
            kwargs["provider_options"] = per_provider
        return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers), **kwargs)
    signature = (tuple(providers), repr(per_provider))
    mine = _CONFIGURED.get(id(opts)) if shared else None
    if mine is not None and mine[0] is opts:
        if mine[1] != signature:
            raise InvalidInputError("one onnxruntime.SessionOptions object cannot serve two different provider "
                                    "lists with a plugin execution provider; pass a dict of session options")
    elif opts.has_providers():
        pass  # the caller configured its own devices (add_provider_for_devices): those win
    else:
        add_providers_for_devices(opts, providers, per_provider)
        if shared:
            _CONFIGURED[id(opts)] = (opts, signature)
    return ort.InferenceSession(str(path), sess_options=opts, **extra)


def active_provider(sess: ort.InferenceSession) -> str:
    """The provider that runs this session's graph (the first one onnxruntime kept)."""
    return sess.get_providers()[0]


def open_session(path: Path, providers: list[str], threads: int | None = None,
                 provider_options: Mapping[str, Mapping[str, Any]] | None = None,
                 session_options: "ort.SessionOptions | Mapping[str, Any] | None" = None,
                 disabled_optimizers: list[str] | None = None) -> ort.InferenceSession:
    """Open one graph on `providers` (full names, in priority order, e.g. from resolve_providers).

    provider_options: {provider or alias: {key: value}}; session_options: an ort.SessionOptions or a dict
    (see build_session_options); disabled_optimizers: graph optimizers to skip (runtime/compat.py
    lists those that break our graphs on some builds). Warns (RuntimeWarning) when onnxruntime silently drops a requested
    provider; `active_provider(sess)` tells what runs the graph. A plugin EP (onnxruntime-ep-*, see
    providers.plugin_providers) in `providers` makes the session take its providers through
    SessionOptions.add_provider_for_devices (its device, with its provider_options) instead of the providers list.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelDirectoryError(f"graph {path} is missing; re-export or re-copy the model directory")
    opts = build_session_options(threads, session_options)
    per_provider = build_provider_options(list(providers), provider_options)
    extra = {}
    if disabled_optimizers:
        extra["disabled_optimizers"] = list(disabled_optimizers)
    try:
        sess = _create(path, opts, list(providers), per_provider, extra,
                       shared=isinstance(session_options, ort.SessionOptions))
    except InvalidInputError:
        raise
    except Exception as e:  # onnxruntime raises several unrelated types for a bad file
        first = first_line(e)
        if (session_options is not None or provider_options) and _loads_plainly(path, providers):
            raise InvalidInputError(
                f"onnxruntime could not load {path.name} with the given session/provider options ({first}); "
                "it loads without them, so check those options"
            ) from None
        if uses_plugin(providers) and _loads_plainly(path, ["CPUExecutionProvider"]):
            plugin = ", ".join(p for p in providers if _providers.plugin_provider(p) is not None)
            raise ProviderError(
                f"onnxruntime could not start the plugin execution provider {plugin} for {path.name} ({first}); "
                "the graph loads on CPUExecutionProvider, so check the plugin's device / driver or use providers='cpu'"
            ) from None
        raise ModelDirectoryError(
            f"onnxruntime could not load {path.name} ({first}). The file is corrupt, truncated or was made "
            "for a newer onnxruntime; re-export the model or upgrade onnxruntime."
        ) from None
    running = sess.get_providers()
    missing = [p for p in providers if p not in running]
    if missing:
        warnings.warn(f"{path.name}: asked for {', '.join(providers)}, but onnxruntime could not start "
                      f"{', '.join(missing)} and runs on {', '.join(running)} (check the GPU driver / CUDA "
                      "libraries, or the onnxruntime flavour)", RuntimeWarning, stacklevel=3)
    return sess
