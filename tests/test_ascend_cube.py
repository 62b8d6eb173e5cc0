"""tide's Ascend cube kernels (tiled GEMM, MoE grouped GEMMs): compile-checked with bishengir for
910B and 950 up to the external hivmc step, their numerics run on this CPU (cube ops rewritten to
linalg, bishengir's CPU-runner lowering, MALLOC_PERTURB_ set) against numpy float64, and the
analytic cost model checked by hand-computed counts and monotonicity."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from tide.targets.ascend import cost
from tide.targets.ascend.kernels import matmul

SOCS = ("Ascend910B1", "Ascend950PR_9599")


def _bin_dir():
    try:
        import ascendnpuir
    except ImportError:
        return None
    d = Path(ascendnpuir.__file__).parent / "bin"
    return d if (d / "bishengir-compile").exists() else None


BIN = _bin_dir()
LLVM_TOOLS = [shutil.which(t) for t in ("mlir-translate-19", "llc-19")]
RUNNER_LIB = Path("/usr/lib/llvm-19/lib/libmlir_c_runner_utils.so")
needs_bishengir = pytest.mark.skipif(BIN is None, reason="ascendnpu-ir (bishengir) is not installed")
needs_cpu_runner = pytest.mark.skipif(
    BIN is None or None in LLVM_TOOLS or not RUNNER_LIB.exists(),
    reason="ascendnpu-ir or Debian's LLVM/MLIR 19 tools (mlir-translate-19, llc-19, libmlir-19) are not installed")


def compile_check(text: str, soc: str, tmp: Path) -> Path:
    """bishengir-compile for ``soc``; passes when the only error is the missing hivmc and the
    optimized HIVM module exists. Returns that module."""
    s = cost.soc(soc)
    tmp.mkdir(parents=True, exist_ok=True)
    src = tmp / "kernel.mlir"
    src.write_text(text)
    out = tmp / f"out-{soc}"
    out.mkdir()
    r = subprocess.run([str(BIN / s.tool), str(src), "--enable-hivm-compile", f"--target={soc}",
                        f"--save-temps={out}", "-o", str(out / "kernel")], capture_output=True, text=True,
                       timeout=300)
    errors = [ln for ln in (r.stdout + r.stderr).splitlines() if "error" in ln.lower()]
    other = [ln for ln in errors if "hivmc" not in ln and "Failed to run BiShengIR pipeline" not in ln]
    assert not other, f"bishengir-compile for {soc} failed:\n" + "\n".join(other)
    opt = out / "module.hivm.opt.mlir"
    assert opt.exists(), f"no module.hivm.opt.mlir for {soc}:\n{r.stderr[-2000:]}"
    return opt


# ---------------------------------------------------------------------------------------------
# CPU runner: bishengir's HIVM -> upstream conversion and CPU-runner lowering, then LLVM 19


def _run(cmd, what):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{what} failed:\n{r.stderr[-3000:]}"


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
    """Emulated module (cube ops already rewritten) -> a callable taking numpy arrays (MLIR memref
    calling convention)."""
    up, host, low = tmp / "up.mlir", tmp / "host.mlir", tmp / "low.mlir"
    (tmp / "emu.mlir").write_text(text)
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
    raw = [np.ascontiguousarray(a).view(f"u{a.itemsize}") for a in arrays]
    np.savez(path, **{f"a{i}": a for i, a in enumerate(raw)})
    r = subprocess.run([sys.executable, "-c", _CHILD, str(so), name, str(path), str(blocks)],
                       env={**os.environ, "MALLOC_PERTURB_": "165"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"CPU run of {name} failed (rc {r.returncode}):\n{r.stderr[-3000:]}"
    out = np.load(path)
    return [out[f"a{i}"].view(a.dtype) for i, a in enumerate(arrays)]


NP_DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def rand(rng, shape, dtype):
    """Seeded random values, rounded to the kernel's input dtype."""
    return rng.standard_normal(shape).astype(np.float32).astype(NP_DTYPES[dtype])


def f64(a):
    return np.asarray(a).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# tiled GEMM

GEMM_SHAPES = [(100, 200, 300), (1, 96, 4100), (37, 513, 130)]   # none divides the tiles


@needs_bishengir
@pytest.mark.parametrize("soc", SOCS)
def test_gemm_compiles(soc, tmp_path):
    for m, n, k in GEMM_SHAPES[:2]:
        opt = compile_check(matmul.emit(m, n, k, soc), soc, tmp_path / f"{m}x{n}x{k}")
        text = opt.read_text()
        assert "mma_tile" in text and "fixpipe" in text, "the cube path (mma / fixpipe library calls) is missing"


@needs_cpu_runner
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_gemm_cpu_numerics(dtype, tmp_path):
    rng = np.random.default_rng(7)
    for i, (m, n, k) in enumerate(GEMM_SHAPES):
        soc = SOCS[i % 2]
        t = matmul.choose_tiling(soc, m, n, k, dtype)
        text = matmul.emit(m, n, k, soc, dtype, name="gemm")
        assert (m % t.tm, n % t.tn, k % t.tk) != (0, 0, 0)
        d = tmp_path / f"{i}"
        d.mkdir()
        so = cpu_build(matmul.cpu_emulation(text), "gemm", d)
        a, b = rand(rng, (m, k), dtype), rand(rng, (n, k), dtype)
        c0 = np.full((m, n), np.nan, np.float32)
        _, _, c = cpu_run(so, "gemm", matmul.block_dim(text), a, b, c0)
        ref = f64(a) @ f64(b).T
        tol = 1e-5 * np.sqrt(k) * (np.abs(f64(a)) @ np.abs(f64(b)).T) + 1e-6
        assert np.all(np.abs(c - ref) <= tol), f"{dtype} {m}x{n}x{k} tiling {t}: max err {np.nanmax(np.abs(c - ref))}"
