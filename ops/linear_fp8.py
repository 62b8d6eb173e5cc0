"""Linear layer on a block-FP8 weight read as stored: ``y [M, G * N] = x [M, G * K] @ W`` group by
group, with ``W = e4m3(q) * 2^(scale - 127)`` in 128 x 128 (``block_n x block_k``) blocks.

Serves every ``tide.ops.linear`` whose weight is a ``tide.DequantizeFP8`` of a stored ``[G * N, K]``
weight (V4's attention projections, the indexer's query projection, the grouped output projection
``wo_a``): kernel substitution (``tide.compiler.substitute``) puts it in place of the linear and the
dequantization, so the step reads the FP8 bytes (one byte per weight) and never a float32 copy.

Layout: q in the panel layout of ``tide.ops.linear`` (``[G, N / P, K, P]`` uint8, made once at compile
time) and the scales as stored, ``[ceil(G * N / block_n), ceil(K / block_k)]`` uint8. A panel lies
inside one row block of scales (P divides block_n, and each group's N is a whole number of blocks),
so a weight's scale is one value per (panel, k block).

Precision: x float32; q decoded to float32 in registers (exact); the product ``(x * scale) * q`` and
the sum over K (in order k = 0 .. K-1) in float32 — the same value as float32 ``x @ W`` with the
exactly dequantized weight, up to the order of two exact power-of-two scalings. Scales must be at
most ``tide.ops.quant.SCALE_MAX`` (2^113; larger ones overflow float32 weights anyway).
"""

from __future__ import annotations

import numpy as np

from . import kernel, quant
from .linear import weight_shape

LAYOUTS = ("panel",)


def check(rows: int, dim: int, cols: int, panel: int, groups: int, block_n: int, block_k: int) -> None:
    if min(rows, dim, cols, panel, groups, block_n, block_k) < 1 or cols % panel or block_n % panel or \
            (groups > 1 and cols % block_n):
        raise ValueError(f"linear_fp8: {panel}-wide panels of {cols} columns ({groups} groups, K {dim}) do not "
                         f"fit {block_n} x {block_k} scale blocks")


def scale_shape(dim: int, cols: int, groups: int, block_n: int, block_k: int) -> tuple:
    return (-(-groups * cols // block_n), -(-dim // block_k))


@kernel.builder
def prim_func(rows: int, dim: int, cols: int, panel: int, groups: int = 1, block_n: int = 128, block_k: int = 128,
              name: str = "tide_linear_fp8"):
    """``y [rows, groups * cols] = x [rows, groups * dim] @ W`` with W as q (packed
    ``weight_shape(dim, cols, panel, groups)``) and its stored scales."""
    from tvm.script import tirx as T

    check(rows, dim, cols, panel, groups, block_n, block_k)
    wshape = weight_shape(dim, cols, panel, groups)
    sshape = scale_shape(dim, cols, groups, block_n, block_k)
    shift = quant.E4M3_SHIFT

    @T.prim_func(s_tir=True)
    def func(x: T.Buffer((rows, groups * dim), "float32"), w: T.Buffer(wshape, "uint8"),
             scale: T.Buffer(sshape, "uint8"), y: T.Buffer((rows, groups * cols), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        for g, jb, i, p, k in T.grid(groups, cols // panel, rows, panel, dim):
            with T.sblock("gemm"):
                vg, vj, vi, vp, vk = T.axis.remap("SSSSR", [g, jb, i, p, k])
                with T.init():
                    y[vi, vg * cols + vj * panel + vp] = T.float32(0)
                y[vi, vg * cols + vj * panel + vp] = y[vi, vg * cols + vj * panel + vp] + (
                    x[vi, vg * dim + vk]
                    * quant.e8m0_pow2(scale[(vg * cols + vj * panel) // block_n, vk // block_k], shift)
                ) * quant.e4m3_half(w[vg, vj, vk, vp])

    return func


def reference(x: np.ndarray, q: np.ndarray, scale: np.ndarray, groups: int = 1, block_n: int = 128,
              block_k: int = 128) -> np.ndarray:
    """``x @ W^T`` in float64 for the stored ``[G * N, K]`` q and its scales, group by group."""
    from .dequantize_fp8 import reference as dequantize

    w = dequantize(q, scale, block_n, block_k)            # [G * N, K]
    n = w.shape[0] // groups
    xg = x.astype(np.float64).reshape(x.shape[0], groups, -1)
    return np.einsum("mgk,gnk->mgn", xg, w.reshape(groups, n, -1)).reshape(x.shape[0], -1)


def cost(rows: int, dim: int, cols: int, groups: int = 1, block_n: int = 128, block_k: int = 128) -> dict:
    """2 M G K N FLOPs; the weight once (one byte per element, plus the scales), x read and y
    written once (float32)."""
    scales = int(np.prod(scale_shape(dim, cols, groups, block_n, block_k)))
    return {"flops": 2 * rows * groups * dim * cols,
            "bytes": groups * (dim * cols + 4 * rows * (dim + cols)) + scales}
