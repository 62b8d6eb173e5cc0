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
make -s -C runtime
if [ "${1:-}" != "--no-demo" ]; then
  .venv/bin/tide demo
fi
