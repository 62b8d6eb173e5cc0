"""The softmax of sink-attention decode (``tide.ops.sink_attention``) on the Ascend vector unit as
HIVM MLIR: for one query token, per head h (a row) over its n entries,

    z = s * scale + bias,   M = max(max_n z, sink_h),
    p = exp(z - M) / (sum_n exp(z - M) + exp(sink_h - M))

i.e. ``softmax([z..., sink_h])`` without the sink's own column. ``s [heads, n]`` are the raw
``q . kv`` products (the cube's output), ``bias [1, n]`` the token's entry bias shared by all heads
(``-inf`` for masked entries, whose exp is 0: M is finite, it includes the sink), ``sinks [heads, 1]``,
``p [heads, n]``; float32. Max and sum by ``vreduce`` into buffers filled with -inf and 0 first (the
CPU lowering starts from the destination).

Tiling: a row's n entries stay in one tile (the max and the sum span them), rows per tile the largest
divisor of heads whose ``LIVE_TILES`` ``[tile_rows, n]`` blocks fit the UB double-buffered, beside the
bias row; tiles go round-robin over the vector cores. Entry lists longer than one UB row take the
split-K path (``sink_combine``).
"""

from __future__ import annotations

import math

from tide.targets.ascend import cost, hivm, mlir

LIVE_TILES = 4       # s, z, z - M / its exp, p
BUFFERING = 2
FLOPS_PER_ELEMENT = 7  # scale, bias, max, subtract, exp, sum, divide


def choose_tile_rows(soc: str, heads: int, entries: int) -> int:
    return hivm.tile_rows(soc, heads, 4 * entries, LIVE_TILES, fixed_bytes=4 * entries, buffering=BUFFERING,
                          what="sink softmax")


def emit(heads: int, entries: int, scale: float, soc: str, tile_rows: int | None = None,
         name: str = "tide_sink_softmax") -> str:
    """HIVM module ``(s [heads, n] f32, bias [1, n] f32, sinks [heads, 1] f32, p [heads, n] f32)``."""
    tr = tile_rows or choose_tile_rows(soc, heads, entries)
    if heads % tr:
        raise ValueError(f"ascend sink softmax: tile_rows {tr} does not divide heads {heads}")
    tiles = heads // tr
    n = entries
    gm_s, gm_b, gm_k = mlir.gm((heads, n), "f32"), mlir.gm((1, n), "f32"), mlir.gm((heads, 1), "f32")
    T, TC, TB = mlir.tensor((tr, n), "f32"), mlir.tensor((tr, 1), "f32"), mlir.tensor((1, n), "f32")
    b = mlir.Builder()
    v = hivm.Vector(b, soc)
    zero = b.op("arith.constant 0.000000e+00 : f32", "zero")
    ninf = b.op(f"arith.constant {mlir.float_literal(-math.inf, 'f32')} : f32", "ninf")
    sc = b.op(f"arith.constant {float(scale):.9e} : f32", "scale")
    bias = v.load("%B", gm_b, [b.const(0), b.const(0)], (1, n), n)
    with hivm.block_loop(b, b.const(tiles)) as task:
        r0 = b.op(f"arith.muli {task}, {b.const(tr)} : index", "r0")
        s = v.load("%S", gm_s, [r0, b.const(0)], (tr, n), n)
        sink = v.load("%K", gm_k, [r0, b.const(0)], (tr, 1), 1)
        z = v.op("vadd", [v.op("vmul", [s, sc], [T, "f32"], T), bias], [T, TB], T, " broadcast = [0]")
        mz = v.reduce("max", z, T, v.fill(ninf, TC), TC, [1])
        mx = v.op("vmax", [mz, sink], [TC, TC], TC)
        e = v.op("vexp", [v.op("vsub", [z, mx], [T, TC], T, " broadcast = [1]")], [T], T)
        total = v.reduce("sum", e, T, v.fill(zero, TC), TC, [1])
        es = v.op("vexp", [v.op("vsub", [sink, mx], [TC, TC], TC)], [TC], TC)
        den = v.op("vadd", [total, es], [TC, TC], TC)
        p = v.op("vdiv", [e, den], [T, TC], T, " broadcast = [1]")
        v.store(p, "%P", gm_s, [r0, b.const(0)], (tr, n), n)
    blocks = min(tiles, cost.soc(soc).vector_cores)
    return b.module(name, [("%S", gm_s), ("%B", gm_b), ("%K", gm_k), ("%P", gm_s)], blocks)


def reference(s, bias, sinks, scale: float):
    """float64 ``softmax([s * scale + bias..., sink])`` without the sink column."""
    import numpy as np

    z = np.asarray(s, np.float64) * scale + np.asarray(bias, np.float64).reshape(1, -1)
    full = np.concatenate([z, np.asarray(sinks, np.float64).reshape(-1, 1)], axis=1)
    full = np.exp(full - full.max(axis=1, keepdims=True))
    return (full / full.sum(axis=1, keepdims=True))[:, :-1]


def cost_counts(heads: int, entries: int) -> dict:
    """Analytic FLOPs and minimum bytes (s read, bias and sinks read, p written; float32)."""
    return {"flops": FLOPS_PER_ELEMENT * heads * entries, "bytes": 4 * (2 * heads * entries + entries + heads)}
