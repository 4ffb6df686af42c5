"""What a result records about the run: versions, git state, CPU, load average, and whether the
machine was too busy for absolute times to mean much (ratios within one run still do)."""
from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

PACKAGES = ("tessera-ar", "numpy", "onnxruntime", "onnxruntime-gpu", "pillow")
NOISY_LOAD_PER_CORE = 0.5  # 1-min load average per core above which other work competes for the CPU


def versions(packages: tuple[str, ...] = PACKAGES, repo: Path | None = None) -> dict[str, str]:
    """Python and each package's installed version ("not installed" otherwise); with `repo`, its git
    revision, flagged when the tree has uncommitted changes."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    if repo is not None:
        try:
            git = ["git", "-C", str(repo)]
            rev = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
            dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
            if rev:
                out["git"] = rev + (" (+ uncommitted changes)" if dirty else "")
        except OSError:
            pass
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages (zeros where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return [0.0, 0.0, 0.0]


def is_noisy(load_1min: float, cores: int | None = None) -> bool:
    """True when other work was competing for the CPU (load per core above NOISY_LOAD_PER_CORE)."""
    return load_1min > NOISY_LOAD_PER_CORE * (cores or os.cpu_count() or 1)


def environment(packages: tuple[str, ...] = PACKAGES, repo: Path | None = None) -> dict:
    """Everything a results file records about the machine before a run starts."""
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_model(),
            "cores": os.cpu_count(), "platform": platform.platform(), "versions": versions(packages, repo),
            "load_before": load_average()}


def run_line(command: str, threads: int | None = None, shared: bool = True) -> str:
    """The line under a results file's title: its command, when, on what CPU, and how busy the machine was
    (the figures below it are ratios within one run when the load is high)."""
    return (f"`{command}` — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu_model()}, {os.cpu_count()} cores"
            + (" (shared with other sessions)" if shared else "")
            + (f", {threads} onnxruntime thread(s)" if threads else "") + f", load average {load_average()[0]:.1f}")
