"""RMSNorm over the last axis: ``y = x / sqrt(mean(x^2) + eps) * weight``.

Serves the exporter's ``tide.RMSNorm`` function (docs/onnx-contract.md), which V4 runs on every
sublayer input, on the q-LoRA latent, per head on q (with a ones weight) and on every compressed
entry. Defined once for static shapes; targets schedule it generically (on the CPU: rows in
parallel, the reduction and the scaling vectorized); Ascend has a hand-written vector kernel for
its identity (``tide.kernel = "rmsnorm"``, epsilon in its parameters).
"""

from __future__ import annotations

import math

import numpy as np

from . import kernel


@kernel.builder
def prim_func(rows: int, dim: int, epsilon: float, dtype: str = "float32"):
    from tvm import te

    x = te.placeholder((rows, dim), dtype, name="x")
    weight = te.placeholder((dim,), dtype, name="weight")
    k = te.reduce_axis((0, dim), name="k")
    sum_sq = te.compute((rows,), lambda i: te.sum(x[i, k] * x[i, k], axis=k), name="sum_sq")
    y = te.compute((rows, dim),
                   lambda i, j: x[i, j] * te.rsqrt(sum_sq[i] / float(dim) + float(epsilon)) * weight[j],
                   name="y")
    return te.create_prim_func([x, weight, y])


def reference(x: np.ndarray, weight: np.ndarray, epsilon: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    return x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + epsilon) * weight.astype(np.float64)


def cost(rows: int, dim: int, itemsize: int = 4) -> dict:
    """Square, add, scale, multiply by weight: 4 FLOPs per element; x read once, y written once."""
    return {"flops": 4 * rows * dim, "bytes": (2 * rows * dim + dim) * itemsize}


def relax_convert(bb, inputs, attrs, *, choose, report):
    """``tide.RMSNorm(x, weight)`` -> one call of this kernel on x viewed as ``[rows, dim]``."""
    from tvm import relax

    x, weight = inputs
    shape = [int(d) for d in x.ty.shape]
    dtype = str(x.ty.dtype)
    rows, dim = math.prod(shape[:-1]), shape[-1]
    epsilon = float(attrs.get("epsilon", 1e-6))
    name = f"tide_rmsnorm_{rows}x{dim}"
    gv = kernel.add(bb, prim_func(rows, dim, epsilon, dtype), name, "rmsnorm", rows=rows, dim=dim, epsilon=epsilon,
                    **cost(rows, dim))
    report.add(name, f"tide.RMSNorm [{rows} x {dim}]")
    flat = bb.emit(relax.op.reshape(x, (rows, dim)))
    out = bb.emit(relax.call_tir(gv, [flat, weight], out_ty=relax.TensorType((rows, dim), dtype)))
    return relax.op.reshape(out, shape)
