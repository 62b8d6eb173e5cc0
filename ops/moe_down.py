"""Grouped down-projection GEMM over the expert tiles of ``tide.ops.moe_permute``.

Third kernel of the ``tide.MoEExperts`` chain: for every used tile q (expert ``e = tile_expert[q]``)
and row r of it, ``o[r] = W_down[e] h[r]`` (h already carries the routing weight). Rows stay in
expert order; ``tide.ops.moe_experts``' combine brings them back to token order. Tiles past
``num_tiles`` do nothing, so experts without tokens are never read.

Weight layouts (the target's ``moe_gemm`` choice picks one at compile time): ``"panel"``, packed at
compile time from ``down [E, D, F]`` into ``[E, D / NB, F, NB]``, the F x NB panel of each block of
NB output columns contiguous and row-major in F; ``"rows"``, the checkpoint's ``[E, D, F]`` as is
(K-contiguous rows). float32 h, float32 or bfloat16 weights, float32 arithmetic. FP4 weights
(``weight_dtype="fp4"``, rows layout): the checkpoint's packed ``[E, D, F / 2]`` e2m1 bytes and their
``[E, D, F / 32]`` e8m0 scales (an extra ``scale`` buffer), decoded in registers as in
``tide.ops.moe_gate_up``, with h as its even and odd planes ``[rows, 2, F / 2]``.
"""

from __future__ import annotations

import numpy as np

from . import kernel

FP4_BLOCK = 32  # elements per e8m0 scale along F


LAYOUTS = ("panel", "rows")


def col_block(dim: int, layout: str = "panel", nb: int = 0) -> int:
    """NB: output columns per tile task (the CPU register tile): ``nb`` when the target chose one
    (it must divide D), else a default; rows layout: a few dot products."""
    if nb:
        if dim % nb:
            raise ValueError(f"moe_down: column block {nb} does not divide D = {dim}")
        return nb
    for nb in ((64, 32, 16) if layout == "panel" else (8, 4, 2)):
        if dim % nb == 0:
            return nb
    return dim if layout == "panel" else 1


def weight_shape(experts: int, dim: int, inter: int, layout: str, nb: int = 0) -> tuple:
    if layout == "panel":
        nb = col_block(dim, layout, nb)
        return (experts, dim // nb, inter, nb)
    if layout == "rows":
        return (experts, dim, inter)
    raise ValueError(f"moe_down: unknown weight layout '{layout}' (expected one of {LAYOUTS})")


@kernel.builder
def prim_func(dim: int, experts: int, inter: int, max_tiles: int, block_rows: int,
              name: str = "tide_moe_down", layout: str = "panel", weight_dtype: str = "float32", nb: int = 0):
    from tvm.script import tirx as T

    if weight_dtype == "fp4":
        return _prim_func_fp4(dim, experts, inter, max_tiles, block_rows, name, layout, nb)

    wshape = weight_shape(experts, dim, inter, layout, nb)
    nb = col_block(dim, layout, nb)
    db = dim // nb
    rows = max_tiles * block_rows

    def weight(w, e, j, k, c):
        """Weight ``k`` of output column ``j * NB + c`` of expert ``e``, as float32."""
        value = w[e, j, k, c] if layout == "panel" else w[e, j * nb + c, k]
        return value if weight_dtype == "float32" else T.Cast("float32", value)

    @T.prim_func(s_tir=True)
    def func(h: T.Buffer((rows, inter), "float32"), w: T.Buffer(wshape, weight_dtype),
             tile_expert: T.Buffer((max_tiles,), "int32"), num_tiles: T.Buffer((1,), "int32"),
             o: T.Buffer((rows, dim), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        for jb, tile in T.grid(db, max_tiles):
            with T.sblock("tile"):
                vj, vt = T.axis.remap("SS", [jb, tile])
                acc = T.sblock_alloc_buffer((block_rows, nb), "float32", scope="local")
                if vt < num_tiles[0]:
                    for i, c, k in T.grid(block_rows, nb, inter):
                        with T.sblock("gemm"):
                            vi, vc, vk = T.axis.remap("SSR", [i, c, k])
                            with T.init():
                                acc[vi, vc] = T.float32(0)
                            acc[vi, vc] = acc[vi, vc] + h[vt * block_rows + vi, vk] * weight(w, tile_expert[vt],
                                                                                             vj, vk, vc)
                    for i, c in T.grid(block_rows, nb):
                        with T.sblock("store"):
                            vi, vc = T.axis.remap("SS", [i, c])
                            o[vt * block_rows + vi, vj * nb + vc] = acc[vi, vc]

    return func


def _prim_func_fp4(dim: int, experts: int, inter: int, max_tiles: int, block_rows: int, name: str, layout: str,
                   nb: int):
    """The FP4 variant: ``w [E, D, F / 2]`` packed e2m1 and ``scale [E, D, F / 32]`` (module
    docstring), the reduction over F / 2 byte pairs."""
    from tvm.script import tirx as T

    from . import quant

    if layout != "rows" or inter % FP4_BLOCK:
        raise ValueError(f"moe_down: FP4 weights are read in the rows layout with F a multiple of {FP4_BLOCK} "
                         f"(got layout {layout!r}, F {inter})")
    nb = col_block(dim, layout, nb)
    db = dim // nb
    rows = max_tiles * block_rows
    pairs = FP4_BLOCK // 2

    def pair(h, w, scale, r, e, n, kk):
        byte = w[e, n, kk]
        return (h[r, 0, kk] * quant.e2m1_half(byte, False) + h[r, 1, kk] * quant.e2m1_half(byte, True)) \
            * quant.e8m0_pow2(scale[e, n, kk // pairs], quant.E2M1_SHIFT)

    @T.prim_func(s_tir=True)
    def func(h: T.Buffer((rows, 2, inter // 2), "float32"), w: T.Buffer((experts, dim, inter // 2), "uint8"),
             scale: T.Buffer((experts, dim, inter // FP4_BLOCK), "uint8"),
             tile_expert: T.Buffer((max_tiles,), "int32"), num_tiles: T.Buffer((1,), "int32"),
             o: T.Buffer((rows, dim), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        for jb, tile in T.grid(db, max_tiles):
            with T.sblock("tile"):
                vj, vt = T.axis.remap("SS", [jb, tile])
                acc = T.sblock_alloc_buffer((block_rows, nb), "float32", scope="local")
                if vt < num_tiles[0]:
                    for i, c, kk in T.grid(block_rows, nb, inter // 2):
                        with T.sblock("gemm"):
                            vi, vc, vkk = T.axis.remap("SSR", [i, c, kk])
                            with T.init():
                                acc[vi, vc] = T.float32(0)
                            acc[vi, vc] = acc[vi, vc] + pair(h, w, scale, vt * block_rows + vi, tile_expert[vt],
                                                             vj * nb + vc, vkk)
                    for i, c in T.grid(block_rows, nb):
                        with T.sblock("store"):
                            vi, vc = T.axis.remap("SS", [i, c])
                            o[vt * block_rows + vi, vj * nb + vc] = acc[vi, vc]

    return func


def pack(down: np.ndarray, layout: str = "panel", nb: int = 0) -> np.ndarray:
    """``[E, D, F]`` -> the kernel's layout (``"rows"``: unchanged)."""
    if layout == "rows":
        return down
    e, d, f = down.shape
    weight_shape(e, d, f, layout, nb)
    nb = col_block(d, layout, nb)
    return np.ascontiguousarray(down.reshape(e, d // nb, nb, f).transpose(0, 1, 3, 2))


def relax_pack(bb, down, layout: str = "panel", nb: int = 0):
    """The same packing as Relax ops on ``down``; folded at compile time, so only for
    constants (the targets choose "rows" for parameters)."""
    from tvm import relax

    if layout == "rows":
        return down
    e, d, f = (int(v) for v in down.ty.shape)
    nb = col_block(d, layout, nb)
    split = bb.emit(relax.op.reshape(down, (e, d // nb, nb, f)))
    return bb.emit(relax.op.permute_dims(split, [0, 1, 3, 2]))


def reference(h, tile_expert, num_tiles, down, block_rows):
    """o (float64) for the rows of used tiles; other rows zero (the kernel leaves them unwritten)."""
    o = np.zeros((h.shape[0], down.shape[1]))
    for q in range(int(num_tiles[0])):
        rows = slice(q * block_rows, (q + 1) * block_rows)
        o[rows] = h[rows].astype(np.float64) @ down[tile_expert[q]].astype(np.float64).T
    return o


def cost(used_rows: int, active_experts: int, dim: int, inter: int, itemsize: float = 4) -> dict:
    """FLOPs of the rows computed (padding included); bytes: each active expert's down weights once
    (``itemsize`` bytes per weight: 17/32 for FP4 with its scales), h read and o written."""
    return {"flops": 2 * used_rows * dim * inter,
            "bytes": int(active_experts * dim * inter * itemsize) + used_rows * (dim + inter) * 4}
