"""The CPU target (LLVM, ``tide compile --target cpu``): host code for this machine's CPU (or
``--mcpu``), run by the runtime's CPU backend on its thread pool.

Schedules: ``attention`` (sink attention, indexer, compressor), ``linear`` (model weights' matmuls on
panel-packed weights), ``moe`` (routers, experts), ``rope``
(RoPE, RMSNorm + RoPE) for tide's kernels, ``generic`` for the rest. Kernels the rows loop kind
decides (top-k, state scatter) use the CPU thread pool: their definitions' default.
"""

from __future__ import annotations

from ..target import Target
from . import attention, generic, linear, moe, rope


class CpuTarget(Target):
    kind = "cpu"
    runtime = "cpu"
    choices = {**attention.CHOICES, **linear.CHOICES, **moe.CHOICES, **rope.CHOICES}
    rules = {**attention.RULES, **linear.RULES, **moe.RULES, **rope.RULES}

    def schedule_generic(self, func, tvm_target):
        return generic.schedule(func, tvm_target)


TARGET = CpuTarget()
