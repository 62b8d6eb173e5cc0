"""The kernels that read block-quantized weights (``tide.ops.dequantize_fp8``,
``tide.ops.dequantize_fp4``, ``tide.ops.linear_fp8``) on the CPU, against numpy in float64.

Dequantization is exact (every e4m3 / e2m1 value times a power of two is a float32), so it is
compared for equality over every bit pattern, subnormals and both signs included. The FP8 linear
decodes in registers and accumulates in float32: the tolerance is float32 accumulation over K.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tide.compiler.substitute import cpu_features
from tide.ops import dequantize_fp4, dequantize_fp8, kernel, linear, linear_fp8, quant
from tide.targets.cpu import linear as cpu_linear
from tide.targets.target import compile_kernels


def _target():
    import tvm

    return tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})


def _run(func, *arrays, out_shape):
    import tvm

    lib = compile_kernels({"k": func}, _target())
    out = tvm.runtime.empty(out_shape, "float32")
    lib["k"](*(tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays), out)
    return out.numpy()


def _fp8_bytes(rng, shape):
    """Every finite e4m3 bit pattern (NaN 0x7F / 0xFF excluded), shuffled into ``shape``."""
    finite = np.array([b for b in range(256) if b & 0x7F != 0x7F], dtype=np.uint8)
    return rng.choice(finite, size=shape)


@pytest.mark.parametrize("lead,rows,cols", [(1, 256, 384), (3, 200, 130)])   # partial scale blocks
def test_dequantize_fp8_is_exact(lead, rows, cols):
    rng = np.random.default_rng(lead * 7 + rows)
    q = _fp8_bytes(rng, (lead, rows, cols))
    s = rng.integers(100, 140, size=(lead, -(-rows // 128), -(-cols // 128)), dtype=np.uint8)
    s.reshape(-1)[0] = 0   # 2^-127, the subnormal scale
    func = kernel.tag(dequantize_fp8.prim_func(lead, rows, cols, 128, 128, "k"), "dequantize_fp8")
    got = _run(func, q, s, out_shape=(lead, rows, cols))
    np.testing.assert_array_equal(got, dequantize_fp8.reference(q, s, 128, 128).astype(np.float32))


def test_dequantize_fp4_is_exact():
    rng = np.random.default_rng(4)
    lead, rows, cols = 4, 48, 256
    q = rng.integers(0, 256, size=(lead, rows, cols // 2), dtype=np.uint8)
    s = rng.integers(110, 135, size=(lead, rows, cols // 32), dtype=np.uint8)
    func = kernel.tag(dequantize_fp4.prim_func(lead, rows, cols, "k"), "dequantize_fp4")
    got = _run(func, q, s, out_shape=(lead, rows, cols))
    want = dequantize_fp4.reference(q, s)
    np.testing.assert_array_equal(got, want.astype(np.float32))
    # the reference's own nibble order and scale exponent, by hand: byte 0x9A holds element 0 =
    # code 0xA (-1.0) and element 1 = code 0x9 (-0.5); scale byte 128 is 2
    one = dequantize_fp4.reference(np.full((1, 16), 0x9A, np.uint8), np.full((1, 1), 128, np.uint8))
    assert one[0, 0] == -2.0 and one[0, 1] == -1.0


@pytest.mark.parametrize("rows,dim,cols,groups", [(1, 512, 256, 1), (6, 384, 128, 1), (32, 256, 384, 1),
                                                  (5, 200, 256, 1),        # partial K block
                                                  (1, 256, 128, 2), (12, 128, 256, 3)])   # grouped (wo_a)
def test_linear_fp8_matches_numpy(rows, dim, cols, groups):
    target = _target()
    cfg = cpu_linear.choose_linear_fp8(rows=rows, cols=cols, block_n=128, features=cpu_features(target))
    if not cfg:
        pytest.skip("this CPU has no F16C: tide's FP8 linear is not chosen here")
    rng = np.random.default_rng(rows + dim + cols)
    x = rng.standard_normal((rows, groups * dim), dtype=np.float32)
    q = _fp8_bytes(rng, (groups * cols, dim))
    s = rng.integers(112, 122, size=linear_fp8.scale_shape(dim, cols, groups, 128, 128), dtype=np.uint8)
    s.reshape(-1)[-1] = quant.SCALE_MAX - 100
    func = kernel.tag(linear_fp8.prim_func(rows, dim, cols, cfg["panel"], groups, name="k"), "linear_fp8", **cfg)
    packed = linear.pack(q.reshape(groups, cols, dim).transpose(0, 2, 1), cfg["panel"])
    got = _run(cpu_linear.schedule_linear(func, target), x, packed, s, out_shape=(rows, groups * cols))
    want = linear_fp8.reference(x, q, s, groups)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * math.sqrt(dim) * float(np.abs(want).max()))


def _fp4_weight(rng, shape):
    """Random packed e2m1 bytes and e8m0 scales for a [..., N, K] weight."""
    *lead, n, k = shape
    q = rng.integers(0, 256, size=(*lead, n, k // 2), dtype=np.uint8)
    s = rng.integers(118, 128, size=(*lead, n, k // 32), dtype=np.uint8)
    return q, s


@pytest.mark.parametrize("tokens,block_rows", [(1, 1), (7, 3)])
def test_moe_fp4_gemms_match_numpy(tokens, block_rows):
    """The FP4 grouped gate/up (SwiGLU epilogue) and down GEMMs on the checkpoint's packed bytes,
    against the float64 references on the exactly dequantized weights."""
    from tide.ops import moe_down, moe_gate_up
    from tide.targets.cpu import moe as cpu_moe

    if "f16c" not in cpu_features(_target()):
        pytest.skip("this CPU has no F16C: tide's FP4 expert GEMMs are not chosen here")
    rng = np.random.default_rng(tokens)
    experts, dim, inter, limit = 4, 256, 128, 2.0
    max_tiles = 3
    rows = max_tiles * block_rows
    x = rng.standard_normal((tokens, dim), dtype=np.float32)
    row_token = rng.integers(0, tokens, size=rows).astype(np.int32)
    row_weight = rng.uniform(0.1, 1.0, size=rows).astype(np.float32)
    tile_expert = np.array([2, 0, 3], np.int32)
    num_tiles = np.array([2], np.int32)   # the third tile is unused: its rows stay unwritten
    gq, gs = _fp4_weight(rng, (experts, 2 * inter, dim))
    dq, ds = _fp4_weight(rng, (experts, dim, inter))
    params = dict(layout="rows", weight_dtype="fp4", tile_rows=block_rows)
    gate_up = kernel.tag(moe_gate_up.prim_func(tokens, dim, experts, inter, max_tiles, block_rows, limit, "k",
                                               "rows", "fp4"), "moe_gate_up", **params)
    def planes(a):
        return a.reshape(a.shape[0], -1, 2).transpose(0, 2, 1)

    h = _run(cpu_moe.RULES["moe_gate_up"](gate_up), planes(x), gq, gs, row_token, row_weight, tile_expert, num_tiles,
             out_shape=(rows, inter))
    want = moe_gate_up.reference(x, row_token, row_weight, tile_expert, num_tiles,
                                 dequantize_fp4.reference(gq, gs), limit, block_rows)
    used = slice(0, 2 * block_rows)
    np.testing.assert_allclose(h[used], want[used], rtol=0, atol=1e-5 * float(np.abs(want).max()))
    down = kernel.tag(moe_down.prim_func(dim, experts, inter, max_tiles, block_rows, "k", "rows", "fp4"),
                      "moe_down", **params)
    o = _run(cpu_moe.RULES["moe_down"](down), planes(h), dq, ds, tile_expert, num_tiles, out_shape=(rows, dim))
    want_o = moe_down.reference(h, tile_expert, num_tiles, dequantize_fp4.reference(dq, ds), block_rows)
    np.testing.assert_allclose(o[used], want_o[used], rtol=0, atol=1e-5 * float(np.abs(want_o).max()))
