"""The CUDA target (``tide compile --target cuda --arch sm_80,sm_90``): kernels scheduled for the
GPU, CUDA source compiled by nvcc into one cubin per architecture (``nvcc``), generic LLVM host
stubs that launch them; the runtime's CUDA backend loads the image for the device's compute
capability.

Schedules: ``attention``, ``moe`` and ``rope`` for tide's kernels (tensor-core variants for bfloat16
prefill), ``generic`` (dlight) for the rest; top-k and the state scatter run one row per thread
(``limits.ROW_THREADS`` per block).
"""

from __future__ import annotations

import re

from ...compiler.errors import CompileError
from ..target import KernelLibrary, Requirements, Target, compile_kernels, host_arch, link_host_library
from . import attention, device_code, generic, limits, moe, rope

DEFAULT_ARCH = "sm_90"
# Ampere and Hopper: the schedules use cp.async-era features and up to 227 KiB of shared memory.
SUPPORTED_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90", "sm_90a")


def arch_key(arch: str) -> tuple[int, int]:
    m = re.fullmatch(r"sm_(\d+)(a?)", arch)
    return int(m.group(1)), 1 if m.group(2) else 0


def choose_rows(**_) -> dict:
    return {"row_threads": limits.ROW_THREADS}


class CudaTarget(Target):
    kind = "cuda"
    runtime = "cuda"
    arch_flag = "arch"
    arch_help = (f"GPU architectures, comma-separated ({', '.join(SUPPORTED_ARCHS)}; default {DEFAULT_ARCH}), "
                 "e.g. sm_80,sm_90")
    device_code = device_code
    choices = {**attention.CHOICES, **moe.CHOICES, **rope.CHOICES, "rows": choose_rows}
    rules = {**attention.RULES, **moe.RULES, **rope.RULES}

    def parse_archs(self, spec: str | None) -> list[str]:
        """``"sm_80,sm_90"`` -> ``["sm_80", "sm_90"]`` (ascending, unique); unknown names are an error."""
        names = [a.strip() for a in (spec or DEFAULT_ARCH).split(",") if a.strip()]
        if not names:
            raise CompileError(f"--arch '{spec}' names no architecture (e.g. sm_90 or sm_80,sm_90)")
        for name in names:
            if name not in SUPPORTED_ARCHS:
                raise CompileError(f"unknown CUDA architecture '{name}' in --arch '{spec}' "
                                   f"(supported: {', '.join(SUPPORTED_ARCHS)})")
        if len(set(names)) != len(names):
            raise CompileError(f"--arch '{spec}' names an architecture twice")
        return sorted(names, key=arch_key)

    def tvm_target(self, mcpu: str | None = None, archs=(DEFAULT_ARCH,)):
        """The CUDA target for the lowest requested architecture (the CUDA source is compiled for
        every one of them), with a generic LLVM host (or ``mcpu``) for the launch stubs; dlight may
        use the static shared-memory limit."""
        import tvm

        host = {"kind": "llvm", "mcpu": mcpu} if mcpu else {"kind": "llvm"}
        return tvm.target.Target({"kind": "cuda", "arch": min(archs, key=arch_key), "host": host,
                                  "max_shared_memory_per_block": limits.STATIC_SHARED_BYTES})

    def requirements(self, tvm_target, archs) -> Requirements:
        """The host stubs only marshal arguments and launch: built for the architecture's generic
        CPU, they require no CPU feature (the GPU machine's CPU is not known at compile time)."""
        return Requirements(host_arch(), (), ",".join(archs))

    def schedule_generic(self, func, tvm_target):
        return generic.schedule(func, tvm_target)

    def build(self, kernels: dict, tvm_target, archs) -> KernelLibrary:
        from . import nvcc

        host_mod = compile_kernels(kernels, tvm_target).mod
        device_code, device_arch = nvcc.build_device_code(host_mod, list(archs))
        return KernelLibrary(host=link_host_library(host_mod), device_code=device_code, device_arch=device_arch)


TARGET = CudaTarget()
