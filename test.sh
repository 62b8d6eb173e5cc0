#!/usr/bin/env bash
# Runs tide's test suite (installs first when needed). Extra arguments go to pytest, e.g.
# `./test.sh -m heavy` for the long compiles and big shapes that CI skips. Test files run in
# TIDE_TEST_WORKERS parallel workers (pytest-xdist, default 2: most of the time is single-threaded
# compiles; each file stays on one worker so its compiled fixtures are built once, and the longest
# files start first: tests/conftest.py); 0 runs in-process.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh --no-demo
exec .venv/bin/python -m pytest -q -n "${TIDE_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
