"""MoE token permutation: the routed (token, slot) pairs grouped by expert, in row tiles.

First kernel of the ``tide.MoEExperts`` chain (``tide.ops.moe_experts``). A counting sort over the
``T * k`` routing assignments, stable in (token, slot) order, so the result is deterministic:

- expert e owns ``ceil(n_e / block_rows)`` consecutive tiles of ``block_rows`` rows (experts with
  no tokens own none, so the grouped GEMMs never touch their weights); ``tile_expert[q]`` is the
  expert of tile q and ``num_tiles[0]`` the number of tiles in use;
- row r (``r < num_tiles * block_rows``) holds token ``row_token[r]`` with routing weight
  ``row_weight[r]``; an expert's rows past its last token are padding (token 0, weight 0): the
  GEMMs compute them, the combine never reads them;
- ``slot[t, j]`` is the row of assignment (t, j): the inverse map the combine gathers through.

Rows and tiles past the used ones are zero. The static capacity (``tiling``) bounds the tiles any
routing can need: ``sum_e ceil(n_e / b) <= (T k + min(E, T k) (b - 1)) / b``.

Precision: int64 or int32 expert indices and float32 or bfloat16 routing weights in; the weights
are copied as they are (no arithmetic); the maps are int32.
"""

from __future__ import annotations

import numpy as np

from . import kernel


def tiling(tokens: int, top_k: int, experts: int, block_rows: int) -> tuple[int, int]:
    """(max_tiles, rows): the tile and row capacity the permutation and the GEMMs are sized for."""
    assignments = tokens * top_k
    max_tiles = (assignments + min(experts, assignments) * (block_rows - 1)) // block_rows
    return max_tiles, max_tiles * block_rows


@kernel.builder
def prim_func(tokens: int, top_k: int, experts: int, block_rows: int, index_dtype: str = "int64",
              weight_dtype: str = "float32", name: str = "tide_moe_permute"):
    """Outputs ``row_token [R] int32, row_weight [R], tile_expert [Q] int32, num_tiles [1] int32,
    slot [T, k] int32``. One sequential block (the work is O(T k + E + R))."""
    from tvm.script import tirx as T

    max_tiles, rows = tiling(tokens, top_k, experts, block_rows)
    n = tokens * top_k
    zero = getattr(T, weight_dtype)(0)

    def expert(indices, a):
        """The expert of assignment ``a`` (token ``a // k``, slot ``a % k``) as int32."""
        return T.Cast("int32", indices[a // top_k, a % top_k])

    @T.prim_func(s_tir=True)
    def func(indices: T.Buffer((tokens, top_k), index_dtype), weights: T.Buffer((tokens, top_k), weight_dtype),
             row_token: T.Buffer((rows,), "int32"), row_weight: T.Buffer((rows,), weight_dtype),
             tile_expert: T.Buffer((max_tiles,), "int32"), num_tiles: T.Buffer((1,), "int32"),
             slot: T.Buffer((tokens, top_k), "int32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        for u in range(1):
            with T.sblock("permute"):
                T.reads(indices[0:tokens, 0:top_k], weights[0:tokens, 0:top_k])
                T.writes(row_token[0:rows], row_weight[0:rows], tile_expert[0:max_tiles], num_tiles[0:1],
                         slot[0:tokens, 0:top_k])
                cursor = T.sblock_alloc_buffer((experts,), "int32", scope="local")
                used = T.sblock_alloc_buffer((2,), "int32", scope="local")
                for e in range(experts):
                    cursor[e] = 0
                for a in range(n):
                    cursor[expert(indices, a)] = cursor[expert(indices, a)] + 1
                for r in range(rows):
                    row_token[r] = 0
                    row_weight[r] = zero
                for q in range(max_tiles):
                    tile_expert[q] = 0
                used[0] = 0
                for e in range(experts):
                    for q in range((cursor[e] + (block_rows - 1)) // block_rows):
                        tile_expert[used[0] + q] = e
                    used[1] = used[0] + (cursor[e] + (block_rows - 1)) // block_rows
                    cursor[e] = used[0] * block_rows
                    used[0] = used[1]
                num_tiles[0] = used[0]
                for a in range(n):
                    row_token[cursor[expert(indices, a)]] = a // top_k
                    row_weight[cursor[expert(indices, a)]] = weights[a // top_k, a % top_k]
                    slot[a // top_k, a % top_k] = cursor[expert(indices, a)]
                    cursor[expert(indices, a)] = cursor[expert(indices, a)] + 1

    return func


def reference(indices: np.ndarray, weights: np.ndarray, experts: int, block_rows: int):
    """(row_token, row_weight, tile_expert, num_tiles, slot) exactly as the kernel writes them."""
    tokens, top_k = indices.shape
    max_tiles, rows = tiling(tokens, top_k, experts, block_rows)
    row_token = np.zeros(rows, np.int32)
    row_weight = np.zeros(rows, weights.dtype)
    tile_expert = np.zeros(max_tiles, np.int32)
    slot = np.zeros((tokens, top_k), np.int32)
    counts = np.bincount(indices.reshape(-1), minlength=experts)
    start, used = np.zeros(experts, np.int64), 0
    for e in range(experts):
        tiles = -(-int(counts[e]) // block_rows)
        tile_expert[used:used + tiles] = e
        start[e], used = used * block_rows, used + tiles
    for t in range(tokens):
        for j in range(top_k):
            e = int(indices[t, j])
            row_token[start[e]], row_weight[start[e]], slot[t, j] = t, weights[t, j], start[e]
            start[e] += 1
    return row_token, row_weight, tile_expert, np.array([used], np.int32), slot


def cost(tokens: int, top_k: int, experts: int, block_rows: int, itemsize: int = 4) -> dict:
    """No arithmetic to speak of; bytes: indices and weights read twice, every output written once."""
    max_tiles, rows = tiling(tokens, top_k, experts, block_rows)
    n = tokens * top_k
    return {"flops": 0, "bytes": 2 * n * (8 + itemsize) + rows * (4 + itemsize) + max_tiles * 4 + 4 + n * 4}
