"""Grouped SwiGLU GEMM over the expert tiles of ``tide.ops.moe_permute``.

Second kernel of the ``tide.MoEExperts`` chain. For every used tile q (expert ``e = tile_expert[q]``)
and row r of it, with token ``t = row_token[r]``:

    g = x_t . W_gate[e],  u = x_t . W_up[e]
    h[r] = row_weight[r] * silu(min(g, L)) * clip(u, -L, L)

(V4's clamps; the routing weight is applied here, before the down projection). Only routed tokens
are computed and only the weights of experts that received tokens are read: each tile reads its
expert's weights once for all of its rows. Tiles past ``num_tiles`` do nothing.

Weight layouts (a compile-time choice of the target, its ``moe_gemm`` choice):

- ``"panel"`` (packed at compile time from the checkpoint's ``gate_up [E, 2F, D]``, gate rows then
  up rows): ``[E, F / NB, D, 2, NB]``: for each block of NB output columns, the D x (NB gate + NB
  up) panel is contiguous and row-major in D, so a tile streams it once and the gate and up dot
  products of a column share every load of x;
- ``"rows"``: the checkpoint's own ``[E, 2F, D]``, K-contiguous rows (dot products along D): no
  packing at all, for GEMV-like schedules and for weights that are parameters (memory-mapped
  arrays that compile-time folding does not reach).

x is float32, weights float32 or bfloat16; products and sums are float32 either way.

FP4 weights (``weight_dtype="fp4"``, ``"rows"`` layout only: the checkpoint's packed ``[E, 2F, D / 2]``
bytes, two e2m1 codes per byte with element 2j in the low nibble, and their e8m0 scales
``[E, 2F, D / 32]``, an extra ``scale`` buffer after ``w``): the reduction runs over byte pairs, each
step adding ``(x[2j] * e2m1(low) + x[2j + 1] * e2m1(high)) * scale``, decoded in registers
(``tide.ops.quant``), float32 sums; only the routed experts' bytes are read. x comes as its even and
odd planes ``[T, 2, D / 2]`` (``planes``), so that both products load x contiguously.

The definition is target-neutral: an outer block per (column block, tile) holding the
accumulator, a reduction block and the SwiGLU block; each target's ``moe_gate_up`` rule schedules it.
"""

from __future__ import annotations

import numpy as np

from . import kernel


LAYOUTS = ("panel", "rows")
FP4_BLOCK = 32  # elements per e8m0 scale along D


def col_block(inter: int, layout: str = "panel", nb: int = 0) -> int:
    """NB: columns of h per tile task (the CPU register tile is 2 NB wide: gate and up): ``nb``
    when the target chose one (it must divide F), else a default. Rows layout: a few columns, each
    a vectorized dot product along D."""
    if nb:
        if inter % nb:
            raise ValueError(f"moe_gate_up: column block {nb} does not divide F = {inter}")
        return nb
    for nb in ((32, 16) if layout == "panel" else (4, 2)):
        if inter % nb == 0:
            return nb
    return inter if layout == "panel" else 1


def weight_shape(experts: int, dim: int, inter: int, layout: str, nb: int = 0) -> tuple:
    if layout == "panel":
        nb = col_block(inter, layout, nb)
        return (experts, inter // nb, dim, 2, nb)
    if layout == "rows":
        return (experts, 2 * inter, dim)
    raise ValueError(f"moe_gate_up: unknown weight layout '{layout}' (expected one of {LAYOUTS})")


def swiglu(weight, g, u, limit):
    """``weight * silu(min(g, L)) * clip(u, -L, L)`` in float32 (V4's clamps; ``limit`` a float32 PrimExpr)."""
    from tvm.script import tirx as T

    return (weight * T.min(g, limit) / (T.float32(1) + T.exp(T.float32(0) - T.min(g, limit)))
            * T.max(T.min(u, limit), T.float32(0) - limit))


@kernel.builder
def prim_func(tokens: int, dim: int, experts: int, inter: int, max_tiles: int, block_rows: int,
              limit: float, name: str = "tide_moe_gate_up", layout: str = "panel", weight_dtype: str = "float32",
              nb: int = 0):
    from tvm.script import tirx as T

    if weight_dtype == "fp4":
        return _prim_func_fp4(tokens, dim, experts, inter, max_tiles, block_rows, limit, name, layout, nb)

    wshape = weight_shape(experts, dim, inter, layout, nb)
    nb = col_block(inter, layout, nb)
    fb = inter // nb
    rows = max_tiles * block_rows
    lim = T.float32(float(limit))

    def weight(w, e, j, k, s, c):
        """Weight ``k`` of output column ``j * NB + c`` of expert ``e``'s gate (s 0) or up (s 1), as float32."""
        value = w[e, j, k, s, c] if layout == "panel" else w[e, s * inter + j * nb + c, k]
        return value if weight_dtype == "float32" else T.Cast("float32", value)

    @T.prim_func(s_tir=True)
    def func(x: T.Buffer((tokens, dim), "float32"), w: T.Buffer(wshape, weight_dtype),
             row_token: T.Buffer((rows,), "int32"), row_weight: T.Buffer((rows,), "float32"),
             tile_expert: T.Buffer((max_tiles,), "int32"), num_tiles: T.Buffer((1,), "int32"),
             h: T.Buffer((rows, inter), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        for jb, tile in T.grid(fb, max_tiles):
            with T.sblock("tile"):
                vj, vt = T.axis.remap("SS", [jb, tile])
                acc = T.sblock_alloc_buffer((block_rows, 2, nb), "float32", scope="local")
                if vt < num_tiles[0]:
                    for i, s, c, k in T.grid(block_rows, 2, nb, dim):
                        with T.sblock("gemm"):
                            vi, vs, vc, vk = T.axis.remap("SSSR", [i, s, c, k])
                            with T.init():
                                acc[vi, vs, vc] = T.float32(0)
                            acc[vi, vs, vc] = (acc[vi, vs, vc] + x[row_token[vt * block_rows + vi], vk]
                                               * weight(w, tile_expert[vt], vj, vk, vs, vc))
                    for i, c in T.grid(block_rows, nb):
                        with T.sblock("swiglu"):
                            vi, vc = T.axis.remap("SS", [i, c])
                            h[vt * block_rows + vi, vj * nb + vc] = swiglu(row_weight[vt * block_rows + vi],
                                                                           acc[vi, 0, vc], acc[vi, 1, vc], lim)

    return func


def _prim_func_fp4(tokens: int, dim: int, experts: int, inter: int, max_tiles: int, block_rows: int, limit: float,
                   name: str, layout: str, nb: int):
    """The FP4 variant (module docstring): the same blocks, the reduction over D / 2 byte pairs."""
    from tvm.script import tirx as T

    from . import quant

    if layout != "rows" or dim % FP4_BLOCK:
        raise ValueError(f"moe_gate_up: FP4 weights are read in the rows layout with D a multiple of {FP4_BLOCK} "
                         f"(got layout {layout!r}, D {dim})")
    nb = col_block(inter, layout, nb)
    fb = inter // nb
    rows = max_tiles * block_rows
    lim = T.float32(float(limit))
    pairs = FP4_BLOCK // 2

    def pair(x, w, scale, t, e, n, kk):
        """``(x[t, 2kk] * w[n, 2kk] + x[t, 2kk + 1] * w[n, 2kk + 1])`` of expert ``e``'s row ``n``."""
        byte = w[e, n, kk]
        return (x[t, 0, kk] * quant.e2m1_half(byte, False) + x[t, 1, kk] * quant.e2m1_half(byte, True)) \
            * quant.e8m0_pow2(scale[e, n, kk // pairs], quant.E2M1_SHIFT)

    @T.prim_func(s_tir=True)
    def func(x: T.Buffer((tokens, 2, dim // 2), "float32"), w: T.Buffer((experts, 2 * inter, dim // 2), "uint8"),
             scale: T.Buffer((experts, 2 * inter, dim // FP4_BLOCK), "uint8"),
             row_token: T.Buffer((rows,), "int32"), row_weight: T.Buffer((rows,), "float32"),
             tile_expert: T.Buffer((max_tiles,), "int32"), num_tiles: T.Buffer((1,), "int32"),
             h: T.Buffer((rows, inter), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        for jb, tile in T.grid(fb, max_tiles):
            with T.sblock("tile"):
                vj, vt = T.axis.remap("SS", [jb, tile])
                acc = T.sblock_alloc_buffer((block_rows, 2, nb), "float32", scope="local")
                if vt < num_tiles[0]:
                    for i, s, c, kk in T.grid(block_rows, 2, nb, dim // 2):
                        with T.sblock("gemm"):
                            vi, vs, vc, vkk = T.axis.remap("SSSR", [i, s, c, kk])
                            with T.init():
                                acc[vi, vs, vc] = T.float32(0)
                            acc[vi, vs, vc] = acc[vi, vs, vc] + pair(x, w, scale, row_token[vt * block_rows + vi],
                                                                     tile_expert[vt], vs * inter + vj * nb + vc, vkk)
                    for i, c in T.grid(block_rows, nb):
                        with T.sblock("swiglu"):
                            vi, vc = T.axis.remap("SS", [i, c])
                            h[vt * block_rows + vi, vj * nb + vc] = swiglu(row_weight[vt * block_rows + vi],
                                                                           acc[vi, 0, vc], acc[vi, 1, vc], lim)

    return func


def planes(bb, x):
    """``x [T, K]`` as its even and odd columns ``[T, 2, K / 2]`` (Relax ops): the activations of an
    FP4 GEMM."""
    from tvm import relax

    rows, cols = (int(v) for v in x.ty.shape)
    return bb.emit(relax.op.permute_dims(bb.emit(relax.op.reshape(x, (rows, cols // 2, 2))), [0, 2, 1]))


def pack(gate_up: np.ndarray, layout: str = "panel", nb: int = 0) -> np.ndarray:
    """``[E, 2F, D]`` -> the kernel's layout (``"rows"``: unchanged)."""
    if layout == "rows":
        return gate_up
    e, f2, d = gate_up.shape
    weight_shape(e, d, f2 // 2, layout, nb)
    nb = col_block(f2 // 2, layout, nb)
    return np.ascontiguousarray(gate_up.reshape(e, 2, f2 // 2 // nb, nb, d).transpose(0, 2, 4, 1, 3))


def relax_pack(bb, gate_up, layout: str = "panel", nb: int = 0):
    """The same packing as Relax ops on ``gate_up``; folded at compile time, so only for
    constants (the targets choose "rows" for parameters)."""
    from tvm import relax

    if layout == "rows":
        return gate_up
    e, f2, d = (int(v) for v in gate_up.ty.shape)
    nb = col_block(f2 // 2, layout, nb)
    split = bb.emit(relax.op.reshape(gate_up, (e, 2, f2 // 2 // nb, nb, d)))
    return bb.emit(relax.op.permute_dims(split, [0, 2, 4, 1, 3]))


def reference(x, row_token, row_weight, tile_expert, num_tiles, gate_up, limit, block_rows):
    """h (float64) for the used rows; rows of unused tiles are zero (the kernel leaves them unwritten)."""
    inter = gate_up.shape[1] // 2
    h = np.zeros((row_token.shape[0], inter))
    for q in range(int(num_tiles[0])):
        rows = slice(q * block_rows, (q + 1) * block_rows)
        gu = x[row_token[rows]].astype(np.float64) @ gate_up[tile_expert[q]].astype(np.float64).T
        g, u = np.minimum(gu[:, :inter], limit), np.clip(gu[:, inter:], -limit, limit)
        h[rows] = row_weight[rows, None] * g / (1 + np.exp(-g)) * u
    return h


def cost(used_rows: int, active_experts: int, dim: int, inter: int, itemsize: float = 4) -> dict:
    """FLOPs of the rows computed (padding included); bytes: each active expert's gate/up weights
    once (``itemsize`` bytes per weight: 17/32 for FP4 with its scales), the gathered x rows and h."""
    return {"flops": 2 * used_rows * dim * 2 * inter + 6 * used_rows * inter,
            "bytes": int(active_experts * 2 * inter * dim * itemsize) + used_rows * (dim + inter) * 4}
