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

from tide.targets.ascend import cost, hivm
from tide.targets.ascend.kernels import matmul

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
    return max(t for t in range(1, min(rows, limit) + 1) if rows % t == 0)


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


def emit(rows: int, dim: int, soc: str, eps: float, tile_rows: int | None = None, name: str = "tide_rmsnorm") -> str:
    """HIVM module of RMSNorm ``(x [rows, dim] f32, w [1, dim] f32, y [rows, dim] f32)`` for ``soc``;
    rows too long for the UB (V4-Pro's 7168 on 910B) take the column-split form (``emit_split``)."""
    if tile_rows is None and not row_fits(soc, dim):
        return emit_split(rows, dim, soc, eps, name=name)
    s = cost.soc(soc)
    tr = tile_rows or choose_tile_rows(soc, rows, dim)
    if rows % tr:
        raise ValueError(f"ascend rmsnorm: tile_rows {tr} does not divide rows {rows}")
    tiles = rows // tr
    blocks = min(tiles, s.vector_cores)
    gm_x = matmul.gm((rows, dim), "f32")
    gm_w = matmul.gm((1, dim), "f32")
    T, C = f"tensor<{tr}x{dim}xf32>", f"tensor<{tr}x1xf32>"
    tile_t = f"memref<{tr}x{dim}xf32, strided<[{dim}, 1], offset: ?>, {matmul.GM}>"
    reduce_attrs = hivm.reduce_attrs(soc, [1])
    b = matmul.Body()

    def vop(op, ins, types, out_t, extra=""):
        out = b.op("ve", f"tensor.empty() : {out_t}", 3)
        return b.op("v", f"hivm.hir.{op} ins({ins} : {types}) outs({out} : {out_t}){extra} -> {out_t}", 3)

    wbuf = b.op("wbuf", f"memref.alloc() : memref<1x{dim}xf32>", 2)
    b.emit(f"hivm.hir.load ins(%W : {gm_w}) outs({wbuf} : memref<1x{dim}xf32>)", 2)
    w = b.op("w", f"bufferization.to_tensor {wbuf} restrict writable : memref<1x{dim}xf32>", 2)
    zero = b.op("zero", "arith.constant 0.000000e+00 : f32", 2)
    inv = b.op("inv", f"arith.constant {1.0 / dim:e} : f32", 2)
    epsv = b.op("eps", f"arith.constant {float(eps):e} : f32", 2)
    task = matmul.emit_block_loop(b, b.const(tiles), 2)
    r0 = b.op("r0", f"arith.muli {task}, {b.const(tr)} : index", 3)
    xv = b.op("xv", f"memref.subview %X[{r0}, 0] [{tr}, {dim}] [1, 1] : {gm_x} to {tile_t}", 3)
    xbuf = b.op("xbuf", f"memref.alloc() : memref<{tr}x{dim}xf32>", 3)
    b.emit(f"hivm.hir.load ins({xv} : {tile_t}) outs({xbuf} : memref<{tr}x{dim}xf32>)", 3)
    x = b.op("x", f"bufferization.to_tensor {xbuf} restrict writable : memref<{tr}x{dim}xf32>", 3)
    sq = vop("vmul", f"{x}, {x}", f"{T}, {T}", T)
    z = vop("vbrc", zero, "f32", C)
    ssum = b.op("sum", f"hivm.hir.vreduce <sum> ins({sq} : {T}) outs({z} : {C}) {reduce_attrs} -> {C}", 3)
    mean = vop("vmul", f"{ssum}, {inv}", f"{C}, f32", C)
    me = vop("vadd", f"{mean}, {epsv}", f"{C}, f32", C)
    root = vop("vsqrt", me, C, C)
    xn = vop("vdiv", f"{x}, {root}", f"{T}, {C}", T, " broadcast = [1]")
    y = vop("vmul", f"{xn}, {w}", f"{T}, tensor<1x{dim}xf32>", T, " broadcast = [0]")
    yv = b.op("yv", f"memref.subview %Y[{r0}, 0] [{tr}, {dim}] [1, 1] : {gm_x} to {tile_t}", 3)
    b.emit(f"hivm.hir.store ins({y} : {T}) outs({yv} : {tile_t})", 3)
    b.emit("}", 2)
    return matmul.function(name, [("%X", gm_x), ("%W", gm_w), ("%Y", gm_x)], b, blocks)


def emit_split(rows: int, dim: int, soc: str, eps: float, split: tuple[int, int] | None = None,
               name: str = "tide_rmsnorm") -> str:
    """The column-split form, same signature as ``emit``: per row tile, a first pass over the
    column blocks sums the squares (``vreduce`` per block, added up), a second reloads each block,
    divides it by the root and multiplies by the weight block. x is read twice from GM."""
    tr, cb = split or choose_split(soc, rows, dim)
    if rows % tr or dim % cb:
        raise ValueError(f"ascend rmsnorm: split {tr}x{cb} does not divide x [{rows}, {dim}]")
    tiles, nblk = rows // tr, dim // cb
    gm_x, gm_w = matmul.gm((rows, dim), "f32"), matmul.gm((1, dim), "f32")
    T, C = hivm.tensor_t((tr, cb)), hivm.tensor_t((tr, 1))
    b = matmul.Body()
    v = hivm.Vector(b, soc, 3)
    zero = b.op("zero", "arith.constant 0.000000e+00 : f32", 2)
    inv = b.op("inv", f"arith.constant {1.0 / dim:e} : f32", 2)
    epsv = b.op("eps", f"arith.constant {float(eps):e} : f32", 2)
    task = matmul.emit_block_loop(b, b.const(tiles), 2)
    r0 = b.op("r0", f"arith.muli {task}, {b.const(tr)} : index", 3)
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
        y = v.op("vmul", [xn, w], [T, hivm.tensor_t((1, cb))], T, " broadcast = [0]")
        v.store(y, "%Y", gm_x, [r0, b.const(j * cb)], (tr, cb), dim)
    b.emit("}", 2)
    blocks = min(tiles, cost.soc(soc).vector_cores)
    return matmul.function(name, [("%X", gm_x), ("%W", gm_w), ("%Y", gm_x)], b, blocks)


def reference(x, w, eps: float):
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * np.asarray(w, dtype=np.float64).reshape(-1)


def cost_counts(rows: int, dim: int) -> dict:
    """Analytic FLOPs and the minimum bytes moved (x read, w read, y written; float32)."""
    return {"flops": FLOPS_PER_ELEMENT * rows * dim, "bytes": 4 * (2 * rows * dim + dim)}
