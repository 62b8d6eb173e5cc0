"""Finds (or builds, with make and a C compiler) libtide_runtime.so for the Python binding.

Order: $TIDE_RUNTIME_LIB; the repository build (``<repo>/build``, what ``make -C runtime`` and
``setup.sh`` produce) when it is newer than the C sources; else a build into $TIDE_CACHE (default
~/.cache/tide).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
LIB_NAME = "libtide_runtime.so"


class RuntimeBuildError(RuntimeError):
    """The runtime library is missing and cannot be built here."""


def _sources() -> list[str]:
    return glob.glob(os.path.join(HERE, "src", "*")) + glob.glob(os.path.join(HERE, "include", "tide", "*.h")) \
        + [os.path.join(HERE, "Makefile")]


def _fresh(lib: str) -> bool:
    if not os.path.isfile(lib):
        return False
    newest = max((os.path.getmtime(p) for p in _sources()), default=0.0)
    return os.path.getmtime(lib) >= newest


def library_path() -> str:
    explicit = os.environ.get("TIDE_RUNTIME_LIB")
    if explicit:
        if not os.path.isfile(explicit):
            raise RuntimeBuildError(f"TIDE_RUNTIME_LIB={explicit}: no such file")
        return explicit
    repo_lib = os.path.join(os.path.dirname(HERE), "build", LIB_NAME)
    if _fresh(repo_lib):
        return repo_lib
    cache = os.path.join(os.environ.get("TIDE_CACHE", os.path.expanduser("~/.cache/tide")), "runtime")
    lib = os.path.join(cache, LIB_NAME)
    if _fresh(lib):
        return lib
    if not os.path.isfile(os.path.join(HERE, "Makefile")):
        raise RuntimeBuildError(f"{LIB_NAME} is not built and the runtime sources are not installed")
    if shutil.which("make") is None or shutil.which(os.environ.get("CC", "cc")) is None and shutil.which("gcc") is None:
        raise RuntimeBuildError(f"{LIB_NAME} is not built and no C compiler/make is available to build it")
    os.makedirs(cache, exist_ok=True)
    proc = subprocess.run(["make", "-s", "-C", HERE, f"BUILD={cache}"], capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.isfile(lib):
        raise RuntimeBuildError(f"building {LIB_NAME} failed:\n{proc.stdout}{proc.stderr}")
    return lib


def kernel_shim_source() -> str:
    """The C file the compiler links into every kernel library (error reporting hook)."""
    return os.path.join(HERE, "src", "kernel_shim.c")
