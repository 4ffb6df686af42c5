"""A memory-limited device installs the runtime alone: it must work with torch absent."""
from __future__ import annotations

import subprocess
import sys
import textwrap

NO_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None\n"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH + textwrap.dedent(code)], capture_output=True, text=True)


def test_import_runtime_does_not_import_torch():
    r = subprocess.run([sys.executable, "-c", "import sys, tessera.runtime, tessera.cli.main; "
                        "tessera.cli.main.build_parser(); print('torch' in sys.modules)"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_generate_without_torch(tiny_dir, tmp_path):
    out = tmp_path / "x.png"
    r = _run(f"""
        from tessera.cli.main import main
        raise SystemExit(main(["generate", "4", "--model", r"{tiny_dir}", "--out", r"{out}", "-q"]))
    """)
    assert r.returncode == 0, r.stderr
    assert out.is_file()


def test_export_without_torch_names_the_extra(tmp_path):
    r = _run(f"""
        from tessera.cli.main import main
        raise SystemExit(main(["export", "--gpt", "GPT-Tiny", "--vq", "VQ-Tiny", "--random-weights",
                               "--out", r"{tmp_path / 'm'}"]))
    """)
    assert r.returncode == 1
    assert "pip install 'tessera-ar[export]'" in r.stderr
    assert "Traceback" not in r.stderr


def test_runtime_package_metadata_does_not_require_torch():
    from importlib import metadata

    reqs = metadata.requires("tessera-ar") or []
    base = [r for r in reqs if "extra ==" not in r]
    assert base and not any(r.lower().startswith(("torch", "onnx ", "onnx>", "onnxscript")) for r in base)
