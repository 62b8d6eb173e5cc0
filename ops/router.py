"""Learned MoE routing: serves ``tide.MoERouter(x, weight, bias) -> (weights, indices)``.

Two kernels: ``tide.ops.router_scores`` (``s = sqrt(softplus(x W^T))``), then this module's
selection, one token per iteration: the top-k experts of ``s + bias`` by insertion into a sorted
list of k (descending; ties go to the lower expert index, the rule of ``tide.ops.topk``), then
``weights = s[chosen] / (sum + 1e-20) * routed_scaling_factor`` from the UNBIASED scores, summed
in rank order. float32 scores and bias, float32 arithmetic; indices int64 or int32.
"""

from __future__ import annotations

import numpy as np

from . import kernel, router_scores


@kernel.builder
def prim_func(tokens: int, experts: int, top_k: int, scale: float, index_dtype: str = "int64",
              name: str = "tide_router_select"):
    """``scores [T, E]``, ``bias [E]`` -> ``weights [T, k]``, ``indices [T, k]``."""
    from tvm.script import tirx as T

    if not 1 <= top_k <= experts:
        raise ValueError(f"router top-k needs 1 <= k <= experts, got k={top_k}, experts={experts}")
    k = top_k
    index = getattr(T, index_dtype)
    factor = T.float32(float(scale))

    def biased(scores, bias, t, e):
        return scores[t, e] + bias[e]

    @T.prim_func(s_tir=True)
    def func(scores: T.Buffer((tokens, experts), "float32"), bias: T.Buffer((experts,), "float32"),
             weights: T.Buffer((tokens, k), "float32"), indices: T.Buffer((tokens, k), index_dtype)):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        for t in range(tokens):
            with T.sblock("select"):
                vt = T.axis.spatial(tokens, t)
                T.reads(scores[vt, 0:experts], bias[0:experts])
                T.writes(weights[vt, 0:k], indices[vt, 0:k])
                top = T.sblock_alloc_buffer((k,), "float32", scope="local")
                chosen = T.sblock_alloc_buffer((k,), "int32", scope="local")
                state = T.sblock_alloc_buffer((2,), "int32", scope="local")
                total = T.sblock_alloc_buffer((1,), "float32", scope="local")
                state[0] = 0
                for e in range(experts):
                    if state[0] < k or biased(scores, bias, vt, e) > top[k - 1]:
                        state[1] = T.min(state[0], k - 1)
                        while state[1] > 0 and biased(scores, bias, vt, e) > top[state[1] - 1]:
                            top[state[1]] = top[state[1] - 1]
                            chosen[state[1]] = chosen[state[1] - 1]
                            state[1] = state[1] - 1
                        top[state[1]] = biased(scores, bias, vt, e)
                        chosen[state[1]] = e
                        state[0] = T.min(state[0] + 1, k)
                total[0] = T.float32(0)
                for j in range(k):
                    total[0] = total[0] + scores[vt, chosen[j]]
                for j in range(k):
                    indices[vt, j] = index(chosen[j])
                    weights[vt, j] = scores[vt, chosen[j]] / (total[0] + T.float32(1e-20)) * factor

    return func


def reference(scores: np.ndarray, bias: np.ndarray, top_k: int, scale: float):
    """(weights float64, indices int64): stable descending order, so ties keep the lower index."""
    biased = scores.astype(np.float32) + bias.astype(np.float32)
    order = np.argsort(-biased, axis=-1, kind="stable")[:, :top_k]
    picked = np.take_along_axis(scores.astype(np.float64), order, axis=-1)
    return picked / (picked.sum(-1, keepdims=True) + 1e-20) * scale, order.astype(np.int64)


def cost(tokens: int, experts: int, top_k: int, itemsize: int = 4) -> dict:
    """One add and compare per score (the usual case), 3 FLOPs per pick; scores read once."""
    return {"flops": 2 * tokens * experts + 3 * tokens * top_k,
            "bytes": (tokens * experts + experts) * itemsize + tokens * top_k * (itemsize + 8)}


def relax_convert(bb, inputs, attrs, *, choose, report):
    """``tide.MoERouter`` -> router scores, then this selection."""
    from tvm import relax

    x, weight, bias = inputs
    tokens, dim = (int(v) for v in x.ty.shape)
    experts = int(weight.ty.shape[0])
    top_k = int(attrs["top_k"])
    scale = float(attrs.get("routed_scaling_factor", 1.0))
    if str(x.ty.dtype) != "float32" or str(weight.ty.dtype) != "float32":
        raise ValueError("tide.MoERouter kernels take float32 activations and weights")
    select_name = f"tide_router_select_t{tokens}e{experts}k{top_k}"
    select_gv = kernel.add(bb, prim_func(tokens, experts, top_k, scale, name=select_name), select_name,
                           "router_select", tokens=tokens, experts=experts, top_k=top_k,
                           **cost(tokens, experts, top_k))
    report.add(select_name, f"tide.MoERouter [T {tokens}, E {experts}, k {top_k}]: top-k of scores + bias, weights")
    scores = router_scores.relax_emit(bb, x, weight, report)
    out = bb.emit(relax.call_tir(select_gv, [scores, bias], out_ty=[
        relax.TensorType((tokens, top_k), "float32"), relax.TensorType((tokens, top_k), "int64")]))
    return relax.Tuple([bb.emit(relax.TupleGetItem(out, 0)), bb.emit(relax.TupleGetItem(out, 1))])
