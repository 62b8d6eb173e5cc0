"""Code generation: scheduled PrimFuncs -> the artifact's kernel library (and device code).

Runs after ``lower.to_dps``/``lower.build_plan`` (every kernel is a scheduled PrimFunc named as the
plan calls it) and before ``artifact.write_artifact``, which stores ``KernelLibrary.host`` as the
KERNELS_HOST section and ``KernelLibrary.device_code`` as DEVICE_CODE. Each target module
(``tide.targets.<kind>``) gives ``KIND``, ``tvm_target``, ``schedule``, ``host_arch``,
``host_features``/``feature_mask``; device targets add ``build_device_code`` (device code next to
a TVM-built host library) or ``build_kernels`` (ascend: the device code is the whole library, each
kernel translated from TIR and compiled by the target's own toolchain).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from .errors import CompileError

TARGETS = ("cpu", "cuda", "ascend")


@dataclass
class KernelLibrary:
    host: bytes                # ELF shared object: CPU kernels, or host stubs that launch device kernels
    device_code: bytes | None  # the DEVICE_CODE section (None on the CPU)
    device_arch: str           # the TARGET record's device architecture ("" on the CPU)


def target_module(kind: str):
    """``tide.targets.<kind>`` for a target name of ``tide compile --target``."""
    if kind not in TARGETS:
        raise CompileError(f"target '{kind}' is not available in this build of tide "
                           f"(available: {', '.join(TARGETS)})")
    return importlib.import_module(f"{__package__.rsplit('.', 1)[0]}.targets.{kind}")


def build(kernels: dict, tgt_mod, target, device_archs=()) -> KernelLibrary:
    """Compiles every kernel for ``target`` and links the host side with the runtime's shim; on a
    device target also compiles the device code for each of ``device_archs``."""
    import tvm

    if hasattr(tgt_mod, "build_kernels"):  # ascend: the device code is the whole library
        device_code, device_arch = tgt_mod.build_kernels(kernels, list(device_archs))
        return KernelLibrary(host=b"", device_code=device_code, device_arch=device_arch)
    funcs = {name: func.with_attr("global_symbol", name) for name, func in kernels.items()}
    try:
        exe = tvm.compile(tvm.IRModule(funcs), target=target)
    except Exception as err:
        raise CompileError(f"code generation failed{_failing_kernel(funcs, target, str(err))}: "
                           f"{type(err).__name__}: {err}") from err
    host = _link_host_library(exe.mod)
    if not hasattr(tgt_mod, "build_device_code"):
        return KernelLibrary(host=host, device_code=None, device_arch="")
    device_code, device_arch = tgt_mod.build_device_code(exe.mod, list(device_archs))
    return KernelLibrary(host=host, device_code=device_code, device_arch=device_arch)


def _failing_kernel(funcs: dict, target, message: str) -> str:
    """``" in kernel 'X'"`` for the kernel TVM's error names, else for the first kernel that fails to
    build on its own (TVM's pass errors often do not say which function they were in)."""
    import tvm

    named = [name for name in funcs if name in message]
    if named:
        return f" in kernel '{max(named, key=len)}'"
    for name, func in funcs.items():
        try:
            tvm.compile(tvm.IRModule({name: func}), target=target)
        except Exception:  # noqa: BLE001  (any failure identifies the kernel)
            return f" in kernel '{name}'"
    return ""


def _link_host_library(host_mod) -> bytes:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise CompileError("no C compiler found to link the kernel library (set CC)")
    with tempfile.TemporaryDirectory(prefix="tide-link-") as tmp:
        obj = os.path.join(tmp, "kernels.o")
        lib = os.path.join(tmp, "kernels.so")
        host_mod.write_to_file(obj)
        cmd = [cc, "-shared", "-fPIC", "-O2", "-o", lib, obj, kernel_shim_source(), "-lm", "-Wl,-Bsymbolic"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise CompileError(f"linking the kernel library failed: {' '.join(cmd)}\n{proc.stderr}")
        with open(lib, "rb") as f:
            return f.read()


def kernel_shim_source() -> str:
    """runtime/src/kernel_shim.c: routes the kernels' error reports to the runtime that loads them."""
    spec = importlib.util.find_spec(f"{__package__.rsplit('.', 1)[0]}.runtime")
    for base in spec.submodule_search_locations or []:
        path = os.path.join(base, "src", "kernel_shim.c")
        if os.path.isfile(path):
            return path
    raise CompileError("tide's runtime sources (runtime/src/kernel_shim.c) are missing from this install")
