"""The DEVICE_CODE section of an ascend artifact (docs/artifact-format.md): the whole kernel library
(an ascend artifact has no KERNELS_HOST): per plan kernel its HIVM MLIR module, the device binary
CANN's ``hivmc`` made from it (empty when compiled without CANN), the AI cores a launch uses and
its argument kinds. ``tide.compiler.artifact`` reads and writes it through this module
(``format.device_format``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...compiler.artifact.encoding import In, Out
from ...compiler.artifact.format import ArtifactError, check_int, check_string, check_unique, size_text

HOST_LIBRARY = False  # the kernels are all here; the runtime launches them through AscendCL
MAGIC = b"TIDEASCN"
VERSION = 1
ARG_KINDS = {"ptr": 0, "i64": 1}  # a kernel argument: a buffer's device address, or an int64
MAX_BLOCK_DIM = 65535


@dataclass
class AscendKernel:
    """One kernel of an ascend artifact."""
    name: str          # the plan's kernel name (and the kernel's symbol in its binary)
    block_dim: int     # AI cores one launch uses
    args: list         # "ptr" | "i64" per argument, the plan's call arguments in order
    hivm: str          # the HIVM MLIR module bishengir-compile takes
    binary: bytes = b""  # the device binary hivmc made from it; empty when compiled without CANN


@dataclass
class AscendCode:
    soc: str           # "Ascend910B1", "Ascend950PR_9599": the TARGET record's device architecture
    kernels: list


def validate(code: AscendCode, plan=None, soc: str | None = None) -> None:
    """The ascend DEVICE_CODE rules; with ``plan``, one kernel per plan kernel whose argument kinds
    match every call (buffer -> "ptr", immediate -> "i64"); with ``soc``, the TARGET's device
    architecture must name the same SoC."""
    check_string(code.soc, "DEVICE_CODE SoC")
    if not code.soc.startswith("Ascend"):
        raise ArtifactError(f"DEVICE_CODE: SoC '{code.soc}' is not an Ascend SoC name (e.g. Ascend910B1)")
    if soc is not None and soc != code.soc:
        raise ArtifactError(f"target device architecture '{soc}' is not the DEVICE_CODE SoC '{code.soc}'")
    for k in code.kernels:
        check_string(k.name, "DEVICE_CODE kernel name")
        check_int(k.block_dim, 1, MAX_BLOCK_DIM, f"DEVICE_CODE kernel '{k.name}' block_dim")
        for a in k.args:
            if a not in ARG_KINDS:
                raise ArtifactError(f"DEVICE_CODE kernel '{k.name}': unknown argument kind '{a}' (ptr, i64)")
        if not k.hivm or "\0" in k.hivm:
            raise ArtifactError(f"DEVICE_CODE kernel '{k.name}': the HIVM text is empty or holds a NUL")
    check_unique([k.name for k in code.kernels], "DEVICE_CODE kernel name")
    if plan is None:
        return
    by_name = {k.name: k for k in code.kernels}
    if set(by_name) != set(plan.kernels):
        missing = sorted(set(plan.kernels) - set(by_name))
        extra = sorted(set(by_name) - set(plan.kernels))
        raise ArtifactError(f"DEVICE_CODE kernels do not match the plan's: missing {missing}, not in the plan {extra}")
    for e in plan.entries:
        for i, call in enumerate(e.calls):
            k = by_name[call.kernel]
            kinds = ["ptr" if kind == "buf" else "i64" for kind, _ in call.args]
            if kinds != list(k.args):
                raise ArtifactError(f"entry '{e.name}' op {i} calls '{k.name}' with ({', '.join(kinds)}); the "
                                    f"kernel takes ({', '.join(k.args)})")


def encode(code: AscendCode) -> bytes:
    """The DEVICE_CODE section bytes of an ascend artifact (validated first)."""
    validate(code)
    out = Out()
    out.raw(MAGIC)
    out.u32(VERSION)
    out.string(code.soc)
    out.u32(len(code.kernels))
    for k in code.kernels:
        out.string(k.name)
        out.u32(k.block_dim)
        out.u32(len(k.args))
        out.raw(bytes(ARG_KINDS[a] for a in k.args))
        text = k.hivm.encode("utf-8")
        out.u64(len(text))
        out.raw(text)
        out.u64(len(k.binary))
        out.raw(k.binary)
    return out.bytes()


def decode(data) -> AscendCode:
    """Parses and validates an ascend DEVICE_CODE section (the C loader's rules, without the plan)."""
    r = In(data, "DEVICE_CODE")
    r.context = "header"
    r.magic(MAGIC)
    version = r.u32("version")
    if version != VERSION:
        r.fail(f"version {version} is not supported (expected {VERSION})")
    soc = r.string("SoC")
    kinds = {v: k for k, v in ARG_KINDS.items()}
    kernels = []
    for i in range(r.count("kernel count", 4 + 4 + 4 + 8 + 8)):
        r.context = f"kernel {i}"
        name = r.string("kernel name")
        r.context = f"kernel {i} ('{name}')"
        block_dim = r.u32("block_dim")
        args = []
        for _ in range(r.count("argument count", 1)):
            kind = r.u8("argument kind")
            if kind not in kinds:
                r.fail(f"unknown argument kind {kind} (0 ptr, 1 i64)")
            args.append(kinds[kind])
        raw = r.blob("HIVM text")
        try:
            hivm = raw.decode("utf-8")
        except UnicodeDecodeError:
            r.fail("the HIVM text is not UTF-8")
        kernels.append(AscendKernel(name, block_dim, args, hivm, r.blob("binary")))
    r.context = "end"
    r.end("bytes follow the last kernel")
    code = AscendCode(soc, kernels)
    try:
        validate(code)
    except ArtifactError as err:
        raise ArtifactError(f"DEVICE_CODE section: {str(err).removeprefix('DEVICE_CODE').lstrip(': ')}") from None
    return code


def describe(code: AscendCode) -> list[str]:
    """``tide inspect``'s lines for the section: each kernel's unit (cube, vector, scalar), cores and
    sizes."""
    from .codegen import unit_of

    runnable = sum(1 for k in code.kernels if k.binary)
    units = [unit_of(k.hivm) for k in code.kernels]
    counts = ", ".join(f"{units.count(u)} {u}" for u in ("cube", "vector", "scalar") if u in units)
    lines = [f"device code: {code.soc}, {len(code.kernels)} kernels ({counts}; {runnable} with a device binary)"]
    for k, unit in zip(code.kernels, units):
        binary = size_text(len(k.binary)) if k.binary else "no binary (compiled without hivmc)"
        lines.append(f"  {k.name}({', '.join(k.args)}) block_dim {k.block_dim}, {unit}: HIVM {len(k.hivm)} chars, "
                     f"{binary}")
    return lines
