"""V4's interleaved partial RoPE (``tide.ops.rope``) on the Ascend vector unit as HIVM MLIR: the last
``rope_dim`` channels of each row of ``x [rows, dim]`` rotate in pairs ``(x[off + 2p], x[off + 2p + 1])``,
``off = dim - rope_dim``; the leading ``off`` channels pass through::

    y[off + 2p]     = x[off + 2p] cos_p - x[off + 2p + 1] sin_p
    y[off + 2p + 1] = x[off + 2p + 1] cos_p + x[off + 2p] sin_p

(``inverse``: the rotation by -angle, sin negated). ``cos, sin [groups, rope_dim / 2]``: row i uses
group ``i // (rows / groups)`` (per-token tables broadcast over the heads). float32.

The pair members are moved between GM and UB by stride-2 subviews (one DMA for the even channels,
one for the odd ones, on the way in and out), so the rotation itself is plain element-wise vector
work on ``[tile_rows, rope_dim / 2]`` blocks. bishengir 1.2.0 hands these views to its load/store
library calls with dynamic strides; how fast a stride-2 DMA runs on the device is not known here
(the alternative, ``vdeinterleave`` in the UB, is untested). A row tile stays within one group when a group has
several rows (its cos/sin row is loaded once and broadcast over the tile) and takes the tile's own
cos/sin rows otherwise. Rows per tile: the largest divisor (of the rows per group, or of the rows)
whose live blocks fit the UB double-buffered; tiles go round-robin over the vector cores.
"""

from __future__ import annotations

from tide.targets.ascend import cost, hivm, mlir

LIVE_PAIR_TILES = 8   # x0, x1, cos, sin, two products per output, y0, y1 (half-width blocks)
BUFFERING = 2
FLOPS_PER_PAIR = 6


def _check(rows: int, dim: int, rope_dim: int, groups: int):
    if rope_dim % 2 or not 0 < rope_dim <= dim:
        raise ValueError(f"ascend rope: rope_dim {rope_dim} must be even and in (0, {dim}]")
    if groups < 1 or rows % groups:
        raise ValueError(f"ascend rope: {groups} cos/sin groups do not divide {rows} rows")


def choose_tile_rows(soc: str, rows: int, dim: int, rope_dim: int, groups: int) -> int:
    _check(rows, dim, rope_dim, groups)
    per_group = rows // groups
    row_bytes = 4 * (LIVE_PAIR_TILES * rope_dim // 2 + (dim - rope_dim))
    return hivm.tile_rows(soc, per_group if per_group > 1 else rows, row_bytes, 1, buffering=BUFFERING,
                          what="rope")


def emit(rows: int, dim: int, rope_dim: int, groups: int, soc: str, inverse: bool = False,
         tile_rows: int | None = None, name: str = "tide_rope", arg_types=None) -> str:
    """HIVM module ``(x [rows, dim] f32, cos [groups, rope_dim/2] f32, sin [groups, rope_dim/2] f32,
    y [rows, dim] f32)``. ``arg_types``: the entry's argument types as its caller passes them (the
    plan's shapes), each reshaped to the kernel's own at the entry (``mlir.Builder.module``); default
    the kernel's own."""
    _check(rows, dim, rope_dim, groups)
    per_group = rows // groups
    tr = tile_rows or choose_tile_rows(soc, rows, dim, rope_dim, groups)
    if (per_group > 1 and per_group % tr) or rows % tr:
        raise ValueError(f"ascend rope: tile_rows {tr} must divide the {per_group} rows of a cos/sin group")
    tiles, half, off = rows // tr, rope_dim // 2, dim - rope_dim
    gm_x, gm_t = mlir.gm((rows, dim), "f32"), mlir.gm((groups, half), "f32")
    H = mlir.tensor((tr, half), "f32")
    pair_t = mlir.gm((tr, half), "f32", (dim, 2), "?")
    buf_t = mlir.memref((tr, half), "f32")
    b = mlir.Builder()
    v = hivm.Vector(b, soc)
    with hivm.block_loop(b, b.const(tiles)) as task:
        r0 = b.op(f"arith.muli {task}, {b.const(tr)} : index", "r0")

        def pair_view(mem: str, member: int) -> str:
            return b.op(f"memref.subview {mem}[{r0}, {b.const(off + member)}] [{tr}, {half}] [1, 2] : "
                        f"{gm_x} to {pair_t}", "pv")

        xs = []
        for member in (0, 1):
            buf = b.op(f"memref.alloc() : {buf_t}", "buf")
            b.emit(f"hivm.hir.load ins({pair_view('%X', member)} : {pair_t}) outs({buf} : {buf_t})")
            xs.append(b.op(f"bufferization.to_tensor {buf} restrict writable : {buf_t}", "t"))
        if per_group > 1:
            g = b.op(f"arith.divui {r0}, {b.const(per_group)} : index", "g")
            cs = [v.load(m, gm_t, [g, b.const(0)], (1, half), half) for m in ("%COS", "%SIN")]
            ctypes, bc = mlir.tensor((1, half), "f32"), " broadcast = [0]"
        else:
            cs = [v.load(m, gm_t, [r0, b.const(0)], (tr, half), half) for m in ("%COS", "%SIN")]
            ctypes, bc = H, ""
        x0c, x1s = v.op("vmul", [xs[0], cs[0]], [H, ctypes], H, bc), v.op("vmul", [xs[1], cs[1]], [H, ctypes], H, bc)
        x1c, x0s = v.op("vmul", [xs[1], cs[0]], [H, ctypes], H, bc), v.op("vmul", [xs[0], cs[1]], [H, ctypes], H, bc)
        ys = ([v.op("vadd", [x0c, x1s], [H, H], H), v.op("vsub", [x1c, x0s], [H, H], H)] if inverse else
              [v.op("vsub", [x0c, x1s], [H, H], H), v.op("vadd", [x1c, x0s], [H, H], H)])
        for member in (0, 1):
            b.emit(f"hivm.hir.store ins({ys[member]} : {H}) outs({pair_view('%Y', member)} : {pair_t})")
        if off:
            v.store(v.load("%X", gm_x, [r0, b.const(0)], (tr, off), dim), "%Y", gm_x, [r0, b.const(0)], (tr, off), dim)
    blocks = min(tiles, cost.soc(soc).vector_cores)
    return b.module(name, [("%X", gm_x), ("%COS", gm_t), ("%SIN", gm_t), ("%Y", gm_x)], blocks, arg_types)


def cost_counts(rows: int, dim: int, rope_dim: int, groups: int) -> dict:
    """FLOPs of the rotation and minimum bytes (x read and y written, cos/sin read once; float32)."""
    return {"flops": FLOPS_PER_PAIR * rows * rope_dim // 2, "bytes": 4 * (2 * rows * dim + groups * rope_dim)}
