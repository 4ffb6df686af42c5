"""pip's resolution of each backend extra (`pip install --dry-run --report`), cached for
tests/test_backend_extras.py, which checks what each extra would install without a network call.

    python tests/extras_report.py --write      # .ci/run runs this; needs the package index

Linux flavours resolve `.[extra]` itself for this interpreter, as a user's `pip install` would. The
Windows-only flavours (directml; qnn, for Windows on Snapdragon) and the Windows sets of cuda and
openvino cannot be
installed here, so they resolve the extra's requirements (read from setup.cfg) for Windows wheels of this
Python version. The reports go to
$TESSERA_EXTRAS_CACHE or ~/.cache/tessera/extras, outside the checkout.
"""
from __future__ import annotations

import argparse
import configparser
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE_ENV = "TESSERA_EXTRAS_CACHE"
WINDOWS = "win_amd64"
WINDOWS_ARM = "win_arm64"
# report name -> (extra, platform or None for this machine)
REPORTS: dict[str, tuple[str, str | None]] = {
    "cpu": ("cpu", None),
    "cuda": ("cuda", None),
    "cuda-windows": ("cuda", WINDOWS),
    "rocm": ("rocm", None),
    "migraphx": ("migraphx", None),
    "directml": ("directml", WINDOWS),
    "openvino": ("openvino", None),
    "openvino-windows": ("openvino", WINDOWS),
    "qnn": ("qnn", WINDOWS_ARM),
}
WRITE_COMMAND = "python tests/extras_report.py --write"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tessera" / "extras")


def report_path(name: str) -> Path:
    return cache_dir() / f"{name}.json"


# Marker values of the Windows targets (pip judges markers for the running interpreter, even with --platform).
TARGET_MARKERS = {WINDOWS: {"sys_platform": "win32", "platform_system": "Windows", "os_name": "nt",
                            "platform_machine": "AMD64"},
                  WINDOWS_ARM: {"sys_platform": "win32", "platform_system": "Windows", "os_name": "nt",
                                "platform_machine": "ARM64"}}


def extra_requirements(extra: str, platform: str | None = None) -> list[str]:
    """The requirement lines setup.cfg lists for `extra`; for a `platform`, those whose markers hold there,
    without their markers."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip carries its own copy
        from pip._vendor.packaging.requirements import Requirement

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = [line.strip() for line in cfg["options.extras_require"][extra].splitlines() if line.strip()]
    if platform is None:
        return lines
    out = []
    for line in lines:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(TARGET_MARKERS[platform]):
            req.marker = None
            out.append(str(req))
    return out


def resolve(name: str) -> dict:
    """Run pip's dry-run resolution for one report; returns pip's JSON report."""
    extra, platform = REPORTS[name]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(out)]
        if platform is None:
            cmd.append(f".[{extra}]")
        else:  # the markers (e.g. sys_platform == "win32") are judged for the target platform
            version = f"{sys.version_info[0]}.{sys.version_info[1]}"
            cmd += ["--platform", platform, "--python-version", version, "--only-binary=:all:",
                    "--target", str(Path(tmp) / "target"), *extra_requirements(extra, platform)]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"pip could not resolve {name} ({' '.join(cmd[3:])}):\n{proc.stderr.strip()[-2000:]}")
        return json.loads(out.read_text())


def installs(report: dict) -> dict[str, str]:
    """{distribution name (normalised): version} of what a report would install."""
    return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in report["install"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help=f"resolve every extra and write the reports to {cache_dir()}")
    p.add_argument("--only", nargs="*", choices=sorted(REPORTS), help="resolve these reports only")
    a = p.parse_args(argv)
    if not a.write:
        p.print_help()
        return 2
    cache_dir().mkdir(parents=True, exist_ok=True)
    for name in a.only or REPORTS:
        report = resolve(name)
        report_path(name).write_text(json.dumps(report))
        got = installs(report)
        print(f"{name}: {', '.join(f'{k} {v}' for k, v in sorted(got.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
