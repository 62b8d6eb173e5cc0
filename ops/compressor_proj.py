"""The compressor's input projections ``kv = x kv_weight^T`` and ``gate = x gate_weight^T`` as one
GEMM kernel per weight: ``y[m, n] = sum_k x[m, k] w_t[k, n]`` over the call's ``B*S`` tokens, with
``w_t`` the weight transposed (a constant the compiler folds once).

``relax_linear`` emits it for ``tide.ops.compressor`` and ``tide.ops.indexer`` (prefill) where the
target chooses it (the CPU, whose schedule blocks the reduction so a weight panel stays in cache
across all token tiles); other targets keep the generic GEMM.
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


def relax_linear(bb, x, weight, *, choose, report, kernel: str, label: str, min_tokens: int = 1):
    """``x weight^T`` ``[B, S, F]`` (``weight [F, D]``): this GEMM when the call has at least
    ``min_tokens`` tokens per row and the target chooses it (``kernel``: its name prefix,
    ``label``: the compile report's description); the generic GEMM otherwise."""
    from tvm import relax

    from . import kernel as identity

    B, S, D = (int(d) for d in x.ty.shape)
    F = int(weight.ty.shape[0])
    if S < min_tokens or not choose("compressor_proj", rows=B * S, dim=D, out=F).get("kernel"):
        return bb.emit(relax.op.linear(x, weight))
    name = f"{kernel}_{B * S}x{D}x{F}"
    gv = identity.add(bb, prim_func(B * S, D, F, name), name, "compressor_proj", rows=B * S, dim=D, out=F)
    report.add(name, f"{label} [{B * S} tokens x {D} -> {F}]")
    tokens = bb.emit(relax.op.reshape(x, (B * S, D)))
    w_t = bb.emit(relax.op.permute_dims(weight))  # folded at compile time for a constant weight
    out = bb.emit(relax.call_tir(gv, [tokens, w_t], out_ty=relax.TensorType((B * S, F), "float32")))
    return bb.emit(relax.op.reshape(out, (B, S, F)))


def reference(x, weight) -> np.ndarray:
    """float64 ``x weight^T`` (weight ``[out, dim]`` as the checkpoint stores it)."""
    return np.asarray(x, np.float64) @ np.asarray(weight, np.float64).T


def cost(rows: int, dim: int, out: int, itemsize: int = 4) -> dict:
    """A multiply-add per (row, k, n); x and the weight read once, y written once."""
    return {"flops": 2 * rows * dim * out, "bytes": (rows * dim + dim * out + rows * out) * itemsize}
