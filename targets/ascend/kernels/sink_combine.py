"""The merge stage of split-K sink-attention decode (``tide.ops.sink_attention`` with ``splits > 1``)
on the Ascend vector unit as HIVM MLIR.

Each of the P splits left, per query row r (a (token, head) pair), its running max ``m[r, p]``, its
softmax sum ``l[r, p]`` (split 0's includes the sink's own weight 1) and its unnormalized accumulator
``acc[p, r, :]``. The merge is

    M = max_p m[r, p],  Lsum = sum_p l[r, p] exp(m[r, p] - M),
    out[r, :] = sum_p acc[p, r, :] * exp(m[r, p] - M) / Lsum

Layout (the Ascend decode stage's own): ``m, l [rows, P]`` (a row's splits contiguous: one load per
row tile gives the ``[tile_rows, P]`` block the max and the sum reduce over), ``acc [P, rows, D]``,
``out [rows, D]``, float32. Per tile: max and sum by ``vreduce`` over the split axis into buffers
filled with -inf and 0 first (the CPU lowering starts from the destination); then for each split p
(unrolled, P is static) its column ``m[:, p]`` loaded as ``[tile_rows, 1]``, its weight
``exp(m - M) / Lsum`` and ``out += acc_p * weight`` broadcast along D.

Tiling: the largest divisor of rows whose ``LIVE_TILES`` ``[tile_rows, D]`` blocks (plus the
``[tile_rows, P]`` ones) fit the UB double-buffered; tiles go round-robin over the vector cores.
"""

from __future__ import annotations

import math

from tide.targets.ascend import cost, hivm, mlir

LIVE_TILES = 4      # out, acc_p, acc_p * w, the new out
BUFFERING = 2


def choose_tile_rows(soc: str, rows: int, splits: int, head_dim: int) -> int:
    return hivm.tile_rows(soc, rows, 4 * (LIVE_TILES * head_dim + 4 * splits), 1, buffering=BUFFERING,
                          what="sink combine")


def emit(rows: int, splits: int, head_dim: int, soc: str, tile_rows: int | None = None,
         name: str = "tide_sink_combine") -> str:
    """HIVM module ``(m [rows, P] f32, l [rows, P] f32, acc [P * rows, D] f32, out [rows, D] f32)``
    (``acc [P, rows, D]`` passed as its ``[P * rows, D]`` view)."""
    if splits < 1:
        raise ValueError(f"ascend sink combine: splits must be at least 1, got {splits}")
    tr = tile_rows or choose_tile_rows(soc, rows, splits, head_dim)
    if rows % tr:
        raise ValueError(f"ascend sink combine: tile_rows {tr} does not divide rows {rows}")
    tiles = rows // tr
    P, D = splits, head_dim
    gm_ml, gm_acc, gm_out = mlir.gm((rows, P), "f32"), mlir.gm((P * rows, D), "f32"), mlir.gm((rows, D), "f32")
    TP, TC, TD = mlir.tensor((tr, P), "f32"), mlir.tensor((tr, 1), "f32"), mlir.tensor((tr, D), "f32")
    b = mlir.Builder()
    v = hivm.Vector(b, soc)
    zero = b.op("arith.constant 0.000000e+00 : f32", "zero")
    ninf = b.op(f"arith.constant {mlir.float_literal(-math.inf, 'f32')} : f32", "ninf")
    with hivm.block_loop(b, b.const(tiles)) as task:
        r0 = b.op(f"arith.muli {task}, {b.const(tr)} : index", "r0")
        m = v.load("%M", gm_ml, [r0, b.const(0)], (tr, P), P)
        l_ = v.load("%L", gm_ml, [r0, b.const(0)], (tr, P), P)
        mx = v.reduce("max", m, TP, v.fill(ninf, TC), TC, [1])
        # a broadcast of [tr, 1] onto itself breaks the 950 tool (tests/ascend_regressions/vector_unit_broadcast_a5.mlir)
        e = v.op("vexp", [v.op("vsub", [m, mx], [TP, TC], TP, " broadcast = [1]" if P > 1 else "")], [TP], TP)
        total = v.reduce("sum", v.op("vmul", [l_, e], [TP, TP], TP), TP, v.fill(zero, TC), TC, [1])
        out = v.fill(zero, TD)
        for p in range(P):
            mp = v.load("%M", gm_ml, [r0, b.const(p)], (tr, 1), P)
            ep = v.op("vexp", [v.op("vsub", [mp, mx], [TC, TC], TC)], [TC], TC)
            wp = v.op("vdiv", [ep, total], [TC, TC], TC)
            ar = b.op(f"arith.addi {r0}, {b.const(p * rows)} : index", "ar")
            acc = v.load("%ACC", gm_acc, [ar, b.const(0)], (tr, D), D)
            out = v.op("vadd", [out, v.op("vmul", [acc, wp], [TD, TC], TD, " broadcast = [1]")], [TD, TD], TD)
        v.store(out, "%OUT", gm_out, [r0, b.const(0)], (tr, D), D)
    blocks = min(tiles, cost.soc(soc).vector_cores)
    return b.module(name, [("%M", gm_ml), ("%L", gm_ml), ("%ACC", gm_acc), ("%OUT", gm_out)], blocks)


def reference(m, l_, acc):
    """float64 merge of ``m, l [rows, P]`` and ``acc [P, rows, D]``."""
    import numpy as np

    m, l_, acc = (np.asarray(a, np.float64) for a in (m, l_, acc))
    w = np.exp(m - m.max(axis=1, keepdims=True))
    w /= (l_ * w).sum(axis=1, keepdims=True)
    return np.einsum("prd,rp->rd", acc, w)


def cost_counts(rows: int, splits: int, head_dim: int) -> dict:
    """FLOPs (max, exp, weighted sum per split and row; multiply-add per accumulator element) and
    minimum bytes (m, l, acc read, out written; float32)."""
    return {"flops": rows * splits * (6 + 2 * head_dim),
            "bytes": 4 * (2 * rows * splits + splits * rows * head_dim + rows * head_dim)}
