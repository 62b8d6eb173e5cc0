"""V4's clamped SwiGLU on the Ascend vector unit as HIVM MLIR, the element-wise half of
``tide.ops.moe_gate_up`` on the gate/up GEMM's output:

    g, u = gu[:, :F], gu[:, F:]
    h = row_weight * silu(min(g, L)) * clip(u, -L, L),   silu(a) = a / (1 + exp(-a))

``gu [rows, 2F]`` (gate columns then up columns, float32), ``row_weight [rows, 1]``,
``h [rows, F]``. ``exp(-a)`` overflows to +inf for a < -88 and ``a / inf`` is the correct -0.

Tiling: a task is a ``[tile_rows, tile_cols]`` block of h (its gate and up blocks are two strided
GM -> UB loads); ``tile_cols`` is F when a row fits, else the largest divisor of F that does, and
``tile_rows`` the largest divisor of rows whose ``LIVE_TILES`` blocks fit the UB double-buffered.
Tasks go round-robin over the vector cores (``get_block_idx`` / ``get_block_num``).
"""

from __future__ import annotations

from tide.targets.ascend import cost, hivm, mlir

LIVE_TILES = 6         # g, u, the silu chain (two at a time), clipped u, product
BUFFERING = 2
FLOPS_PER_ELEMENT = 9  # min, neg, exp, +1, div, min, max, mul, mul(weight)


def choose_tiling(soc: str, rows: int, inter: int) -> tuple[int, int]:
    """(tile_rows, tile_cols) for ``h [rows, inter]`` on ``soc``'s UB."""
    ub = cost.soc(soc).ub
    col_limit = ub // (LIVE_TILES * BUFFERING * 4)
    tc = hivm.largest_divisor_at_most(inter, col_limit)
    if tc < min(inter, 64):
        raise ValueError(f"ascend swiglu: F={inter} has no column block of at least 64 that fits {soc}'s UB")
    tr = hivm.tile_rows(soc, rows, 4 * tc, LIVE_TILES, buffering=BUFFERING, what="swiglu")
    return tr, tc


def emit(rows: int, inter: int, limit: float, soc: str, tiling: tuple[int, int] | None = None,
         name: str = "tide_swiglu") -> str:
    """HIVM module ``(gu [rows, 2*inter] f32, row_weight [rows, 1] f32, h [rows, inter] f32)``."""
    if limit <= 0:
        raise ValueError(f"ascend swiglu: the clamp limit must be positive, got {limit}")
    tr, tc = tiling or choose_tiling(soc, rows, inter)
    if rows % tr or inter % tc:
        raise ValueError(f"ascend swiglu: tile {tr}x{tc} does not divide h [{rows}, {inter}]")
    col_tiles = inter // tc
    tasks = rows // tr * col_tiles
    gm_gu, gm_w = mlir.gm((rows, 2 * inter), "f32"), mlir.gm((rows, 1), "f32")
    gm_h = mlir.gm((rows, inter), "f32")
    T = mlir.tensor((tr, tc), "f32")
    b = mlir.Builder()
    v = hivm.Vector(b, soc)
    one = b.op("arith.constant 1.000000e+00 : f32", "one")
    mone = b.op("arith.constant -1.000000e+00 : f32", "mone")
    lim = b.op(f"arith.constant {float(limit):e} : f32", "lim")
    nlim = b.op(f"arith.constant {-float(limit):e} : f32", "nlim")
    with hivm.block_loop(b, b.const(tasks)) as task:
        r0, c0 = hivm.tile_origin(b, task, col_tiles, tr, tc)
        cu = b.op(f"arith.addi {c0}, {b.const(inter)} : index", "cu")
        g = v.load("%GU", gm_gu, [r0, c0], (tr, tc), 2 * inter)
        u = v.load("%GU", gm_gu, [r0, cu], (tr, tc), 2 * inter)
        w = v.load("%RW", gm_w, [r0, b.const(0)], (tr, 1), 1)
        gc = v.op("vmin", [g, lim], [T, "f32"], T)
        ng = v.op("vmul", [gc, mone], [T, "f32"], T)
        ex = v.op("vexp", [ng], [T], T)
        den = v.op("vadd", [ex, one], [T, "f32"], T)
        sg = v.op("vdiv", [gc, den], [T, T], T)
        u1 = v.op("vmin", [u, lim], [T, "f32"], T)
        uc = v.op("vmax", [u1, nlim], [T, "f32"], T)
        p = v.op("vmul", [sg, uc], [T, T], T)
        h = v.op("vmul", [p, w], [T, mlir.tensor((tr, 1), "f32")], T, " broadcast = [1]")
        v.store(h, "%H", gm_h, [r0, c0], (tr, tc), inter)
    blocks = min(tasks, cost.soc(soc).vector_cores)
    return b.module(name, [("%GU", gm_gu), ("%RW", gm_w), ("%H", gm_h)], blocks)


def reference(gu, row_weight, limit: float):
    import numpy as np

    gu = np.asarray(gu, np.float64)
    inter = gu.shape[1] // 2
    g, u = np.minimum(gu[:, :inter], limit), np.clip(gu[:, inter:], -limit, limit)
    with np.errstate(over="ignore"):
        silu = g / (1.0 + np.exp(-g))
    return np.asarray(row_weight, np.float64).reshape(-1, 1) * silu * u


def cost_counts(rows: int, inter: int) -> dict:
    """Analytic FLOPs and minimum bytes (gu and the row weights read, h written; float32)."""
    return {"flops": FLOPS_PER_ELEMENT * rows * inter, "bytes": 4 * (3 * rows * inter + rows)}
