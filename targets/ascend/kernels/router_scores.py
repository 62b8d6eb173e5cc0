"""The MoE router's score function on the Ascend vector unit as HIVM MLIR:
``s = sqrt(softplus(v))`` over the router logits ``v [tokens, experts]`` (float32), softplus as
``max(v, 0) + log1p(exp(-|v|))`` (no overflow for large logits), as ``tide.ops.router_scores``.
The vector unit has ``vln`` but no log1p, and ``ln(1 + e)`` loses e's low bits when e is small (the
square root then magnifies that near zero), so log1p(e), e in (0, 1], is evaluated as
``2 atanh(z) = 2 z (1 + z^2/3 + ... + z^14/15)`` with ``z = e / (2 + e) <= 1/3`` (Horner in z^2;
truncation below float32 rounding), with no cancellation for any e.
The logits GEMM ``x W^T`` runs as the tiled cube GEMM (``matmul.emit``); this kernel is its epilogue.

Rows are cut into tiles that fit the UB with the live ``[tile_rows, experts]`` values
(v, |v|, the exp chain, the sum) double-buffered and spread over the vector cores.
"""

from __future__ import annotations

from tide.targets.ascend import cost, hivm, mlir

LIVE_TILES = 4
BUFFERING = 2
ATANH_TERMS = 8        # 1, z^2/3, ..., z^14/15
FLOPS_PER_ELEMENT = 9 + 2 * ATANH_TERMS  # abs, neg, exp, +2, div, square, Horner, 2z*p, max, add, sqrt


def choose_tile_rows(soc: str, rows: int, experts: int) -> int:
    """The largest divisor of ``rows`` whose live tiles fit the UB, double-buffered."""
    return hivm.tile_rows(soc, rows, 4 * experts, LIVE_TILES, buffering=BUFFERING, what="router scores")


def emit(rows: int, experts: int, soc: str, tile_rows: int | None = None, name: str = "tide_router_scores") -> str:
    """HIVM module ``(v [rows, experts] f32, s [rows, experts] f32)`` for ``soc``."""
    tr = tile_rows or choose_tile_rows(soc, rows, experts)
    if rows % tr:
        raise ValueError(f"ascend router scores: tile_rows {tr} does not divide rows {rows}")
    tiles = rows // tr
    gm_v = mlir.gm((rows, experts), "f32")
    T = mlir.tensor((tr, experts), "f32")
    b = mlir.Builder()
    zero = b.op("arith.constant 0.000000e+00 : f32", "zero")
    two = b.op("arith.constant 2.000000e+00 : f32", "two")
    coef = [b.op(f"arith.constant {1.0 / (2 * i + 1):.9e} : f32", "c") for i in range(ATANH_TERMS)]
    mone = b.op("arith.constant -1.000000e+00 : f32", "mone")
    vec = hivm.Vector(b, soc)

    scalars = {zero, two, mone, *coef}

    def vop(op, *ins):  # element-wise over [tr, experts]; scalar operands broadcast
        return vec.op(op, list(ins), ["f32" if i in scalars else T for i in ins], T)

    with hivm.block_loop(b, b.const(tiles)) as task:
        r0 = b.op(f"arith.muli {task}, {b.const(tr)} : index", "r0")
        v = vec.load("%V", gm_v, [r0, b.const(0)], (tr, experts), experts)
        e = vop("vexp", vop("vmul", vop("vabs", v), mone))
        z = vop("vdiv", e, vop("vadd", e, two))
        zz = vop("vmul", z, z)
        poly = vec.fill(coef[ATANH_TERMS - 1], T)
        for c in reversed(coef[:ATANH_TERMS - 1]):
            poly = vop("vadd", vop("vmul", poly, zz), c)
        log1p = vop("vmul", vop("vmul", z, two), poly)
        out = vop("vsqrt", vop("vadd", vop("vmax", v, zero), log1p))
        vec.store(out, "%S", gm_v, [r0, b.const(0)], (tr, experts), experts)
    return b.module(name, [("%V", gm_v), ("%S", gm_v)], min(tiles, cost.soc(soc).vector_cores))


def reference(v):
    import numpy as np

    v = np.asarray(v, dtype=np.float64)
    return np.sqrt(np.maximum(v, 0) + np.log1p(np.exp(-np.abs(v))))


def cost_counts(rows: int, experts: int) -> dict:
    return {"flops": FLOPS_PER_ELEMENT * rows * experts, "bytes": 4 * 2 * rows * experts}
