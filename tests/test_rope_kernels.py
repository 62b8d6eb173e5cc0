"""tide's RoPE kernels (``tide.ops.rope``, the fused ``tide.ops.qnorm_rope``, ``tide.targets.rope``)
against float64 references on seeded random data with the exporter's cos/sin tables at random
positions (batch rows at different, unaligned start positions).

CPU kernels are built and run here; the CUDA kernels are built and their source compiled with nvcc
for sm_90 and sm_80 (their numerics need a GPU). Tolerance: float32 kernel vs float64 reference on
values of magnitude ~1 to ~3: TOL = 2e-5.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import zlib

import numpy as np
import pytest
import tvm
from tvm import relax

from tide.compiler import schedule, substitute
from tide.compiler.errors import CompileError
from tide.ops import qnorm_rope, rmsnorm, rope
from tide.ops.kernel import tag
from tide.targets import get
from tide_test_models import run_converters

TOL = 2e-5


@functools.cache
def _target():
    return get("cpu").tvm_target()


def _tables(starts, seq, rope_dim, theta):
    """cos/sin ``[B, S, rope_dim/2]`` at positions ``start_b + t`` (the exporter's main graph)."""
    inv_freq = theta ** (-np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim)
    pos = np.asarray(starts)[:, None] + np.arange(seq)[None]
    freqs = (pos[..., None] * inv_freq).astype(np.float32)
    return np.cos(freqs), np.sin(freqs)


# (x shape, cos/sin shape, rope_dim, start positions of the batch rows, theta)
CASES = {
    "flash-q-decode": ((2, 1, 64, 512), (2, 1, 1, 32), 64, [4095, 77], 160000.0),
    "pro-q-prefill": ((1, 3, 128, 512), (1, 3, 1, 32), 64, [1013], 10000.0),
    "flash-kv-prefill": ((2, 5, 512), (2, 5, 32), 64, [29, 3001], 160000.0),
    "tiny-q-prefill": ((2, 7, 8, 64), (2, 7, 1, 8), 16, [0, 13], 10000.0),
    "full-rotation": ((3, 2, 32), (3, 2, 16), 32, [5, 250, 91], 10000.0),
    "broadcast-over-batch": ((2, 3, 4, 64), (3, 1, 8), 16, [17], 10000.0),  # tables shared by the rows
}


def _case_arrays(case):
    x_shape, table_shape, rd, starts, theta = CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    seq = x_shape[1]
    cos, sin = _tables(starts, seq, rd, theta)
    cos, sin = cos.reshape(table_shape), sin.reshape(table_shape)
    x = rng.standard_normal(x_shape).astype(np.float32)
    return x, cos, sin, rd


@pytest.mark.parametrize("case", list(CASES))
def test_rope_matches_reference(case):
    x, cos, sin, rd = _case_arrays(case)
    (got,), report = run_converters(lambda bb, p, conv, rep: [conv["RoPE"](bb, p, {"rope_dim": rd})], [x, cos, sin])
    want = rope.reference(x, cos, sin, rd)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    assert [k for k in report.kernels if k.startswith("tide_rope_")], report.kernels
    # the leading channels pass through bit for bit
    np.testing.assert_array_equal(got[..., :x.shape[-1] - rd], x[..., :x.shape[-1] - rd])


@pytest.mark.parametrize("case", ["flash-q-decode", "tiny-q-prefill"])
def test_inverse_rope_on_negated_sin(case):
    """The attention output's inverse RoPE: ``RoPE(out, cos, Neg(sin))`` becomes the inverse kernel on
    sin, and undoes the forward rotation."""
    x, cos, sin, rd = _case_arrays(case)

    def body(bb, p, conv, rep):
        neg = bb.emit(relax.op.negative(p[2]))
        return [conv["RoPE"](bb, [p[0], p[1], neg], {"rope_dim": rd})]

    (got,), report = run_converters(body, [x, cos, sin])
    np.testing.assert_allclose(got, rope.reference(x, cos, -sin, rd), rtol=0, atol=TOL)
    assert any(k.endswith("_inv") for k in report.kernels), report.kernels
    forward = rope.reference(x, cos, sin, rd)
    # the float32 tables make cos^2 + sin^2 differ from 1 by ~1e-7
    np.testing.assert_allclose(rope.reference(forward, cos, sin, rd, inverse=True), x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", ["flash-q-decode", "pro-q-prefill", "flash-kv-prefill", "tiny-q-prefill"])
def test_rmsnorm_then_rope_is_one_fused_kernel(case):
    """V4's q path (per-head RMSNorm with ones, then RoPE) and kv path (RMSNorm(kv_norm), then RoPE):
    one qnorm_rope kernel; the RMSNorm kernel is dead and not reported."""
    x, cos, sin, rd = _case_arrays(case)
    rng = np.random.default_rng(zlib.crc32(case.encode()) + 1)
    x = (3 * x + 0.5).astype(np.float32)
    weight = (1 + 0.1 * rng.standard_normal(x.shape[-1])).astype(np.float32)

    def body(bb, p, conv, rep):
        normed = bb.emit(conv["RMSNorm"](bb, [p[0], p[3]], {"epsilon": 1e-6}))
        return [conv["RoPE"](bb, [normed, p[1], p[2]], {"rope_dim": rd})]

    (got,), report = run_converters(body, [x, cos, sin, weight])
    np.testing.assert_allclose(got, qnorm_rope.reference(x, weight, cos, sin, 1e-6, rd), rtol=0, atol=TOL)
    assert [k for k in report.kernels if k.startswith("tide_norm_rope_")], report.kernels
    assert not [k for k in report.kernels if k.startswith("tide_rmsnorm_")], report.kernels


def test_fused_norm_output_read_elsewhere_keeps_its_kernel():
    x, cos, sin, rd = _case_arrays("tiny-q-prefill")
    weight = np.ones(x.shape[-1], np.float32)

    def body(bb, p, conv, rep):
        normed = bb.emit(conv["RMSNorm"](bb, [p[0], p[3]], {"epsilon": 1e-6}))
        return [conv["RoPE"](bb, [normed, p[1], p[2]], {"rope_dim": rd}), normed]

    (got, normed), report = run_converters(body, [x, cos, sin, weight])
    np.testing.assert_allclose(normed, rmsnorm.reference(x, weight, 1e-6), rtol=0, atol=TOL)
    np.testing.assert_allclose(got, qnorm_rope.reference(x, weight, cos, sin, 1e-6, rd), rtol=0, atol=TOL)
    assert [k for k in report.kernels if k.startswith("tide_rmsnorm_")], report.kernels


@pytest.mark.parametrize("rd, table, message", [
    (15, (2, 7, 1, 7), "even"),
    (80, (2, 7, 1, 40), r"in \(0, 64\]"),
    (16, (2, 7, 1, 4), "does not broadcast"),
    (16, (3, 7, 1, 8), "does not broadcast"),
])
def test_bad_rope_input_is_a_clear_error(rd, table, message):
    x = np.ones((2, 7, 8, 64), np.float32)
    cos = np.ones(table, np.float32)
    with pytest.raises(CompileError, match=message):
        run_converters(lambda bb, p, conv, rep: [conv["RoPE"](bb, p, {"rope_dim": rd})], [x, cos, cos])


def test_cost_counts():
    c = rope.cost(64, 512, 64, 1)
    assert c == {"flops": 3 * 64 * 64, "bytes": (2 * 64 * 512 + 64) * 4}
    f = qnorm_rope.cost(64, 512, 64, 1)
    assert f["flops"] == 4 * 64 * 512 + 3 * 64 * 64 and f["bytes"] == (2 * 64 * 512 + 512 + 64) * 4


# ---------------------------------------------------------------------------------------------
# CUDA builds


def _nvcc():
    path = shutil.which("nvcc") or "/usr/local/bin/nvcc"
    assert os.path.exists(path), "nvcc is needed to check the CUDA kernels"
    return path


CUDA_KERNELS = {  # case -> (kernel identity, definition for a row loop kind)
    "rope-flash-q": ("rope", lambda k: rope.prim_func(64, 512, 64, 1, False, row_kind=k, lead=(1, 1, 64))),
    "rope-pro-out-inverse": ("rope", lambda k: rope.prim_func(3 * 128, 512, 64, 3, True, row_kind=k)),
    "rope-tiny": ("rope", lambda k: rope.prim_func(7 * 8, 64, 16, 7, row_kind=k)),
    "norm-rope-flash-q": ("qnorm_rope", lambda k: qnorm_rope.prim_func(64, 512, 64, 1, 1e-6, row_kind=k)),
    "norm-rope-kv": ("qnorm_rope", lambda k: qnorm_rope.prim_func(5, 512, 64, 5, 1e-6, row_kind=k, lead=(1, 5))),
}


@pytest.mark.parametrize("kernel", list(CUDA_KERNELS))
def test_cuda_kernels_compile_with_nvcc(kernel, tmp_path):
    cuda = get("cuda")
    target = cuda.tvm_target(None, ["sm_90"])
    identity, define = CUDA_KERNELS[kernel]
    func = schedule.schedule_kernel(tag(define(cuda.choose("rope")["row_kind"]), identity), cuda, target)
    exe = tvm.compile(tvm.IRModule({"main": func}), target=target)
    source = exe.mod.imports[0].inspect_source()
    allowed = {str(p) for p in func.params}
    kernels = re.findall(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?\w+\(([^)]*)\)\s*\{', source)
    assert len(kernels) == 1
    names = [re.sub(r"_ptr(_\d+)?$", "", p.split()[-1]) for p in kernels[0].split(",")]
    assert set(names) <= allowed, names  # no scratch buffer in global memory
    cu = tmp_path / "kernel.cu"
    cu.write_text(source)
    for arch in ("sm_90", "sm_80"):
        res = subprocess.run([_nvcc(), "-cubin", f"-arch={arch}", "-o", str(tmp_path / f"{arch}.cubin"), str(cu)],
                             capture_output=True, text=True)
        assert res.returncode == 0, f"{arch}: {res.stderr[-2000:]}"


# ---------------------------------------------------------------------------------------------
# the exported model


def test_tiny_model_import_fuses_q_and_kv_norms_and_folds_the_inverse_sin(tmp_path):
    """Through the ONNX frontend (which hands converters un-bound calls): every layer's q and kv
    RMSNorm+RoPE pair becomes one fused kernel, the output's RoPE(out, cos, Neg(sin)) the inverse
    kernel, and only the q-LoRA and sublayer RMSNorms stay. (tests/test_v4_spine.py checks the
    compiled model's tokens against transformers.)"""
    from tide.compiler import onnx_import, relax_import
    from tide.compiler.export import export

    path = str(tmp_path / "tiny.onnx")
    export("tiny", path, seed=0, batch=2)
    loaded = onnx_import.load(path)
    report = substitute.SubstitutionReport()
    converters = substitute.function_kernels(get("cpu"), report)
    static = onnx_import.specialize(loaded, {"seq": 3}, frozenset(converters))
    mod = relax_import.to_relax(onnx_import.with_weights(static, loaded.weights), path, converters)
    mod = substitute.substitute(mod, get("cpu"), {}, report)
    served = substitute.called_kernels(mod["main"])
    fused = sorted(k for k in report.kernels if k.startswith("tide_norm_rope_"))
    assert fused == ["tide_norm_rope_2x3x64_r16_g6", "tide_norm_rope_2x3x8x64_r16_g6"], report.kernels
    assert sorted(k for k in report.kernels if k.startswith("tide_rope_")) == ["tide_rope_2x3x8x64_r16_g6_inv"]
    norms = sorted(k for k in report.kernels if k.startswith("tide_rmsnorm_"))
    assert norms == ["tide_rmsnorm_6x128", "tide_rmsnorm_6x64"], norms   # sublayer inputs (D 128), q-LoRA (64)
    assert set(report.kernels) <= served | {k for k, v in report.kernels.items() if v == "generic"}
