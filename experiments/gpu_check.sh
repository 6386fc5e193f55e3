#!/usr/bin/env bash
# GPU figures: train the paper preset (384x384, D = 768, depth 12, batch 8) for a fixed number
# of steps with bf16 autocast on synthetic batches, then record images/s and GPU memory; once eager and
# once with torch.compile. Under 8 minutes on one GPU (each run is capped by `timeout`).
#
# Needs only python with torch and timm (timm brings pyyaml): the project goes on PYTHONPATH and kornia
# comes along as a wheel in experiments/wheels/ (pure python, imported straight from the .whl file;
# kornia_rs, which only kornia.io needs, is stubbed when absent). No Hydra, Lightning, W&B, dataset or
# network.
#
#   experiments/gpu_check.sh --prepare   # where pip works or the project's venv is: kornia -> experiments/wheels/
#   experiments/gpu_check.sh             # on the GPU machine (copy the repo with experiments/wheels/)
#   experiments/gpu_check.sh --steps 100 --batch 16       # extra arguments go to experiments/gpu_check.py
#   GPU_CHECK_COMPILE=0 experiments/gpu_check.sh          # skip the torch.compile run
#   experiments/gpu_check.sh --device cpu --tiny --steps 2 --warmup 1   # a smoke test without a GPU
#
# Results: experiments/gpu_results/gpu_check_<date>_{eager,compile}.json (OUT_DIR overrides the folder),
# plus one summary line per run. Commit them with the date (docs/results.md, "Benchmarks").
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
WHEELS="$HERE/wheels"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$REPO/.venv/bin/python" && "${1:-}" == "--prepare" ]]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi
fi

if [[ "${1:-}" == "--prepare" ]]; then
  mkdir -p "$WHEELS"
  version="$("$PY" -c 'import kornia; print(kornia.__version__)' 2>/dev/null || true)"
  if "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$WHEELS" "kornia${version:+==$version}"; then
    ls -l "$WHEELS"
    exit 0
  fi
  # No index: zip the installed copy (a zip with the package at its root imports like a pure-python wheel).
  [[ -n "$version" ]] || { echo "gpu_check --prepare: no kornia to download or copy" >&2; exit 2; }
  "$PY" - "$WHEELS/kornia-$version-py3-none-any.whl" <<'EOF'
import pathlib, sys, zipfile
import kornia
root = pathlib.Path(kornia.__file__).parent
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as zf:
    for f in root.rglob("*.py"):
        zf.write(f, f.relative_to(root.parent))
print(sys.argv[1])
EOF
  exit 0
fi

# kornia: the installed one, else the newest wheel in experiments/wheels/
KORNIA=""
if ! "$PY" -c 'import kornia' >/dev/null 2>&1; then
  for w in "$WHEELS"/kornia-*.whl; do [[ -e "$w" ]] && KORNIA="$w"; done
  if [[ -z "$KORNIA" ]]; then
    echo "gpu_check: kornia is not installed and experiments/wheels/ holds no kornia wheel;" \
         "run 'experiments/gpu_check.sh --prepare' where pip or the project's venv works, and copy experiments/wheels/ along" >&2
    exit 2
  fi
fi
export PYTHONPATH="$REPO${KORNIA:+:$KORNIA}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
OUT_DIR="${OUT_DIR:-$HERE/gpu_results}"
mkdir -p "$OUT_DIR"
STAMP="$(date +%Y-%m-%d_%H%M%S)"
"$PY" -c 'import torch; print("[gpu_check] torch", torch.__version__, "cuda", torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'

status=0
timeout "${GPU_CHECK_TIMEOUT_EAGER:-200}" "$PY" "$HERE/gpu_check.py" --out "$OUT_DIR/gpu_check_${STAMP}_eager.json" "$@" \
  || { status=$?; echo "[gpu_check] eager run failed or timed out (exit $status)" >&2; }
if [[ "${GPU_CHECK_COMPILE:-1}" == "1" ]]; then
  timeout "${GPU_CHECK_TIMEOUT_COMPILE:-240}" "$PY" "$HERE/gpu_check.py" --compile \
    --out "$OUT_DIR/gpu_check_${STAMP}_compile.json" "$@" \
    || echo "[gpu_check] compile run failed or timed out (exit $?); the eager figures stand" >&2
fi
exit "$status"
