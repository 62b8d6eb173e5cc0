"""The Ascend target (910B, 950): ``tide compile --target ascend --soc <SoC>``.

Every kernel of a model becomes one MLIR module for bishengir (``codegen``: tide's TIR kernels
translated to HIVM-dialect MLIR, with independent row loops on the AI cores), compile-checked for
the SoC up to bishengir's external ``hivmc`` step (whose device binary joins the artifact where
CANN provides ``hivmc``). Also here: the hand-written HIVM kernels (``kernels/``), the analytic cost
model (``cost``) and the toolchain without a device (``toolchain``: compile check, CPU runner).
See docs/ascend.md.
"""

from __future__ import annotations

KIND = "ascend"
DEFAULT_SOC = "Ascend910B1"
# Generic ops with a tensor above this size are not fused with their neighbours: a fused kernel keeps
# its intermediates in local (UB) buffers, which at V4-Flash widths overflowed the UB, and a device
# kernel has no GM scratch of its own (no workspace argument yet); unfused, an intermediate is a
# plan buffer in GM.
FUSED_TENSOR_BYTES = 16 * 1024


def host_features() -> set[str]:
    return set()


def host_arch() -> str:
    from ..cpu import host_arch as cpu_host_arch

    return cpu_host_arch()


def feature_mask(features: set[str]) -> int:
    return 0


def parse_archs(spec: str | None) -> list[str]:
    """``--soc`` (carried as the options' arch): exactly one SoC the cost model and bishengir know."""
    from ...compiler.errors import CompileError
    from . import cost

    name = spec or DEFAULT_SOC
    if "," in name:
        raise CompileError(f"--soc '{spec}': an ascend artifact is for one SoC")
    if name not in cost.SOCS:
        raise CompileError(f"unknown Ascend SoC '{name}' (known: {', '.join(cost.SOCS)})")
    return [name]


def tvm_target(mcpu: str | None = None, archs=()):
    """The TVM target the graph is legalized with (kernels are translated from TIR, not built by
    TVM): a generic LLVM target."""
    import tvm

    return tvm.target.Target({"kind": "llvm"})


def schedule(mod, target):
    from . import cores

    return cores.schedule(mod, target)


def build_kernels(kernels: dict, archs) -> tuple[bytes, str]:
    """(the DEVICE_CODE section, the SoC): every kernel as an MLIR module compiled by bishengir for
    the one SoC of ``archs`` (``codegen.build``)."""
    from ...compiler.artifact import encode_ascend_code
    from . import codegen

    soc = archs[0]
    return encode_ascend_code(codegen.build(kernels, soc)), soc
