"""The one interface between the compiler and a target: ``Target``.

A target is one folder under ``tide/targets/`` whose ``__init__`` exports one instance of a
``Target`` subclass as ``TARGET`` (``tide.targets.registry`` finds it). The compiler's stages ask it,
in pipeline order:

==============  ===============================================================================
stage           what the target gives
==============  ===============================================================================
command line    ``kind`` (``--target``), ``arch_flag``/``arch_help`` and ``parse_archs`` (``--arch``,
                ``--soc``, ...)
import          ``tvm_target`` (the TVM target the graph is legalized and built with)
substitute      ``choose(op, **facts)``: its choices for a tide kernel (blocking, weight layout,
                row loop, the variant it implements itself), from ``choices``
lower           ``fused_tensor_bytes``: ops with a larger tensor are not fused
schedule        ``rules[kernel]`` for tide kernels (by their ``tide.kernel`` identity), else
                ``schedule_generic`` (TVM-lowered kernels, and tide kernels without a rule)
codegen         ``build``: the kernel library (host code, device code)
artifact        ``runtime`` (the runtime backend that executes it), ``requirements`` (the TARGET
                record), ``device_code`` (the DEVICE_CODE section format, read back by inspect)
==============  ===============================================================================

Importing a target folder needs neither TVM nor a toolchain: ``tide inspect`` and ``tide run`` use
the registry too. Everything that needs TVM imports it inside the method.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping

from ..compiler.errors import CompileError


@dataclass
class KernelLibrary:
    """What ``Target.build`` returns: the artifact's KERNELS_HOST and DEVICE_CODE sections."""

    host: bytes                # ELF shared object: CPU kernels, or host stubs that launch device kernels
    device_code: bytes | None  # the DEVICE_CODE section (None without device code)
    device_arch: str           # the TARGET record's device architecture ("" without device code)


@dataclass(frozen=True)
class Requirements:
    """What an artifact asks of the machine that loads it (the TARGET record)."""

    host_arch: str              # "x86_64" | "aarch64"
    host_features: tuple = ()   # CPU features the host code may use (names of artifact FEATURES)
    device_arch: str = ""       # "" without device code, e.g. "sm_80,sm_90" or "Ascend910B1"


def host_arch() -> str:
    """This machine's architecture as the artifact names it."""
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine)


class Target:
    """A compile target (see the module doc for which stage asks what). Subclasses set the class
    attributes and override what differs; the defaults describe a host-only target whose kernels
    TVM builds for LLVM."""

    kind: ClassVar[str] = ""
    runtime: ClassVar[str] = ""
    arch_flag: ClassVar[str | None] = None
    arch_help: ClassVar[str] = ""
    fused_tensor_bytes: ClassVar[int | None] = None
    choices: ClassVar[Mapping[str, Callable[..., dict]]] = {}
    rules: ClassVar[Mapping[str, Callable]] = {}
    device_code: ClassVar[object | None] = None
    missing_device_hint: ClassVar[str] = ""  # what ``tide run`` suggests when the device is missing ({artifact})

    def parse_archs(self, spec: str | None) -> list[str]:
        """The device architectures named by ``spec`` (the ``arch_flag`` value); none by default."""
        if spec:
            raise CompileError(f"target '{self.kind}' has no device architectures (got '{spec}')")
        return []

    def tvm_target(self, mcpu: str | None = None, archs=()):
        """The TVM target for this machine's CPU, or ``mcpu``."""
        import tvm

        return tvm.target.Target({"kind": "llvm", "mcpu": mcpu or tvm.target.codegen.llvm_get_system_cpu()})

    def requirements(self, tvm_target, archs) -> Requirements:
        """The host architecture and the artifact CPU features the LLVM target of the host code
        enables (so ``--mcpu`` names what is required, not the compiling machine)."""
        from ..compiler.artifact import FEATURES
        from tvm.target import codegen

        host = tvm_target.host or tvm_target
        enabled = codegen.llvm_get_cpu_features(host)
        return Requirements(host_arch(), tuple(f for f in FEATURES if f in enabled), ",".join(archs))

    def choose(self, op: str, **facts) -> dict:
        """The target's choices for a kernel of ``op`` given ``facts`` (its shapes, the model's
        dtype); an empty dict keeps the kernel's defaults."""
        rule = self.choices.get(op)
        return dict(rule(**facts)) if rule is not None else {}

    def schedule_generic(self, func, tvm_target):
        """A schedule for a kernel no rule claims, or None to keep it as written."""
        return None

    def build(self, kernels: dict, tvm_target, archs) -> KernelLibrary:
        """Every kernel compiled by TVM for ``tvm_target`` and linked, with the runtime's kernel
        shim, into one shared object."""
        return KernelLibrary(host=link_host_library(compile_kernels(kernels, tvm_target).mod), device_code=None,
                             device_arch="")


def compile_kernels(kernels: dict, tvm_target):
    """``tvm.compile`` of the scheduled kernels, each exported under its plan name; a failure names
    the kernel."""
    import tvm

    funcs = {name: func.with_attr("global_symbol", name) for name, func in kernels.items()}
    try:
        return tvm.compile(tvm.IRModule(funcs), target=tvm_target)
    except Exception as err:
        raise CompileError(f"code generation failed{_failing_kernel(funcs, tvm_target, str(err))}: "
                           f"{type(err).__name__}: {err}") from err


def _failing_kernel(funcs: dict, tvm_target, message: str) -> str:
    """``" in kernel 'X'"`` for the kernel TVM's error names, else for the first kernel that fails to
    build on its own (TVM's pass errors often do not say which function they were in)."""
    import tvm

    named = [name for name in funcs if name in message]
    if named:
        return f" in kernel '{max(named, key=len)}'"
    for name, func in funcs.items():
        try:
            tvm.compile(tvm.IRModule({name: func}), target=tvm_target)
        except Exception:  # noqa: BLE001  (any failure identifies the kernel)
            return f" in kernel '{name}'"
    return ""


def link_host_library(host_mod) -> bytes:
    """The host module as an ELF shared object, linked with runtime/src/kernel_shim.c (which routes
    the kernels' error reports to the runtime that loads them)."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise CompileError("no C compiler found to link the kernel library (set CC)")
    with tempfile.TemporaryDirectory(prefix="tide-link-") as tmp:
        obj = os.path.join(tmp, "kernels.o")
        lib = os.path.join(tmp, "kernels.so")
        host_mod.write_to_file(obj)
        cmd = [cc, "-shared", "-fPIC", "-O2", "-o", lib, obj, _kernel_shim_source(), "-lm", "-Wl,-Bsymbolic"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise CompileError(f"linking the kernel library failed: {' '.join(cmd)}\n{proc.stderr}")
        with open(lib, "rb") as f:
            return f.read()


def _kernel_shim_source() -> str:
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runtime", "src",
                        "kernel_shim.c")
    if not os.path.isfile(path):
        raise CompileError("tide's runtime sources (runtime/src/kernel_shim.c) are missing from this install")
    return path
