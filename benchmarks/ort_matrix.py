"""Which onnxruntime builds run Tessera's graphs: every graph kind and precision of a tiny model and
the shipped default, on each tested onnxruntime version (export/ort_matrix.py says what passes).

    python benchmarks/ort_matrix.py --download-only   # once: cache the CPU wheels (needs the package index)
    python benchmarks/ort_matrix.py              # -> benchmarks/results/ort_matrix.md
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tessera.bench.env import cpu_model, versions

from tessera.export import ort_matrix
from tessera.models import default_model_dir

RESULTS = Path(__file__).resolve().parent / "results" / "ort_matrix.md"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--download", action="store_true", help="cache the onnxruntime wheels, then run")
    ap.add_argument("--download-only", action="store_true", help="cache the onnxruntime wheels and stop")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.download or args.download_only:
        ort_matrix.download_wheels()
        if args.download_only:
            print(f"onnxruntime wheels cached in {ort_matrix.wheel_dir()}")
            return 0
    with tempfile.TemporaryDirectory() as tmp:
        dirs = ort_matrix.tiny_model_dirs(Path(tmp))
        dirs["shipped default (fused fp32)"] = default_model_dir()
        table = ort_matrix.run_matrix(dirs, Path(tmp))
    text = ("# onnxruntime support matrix\n\n`python benchmarks/ort_matrix.py` (CPU execution provider; a cell "
            "is 'yes' when the directory loads and agrees with PyTorch as export/ort_matrix.py defines).\n\n"
            + f"Run with {versions(('tessera-ar', 'numpy', 'torch'), Path(__file__).resolve().parents[1])} on {cpu_model()}.\n\n"
            + ort_matrix.markdown(table))
    args.out.write_text(text)
    print(text)
    return 0 if all(ok for row in table.values() for ok, _ in row.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
