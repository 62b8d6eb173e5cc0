"""The V4 compressor's slot pooling (``tide.ops.compressor``) on the Ascend vector unit as HIVM MLIR:
per candidate window w and channel d, a softmax over the window's R slots weighs their kv values,

    out[w, d] = sum_j exp(score[w, j, d] - M) kv[w, j, d] / sum_j exp(score[w, j, d] - M),
    M = max_j score[w, j, d]

``score`` (the gate projection plus the slot's position bias) and ``kv`` are ``[W, R, D]`` float32,
passed as their ``[W * R, D]`` views; ``out [W, D]``. The slots were gathered from this call's
projections and the state rings beforehand; the pooled rows then take the RMSNorm kernel and RoPE.

Tiling: a task is one window and a block of ``tile_cols`` channels (the softmax is per channel, so
channels split freely): the ``[R, tile_cols]`` score and kv blocks and their temporaries
(``LIVE_TILES``) fit the UB double-buffered, which HCA's R = 128 slots at D = 512 need (the whole
window is 256 KiB per operand). Max and sums by ``vreduce`` over the slot axis into buffers filled
with -inf and 0 first; tasks go round-robin over the vector cores.
"""

from __future__ import annotations

import math

from tide.targets.ascend import cost, hivm, mlir

LIVE_TILES = 4       # score, its exp, kv, weighted kv
BUFFERING = 2
FLOPS_PER_ELEMENT = 6  # max, subtract, exp, sum, multiply, sum (per slot and channel)


def choose_tile_cols(soc: str, slots: int, dim: int) -> int:
    """The largest divisor of ``dim`` whose ``[slots, tile_cols]`` blocks fit the UB as above."""
    if slots < 2:
        raise ValueError(f"ascend compressor pool: a window needs at least 2 slots, got {slots}")
    return hivm.tile_rows(soc, dim, 4 * slots, LIVE_TILES, buffering=BUFFERING, what="compressor pool")


def emit(windows: int, slots: int, dim: int, soc: str, tile_cols: int | None = None,
         name: str = "tide_compressor_pool") -> str:
    """HIVM module ``(score [W*R, D] f32, kv [W*R, D] f32, out [W, D] f32)``."""
    tc = tile_cols or choose_tile_cols(soc, slots, dim)
    if dim % tc:
        raise ValueError(f"ascend compressor pool: tile_cols {tc} does not divide dim {dim}")
    R, col_tiles = slots, dim // tc
    tasks = windows * col_tiles
    gm_in, gm_out = mlir.gm((windows * R, dim), "f32"), mlir.gm((windows, dim), "f32")
    T, TR = mlir.tensor((R, tc), "f32"), mlir.tensor((1, tc), "f32")
    b = mlir.Builder()
    v = hivm.Vector(b, soc)
    zero = b.op("arith.constant 0.000000e+00 : f32", "zero")
    ninf = b.op(f"arith.constant {mlir.float_literal(-math.inf, 'f32')} : f32", "ninf")
    with hivm.block_loop(b, b.const(tasks)) as task:
        w, c0 = hivm.tile_origin(b, task, col_tiles, 1, tc)  # output row w, its R input rows from w * R
        r0 = b.op(f"arith.muli {w}, {b.const(R)} : index", "r0")
        score = v.load("%SC", gm_in, [r0, c0], (R, tc), dim)
        kv = v.load("%KV", gm_in, [r0, c0], (R, tc), dim)
        mx = v.reduce("max", score, T, v.fill(ninf, TR), TR, [0])
        e = v.op("vexp", [v.op("vsub", [score, mx], [T, TR], T, " broadcast = [0]")], [T], T)
        den = v.reduce("sum", e, T, v.fill(zero, TR), TR, [0])
        num = v.reduce("sum", v.op("vmul", [e, kv], [T, T], T), T, v.fill(zero, TR), TR, [0])
        out = v.op("vdiv", [num, den], [TR, TR], TR)
        v.store(out, "%OUT", gm_out, [w, c0], (1, tc), dim)
    blocks = min(tasks, cost.soc(soc).vector_cores)
    return b.module(name, [("%SC", gm_in), ("%KV", gm_in), ("%OUT", gm_out)], blocks)


def reference(score, kv):
    """float64 pooling of ``score, kv [W, R, D]`` -> ``[W, D]``."""
    import numpy as np

    score, kv = np.asarray(score, np.float64), np.asarray(kv, np.float64)
    e = np.exp(score - score.max(axis=1, keepdims=True))
    return (e * kv).sum(axis=1) / e.sum(axis=1)


def cost_counts(windows: int, slots: int, dim: int) -> dict:
    """Analytic FLOPs and minimum bytes (score and kv read, out written; float32)."""
    return {"flops": FLOPS_PER_ELEMENT * windows * slots * dim,
            "bytes": 4 * (2 * windows * slots * dim + windows * dim)}
