"""A memory-limited device installs the runtime alone: it must work with torch absent."""
from __future__ import annotations

import subprocess
import sys
import textwrap

NO_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None\n"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH + textwrap.dedent(code)], capture_output=True, text=True)


def test_import_runtime_does_not_import_torch():
    r = subprocess.run([sys.executable, "-c", "import sys, tessera.cli.main; from tessera.runtime import Pipeline; "
                        "tessera.cli.main.build_parser(); print('torch' in sys.modules)"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


# The numpy core: what a host needs to sample, schedule and read a manifest, unit-testable anywhere.
CORE = ("errors", "versions", "sampling", "config", "schedule", "spec", "manifest", "self_test", "results",
        "decoders", "parallel", "jacobi", "anyorder", "images", "image_processing", "preview", "editing")


def test_the_core_imports_and_samples_without_onnxruntime(tiny_dir):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        sys.modules['onnxruntime'] = None  # any import of it fails
        import importlib
        for name in {CORE!r}:
            importlib.import_module('tessera.runtime.' + name)
        import numpy as np
        from tessera.runtime import SamplingConfig, load_manifest
        from tessera.runtime.sampling import ImageStreams, sample
        spec = load_manifest(r"{tiny_dir}").spec
        logits = np.random.default_rng(0).normal(size=(2, spec.transformer.vocab_size)).astype(np.float32)
        print(sample(logits, SamplingConfig(top_k=8), ImageStreams([0, 1], 1)).tolist())
        print('onnxruntime' in sys.modules and sys.modules['onnxruntime'] is not None)
    """)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    tokens, ort_loaded = r.stdout.split("\n")[:2]
    assert len(eval(tokens)) == 2 and ort_loaded == "False"


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
