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
CUDA prefill of models whose weights are bfloat16 (``tide.targets.attention.prefill_tensor_cores``).
float32 models keep the exact float32 SIMT kernel: rounding their activations to bfloat16 would
move the outputs by ~1e-3 relative, far beyond their 2e-5 tolerance.
"""

from __future__ import annotations

import numpy as np

from .sink_attention import MASKED

MMA_M = 16  # heads per thread block
MMA_K = 16
MMA_N = 8
WARPS = 4  # channel quarters
ENTRY_TILE = 32  # entries per tile: 4 n8 tiles of logits per warp, 2 k16 steps of p @ kv


def supported(heads: int, head_dim: int) -> bool:
    """Each warp's channel quarter must tile by the mma's K (16) and N (8)."""
    return heads >= 1 and head_dim % (WARPS * MMA_K) == 0  # heads pad to 16


def prim_func(batch: int, seq: int, heads: int, head_dim: int, n_kv: int, scale: float,
              sparse: dict | None = None, name: str = "tide_sink_attention_mma"):
    """The tensor-core kernel with the parameters of ``sink_attention.prim_func`` (``sparse`` None)
    or ``sink_attention_sparse.prim_func`` (``sparse``: ``top_k``, ``cache_rows``, ``new_rows``,
    ``ratio``). Written with its thread mapping (CUDA only)."""
    import tvm
    from tvm.script import tirx as T  # noqa: F401  (referenced by the parsed source)

    return tvm.script.from_source(kernel_source(batch, seq, heads, head_dim, n_kv, scale, sparse, name))


def kernel_source(batch: int, seq: int, heads: int, head_dim: int, n_kv: int, scale: float,
                  sparse: dict | None, name: str) -> str:
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
    masked = f"T.float32({MASKED})"
    params = [f'q: T.Buffer(({B}, {S}, {H}, {D}), "float32")', f'kv: T.Buffer(({B}, {N}, {D}), "float32")',
              f'kv_bias: T.Buffer(({B}, {S}, {N}), "float32")']
    if sparse:
        C, E, r = sparse["cache_rows"], sparse["new_rows"], sparse["ratio"]
        params += [f'cache: T.Buffer(({B}, {C}, {D}), "float32")', f'entries: T.Buffer(({B}, {E}, {D}), "float32")',
                   f'indices: T.Buffer(({B}, {S}, {K}), "int64")', f'valid: T.Buffer(({B}, {S}, {K}), "bool")',
                   f'start_pos: T.Buffer(({B},), "int64")']
    params += [f'sinks: T.Buffer(({H},), "float32")', f'out: T.Buffer(({B}, {S}, {H}, {D}), "float32")']

    vb, vs = f"(bx // {S * HT})", f"(bx // {HT} % {S})"

    def bias_at(e: str) -> str:
        """The bias of entry ``e`` of the block's query, clamped to MASKED from below."""
        dense = f"T.max(kv_bias[{vb}, {vs}, T.min({e}, {N - 1})], {masked})"
        if not sparse:
            return f"T.if_then_else({e} < {N}, {dense}, {masked})"
        pick = f"T.max(T.min({e} - {N}, {K - 1}), 0)"
        return (f"T.if_then_else({e} < {N}, {dense}, T.if_then_else({e} < {L} and valid[{vb}, {vs}, {pick}], "
                f"T.float32(0), {masked}))")

    if sparse:
        # source row of entry e: kv row (< N), cache row N + c, or this call's candidate N + C + i
        base = f"start_pos[{vb}] // T.int64({r})"

        def source(e: str) -> str:
            w = f"indices[{vb}, {vs}, T.max(T.min({e} - {N}, {K - 1}), 0)]"
            return (f"T.if_then_else({e} < {N}, T.min({e}, {N - 1}), T.Cast(\"int32\", T.if_then_else({w} >= {base}, "
                    f"T.int64({N + C}) + T.max(T.min({w} - {base}, T.int64({E - 1})), T.int64(0)), "
                    f"T.int64({N}) + T.max(T.min({w}, T.int64({C - 1})), T.int64(0)))))")

        def row(src: str, d: str) -> str:
            return (f"T.if_then_else({src} < {N}, kv[{vb}, T.min({src}, {N - 1}), {d}], "
                    f"T.if_then_else({src} < {N + C}, cache[{vb}, T.max(T.min({src} - {N}, {C - 1}), 0), {d}], "
                    f"entries[{vb}, T.max(T.min({src} - {N + C}, {E - 1}), 0), {d}]))")
    else:
        def source(e: str) -> str:
            return f"T.min({e}, {N - 1})"

        def row(src: str, d: str) -> str:
            return f"kv[{vb}, {src}, {d}]"

    def entry(j: str, d: str) -> str:
        """Channel ``d`` of tile entry ``j`` as bfloat16, 0 for a masked entry."""
        return (f"T.Cast(\"bfloat16\", T.if_then_else(tb[{j}] > {masked}, {row(f'tsrc[{j}]', d)}, "
                f"T.float32(0)))")

    head = f"(bx % {HT} * {MMA_M} + lane // 4 + r * 8)"
    cell = f"(i * {WARPS * 32} + warp * 32 + lane)"  # the logit a thread sums: 128 threads over 16 x 32
    tid_entry = cell  # the entry a thread checks for visibility (strided over the list)
    chan = f"warp * {DQ}"
    k_chan = f"{chan} + ks * 16 + half * 8 + lane % 4 * 2 + j"  # channel of an A (q) / B (entry) element
    k_entry = "ks * 16 + half * 8 + lane % 4 * 2 + j"  # tile entry of an A (p) / B (entry) element
    return f'''
@T.prim_func
def {name}({", ".join(params)}):
    T.func_attr({{"global_symbol": "{name}", "tirx.noalias": True, "tide.attention_kernel": "mma",
                 "tirx.is_scheduled": True}})
    for bx in T.thread_binding({B * S * HT}, thread="blockIdx.x"):
        for warp in T.thread_binding({WARPS}, thread="threadIdx.y"):
            for lane in T.thread_binding(32, thread="threadIdx.x"):
                qa = T.alloc_buffer(({KS * 8},), "bfloat16", scope="local")
                kb = T.alloc_buffer((4,), "bfloat16", scope="local")
                pa = T.alloc_buffer((8,), "bfloat16", scope="local")
                sacc = T.alloc_buffer((16,), "float32", scope="local")
                acc = T.alloc_buffer(({NT * 4},), "float32", scope="local")
                m = T.alloc_buffer((2,), "float32", scope="local")
                mt = T.alloc_buffer((2,), "float32", scope="local")
                ls = T.alloc_buffer((2,), "float32", scope="local")
                rng = T.alloc_buffer((2,), "int32", scope="local")
                spart = T.alloc_buffer(({WARPS}, {MMA_M}, {NE}), "float32", scope="shared")
                logit = T.alloc_buffer(({MMA_M}, {NE}), "float32", scope="shared")
                tb = T.alloc_buffer(({NE},), "float32", scope="shared")
                tsrc = T.alloc_buffer(({NE},), "int32", scope="shared")
                tiles_lo = T.alloc_buffer(({WARPS * 32},), "int32", scope="shared")
                tiles_hi = T.alloc_buffer(({WARPS * 32},), "int32", scope="shared")
                for ks in T.unroll({KS}):
                    for half in T.unroll(2):
                        for r in T.unroll(2):
                            for j in T.unroll(2):
                                qa[ks * 8 + half * 4 + r * 2 + j] = T.Cast("bfloat16", T.if_then_else(
                                    {head} < {H}, q[{vb}, {vs}, T.min({head}, {H - 1}), {k_chan}]
                                    * T.float32({scale!r}), T.float32(0)))
                for r in T.unroll(2):
                    m[r] = T.if_then_else({head} < {H}, sinks[T.min({head}, {H - 1})], T.float32(0))
                    ls[r] = T.float32(1)
                for i in T.unroll({NT * 4}):
                    acc[i] = T.float32(0)
                rng[0] = {n_tiles}
                rng[1] = 0
                for i in range({-(-n_tiles * NE // (WARPS * 32))}):
                    rng[0] = T.min(rng[0], T.Select({bias_at(tid_entry)} > {masked}, {tid_entry} // {NE}, {n_tiles}))
                    rng[1] = T.max(rng[1], T.Select({bias_at(tid_entry)} > {masked}, {tid_entry} // {NE} + 1, 0))
                tiles_lo[warp * 32 + lane] = rng[0]
                tiles_hi[warp * 32 + lane] = rng[1]
                T.tvm_storage_sync("shared")
                for i in range({WARPS * 32}):
                    rng[0] = T.min(rng[0], tiles_lo[i])
                    rng[1] = T.max(rng[1], tiles_hi[i])
                for t in range(rng[0], rng[1]):
                    if warp == 0:
                        tb[lane] = {bias_at(f"(t * {NE} + lane)")}
                        tsrc[lane] = {source(f"(t * {NE} + lane)")}
                    T.tvm_storage_sync("shared")
                    for i in T.unroll(16):
                        sacc[i] = T.float32(0)
                    for n in T.unroll(4):
                        for ks in T.unroll({KS}):
                            for half in T.unroll(2):
                                for j in T.unroll(2):
                                    kb[half * 2 + j] = {entry("n * 8 + lane // 4", k_chan)}
                            T.evaluate(T.ptx_legacy.mma("m16n8k16", "row", "col", "bf16", "bf16", "fp32",
                                                        qa.data, ks * 8, kb.data, 0, sacc.data, n * 4, False,
                                                        dtype="float32"))
                    for n in T.unroll(4):
                        for r in T.unroll(2):
                            for j in T.unroll(2):
                                spart[warp, lane // 4 + r * 8, n * 8 + lane % 4 * 2 + j] = sacc[n * 4 + r * 2 + j]
                    T.tvm_storage_sync("shared")
                    for i in range({MMA_M * NE // (WARPS * 32)}):
                        logit[{cell} // {NE}, {cell} % {NE}] = (spart[0, {cell} // {NE}, {cell} % {NE}]
                            + spart[1, {cell} // {NE}, {cell} % {NE}] + spart[2, {cell} // {NE}, {cell} % {NE}]
                            + spart[3, {cell} // {NE}, {cell} % {NE}] + tb[{cell} % {NE}])
                    T.tvm_storage_sync("shared")
                    for r in T.unroll(2):
                        mt[r] = m[r]
                        for j in range({NE}):
                            mt[r] = T.max(mt[r], logit[lane // 4 + r * 8, j])
                        ls[r] = ls[r] * T.exp(m[r] - mt[r])
                        for j in range({NE}):
                            ls[r] = ls[r] + T.exp(logit[lane // 4 + r * 8, j] - mt[r])
                    for n in T.unroll({NT}):
                        for r in T.unroll(2):
                            for j in T.unroll(2):
                                acc[n * 4 + r * 2 + j] = acc[n * 4 + r * 2 + j] * T.exp(m[r] - mt[r])
                    for ks in T.unroll(2):
                        for half in T.unroll(2):
                            for r in T.unroll(2):
                                for j in T.unroll(2):
                                    pa[half * 4 + r * 2 + j] = T.Cast("bfloat16", T.exp(
                                        logit[lane // 4 + r * 8, {k_entry}] - mt[r]))
                        for n in T.unroll({NT}):
                            for half in T.unroll(2):
                                for j in T.unroll(2):
                                    kb[half * 2 + j] = {entry(k_entry, f"{chan} + n * 8 + lane // 4")}
                            T.evaluate(T.ptx_legacy.mma("m16n8k16", "row", "col", "bf16", "bf16", "fp32",
                                                        pa.data, 0, kb.data, 0, acc.data, n * 4, False,
                                                        dtype="float32"))
                    for r in T.unroll(2):
                        m[r] = mt[r]
                    T.tvm_storage_sync("shared")
                for n in T.unroll({NT}):
                    for r in T.unroll(2):
                        for j in T.unroll(2):
                            if {head} < {H}:
                                out[{vb}, {vs}, {head}, {chan} + n * 8 + lane % 4 * 2 + j] = (
                                    acc[n * 4 + r * 2 + j] / ls[r])
'''


def round_bf16(x) -> np.ndarray:
    """float32 -> bfloat16 (round to nearest even) -> float64."""
    import ml_dtypes

    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def reference(q, kv, kv_bias, sinks, scale: float) -> np.ndarray:
    """float64 dense sink attention on the kernel's bfloat16 operands: ``q * scale`` (in float32)
    and the entries rounded to bfloat16, then exact."""
    from . import sink_attention

    qs = round_bf16(np.asarray(q, np.float32) * np.float32(scale))
    return sink_attention.reference(qs, round_bf16(kv), kv_bias, sinks, 1.0)


def reference_sparse(q, kv, kv_bias, cache, entries, indices, valid, start_pos, sinks, ratio: int,
                     scale: float) -> np.ndarray:
    """As ``reference`` for the CSA variant (``sink_attention_sparse.reference`` on rounded operands)."""
    from . import sink_attention_sparse

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
