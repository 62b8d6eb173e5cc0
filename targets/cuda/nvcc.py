"""CUDA device code: the CUDA source TVM generates, compiled with nvcc into one cubin per
architecture, and the kernels' launch information, encoded as the artifact's DEVICE_CODE section.

``tvm.compile`` keeps the CUDA module as source (no libcuda at compile time); ``device_modules``
reads the source and each kernel's FunctionInfo (argument dtypes, launch tags) from the host
module's serialized import blob (docs/toolchains.md),
``compile_source`` runs nvcc per architecture in parallel.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

from ...compiler.errors import CompileError

NVCC_FLAGS = ("-O3", "-std=c++17", "-lineinfo")
# TVM 0.27's launch tag -> the artifact format's name for it (docs/artifact-format.md)
TAG_NAMES = {"tirx.use_dyn_shared_memory": "tir.use_dyn_shared_memory"}


class _Blob:
    """A cursor over TVM's serialized import blob (u64 lengths, little-endian)."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise CompileError(f"TVM's serialized CUDA module is truncated at byte {self.pos} (TVM version "
                               "mismatch?)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self) -> str:
        return self.take(self.u64()).decode("utf-8")

    def vec(self, item):
        return [item() for _ in range(self.u64())]


def device_modules(host_mod) -> list[tuple[str, dict, str]]:
    """The CUDA modules imported by ``host_mod``: (format, {kernel: FunctionInfo}, source) from
    the serialized import blob (``__tvm_ffi__library_bin`` layout, docs/toolchains.md).
    FunctionInfo: {"args": [(code, bits, lanes)], "tags": [launch tags]}."""
    import numpy as np
    import tvm_ffi

    packed = tvm_ffi.get_global_func("runtime.ModulePackImportsToTensor")(host_mod)
    blob = _Blob(np.asarray(packed.numpy()).tobytes())
    total = blob.u64()
    if total + 8 != len(blob.data):
        raise CompileError(f"TVM's serialized module records {total} bytes but holds {len(blob.data) - 8}")
    blob.vec(blob.u64)  # import tree: indptr
    blob.vec(blob.u64)  # import tree: child indices
    out = []
    while blob.pos < len(blob.data):
        kind = blob.string()
        if kind == "_lib":
            continue
        payload = _Blob(blob.take(blob.u64()))
        if kind != "cuda":
            raise CompileError(f"the compiled model imports a '{kind}' module; only CUDA device code "
                               "can be stored in the artifact")
        fmt = payload.string()
        funcs = {}
        for _ in range(payload.u64()):
            key = payload.string()
            name = payload.string()
            args = payload.vec(lambda: struct.unpack("<BBH", payload.take(4)))
            tags = payload.vec(payload.string)
            payload.vec(lambda: payload.take(4))  # arg_extra_tags (tensor-map descriptors): unused
            if key != name:
                raise CompileError(f"CUDA function '{key}' is recorded as '{name}'")
            funcs[name] = {"args": args, "tags": tags}
        out.append((fmt, funcs, payload.string()))
    return out


def nvcc_path() -> str:
    nvcc = shutil.which(os.environ.get("NVCC", "nvcc"))
    if nvcc is None:
        for candidate in ("/usr/local/bin/nvcc", "/usr/local/cuda/bin/nvcc"):
            if os.access(candidate, os.X_OK):
                return candidate
        raise CompileError("nvcc not found (set NVCC or put the CUDA toolkit's nvcc on PATH): it compiles "
                           "the device code of a --target cuda model")
    return nvcc


def nvcc_command(nvcc: str, arch: str, source: str, output: str) -> list[str]:
    """One cubin for ``arch``: ``-arch=sm_XX``, or the -gencode form for an ``a`` (arch-specific)
    variant."""
    if arch.endswith("a"):
        gen = ["-gencode", f"arch=compute_{arch[3:]},code={arch}"]
    else:
        gen = [f"-arch={arch}"]
    return [nvcc, "-cubin", *gen, *NVCC_FLAGS, "-o", output, source]


def _failing_kernel(stderr: str, source: str) -> str:
    """The kernel a compiler error points into (``file(line): error``), or "" when it is not clear."""
    m = re.search(r"\((\d+)\): error", stderr)
    if not m:
        return ""
    line = int(m.group(1))
    names = re.findall(r'extern "C" __global__[^\n]*?\b(\w+)\(', "\n".join(source.splitlines()[:line]))
    return names[-1] if names else ""


def compile_source(source: str, archs: list[str]) -> dict[str, bytes]:
    """nvcc per architecture (in parallel, as many at once as there are cores); arch -> cubin."""
    nvcc = nvcc_path()
    with tempfile.TemporaryDirectory(prefix="tide-nvcc-") as tmp:
        src = os.path.join(tmp, "kernels.cu")
        with open(src, "w", encoding="utf-8") as f:
            f.write(source)

        def one(arch):
            out = os.path.join(tmp, f"{arch}.cubin")
            cmd = nvcc_command(nvcc, arch, src, out)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                kernel = _failing_kernel(proc.stderr, source)
                raise CompileError(f"nvcc failed for {arch}" + (f" in kernel '{kernel}'" if kernel else "")
                                   + f" (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}")
            with open(out, "rb") as f:
                return f.read()

        with ThreadPoolExecutor(max_workers=max(1, min(len(archs), os.cpu_count() or 1))) as pool:
            images = list(pool.map(one, archs))
    return dict(zip(archs, images))


def build_device_code(host_mod, archs: list[str]) -> tuple[bytes, str]:
    """(DEVICE_CODE section bytes, TARGET device architecture) for the compiled ``host_mod``."""
    from . import device_code

    mods = device_modules(host_mod)
    if len(mods) != 1:
        raise CompileError(f"expected one CUDA device module from TVM, got {len(mods)}")
    fmt, funcs, source = mods[0]
    if fmt != "cuda":
        raise CompileError(f"TVM's CUDA module holds '{fmt}', expected CUDA source")
    images = compile_source(source, archs)
    code = device_code.CudaCode(
        images=[device_code.CudaImage(arch, "cubin", images[arch]) for arch in archs],
        functions=[device_code.CudaFunction(name, [_dtype_name(name, a) for a in info["args"]],
                                            [TAG_NAMES.get(t, t) for t in info["tags"]])
                   for name, info in funcs.items()])
    return device_code.encode(code), ",".join(archs)


def _dtype_name(func: str, dl) -> str:
    from ...runtime.dtypes import DTYPE_NAMES
    from .device_code import HANDLE

    code, bits, lanes = dl
    if (code, bits, lanes) == (*HANDLE, 1):
        return "handle"
    name = DTYPE_NAMES.get((code, bits))
    if name is None or lanes != 1:
        raise CompileError(f"CUDA kernel '{func}' takes an argument of DLPack type (code {code}, bits {bits}, "
                           f"lanes {lanes}) that the artifact cannot describe")
    return name
