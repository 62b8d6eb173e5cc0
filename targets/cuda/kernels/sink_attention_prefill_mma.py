"""Sink attention prefill on CUDA tensor cores (``mma.sync.m16n8k16``, bfloat16 in, float32 accumulate).

The same contract as ``tide.ops.sink_attention`` (dense: SinkAttention) and
``tide.ops.sink_attention_sparse`` (CSA: SparseSinkAttention), same parameters, for a chunk of query
tokens on CUDA: the compute-bound regime. A thread block serves one query token and 16 of its heads
(the mma's M: all those heads share the token's K = V latent entries, so every fragment of an entry
tile feeds 16 heads); its 4 warps split the head dimension into quarters.

Per tile of ``ENTRY_TILE`` (32) entries of the query's list (the shared entries, then, for CSA, its
top-k picks gathered from the cache or this call's candidates):

1. warp w computes the partial logits ``q[:, Dw] . kv[e, Dw]^T`` of its channel quarter ``Dw`` for
   the 16 heads x 32 entries (the A fragments of q stay in registers for the whole block);
2. the partials are summed through shared memory, plus the entry biases (window/causal mask, the
   invalid picks at ``MASKED``);
3. blocked online softmax: every lane keeps the running max and sum of its two rows (heads g and
   g + 8 of the fragment layout), starting at the sink logit with sum 1 (the sink's own weight);
   the accumulators are rescaled by ``exp(m_old - m_new)``;
4. ``acc[:, Dw] += p @ kv[:, Dw]``: the probabilities as A fragments, the entry rows as B.

Only the tiles between the query's first and last visible entry are walked (as in the SIMT kernel;
the 128 threads find them together, each checking every 128th entry).
Fragments are loaded straight from global memory (L1/L2 serve the four warps and the 16 heads;
with 64 or 128 heads, 4 or 8 blocks read a token's entries, from L2); entry-tile staging in shared
memory with ``ldmatrix``/``cp.async`` is the next step. At head_dim 512 a thread holds 64
accumulators and 64 q halves in registers (ptxas: 238 registers, no stack) and a block uses 11 KiB
of static shared memory.

Precision contract (bfloat16 tensor cores). ``q * scale`` and the entry rows are rounded to
bfloat16 as they are loaded; logits, the softmax state and the accumulators are float32; each
probability ``p = exp(logit - m)`` is rounded to bfloat16 for the ``p @ kv`` product while the sum
``l`` accumulates the unrounded float32 ``p``. So the kernel equals, up to float32 accumulation and
the bfloat16 rounding of ``p`` (relative 2**-9 per probability: an output error of at most about
``2**-9 * max|kv|``), the float64 attention of the bfloat16-rounded ``q * scale`` and entries
(``reference``). That is the precision of a bfloat16 model: the compiler picks this kernel for
CUDA prefill of models whose weights are bfloat16 (the CUDA target's ``sink_attention`` choice).
float32 models keep the exact float32 SIMT kernel: rounding their activations to bfloat16 would
move the outputs by ~1e-3 relative, far beyond their 2e-5 tolerance.
"""

from __future__ import annotations

import numpy as np

from ....ops import kernel
from ....ops.sink_attention import MASKED

MMA_M = 16  # heads per thread block
MMA_K = 16
MMA_N = 8
WARPS = 4  # channel quarters
ENTRY_TILE = 32  # entries per tile: 4 n8 tiles of logits per warp, 2 k16 steps of p @ kv


def supported(heads: int, head_dim: int) -> bool:
    """Each warp's channel quarter must tile by the mma's K (16) and N (8)."""
    return heads >= 1 and head_dim % (WARPS * MMA_K) == 0  # heads pad to 16


def _frag_k(start, half, lane, j):
    """The K index, after ``start``, of a lane's A (column) or B (row) fragment element: 2q, 2q + 1,
    2q + 8, 2q + 9 for ``half`` 0, 1 and ``j`` 0, 1 (q = lane % 4)."""
    return start + half * 8 + lane % 4 * 2 + j


@kernel.builder
def prim_func(batch: int, seq: int, heads: int, head_dim: int, n_kv: int, scale: float,
              sparse: dict | None = None, name: str = "tide_sink_attention_mma"):
    """The tensor-core kernel with the parameters of ``sink_attention.prim_func`` (``sparse`` None)
    or ``sink_attention_sparse.prim_func`` (``sparse``: ``top_k``, ``cache_rows``, ``new_rows``,
    ``ratio``). Written with its thread mapping (CUDA only)."""
    from tvm.script import tirx as T

    B, S, H, D, N = batch, seq, heads, head_dim, n_kv
    if not supported(H, D):
        raise ValueError(f"sink_attention_prefill_mma: head_dim {D} must be a multiple of {WARPS * MMA_K}")
    K = sparse["top_k"] if sparse else 0
    L = N + K  # entries in each query's list
    HT = -(-H // MMA_M)
    DQ = D // WARPS
    KS, NT = DQ // MMA_K, DQ // MMA_N
    NE = ENTRY_TILE
    n_tiles = -(-L // NE)
    masked = T.float32(MASKED)
    q_scale = T.float32(scale)
    if sparse:
        C, E, ratio = sparse["cache_rows"], sparse["new_rows"], sparse["ratio"]

    def vb(bx):
        """The block's batch row."""
        return bx // (S * HT)

    def vs(bx):
        """The block's query token."""
        return bx // HT % S

    def head(bx, lane, r):
        """The head of a lane's A or C fragment row in half r (rows g and g + 8 of the block's 16)."""
        return bx % HT * MMA_M + lane // 4 + r * 8

    def cell(i, warp, lane):
        """The logit (of 16 x 32) or the list entry a thread handles in its i-th round."""
        return i * (WARPS * 32) + warp * 32 + lane

    def bias_at(kv_bias, picks, bx, e):
        """The bias of entry ``e`` of the block's query, clamped to MASKED from below."""
        dense = T.max(kv_bias[vb(bx), vs(bx), T.min(e, N - 1)], masked)
        if not sparse:
            return T.if_then_else(e < N, dense, masked)
        _, _, _, valid, _ = picks
        pick = T.max(T.min(e - N, K - 1), 0)
        return T.if_then_else(e < N, dense, T.if_then_else(T.And(e < L, valid[vb(bx), vs(bx), pick]), T.float32(0),
                                                           masked))

    def source(picks, bx, e):
        """The source row of entry ``e``: kv row (< N), cache row N + c, or this call's candidate N + C + i."""
        if not sparse:
            return T.min(e, N - 1)
        _, _, indices, _, start_pos = picks
        base = start_pos[vb(bx)] // T.int64(ratio)
        w = indices[vb(bx), vs(bx), T.max(T.min(e - N, K - 1), 0)]
        return T.if_then_else(e < N, T.min(e, N - 1), T.Cast("int32", T.if_then_else(
            w >= base, T.int64(N + C) + T.max(T.min(w - base, T.int64(E - 1)), T.int64(0)),
            T.int64(N) + T.max(T.min(w, T.int64(C - 1)), T.int64(0)))))

    def row(kv, picks, bx, src, d):
        """Channel ``d`` of source row ``src``."""
        if not sparse:
            return kv[vb(bx), src, d]
        cache, entries, _, _, _ = picks
        return T.if_then_else(src < N, kv[vb(bx), T.min(src, N - 1), d], T.if_then_else(
            src < N + C, cache[vb(bx), T.max(T.min(src - N, C - 1), 0), d],
            entries[vb(bx), T.max(T.min(src - (N + C), E - 1), 0), d]))

    def entry(kv, picks, tb, tsrc, bx, j, d):
        """Channel ``d`` of tile entry ``j`` as bfloat16, 0 for a masked entry."""
        return T.Cast("bfloat16", T.if_then_else(tb[j] > masked, row(kv, picks, bx, tsrc[j], d), T.float32(0)))

    def tile_logit(spart, tb, c):
        """Logit ``c`` of the tile (head c // 32, entry c % 32): the warps' partial sums plus the entry's bias."""
        total = spart[0, c // NE, c % NE]
        for w in range(1, WARPS):
            total = total + spart[w, c // NE, c % NE]
        return total + tb[c % NE]

    # the kernel body; picks: the CSA buffers (cache, entries, indices, valid, start_pos), None when dense
    @T.macro
    def attention(q, kv, kv_bias, picks, sinks, out):
        for bx in T.thread_binding(B * S * HT, thread="blockIdx.x"):
            for warp in T.thread_binding(WARPS, thread="threadIdx.y"):
                for lane in T.thread_binding(32, thread="threadIdx.x"):
                    qa = T.alloc_buffer((KS * 8,), "bfloat16", scope="local")
                    kb = T.alloc_buffer((4,), "bfloat16", scope="local")
                    pa = T.alloc_buffer((8,), "bfloat16", scope="local")
                    sacc = T.alloc_buffer((16,), "float32", scope="local")
                    acc = T.alloc_buffer((NT * 4,), "float32", scope="local")
                    m = T.alloc_buffer((2,), "float32", scope="local")
                    mt = T.alloc_buffer((2,), "float32", scope="local")
                    ls = T.alloc_buffer((2,), "float32", scope="local")
                    rng = T.alloc_buffer((2,), "int32", scope="local")
                    spart = T.alloc_buffer((WARPS, MMA_M, NE), "float32", scope="shared")
                    logit = T.alloc_buffer((MMA_M, NE), "float32", scope="shared")
                    tb = T.alloc_buffer((NE,), "float32", scope="shared")
                    tsrc = T.alloc_buffer((NE,), "int32", scope="shared")
                    tiles_lo = T.alloc_buffer((WARPS * 32,), "int32", scope="shared")
                    tiles_hi = T.alloc_buffer((WARPS * 32,), "int32", scope="shared")
                    for ks in T.unroll(KS):
                        for half in T.unroll(2):
                            for r in T.unroll(2):
                                for j in T.unroll(2):
                                    qa[ks * 8 + half * 4 + r * 2 + j] = T.Cast("bfloat16", T.if_then_else(
                                        head(bx, lane, r) < H,
                                        q[vb(bx), vs(bx), T.min(head(bx, lane, r), H - 1),
                                          _frag_k(warp * DQ + ks * 16, half, lane, j)] * q_scale,
                                        T.float32(0)))
                    for r in T.unroll(2):
                        m[r] = T.if_then_else(head(bx, lane, r) < H, sinks[T.min(head(bx, lane, r), H - 1)],
                                              T.float32(0))
                        ls[r] = T.float32(1)
                    for i in T.unroll(NT * 4):
                        acc[i] = T.float32(0)
                    rng[0] = n_tiles
                    rng[1] = 0
                    for i in range(-(-n_tiles * NE // (WARPS * 32))):
                        rng[0] = T.min(rng[0], T.Select(bias_at(kv_bias, picks, bx, cell(i, warp, lane)) > masked,
                                                        cell(i, warp, lane) // NE, n_tiles))
                        rng[1] = T.max(rng[1], T.Select(bias_at(kv_bias, picks, bx, cell(i, warp, lane)) > masked,
                                                        cell(i, warp, lane) // NE + 1, 0))
                    tiles_lo[warp * 32 + lane] = rng[0]
                    tiles_hi[warp * 32 + lane] = rng[1]
                    T.tvm_storage_sync("shared")
                    for i in range(WARPS * 32):
                        rng[0] = T.min(rng[0], tiles_lo[i])
                        rng[1] = T.max(rng[1], tiles_hi[i])
                    for t in range(rng[0], rng[1]):
                        if warp == 0:
                            tb[lane] = bias_at(kv_bias, picks, bx, t * NE + lane)
                            tsrc[lane] = source(picks, bx, t * NE + lane)
                        T.tvm_storage_sync("shared")
                        for i in T.unroll(16):
                            sacc[i] = T.float32(0)
                        for n in T.unroll(4):
                            for ks in T.unroll(KS):
                                for half in T.unroll(2):
                                    for j in T.unroll(2):
                                        kb[half * 2 + j] = entry(kv, picks, tb, tsrc, bx, n * 8 + lane // 4,
                                                                 _frag_k(warp * DQ + ks * 16, half, lane, j))
                                T.evaluate(T.ptx_legacy.mma("m16n8k16", "row", "col", "bf16", "bf16", "fp32",
                                                            qa.data, ks * 8, kb.data, 0, sacc.data, n * 4, False,
                                                            dtype="float32"))
                        for n in T.unroll(4):
                            for r in T.unroll(2):
                                for j in T.unroll(2):
                                    spart[warp, lane // 4 + r * 8, n * 8 + lane % 4 * 2 + j] = sacc[n * 4 + r * 2 + j]
                        T.tvm_storage_sync("shared")
                        for i in range(MMA_M * NE // (WARPS * 32)):
                            logit[cell(i, warp, lane) // NE, cell(i, warp, lane) % NE] = tile_logit(
                                spart, tb, cell(i, warp, lane))
                        T.tvm_storage_sync("shared")
                        for r in T.unroll(2):
                            mt[r] = m[r]
                            for j in range(NE):
                                mt[r] = T.max(mt[r], logit[lane // 4 + r * 8, j])
                            ls[r] = ls[r] * T.exp(m[r] - mt[r])
                            for j in range(NE):
                                ls[r] = ls[r] + T.exp(logit[lane // 4 + r * 8, j] - mt[r])
                        for n in T.unroll(NT):
                            for r in T.unroll(2):
                                for j in T.unroll(2):
                                    acc[n * 4 + r * 2 + j] = acc[n * 4 + r * 2 + j] * T.exp(m[r] - mt[r])
                        for ks in T.unroll(2):
                            for half in T.unroll(2):
                                for r in T.unroll(2):
                                    for j in T.unroll(2):
                                        pa[half * 4 + r * 2 + j] = T.Cast("bfloat16", T.exp(
                                            logit[lane // 4 + r * 8, _frag_k(ks * 16, half, lane, j)] - mt[r]))
                            for n in T.unroll(NT):
                                for half in T.unroll(2):
                                    for j in T.unroll(2):
                                        kb[half * 2 + j] = entry(kv, picks, tb, tsrc, bx,
                                                                 _frag_k(ks * 16, half, lane, j),
                                                                 warp * DQ + n * 8 + lane // 4)
                                T.evaluate(T.ptx_legacy.mma("m16n8k16", "row", "col", "bf16", "bf16", "fp32",
                                                            pa.data, 0, kb.data, 0, acc.data, n * 4, False,
                                                            dtype="float32"))
                        for r in T.unroll(2):
                            m[r] = mt[r]
                        T.tvm_storage_sync("shared")
                    for n in T.unroll(NT):
                        for r in T.unroll(2):
                            for j in T.unroll(2):
                                if head(bx, lane, r) < H:
                                    out[vb(bx), vs(bx), head(bx, lane, r), warp * DQ + n * 8 + lane % 4 * 2 + j] = (
                                        acc[n * 4 + r * 2 + j] / ls[r])

    attrs = {"global_symbol": name, "tirx.noalias": True, "tirx.is_scheduled": True}
    if sparse:
        @T.prim_func
        def func(q: T.Buffer((B, S, H, D), "float32"), kv: T.Buffer((B, N, D), "float32"),
                 kv_bias: T.Buffer((B, S, N), "float32"), cache: T.Buffer((B, C, D), "float32"),
                 entries: T.Buffer((B, E, D), "float32"), indices: T.Buffer((B, S, K), "int64"),
                 valid: T.Buffer((B, S, K), "bool"), start_pos: T.Buffer((B,), "int64"),
                 sinks: T.Buffer((H,), "float32"), out: T.Buffer((B, S, H, D), "float32")):
            T.func_attr(attrs)
            attention(q, kv, kv_bias, (cache, entries, indices, valid, start_pos), sinks, out)
    else:
        @T.prim_func
        def func(q: T.Buffer((B, S, H, D), "float32"), kv: T.Buffer((B, N, D), "float32"),
                 kv_bias: T.Buffer((B, S, N), "float32"), sinks: T.Buffer((H,), "float32"),
                 out: T.Buffer((B, S, H, D), "float32")):
            T.func_attr(attrs)
            attention(q, kv, kv_bias, None, sinks, out)
    return func


def round_bf16(x) -> np.ndarray:
    """float32 -> bfloat16 (round to nearest even) -> float64."""
    import ml_dtypes

    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def reference(q, kv, kv_bias, sinks, scale: float) -> np.ndarray:
    """float64 dense sink attention on the kernel's bfloat16 operands: ``q * scale`` (in float32)
    and the entries rounded to bfloat16, then exact."""
    from ....ops import sink_attention

    qs = round_bf16(np.asarray(q, np.float32) * np.float32(scale))
    return sink_attention.reference(qs, round_bf16(kv), kv_bias, sinks, 1.0)


def reference_sparse(q, kv, kv_bias, cache, entries, indices, valid, start_pos, sinks, ratio: int,
                     scale: float) -> np.ndarray:
    """As ``reference`` for the CSA variant (``sink_attention_sparse.reference`` on rounded operands)."""
    from ....ops import sink_attention_sparse

    qs = round_bf16(np.asarray(q, np.float32) * np.float32(scale))
    return sink_attention_sparse.reference(qs, round_bf16(kv), kv_bias, round_bf16(cache), round_bf16(entries),
                                           indices, valid, start_pos, sinks, ratio, 1.0)


def cost(batch: int, seq: int, heads: int, head_dim: int, n_entries: int, visible: int | None = None) -> dict:
    """Tensor-core FLOPs of the walked entries (heads padded to 16) and the minimum bytes (float32
    q, out, biases, each entry once)."""
    vis = n_entries if visible is None else visible
    padded = -(-heads // MMA_M) * MMA_M
    return {"flops": batch * seq * padded * 4 * vis * head_dim,
            "bytes": (2 * batch * seq * heads * head_dim + batch * n_entries * head_dim + batch * seq * n_entries) * 4}
