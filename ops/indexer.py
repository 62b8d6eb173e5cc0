"""Lightning Indexer scoring fused with its top-k: serves ``tide.LightningIndexer``.

For query t (absolute position ``start_pos + t``) the visible compressed entries are
``s < (pos + 1) // ratio``; entry s is ``entries[s - start_pos // ratio]`` for this call's candidates
and ``cache[s]`` otherwise. The kernel scores only the visible entries, one tile of ``entry_block``
keys at a time: ``dots [entry x head] = key @ RoPE(q)^T`` (RoPE applied to q as it is loaded),
``score = sum_h w_h relu(dot_h)``, and keeps a sorted top-k list (value descending, lower entry first
on ties) in the kernel's own memory. Only candidates that beat the list's last element are kept,
in a small pending buffer; when it is nearly full (and once at the end) it is merged into the list
by ranking every list element and pending candidate with comparison counts and scattering them into
place (data-parallel, no sort). The ``[S, Hi, C]`` dot products, the gathered keys and the
``[S, C]`` scores are never materialized.

The output follows the ONNX body (TopK over scores with invisible entries at -inf): the visible
picks first, then, when fewer than top_k entries are visible, the invisible entries in increasing
order; ``valid = index < (pos + 1) // ratio``.

Precision: reads float32 (q, cos/sin, weights, keys) and int64 ``start_pos``; RoPE, dots and the
weighted ReLU sum in float32; the top-k list holds float32 scores and int32 entry ids; writes int64
indices and bool flags.

``splits`` cuts the entry list into ranges whose top-k lists are merged by a second stage (decode
of one query over a long context). The q and weight projections are plain linears, which kernel
substitution gives to ``tide.ops.linear`` where the target has a layout for them.
"""

from __future__ import annotations

import numpy as np

from . import kernel


LOWEST = float(np.finfo(np.float32).min)  # the score of an empty list slot or a masked candidate
SENTINEL = 1 << 30  # entry ids of empty slots (SENTINEL + slot) and masked candidates


def _better(av, ai, bv, bi):
    """1 when (av, ai) ranks before (bv, bi): higher score, or equal score and lower entry."""
    from tvm.script import tirx as T

    return T.Select(T.Or(av > bv, T.And(av == bv, ai < bi)), 1, 0)


def _merge_stages(prefix: str, n_cand: int, K: int):
    """A macro for one merge of ``n_cand`` candidates ``(cv[c], ci[c])`` into the sorted list
    ``(lv, li)`` of K slots: ranks by counting, scatter (ranks >= K go to a spare slot), copy back.
    Its block names start with ``prefix`` (a fresh macro per merge: the parser suffixes the block
    names of a macro's later expansions)."""
    from tvm.script import tirx as T

    @T.macro
    def merge(lv, li, nv, ni, rl, rc, cv, ci):
        with T.sblock(prefix + "rank_list_scope"):
            for i, c in T.grid(K, n_cand):
                with T.sblock(prefix + "rank_list"):
                    vi, vc = T.axis.remap("SR", [i, c])
                    with T.init():
                        rl[vi] = vi
                    rl[vi] = rl[vi] + _better(cv[vc], ci[vc], lv[vi], li[vi])
        with T.sblock(prefix + "rank_cand_scope"):
            for c, o in T.grid(n_cand, K + n_cand):
                with T.sblock(prefix + "rank_cand"):
                    vc, vo = T.axis.remap("SR", [c, o])
                    with T.init():
                        rc[vc] = 0
                    rc[vc] = rc[vc] + T.if_then_else(
                        vo < K, _better(lv[T.min(vo, K - 1)], li[T.min(vo, K - 1)], cv[vc], ci[vc]),
                        _better(cv[T.max(vo - K, 0)], ci[T.max(vo - K, 0)], cv[vc], ci[vc]))
        for i in range(K):
            with T.sblock(prefix + "move_list"):
                vi = T.axis.remap("S", [i])
                T.reads(rl[vi], lv[vi], li[vi])
                T.writes(nv[0:K + 1], ni[0:K + 1])
                nv[T.min(rl[vi], K)] = lv[vi]
                ni[T.min(rl[vi], K)] = li[vi]
        for c in range(n_cand):
            with T.sblock(prefix + "move_cand"):
                vc = T.axis.remap("S", [c])
                T.reads(rc[vc], cv[vc], ci[vc])
                T.writes(nv[0:K + 1], ni[0:K + 1])
                nv[T.min(rc[vc], K)] = cv[vc]
                ni[T.min(rc[vc], K)] = ci[vc]
        for i in range(K):
            with T.sblock(prefix + "commit"):
                vi = T.axis.remap("S", [i])
                lv[vi] = nv[vi]
                li[vi] = ni[vi]

    return merge


@kernel.builder
def prim_func(batch: int, seq: int, heads: int, head_dim: int, rope_dim: int, cache_rows: int, new_rows: int,
              ratio: int, top_k: int, scale: float, entry_block: int = 8, splits: int = 1,
              name: str = "tide_lightning_indexer"):
    """The unscheduled kernel: ``q [B,S,Hi,Di]`` (before RoPE), ``cos``/``sin [B,S,rd/2]``,
    ``w [B,S,Hi]`` (``weights_proj x``; ``scale`` = weights_scale * softmax_scale), ``cache
    [B,C,Di]``, ``entries [B,nb,Di]``, ``start_pos [B]`` -> ``indices [B,S,k]`` int64, ``valid
    [B,S,k]`` bool. Each target's ``indexer`` rule schedules it."""
    from tvm.script import tirx as T

    B, S, Hi, Di, rd, C, E, r, K = batch, seq, heads, head_dim, rope_dim, cache_rows, new_rows, ratio, top_k
    NB = entry_block
    if not 1 <= K <= C:
        raise ValueError(f"indexer top-k needs 1 <= k <= {C} cache rows, got {K}")
    if rd % 2 or not 0 < rd <= Di:
        raise ValueError(f"rope_dim {rd} must be even and within head_dim {Di}")
    n_tiles = -(-C // NB)
    P = max(1, min(splits, n_tiles))
    TPS = -(-n_tiles // P)
    P = -(-n_tiles // TPS)
    off = Di - rd
    PEND = max(4 * NB, 32)
    merge_full = _merge_stages("", PEND, K)  # the pending buffer, when nearly full
    merge_last = _merge_stages("f_", PEND, K)  # the pending buffer, once at the end
    merge_parts = _merge_stages("m_", K, K)  # a split's list, in the second stage

    def visible(start_pos, vb, vs):
        """``(pos + 1) // ratio`` of query (vb, vs): its entries below this are visible."""
        return T.Cast("int32", (start_pos[vb] + T.int64(vs) + T.int64(1)) // T.int64(r))

    def n_visible(start_pos, vb, vs):
        """How many of query (vb, vs)'s picks are visible entries."""
        return T.min(T.min(visible(start_pos, vb, vs), C), K)

    def key_at(cache, entries, start_pos, vb, e, d):
        """Channel ``d`` of entry ``e``: this call's candidate or the cache row."""
        base = T.Cast("int32", start_pos[vb] // T.int64(r))
        return T.if_then_else(T.And(e >= base, e - base < E), entries[vb, T.max(T.min(e - base, E - 1), 0), d],
                              cache[vb, T.min(e, C - 1), d])

    def beats(cv, ci, lv, li, j):
        """1 when candidate j ranks before the list's last element."""
        return _better(cv[j], ci[j], lv[K - 1], li[K - 1])

    def pend_slot(pcnt, cv, ci, lv, li, vj):
        """The pending slot of candidate vj: the count so far plus the earlier candidates kept."""
        slot = pcnt[0]
        for c in range(NB):
            slot = slot + T.Select(T.int32(c) < vj, beats(cv, ci, lv, li, c), 0)
        return slot

    @T.macro
    def emit(lv, li, start_pos, indices, valid, vb, vs):
        for i in range(K):
            with T.sblock("emit"):
                vi = T.axis.remap("S", [i])
                T.reads(lv[vi], li[vi], start_pos[vb])
                T.writes(indices[vb, vs, vi], valid[vb, vs, vi])
                indices[vb, vs, vi] = T.Cast("int64", T.Select(
                    vi < n_visible(start_pos, vb, vs), li[vi],
                    T.min(visible(start_pos, vb, vs), C) + vi - n_visible(start_pos, vb, vs)))
                valid[vb, vs, vi] = vi < visible(start_pos, vb, vs)

    @T.prim_func(s_tir=True)
    def indexer(q: T.Buffer((B, S, Hi, Di), "float32"), cos: T.Buffer((B, S, rd // 2), "float32"),
                sin: T.Buffer((B, S, rd // 2), "float32"), w: T.Buffer((B, S, Hi), "float32"),
                cache: T.Buffer((B, C, Di), "float32"), entries: T.Buffer((B, E, Di), "float32"),
                start_pos: T.Buffer((B,), "int64"), indices: T.Buffer((B, S, K), "int64"),
                valid: T.Buffer((B, S, K), "bool")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        with T.sblock("root"):
            if P > 1:
                part_v = T.alloc_buffer((B, S, P, K), "float32")
                part_i = T.alloc_buffer((B, S, P, K), "int32")
            for b, s, p in T.grid(B, S, P):
                with T.sblock("score"):
                    vb, vs, vp = T.axis.remap("SSS", [b, s, p])
                    T.reads(q[vb, vs, 0:Hi, 0:Di], cos[vb, vs, 0:rd // 2], sin[vb, vs, 0:rd // 2], w[vb, vs, 0:Hi],
                            cache[vb, 0:C, 0:Di], entries[vb, 0:E, 0:Di], start_pos[vb])
                    if P == 1:
                        T.writes(indices[vb, vs, 0:K], valid[vb, vs, 0:K])
                    else:
                        T.writes(part_v[vb, vs, vp, 0:K], part_i[vb, vs, vp, 0:K])
                    qt = T.sblock_alloc_buffer((Di, Hi), "float32")
                    wv = T.sblock_alloc_buffer((Hi,), "float32")
                    tile = T.sblock_alloc_buffer((NB, Di), "float32")
                    dots = T.sblock_alloc_buffer((NB, Hi), "float32")
                    sc = T.sblock_alloc_buffer((NB,), "float32")
                    cv = T.sblock_alloc_buffer((NB,), "float32")
                    ci = T.sblock_alloc_buffer((NB,), "int32")
                    pv = T.sblock_alloc_buffer((PEND + 1,), "float32")
                    pi = T.sblock_alloc_buffer((PEND + 1,), "int32")
                    rc = T.sblock_alloc_buffer((PEND,), "int32")
                    lv = T.sblock_alloc_buffer((K,), "float32")
                    li = T.sblock_alloc_buffer((K,), "int32")
                    nv = T.sblock_alloc_buffer((K + 1,), "float32")
                    ni = T.sblock_alloc_buffer((K + 1,), "int32")
                    rl = T.sblock_alloc_buffer((K,), "int32")
                    lim = T.sblock_alloc_buffer((1,), "int32")
                    ebase = T.sblock_alloc_buffer((1,), "int32")
                    pcnt = T.sblock_alloc_buffer((1,), "int32")
                    for d, h in T.grid(Di, Hi):
                        with T.sblock("q_load"):
                            vd, vh = T.axis.remap("SS", [d, h])
                            qt[vd, vh] = T.if_then_else(vd < off, q[vb, vs, vh, vd], T.if_then_else(
                                (vd - off) % 2 == 0,
                                q[vb, vs, vh, vd] * cos[vb, vs, T.max(vd - off, 0) // 2]
                                - q[vb, vs, vh, T.min(vd + 1, Di - 1)] * sin[vb, vs, T.max(vd - off, 0) // 2],
                                q[vb, vs, vh, vd] * cos[vb, vs, T.max(vd - off, 0) // 2]
                                + q[vb, vs, vh, T.max(vd - 1, 0)] * sin[vb, vs, T.max(vd - off, 0) // 2]))
                    for h in range(Hi):
                        with T.sblock("w_load"):
                            vh = T.axis.remap("S", [h])
                            wv[vh] = w[vb, vs, vh] * T.float32(scale)
                    for i in range(K):
                        with T.sblock("list_init"):
                            vi = T.axis.remap("S", [i])
                            lv[vi] = T.float32(LOWEST)
                            li[vi] = SENTINEL + vi
                    for i in range(PEND + 1):
                        with T.sblock("pend_init"):
                            vi = T.axis.remap("S", [i])
                            pv[vi] = T.float32(LOWEST)
                            pi[vi] = SENTINEL + K + vi
                    with T.sblock("limit"):
                        T.reads(start_pos[vb])
                        T.writes(lim[0], pcnt[0])
                        lim[0] = T.min(visible(start_pos, vb, vs), C)
                        pcnt[0] = 0
                    for t in range(T.max(T.min(TPS, (lim[0] + NB - 1) // NB - vp * TPS), 0)):
                        with T.sblock("tile_start"):
                            T.reads()
                            T.writes(ebase[0])
                            ebase[0] = (vp * TPS + t) * NB
                        for j, d in T.grid(NB, Di):
                            with T.sblock("tile_load"):
                                vj, vd = T.axis.remap("SS", [j, d])
                                tile[vj, vd] = T.if_then_else(ebase[0] + vj < lim[0],
                                                              key_at(cache, entries, start_pos, vb, ebase[0] + vj, vd),
                                                              T.float32(0))
                        with T.sblock("qk_scope"):
                            for j, h, d in T.grid(NB, Hi, Di):
                                with T.sblock("qk"):
                                    vj, vh, vd = T.axis.remap("SSR", [j, h, d])
                                    with T.init():
                                        dots[vj, vh] = T.float32(0)
                                    dots[vj, vh] = dots[vj, vh] + qt[vd, vh] * tile[vj, vd]
                        with T.sblock("weigh_scope"):
                            for j, h in T.grid(NB, Hi):
                                with T.sblock("weigh"):
                                    vj, vh = T.axis.remap("SR", [j, h])
                                    with T.init():
                                        sc[vj] = T.float32(0)
                                    sc[vj] = sc[vj] + wv[vh] * T.max(dots[vj, vh], T.float32(0))
                        for j in range(NB):
                            with T.sblock("cand"):
                                vj = T.axis.remap("S", [j])
                                cv[vj] = T.Select(ebase[0] + vj < lim[0], sc[vj], T.float32(LOWEST))
                                ci[vj] = T.Select(ebase[0] + vj < lim[0], ebase[0] + vj,
                                                  SENTINEL + K + PEND + 1 + (ebase[0] + vj))
                        for j in range(NB):
                            with T.sblock("pend"):
                                vj = T.axis.remap("S", [j])
                                T.reads(cv[0:NB], ci[0:NB], lv[K - 1], li[K - 1], pcnt[0])
                                T.writes(pv[0:PEND + 1], pi[0:PEND + 1])
                                pv[T.Select(beats(cv, ci, lv, li, vj) == 1, pend_slot(pcnt, cv, ci, lv, li, vj),
                                            PEND)] = cv[vj]
                                pi[T.Select(beats(cv, ci, lv, li, vj) == 1, pend_slot(pcnt, cv, ci, lv, li, vj),
                                            PEND)] = ci[vj]
                        with T.sblock("pend_count"):
                            T.reads(cv[0:NB], ci[0:NB], lv[K - 1], li[K - 1])
                            T.writes(pcnt[0])
                            for j in range(NB):
                                pcnt[0] = pcnt[0] + beats(cv, ci, lv, li, j)
                        for u in range(T.Select(pcnt[0] > PEND - NB, 1, 0)):
                            merge_full(lv, li, nv, ni, rl, rc, pv, pi)
                            for i in range(PEND + 1):
                                with T.sblock("pend_reset"):
                                    vi = T.axis.remap("S", [i])
                                    pv[vi] = T.float32(LOWEST)
                                    pi[vi] = SENTINEL + K + vi
                            with T.sblock("pend_clear"):
                                T.reads()
                                T.writes(pcnt[0])
                                pcnt[0] = 0
                    for u in range(T.min(pcnt[0], 1)):
                        merge_last(lv, li, nv, ni, rl, rc, pv, pi)
                    if P == 1:
                        emit(lv, li, start_pos, indices, valid, vb, vs)
                    else:
                        for i in range(K):
                            with T.sblock("store_part"):
                                vi = T.axis.remap("S", [i])
                                part_v[vb, vs, vp, vi] = lv[vi]
                                part_i[vb, vs, vp, vi] = li[vi]
            if P > 1:
                for b, s in T.grid(B, S):
                    with T.sblock("merge"):
                        vb, vs = T.axis.remap("SS", [b, s])
                        T.reads(part_v[vb, vs, 0:P, 0:K], part_i[vb, vs, 0:P, 0:K], start_pos[vb])
                        T.writes(indices[vb, vs, 0:K], valid[vb, vs, 0:K])
                        lv = T.sblock_alloc_buffer((K,), "float32")
                        li = T.sblock_alloc_buffer((K,), "int32")
                        nv = T.sblock_alloc_buffer((K + 1,), "float32")
                        ni = T.sblock_alloc_buffer((K + 1,), "int32")
                        rl = T.sblock_alloc_buffer((K,), "int32")
                        rc = T.sblock_alloc_buffer((K,), "int32")
                        pv = T.sblock_alloc_buffer((K,), "float32")
                        pi = T.sblock_alloc_buffer((K,), "int32")
                        pcur = T.sblock_alloc_buffer((1,), "int32")
                        for i in range(K):
                            with T.sblock("m_list_init"):
                                vi = T.axis.remap("S", [i])
                                lv[vi] = part_v[vb, vs, 0, vi]
                                li[vi] = part_i[vb, vs, 0, vi]
                        for p in range(1, P):
                            with T.sblock("m_part"):
                                T.reads()
                                T.writes(pcur[0])
                                pcur[0] = p
                            for i in range(K):
                                with T.sblock("m_load"):
                                    vi = T.axis.remap("S", [i])
                                    T.reads(part_v[vb, vs, pcur[0], vi], part_i[vb, vs, pcur[0], vi])
                                    T.writes(pv[vi], pi[vi])
                                    pv[vi] = part_v[vb, vs, pcur[0], vi]
                                    pi[vi] = part_i[vb, vs, pcur[0], vi]
                            merge_parts(lv, li, nv, ni, rl, rc, pv, pi)
                        emit(lv, li, start_pos, indices, valid, vb, vs)

    return indexer


def rope_reference(x, cos, sin, rope_dim: int):
    """Interleaved RoPE on the last ``rope_dim`` channels (docs/onnx-contract.md, RoPE)."""
    x = np.asarray(x, np.float64)
    out = x.copy()
    rot = x[..., x.shape[-1] - rope_dim:]
    x0, x1 = rot[..., 0::2], rot[..., 1::2]
    out[..., x.shape[-1] - rope_dim::2] = x0 * cos - x1 * sin
    out[..., x.shape[-1] - rope_dim + 1::2] = x1 * cos + x0 * sin
    return out


def scores_reference(q, cos, sin, w, cache, entries, start_pos, ratio: int, rope_dim: int, scale: float):
    """float64 ``[B, S, C]`` scores with invisible entries at -inf (the ONNX body before TopK);
    ``q`` before RoPE, ``w`` unscaled."""
    qr = rope_reference(q, np.asarray(cos, np.float64)[:, :, None], np.asarray(sin, np.float64)[:, :, None], rope_dim)
    cache = np.asarray(cache, np.float64)
    B, S = qr.shape[:2]
    C, E = cache.shape[1], entries.shape[1]
    keys = cache.copy()
    for b in range(B):
        base = int(start_pos[b]) // ratio
        n_new = max(0, min(E, C - base))
        keys[b, base:base + n_new] = np.asarray(entries, np.float64)[b, :n_new]
    dots = np.einsum("bshd,bcd->bshc", qr, keys)
    scores = np.einsum("bsh,bshc->bsc", np.asarray(w, np.float64) * scale, np.maximum(dots, 0))
    threshold = (np.asarray(start_pos)[:, None] + np.arange(S)[None] + 1) // ratio
    return np.where(np.arange(C)[None, None] < threshold[..., None], scores, -np.inf), threshold


def reference(q, cos, sin, w, cache, entries, start_pos, ratio: int, rope_dim: int, top_k: int, scale: float):
    """``(indices int64 [B,S,k], valid bool [B,S,k])``: TopK (sorted, lower index first on ties)."""
    scores, threshold = scores_reference(q, cos, sin, w, cache, entries, start_pos, ratio, rope_dim, scale)
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :top_k].astype(np.int64)
    return order, order < threshold[..., None]


def cost(batch: int, seq: int, heads: int, head_dim: int, visible: int, top_k: int, itemsize: int = 4) -> dict:
    """Dots and the weighted ReLU sum over the visible entries; selection comparisons are not
    counted. Bytes: q, weights and each visible key read once per query row, the picks written."""
    rows = batch * seq
    flops = rows * visible * heads * (2 * head_dim + 3)
    bytes_ = rows * (heads * head_dim + heads + visible * head_dim) * itemsize + rows * top_k * 9
    return {"flops": flops, "bytes": bytes_}


def blocking(batch: int, seq: int, cache_rows: int, top_k: int, entry_block: int, parallelism: int) -> dict:
    """Entries per tile and entry-range splits for a target that tiles ``entry_block`` entries and
    wants ``parallelism`` independent (batch, query, split) tasks: a split must cover several
    times top_k entries for its list merge to pay off."""
    splits = max(1, min(-(-parallelism // (batch * seq)), cache_rows // (8 * top_k)))
    return {"entry_block": entry_block, "splits": splits}


def relax_convert(bb, inputs, attrs, *, choose, report):
    """``tide.LightningIndexer(q_residual, x, cos, sin, cache, entries, start_pos, q_weight,
    weights_proj)`` -> the two projections (linears) and one call of this kernel."""
    from tvm import relax

    from .sink_attention import static_shape

    q_residual, x, cos, sin, cache, entries, start_pos, q_weight, weights_proj = inputs
    B, S, _ = static_shape(q_residual, "LightningIndexer q_residual")
    C, Di = static_shape(cache, "LightningIndexer cache")[1:]
    E = static_shape(entries, "LightningIndexer entries")[1]
    Hi = static_shape(weights_proj, "LightningIndexer weights_proj")[0]
    rd = int(attrs["rope_dim"])
    K = int(attrs["top_k"])
    ratio = int(attrs["ratio"])
    scale = float(attrs["softmax_scale"]) * float(attrs["weights_scale"])
    q = bb.emit(relax.op.reshape(bb.emit(relax.op.linear(q_residual, q_weight)), (B, S, Hi, Di)))
    w = bb.emit(relax.op.linear(x, weights_proj))
    name = f"tide_lightning_indexer_b{B}s{S}h{Hi}d{Di}c{C}e{E}k{K}r{ratio}"
    cfg = choose("indexer", batch=B, seq=S, cache_rows=C, top_k=K)
    func = prim_func(B, S, Hi, Di, rd, C, E, ratio, K, scale, name=name, **cfg)
    gv = kernel.add(bb, func, name, "indexer", batch=B, seq=S, heads=Hi, head_dim=Di, cache_rows=C, top_k=K,
                    **cost(B, S, Hi, Di, C, K))
    report.add(name, f"tide.LightningIndexer [B={B} S={S} Hi={Hi} Di={Di}, top-{K} of {C}]")
    out = bb.emit(relax.call_tir(gv, [q, cos, sin, w, cache, entries, start_pos], out_ty=[
        relax.TensorType((B, S, K), "int64"), relax.TensorType((B, S, K), "bool")]))
    return relax.Tuple([bb.emit(relax.TupleGetItem(out, 0)), bb.emit(relax.TupleGetItem(out, 1))])
