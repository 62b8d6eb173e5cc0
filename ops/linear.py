"""Linear layer on a packed weight: ``y [M, G, N] = x [M, G, K] @ W [G, K, N]`` for a weight the
model stores (G groups, each its own [K, N] matrix; G = 1 is the plain ``x [M, K] @ W [K, N]``).

Serves every ``matmul(x, W)`` of the imported graph whose W is a model weight (a constant or a
weight parameter) of shape [K, N], or the transpose of a stored [N, K] one, as the exporter's
linears (``Gemm(rows, W, transB=1)``) give it, and every grouped ``einsum("...gk,gnk->...gn")`` on a
stored [G * N, K] (or [G, N, K]) weight, as V4's grouped output projection ``wo_a`` gives it; kernel
substitution (``tide.compiler.substitute``) puts it in place when the target chooses a ``linear``
layout.

Weight layout ``"panel"`` with width P (the target's choice): ``[G, N / P, K, P]``, made once at
compile time from the stored weight (no run-time copy): panel j of group g holds that group's output
columns ``j*P .. j*P + P - 1``, row-major in K, so one task streams one contiguous panel whatever M
is: a decode step (M = batch) reads each weight byte once, front to back, and a prefill chunk's row
tiles reuse a panel from cache.

x is float32; the weight float32 or bfloat16 (stored dtype, widened in registers); products and
sums are float32, the sum over K in order k = 0 .. K-1 per output. One block per output element
with the K reduction inside it: the target's ``linear`` rule tiles rows and panel columns into
registers.
"""

from __future__ import annotations

import numpy as np

from . import kernel

LAYOUTS = ("panel",)
WEIGHT_DTYPES = ("float32", "bfloat16")


def check(rows: int, dim: int, cols: int, panel: int, groups: int = 1) -> None:
    if min(rows, dim, cols, panel, groups) < 1 or cols % panel:
        raise ValueError(f"linear: {cols} output columns are not a whole number of {panel}-wide panels "
                         f"(rows {rows}, K {dim}, groups {groups})")


def weight_shape(dim: int, cols: int, panel: int, groups: int = 1) -> tuple:
    """The packed weight's shape for ``groups`` ``[K, N]`` matrices."""
    return (groups, cols // panel, dim, panel)


@kernel.builder
def prim_func(rows: int, dim: int, cols: int, panel: int, weight_dtype: str = "float32", name: str = "tide_linear",
              groups: int = 1):
    """``y [rows, groups * cols] = x [rows, groups * dim] @ W`` group by group, W packed as
    ``weight_shape(dim, cols, panel, groups)``."""
    from tvm.script import tirx as T

    check(rows, dim, cols, panel, groups)
    wshape = weight_shape(dim, cols, panel, groups)

    def weight(w, g, j, k, p):
        return w[g, j, k, p] if weight_dtype == "float32" else T.Cast("float32", w[g, j, k, p])

    @T.prim_func(s_tir=True)
    def func(x: T.Buffer((rows, groups * dim), "float32"), w: T.Buffer(wshape, weight_dtype),
             y: T.Buffer((rows, groups * cols), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        for g, jb, i, p, k in T.grid(groups, cols // panel, rows, panel, dim):
            with T.sblock("gemm"):
                vg, vj, vi, vp, vk = T.axis.remap("SSSSR", [g, jb, i, p, k])
                with T.init():
                    y[vi, vg * cols + vj * panel + vp] = T.float32(0)
                y[vi, vg * cols + vj * panel + vp] = (y[vi, vg * cols + vj * panel + vp]
                                                      + x[vi, vg * dim + vk] * weight(w, vg, vj, vk, vp))

    return func


def pack(weight: np.ndarray, panel: int) -> np.ndarray:
    """A ``[K, N]`` weight, or ``[G, K, N]`` grouped one (any strides: a transposed memory-mapped
    checkpoint array is fine), in the panel layout, as a view where the strides allow (no copy: the
    artifact writer streams it)."""
    grouped = weight if weight.ndim == 3 else weight[None]
    groups, dim, cols = grouped.shape
    check(1, dim, cols, panel, groups)
    return grouped.reshape(groups, dim, cols // panel, panel).transpose(0, 2, 1, 3)


def reference(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``x @ W`` in float64 for the unpacked ``[K, N]`` weight, or group by group for a ``[G, K, N]``
    one (x ``[M, G * K]``, y ``[M, G * N]``)."""
    if weight.ndim == 2:
        return x.astype(np.float64) @ weight.astype(np.float64)
    groups, dim, _ = weight.shape
    xg = x.astype(np.float64).reshape(x.shape[0], groups, dim)
    return np.einsum("mgk,gkn->mgn", xg, weight.astype(np.float64)).reshape(x.shape[0], -1)


def cost(rows: int, dim: int, cols: int, itemsize: int = 4, groups: int = 1) -> dict:
    """2 M G K N FLOPs; the weight once (``itemsize`` bytes per element), x read and y written once
    (float32)."""
    return {"flops": 2 * rows * groups * dim * cols,
            "bytes": groups * (dim * cols * itemsize + 4 * rows * (dim + cols))}
