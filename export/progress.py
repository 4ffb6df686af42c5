"""Stage callbacks for long exports: library code reports, the caller (the CLI) displays.

A callback is `progress(stage, status, detail)`: `stage` one of STAGES, `status` "start", "done" or
"failed", `detail` a short note ("fp32", "int4 variant", "copied from OUT-fp32" ...) or "". Nothing
here prints; without a callback the stages are silent.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

STAGES = ("load", "export", "parity", "quantize", "write")
StageCallback = Callable[[str, str, str], None]


@contextmanager
def stage(progress: Optional[StageCallback], name: str, detail: str = "") -> Iterator[None]:
    """Report `name` started, then done (or failed, re-raising) around the block."""
    if progress is None:
        yield
        return
    progress(name, "start", detail)
    try:
        yield
    except BaseException:
        progress(name, "failed", detail)
        raise
    progress(name, "done", detail)
