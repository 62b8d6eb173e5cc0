"""The DEVICE_CODE section of a cuda artifact (docs/artifact-format.md): device images per
architecture (cubin, fatbin or PTX) and each kernel's launch signature, which the host stubs in
KERNELS_HOST launch through the runtime's CUDA backend. ``tide.compiler.artifact`` reads and writes
it through this module (``format.device_format``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...compiler.artifact.encoding import In, Out
from ...compiler.artifact.format import DTYPES, ArtifactError, check_string, check_unique, size_text

HOST_LIBRARY = True  # host stubs in KERNELS_HOST launch the device kernels
MAGIC = b"TIDECUDA"
VERSION = 1
FORMATS = {"cubin": 0, "fatbin": 1, "ptx": 2}
HANDLE = (3, 64)  # DLPack opaque handle: a pointer argument of a device kernel
TAGS = ("blockIdx.x", "blockIdx.y", "blockIdx.z", "threadIdx.x", "threadIdx.y", "threadIdx.z",
        "tir.use_dyn_shared_memory")


@dataclass
class CudaImage:
    arch: str  # "sm_80", "sm_90", "sm_90a"
    format: str  # "cubin" | "fatbin" | "ptx"
    data: bytes


@dataclass
class CudaFunction:
    name: str  # the device kernel symbol the host stubs look up
    args: list  # dtype names in launch order; "handle" for a pointer
    tags: list  # launch dimensions after the arguments ("blockIdx.x", ..., "tir.use_dyn_shared_memory")


@dataclass
class CudaCode:
    """Images per architecture and the kernels' launch signatures."""

    images: list
    functions: list


def _is_arch(arch: str) -> bool:
    return arch.startswith("sm_") and len(arch) > 3 and (arch[3:].isdigit() or
                                                         (arch.endswith("a") and arch[3:-1].isdigit()))


def _arch_key(arch: str):
    return (int(arch[3:].rstrip("a")), arch.endswith("a"))


def validate(code: CudaCode, plan=None, device_arch: str | None = None) -> None:
    """The DEVICE_CODE rules; ``device_arch``: the TARGET record's list, which must name exactly the
    images' architectures in ascending order. (The host stubs, not the plan, name the kernels.)"""
    if not code.images:
        raise ArtifactError("DEVICE_CODE: no device image")
    for i, img in enumerate(code.images):
        check_string(img.arch, f"DEVICE_CODE image {i} architecture")
        if not _is_arch(img.arch):
            raise ArtifactError(f"DEVICE_CODE image {i}: architecture '{img.arch}' is not sm_<digits>[a]")
        if img.format not in FORMATS:
            raise ArtifactError(f"DEVICE_CODE image {img.arch}: unknown format '{img.format}' "
                                f"(known: {', '.join(FORMATS)})")
        if not img.data:
            raise ArtifactError(f"DEVICE_CODE image {img.arch}: empty")
        if img.format == "ptx" and b"\0" in bytes(img.data):
            raise ArtifactError(f"DEVICE_CODE image {img.arch}: ptx text holds a NUL byte")
    check_unique([img.arch for img in code.images], "DEVICE_CODE image architecture")
    for f in code.functions:
        check_string(f.name, "DEVICE_CODE function name")
        for a in f.args:
            if a != "handle" and a not in DTYPES:
                raise ArtifactError(f"DEVICE_CODE function '{f.name}': unknown argument dtype '{a}'")
        for t in f.tags:
            check_string(t, f"DEVICE_CODE function '{f.name}' launch tag")
            if t not in TAGS:
                raise ArtifactError(f"DEVICE_CODE function '{f.name}': unknown launch tag '{t}' "
                                    f"(known: {', '.join(TAGS)})")
        if "tir.use_dyn_shared_memory" in f.tags[:-1]:
            raise ArtifactError(f"DEVICE_CODE function '{f.name}': the dynamic shared memory tag must be last")
    check_unique([f.name for f in code.functions], "DEVICE_CODE function name")
    if device_arch is not None:
        expected = ",".join(sorted((img.arch for img in code.images), key=_arch_key))
        if device_arch != expected:
            raise ArtifactError(f"target device architecture '{device_arch}' does not list the DEVICE_CODE "
                                f"images in ascending order (expected '{expected}')")


def encode(code: CudaCode) -> bytes:
    """The DEVICE_CODE section bytes of ``code`` (validated first)."""
    validate(code)
    out = Out()
    out.raw(MAGIC)
    out.u32(VERSION)
    out.u32(len(code.images))
    for img in code.images:
        out.string(img.arch)
        out.u8(FORMATS[img.format])
        out.u64(len(img.data))
        out.raw(img.data)
    out.u32(len(code.functions))
    for f in code.functions:
        out.string(f.name)
        out.u32(len(f.args))
        for a in f.args:
            out.dtype(*(HANDLE if a == "handle" else DTYPES[a]))
        out.u32(len(f.tags))
        for t in f.tags:
            out.string(t)
    return out.bytes()


def decode(data) -> CudaCode:
    """Parses and validates a DEVICE_CODE section (the C loader's rules)."""
    r = In(data, "DEVICE_CODE")
    r.context = "header"
    r.magic(MAGIC)
    version = r.u32("version")
    if version != VERSION:
        r.fail(f"version {version} is not supported (expected {VERSION})")
    formats = {v: k for k, v in FORMATS.items()}
    images = []
    for i in range(r.count("image count", 4 + 1 + 8)):
        r.context = f"image {i}"
        arch = r.string("architecture")
        fmt = r.u8("format")
        if fmt not in formats:
            r.fail(f"unknown image format {fmt} (0 cubin, 1 fatbin, 2 ptx)")
        images.append(CudaImage(arch, formats[fmt], r.blob("image")))
    functions = []
    for i in range(r.count("function count", 4 + 1 + 8)):
        r.context = f"function {i}"
        name = r.string("function name")
        r.context = f"function {i} ('{name}')"
        args = [r.dtype("argument dtype", {HANDLE: "handle"}, rewind=True)
                for _ in range(r.count("argument count", 4))]
        tags = [r.string("launch tag") for _ in range(r.count("launch tag count", 5))]
        functions.append(CudaFunction(name, args, tags))
    r.context = "end"
    r.end("bytes follow the last function")
    code = CudaCode(images, functions)
    try:
        validate(code)
    except ArtifactError as err:
        raise ArtifactError(f"DEVICE_CODE section: {str(err).removeprefix('DEVICE_CODE').lstrip(': ')}") from None
    return code


def describe(code: CudaCode) -> list[str]:
    """``tide inspect``'s lines for the section."""
    lines = [f"device code: {len(code.images)} images, {len(code.functions)} device functions"]
    lines += [f"  {img.arch}: {img.format}, {size_text(len(img.data))}" for img in code.images]
    lines += [f"  {f.name}({len(f.args)} args) launch {', '.join(f.tags)}" for f in code.functions]
    return lines
