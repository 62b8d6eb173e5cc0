"""The Ascend toolchain as tide uses it without a device: where the tools are, the compile check
(bishengir up to its external hivmc step) and the CPU runner (bishengir's HIVM -> upstream conversion
and CPU-runner lowering, then LLVM 19: a shared object called with numpy arrays in a child process
with MALLOC_PERTURB_ set). See docs/ascend.md and docs/toolchains.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from . import cost


class ToolchainError(RuntimeError):
    """A tool is missing, or a tool failed (its output included)."""


def bin_dir() -> Path | None:
    """The bishengir tools of the installed ascendnpu-ir wheel, or None."""
    try:
        import ascendnpuir
    except ImportError:
        return None
    d = Path(ascendnpuir.__file__).parent / "bin"
    return d if (d / "bishengir-compile").exists() else None


BIN = bin_dir()
LLVM_TOOLS = [shutil.which(t) for t in ("mlir-translate-19", "llc-19")]
RUNNER_LIB = Path("/usr/lib/llvm-19/lib/libmlir_c_runner_utils.so")
TIMEOUT_S = 300  # per tool invocation


def missing() -> str | None:
    """What the compile check lacks (None: nothing)."""
    return None if BIN is not None else "ascendnpu-ir (bishengir) is not installed: pip install 'tide[ascend]'"


def missing_cpu_runner() -> str | None:
    """What the CPU runner lacks, by name (None: nothing)."""
    lacking = [] if BIN is not None else ["ascendnpu-ir (pip install 'tide[ascend]')"]
    lacking += [f"{t} (apt-get install {pkg})" for t, pkg, have in (
        ("mlir-translate-19", "mlir-19-tools", LLVM_TOOLS[0]), ("llc-19", "llvm-19", LLVM_TOOLS[1]),
        (str(RUNNER_LIB), "libmlir-19-dev", RUNNER_LIB.exists() or None)) if have is None]
    if lacking:
        return "the Ascend CPU runner lacks " + ", ".join(lacking) + "; ./setup.sh installs them"
    return None


def compile_check(text: str, soc: str, tmp: Path) -> Path:
    """bishengir-compile for ``soc``; passes when the only error is the missing hivmc and the
    optimized HIVM module exists. Returns that module; ToolchainError with the tool's errors else."""
    return compile_kernel(text, soc, tmp)[0]


def hivmc(soc: str) -> str | None:
    """The path of the ``hivmc`` bishengir calls for ``soc`` (CANN's; ``hivmc-a5`` for 950), or None."""
    return shutil.which("hivmc-a5" if cost.soc(soc).tool.endswith("-a5") else "hivmc")


def compile_kernel(text: str, soc: str, tmp: Path) -> tuple[Path, bytes]:
    """bishengir-compile for ``soc``: (the optimized HIVM module, the device binary). Without
    ``hivmc`` (no CANN) the binary is empty and the run passes when the only error is the missing
    hivmc; with it, bishengir must succeed and write the binary (hivmc is called with
    ``--enable-static-bare-ptr=true``: each memref argument arrives as one bare pointer)."""
    if missing():
        raise ToolchainError(missing())
    s = cost.soc(soc)
    tmp.mkdir(parents=True, exist_ok=True)
    src = tmp / "kernel.mlir"
    src.write_text(text)
    out = tmp / f"out-{soc}"
    out.mkdir()
    r = _subprocess([str(BIN / s.tool), str(src), "--enable-hivm-compile", f"--target={soc}",
                     f"--save-temps={out}", "-o", str(out / "kernel")], f"bishengir-compile for {soc}")
    if r.returncode < 0:
        raise ToolchainError(f"bishengir-compile for {soc} crashed (signal {-r.returncode}):\n{r.stderr[-3000:]}")
    opt = out / "module.hivm.opt.mlir"
    if hivmc(soc) is not None:
        if r.returncode != 0 or not (out / "kernel").is_file():
            raise ToolchainError(f"bishengir-compile for {soc} (with {hivmc(soc)}) failed:\n{(r.stdout + r.stderr)[-3000:]}")
        return opt, (out / "kernel").read_bytes()
    errors = [ln for ln in (r.stdout + r.stderr).splitlines() if "error" in ln.lower()]
    other = [ln for ln in errors if "hivmc" not in ln and "Failed to run BiShengIR pipeline" not in ln]
    if other:
        raise ToolchainError(f"bishengir-compile for {soc} failed:\n" + "\n".join(other))
    if not opt.exists():
        raise ToolchainError(f"no module.hivm.opt.mlir for {soc}:\n{r.stderr[-2000:]}")
    return opt, b""


def _subprocess(cmd, what, env=None):
    """The finished process; a run past TIMEOUT_S is a ToolchainError naming ``what``."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        raise ToolchainError(f"{what} did not finish within {TIMEOUT_S} s") from None


def _run(cmd, what):
    r = _subprocess(cmd, what)
    if r.returncode != 0:
        raise ToolchainError(f"{what} failed:\n{r.stderr[-3000:]}")


def _keep_only(llvm_text: str, name: str) -> str:
    """Drop every function definition but the kernel's (the runner wrapper and its file helpers
    refer to bishengir runtime symbols this machine does not have) and the hacc attributes
    mlir-translate does not know."""
    out, skip = [], False
    for line in llvm_text.split("\n"):
        m = re.match(r"  llvm\.func (?:private )?@([\w$.]+)\(.*\{$", line)
        if m and m.group(1) != name:
            skip = True
        if not skip:
            out.append(re.sub(r" attributes \{hacc[^{}]*\}", "", line))
        if skip and line == "  }":
            skip = False
    return "\n".join(out)


def cpu_build(text: str, name: str, tmp: Path):
    """A module's CPU-runner variant (``emulation.cpu_module``) -> the path of a shared object
    exporting ``name`` with the MLIR memref calling convention.

    Modules emitted for either SoC run: the conversion uses the 910B tool (the 950 tool's converter
    does not lower load/store), so the 950 tool's extra ``vreduce`` attribute ``unsigned_src = false``
    (the default, signed) is dropped first."""
    if missing_cpu_runner():
        raise ToolchainError(missing_cpu_runner())
    tmp.mkdir(parents=True, exist_ok=True)
    up, host, low = tmp / "up.mlir", tmp / "host.mlir", tmp / "low.mlir"
    (tmp / "emu.mlir").write_text(text.replace("unsigned_src = false ", ""))
    _run([str(BIN / "bishengir-opt"), "--execution-engine-convert-hivm-to-upstream", str(tmp / "emu.mlir"),
          "-o", str(up)], "convert-hivm-to-upstream")
    host.write_text(up.read_text().replace(
        "hacc.function_kind<DEVICE>",
        "hacc.function_kind<HOST>, hacc.host_func_type = #hacc.host_func_type<host_entry>"))
    _run([str(BIN / "bishengir-opt"), "--lower-for-cpu-runner-pipeline=wrapper-name=tide_cpu_main", str(host),
          "-o", str(low)], "lower-for-cpu-runner-pipeline")
    (tmp / "k.mlir").write_text(_keep_only(low.read_text(), name))
    _run([LLVM_TOOLS[0], "--mlir-to-llvmir", str(tmp / "k.mlir"), "-o", str(tmp / "k.ll")], "mlir-translate")
    _run([LLVM_TOOLS[1], "-O2", "-filetype=obj", "-relocation-model=pic", str(tmp / "k.ll"), "-o",
          str(tmp / "k.o")], "llc")
    _run(["cc", "-shared", str(tmp / "k.o"), "-o", str(tmp / "k.so"), f"-L{RUNNER_LIB.parent}",
          "-lmlir_c_runner_utils", f"-Wl,-rpath,{RUNNER_LIB.parent}"], "link")
    return tmp / "k.so"


_CHILD = r"""
import ctypes, sys
import numpy as np
so, name, path, blocks = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
fn = getattr(ctypes.CDLL(so), name)
data = np.load(path)
arrays = [np.ascontiguousarray(data[f"a{i}"]) for i in range(len(data.files))]
for blk in range(blocks):
    args = []
    for a in arrays + [np.array([blk], np.int64)]:
        p = ctypes.c_void_p(a.ctypes.data)
        args += [p, p, ctypes.c_int64(0)] + [ctypes.c_int64(d) for d in a.shape]
        args += [ctypes.c_int64(st // a.itemsize) for st in a.strides]
    fn(*args)
np.savez(path, **{f"a{i}": a for i, a in enumerate(arrays)})
"""


def cpu_run(so: Path, name: str, blocks: int, *arrays):
    """Call the kernel once per AI core block (the emulated get_block_idx is an extra last
    argument) in a child process with MALLOC_PERTURB_=165 (glibc reads it at start-up), on copies
    of ``arrays``; returns the arrays after the run, in their dtypes."""
    path = so.parent / "io.npz"
    raw = [np.ascontiguousarray(a).view(f"u{a.itemsize}").reshape(a.shape) for a in arrays]  # 0-d stays 0-d
    np.savez(path, **{f"a{i}": a for i, a in enumerate(raw)})
    r = _subprocess([sys.executable, "-c", _CHILD, str(so), name, str(path), str(blocks)], f"CPU run of {name}",
                    env={**os.environ, "MALLOC_PERTURB_": "165"})
    if r.returncode != 0:
        raise ToolchainError(f"CPU run of {name} failed (rc {r.returncode}):\n{r.stderr[-3000:]}")
    out = np.load(path)
    return [out[f"a{i}"].view(a.dtype).reshape(a.shape) for i, a in enumerate(arrays)]
