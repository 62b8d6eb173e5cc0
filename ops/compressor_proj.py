"""The compressor's input projections ``kv = x kv_weight^T`` and ``gate = x gate_weight^T`` as one
GEMM kernel per weight: ``y[m, n] = sum_k x[m, k] w_t[k, n]`` over the call's ``B*S`` tokens, with
``w_t`` the weight transposed (a constant the compiler folds once).

``tide.ops.compressor.relax_convert`` uses it on the CPU, where the generic GEMM rule streams the
whole weight once per 4-row tile; ``tide.targets.attention.schedule_compressor_projection_cpu``
blocks the reduction so a weight panel stays in cache across all token tiles. Other targets keep
the generic (dlight) GEMM.
"""

from __future__ import annotations

import numpy as np


def prim_func(rows: int, dim: int, out: int, name: str = "tide_compressor_proj"):
    """The unscheduled GEMM ``(x [rows, dim], w_t [dim, out]) -> y [rows, out]``."""
    from tvm import te

    x = te.placeholder((rows, dim), "float32", name="x")
    w_t = te.placeholder((dim, out), "float32", name="w_t")
    k = te.reduce_axis((0, dim), name="k")
    y = te.compute((rows, out), lambda m, n: te.sum(x[m, k] * w_t[k, n], axis=k), name="proj")
    return te.create_prim_func([x, w_t, y]).with_attr("global_symbol", name)


def reference(x, weight) -> np.ndarray:
    """float64 ``x weight^T`` (weight ``[out, dim]`` as the checkpoint stores it)."""
    return np.asarray(x, np.float64) @ np.asarray(weight, np.float64).T


def cost(rows: int, dim: int, out: int, itemsize: int = 4) -> dict:
    """A multiply-add per (row, k, n); x and the weight read once, y written once."""
    return {"flops": 2 * rows * dim * out, "bytes": (rows * dim + dim * out + rows * out) * itemsize}
