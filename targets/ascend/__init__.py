"""The Ascend target (910B, 950): ``tide compile --target ascend --soc <SoC>``.

Every kernel of a model becomes one MLIR module for bishengir (``codegen``: tide's TIR kernels
translated to HIVM-dialect MLIR, with independent row loops on the AI cores), compile-checked for
the SoC up to bishengir's external ``hivmc`` step (whose device binary joins the artifact where
CANN provides ``hivmc``). Also here: the hand-written HIVM kernels (``kernels/``), the analytic cost
model (``cost``) and the toolchain without a device (``toolchain``: compile check, CPU runner).
See docs/ascend.md.
"""

from __future__ import annotations

from ..target import KernelLibrary, Requirements, Target, host_arch
from . import device_code

DEFAULT_SOC = "Ascend910B1"
ENTRY_BLOCK = 32  # attention/indexer entries per tile on an AI core (a 512-channel tile: 64 KiB of UB)


def _choose_attention(**facts) -> dict:
    """One entry range per query (no split-K: partials shared between AI cores would need a GM
    workspace)."""
    from ...ops import sink_attention

    return sink_attention.blocking(facts["batch"], facts["seq"], facts["heads"], facts["entries"], ENTRY_BLOCK, 1)


def _choose_indexer(**facts) -> dict:
    from ...ops import indexer

    return indexer.blocking(facts["batch"], facts["seq"], facts["cache_rows"], facts["top_k"], ENTRY_BLOCK, 1)


class AscendTarget(Target):
    kind = "ascend"
    runtime = "ascend"
    arch_flag = "soc"
    arch_help = f"the SoC to compile for (Ascend910B1, Ascend950PR_9599; default {DEFAULT_SOC})"
    # Generic ops with a tensor above this size are not fused with their neighbours: a fused kernel
    # keeps its intermediates in local (UB) buffers, which at V4-Flash widths overflowed the UB, and a
    # device kernel has no GM scratch of its own (no workspace argument yet); unfused, an intermediate
    # is a plan buffer in GM.
    fused_tensor_bytes = 16 * 1024
    device_code = device_code
    missing_device_hint = ("without an Ascend device, `python -m tide.targets.ascend.cpu_runner {artifact} "
                           "--prompt ...` runs the artifact's kernels on this CPU")
    choices = {"sink_attention": _choose_attention, "indexer": _choose_indexer,
               "rope": lambda **_: {"row_kind": "parallel"}, "moe_gemm": lambda **_: {"layout": "rows"}}

    def parse_archs(self, spec: str | None) -> list[str]:
        """``--soc``: exactly one SoC the cost model and bishengir know."""
        from ...compiler.errors import CompileError
        from . import cost

        name = spec or DEFAULT_SOC
        if "," in name:
            raise CompileError(f"--soc '{spec}': an ascend artifact is for one SoC")
        if name not in cost.SOCS:
            raise CompileError(f"unknown Ascend SoC '{name}' (known: {', '.join(cost.SOCS)})")
        return [name]

    def tvm_target(self, mcpu: str | None = None, archs=()):
        """The TVM target the graph is legalized with (kernels are translated from TIR, not built by
        TVM): a generic LLVM target."""
        import tvm

        return tvm.target.Target({"kind": "llvm"})

    def requirements(self, tvm_target, archs) -> Requirements:
        return Requirements(host_arch(), (), archs[0])

    def schedule_generic(self, func, tvm_target):
        """Every kernel, tide's and generic, as ``cores.kernel`` makes it: its leading data-parallel
        loops on the AI cores."""
        from . import cores

        return cores.kernel(func)

    def build(self, kernels: dict, tvm_target, archs) -> KernelLibrary:
        """The DEVICE_CODE section holds the whole library: every kernel as an MLIR module compiled
        by bishengir for the one SoC of ``archs`` (``codegen.build``)."""
        from . import codegen

        soc = archs[0]
        return KernelLibrary(host=b"", device_code=device_code.encode(codegen.build(kernels, soc)), device_arch=soc)


TARGET = AscendTarget()
