"""Shared-KV attention with a per-head sink (MQA): serves ``tide.SinkAttention``.

All H heads of a query token read the same latent entries (keys = values), so the kernel walks the
entries once per block of heads: for every ``entry_block`` entries it loads one tile, computes the
``[entry_block x head_block]`` logits, updates a blocked online softmax (running max, sum and
accumulator per head) and adds ``p @ tile`` to the accumulator. The running max starts at the sink
logit, the running sum at 1 (the sink's own weight, whose value is dropped), so a query that sees no
entry gets exact zeros. Each query first finds its first and last visible entry (bias > -inf) and
walks only the tiles in between: HCA's not-yet-visible compressed rows, the ring slots a prefill
query cannot see yet and the CSA picks the indexer marked invalid cost nothing.

Decode of one token is the same kernel with one query row: ``splits`` cuts the entry list into that
many ranges (split-K) whose partial states are merged by a second stage, so a long entry list keeps
every core (or every GPU multiprocessor) busy. Both stages are one PrimFunc; each target's
``sink_attention`` rule maps its loops to threads.

Precision: reads float32 (q, entries, biases, sinks) and computes and accumulates in float32 (logits,
softmax state, ``p @ tile``, the split-K merge); writes float32.

The kernel definition is shared with ``sink_attention_sparse`` (the CSA variant), which adds the
per-query top-k entries to the entry list (int64 indices, bool flags); ``build`` builds both.
"""

from __future__ import annotations

import math

import numpy as np

from . import kernel


MASKED = -1.0e30  # biases at or below this are masked entries (the graph passes -inf)


def _tiles(n_entries: int, entry_block: int, splits: int) -> tuple[int, int]:
    n_tiles = max(1, -(-n_entries // entry_block))
    splits = max(1, min(splits, n_tiles))
    return splits, -(-n_tiles // splits)


@kernel.builder
def build(name: str, batch: int, seq: int, heads: int, head_dim: int, n_kv: int, scale: float, head_block: int,
           entry_block: int, splits: int, sparse: dict | None):
    """The attention kernel. ``sparse`` (the CSA variant) holds ``top_k``, ``cache_rows``,
    ``new_rows`` and ``ratio``: after the ``n_kv`` shared entries, query s also reads its ``top_k``
    picks, row ``entries[w - start_pos // ratio]`` for ``w >= start_pos // ratio`` and ``cache[w]``
    otherwise; invalid picks are masked."""
    from tvm.script import tirx as T

    B, S, H, D, N = batch, seq, heads, head_dim, n_kv
    HB, NB = head_block, entry_block
    if H % HB:
        raise ValueError(f"head block {HB} does not divide {H} heads")
    picks = sparse is not None
    K, C, E, r = (sparse[k] for k in ("top_k", "cache_rows", "new_rows", "ratio")) if picks else (0, 0, 0, 0)
    P, TPS = _tiles(N + K, NB, splits)

    def bias_at(kv_bias, valid, vb, vs, e):
        """The additive bias of entry ``e`` of query (vb, vs), clamped to MASKED from below."""
        dense = T.max(kv_bias[vb, vs, T.min(e, N - 1)], T.float32(MASKED))
        if not picks:
            return T.if_then_else(e < N, dense, T.float32(MASKED))
        pick = valid[vb, vs, T.max(T.min(e - N, K - 1), 0)]
        return T.if_then_else(e < N, dense, T.if_then_else(T.And(e < N + K, pick), T.float32(0), T.float32(MASKED)))

    def row_at(kv, cache, entries, indices, start_pos, vb, vs, e, d):
        """Channel ``d`` of entry ``e``: a shared entry, or the picked compressed row."""
        dense = kv[vb, T.min(e, N - 1), d]
        if not picks:
            return dense
        w = indices[vb, vs, T.max(T.min(e - N, K - 1), 0)]
        base = start_pos[vb] // T.int64(r)
        new = entries[vb, T.max(T.min(w - base, T.int64(E - 1)), T.int64(0)), d]
        old = cache[vb, T.max(T.min(w, T.int64(C - 1)), T.int64(0)), d]
        return T.if_then_else(e < N, dense, T.if_then_else(w >= base, new, old))

    def pick_reads(cache, entries, indices, valid, start_pos, vb, vs):
        """The regions of the picks that query (vb, vs) reads (none for the dense kernel)."""
        if not picks:
            return []
        return [cache[vb, 0:C, 0:D], entries[vb, 0:E, 0:D], indices[vb, vs, 0:K], valid[vb, vs, 0:K],
                start_pos[vb]]

    @T.macro
    def attention(q, kv, kv_bias, cache, entries, indices, valid, start_pos, sinks, out):
        with T.sblock("root"):
            if P > 1:
                part_m = T.alloc_buffer((B, S, P, H), "float32")
                part_l = T.alloc_buffer((B, S, P, H), "float32")
                part_acc = T.alloc_buffer((B, S, P, H, D), "float32")
            for b, s, hb, p in T.grid(B, S, H // HB, P):
                with T.sblock("attn"):
                    vb, vs, vhb, vp = T.axis.remap("SSSS", [b, s, hb, p])
                    T.reads([q[vb, vs, vhb * HB:vhb * HB + HB, 0:D], kv[vb, 0:N, 0:D], kv_bias[vb, vs, 0:N],
                             sinks[vhb * HB:vhb * HB + HB]]
                            + pick_reads(cache, entries, indices, valid, start_pos, vb, vs))
                    if P == 1:
                        T.writes(out[vb, vs, vhb * HB:vhb * HB + HB, 0:D])
                    else:
                        T.writes(part_m[vb, vs, vp, vhb * HB:vhb * HB + HB],
                                 part_l[vb, vs, vp, vhb * HB:vhb * HB + HB],
                                 part_acc[vb, vs, vp, vhb * HB:vhb * HB + HB, 0:D])
                    qt = T.sblock_alloc_buffer((D, HB), "float32")
                    tile = T.sblock_alloc_buffer((NB, D), "float32")
                    tbias = T.sblock_alloc_buffer((NB,), "float32")
                    logit = T.sblock_alloc_buffer((NB, HB), "float32")
                    prob = T.sblock_alloc_buffer((NB, HB), "float32")
                    m = T.sblock_alloc_buffer((HB,), "float32")
                    mt = T.sblock_alloc_buffer((HB,), "float32")
                    alpha = T.sblock_alloc_buffer((HB,), "float32")
                    l = T.sblock_alloc_buffer((HB,), "float32")
                    acc = T.sblock_alloc_buffer((HB, D), "float32")
                    trange = T.sblock_alloc_buffer((2,), "int32")
                    ebase = T.sblock_alloc_buffer((1,), "int32")
                    for d, h in T.grid(D, HB):
                        with T.sblock("q_load"):
                            vd, vh = T.axis.remap("SS", [d, h])
                            qt[vd, vh] = q[vb, vs, vhb * HB + vh, vd] * T.float32(scale)
                    for h in range(HB):
                        with T.sblock("state_init"):
                            vh = T.axis.remap("S", [h])
                            m[vh] = sinks[vhb * HB + vh]
                            if P == 1:
                                l[vh] = T.float32(1)
                            else:
                                l[vh] = T.if_then_else(vp == 0, T.float32(1), T.float32(0))
                    for h, d in T.grid(HB, D):
                        with T.sblock("acc_init"):
                            vh, vd = T.axis.remap("SS", [h, d])
                            acc[vh, vd] = T.float32(0)
                    with T.sblock("tile_range"):
                        T.reads([kv_bias[vb, vs, 0:N], sinks[vhb * HB:vhb * HB + HB]]
                                + pick_reads(cache, entries, indices, valid, start_pos, vb, vs))
                        T.writes(trange[0:2])
                        trange[0] = TPS
                        trange[1] = 0
                        for e in range(TPS * NB):
                            trange[0] = T.min(trange[0], T.Select(
                                bias_at(kv_bias, valid, vb, vs, vp * (TPS * NB) + e) > T.float32(MASKED),
                                e // NB, TPS))
                            trange[1] = T.max(trange[1], T.Select(
                                bias_at(kv_bias, valid, vb, vs, vp * (TPS * NB) + e) > T.float32(MASKED),
                                e // NB + 1, 0))
                    for t in range(trange[0], trange[1]):
                        with T.sblock("tile_start"):
                            T.reads()
                            T.writes(ebase[0])
                            ebase[0] = (vp * TPS + t) * NB
                        for j in range(NB):
                            with T.sblock("bias_load"):
                                vj = T.axis.remap("S", [j])
                                tbias[vj] = bias_at(kv_bias, valid, vb, vs, ebase[0] + vj)
                        for j, d in T.grid(NB, D):
                            with T.sblock("tile_load"):
                                vj, vd = T.axis.remap("SS", [j, d])
                                tile[vj, vd] = T.if_then_else(
                                    tbias[vj] > T.float32(MASKED),
                                    row_at(kv, cache, entries, indices, start_pos, vb, vs, ebase[0] + vj, vd),
                                    T.float32(0))
                        with T.sblock("qk_scope"):
                            for j, h, d in T.grid(NB, HB, D):
                                with T.sblock("qk"):
                                    vj, vh, vd = T.axis.remap("SSR", [j, h, d])
                                    with T.init():
                                        logit[vj, vh] = T.float32(0)
                                    logit[vj, vh] = logit[vj, vh] + qt[vd, vh] * tile[vj, vd]
                        with T.sblock("tile_max_scope"):
                            for h, j in T.grid(HB, NB):
                                with T.sblock("tile_max"):
                                    vh, vj = T.axis.remap("SR", [h, j])
                                    with T.init():
                                        mt[vh] = m[vh]
                                    mt[vh] = T.max(mt[vh], logit[vj, vh] + tbias[vj])
                        for h in range(HB):
                            with T.sblock("rescale"):
                                vh = T.axis.remap("S", [h])
                                alpha[vh] = T.exp(m[vh] - mt[vh])
                        for j, h in T.grid(NB, HB):
                            with T.sblock("prob"):
                                vj, vh = T.axis.remap("SS", [j, h])
                                prob[vj, vh] = T.exp(logit[vj, vh] + tbias[vj] - mt[vh])
                        with T.sblock("row_sum_scope"):
                            for h, j in T.grid(HB, NB):
                                with T.sblock("row_sum"):
                                    vh, vj = T.axis.remap("SR", [h, j])
                                    with T.init():
                                        l[vh] = l[vh] * alpha[vh]
                                    l[vh] = l[vh] + prob[vj, vh]
                        with T.sblock("pv_scope"):
                            for h, d, j in T.grid(HB, D, NB):
                                with T.sblock("pv"):
                                    vh, vd, vj = T.axis.remap("SSR", [h, d, j])
                                    with T.init():
                                        acc[vh, vd] = acc[vh, vd] * alpha[vh]
                                    acc[vh, vd] = acc[vh, vd] + prob[vj, vh] * tile[vj, vd]
                        for h in range(HB):
                            with T.sblock("max_update"):
                                vh = T.axis.remap("S", [h])
                                m[vh] = mt[vh]
                    if P == 1:
                        for h, d in T.grid(HB, D):
                            with T.sblock("store"):
                                vh, vd = T.axis.remap("SS", [h, d])
                                out[vb, vs, vhb * HB + vh, vd] = acc[vh, vd] / l[vh]
                    else:
                        for h in range(HB):
                            with T.sblock("store_ml"):
                                vh = T.axis.remap("S", [h])
                                part_m[vb, vs, vp, vhb * HB + vh] = m[vh]
                                part_l[vb, vs, vp, vhb * HB + vh] = l[vh]
                        for h, d in T.grid(HB, D):
                            with T.sblock("store_acc"):
                                vh, vd = T.axis.remap("SS", [h, d])
                                part_acc[vb, vs, vp, vhb * HB + vh, vd] = acc[vh, vd]
            if P > 1:
                merge_m = T.alloc_buffer((B, S, H), "float32")
                merge_l = T.alloc_buffer((B, S, H), "float32")
                merge_w = T.alloc_buffer((B, S, H, P), "float32")
                for b, s, h, p in T.grid(B, S, H, P):
                    with T.sblock("merge_max"):
                        vb, vs, vh, vp = T.axis.remap("SSSR", [b, s, h, p])
                        with T.init():
                            merge_m[vb, vs, vh] = part_m[vb, vs, 0, vh]
                        merge_m[vb, vs, vh] = T.max(merge_m[vb, vs, vh], part_m[vb, vs, vp, vh])
                for b, s, h, p in T.grid(B, S, H, P):
                    with T.sblock("merge_sum"):
                        vb, vs, vh, vp = T.axis.remap("SSSR", [b, s, h, p])
                        with T.init():
                            merge_l[vb, vs, vh] = T.float32(0)
                        merge_l[vb, vs, vh] = merge_l[vb, vs, vh] + part_l[vb, vs, vp, vh] * T.exp(
                            part_m[vb, vs, vp, vh] - merge_m[vb, vs, vh])
                for b, s, p, h in T.grid(B, S, P, H):
                    with T.sblock("merge_weight"):
                        vb, vs, vp, vh = T.axis.remap("SSSS", [b, s, p, h])
                        merge_w[vb, vs, vh, vp] = (T.exp(part_m[vb, vs, vp, vh] - merge_m[vb, vs, vh])
                                                   / merge_l[vb, vs, vh])
                for b, s, h, d, p in T.grid(B, S, H, D, P):
                    with T.sblock("merge"):
                        vb, vs, vh, vd, vp = T.axis.remap("SSSSR", [b, s, h, d, p])
                        with T.init():
                            out[vb, vs, vh, vd] = T.float32(0)
                        out[vb, vs, vh, vd] = (out[vb, vs, vh, vd]
                                               + part_acc[vb, vs, vp, vh, vd] * merge_w[vb, vs, vh, vp])

    if not picks:
        @T.prim_func(s_tir=True)
        def dense(q: T.Buffer((B, S, H, D), "float32"), kv: T.Buffer((B, N, D), "float32"),
                  kv_bias: T.Buffer((B, S, N), "float32"), sinks: T.Buffer((H,), "float32"),
                  out: T.Buffer((B, S, H, D), "float32")):
            T.func_attr({"global_symbol": name, "tirx.noalias": True})
            attention(q, kv, kv_bias, None, None, None, None, None, sinks, out)

        return dense

    @T.prim_func(s_tir=True)
    def csa(q: T.Buffer((B, S, H, D), "float32"), kv: T.Buffer((B, N, D), "float32"),
            kv_bias: T.Buffer((B, S, N), "float32"), cache: T.Buffer((B, C, D), "float32"),
            entries: T.Buffer((B, E, D), "float32"), indices: T.Buffer((B, S, K), "int64"),
            valid: T.Buffer((B, S, K), "bool"), start_pos: T.Buffer((B,), "int64"), sinks: T.Buffer((H,), "float32"),
            out: T.Buffer((B, S, H, D), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        attention(q, kv, kv_bias, cache, entries, indices, valid, start_pos, sinks, out)

    return csa


@kernel.builder
def prim_func(batch: int, seq: int, heads: int, head_dim: int, n_kv: int, scale: float,
              head_block: int | None = None, entry_block: int = 16, splits: int = 1,
              name: str = "tide_sink_attention"):
    """The unscheduled kernel for ``q [B,S,H,Dh]``, ``kv [B,N,Dh]``, ``kv_bias [B,S,N]``,
    ``sinks [H]`` -> ``out [B,S,H,Dh]``; each target's ``sink_attention`` rule schedules it."""
    head_block = head_block or default_head_block(heads)
    return build(name, batch, seq, heads, head_dim, n_kv, scale, head_block, entry_block, splits, None)


def default_head_block(heads: int) -> int:
    """16 heads (one 512-bit fp32 vector) per block, fewer when H is not a multiple of 16."""
    return math.gcd(heads, 16)


def static_shape(expr, what: str) -> list[int]:
    """The static shape of a float32 Relax input (tide's attention kernels are fp32 throughout)."""
    from ..compiler.errors import CompileError

    shape = [int(d) for d in expr.ty.shape]
    if str(expr.ty.dtype) != "float32":
        raise CompileError(f"{what} must be float32, got {expr.ty.dtype}")
    return shape


def blocking(batch: int, seq: int, heads: int, entries: int, entry_block: int, parallelism: int) -> dict:
    """Blocking of the kernel for a target that tiles ``entry_block`` entries and wants
    ``parallelism`` independent (batch, query, head block, split) tasks per call: 16 heads per
    block, and split-K only as far as the tasks fall short and every range keeps 8 tiles."""
    head_block = default_head_block(heads)
    rows = batch * seq * (heads // head_block)
    tiles = -(-entries // entry_block)
    splits = max(1, min(-(-parallelism // rows), tiles // 8))
    return {"head_block": head_block, "entry_block": entry_block, "splits": splits}


def relax_convert(bb, inputs, attrs, *, choose, report, model_dtype="float32"):
    """``tide.SinkAttention(q, kv, kv_bias, sinks)`` -> one call of this kernel, blocked as the
    target chooses (a target variant, e.g. CUDA's tensor-core prefill, is tagged for its rule)."""
    from tvm import relax

    q, kv, kv_bias, sinks = inputs
    B, S, H, D = static_shape(q, "SinkAttention q")
    N = static_shape(kv, "SinkAttention kv")[1]
    scale = float(attrs["scale"])
    cfg = choose("sink_attention", batch=B, seq=S, heads=H, head_dim=D, entries=N, model_dtype=model_dtype)
    variant = cfg.pop("variant", "")
    name = f"tide_sink_attention_b{B}s{S}h{H}d{D}n{N}" + (f"_{variant}" if variant else "")
    func = prim_func(B, S, H, D, N, scale, name=name, **cfg)
    gv = kernel.add(bb, func, name, "sink_attention", batch=B, seq=S, heads=H, head_dim=D, n_kv=N, scale=scale,
                    variant=variant, **cost(B, S, H, D, N))
    report.add(name, f"tide.SinkAttention [B={B} S={S} H={H} Dh={D}, {N} shared entries]")
    return relax.call_tir(gv, [q, kv, kv_bias, sinks], out_ty=relax.TensorType((B, S, H, D), "float32"))


def reference(q, kv, kv_bias, sinks, scale: float) -> np.ndarray:
    """float64: ``softmax([q.kv_n * scale + kv_bias_n ..., sink_h])`` without the sink, times kv."""
    q, kv, kv_bias, sinks = (np.asarray(a, np.float64) for a in (q, kv, kv_bias, sinks))
    logits = np.einsum("bshd,bnd->bshn", q, kv) * scale + kv_bias[:, :, None, :]
    sink = np.broadcast_to(sinks[None, None, :, None], logits.shape[:3] + (1,))
    full = np.concatenate([logits, sink], axis=-1)
    full = np.exp(full - full.max(axis=-1, keepdims=True))
    probs = full / full.sum(axis=-1, keepdims=True)
    return np.einsum("bshn,bnd->bshd", probs[..., :-1], kv)


def cost(batch: int, seq: int, heads: int, head_dim: int, n_kv: int, visible: int | None = None,
         itemsize: int = 4) -> dict:
    """Two FLOPs per multiply-add of q.kv and p@kv over the visible entries (all by default) plus
    the softmax; bytes: q, out, the bias and each entry read once."""
    vis = n_kv if visible is None else visible
    flops = batch * seq * heads * (4 * vis * head_dim + 5 * vis)
    bytes_ = (2 * batch * seq * heads * head_dim + batch * n_kv * head_dim + batch * seq * n_kv + heads) * itemsize
    return {"flops": flops, "bytes": bytes_}
