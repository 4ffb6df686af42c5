"""benchmarks/ stays a few thin scripts whose results can be reproduced: at most eight scripts, each of
which imports (a missing sibling or package function is a failure here, not a skip), and every results
file names the command that wrote it, a command that still exists (README's Benchmarks table is the index)."""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))
COMMAND = re.compile(r"`((?:python|bash) [^`]+|tessera [^`]+)`")


def test_benchmarks_are_at_most_eight_scripts():
    assert 0 < len(SCRIPTS) <= 8, [p.name for p in SCRIPTS]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_benchmark_script_imports(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # scripts import their siblings by bare name
    spec = importlib.util.spec_from_file_location(f"_benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    assert callable(getattr(module, "main", None)), f"{script.name} has no main()"


def runnable(command: str) -> bool:
    """The script or module a command runs exists in this checkout."""
    words = command.split()
    if words[0] == "tessera":
        return True
    if words[1] == "-m":
        return importlib.util.find_spec(words[2]) is not None
    return (ROOT / words[1]).is_file()


def benchmarks_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("\n## Benchmarks\n", 1)[1].split("\n## ", 1)[0]


def test_every_results_file_names_its_command():
    for path in sorted(RESULTS.iterdir()):
        if path.suffix == ".json":
            assert runnable(json.loads(path.read_text())["command"]), path.name
        elif path.suffix == ".md":
            text = path.read_text(encoding="utf-8")
            commands = COMMAND.findall(text)
            assert commands, f"{path.name} names no command"
            # a retired one-off investigation names the commit its script last lived in instead
            if not re.search(r"retired on [\d-]+; it last lived in commit [0-9a-f]{7}", text):
                stale = [c for c in commands if not runnable(c)]
                assert not stale, f"{path.name}: {stale} do not run in this checkout"


def test_the_readme_indexes_every_results_file_with_a_command_that_runs():
    section = benchmarks_section()
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    for row in rows:
        command = COMMAND.search(row.split("|")[1]).group(1)
        assert runnable(command), row
    listed = set(re.findall(r"benchmarks/results/([\w.]+)", section))
    missing = sorted(p.name for p in RESULTS.iterdir() if p.is_file() and p.name not in listed)
    assert not missing, f"results files missing from README's Benchmarks section: {missing}"
