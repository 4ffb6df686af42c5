#!/usr/bin/env bash
# GPU check, ready to run on one NVIDIA GPU with no network (about 5 minutes at most):
#
#   bash benchmarks/gpu_check.sh                      # -> benchmarks/results/gpu.md
#   TESSERA_GPU_PROVIDER=cpu bash benchmarks/gpu_check.sh --out /tmp/gpu_dry.md   # dry run on a CPU machine
#
# It (1) creates a fresh venv that sees the interpreter's packages (torch, onnx, numpy, safetensors),
# (2) installs every wheel of $TESSERA_GPU_WHEELS (default .whl/) into it, offline: onnxruntime-gpu,
# whose `onnxruntime` module then shadows the CPU onnxruntime of the parent environment (checked:
# CUDAExecutionProvider must be listed, by the module inside the venv), (3) makes `tessera` importable
# from this checkout (no pip, no build), (4) runs benchmarks/gpu_check.py --provider cuda under
# `timeout $TESSERA_GPU_BUDGET_S` (default 280 s). Extra arguments go to gpu_check.py (--quick,
# --tokens N, --rounds N, --work DIR, --out FILE, --anyorder-only). gpu_check.py reports which provider
# really ran each graph and exits 2 when CUDA cannot start (it never measures a silent CPU fallback). It
# reads the same budget (TESSERA_GPU_BUDGET_S, default 280; --budget-s) and skips its last stage, the
# any-order timing, with a note when too little is left. That stage times the portable graph: onnxruntime-gpu
# 1.31 cannot load the fused graph's 1.32 form, and its 1.22 form runs a step's queries one per call.
#
# Fetch the wheels beforehand, on a machine with the package index (GPU machine: CPython 3.12):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl onnxruntime-gpu==1.31.1
#
# (~256 MB, so more than a 64 MiB `carry` of the device tool: place .whl/ where the GPU machine sees it.)
# onnxruntime-gpu 1.31.1 is built for CUDA 13.0 (onnxruntime/capi/build_and_package_info.py; its
# libonnxruntime_providers_cuda.so needs libcudart.so.13, libcublas(Lt).so.13, libcurand.so.10, and cuDNN 9),
# the CUDA of the GPU machine's torch. gpu_check.py imports torch first, which loads those libraries from
# torch's nvidia packages, then calls onnxruntime.preload_dlls() (onnxruntime >= 1.21, which looks for
# nvidia packages next to onnxruntime, i.e. in the venv). If the check stops with "CUDAExecutionProvider
# cannot run here" naming a missing library, download the CUDA 13 nvidia wheels that `pip show torch`
# requires into .whl/ with the same command (they are installed into the venv too). An onnxruntime-gpu
# built for CUDA 12 would need nvidia-cuda-runtime-cu12, nvidia-cublas-cu12, nvidia-curand-cu12,
# nvidia-cufft-cu12 and nvidia-cudnn-cu12 instead.
#
# Environment: TESSERA_GPU_PROVIDER (cuda | cpu), TESSERA_GPU_WHEELS (folder of wheels), TESSERA_GPU_VENV
# (venv path; default a fresh temp folder, removed at exit), TESSERA_GPU_BUDGET_S (280), PYTHON (python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
PROVIDER=${TESSERA_GPU_PROVIDER:-cuda}
WHEELS=${TESSERA_GPU_WHEELS:-.whl}
BUDGET=${TESSERA_GPU_BUDGET_S:-280}
PY=${PYTHON:-python3}
die() { echo "gpu_check.sh: $*" >&2; exit 3; }

case "$PROVIDER" in cuda|cpu) ;; *) die "TESSERA_GPU_PROVIDER must be cuda or cpu, not '$PROVIDER'" ;; esac
if [[ -n "${TESSERA_GPU_VENV:-}" ]]; then
  VENV=$TESSERA_GPU_VENV
else
  TMP=$(mktemp -d -t tessera-gpu-venv.XXXXXX)
  trap 'rm -rf "$TMP"' EXIT
  VENV=$TMP/venv
fi

# (1) A fresh venv over the interpreter's packages. A venv made from a venv sees the *base* interpreter's
# site-packages with --system-site-packages, so the parent's own site folders are added by a .pth file
# (appended after the venv's site-packages: what is installed in the venv wins).
echo "== venv $VENV (from $(command -v "$PY"))"
"$PY" -m venv --system-site-packages "$VENV" 2>/dev/null || "$PY" -m venv --system-site-packages --without-pip "$VENV" \
  || die "could not create a venv with $PY"
VPY=$VENV/bin/python
SITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$PY" - "$SITE/zz_parent_site.pth" <<'EOF'
import site, sys
dirs = [d for d in site.getsitepackages() + [site.getusersitepackages()] if d]
open(sys.argv[1], "w").write("".join(f"import site; site.addsitedir({d!r})\n" for d in dirs))
EOF

# (2) The wheels, offline, without dependencies (pip of the venv or inherited from the parent; a wheel
# is a zip archive, so without any pip it is unpacked into site-packages).
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
gpu_wheels=("$WHEELS"/onnxruntime_gpu-*.whl)
if [[ "$PROVIDER" == cuda && ${#gpu_wheels[@]} -eq 0 ]]; then
  die "no onnxruntime_gpu-*.whl in $WHEELS (TESSERA_GPU_WHEELS); fetch it first, see the header of $0"
fi
if (( ${#wheels[@]} )); then
  echo "== installing ${#wheels[@]} wheel(s) from $WHEELS"
  if "$VPY" -m pip --version >/dev/null 2>&1; then
    "$VPY" -m pip install --quiet --no-index --no-deps --no-warn-conflicts --disable-pip-version-check "${wheels[@]}"
  else
    for w in "${wheels[@]}"; do "$VPY" -m zipfile -e "$w" "$SITE"; done
  fi
fi

# (3) `tessera` from this checkout: the package maps tessera.{runtime,export,models} to top-level folders.
mkdir -p "$VENV/tessera-src/tessera"
for pkg in runtime export models; do ln -sfn "$REPO/$pkg" "$VENV/tessera-src/tessera/$pkg"; done
echo "$VENV/tessera-src" > "$SITE/00_tessera_checkout.pth"

echo "== onnxruntime in the venv"
"$VPY" - "$PROVIDER" "$VENV" <<'EOF' || exit 3
import sys, warnings
warnings.simplefilter("ignore")
import onnxruntime as ort
import tessera.runtime, torch
provider, venv = sys.argv[1], sys.argv[2]
providers = ort.get_available_providers()
print(f"onnxruntime {ort.__version__} from {ort.__file__}\n  providers {providers}")
print(f"tessera from {tessera.runtime.__path__[0]}, torch {torch.__version__} (CUDA {torch.version.cuda})")
if provider == "cuda":
    if "CUDAExecutionProvider" not in providers:
        sys.exit("gpu_check.sh: this onnxruntime lists no CUDAExecutionProvider: the CPU onnxruntime of the parent "
                 "environment was imported, not onnxruntime-gpu from the venv")
    if not ort.__file__.startswith(venv):
        sys.exit(f"gpu_check.sh: onnxruntime was imported from {ort.__file__}, not from the venv's onnxruntime-gpu")
EOF

# (4) The check itself, under a hard time limit.
echo "== benchmarks/gpu_check.py --provider $PROVIDER $* (limit ${BUDGET} s)"
set +e
timeout --kill-after=15 "$BUDGET" "$VPY" benchmarks/gpu_check.py --provider "$PROVIDER" "$@"
rc=$?
set -e
if (( rc == 124 || rc == 137 )); then
  echo "gpu_check.sh: stopped after ${BUDGET} s; the report holds the stages that finished" >&2
fi
exit $rc
