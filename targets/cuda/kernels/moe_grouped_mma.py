"""Grouped expert GEMMs on CUDA tensor cores (``mma.sync.m16n8k16``, bfloat16 in, float32 accumulate).

The prefill regime of the ``tide.MoEExperts`` chain on CUDA for bfloat16 expert weights: the same
contract as ``tide.ops.moe_gate_up`` (SwiGLU epilogue with V4's clamps and the routing weight) and
``tide.ops.moe_down`` over the tiles of ``tide.ops.moe_permute``, with 16-row tiles (the mma's M).
Weights are read as stored, K-contiguous rows (``gate_up [E, 2F, D]``, ``down [E, D, F]``): that is
the mma's column-major B operand, so no packing is needed and parameters work as they are.

Unlike the other MoE kernels this one is written for one target: the warp-level fragments are the
definition (PTX ISA, "Matrix Fragments for mma.m16n8k16"). Lane l of a warp, with ``g = l // 4``
and ``q = l % 4``, holds

- A (16 x 16, row-major): rows g and g + 8, columns 2q, 2q + 1, 2q + 8, 2q + 9;
- B (16 x 8, column-major): column g, rows 2q, 2q + 1, 2q + 8, 2q + 9;
- C (16 x 8, float32): rows g and g + 8, columns 2q, 2q + 1.

A thread block is WARPS warps over one tile and COLS output columns (a warp per WARP_TILES x 8
columns, so one A fragment load feeds several mma; for gate/up the warp also owns the matching up
columns and applies the SwiGLU to its own accumulators). Activations (float32 x, h) are rounded to
bfloat16 as the A fragments are loaded; fragments are loaded straight from global memory (a first
tensor-core version: no shared-memory staging, ldmatrix or cp.async pipeline yet). Blocks of
unused tiles exit at once.
"""

from __future__ import annotations

import numpy as np

from ....ops import kernel

TILE_ROWS = 16  # the mma's M
MMA_K = 16
MMA_N = 8
WARPS = 4
WARP_TILES = 2  # n8 tiles per warp: each A fragment load feeds 2 * WARP_TILES mma (gate/up) or WARP_TILES (down)
COLS = WARPS * WARP_TILES * MMA_N  # output columns per thread block


def supported(dim: int, inter: int) -> bool:
    """The shapes these kernels tile exactly: K a multiple of 16, N of COLS (both GEMMs)."""
    return dim % MMA_K == 0 and inter % MMA_K == 0 and inter % COLS == 0 and dim % COLS == 0


def _check(dim: int, inter: int):
    if not supported(dim, inter):
        raise ValueError(f"moe_grouped_mma: D {dim} and F {inter} must be multiples of {MMA_K} and {COLS}")


def _tile_row(max_tiles: int, bx, lane, r):
    """The tile row of a lane's A or C fragment element in half r (rows g and g + 8)."""
    return bx % max_tiles * TILE_ROWS + lane // 4 + r * 8


def _k(ko, half, lane, j):
    """The K index of a lane's A or B fragment element in K step ko (2q, 2q + 1, 2q + 8, 2q + 9)."""
    return ko * MMA_K + half * 8 + lane % 4 * 2 + j


def _out_col(max_tiles: int, bx, warp, n, lane, j):
    """The output column of a lane's C fragment element j of the warp's n8 tile n."""
    return bx // max_tiles * COLS + (warp * WARP_TILES + n) * MMA_N + lane % 4 * 2 + j


@kernel.builder
def gate_up_func(tokens: int, dim: int, experts: int, inter: int, max_tiles: int, limit: float,
                 name: str = "tide_moe_gate_up_mma"):
    """h [rows, F] = row_weight * silu(min(g, L)) * clip(u, -L, L) over the used 16-row tiles."""
    from tvm.script import tirx as T

    from ....ops.moe_gate_up import swiglu

    _check(dim, inter)
    rows = max_tiles * TILE_ROWS
    blocks = inter // COLS
    lim = T.float32(float(limit))
    nt = WARP_TILES

    @T.prim_func
    def func(x: T.Buffer((tokens, dim), "float32"), w: T.Buffer((experts, 2 * inter, dim), "bfloat16"),
             row_token: T.Buffer((rows,), "int32"), row_weight: T.Buffer((rows,), "float32"),
             tile_expert: T.Buffer((max_tiles,), "int32"), num_tiles: T.Buffer((1,), "int32"),
             h: T.Buffer((rows, inter), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True, "tirx.is_scheduled": True})
        for bx in T.thread_binding(blocks * max_tiles, thread="blockIdx.x"):
            for warp in T.thread_binding(WARPS, thread="threadIdx.y"):
                for lane in T.thread_binding(32, thread="threadIdx.x"):
                    a = T.alloc_buffer((8,), "bfloat16", scope="local")
                    b = T.alloc_buffer((2 * nt * 4,), "bfloat16", scope="local")
                    c = T.alloc_buffer((2 * nt * 4,), "float32", scope="local")
                    if bx % max_tiles < num_tiles[0]:
                        for j in range(2 * nt * 4):
                            c[j] = T.float32(0)
                        for ko in range(dim // MMA_K):
                            for half, r, j in T.grid(2, 2, 2):
                                a[half * 4 + r * 2 + j] = T.Cast(
                                    "bfloat16", x[row_token[_tile_row(max_tiles, bx, lane, r)], _k(ko, half, lane, j)])
                            for s, n, half, j in T.grid(2, nt, 2, 2):
                                b[(s * nt + n) * 4 + half * 2 + j] = w[
                                    tile_expert[bx % max_tiles],
                                    s * inter + bx // max_tiles * COLS + (warp * nt + n) * MMA_N + lane // 4,
                                    _k(ko, half, lane, j)]
                            for sn in range(2 * nt):
                                T.evaluate(T.ptx_legacy.mma("m16n8k16", "row", "col", "bf16", "bf16", "fp32",
                                                            a.data, 0, b.data, sn * 4, c.data, sn * 4, False,
                                                            dtype="float32"))
                        for n, r, j in T.grid(nt, 2, 2):
                            h[_tile_row(max_tiles, bx, lane, r), _out_col(max_tiles, bx, warp, n, lane, j)] = swiglu(
                                row_weight[_tile_row(max_tiles, bx, lane, r)], c[n * 4 + r * 2 + j],
                                c[(nt + n) * 4 + r * 2 + j], lim)

    return func


@kernel.builder
def down_func(dim: int, experts: int, inter: int, max_tiles: int, name: str = "tide_moe_down_mma"):
    """o [rows, D] = h W_down[e]^T over the used 16-row tiles (rows stay in expert order)."""
    from tvm.script import tirx as T

    _check(dim, inter)
    rows = max_tiles * TILE_ROWS
    blocks = dim // COLS
    nt = WARP_TILES

    @T.prim_func
    def func(h: T.Buffer((rows, inter), "float32"), w: T.Buffer((experts, dim, inter), "bfloat16"),
             tile_expert: T.Buffer((max_tiles,), "int32"), num_tiles: T.Buffer((1,), "int32"),
             o: T.Buffer((rows, dim), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True, "tirx.is_scheduled": True})
        for bx in T.thread_binding(blocks * max_tiles, thread="blockIdx.x"):
            for warp in T.thread_binding(WARPS, thread="threadIdx.y"):
                for lane in T.thread_binding(32, thread="threadIdx.x"):
                    a = T.alloc_buffer((8,), "bfloat16", scope="local")
                    b = T.alloc_buffer((nt * 4,), "bfloat16", scope="local")
                    c = T.alloc_buffer((nt * 4,), "float32", scope="local")
                    if bx % max_tiles < num_tiles[0]:
                        for j in range(nt * 4):
                            c[j] = T.float32(0)
                        for ko in range(inter // MMA_K):
                            for half, r, j in T.grid(2, 2, 2):
                                a[half * 4 + r * 2 + j] = T.Cast("bfloat16", h[_tile_row(max_tiles, bx, lane, r),
                                                                               _k(ko, half, lane, j)])
                            for n, half, j in T.grid(nt, 2, 2):
                                b[n * 4 + half * 2 + j] = w[
                                    tile_expert[bx % max_tiles],
                                    bx // max_tiles * COLS + (warp * nt + n) * MMA_N + lane // 4,
                                    _k(ko, half, lane, j)]
                            for n in range(nt):
                                T.evaluate(T.ptx_legacy.mma("m16n8k16", "row", "col", "bf16", "bf16", "fp32",
                                                            a.data, 0, b.data, n * 4, c.data, n * 4, False,
                                                            dtype="float32"))
                        for n, r, j in T.grid(nt, 2, 2):
                            o[_tile_row(max_tiles, bx, lane, r), _out_col(max_tiles, bx, warp, n, lane, j)] = c[
                                n * 4 + r * 2 + j]

    return func


def reference_gate_up(x, row_token, row_weight, tile_expert, num_tiles, gate_up, limit):
    """float64 h of the used rows with x rounded to bfloat16 as the kernel's A fragments are."""
    import ml_dtypes

    from ....ops import moe_gate_up

    xb = x.astype(ml_dtypes.bfloat16).astype(np.float64)
    return moe_gate_up.reference(xb, row_token, row_weight, tile_expert, num_tiles,
                                 gate_up.astype(np.float64), limit, TILE_ROWS)


def cost(used_rows: int, active_experts: int, dim: int, inter: int) -> dict:
    """Both GEMMs on the used rows (padding to 16 included); bytes: each active expert's bf16
    weights once, x gathered and h, o in float32."""
    return {"flops": 2 * used_rows * dim * 3 * inter + 6 * used_rows * inter,
            "bytes": active_experts * 3 * inter * dim * 2 + used_rows * (2 * dim + 2 * inter) * 4}
