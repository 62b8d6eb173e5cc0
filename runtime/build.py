"""Locates (or builds) libtide_runtime.so for the Python binding, and gives the compiler the kernel
shim.

``library_path()`` looks, in order, at
  1. $TIDE_RUNTIME_LIB (an explicit path; it must exist);
  2. the repository build, ``<repo>/build/libtide_runtime.so`` (what ``make -C runtime`` writes),
     if it is at least as new as every runtime source;
  3. the user cache, ``$TIDE_CACHE`` (default ``~/.cache/tide``) / ``runtime-<hash of the
     sources>/libtide_runtime.so``, which it builds there with ``make -C runtime`` when missing.
Nothing here imports TVM.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
LIB_NAME = "libtide_runtime.so"


class RuntimeBuildError(RuntimeError):
    """The runtime library is missing and cannot be built here (the message says why)."""


def _sources() -> list[str]:
    files = glob.glob(os.path.join(HERE, "src", "*.[ch]")) + glob.glob(os.path.join(HERE, "include", "tide", "*.h"))
    return sorted(files + [os.path.join(HERE, "Makefile")])


def _fresh(lib: str, sources: list[str]) -> bool:
    if not os.path.isfile(lib):
        return False
    return os.path.getmtime(lib) >= max(os.path.getmtime(p) for p in sources)


def _source_hash(sources: list[str]) -> str:
    h = hashlib.sha256()
    for path in sources:
        h.update(os.path.relpath(path, HERE).encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def cache_dir() -> str:
    return os.environ.get("TIDE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tide")


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def library_path() -> str:
    """The path of a libtide_runtime.so built from the current sources (building it if needed)."""
    explicit = os.environ.get("TIDE_RUNTIME_LIB")
    if explicit:
        if not os.path.isfile(explicit):
            raise RuntimeBuildError(f"TIDE_RUNTIME_LIB={explicit}: no such file")
        return explicit
    sources = _sources()
    if not os.path.isfile(os.path.join(HERE, "Makefile")) or len(sources) < 3:
        raise RuntimeBuildError(f"{LIB_NAME} is not built and the runtime's C sources are not installed "
                                f"next to {HERE}; set TIDE_RUNTIME_LIB to a built library")
    repo_lib = os.path.join(os.path.dirname(HERE), "build", LIB_NAME)
    if _fresh(repo_lib, sources):
        return repo_lib
    target_dir = os.path.join(cache_dir(), f"runtime-{_source_hash(sources)}")
    lib = os.path.join(target_dir, LIB_NAME)
    if os.path.isfile(lib):
        return lib
    return _build(target_dir, lib)


def _build(target_dir: str, lib: str) -> str:
    if shutil.which("make") is None:
        raise RuntimeBuildError(f"{LIB_NAME} must be built but 'make' is not installed")
    cc = _compiler()
    if cc is None:
        raise RuntimeBuildError(f"{LIB_NAME} must be built but no C compiler was found (install gcc or set CC)")
    os.makedirs(target_dir, exist_ok=True)
    # Build in a private directory, then rename: concurrent builders never see a partial library.
    tmp = tempfile.mkdtemp(prefix=".build-", dir=target_dir)
    try:
        proc = subprocess.run(["make", "-s", "-C", HERE, f"BUILD={tmp}", f"CC={cc}", os.path.join(tmp, LIB_NAME)],
                              capture_output=True, text=True)
        built = os.path.join(tmp, LIB_NAME)
        if proc.returncode != 0 or not os.path.isfile(built):
            raise RuntimeBuildError(f"building {LIB_NAME} failed (make -C {HERE}):\n{proc.stdout}{proc.stderr}")
        os.replace(built, lib)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return lib


def kernel_shim_source() -> str:
    """runtime/src/kernel_shim.c: link it into every kernel library (see link_kernel_library)."""
    path = os.path.join(HERE, "src", "kernel_shim.c")
    if not os.path.isfile(path):
        raise RuntimeBuildError(f"the kernel shim {path} is missing from this install")
    return path


def link_kernel_library(objects: list[str], output: str) -> str:
    """Links kernel object files (e.g. ``tvm.compile(...).mod.write_to_file("k.o")``) with the kernel
    shim into the shared object ``output`` that goes into an artifact's KERNELS_HOST section:
    ``cc -shared -fPIC -O2 -o output objects... kernel_shim.c -lm -Wl,-Bsymbolic``."""
    cc = _compiler()
    if cc is None:
        raise RuntimeBuildError("no C compiler found to link the kernel library (install gcc or set CC)")
    cmd = [cc, "-shared", "-fPIC", "-O2", "-o", output, *objects, kernel_shim_source(), "-lm", "-Wl,-Bsymbolic"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeBuildError(f"linking the kernel library failed: {' '.join(cmd)}\n{proc.stderr}")
    return output
