"""Hash MoE routing: serves ``tide.HashMoERouter(x, weight, tid2eid, input_ids) -> (weights, indices)``.

V4's first layers pick experts by token id: ``indices = tid2eid[input_ids]``; the weights come
from the learned scores as in ``tide.MoERouter``. Two kernels: ``tide.ops.router_scores``, then
this module's per-token gather and normalization
``weights = s[indices] / (sum + 1e-20) * routed_scaling_factor`` (summed in slot order; float32
scores and arithmetic, int64 or int32 table and ids). A token id outside the table reads row 0
instead of memory outside it.
"""

from __future__ import annotations

import numpy as np

from . import kernel, router_scores


@kernel.builder
def prim_func(tokens: int, experts: int, top_k: int, vocab: int, scale: float, index_dtype: str = "int64",
              id_dtype: str = "int64", name: str = "tide_router_hash"):
    """``scores [T, E]``, ``tid2eid [V, k]``, ``input_ids [T]`` -> ``weights [T, k]``, ``indices [T, k]``."""
    from tvm.script import tirx as T

    k = top_k
    token_id = getattr(T, id_dtype)
    factor = T.float32(float(scale))

    def table_row(input_ids, t):
        """Token ``t``'s row of tid2eid: its id, or 0 for an id outside the table."""
        return T.if_then_else(T.And(input_ids[t] >= token_id(0), input_ids[t] < token_id(vocab)), input_ids[t],
                              token_id(0))

    def expert(tid2eid, input_ids, t, j):
        return T.Cast("int32", tid2eid[table_row(input_ids, t), j])

    @T.prim_func(s_tir=True)
    def func(scores: T.Buffer((tokens, experts), "float32"), tid2eid: T.Buffer((vocab, k), index_dtype),
             input_ids: T.Buffer((tokens,), id_dtype),
             weights: T.Buffer((tokens, k), "float32"), indices: T.Buffer((tokens, k), index_dtype)):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        for t in range(tokens):
            with T.sblock("select"):
                vt = T.axis.spatial(tokens, t)
                T.reads(scores[vt, 0:experts], tid2eid[0:vocab, 0:k], input_ids[vt])
                T.writes(weights[vt, 0:k], indices[vt, 0:k])
                total = T.sblock_alloc_buffer((1,), "float32", scope="local")
                total[0] = T.float32(0)
                for j in range(k):
                    total[0] = total[0] + scores[vt, expert(tid2eid, input_ids, vt, j)]
                for j in range(k):
                    indices[vt, j] = tid2eid[table_row(input_ids, vt), j]
                    weights[vt, j] = (scores[vt, expert(tid2eid, input_ids, vt, j)] / (total[0] + T.float32(1e-20))
                                      * factor)

    return func


def reference(scores: np.ndarray, tid2eid: np.ndarray, input_ids: np.ndarray, scale: float):
    """(weights float64, indices int64)."""
    indices = tid2eid[input_ids].astype(np.int64)
    picked = np.take_along_axis(scores.astype(np.float64), indices, axis=-1)
    return picked / (picked.sum(-1, keepdims=True) + 1e-20) * scale, indices


def cost(tokens: int, top_k: int, itemsize: int = 4) -> dict:
    """3 FLOPs per pick; a table row, k scores and the outputs per token."""
    return {"flops": 3 * tokens * top_k, "bytes": tokens * (8 + top_k * (8 + itemsize + itemsize + 8))}


def relax_convert(bb, inputs, attrs, *, choose, report):
    """``tide.HashMoERouter`` -> router scores, then this gather."""
    from tvm import relax

    x, weight, tid2eid, input_ids = inputs
    tokens, dim = (int(v) for v in x.ty.shape)
    experts = int(weight.ty.shape[0])
    vocab, top_k = (int(v) for v in tid2eid.ty.shape)
    scale = float(attrs.get("routed_scaling_factor", 1.0))
    if str(x.ty.dtype) != "float32" or str(weight.ty.dtype) != "float32":
        raise ValueError("tide.HashMoERouter kernels take float32 activations and weights")
    hash_name = f"tide_router_hash_t{tokens}e{experts}k{top_k}v{vocab}"
    func = prim_func(tokens, experts, top_k, vocab, scale, str(tid2eid.ty.dtype), str(input_ids.ty.dtype), hash_name)
    hash_gv = kernel.add(bb, func, hash_name, "router_hash", tokens=tokens, experts=experts, top_k=top_k,
                         **cost(tokens, top_k))
    report.add(hash_name, f"tide.HashMoERouter [T {tokens}, k {top_k}]: tid2eid gather, weights")
    scores = router_scores.relax_emit(bb, x, weight, report)
    ids = bb.emit(relax.op.reshape(input_ids, (tokens,)))
    out = bb.emit(relax.call_tir(hash_gv, [scores, tid2eid, ids], out_ty=[
        relax.TensorType((tokens, top_k), "float32"), relax.TensorType((tokens, top_k), str(tid2eid.ty.dtype))]))
    return relax.Tuple([bb.emit(relax.TupleGetItem(out, 0)), bb.emit(relax.TupleGetItem(out, 1))])
