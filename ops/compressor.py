"""The V4 compressor's pooling, RMSNorm and RoPE of the candidate entries, with its state-update
outputs: serves ``tide.Compressor``.

``relax_convert`` computes the two projections ``kv = kv_weight x`` and ``gate = gate_weight x``
first (plain linears, which kernel substitution gives to ``tide.ops.linear`` where the target has
a layout for them) and calls this kernel with their outputs. Candidate k (window
``w = start_pos // r + k``) pools R = (1 + overlap) r slots: slot j is the token at position
``(w - overlap) r + j``, read through feature half ``j // r``, from this call's projections when
the position is in the call (the score plus ``position_bias[pos % r]``) and from the rings
``kv_state``/``score_state`` otherwise; positions before 0 get weight 0. Per channel a softmax over
the slots weighs the kv values; the pooled vector is RMS-normalized and rotated (RoPE at the
window start, cos/sin given). Outputs follow docs/onnx-contract.md: the entries, the
``(b, w)``/``cache_update`` pairs of the compressed cache (the old row for windows that do not
complete in this call), and the ``(b, p % R)``/kv/score rows of the last ``min(S, R)`` tokens for
the rings. Positions past the call's last token are clamped to it, as in the exporter's body, so
incomplete entries are the same finite values onnxruntime computes.

Precision: reads float32 (projections, rings, cache, bias, norm weight, cos/sin) and int64
``start_pos``; pools, normalizes and rotates in float32 (the slot softmax through ``exp_lets``, about
1 ulp); writes float32 rows and int64 indices.
"""

from __future__ import annotations

import numpy as np

from . import kernel


LOWEST = float(np.finfo(np.float32).min)  # the score of a slot before position 0; the slot max starts here


def exp_lets(name: str, arg):
    """``T.let`` bindings (flat ``Bind`` statements in the current block) computing ``exp(arg)``
    for ``arg <= 0`` without a libm call, so that it vectorizes (LLVM turns a vector exp into one
    scalar ``expf`` call per lane): ``2^n p(f)`` with ``n = round(arg / ln 2)``, ``f = arg - n ln 2``
    (ln 2 in two parts) and Cephes' degree-7 polynomial for ``e^f`` on ``|f| <= ln(2)/2`` (about
    1 ulp). ``arg`` is clamped to [-87, 0]: the weight of a masked slot (score at the lowest float)
    becomes ~1e-38 instead of 0. Returns the float32 variable ``name`` bound to the result (the
    intermediate ones are ``name_x``, ``name_n``, ``name_f``, ``name_p``)."""
    from tvm import tirx
    from tvm.script import tirx as T

    def let(var_name, value):
        return T.bind(value, var=tirx.Var(var_name, "float32"))

    x = let(name + "_x", T.max(T.min(arg, T.float32(0)), T.float32(-87)))
    n = let(name + "_n", T.floor(x * T.float32(1.44269504088896341) + T.float32(0.5)))
    f = let(name + "_f", x - n * T.float32(0.693359375) + n * T.float32(2.12194440e-4))
    p = let(name + "_p", ((((((T.float32(1.9875691500e-4) * f + T.float32(1.3981999507e-3)) * f
                             + T.float32(8.3334519073e-3)) * f + T.float32(4.1665795894e-2)) * f
                           + T.float32(1.6666665459e-1)) * f + T.float32(5.0000001201e-1)) * f * f + f + T.float32(1)))
    return let(name, p * T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + T.int32(127), T.int32(23))))


@kernel.builder
def prim_func(batch: int, seq: int, ratio: int, overlap: int, head_dim: int, cache_rows: int, rope_dim: int,
              epsilon: float, name: str = "tide_compressor"):
    """The unscheduled kernel: ``kv``/``gate [B,S,F]`` (the projections, gate without the position
    bias), ``start_pos``, the rings, ``cache``, ``position_bias``, ``norm_weight``, ``cos``/``sin``
    -> the six Compressor outputs."""
    from tvm.script import tirx as T

    B, S, r, o, Dc, C, rd = batch, seq, ratio, overlap, head_dim, cache_rows, rope_dim
    R, F = (1 + o) * r, (1 + o) * Dc
    NBC = S // r + 1
    n_keep = min(S, R)
    if rd % 2 or not 0 < rd <= Dc:
        raise ValueError(f"rope_dim {rd} must be even and within head_dim {Dc}")
    off = Dc - rd

    def window(start_pos, vb, vk):
        """The window of candidate vk."""
        return start_pos[vb] // T.int64(r) + T.int64(vk)

    def slot(start_pos, vb, vk, vj):
        """Slot vj of candidate vk: its position, its row in this call (clamped) and its ring slot."""
        pos = (window(start_pos, vb, vk) - T.int64(o)) * T.int64(r) + T.int64(vj)
        return pos, T.max(T.min(pos - start_pos[vb], T.int64(S - 1)), T.int64(0)), T.floormod(pos, T.int64(R))

    def kv_at(kv, kv_state, start_pos, vb, vk, vj, vc):
        """Channel vc of slot vj's kv: from this call's projection or the ring."""
        pos, t, ring = slot(start_pos, vb, vk, vj)
        feature = (vj // r) * Dc + vc
        return T.if_then_else(pos >= start_pos[vb], kv[vb, t, feature], kv_state[vb, ring, feature])

    def score_at(gate, score_state, position_bias, start_pos, vb, vk, vj, vc):
        """Channel vc of slot vj's score (LOWEST before position 0)."""
        pos, t, ring = slot(start_pos, vb, vk, vj)
        feature = (vj // r) * Dc + vc
        return T.if_then_else(pos < T.int64(0), T.float32(LOWEST), T.if_then_else(
            pos >= start_pos[vb],
            gate[vb, t, feature] + position_bias[T.floormod(start_pos[vb] + t, T.int64(r)), feature],
            score_state[vb, ring, feature]))

    @T.prim_func(s_tir=True)
    def compressor(kv: T.Buffer((B, S, F), "float32"), gate: T.Buffer((B, S, F), "float32"),
                   start_pos: T.Buffer((B,), "int64"), kv_state: T.Buffer((B, R, F), "float32"),
                   score_state: T.Buffer((B, R, F), "float32"), cache: T.Buffer((B, C, Dc), "float32"),
                   position_bias: T.Buffer((r, F), "float32"), norm_weight: T.Buffer((Dc,), "float32"),
                   cos: T.Buffer((B, NBC, rd // 2), "float32"), sin: T.Buffer((B, NBC, rd // 2), "float32"),
                   entries: T.Buffer((B, NBC, Dc), "float32"), cache_index: T.Buffer((B, NBC, 2), "int64"),
                   cache_update: T.Buffer((B, NBC, Dc), "float32"), state_index: T.Buffer((B, n_keep, 2), "int64"),
                   kv_update: T.Buffer((B, n_keep, F), "float32"), score_update: T.Buffer((B, n_keep, F), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        with T.sblock("root"):
            for b, k in T.grid(B, NBC):
                with T.sblock("entry"):
                    vb, vk = T.axis.remap("SS", [b, k])
                    T.reads(kv[vb, 0:S, 0:F], gate[vb, 0:S, 0:F], start_pos[vb], kv_state[vb, 0:R, 0:F],
                            score_state[vb, 0:R, 0:F], cache[vb, 0:C, 0:Dc], position_bias[0:r, 0:F],
                            norm_weight[0:Dc], cos[vb, vk, 0:rd // 2], sin[vb, vk, 0:rd // 2])
                    T.writes(entries[vb, vk, 0:Dc], cache_index[vb, vk, 0:2], cache_update[vb, vk, 0:Dc])
                    mx = T.sblock_alloc_buffer((Dc,), "float32")
                    den = T.sblock_alloc_buffer((Dc,), "float32")
                    num = T.sblock_alloc_buffer((Dc,), "float32")
                    pooled = T.sblock_alloc_buffer((Dc,), "float32")
                    normed = T.sblock_alloc_buffer((Dc,), "float32")
                    ssq = T.sblock_alloc_buffer((1,), "float32")
                    with T.sblock("slot_max_scope"):
                        for c, j in T.grid(Dc, R):
                            with T.sblock("slot_max"):
                                vc, vj = T.axis.remap("SR", [c, j])
                                with T.init():
                                    mx[vc] = T.float32(LOWEST)
                                mx[vc] = T.max(mx[vc], score_at(gate, score_state, position_bias, start_pos,
                                                                vb, vk, vj, vc))
                    with T.sblock("slot_pool_scope"):
                        for c, j in T.grid(Dc, R):
                            with T.sblock("slot_pool"):
                                vc, vj = T.axis.remap("SR", [c, j])
                                with T.init():
                                    den[vc] = T.float32(0)
                                    num[vc] = T.float32(0)
                                weight = exp_lets("weight", score_at(gate, score_state, position_bias, start_pos,
                                                                     vb, vk, vj, vc) - mx[vc])
                                den[vc] = den[vc] + weight
                                num[vc] = num[vc] + weight * kv_at(kv, kv_state, start_pos, vb, vk, vj, vc)
                    for c in range(Dc):
                        with T.sblock("pooled"):
                            vc = T.axis.remap("S", [c])
                            pooled[vc] = num[vc] / den[vc]
                    with T.sblock("square_sum_scope"):
                        for c in range(Dc):
                            with T.sblock("square_sum"):
                                vc = T.axis.remap("R", [c])
                                with T.init():
                                    ssq[0] = T.float32(0)
                                ssq[0] = ssq[0] + pooled[vc] * pooled[vc]
                    for c in range(Dc):
                        with T.sblock("norm"):
                            vc = T.axis.remap("S", [c])
                            normed[vc] = (pooled[vc] * T.rsqrt(ssq[0] / T.float32(Dc) + T.float32(epsilon))
                                          * norm_weight[vc])
                    for c in range(Dc):
                        with T.sblock("rope"):
                            vc = T.axis.remap("S", [c])
                            entries[vb, vk, vc] = T.if_then_else(vc < off, normed[vc], T.if_then_else(
                                (vc - off) % 2 == 0,
                                normed[vc] * cos[vb, vk, T.max(vc - off, 0) // 2]
                                - normed[T.min(vc + 1, Dc - 1)] * sin[vb, vk, T.max(vc - off, 0) // 2],
                                normed[vc] * cos[vb, vk, T.max(vc - off, 0) // 2]
                                + normed[T.max(vc - 1, 0)] * sin[vb, vk, T.max(vc - off, 0) // 2]))
                    for c in range(Dc):
                        with T.sblock("cache_row"):
                            vc = T.axis.remap("S", [c])
                            cache_update[vb, vk, vc] = T.if_then_else(
                                (window(start_pos, vb, vk) + T.int64(1)) * T.int64(r) <= start_pos[vb] + T.int64(S),
                                entries[vb, vk, vc],
                                cache[vb, T.max(T.min(window(start_pos, vb, vk), T.int64(C - 1)), T.int64(0)), vc])
                    for u in range(2):
                        with T.sblock("cache_index"):
                            vu = T.axis.remap("S", [u])
                            cache_index[vb, vk, vu] = T.if_then_else(vu == 0, T.int64(vb), window(start_pos, vb, vk))
            for b, i, f in T.grid(B, n_keep, F):
                with T.sblock("ring_rows"):
                    vb, vi, vf = T.axis.remap("SSS", [b, i, f])
                    kv_update[vb, vi, vf] = kv[vb, S - n_keep + vi, vf]
                    score_update[vb, vi, vf] = gate[vb, S - n_keep + vi, vf] + position_bias[
                        (start_pos[vb] + T.int64(S - n_keep + vi)) % T.int64(r), vf]
            for b, i, u in T.grid(B, n_keep, 2):
                with T.sblock("ring_index"):
                    vb, vi, vu = T.axis.remap("SSS", [b, i, u])
                    state_index[vb, vi, vu] = T.if_then_else(
                        vu == 0, T.int64(vb), (start_pos[vb] + T.int64(S - n_keep + vi)) % T.int64(R))

    return compressor


def reference(kv, gate, start_pos, kv_state, score_state, cache, position_bias, norm_weight, cos, sin, ratio: int,
              overlap: int, epsilon: float, rope_dim: int):
    """float64 port of the exporter's Compressor body from the projections on; returns the six
    outputs (indices int64)."""
    from .indexer import rope_reference

    kv, gate, kv_state, score_state, cache, position_bias, norm_weight = (
        np.asarray(a, np.float64) for a in (kv, gate, kv_state, score_state, cache, position_bias, norm_weight))
    B, S, F = kv.shape
    r, o = ratio, overlap
    R, Dc = (1 + o) * r, F // (1 + o)
    nb = S // r + 1
    start = np.asarray(start_pos, np.int64)
    positions = start[:, None] + np.arange(S)[None]
    score_new = gate + position_bias[positions % r]
    kv_src = np.concatenate([kv_state, kv], 1).reshape(B, -1, Dc)
    score_src = np.concatenate([score_state, score_new], 1).reshape(B, -1, Dc)
    window = start[:, None] // r + np.arange(nb)[None]
    pos = ((window - o) * r)[..., None] + np.arange(R)
    src = np.where(pos >= start[:, None, None], pos - start[:, None, None] + R, (pos + R) % R)
    src = np.minimum(src, R + S - 1)
    rows = src * (1 + o) + np.arange(R) // r
    bidx = np.arange(B)[:, None, None]
    kvg, sg = kv_src[bidx, rows], score_src[bidx, rows]
    sg = np.where((pos >= 0)[..., None], sg, -np.inf)
    weights = np.exp(sg - sg.max(axis=2, keepdims=True))
    pooled = (kvg * weights / weights.sum(axis=2, keepdims=True)).sum(axis=2)
    normed = pooled / np.sqrt(np.mean(pooled * pooled, -1, keepdims=True) + epsilon) * norm_weight
    entries = rope_reference(normed, np.asarray(cos, np.float64), np.asarray(sin, np.float64), rope_dim)
    complete = (window + 1) * r <= (start + S)[:, None]
    cache_index = np.stack([np.broadcast_to(np.arange(B)[:, None], window.shape), window], -1)
    cache_update = np.where(complete[..., None], entries, cache[np.arange(B)[:, None], window])
    n = min(S, R)
    kept = positions[:, S - n:]
    state_index = np.stack([np.broadcast_to(np.arange(B)[:, None], kept.shape), kept % R], -1)
    return entries, cache_index, cache_update, state_index, kv[:, S - n:], score_new[:, S - n:]


def cost(batch: int, seq: int, ratio: int, overlap: int, head_dim: int, itemsize: int = 4) -> dict:
    """Per candidate and channel: max, exp, sum and the weighted pool over R slots (~6 R FLOPs)
    plus norm and RoPE; bytes: the pooled slots read, entries and updates written."""
    R, F = (1 + overlap) * ratio, (1 + overlap) * head_dim
    nb, n = seq // ratio + 1, min(seq, R)
    flops = batch * nb * head_dim * (6 * R + 8)
    bytes_ = batch * (nb * R * head_dim * 2 + 2 * nb * head_dim + 2 * n * F) * itemsize
    return {"flops": flops, "bytes": bytes_}


def relax_convert(bb, inputs, attrs, *, choose, report):
    """``tide.Compressor(x, start_pos, kv_state, score_state, cache, kv_weight, gate_weight,
    position_bias, norm_weight, cos, sin)`` -> the two projections (linears) and this
    kernel."""
    from tvm import relax

    from .sink_attention import static_shape

    x, start_pos, kv_state, score_state, cache, kv_weight, gate_weight, position_bias, norm_weight, cos, sin = inputs
    B, S, _ = static_shape(x, "Compressor x")
    C, Dc = static_shape(cache, "Compressor cache")[1:]
    r, o, rd = int(attrs["ratio"]), int(attrs["overlap"]), int(attrs["rope_dim"])
    F, nb, n = (1 + o) * Dc, S // r + 1, min(S, (1 + o) * r)
    kv = bb.emit(relax.op.linear(x, kv_weight))
    gate = bb.emit(relax.op.linear(x, gate_weight))
    name = f"tide_compressor_b{B}s{S}r{r}o{o}d{Dc}c{C}"
    func = prim_func(B, S, r, o, Dc, C, rd, float(attrs["epsilon"]), name=name)
    gv = kernel.add(bb, func, name, "compressor", batch=B, seq=S, ratio=r, overlap=o, head_dim=Dc,
                    **cost(B, S, r, o, Dc))
    report.add(name, f"tide.Compressor [B={B} S={S} ratio={r} overlap={o} Dc={Dc}]")
    out = bb.emit(relax.call_tir(
        gv, [kv, gate, start_pos, kv_state, score_state, cache, position_bias, norm_weight, cos, sin],
        out_ty=[relax.TensorType((B, nb, Dc), "float32"), relax.TensorType((B, nb, 2), "int64"),
                relax.TensorType((B, nb, Dc), "float32"), relax.TensorType((B, n, 2), "int64"),
                relax.TensorType((B, n, F), "float32"), relax.TensorType((B, n, F), "float32")]))
    return relax.Tuple([bb.emit(relax.TupleGetItem(out, i)) for i in range(6)])
