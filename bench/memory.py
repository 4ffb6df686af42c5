"""Peak resident memory of this process.

Read from `/proc/self/status` VmHWM (Linux): the kernel resets it at exec, so a fresh worker reports
its own peak. `resource.getrusage().ru_maxrss` is the fallback elsewhere; on Linux it would include
the parent's pages the child had before exec, which is why VmHWM comes first.
"""
from __future__ import annotations

import sys
from pathlib import Path

STATUS = Path("/proc/self/status")
MIB = float(1 << 20)


def read_status(path: Path = STATUS) -> dict[str, float]:
    """VmHWM, VmRSS, RssAnon, RssFile from a /proc status file, in MiB (missing keys left out)."""
    out = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0]) * 1024 / MIB  # the kernel writes kB
    return out


def peak_rss_mib(path: Path = STATUS) -> tuple[float, str]:
    """(peak resident memory in MiB, its source: "VmHWM" or "ru_maxrss")."""
    try:
        return read_status(path)["VmHWM"], "VmHWM"
    except (OSError, KeyError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / MIB if sys.platform == "darwin" else peak * 1024 / MIB, "ru_maxrss"  # bytes on macOS


def snapshot() -> dict[str, float]:
    """The peak and the current resident memory (anonymous and file-backed) now, MiB."""
    peak, source = peak_rss_mib()
    try:
        now = read_status()
    except OSError:
        now = {}
    return {"peak_mib": peak, "source": source, "rss_mib": now.get("VmRSS"), "anon_mib": now.get("RssAnon"),
            "file_mib": now.get("RssFile")}
