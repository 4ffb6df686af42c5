"""The import graph of the source folders, read with `ast` (nothing is imported): no cycles between
modules (lazy imports inside functions count too), and no import across a layer boundary.

    runtime  <-  export  <-  training          models: data only; examples: the runtime only
      ^  ^         ^                          bench: the runtime only (tessera bench runs without torch)
      |  bench     |
      +-- cli -----+ (and bench)               benchmarks: anything, but nothing imports them

The runtime never imports torch (nor export, training, cli); the export stage never imports the CLI or
training; `import tessera` imports nothing of its subpackages. Run as a script to print the graph's
cycles and forbidden edges: python tests/test_layers.py
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# folder -> import name (setup.cfg package_dir); benchmarks are scripts importing each other by bare name
PACKAGES = {"tessera": "tessera", "runtime": "tessera.runtime", "export": "tessera.export",
            "training": "tessera.training", "cli": "tessera.cli", "models": "tessera.models",
            "examples": "tessera.examples", "bench": "tessera.bench", "benchmarks": "benchmarks"}
# layer -> layers (or third-party top-level modules) it must not import
FORBIDDEN = {
    "tessera": {"runtime", "export", "training", "cli", "models", "examples", "bench", "benchmarks"},
    "runtime": {"export", "training", "cli", "examples", "bench", "benchmarks", "torch", "onnx", "onnxscript",
                "safetensors"},
    "export": {"training", "cli", "examples", "bench", "benchmarks"},
    "training": {"cli", "examples", "bench", "benchmarks"},
    "cli": {"training", "benchmarks"},
    "models": {"runtime", "export", "training", "cli", "examples", "bench", "benchmarks", "torch"},
    "examples": {"export", "training", "cli", "bench", "benchmarks", "torch"},
    "bench": {"export", "training", "cli", "models", "examples", "benchmarks", "torch", "onnx", "onnxscript",
              "safetensors"},
    "benchmarks": set(),
}
# Deprecated re-export shims, each allowed its one edge until the tests that import the old location move
# (then delete the file and its line here).
SHIMS: set[tuple[str, str]] = set()


def modules() -> dict[str, Path]:
    """Import name -> file, for every .py file of the mapped folders."""
    out = {}
    for folder, name in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([name, *parts])] = path
    return out


def layer_of(module: str) -> str | None:
    if module == "tessera":
        return "tessera"
    for folder, name in PACKAGES.items():
        if folder != "tessera" and (module == name or module.startswith(name + ".")):
            return folder
    return None


def imports_of(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, resolved to a known module where one is
    meant, else to the top-level name of a third-party or standard module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    bench = layer_of(module) == "benchmarks"
    found = []

    def resolve(name: str) -> str:
        if bench and f"benchmarks.{name.split('.')[0]}" in known:  # sys.path-relative import of a sibling script
            return f"benchmarks.{name.split('.')[0]}"
        while name and name not in known:
            if not name.startswith("tessera") or "." not in name:
                return name.split(".")[0]
            name = name.rpartition(".")[0]
        return name

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(resolve(a.name), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in known else resolve(target), node.lineno))
    return [(m, line) for m, line in found if m != module]


def graph() -> tuple[dict[str, set[str]], list[str]]:
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    problems = []
    for module, path in known.items():
        src = layer_of(module)
        rel = path.relative_to(ROOT).as_posix()
        for target, line in imports_of(module, path, known):
            if target in known:
                edges[module].add(target)
            dst = layer_of(target) if target in known else target
            if dst in FORBIDDEN[src] and (rel, dst) not in SHIMS:
                problems.append(f"{rel}:{line}: {src} imports {target} ({src} -> {dst} is not allowed)")
    return edges, problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def test_the_graph_sees_the_layers():
    edges, _ = graph()
    assert "tessera.export.model_dir" in edges["tessera.export.cli"] or "tessera.export.build" in edges["tessera.export.cli"]
    assert "tessera.export.cli" in edges["tessera.cli.main"]  # the CLI knows the export stage
    assert "benchmarks.eval_default" in edges["benchmarks.decoders"]  # bare sibling imports resolve
    assert "tessera.bench.decoders" in edges["benchmarks.decoders"]  # benchmarks run on the package harness
    assert "tessera.runtime.errors" in edges["tessera.export.errors"]
    assert "tessera.bench.run" in edges["tessera.cli.bench"]  # the CLI knows the bench package
    assert "tessera.bench.protocol" in edges["tessera.bench.run"]


def test_no_import_cycles():
    assert cycles(graph()[0]) == []


def test_no_forbidden_edges():
    assert graph()[1] == []


def test_a_cycle_and_a_forbidden_edge_are_caught(tmp_path, monkeypatch):
    """The checks can fail: a fake tree with a cycle and a runtime -> torch import."""
    for folder in PACKAGES:
        (tmp_path / folder).mkdir()
    (tmp_path / "runtime" / "a.py").write_text("from . import b\n")
    (tmp_path / "runtime" / "b.py").write_text("def f():\n    from .a import x\n    import torch\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    edges, problems = graph()
    assert cycles(edges) == [["tessera.runtime.a", "tessera.runtime.b"]]
    assert problems == ["runtime/b.py:3: runtime imports torch (runtime -> torch is not allowed)"]


if __name__ == "__main__":
    e, p = graph()
    for c in cycles(e):
        print("cycle:", " <-> ".join(c))
    for line in p:
        print("forbidden:", line)
    print(f"{len(e)} modules, {sum(map(len, e.values()))} edges")
