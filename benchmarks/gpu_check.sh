#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py --provider cuda) from a plain copy of this repository, on a machine without
# network whose Python has torch (CUDA build), onnx, onnxscript, numpy and safetensors, and no Tessera installed:
#
#   TESSERA_GPU_WHEELS=DIR bash benchmarks/gpu_check.sh [--out FILE]          # -> benchmarks/results/gpu.md
#   TESSERA_GPU_PROVIDER=cpu TESSERA_GPU_WHEELS=DIR bash benchmarks/gpu_check.sh --quick --out /tmp/gpu.md   # dry run
#
# DIR holds the wheels to install, fetched beforehand where the package index is reachable (for CPython 3.12):
#
#   python3 -m pip download --no-deps --only-binary=:all: --implementation cp --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d DIR onnxruntime-gpu==1.31.1 pillow
#
# onnxruntime-gpu 1.31.1 is built for CUDA 13, as torch cu130 (whose nvidia packages supply the CUDA libraries);
# pillow is the runtime's, for a machine without it. The script makes a fresh venv that sees this Python's packages
# but not a Tessera installed there, unpacks the wheels into it (onnxruntime-gpu shadows a CPU onnxruntime), links
# `tessera` from this copy as setup.cfg's package_dir maps it, and runs gpu_check.py with the rest of the
# TESSERA_GPU_BUDGET_S seconds (default 280) for the whole script as a hard limit. Also: PYTHON (default python3),
# TESSERA_GPU_VENV (the venv's folder, kept; default a temporary one). Exit status: gpu_check.py's (0 passed, 1 a
# check failed, 2 CUDA cannot start, 124 out of time), 3 the set-up failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PROVIDER=${TESSERA_GPU_PROVIDER:-cuda}
WHEELS=${TESSERA_GPU_WHEELS:-}
BUDGET=${TESSERA_GPU_BUDGET_S:-280}
PY=${PYTHON:-python3}
die() { echo "gpu_check.sh: $*" >&2; exit 3; }
case "$PROVIDER" in cuda|cpu) ;; *) die "TESSERA_GPU_PROVIDER must be cuda or cpu, not '$PROVIDER'" ;; esac
[[ -n "$WHEELS" && -d "$WHEELS" ]] || die "TESSERA_GPU_WHEELS must name the folder of wheels, see the header of $0"
[[ "$BUDGET" =~ ^[0-9]+$ ]] || die "TESSERA_GPU_BUDGET_S must be whole seconds, not '$BUDGET'"
"$PY" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || die "$PY is older than Python 3.11"
TMP=$(mktemp -d -t tessera-gpu-check.XXXXXX)  # the venv unless TESSERA_GPU_VENV, and the check's exports
trap 'rm -rf "$TMP"' EXIT
VENV=${TESSERA_GPU_VENV:-$TMP/venv}
"$PY" -m venv --without-pip "$VENV" || die "'$PY -m venv' cannot make a venv here (set PYTHON)"
VPY=$VENV/bin/python
# Paths the venv's own interpreter has; the parent's other sys.path entries are added to it as plain path lines,
# so a .pth there (e.g. an editable Tessera's import hook) is never run.
SITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -f "$SITE/00_tessera_copy.pth" "$SITE/01_parent_paths.pth"  # a kept venv's (TESSERA_GPU_VENV)
export GPU_CHECK_OWN_PATHS; GPU_CHECK_OWN_PATHS=$("$VPY" -c 'import sys; print("\n".join(sys.path))')

"$PY" - "$VENV" "$SITE" "$WHEELS" "$PROVIDER" <<'EOF' || exit 3
import configparser, os, shutil, sys, zipfile
from pathlib import Path

venv, site, wheels, provider = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
repo, own = Path.cwd().resolve(), set(os.environ["GPU_CHECK_OWN_PATHS"].splitlines())
parent = [p for p in dict.fromkeys(sys.path) if p and p not in own and os.path.exists(p)
          and not Path(p).resolve().is_relative_to(repo)]
found = sorted(wheels.glob("*.whl"))
ort = [w.name for w in found if w.name.lower().startswith(("onnxruntime-", "onnxruntime_"))]
if len(ort) > 1:
    sys.exit(f"gpu_check.sh: {len(ort)} onnxruntime wheels in {wheels} ({', '.join(ort)}) share one module: keep one")
if provider == "cuda" and not any(n.startswith("onnxruntime_gpu-") for n in ort):
    sys.exit(f"gpu_check.sh: no onnxruntime_gpu-*.whl in {wheels}; fetch it first (see the header of gpu_check.sh)")
for wheel in found:  # a wheel is a zip of site-packages (PEP 427); its .data/purelib|platlib go there too
    print(f"== unpacking {wheel.name}", flush=True)
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            top, _, rest = info.filename.partition("/")
            if top.endswith(".data"):
                scheme, _, rest = rest.partition("/")
                if scheme not in ("purelib", "platlib"):
                    continue  # scripts, headers, data: nothing the check imports
            else:
                rest = info.filename
            if rest and not info.is_dir():
                dest = site / rest
                dest.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
                if (info.external_attr >> 16) & 0o111:
                    dest.chmod(0o755)
# `tessera` from this copy: each package of setup.cfg's package_dir linked to its folder.
cfg = configparser.ConfigParser()
cfg.read(repo / "setup.cfg")
mapping = dict(map(str.strip, line.split("=", 1)) for line in cfg["options"]["package_dir"].splitlines() if "=" in line)
tree = venv / "tessera-copy"
shutil.rmtree(tree, ignore_errors=True)  # a kept venv (TESSERA_GPU_VENV) gets links to this copy
for name in sorted(mapping):  # parents before children
    folder, target = repo / mapping[name], tree.joinpath(*name.split("."))
    if not folder.is_dir():
        print(f"== {name}: {mapping[name]}/ is not in this copy")
        continue
    children = {n.rpartition(".")[2] for n in mapping if n.rpartition(".")[0] == name}
    target.parent.mkdir(parents=True, exist_ok=True)
    if children:  # a folder of links, so that the children's links do not land in the copy
        target.mkdir()
        for f in folder.iterdir():
            if f.name not in children | {"__pycache__"}:
                (target / f.name).symlink_to(f)
    else:
        target.symlink_to(folder, target_is_directory=True)
(site / "00_tessera_copy.pth").write_text(f"{tree}\n")
(site / "01_parent_paths.pth").write_text("".join(f"{p}\n" for p in parent))
EOF

echo "== the venv's Python"
unset PYTHONPATH  # its entries are in 01_parent_paths.pth, after the copy's tessera
# Never the working directory first on sys.path (`python -m` puts it there): this copy's tessera/ folder
# holds only __init__.py and would hide the linked package.
export PYTHONSAFEPATH=1
export PYTHONWARNINGS="ignore:several onnxruntime flavours"  # the venv's onnxruntime shadows the parent's
LIBS=$("$VPY" - "$PROVIDER" "$VENV" "$SITE" <<'EOF'
import importlib.util, sys
from pathlib import Path

provider, venv, site = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
lost = [m for m in ("numpy", "PIL", "onnx", "onnxscript", "safetensors", "torch", "onnxruntime")
        if importlib.util.find_spec(m) is None]
if lost:
    sys.exit(f"gpu_check.sh: {', '.join(lost)} not importable; add the wheels to TESSERA_GPU_WHEELS (PIL: pillow)")
import tessera, tessera.bench, tessera.export, tessera.runtime  # noqa: E401
for pkg in (tessera, tessera.bench, tessera.export, tessera.runtime):
    if not Path(pkg.__path__[0]).is_relative_to(venv / "tessera-copy"):
        sys.exit(f"gpu_check.sh: {pkg.__name__} was imported from {pkg.__path__[0]}, not from this copy")
import onnxruntime as ort
where, listed = Path(ort.__file__).parent, ort.get_available_providers()
print(f"onnxruntime {ort.__version__} from {where}: {listed}\ntessera from {Path(tessera.__file__).parent.resolve()}",
      file=sys.stderr)
if provider == "cuda":
    if "CUDAExecutionProvider" not in listed or not where.is_relative_to(site):
        sys.exit("gpu_check.sh: the onnxruntime imported is not the venv's onnxruntime-gpu")
    nvidia = importlib.util.find_spec("nvidia")  # torch's CUDA libraries, for processes that do not import torch
    roots = nvidia.submodule_search_locations if nvidia else ()
    print(":".join(str(lib) for root in roots for lib in Path(root).glob("*/lib")))
EOF
) || exit 3
[[ -n "$LIBS" ]] && export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

LEFT=$(( BUDGET - SECONDS ))
(( LEFT > 30 )) || die "the set-up took ${SECONDS} s of TESSERA_GPU_BUDGET_S=$BUDGET"
echo "== benchmarks/gpu_check.py --provider $PROVIDER $* ($LEFT s left)"
export GPU_CHECK_COMMAND="bash benchmarks/gpu_check.sh $*" GPU_CHECK_ENV="TESSERA_GPU_PROVIDER=$PROVIDER TESSERA_GPU_BUDGET_S=$BUDGET"
set +e
TMPDIR=$TMP timeout -k 15 "$LEFT" "$VPY" benchmarks/gpu_check.py --provider "$PROVIDER" --budget-s "$LEFT" "$@"
rc=$?
set -e
(( rc == 124 || rc == 137 )) && echo "gpu_check.sh: stopped at $BUDGET s; the report has the stages done" >&2
exit $rc
