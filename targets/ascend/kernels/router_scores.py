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

from tide.targets.ascend import cost
from tide.targets.ascend.kernels import matmul

LIVE_TILES = 4
BUFFERING = 2
ATANH_TERMS = 8        # 1, z^2/3, ..., z^14/15
FLOPS_PER_ELEMENT = 9 + 2 * ATANH_TERMS  # abs, neg, exp, +2, div, square, Horner, 2z*p, max, add, sqrt


def choose_tile_rows(soc: str, rows: int, experts: int) -> int:
    """The largest divisor of ``rows`` whose live tiles fit the UB, double-buffered."""
    limit = cost.soc(soc).ub // (LIVE_TILES * BUFFERING * experts * 4)
    if limit < 1:
        raise ValueError(f"ascend router scores: a row of {experts} float32 does not fit {soc}'s unified buffer")
    return max(t for t in range(1, min(rows, limit) + 1) if rows % t == 0)


def emit(rows: int, experts: int, soc: str, tile_rows: int | None = None, name: str = "tide_router_scores") -> str:
    """HIVM module ``(v [rows, experts] f32, s [rows, experts] f32)`` for ``soc``."""
    s = cost.soc(soc)
    tr = tile_rows or choose_tile_rows(soc, rows, experts)
    if rows % tr:
        raise ValueError(f"ascend router scores: tile_rows {tr} does not divide rows {rows}")
    tiles = rows // tr
    gm_v = matmul.gm((rows, experts), "f32")
    T = f"tensor<{tr}x{experts}xf32>"
    tile_t = f"memref<{tr}x{experts}xf32, strided<[{experts}, 1], offset: ?>, {matmul.GM}>"
    b = matmul.Body()

    def vop(op, ins, types, extra=""):
        out = b.op("ve", f"tensor.empty() : {T}", 3)
        return b.op("v", f"hivm.hir.{op} ins({ins} : {types}) outs({out} : {T}){extra} -> {T}", 3)

    zero = b.op("zero", "arith.constant 0.000000e+00 : f32", 2)
    two = b.op("two", "arith.constant 2.000000e+00 : f32", 2)
    coef = [b.op("c", f"arith.constant {1.0 / (2 * i + 1):.9e} : f32", 2) for i in range(ATANH_TERMS)]
    mone = b.op("mone", "arith.constant -1.000000e+00 : f32", 2)
    task = matmul.emit_block_loop(b, b.const(tiles), 2)
    r0 = b.op("r0", f"arith.muli {task}, {b.const(tr)} : index", 3)
    src = b.op("src", f"memref.subview %V[{r0}, 0] [{tr}, {experts}] [1, 1] : {gm_v} to {tile_t}", 3)
    buf = b.op("buf", f"memref.alloc() : memref<{tr}x{experts}xf32>", 3)
    b.emit(f"hivm.hir.load ins({src} : {tile_t}) outs({buf} : memref<{tr}x{experts}xf32>)", 3)
    v = b.op("vin", f"bufferization.to_tensor {buf} restrict writable : memref<{tr}x{experts}xf32>", 3)
    a = vop("vabs", v, T)
    na = vop("vmul", f"{a}, {mone}", f"{T}, f32")
    e = vop("vexp", na, T)
    e2 = vop("vadd", f"{e}, {two}", f"{T}, f32")
    z = vop("vdiv", f"{e}, {e2}", f"{T}, {T}")
    zz = vop("vmul", f"{z}, {z}", f"{T}, {T}")
    poly = vop("vbrc", coef[ATANH_TERMS - 1], "f32")
    for c in reversed(coef[:ATANH_TERMS - 1]):
        poly = vop("vadd", f"{vop('vmul', f'{poly}, {zz}', f'{T}, {T}')}, {c}", f"{T}, f32")
    z2 = vop("vmul", f"{z}, {two}", f"{T}, f32")
    lg = vop("vmul", f"{z2}, {poly}", f"{T}, {T}")
    pos = vop("vmax", f"{v}, {zero}", f"{T}, f32")
    sp = vop("vadd", f"{pos}, {lg}", f"{T}, {T}")
    out = vop("vsqrt", sp, T)
    dst = b.op("dst", f"memref.subview %S[{r0}, 0] [{tr}, {experts}] [1, 1] : {gm_v} to {tile_t}", 3)
    b.emit(f"hivm.hir.store ins({out} : {T}) outs({dst} : {tile_t})", 3)
    b.emit("}", 2)
    return matmul.function(name, [("%V", gm_v), ("%S", gm_v)], b, min(tiles, s.vector_cores))


def reference(v):
    import numpy as np

    v = np.asarray(v, dtype=np.float64)
    return np.sqrt(np.maximum(v, 0) + np.log1p(np.exp(-np.abs(v))))


def cost_counts(rows: int, experts: int) -> dict:
    return {"flops": FLOPS_PER_ELEMENT * rows * experts, "bytes": 4 * 2 * rows * experts}
