"""MoE router scores: ``s = sqrt(softplus(x W^T))`` in float32, ``[T, E]``.

First kernel of both router chains (``tide.ops.router`` for ``tide.MoERouter``,
``tide.ops.router_hash`` for ``tide.HashMoERouter``). A GEMM with the score function as its
epilogue; the gate weight ``W [E, D]`` is transposed to ``[D, E]`` at compile time so a row of
scores is a contiguous, vectorizable run. softplus is evaluated as
``max(v, 0) + log1p(exp(-|v|))``: no overflow for large logits and full precision for very
negative ones (torch's softplus returns v itself above 20, which differs from this by < 3e-9).
"""

from __future__ import annotations

import numpy as np

from . import kernel


@kernel.builder
def prim_func(tokens: int, dim: int, experts: int, name: str = "tide_router_scores"):
    from tvm import te, tirx

    x = te.placeholder((tokens, dim), "float32", name="x")
    wt = te.placeholder((dim, experts), "float32", name="wt")
    k = te.reduce_axis((0, dim), name="k")
    logits = te.compute((tokens, experts), lambda t, e: te.sum(x[t, k] * wt[k, e], axis=k), name="logits")

    def score(t, e):
        v = logits[t, e]
        return te.sqrt(te.max(v, tirx.const(0.0, "float32")) + tirx.log1p(te.exp(-te.abs(v))))

    scores = te.compute((tokens, experts), score, name="scores")
    func = te.create_prim_func([x, wt, scores])
    return func.with_attr("global_symbol", name)


def relax_emit(bb, x, weight, report):
    """The scores call for ``x [T, D]`` and the gate ``weight [E, D]``, transposed to ``[D, E]`` (a
    constant: folded at compile time)."""
    from tvm import relax

    tokens, dim = (int(v) for v in x.ty.shape)
    experts = int(weight.ty.shape[0])
    name = f"tide_router_scores_t{tokens}d{dim}e{experts}"
    gv = kernel.add(bb, prim_func(tokens, dim, experts, name), name, "router_scores", tokens=tokens, dim=dim,
                    experts=experts, **cost(tokens, dim, experts))
    report.add(name, f"router scores sqrt(softplus(x W^T)) [T {tokens}, D {dim}, E {experts}]")
    wt = bb.emit(relax.op.permute_dims(weight, [1, 0]))
    return bb.emit(relax.call_tir(gv, [x, wt], out_ty=relax.TensorType((tokens, experts), "float32")))


def reference(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    logits = x.astype(np.float64) @ weight.astype(np.float64).T
    return np.sqrt(np.logaddexp(0.0, logits))


def cost(tokens: int, dim: int, experts: int, itemsize: int = 4) -> dict:
    """The GEMM plus ~6 FLOPs of epilogue per score; x, the weight and the scores once each."""
    return {"flops": 2 * tokens * dim * experts + 6 * tokens * experts,
            "bytes": (tokens * dim + dim * experts + tokens * experts) * itemsize}
