#!/usr/bin/env bash
# GPU check, run THERE (the borrowed GPU machine: nvcc, cmake, torch, numpy, onnxruntime; no TVM),
# from the repository root:   bash bench/gpu/run.sh [BUNDLE_DIR]   (default bench/gpu/bundle)
# Builds the runtime (make -C runtime), loads each model artifact of the bundle on cuda:0 and checks
# it against the stored transformers tokens and logits (bench/gpu/check.py), then runs the benchmark
# suite's GPU mode on the bundle's kernel cases (each checked against its reference, then timed with
# device events, next to torch), writing JSON and plots to $OUT (default bench/gpu/results).
# Exit 0 = every check passed and the suite ran.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUNDLE="$(cd "${1:-$REPO/bench/gpu/bundle}" && pwd)"
PY="${PYTHON:-python3}"

echo "== GPU"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi: not available"
echo "== build the runtime (make -C runtime)"
make -C "$REPO/runtime" -j"$(nproc)"

# tide.runtime imports without TVM: a package named 'tide' pointing at the repository.
PKG="$(mktemp -d)"
trap 'rm -rf "$PKG"' EXIT
ln -s "$REPO" "$PKG/tide"
export PYTHONPATH="$PKG${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import cffi" 2>/dev/null; then
    want="$(cat "$BUNDLE/pylib/PYTHON_VERSION" 2>/dev/null || echo unknown)"
    have="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    if [ "$want" != "$have" ]; then
        echo "cffi is missing and the bundle's copy is for Python $want, this is Python $have" >&2
        exit 2
    fi
    export PYTHONPATH="$PYTHONPATH:$BUNDLE/pylib"
fi
export TIDE_RUNTIME_LIB="$REPO/build/libtide_runtime.so"
RESULTS="${OUT:-$REPO/bench/gpu/results}"
mkdir -p "$RESULTS"
status=0
echo "== check $BUNDLE"
"$PY" -m tide.bench.gpu.check "$BUNDLE" --device cuda:0 || status=1
echo "== kernel benchmarks ($BUNDLE/kernels -> $RESULTS)"
"$PY" -m tide.cli bench --target cuda --bundle "$BUNDLE/kernels" --json "$RESULTS/bench-cuda.json" || status=1
exit $status
