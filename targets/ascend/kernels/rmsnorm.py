"""RMSNorm for Ascend as HIVM MLIR (vector unit): ``y = x / sqrt(mean(x^2) + eps) * w`` over the last
dimension of ``x [rows, dim]`` (float32, V4's norms compute in float32), ``w [dim]``.

Rows are cut into tiles of ``tile_rows`` that fit the AI vector core's unified buffer (UB) with the
four live ``[tile_rows, dim]`` float32 values (x, x^2, the normalized x, y) double-buffered; tiles are
spread round-robin over the vector cores with ``get_block_idx`` / ``get_block_num``. Per tile:
``load`` GM -> UB, ``vmul`` (x^2), ``vreduce <sum>`` over the row into a zero-filled ``[tile_rows, 1]``
(``vbrc`` first: the CPU lowering starts from the destination), scale by 1/dim, add eps, ``vsqrt``,
``vdiv`` of x by the broadcast root, ``vmul`` by the broadcast weight, ``store`` UB -> GM. ``vrsqrt``
and ``vrec`` of a ``[tile_rows, 1]`` operand crash the 950 tool's final pipeline
(tests/ascend_regressions/vector_rsqrt_broadcast_a5.mlir), hence sqrt then divide on both SoCs.

Per-target syntax: the 950 tool's ``vreduce`` takes an ``unsigned_src`` attribute the 910B tool lacks.
"""

from __future__ import annotations

from tide.targets.ascend import cost, hivm, mlir

LIVE_TILES = 4      # x, x^2, normalized x, y
BUFFERING = 2       # double buffering of the tile loop
FLOPS_PER_ELEMENT = 4  # square, sum, divide, weight
SPLIT_LIVE_TILES = 3   # column-split form: x block, its square / the normalized block, y block


def choose_tile_rows(soc: str, rows: int, dim: int) -> int:
    """The largest divisor of ``rows`` whose tile (and the weight row) fits the UB as above."""
    budget = cost.soc(soc).ub - dim * 4 * BUFFERING
    limit = max(budget // (LIVE_TILES * BUFFERING * dim * 4), 0)
    if limit < 1:
        raise ValueError(f"ascend rmsnorm: a row of {dim} float32 does not fit {soc}'s "
                         f"{cost.soc(soc).ub} byte unified buffer with double buffering")
    return hivm.largest_divisor_at_most(rows, limit)


def row_fits(soc: str, dim: int) -> bool:
    """Whether one row's tiles fit the UB (else ``emit`` cuts rows into column blocks)."""
    return (LIVE_TILES + 1) * BUFFERING * dim * 4 <= cost.soc(soc).ub


def choose_split(soc: str, rows: int, dim: int) -> tuple[int, int]:
    """(tile_rows, col_block) of the column-split form: the largest divisor of ``dim`` whose
    ``SPLIT_LIVE_TILES`` one-row blocks and weight block fit the UB double-buffered, then the most
    rows of such blocks."""
    ub = cost.soc(soc).ub
    cb = hivm.largest_divisor_at_most(dim, ub // ((SPLIT_LIVE_TILES + 1) * BUFFERING * 4))
    tr = hivm.tile_rows(soc, rows, 4 * cb, SPLIT_LIVE_TILES, fixed_bytes=4 * cb, buffering=BUFFERING,
                        what="rmsnorm")
    return tr, cb


def emit(rows: int, dim: int, soc: str, eps: float, tile_rows: int | None = None, name: str = "tide_rmsnorm",
         arg_types=None) -> str:
    """HIVM module of RMSNorm ``(x [rows, dim] f32, w [1, dim] f32, y [rows, dim] f32)`` for ``soc``;
    rows too long for the UB (V4-Pro's 7168 on 910B) take the column-split form (``emit_split``).
    ``arg_types``: the entry's argument types as its caller passes them (the plan's shapes), each
    reshaped to the kernel's own at the entry (``mlir.Builder.module``); default the kernel's own."""
    if tile_rows is None and not row_fits(soc, dim):
        return emit_split(rows, dim, soc, eps, name=name, arg_types=arg_types)
    s = cost.soc(soc)
    tr = tile_rows or choose_tile_rows(soc, rows, dim)
    if rows % tr:
        raise ValueError(f"ascend rmsnorm: tile_rows {tr} does not divide rows {rows}")
    tiles = rows // tr
    blocks = min(tiles, s.vector_cores)
    gm_x, gm_w = mlir.gm((rows, dim), "f32"), mlir.gm((1, dim), "f32")
    T, C, W = mlir.tensor((tr, dim), "f32"), mlir.tensor((tr, 1), "f32"), mlir.tensor((1, dim), "f32")
    b = mlir.Builder()
    v = hivm.Vector(b, soc)
    w = v.load("%W", gm_w, [b.const(0), b.const(0)], (1, dim), dim)
    zero = b.op("arith.constant 0.000000e+00 : f32", "zero")
    inv = b.op(f"arith.constant {1.0 / dim:e} : f32", "inv")
    epsv = b.op(f"arith.constant {float(eps):e} : f32", "eps")
    with hivm.block_loop(b, b.const(tiles)) as task:
        r0 = b.op(f"arith.muli {task}, {b.const(tr)} : index", "r0")
        x = v.load("%X", gm_x, [r0, b.const(0)], (tr, dim), dim)
        ssum = v.reduce("sum", v.op("vmul", [x, x], [T, T], T), T, v.fill(zero, C), C, [1])
        mean = v.op("vmul", [ssum, inv], [C, "f32"], C)
        root = v.op("vsqrt", [v.op("vadd", [mean, epsv], [C, "f32"], C)], [C], C)
        xn = v.op("vdiv", [x, root], [T, C], T, " broadcast = [1]")
        y = v.op("vmul", [xn, w], [T, W], T, " broadcast = [0]")
        v.store(y, "%Y", gm_x, [r0, b.const(0)], (tr, dim), dim)
    return b.module(name, [("%X", gm_x), ("%W", gm_w), ("%Y", gm_x)], blocks, arg_types)


def emit_split(rows: int, dim: int, soc: str, eps: float, split: tuple[int, int] | None = None,
               name: str = "tide_rmsnorm", arg_types=None) -> str:
    """The column-split form, same signature as ``emit``: per row tile, a first pass over the
    column blocks sums the squares (``vreduce`` per block, added up), a second reloads each block,
    divides it by the root and multiplies by the weight block. x is read twice from GM."""
    tr, cb = split or choose_split(soc, rows, dim)
    if rows % tr or dim % cb:
        raise ValueError(f"ascend rmsnorm: split {tr}x{cb} does not divide x [{rows}, {dim}]")
    tiles, nblk = rows // tr, dim // cb
    gm_x, gm_w = mlir.gm((rows, dim), "f32"), mlir.gm((1, dim), "f32")
    T, C = mlir.tensor((tr, cb), "f32"), mlir.tensor((tr, 1), "f32")
    b = mlir.Builder()
    v = hivm.Vector(b, soc)
    zero = b.op("arith.constant 0.000000e+00 : f32", "zero")
    inv = b.op(f"arith.constant {1.0 / dim:e} : f32", "inv")
    epsv = b.op(f"arith.constant {float(eps):e} : f32", "eps")
    with hivm.block_loop(b, b.const(tiles)) as task:
        r0 = b.op(f"arith.muli {task}, {b.const(tr)} : index", "r0")
        total = None
        for j in range(nblk):
            x = v.load("%X", gm_x, [r0, b.const(j * cb)], (tr, cb), dim)
            part = v.reduce("sum", v.op("vmul", [x, x], [T, T], T), T, v.fill(zero, C), C, [1])
            total = part if total is None else v.op("vadd", [total, part], [C, C], C)
        mean = v.op("vmul", [total, inv], [C, "f32"], C)
        root = v.op("vsqrt", [v.op("vadd", [mean, epsv], [C, "f32"], C)], [C], C)
        for j in range(nblk):
            x = v.load("%X", gm_x, [r0, b.const(j * cb)], (tr, cb), dim)
            w = v.load("%W", gm_w, [b.const(0), b.const(j * cb)], (1, cb), dim)
            xn = v.op("vdiv", [x, root], [T, C], T, " broadcast = [1]")
            y = v.op("vmul", [xn, w], [T, mlir.tensor((1, cb), "f32")], T, " broadcast = [0]")
            v.store(y, "%Y", gm_x, [r0, b.const(j * cb)], (tr, cb), dim)
    blocks = min(tiles, cost.soc(soc).vector_cores)
    return b.module(name, [("%X", gm_x), ("%W", gm_w), ("%Y", gm_x)], blocks, arg_types)


def reference(x, w, eps: float):
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * np.asarray(w, dtype=np.float64).reshape(-1)


def cost_counts(rows: int, dim: int) -> dict:
    """Analytic FLOPs and the minimum bytes moved (x read, w read, y written; float32)."""
    return {"flops": FLOPS_PER_ELEMENT * rows * dim, "bytes": 4 * (2 * rows * dim + dim)}
