"""The TIR -> MLIR translator of the Ascend target (``tide.targets.ascend.codegen``) on small kernels
written for it: each is compile-checked by bishengir for both SoCs and run through the CPU runner
(``MALLOC_PERTURB_`` set) against numpy in float64; constructs it does not take are errors naming
the kernel; ``tide compile`` rejects a wrong ``--soc``/``--arch`` combination."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tide.compiler.errors import CompileError
from tide.targets.ascend import codegen, cores, cpu_runner, mlir, toolchain

SOCS = ("Ascend910B1", "Ascend950PR_9599")
needs_cpu_runner = pytest.mark.skipif(toolchain.missing_cpu_runner() is not None,
                                      reason=str(toolchain.missing_cpu_runner()))

ROWS, COLS, TABLE = 6, 40, 9


def _softmax_gather():
    """Rows on the AI cores: a gather guarded by an index range (out-of-range rows give 0, and
    their load must not run), a max and a sum reduction into local buffers, floordiv/floormod and
    casts, a Select and a view (decl_buffer over another buffer's data)."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def kernel(x: T.Buffer((TABLE, COLS), "float32"), idx: T.Buffer((ROWS,), "int64"),
               y: T.Buffer((ROWS, COLS), "float32"), code: T.Buffer((ROWS, COLS), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        with T.sblock("root"):
            flat = T.decl_buffer((ROWS * COLS,), "int32", data=code.data)
            for r in T.parallel(ROWS):
                with T.sblock("row"):
                    T.reads(x[0:TABLE, 0:COLS], idx[r])
                    T.writes(y[r, 0:COLS], flat[r * COLS:r * COLS + COLS])
                    g = T.sblock_alloc_buffer((COLS,), "float32", scope="local")
                    mx = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    sm = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    for c in range(COLS):
                        g[c] = T.if_then_else(idx[r] >= T.int64(0) and idx[r] < T.int64(TABLE), x[idx[r], c],
                                              T.float32(0))
                    mx[0] = T.float32(-math.inf)
                    sm[0] = T.float32(0)
                    for c in range(COLS):
                        mx[0] = T.max(mx[0], g[c])
                    for c in range(COLS):
                        sm[0] = sm[0] + T.exp(g[c] - mx[0])
                    for c in range(COLS):
                        y[r, c] = T.Select(g[c] > T.float32(0), T.exp(g[c] - mx[0]) / sm[0], T.sqrt(T.fabs(g[c])))
                        flat[r * COLS + c] = T.Cast("int32", T.floordiv(c - 17, 5) * 100 + T.floormod(c - 17, 5)) \
                            + T.Cast("int32", idx[r])
    return kernel.with_attr("global_symbol", "tide_test_softmax_gather")


def _reference(x, idx):
    x64 = x.astype(np.float64)
    y = np.zeros((ROWS, COLS))
    code = np.zeros((ROWS, COLS), np.int64)
    for r in range(ROWS):
        g = x64[idx[r]] if 0 <= idx[r] < TABLE else np.zeros(COLS)
        e = np.exp(g - g.max())
        y[r] = np.where(g > 0, e / e.sum(), np.sqrt(np.abs(g)))
        c = np.arange(COLS)
        code[r] = (c - 17) // 5 * 100 + (c - 17) % 5 + idx[r]
    return y, code


@pytest.fixture(scope="module")
def kernel_text():
    return {soc: codegen.translate("tide_test_softmax_gather", _softmax_gather(), soc) for soc in SOCS}


def test_translation_maps_rows_to_cores(kernel_text):
    for soc, k in kernel_text.items():
        assert k.block_dim == ROWS and k.args == ["ptr"] * 4
        assert "hivm.hir.get_block_idx" in k.text and "scf.if" in k.text and "memref.reinterpret_cast" in k.text
        assert "memref.dealloc" not in k.text  # crashes bishengir 1.2.0's memory planner


@pytest.mark.skipif(toolchain.missing() is not None, reason=str(toolchain.missing()))
@pytest.mark.parametrize("soc", SOCS)
def test_bishengir_compiles_it(kernel_text, soc, tmp_path):
    opt = toolchain.compile_check(kernel_text[soc].text, soc, tmp_path)
    assert "func.func @tide_test_softmax_gather" in opt.read_text()


@needs_cpu_runner
@pytest.mark.parametrize("soc", SOCS)
def test_cpu_runner_matches_numpy(kernel_text, soc):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((TABLE, COLS)).astype(np.float32)
    idx = np.array([3, -1, 8, 0, 9, 5], np.int64)  # -1 and 9 are out of range: guarded loads
    k = kernel_text[soc]
    so = cpu_runner.build_kernel(k.name, k.text)
    y0 = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    _, _, y, code = toolchain.cpu_run(so, k.name, k.block_dim, x, idx, y0, np.zeros((ROWS, COLS), np.int32))
    want_y, want_code = _reference(x, idx)
    np.testing.assert_allclose(y, want_y, rtol=2e-6, atol=1e-7)
    np.testing.assert_array_equal(code, want_code)


@needs_cpu_runner
def test_cpu_runner_catches_a_planted_bug(kernel_text):
    k = kernel_text["Ascend910B1"]
    wrong = k.text.replace("arith.maximumf", "arith.minimumf", 1)
    assert wrong != k.text
    so = cpu_runner.build_kernel(k.name, wrong)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((TABLE, COLS)).astype(np.float32)
    idx = np.array([3, 1, 8, 0, 2, 5], np.int64)
    _, _, y, _ = toolchain.cpu_run(so, k.name, k.block_dim, x, idx, np.zeros((ROWS, COLS), np.float32),
                                   np.zeros((ROWS, COLS), np.int32))
    assert not np.allclose(y, _reference(x, idx)[0], rtol=1e-3)


def test_float_literals_are_exact():
    assert mlir.float_literal(1.0, "f32") == "0x3F800000"
    assert mlir.float_literal(-math.inf, "f32") == "0xFF800000"
    assert mlir.float_literal(math.inf, "bf16") == "0x7F80"
    assert mlir.float_literal(0.1, "f32") == "0x3DCCCCCD"  # float32(0.1), not float64's
    assert mlir.float_literal(1e-6, "f64") == "0x3EB0C6F7A0B5ED8D"


def test_unsupported_construct_names_kernel_and_construct():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def bad(x: T.Buffer((4,), "float32"), y: T.Buffer((4,), "float32")):
        T.func_attr({"tirx.noalias": True})
        for i in range(4):
            y[i] = T.call_extern("float32", "my_intrinsic", x[i])

    with pytest.raises(CompileError, match=r"kernel 'tide_bad'.*call to tirx.call_extern"):
        codegen.translate("tide_bad", bad, "Ascend910B1")


def test_unsupported_dtype_is_named():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def bad(x: T.Buffer((4,), "float8_e4m3fn"), y: T.Buffer((4,), "float32")):
        for i in range(4):
            y[i] = T.Cast("float32", x[i])

    with pytest.raises(CompileError, match=r"kernel 'k'.*buffer 'x' has dtype float8_e4m3fn"):
        codegen.translate("k", bad, "Ascend910B1")


def test_generic_kernels_get_a_parallel_row_loop_only_when_single_nest():
    import tvm
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def single(x: T.Buffer((8, 4), "float32"), y: T.Buffer((8, 4), "float32")):
        for i, j in T.grid(8, 4):
            with T.sblock("y"):
                vi, vj = T.axis.remap("SS", [i, j])
                y[vi, vj] = x[vi, vj] * T.float32(2)

    @T.prim_func(s_tir=True)
    def two(x: T.Buffer((8, 4), "float32"), y: T.Buffer((8, 4), "float32")):
        t = T.alloc_buffer((8, 4))
        for i, j in T.grid(8, 4):
            with T.sblock("t"):
                vi, vj = T.axis.remap("SS", [i, j])
                t[vi, vj] = x[vi, vj] + T.float32(1)
        for i, j in T.grid(8, 4):
            with T.sblock("y"):
                vi, vj = T.axis.remap("SS", [i, j])
                y[vi, vj] = t[7 - vi, vj]

    mod = cores.schedule(tvm.IRModule({"single": single, "two": two}))
    assert codegen.translate("single", mod["single"], "Ascend910B1").block_dim == 8  # j stays the inner loop
    assert codegen.translate("two", mod["two"], "Ascend910B1").block_dim == 1


@pytest.mark.skipif(toolchain.missing() is not None, reason=str(toolchain.missing()))
def test_a_kernel_bishengir_rejects_is_a_compile_error_naming_it():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def huge(x: T.Buffer((4,), "float32"), y: T.Buffer((4,), "float32")):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):
            big = T.alloc_buffer((1 << 20,), "float32")  # 4 MiB of local memory: no AI core has it
            for i in range(1 << 20):
                big[i] = x[i % 4]
            for i in range(4):
                y[i] = big[i * 1000]

    with pytest.raises(CompileError, match=r"(?s)kernel 'tide_huge' does not compile for Ascend910B1.*ub overflow"):
        codegen.build({"tide_huge": huge}, "Ascend910B1")


@pytest.mark.parametrize("args,message", [
    (["--target", "cpu", "--soc", "Ascend910B1"], "--soc is for --target ascend, not --target cpu"),
    (["--target", "ascend", "--arch", "sm_90"], "--arch is for --target cuda, not --target ascend"),
    (["--target", "ascend", "--soc", "Ascend310P"], "unknown Ascend SoC 'Ascend310P'"),
])
def test_compile_rejects_wrong_soc_options(tmp_path, args, message):
    from tide.compiler.export import export

    onnx_path = tmp_path / "m.onnx"
    if "Ascend310P" in args:
        export("tiny", str(onnx_path), seed=0, batch=1)
    else:
        onnx_path.write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "tide.cli", "compile", str(onnx_path), "-o", str(tmp_path / "m.tide"),
                           *args, "-q"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout


def _gemm_funcs():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def kn(a: T.Buffer((1, 3, 40), "float32"), b: T.Buffer((40, 24), "float32"), c: T.Buffer((1, 3, 24), "float32")):
        for i0, i1, j, k in T.grid(1, 3, 24, 40):
            with T.sblock("matmul"):
                v0, v1, vj, vk = T.axis.remap("SSSR", [i0, i1, j, k])
                with T.init():
                    c[v0, v1, vj] = T.float32(0)
                c[v0, v1, vj] = c[v0, v1, vj] + a[v0, v1, vk] * b[vk, vj]

    @T.prim_func(s_tir=True)
    def nk(a: T.Buffer((3, 40), "float32"), b: T.Buffer((24, 40), "float32"), c: T.Buffer((3, 24), "float32")):
        for i, j, k in T.grid(3, 24, 40):
            with T.sblock("nt"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    c[vi, vj] = T.float32(0)
                c[vi, vj] = c[vi, vj] + b[vj, vk] * a[vi, vk]

    @T.prim_func(s_tir=True)
    def biased(a: T.Buffer((3, 40), "float32"), b: T.Buffer((40, 24), "float32"), c: T.Buffer((3, 24), "float32")):
        for i, j, k in T.grid(3, 24, 40):
            with T.sblock("mm"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    c[vi, vj] = T.float32(1)  # not from zero: not a plain GEMM
                c[vi, vj] = c[vi, vj] + a[vi, vk] * b[vk, vj]

    @T.prim_func(s_tir=True)
    def transposed_a(a: T.Buffer((40, 3), "float32"), b: T.Buffer((40, 24), "float32"), c: T.Buffer((3, 24), "float32")):
        for i, j, k in T.grid(3, 24, 40):
            with T.sblock("mm"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    c[vi, vj] = T.float32(0)
                c[vi, vj] = c[vi, vj] + a[vk, vi] * b[vk, vj]

    return kn, nk, biased, transposed_a


def test_plain_gemms_go_to_the_cube_kernel():
    kn, nk, biased, transposed_a = _gemm_funcs()
    assert codegen._gemm_shape(kn) == (3, 24, 40, "float32", True)
    assert codegen._gemm_shape(nk) == (3, 24, 40, "float32", False)
    assert codegen._gemm_shape(biased) is None and codegen._gemm_shape(transposed_a) is None
    k = codegen.translate("tide_kn", kn, "Ascend910B1")
    assert "hivm.hir.mmadL1 ins(" in k.text and "hivm.hir.fixpipe" in k.text and k.args == ["ptr"] * 3
    assert "memref.collapse_shape %A_plan" in k.text  # the plan's [1, 3, 40] A seen as [3, 40]
    assert "mmadL1" not in codegen.translate("tide_biased", biased, "Ascend910B1").text


@needs_cpu_runner
def test_gemm_kernel_with_plan_shapes_matches_numpy(tmp_path):
    kn = _gemm_funcs()[0]
    k = codegen.translate("tide_kn", kn, "Ascend950PR_9599")
    toolchain.compile_check(k.text, "Ascend950PR_9599", tmp_path / "cc")
    so = cpu_runner.build_kernel(k.name, k.text)
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((1, 3, 40)).astype(np.float32), rng.standard_normal((40, 24)).astype(np.float32)
    _, _, c = toolchain.cpu_run(so, k.name, k.block_dim, a, b, np.full((1, 3, 24), np.nan, np.float32))
    np.testing.assert_allclose(c, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-5, atol=1e-5)


V_ROWS, V_COLS = 3, 1024  # 1024 columns: two 512-element tiles per row


def _vector_kernel():
    """Element-wise inner loops the translator vectorizes (GM -> UB tiles, UB temporaries, chunks of
    512) and one it must keep scalar (its destination is also a broadcast operand)."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def kernel(x: T.Buffer((V_ROWS, V_COLS), "float32"), s: T.Buffer((V_ROWS,), "float32"),
               y: T.Buffer((V_ROWS, V_COLS), "float32"), z: T.Buffer((V_ROWS, 16), "float32")):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):
            t = T.alloc_buffer((V_COLS,), "float32", scope="local")
            for r in range(V_ROWS):
                for c in range(V_COLS):  # UB destination
                    t[c] = T.sigmoid(x[r, c] * s[r]) + T.exp(x[r, c] - T.float32(1))
                for c in range(V_COLS):  # GM destination, UB and GM operands, a broadcast scalar
                    y[r, c] = T.max(t[c], x[r, c]) / (s[r] * s[r] + T.float32(1)) - T.sqrt(T.fabs(x[r, c]))
                for c in range(16):  # reads z[r, 0] after writing it: stays scalar
                    z[r, c] = x[r, c] + z[r, 0]
    return kernel


def _vector_reference(x, s, z0):
    x, s = x.astype(np.float64), s.astype(np.float64)[:, None]
    t = 1 / (1 + np.exp(-x * s)) + np.exp(x - 1)
    y = np.maximum(t, x) / (s * s + 1) - np.sqrt(np.abs(x))
    z = z0.astype(np.float64).copy()
    for c in range(16):
        z[:, c] = x[:, c] + z[:, 0]
    return y, z


def test_element_wise_loops_become_vector_ops():
    k = codegen.translate("tide_vec", _vector_kernel(), "Ascend910B1")
    for op in ("vexp", "vdiv", "vmax", "vsqrt", "vabs", "vbrc", "vsub", "vmul", "load", "store"):
        assert f"hivm.hir.{op} ins(" in k.text, op
    assert "scf.for %vj" in k.text  # 1024 columns in 512-element tiles
    assert "memref.store" in k.text and "%arg3[" in k.text.split("memref.store")[-1]  # z's loop stayed scalar
    assert k.text.count("hivm.hir.load") == 2  # x's tile loaded once per vector loop


@needs_cpu_runner
@pytest.mark.parametrize("soc", SOCS)
def test_vector_loops_compile_and_match_numpy(soc, tmp_path):
    k = codegen.translate("tide_vec", _vector_kernel(), soc)
    toolchain.compile_check(k.text, soc, tmp_path / "cc")
    so = cpu_runner.build_kernel(k.name, k.text)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((V_ROWS, V_COLS)).astype(np.float32)
    s = rng.uniform(0.5, 2.0, V_ROWS).astype(np.float32)
    z0 = rng.standard_normal((V_ROWS, 16)).astype(np.float32)
    _, _, y, z = toolchain.cpu_run(so, k.name, k.block_dim, x, s, np.full((V_ROWS, V_COLS), np.nan, np.float32), z0)
    want_y, want_z = _vector_reference(x, s, z0)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z, want_z, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(toolchain.missing() is not None, reason=str(toolchain.missing()))
@pytest.mark.parametrize("soc", SOCS)
def test_dealloc_crash_regression(soc, tmp_path):
    """tests/ascend_regressions/scalar_dealloc_planmemory.mlir crashes bishengir 1.2.0; without the
    dealloc (what codegen emits) it compiles."""
    import re

    text = (Path(__file__).parent / "ascend_regressions" / "scalar_dealloc_planmemory.mlir").read_text()
    fix = dict(re.findall(r"^// workaround-(from|to):(.*)$", text, re.M))
    assert fix["from"].strip() and fix["from"].strip() in text
    with pytest.raises(toolchain.ToolchainError, match="crashed|PlanMemory"):
        toolchain.compile_check(text, soc, tmp_path / "crash")
    at = text.rindex(fix["from"].strip())  # the module's line, not the header's
    fixed = text[:at] + fix["to"].strip() + text[at + len(fix["from"].strip()):]
    toolchain.compile_check(fixed, soc, tmp_path / "fixed")


def test_ops_with_large_tensors_stay_unfused():
    """``lower.legalize_and_fuse(max_fused_bytes=...)`` (the ascend target's FUSED_TENSOR_BYTES):
    exp(x) + 1 over a 16 KiB tensor is one fused kernel without a limit and two kernels under an
    8 KiB limit, so no UB intermediate holds the 16 KiB exp(x)."""
    import tvm
    from tvm import relax

    from tide.compiler import lower
    from tide.targets import ascend

    def build():
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType((64, 64), "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                e = bb.emit(relax.op.exp(x))
                y = bb.emit_output(relax.op.add(e, relax.const(1.0, "float32")))
            bb.emit_func_output(y)
        return bb.get()

    def kernels(mod):
        return [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]

    target = tvm.target.Target({"kind": "llvm"})
    assert len(kernels(lower.legalize_and_fuse(build(), target))) == 1
    assert len(kernels(lower.legalize_and_fuse(build(), target, 8 * 1024))) == 2
    assert len(kernels(lower.legalize_and_fuse(build(), target, ascend.TARGET.fused_tensor_bytes))) == 1  # 16 KiB fits
