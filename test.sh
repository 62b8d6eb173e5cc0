#!/usr/bin/env bash
# Runs tide's test suite (installs first when needed). Extra arguments go to pytest, e.g.
# `./test.sh -m heavy` for the long compiles and big shapes that CI skips.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh --no-demo
exec .venv/bin/python -m pytest -q "$@"
