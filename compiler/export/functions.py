"""The V4 blocks as ONNX local functions in domain `tide` (version 1).

Each body uses standard ONNX ops only, so onnxruntime runs the exported file as it is, and the
compiler can recognize a block by its function name and substitute its own kernel. Attributes hold
the static hyper-parameters. docs/onnx-contract.md is the normative description of every function;
the one-line doc strings here point to it.

Layout conventions: B batch, S query tokens of this call, D model width, H heads, Dh head dim,
T routed tokens (B*S), E experts. Positions are int64; `start_pos` [B] is the absolute position of
the first token of the call in each batch row.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import AttributeProto, FunctionProto, TensorProto, helper

from .builder import TIDE_DOMAIN, TIDE_VERSION, Builder
from .quant import E2M1_VALUES, E4M3_VALUES, E8M0_VALUES, FP4_BLOCK

INT, FLOAT = AttributeProto.INT, AttributeProto.FLOAT
INT64_MAX = 2**63 - 1


# ---------------------------------------------------------------------------------------------
# bodies


def _rmsnorm(b: Builder) -> None:
    eps = b.attr("epsilon", "float")
    normed = b.op("Mul", "x", b.rsqrt_mean_square("x", eps))
    b.op("Mul", normed, "weight", outputs=["y"])


def _rope(b: Builder) -> None:
    neg_rd = b.op("Neg", b.to_1d(b.attr("rope_dim", "int")))
    nope = b.slice("x", 0, neg_rd, -1)
    rot = b.slice("x", neg_rd, INT64_MAX, -1)
    pairs = b.op("Reshape", rot, b.op("Concat", b.shape(rot, end=-1), b.i64(-1, 2), axis=0))
    x0 = b.slice(pairs, 0, 1, -1)
    x1 = b.slice(pairs, 1, 2, -1)
    cos = b.unsqueeze("cos", -1)
    sin = b.unsqueeze("sin", -1)
    o0 = b.op("Sub", b.op("Mul", x0, cos), b.op("Mul", x1, sin))
    o1 = b.op("Add", b.op("Mul", x1, cos), b.op("Mul", x0, sin))
    rotated = b.op("Reshape", b.op("Concat", o0, o1, axis=-1), b.shape(rot))
    b.op("Concat", nope, rotated, axis=-1, outputs=["y"])


def _hc_normed_flat(b: Builder, h: str) -> str:
    """The unweighted RMS norm of the flattened streams [B, S, N*D]."""
    flat = b.op("Reshape", h, b.op("Concat", b.shape(h, 0, 2), b.i64(-1), axis=0))
    return b.op("Mul", flat, b.rsqrt_mean_square(flat, b.attr("norm_eps", "float")))


def _collapse(b: Builder, pre: str, h: str, out: str) -> None:
    b.op("ReduceSum", b.op("Mul", b.unsqueeze(pre, -1), h), b.i64(2), keepdims=0, outputs=[out])


def _hc_pre(b: Builder, iters: int) -> None:
    """The Sinkhorn loop is unrolled, so the body is generated for the model's iteration count."""
    n1 = b.to_1d(b.attr("hc_mult", "int"))
    n2 = b.op("Add", n1, n1)
    hc_eps = b.attr("hc_eps", "float")
    mix = b.linear(_hc_normed_flat(b, "h"), "fn")

    def part(x, start, end, axis):
        return b.slice(x, start, end, axis)

    pre_w, post_w, comb_w = part(mix, 0, n1, -1), part(mix, n1, n2, -1), part(mix, n2, INT64_MAX, -1)
    pre_b, post_b, comb_b = part("base", 0, n1, 0), part("base", n1, n2, 0), part("base", n2, INT64_MAX, 0)
    s_pre, s_post, s_comb = (part("scale", i, i + 1, 0) for i in range(3))
    pre = b.op("Add", b.op("Sigmoid", b.op("Add", b.op("Mul", pre_w, s_pre), pre_b)), hc_eps)
    b.op("Mul", b.scalar_f(2.0), b.op("Sigmoid", b.op("Add", b.op("Mul", post_w, s_post), post_b)),
         outputs=["post"])
    comb_shape = b.op("Concat", b.shape("h", 0, 2), n1, n1, axis=0)
    logits = b.op("Reshape", b.op("Add", b.op("Mul", comb_w, s_comb), comb_b), comb_shape)
    comb = b.op("Add", b.op("Softmax", logits, axis=-1), hc_eps)

    def normalize(x, axis, out=1):
        total = b.op("Add", b.reduce("ReduceSum", x, [axis], keepdims=True), hc_eps)
        return b.op("Div", x, total, outputs=out)

    steps = [-2] + [-1, -2] * (iters - 1)
    for i, axis in enumerate(steps):
        comb = normalize(comb, axis, ["comb"] if i == len(steps) - 1 else 1)
    _collapse(b, pre, "h", "x")


def _hc_post(b: Builder) -> None:
    spread = b.op("Mul", b.unsqueeze("post", -1), b.unsqueeze("f", -2))
    mixed = b.op("MatMul", b.op("Transpose", "comb", perm=[0, 1, 3, 2]), "h")
    b.op("Add", spread, mixed, outputs=["y"])


def _hyper_head(b: Builder) -> None:
    mixes = b.linear(_hc_normed_flat(b, "h"), "fn")
    pre = b.op("Add", b.op("Sigmoid", b.op("Add", b.op("Mul", mixes, "scale"), "base")),
               b.attr("hc_eps", "float"))
    _collapse(b, pre, "h", "y")


def _shared_logits(b: Builder) -> tuple[str, str]:
    """Window logits [B,S,H,N] (scaled, masked) and the sink column [B,S,H,1]."""
    scale = b.attr("scale", "float")
    keys_t = b.unsqueeze(b.op("Transpose", "kv", perm=[0, 2, 1]), 1)
    logits = b.op("Add", b.op("Mul", b.op("MatMul", "q", keys_t), scale), b.unsqueeze("kv_bias", 2))
    sink = b.op("Expand", b.op("Reshape", "sinks", b.i64(1, 1, -1, 1)),
                b.op("Concat", b.shape(logits, 0, 3), b.i64(1), axis=0))
    return logits, sink


def _sink_attention(b: Builder) -> None:
    logits, sink = _shared_logits(b)
    probs = b.op("Softmax", b.op("Concat", logits, sink, axis=-1), axis=-1)
    b.op("MatMul", b.slice(probs, 0, -1, -1), b.unsqueeze("kv", 1), outputs=["out"])


def _sparse_sink_attention(b: Builder) -> None:
    batch = b.dim("q", 0)
    base = b.unsqueeze(b.op("Div", "start_pos", b.attr("ratio", "int")), 1, 2)
    last_entry = b.op("Sub", b.dim("entries", 1), b.scalar_i(1))
    from_new = b.ge("indices", base)
    new_row = b.op("Min", b.op("Max", b.op("Sub", "indices", base), b.scalar_i(0)), last_entry)
    rows = b.batch_index("indices", batch, 3)
    picked_new = b.op("GatherND", "entries", b.stack_last(rows, new_row))
    picked_old = b.op("GatherND", "cache", b.stack_last(rows, "indices"))
    selected = b.op("Where", b.unsqueeze(from_new, -1), picked_new, picked_old)  # [B,S,k,Dh]
    scale = b.attr("scale", "float")
    logits, sink = _shared_logits(b)
    sel_logits = b.op("Add", b.op("Mul", b.op("MatMul", "q", b.op("Transpose", selected, perm=[0, 1, 3, 2])), scale),
                      b.unsqueeze(b.neg_inf_where("valid"), 2))
    probs = b.op("Softmax", b.op("Concat", logits, sel_logits, sink, axis=-1), axis=-1)
    n_win = b.shape("kv", 1, 2)
    n_all = b.op("Add", n_win, b.shape("indices", 2, 3))
    out_win = b.op("MatMul", b.slice(probs, 0, n_win, -1), b.unsqueeze("kv", 1))
    out_sel = b.op("MatMul", b.slice(probs, n_win, n_all, -1), selected)
    b.op("Add", out_win, out_sel, outputs=["out"])


def _compressor(b: Builder) -> None:
    ratio = b.attr("ratio", "int")
    overlap = b.attr("overlap", "int")
    series = b.op("Add", overlap, b.scalar_i(1))          # 1 + overlap feature halves per token
    ring = b.op("Mul", series, ratio)                      # R: ring slots = slots per entry
    batch = b.dim("x", 0)
    seq = b.dim("x", 1)
    start = "start_pos"

    kv_new = b.linear("x", "kv_weight")                    # [B,S,F]
    positions = b.op("Add", b.unsqueeze(start, 1), b.arange(seq))
    bias = b.op("Gather", "position_bias", b.op("Mod", positions, ratio), axis=0)
    score_new = b.op("Add", b.linear("x", "gate_weight"), bias)

    head_shape = b.op("Concat", b.i64(0, -1), b.to_1d(b.attr("head_dim", "int")), axis=0)
    kv_src = b.op("Reshape", b.op("Concat", "kv_state", kv_new, axis=1), head_shape)
    score_src = b.op("Reshape", b.op("Concat", "score_state", score_new, axis=1), head_shape)

    base = b.op("Div", start, ratio)
    n_cand = b.op("Add", b.op("Div", seq, ratio), b.scalar_i(1))
    window = b.op("Add", b.unsqueeze(base, 1), b.arange(n_cand))                      # [B,nb]
    slot = b.arange(ring)                                                              # [R]
    first = b.op("Mul", b.op("Sub", window, overlap), ratio)
    pos = b.op("Add", b.unsqueeze(first, 2), slot)                                     # [B,nb,R]
    start3 = b.unsqueeze(start, 1, 2)
    in_chunk = b.ge(pos, start3)
    chunk_src = b.op("Add", b.op("Sub", pos, start3), ring)
    # pos >= -ratio (CSA window 0 reaches one window back); pos + R keeps the Mod dividend >= 0.
    src = b.op("Where", in_chunk, chunk_src, b.op("Mod", b.op("Add", pos, ring), ring))
    src = b.op("Min", src, b.op("Sub", b.op("Add", ring, seq), b.scalar_i(1)))
    row = b.op("Add", b.op("Mul", src, series), b.op("Div", slot, ratio))
    index = b.stack_last(b.batch_index(row, batch, 3), row)
    kv = b.op("GatherND", kv_src, index)                                               # [B,nb,R,Dh]
    score = b.op("GatherND", score_src, index)
    score = b.op("Where", b.unsqueeze(b.ge(pos, b.scalar_i(0)), -1), score, b.scalar_f(float("-inf")))
    pooled = b.op("ReduceSum", b.op("Mul", kv, b.op("Softmax", score, axis=2)), b.i64(2), keepdims=0)
    normed = b.call("RMSNorm", pooled, "norm_weight", attr_refs={"epsilon": ("epsilon", FLOAT)})
    b.call("RoPE", normed, "cos", "sin", attr_refs={"rope_dim": ("rope_dim", INT)}, outputs=["entries"])

    end = b.unsqueeze(b.op("Add", start, seq), 1)
    complete = b.ge(end, b.op("Mul", b.op("Add", window, b.scalar_i(1)), ratio))       # [B,nb]
    cache_index = b.stack_last(b.batch_index(window, batch, 2), window)
    old = b.op("GatherND", "cache", cache_index)
    b.rename(cache_index, "cache_index")
    b.op("Where", b.unsqueeze(complete, -1), "entries", old, outputs=["cache_update"])

    n_keep = b.op("Min", seq, ring)
    skip = b.op("Sub", seq, n_keep)
    kept_pos = b.op("Add", b.unsqueeze(b.op("Add", start, skip), 1), b.arange(n_keep))
    kept_slot = b.op("Mod", kept_pos, ring)
    b.rename(b.stack_last(b.batch_index(kept_slot, batch, 2), kept_slot), "state_index")
    skip1, seq1 = b.to_1d(skip), b.to_1d(seq)
    b.rename(b.slice(kv_new, skip1, seq1, 1), "kv_update")
    b.rename(b.slice(score_new, skip1, seq1, 1), "score_update")


def _lightning_indexer(b: Builder) -> None:
    ratio = b.attr("ratio", "int")
    head_shape = b.op("Concat", b.i64(0, 0, -1), b.to_1d(b.attr("head_dim", "int")), axis=0)
    q = b.op("Reshape", b.linear("q_residual", "q_weight"), head_shape)                 # [B,S,Hi,Di]
    q = b.call("RoPE", q, b.unsqueeze("cos", 2), b.unsqueeze("sin", 2),
               attr_refs={"rope_dim": ("rope_dim", INT)})
    weights = b.op("Mul", b.linear("x", "weights_proj"), b.attr("weights_scale", "float"))  # [B,S,Hi]
    weights = b.unsqueeze(weights, -1)
    softmax_scale = b.attr("softmax_scale", "float")

    def scores(keys: str) -> str:
        dots = b.op("MatMul", q, b.unsqueeze(b.op("Transpose", keys, perm=[0, 2, 1]), 1))  # [B,S,Hi,M]
        per_head = b.op("Mul", b.op("Mul", b.op("Relu", dots), softmax_scale), weights)
        return b.op("ReduceSum", per_head, b.i64(2), keepdims=0)                        # [B,S,M]

    old_scores = scores("cache")
    new_scores = scores("entries")
    start = "start_pos"
    base = b.unsqueeze(b.op("Div", start, ratio), 1)                                    # [B,1]
    rows = b.arange(b.dim("cache", 1))                                                  # [C]
    rel = b.op("Sub", b.unsqueeze(rows, 0), base)                                       # [B,C]
    n_new = b.dim("entries", 1)
    is_new = b.op("And", b.ge(rel, b.scalar_i(0)), b.op("Less", rel, n_new))
    new_row = b.op("Min", b.op("Max", rel, b.scalar_i(0)), b.op("Sub", n_new, b.scalar_i(1)))
    new_row = b.op("Expand", b.unsqueeze(new_row, 1), b.shape(old_scores))
    merged = b.op("Where", b.unsqueeze(is_new, 1), b.op("GatherElements", new_scores, new_row, axis=2), old_scores)
    positions = b.op("Add", b.unsqueeze(start, 1), b.arange(b.dim("x", 1)))
    threshold = b.unsqueeze(b.op("Div", b.op("Add", positions, b.scalar_i(1)), ratio), -1)  # [B,S,1]
    visible = b.op("Less", b.unsqueeze(rows, 0, 1), threshold)
    masked = b.neg_inf_where(visible, merged)
    k = b.to_1d(b.attr("top_k", "int"))
    _, indices = b.op("TopK", masked, k, axis=-1, largest=1, sorted=1, outputs=[b.fresh("top_scores"), "indices"])
    b.op("Less", indices, threshold, outputs=["valid"])


def _router_weights(b: Builder, scores: str, indices: str) -> None:
    picked = b.op("GatherElements", scores, indices, axis=1)
    total = b.op("Add", b.reduce("ReduceSum", picked, [-1], keepdims=True), b.scalar_f(1e-20))
    b.op("Mul", b.op("Div", picked, total), b.attr("routed_scaling_factor", "float"), outputs=["weights"])


def _router_scores(b: Builder) -> str:
    return b.op("Sqrt", b.op("Softplus", b.op("Gemm", "x", "weight", transB=1)))


def _moe_router(b: Builder) -> None:
    scores = _router_scores(b)
    k = b.to_1d(b.attr("top_k", "int"))
    b.op("TopK", b.op("Add", scores, "bias"), k, axis=-1, largest=1, sorted=1,
         outputs=[b.fresh("biased_scores"), "indices"])
    _router_weights(b, scores, "indices")


def _hash_moe_router(b: Builder) -> None:
    scores = _router_scores(b)
    b.op("Gather", "tid2eid", "input_ids", axis=0, outputs=["indices"])
    _router_weights(b, scores, "indices")


def _swiglu(b: Builder, gate: str, up: str) -> str:
    limit = b.attr("swiglu_limit", "float")
    gate = b.op("Min", gate, limit)
    up = b.op("Min", b.op("Max", up, b.op("Neg", limit)), limit)
    return b.op("Mul", b.op("Mul", gate, b.op("Sigmoid", gate)), up)


def _moe_experts(b: Builder) -> None:
    n_experts = b.dim("gate_up", 0)
    one_hot = b.op("Cast", b.op("Equal", b.unsqueeze("indices", -1), b.arange(n_experts)), to=1)  # [T,k,E]
    routing = b.op("ReduceSum", b.op("Mul", one_hot, b.unsqueeze("weights", -1)), b.i64(1), keepdims=0)  # [T,E]
    gate_up = b.op("Einsum", "x", "gate_up", equation="td,efd->tef")
    inter = b.shape("down", 2, 3)
    act = _swiglu(b, b.slice(gate_up, 0, inter, -1), b.slice(gate_up, inter, INT64_MAX, -1))
    per_expert = b.op("Einsum", act, "down", equation="tef,edf->ted")
    b.op("Einsum", per_expert, routing, equation="ted,te->td", outputs=["y"])


def _shared_expert(b: Builder) -> None:
    act = _swiglu(b, b.linear("x", "gate_weight"), b.linear("x", "up_weight"))
    b.rename(b.linear(act, "down_weight"), "y")


def _dequantize_fp8(b: Builder) -> None:
    values = b.op("Gather", b.const(E4M3_VALUES), b.op("Cast", "q", to=TensorProto.INT64))
    scale = b.op("Gather", b.const(E8M0_VALUES), b.op("Cast", "scale", to=TensorProto.INT64))   # [..., nb, kb]
    block_n, block_k = b.to_1d(b.attr("block_n", "int")), b.to_1d(b.attr("block_k", "int"))
    one = b.i64(1)
    blocks = b.op("Expand", b.unsqueeze(scale, -3, -1), b.op("Concat", one, block_n, one, block_k, axis=0))
    shape = b.op("Concat", b.shape(scale, end=-2), b.i64(-1), b.op("Mul", b.shape(scale, start=-1), block_k), axis=0)
    full = b.op("Slice", b.op("Reshape", blocks, shape), b.i64(0, 0), b.shape("q", start=-2), b.i64(-2, -1))
    b.op("Mul", values, full, outputs=["y"])


def _dequantize_fp4(b: Builder) -> None:
    sixteen = b.const(np.array(16, dtype=np.uint8))
    low, high = b.op("Mod", "q", sixteen), b.op("Div", "q", sixteen)
    codes = b.op("Reshape", b.stack_last(low, high), b.op("Concat", b.shape("q", end=-1), b.i64(-1), axis=0))
    values = b.op("Gather", b.const(E2M1_VALUES), b.op("Cast", codes, to=TensorProto.INT64))
    scale = b.op("Gather", b.const(E8M0_VALUES), b.op("Cast", "scale", to=TensorProto.INT64))   # [..., N, K/32]
    blocks = b.op("Expand", b.unsqueeze(scale, -1), b.i64(1, FP4_BLOCK))
    full = b.op("Reshape", blocks, b.op("Concat", b.shape(scale, end=-1), b.i64(-1), axis=0))
    b.op("Mul", values, full, outputs=["y"])


# ---------------------------------------------------------------------------------------------
# registry

# name: (inputs, outputs, attributes, body, one-line doc, nested functions)
_FUNCTIONS: dict[str, tuple[list[str], list[str], list[str], Callable, str, tuple[str, ...]]] = {
    "RMSNorm": (["x", "weight"], ["y"], ["epsilon"], _rmsnorm,
                "y = x / sqrt(mean(x^2, -1) + epsilon) * weight", ()),
    "RoPE": (["x", "cos", "sin"], ["y"], ["rope_dim"], _rope,
             "Interleaved rotary embedding of the last rope_dim channels of x; cos/sin broadcast to "
             "x[..., :rope_dim/2]. Inverse rotation: pass -sin.", ()),
    "HyperConnectionPre": (["h", "fn", "base", "scale"], ["x", "post", "comb"],
                           ["hc_mult", "hc_eps", "norm_eps", "sinkhorn_iters"],
                           _hc_pre, "mHC weights (pre, post, Sinkhorn comb) from the streams h and the "
                           "collapsed sublayer input x = sum_k pre_k h_k", ()),
    "HyperConnectionPost": (["f", "h", "post", "comb"], ["y"], [], _hc_post,
                            "y_k = post_k f + sum_j comb[j,k] h_j", ()),
    "HyperHead": (["h", "fn", "base", "scale"], ["y"], ["hc_eps", "norm_eps"], _hyper_head,
                  "Final stream collapse y = sum_k (sigmoid(mix_k * scale + base_k) + hc_eps) h_k", ()),
    "SinkAttention": (["q", "kv", "kv_bias", "sinks"], ["out"], ["scale"], _sink_attention,
                      "MQA with a per-head sink logit over one shared key set (window, plus all compressed "
                      "entries in HCA layers); kv_bias is 0 or -inf", ()),
    "SparseSinkAttention": (["q", "kv", "kv_bias", "cache", "entries", "indices", "valid", "start_pos", "sinks"],
                            ["out"], ["ratio", "scale"], _sparse_sink_attention,
                            "CSA: MQA with sinks over the shared window keys plus the top-k compressed entries "
                            "picked by LightningIndexer (rows of cache, or of this call's new entries)", ()),
    "Compressor": (["x", "start_pos", "kv_state", "score_state", "cache", "kv_weight", "gate_weight",
                    "position_bias", "norm_weight", "cos", "sin"],
                   ["entries", "cache_index", "cache_update", "state_index", "kv_update", "score_update"],
                   ["ratio", "overlap", "head_dim", "epsilon", "rope_dim"], _compressor,
                   "Gated pooling of every window of `ratio` tokens (overlap=1: 2*ratio tokens, CSA) into "
                   "one entry, RMSNorm, RoPE at position window*ratio; returns the candidate entries of "
                   "this call and the ScatterND indices/updates of its three states", ("RMSNorm", "RoPE")),
    "LightningIndexer": (["q_residual", "x", "cos", "sin", "cache", "entries", "start_pos", "q_weight",
                          "weights_proj"], ["indices", "valid"],
                         ["ratio", "head_dim", "rope_dim", "top_k", "softmax_scale", "weights_scale"],
                         _lightning_indexer,
                         "score_s = sum_h w_h relu(q_h . k_s) * softmax_scale over visible compressed entries, "
                         "top_k with invisible entries at -inf; valid marks picks below the causal threshold",
                         ("RoPE",)),
    "MoERouter": (["x", "weight", "bias"], ["weights", "indices"], ["top_k", "routed_scaling_factor"], _moe_router,
                  "Learned routing: s = sqrt(softplus(x W^T)), experts = top_k(s + bias), "
                  "weights = s[experts] / (sum + 1e-20) * routed_scaling_factor", ()),
    "HashMoERouter": (["x", "weight", "tid2eid", "input_ids"], ["weights", "indices"], ["routed_scaling_factor"],
                      _hash_moe_router,
                      "Hash routing: experts = tid2eid[input_ids], weights from s = sqrt(softplus(x W^T)) as in "
                      "MoERouter", ()),
    "MoEExperts": (["x", "weights", "indices", "gate_up", "down"], ["y"], ["swiglu_limit"], _moe_experts,
                   "Routed SwiGLU experts: y_t = sum_k weights[t,k] * down_e(silu(min(g, L)) * clip(u, -L, L)) "
                   "with [g; u] = gate_up_e x_t, e = indices[t,k] (dense reference body)", ()),
    "SharedExpert": (["x", "gate_weight", "up_weight", "down_weight"], ["y"], ["swiglu_limit"], _shared_expert,
                     "Shared SwiGLU expert with the same clamps as MoEExperts", ()),
    "DequantizeFP8": (["q", "scale"], ["y"], ["block_n", "block_k"], _dequantize_fp8,
                      "Block FP8: y[..., n, k] = e4m3(q[..., n, k]) * 2^(scale[..., n / block_n, k / block_k] - 127); "
                      "q holds float8_e4m3fn bit patterns, scale e8m0 exponent bytes (both uint8)", ()),
    "DequantizeFP4": (["q", "scale"], ["y"], [], _dequantize_fp4,
                      "Block FP4: y[..., n, k] = e2m1(code k of row n) * 2^(scale[..., n, k / 32] - 127); q packs two "
                      "e2m1 codes per byte, element 2j in the low nibble; scale holds e8m0 exponent bytes", ()),
}

FUNCTION_NAMES = tuple(_FUNCTIONS)


def build_functions(names: set[str], opset: int, hc_iters: int) -> list[FunctionProto]:
    """FunctionProtos for `names` and the functions they call, nested ones first."""
    wanted: list[str] = []

    def add(name: str) -> None:
        for dep in _FUNCTIONS[name][5]:
            add(dep)
        if name not in wanted:
            wanted.append(name)

    for name in FUNCTION_NAMES:
        if name in names:
            add(name)
    imports = [helper.make_opsetid("", opset), helper.make_opsetid(TIDE_DOMAIN, TIDE_VERSION)]
    protos = []
    for name in wanted:
        inputs, outputs, attributes, body, doc, _ = _FUNCTIONS[name]
        b = Builder(opset, name)
        if body is _hc_pre:
            body(b, hc_iters)
            doc = f"{doc}; Sinkhorn unrolled for {hc_iters} iterations (docs/onnx-contract.md)"
        else:
            body(b)
        protos.append(helper.make_function(TIDE_DOMAIN, name, inputs, outputs, b.nodes, imports,
                                           attributes=attributes, doc_string=doc))
    return protos
