"""The C runtime's own checks: its tests and the loader fuzzer under ASan + UBSan (make test, make
fuzz), run through make so they use the repository's build directory (incremental)."""

from __future__ import annotations

import os
import shutil

import pytest

from tide_test_models import repo_make


def _make(target: str, *args: str, timeout: int) -> str:
    if shutil.which("make") is None or shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.fail("make and a C compiler are required to build and test the runtime")
    proc = repo_make("-j2", target, *args, timeout=timeout)
    assert proc.returncode == 0, f"make {target} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout


def test_make_test():
    out = _make("test", timeout=300)
    assert "all C runtime tests passed" in out
    assert "exports OK" in out


def test_make_fuzz():
    out = _make("fuzz", "FUZZ_ITERATIONS=20000", timeout=300)
    assert "20000 mutants" in out and "fuzz OK" in out
