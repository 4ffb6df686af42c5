"""The runtime's layers (the table in runtime/__init__.py's docstring) hold in its imports: a module
imports, at module level, only modules of its own layer or a lower one (core < platform <
features < api), every runtime module is in the table once, and the core imports without onnxruntime."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tessera.runtime as runtime

RUNTIME = Path(runtime.__file__).parent
ORDER = ("core", "platform", "features", "api")
ROW = re.compile(r"^    (\w+)\s+(" + "|".join(ORDER) + r")\s+\S")


def layer_table() -> dict[str, str]:
    rows = [ROW.match(line) for line in (runtime.__doc__ or "").splitlines()]
    table: dict[str, str] = {}
    for m in filter(None, rows):
        assert m.group(1) not in table, f"{m.group(1)} is listed twice in the layer table"
        table[m.group(1)] = m.group(2)
    return table


def module_imports(path: Path) -> set[str]:
    """The runtime modules `path` imports at module level (relative imports: `from .x import`,
    `from . import x`)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            name = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            assert not (name or "").startswith("tessera.runtime"), f"{path.name}: import the runtime relatively"
    return found


def test_every_runtime_module_is_in_one_layer():
    table, modules = layer_table(), {p.stem for p in RUNTIME.glob("*.py")}
    assert sorted(modules - set(table)) == [], "runtime modules in no layer: add them to runtime/__init__.py's table"
    assert sorted(set(table) - modules) == [], "the layer table lists modules that do not exist"


def test_no_module_imports_a_higher_layer():
    table = layer_table()
    wrong = []
    for path in sorted(RUNTIME.glob("*.py")):
        mine = table.get(path.stem)
        if mine is None:
            continue  # reported by the test above
        for other in sorted(module_imports(path)):
            theirs = table.get(other)
            if theirs is not None and ORDER.index(theirs) > ORDER.index(mine):
                wrong.append(f"{path.stem} ({mine}) imports {other} ({theirs})")
    assert wrong == []


@pytest.mark.parametrize("source, layer, other, found", [
    ("from .session import open_session\n", "core", "session", True),
    ("from . import preview\n", "platform", "preview", True),
    ("def f():\n    from .session import open_session\n", "core", "session", False),  # lazy: allowed
])
def test_the_import_reader_sees_module_level_imports_only(tmp_path, source, layer, other, found):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert (other in module_imports(path)) is found


def test_the_core_layer_imports_without_onnxruntime():
    core = sorted(m for m, layer in layer_table().items() if layer == "core" and m != "__init__")
    assert {"sampling", "config", "decoders", "spec"} <= set(core)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import importlib, sys
        sys.modules['onnxruntime'] = None  # any import of it fails
        for name in {core!r}:
            importlib.import_module('tessera.runtime.' + name)
    """)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# The runtime files one `generate` call runs code in after load (issue 22: a small path to read).
# A change that adds one should say why here; the lazy imports of a first call are excluded.
GENERATE_PATH = {"pipeline", "config", "decoders", "sampling", "spec", "loaded", "runners", "transformer",
                 "tokenizer", "errors"}


def test_a_generate_call_runs_in_the_listed_runtime_files(tiny_dir):
    from tessera.runtime import Pipeline

    pipe = Pipeline.load(tiny_dir, providers="cpu", verify="none")
    pipe.generate([1], seed=0)  # first call: lazy imports
    seen: set[str] = set()

    def profile(frame, event, arg):
        path = Path(frame.f_code.co_filename)
        if event == "call" and path.parent == RUNTIME:
            seen.add(path.stem)

    sys.setprofile(profile)
    try:
        pipe.generate([1], seed=0)
    finally:
        sys.setprofile(None)
    assert seen == GENERATE_PATH
