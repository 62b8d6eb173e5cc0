#!/usr/bin/env bash
# Sets up tide on a fresh machine and runs the main job on the built-in `tiny` DeepSeek-V4 model:
# export to ONNX, compile for this CPU, generate tokens with tide's C runtime, check them against
# transformers and print tokens/s.  `./setup.sh --no-demo` only installs.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch==2.13.0 (CPU build) is pinned in pyproject.toml; apache-tvm with its ffi pairing too.
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[compile,export,test]'
# The Ascend toolchain (the target's compile checks and CPU numerics; see docs/ascend.md): the pip
# extra, and Debian's LLVM/MLIR 19 tools when apt can install them (root). CI needs both; elsewhere a
# missing piece only makes the Ascend tests skip, saying why. TIDE_NO_ASCEND=1 skips this step.
if [ "${TIDE_NO_ASCEND:-0}" != 1 ]; then
  ascend_missing=""
  .venv/bin/python -m pip install -q -e '.[ascend]' || ascend_missing="the ascendnpu-ir wheel"
  if ! command -v mlir-translate-19 >/dev/null || ! command -v llc-19 >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      (apt-get update -qq && apt-get install -y -qq mlir-19-tools llvm-19 libmlir-19-dev >/dev/null) ||
        ascend_missing="$ascend_missing Debian's mlir-19-tools/llvm-19/libmlir-19-dev"
    else
      ascend_missing="$ascend_missing Debian's mlir-19-tools/llvm-19/libmlir-19-dev (apt-get install as root)"
    fi
  fi
  if [ -n "$ascend_missing" ]; then
    echo "setup.sh: the Ascend toolchain is incomplete (missing:$ascend_missing); the Ascend tests will skip" >&2
    if [ "${CI:-}" = true ]; then exit 1; fi
  fi
fi
make -s -C runtime
if [ "${1:-}" != "--no-demo" ]; then
  .venv/bin/tide demo
fi
