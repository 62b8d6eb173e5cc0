"""Target schedules of tide's hybrid-attention kernels: ``tide.ops.sink_attention`` (and its sparse
variant), ``tide.ops.indexer`` and ``tide.ops.compressor``.

The kernels are defined once, unscheduled (``prim_func`` of each op module); the functions here
pick their blocking for a target and turn a definition into a target kernel with
``tvm.s_tir.Schedule``, marked ``tirx.is_scheduled``.

CPU: the outer (batch, query, head block, split) loop runs on the thread pool; inside, every stage
is vectorized over 16 fp32 lanes: logits and index dots as ``[entries x heads]`` register tiles with
the head axis in the vector, the accumulator update ``acc += p @ tile`` as a 4-head x 64-channel
register tile, softmax bookkeeping over the head vector, top-k ranks over the list.

CUDA: one thread block per outer iteration (split-K merges are separate kernels); q, the entry tile
and softmax state in shared memory (dynamic shared memory for the large buffers: a runtime must
allow more than 48 KiB per block), accumulators in registers with a fixed channel-per-thread map.
CUDA prefill of bfloat16 models instead gets ``tide.ops.sink_attention_prefill_mma`` (tensor cores,
written with its own thread mapping; ``prefill_tensor_cores`` decides).
"""

from __future__ import annotations

import math
import os

from . import VECTOR, vectorize
from .ascend import cores as ascend_cores
from . import has_block as _has_block
from . import loop_extent as _extent

CPU_ENTRY_BLOCK = 8  # entries per tile on the CPU (the logits tile is 8 vectors of 16 heads)
CUDA_ENTRY_BLOCK = 16
ASCEND_ENTRY_BLOCK = 32  # entries per tile on an Ascend AI core (a 512-channel tile: 64 KiB of UB)
CUDA_CTAS = 264  # two waves' worth of thread blocks on a 132-SM H100/H200


def config(target_kind: str, batch: int, seq: int, heads: int, head_dim: int, n_entries: int) -> dict:
    """Blocking of a sink-attention kernel for the target: heads per block, entries per tile and
    the number of entry ranges (split-K) for short query batches."""
    head_block = math.gcd(heads, 16)
    rows = batch * seq * (heads // head_block)
    if target_kind == "cuda":
        entry_block, want = CUDA_ENTRY_BLOCK, CUDA_CTAS
    elif target_kind == "cpu":
        entry_block, want = CPU_ENTRY_BLOCK, 2 * (os.cpu_count() or 1)
    elif target_kind == "ascend":
        entry_block, want = ASCEND_ENTRY_BLOCK, ascend_cores.CORES
    else:
        raise ValueError(f"no attention schedule for target '{target_kind}'")
    tiles = -(-n_entries // entry_block)
    splits = max(1, min(-(-want // rows), tiles // 8))
    if target_kind == "ascend":
        splits = 1  # split-K partials are shared between AI cores: they would need a GM workspace
    return {"head_block": head_block, "entry_block": entry_block, "splits": splits}


def prefill_tensor_cores(target_kind: str, seq: int, heads: int, head_dim: int, model_dtype: str) -> bool:
    """CUDA prefill (more than one query token) of a bfloat16 model runs sink attention on tensor
    cores (``tide.ops.sink_attention_prefill_mma``: q and the entries rounded to bfloat16, float32
    accumulation and softmax); decode and float32 models keep the exact float32 kernels."""
    from ..ops import sink_attention_prefill_mma

    return (target_kind == "cuda" and seq > 1 and model_dtype == "bfloat16"
            and sink_attention_prefill_mma.supported(heads, head_dim))


def schedule(func, target_kind: str):
    """The target's schedule of a sink-attention kernel."""
    if func.attrs is not None and "tide.attention_kernel" in func.attrs:  # written with its thread mapping
        if target_kind != "cuda":
            raise ValueError("tensor-core attention kernels (tide.ops.sink_attention_prefill_mma) are CUDA-only")
        return func.with_attr("tirx.is_scheduled", True)
    if target_kind == "cuda":
        return schedule_cuda(func)
    if target_kind == "cpu":
        return schedule_cpu(func)
    if target_kind == "ascend":
        return ascend_cores.kernel(func)
    raise ValueError(f"no attention schedule for target '{target_kind}'")


def _vectorize_last(sch, block, lanes: int = VECTOR) -> None:
    """Vectorizes the innermost loop of ``block`` in chunks of ``lanes``."""
    vectorize(sch, sch.get_loops(block)[-1], lanes)


def schedule_cpu(func, target=None):
    """The CPU schedule of a ``sink_attention`` kernel (dense or sparse)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    attn = sch.get_sblock("attn")
    outer = sch.get_loops(attn)
    sch.parallel(sch.fuse(*outer))

    for name in ("q_load", "state_init", "acc_init", "rescale", "prob", "max_update", "tile_load"):
        _vectorize_last(sch, sch.get_sblock(name))

    # logits [entries x heads]: the reduction over channels outside, entries unrolled, heads in the vector
    qk = sch.get_sblock("qk")
    j, h, d = sch.get_loops(qk)[-3:]
    sch.reorder(d, j, h)
    sch.unroll(j)
    _vectorize_last(sch, qk)
    sch.decompose_reduction(qk, d)

    for name in ("tile_max", "row_sum"):
        block = sch.get_sblock(name)
        h, j = sch.get_loops(block)[-2:]
        sch.reorder(j, h)
        _vectorize_last(sch, block)
        sch.decompose_reduction(block, j)

    # acc[h, d] += p[j, h] * tile[j, d]: a 4 x 64 register tile, entries innermost but one
    pv = sch.get_sblock("pv")
    h, d, j = sch.get_loops(pv)[-3:]
    h_tile = 4 if _extent(sch, h) % 4 == 0 else 1
    d_tile = 64 if _extent(sch, d) % 64 == 0 else VECTOR
    h0, h1 = sch.split(h, factors=[None, h_tile])
    d0, d1 = sch.split(d, factors=[None, d_tile])
    d1a, d1v = sch.split(d1, factors=[None, VECTOR])
    sch.reorder(h0, d0, j, h1, d1a, d1v)
    sch.unroll(h1)
    sch.unroll(d1a)
    sch.vectorize(d1v)
    sch.decompose_reduction(pv, j)

    if _has_block(sch, "store"):
        _vectorize_last(sch, sch.get_sblock("store"))
    else:
        _vectorize_last(sch, sch.get_sblock("store_acc"))
        merge = sch.get_sblock("merge")
        b, s, h, d, p = sch.get_loops(merge)
        sch.reorder(p, d)
        sch.parallel(sch.fuse(b, s, h))
        _vectorize_last(sch, merge)
        sch.decompose_reduction(merge, p)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def schedule_cuda(func, target=None):
    """The CUDA schedule of a ``sink_attention`` kernel: one thread block per (batch, query, head
    block, split); the query block, the entry tile, logits and softmax state in shared memory; each
    thread owns ``head_block x 4`` accumulator channels in registers. The split merge is a second
    kernel (one thread block per query row, channels over threads)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    attn = sch.get_sblock("attn")
    sch.bind(sch.fuse(*sch.get_loops(attn)), "blockIdx.x")
    acc_init = sch.get_sblock("acc_init")
    head_block, head_dim = (_extent(sch, l) for l in sch.get_loops(acc_init)[-2:])
    lanes = 4
    threads = head_dim // lanes
    if threads * lanes != head_dim or threads > 1024:
        raise ValueError(f"head_dim {head_dim} does not map onto threads of {lanes} channels")

    for name, index, scope in (("q_load", 0, "shared.dyn"), ("tile_load", 0, "shared.dyn"), ("bias_load", 0, "shared"),
                               ("qk", 0, "shared"), ("prob", 0, "shared"), ("state_init", 0, "shared"),
                               ("state_init", 1, "shared"), ("tile_max", 0, "shared"), ("rescale", 0, "shared"),
                               ("acc_init", 0, "local"), ("tile_start", 0, "local"), ("tile_range", 0, "local")):
        sch.set_scope(sch.get_sblock(name), index, scope)

    def spread(name, n_loops, vector=1):
        """The block's own ``n_loops`` loops fused, over the threads (and ``vector`` lanes)."""
        block = sch.get_sblock(name)
        loops = sch.get_loops(block)[-n_loops:]
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        if vector > 1:
            fused, vec = sch.split(fused, factors=[None, vector])
            sch.vectorize(vec)
        _, tx = sch.split(fused, factors=[None, threads])
        sch.bind(tx, "threadIdx.x")

    def per_thread_channels(name):
        """``[head_block, head_dim]`` nest: thread t owns channels 4t..4t+3 of every head."""
        block = sch.get_sblock(name)
        h, d = sch.get_loops(block)[-2:]
        tx, vec = sch.split(d, factors=[threads, lanes])
        sch.reorder(tx, h, vec)
        sch.bind(tx, "threadIdx.x")
        sch.vectorize(vec)
        return block

    # q: load heads x channels coalesced, stored transposed [Dh, heads]
    q_load = sch.get_sblock("q_load")
    d, h = sch.get_loops(q_load)[-2:]
    sch.reorder(h, d)
    spread("q_load", 2)
    for name in ("state_init", "rescale", "max_update", "bias_load"):
        spread(name, 1)
    spread("tile_load", 2, vector=lanes)
    per_thread_channels("acc_init")

    # logits: one (entry, head) dot product per thread, channels from shared memory
    qk = sch.get_sblock("qk")
    j, h, d = sch.get_loops(qk)[-3:]
    fused = sch.fuse(j, h)
    _, tx = sch.split(fused, factors=[None, threads])
    sch.bind(tx, "threadIdx.x")
    dot = sch.cache_write(qk, 0, "local")
    sch.reverse_compute_at(dot, tx)
    sch.decompose_reduction(qk, d)
    for name in ("tile_max", "row_sum"):
        block = sch.get_sblock(name)
        h, j = sch.get_loops(block)[-2:]
        _, tx = sch.split(h, factors=[None, threads])
        sch.bind(tx, "threadIdx.x")
        sch.decompose_reduction(block, j)
    prob = sch.get_sblock("prob")
    _, tx = sch.split(sch.fuse(*sch.get_loops(prob)[-2:]), factors=[None, threads])
    sch.bind(tx, "threadIdx.x")

    # acc[h, 4t:4t+4] += p[j, h] * tile[j, 4t:4t+4]
    pv = sch.get_sblock("pv")
    h, d, j = sch.get_loops(pv)[-3:]
    tx, vec = sch.split(d, factors=[threads, lanes])
    sch.reorder(tx, j, h, vec)
    sch.bind(tx, "threadIdx.x")
    sch.unroll(h)
    sch.vectorize(vec)
    sch.decompose_reduction(pv, j)

    if _has_block(sch, "store"):
        per_thread_channels("store")
    else:
        spread("store_ml", 1)
        per_thread_channels("store_acc")
        for name in ("merge_max", "merge_sum"):
            block = sch.get_sblock(name)
            loops = sch.get_loops(block)
            bx, tx = sch.split(sch.fuse(*loops[:-1]), factors=[None, 32])
            sch.bind(bx, "blockIdx.x")
            sch.bind(tx, "threadIdx.x")
        weight = sch.get_sblock("merge_weight")
        bx, tx = sch.split(sch.fuse(*sch.get_loops(weight)), factors=[None, 32])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        merge = sch.get_sblock("merge")
        b, s, h, d, p = sch.get_loops(merge)
        sch.bind(sch.fuse(b, s, h), "blockIdx.x")
        _, tx = sch.split(d, factors=[None, min(threads, 128)])
        sch.bind(tx, "threadIdx.x")
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


# ---------------------------------------------------------------------------------------------
# Lightning Indexer (tide.ops.indexer)


def indexer_config(target_kind: str, batch: int, seq: int, cache_rows: int, top_k: int) -> dict:
    """Entries per tile and entry-range splits of the indexer: a split must cover several times
    top_k entries for its list merge to pay off."""
    if target_kind == "cuda":
        entry_block, want = CUDA_ENTRY_BLOCK, CUDA_CTAS
    elif target_kind == "cpu":
        entry_block, want = CPU_ENTRY_BLOCK, 2 * (os.cpu_count() or 1)
    elif target_kind == "ascend":
        entry_block, want = ASCEND_ENTRY_BLOCK, ascend_cores.CORES
    else:
        raise ValueError(f"no indexer schedule for target '{target_kind}'")
    splits = max(1, min(-(-want // (batch * seq)), cache_rows // (8 * top_k)))
    if target_kind == "ascend":
        splits = 1  # split-K partials are shared between AI cores: they would need a GM workspace
    return {"entry_block": entry_block, "splits": splits}


def schedule_indexer(func, target_kind: str):
    if target_kind == "cuda":
        return schedule_indexer_cuda(func)
    if target_kind == "cpu":
        return schedule_indexer_cpu(func)
    if target_kind == "ascend":
        return ascend_cores.kernel(func)
    raise ValueError(f"no indexer schedule for target '{target_kind}'")


def _rank_vectorized(sch, block) -> None:
    """A rank count ``r[x] += better(y, x)``: the compared-against loop outside, x in the vector."""
    x, y = sch.get_loops(block)[-2:]
    sch.reorder(y, x)
    _vectorize_last(sch, block)
    sch.decompose_reduction(block, y)


def schedule_indexer_cpu(func, target=None):
    """CPU: (batch, query, split) rows on the thread pool; the dots as ``[entries x 16 heads]``
    register tiles; list ranks vectorized over the list."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    sch.parallel(sch.fuse(*sch.get_loops(sch.get_sblock("score"))))
    for name in ("q_load", "w_load", "list_init", "pend_init", "pend_reset", "tile_load", "commit", "f_commit"):
        _vectorize_last(sch, sch.get_sblock(name))
    qk = sch.get_sblock("qk")
    j, h, d = sch.get_loops(qk)[-3:]
    lanes = math.gcd(_extent(sch, h), 2 * VECTOR)
    h0, h1 = sch.split(h, factors=[None, lanes])
    h1a, h1v = sch.split(h1, factors=[None, min(lanes, VECTOR)])
    sch.reorder(h0, d, j, h1a, h1v)
    sch.unroll(j)
    sch.unroll(h1a)
    sch.vectorize(h1v)
    # the [entries x 32 heads] accumulators local to the head chunk, stored once as dots[head, entry]
    # so that the weighted ReLU sum runs heads outside and entries in the vector
    acc = sch.cache_write(qk, 0, "local")
    sch.reverse_compute_at(acc, h0)
    sch.transform_layout(acc, ("write", 0), lambda j, h: (h, j))
    sch.decompose_reduction(qk, d)
    for name in ("weigh", "rank_list", "rank_cand", "f_rank_list", "f_rank_cand"):
        _rank_vectorized(sch, sch.get_sblock(name))
    if _has_block(sch, "merge"):
        sch.parallel(sch.fuse(*sch.get_loops(sch.get_sblock("merge"))))
        for name in ("m_list_init", "m_load", "m_commit"):
            _vectorize_last(sch, sch.get_sblock(name))
        for name in ("m_rank_list", "m_rank_cand"):
            _rank_vectorized(sch, sch.get_sblock(name))
    else:
        _vectorize_last(sch, sch.get_sblock("emit"))
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


CUDA_THREADS = 128
CUDA_STATIC_SHARED_BYTES = 48 * 1024  # static shared memory every arch launches without opt-in


def schedule_indexer_cuda(func, target=None):
    """CUDA: one thread block per (batch, query, split); q, the key tile and the top-k lists in
    shared memory; one (entry, head) dot product per thread; merges one list slot or candidate per
    thread. The split merge is a second kernel, one thread block per query row."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    threads = CUDA_THREADS
    sch.bind(sch.fuse(*sch.get_loops(sch.get_sblock("score"))), "blockIdx.x")
    # Buffer placement. TVM's sync planner treats all "shared.dyn" buffers as one: a block guarded by
    # ``threadIdx.x < k`` (k not a multiple of the threads) that scatters into one dynamic buffer and
    # then reads another would need a barrier inside that condition, which it refuses. So the
    # scatter targets (nv, ni) are always static shared memory, apart from what they scatter from.
    # The top-k lists and their ranks (lv, li, rl) are static too whenever everything fits the
    # static limit (TVM's shared-memory merge also mishandles a 1-slot dynamic list), dynamic
    # beyond that.
    k = _extent(sch, sch.get_loops(sch.get_sblock("list_init"))[-1])
    heads = _extent(sch, sch.get_loops(sch.get_sblock("w_load"))[-1])
    entries = _extent(sch, sch.get_loops(sch.get_sblock("cand"))[-1])
    pend = _extent(sch, sch.get_loops(sch.get_sblock("rank_cand"))[-2])
    # wv, dots, pv, pi, rc, cv, ci and the scatter targets nv, ni
    fixed = 4 * (heads * (entries + 1) + 3 * pend + 2 + 2 * entries + 2 * (k + 1))
    if fixed > CUDA_STATIC_SHARED_BYTES:
        raise ValueError(f"indexer top-k {k} needs {fixed} bytes of static shared memory in the CUDA schedule "
                         f"(limit {CUDA_STATIC_SHARED_BYTES})")
    lists = "shared" if fixed + 12 * k <= CUDA_STATIC_SHARED_BYTES else "shared.dyn"
    scopes = [("q_load", 0, "shared.dyn"), ("tile_load", 0, "shared.dyn"), ("list_init", 0, lists),
              ("list_init", 1, lists), ("move_list", 0, "shared"), ("move_list", 1, "shared"),
              ("w_load", 0, "shared"), ("qk", 0, "shared"), ("weigh", 0, "shared"), ("cand", 0, "shared"),
              ("cand", 1, "shared"), ("pend_init", 0, "shared"), ("pend_init", 1, "shared"),
              ("rank_list", 0, lists), ("rank_cand", 0, "shared"),
              ("limit", 0, "local"), ("limit", 1, "local"), ("tile_start", 0, "local")]
    merged = _has_block(sch, "merge")
    if merged:
        sch.bind(sch.fuse(*sch.get_loops(sch.get_sblock("merge"))), "blockIdx.x")
        # the scatter targets nv, ni (k + 1 each) static; lv, li, pv, pi, rl, rc (k each) too when
        # they fit
        m_lists = "shared" if 4 * (8 * k + 2) <= CUDA_STATIC_SHARED_BYTES else "shared.dyn"
        scopes += [("m_list_init", 0, m_lists), ("m_list_init", 1, m_lists),
                   ("m_load", 0, m_lists), ("m_load", 1, m_lists), ("m_move_list", 0, "shared"),
                   ("m_move_list", 1, "shared"), ("m_rank_list", 0, m_lists),
                   ("m_rank_cand", 0, m_lists), ("m_part", 0, "local")]
    for name, index, scope in scopes:
        sch.set_scope(sch.get_sblock(name), index, scope)

    def spread(name, n_loops):
        block = sch.get_sblock(name)
        loops = sch.get_loops(block)[-n_loops:]
        fused = sch.fuse(*loops) if n_loops > 1 else loops[0]
        _, tx = sch.split(fused, factors=[None, threads])
        sch.bind(tx, "threadIdx.x")

    def per_thread_reduction(name, cache_local=False):
        """Spatial loop over the threads, the reduction serial in each thread."""
        block = sch.get_sblock(name)
        loops = sch.get_loops(block)
        spatial, red = loops[-2], loops[-1]
        _, tx = sch.split(spatial, factors=[None, threads])
        sch.bind(tx, "threadIdx.x")
        if cache_local:
            acc = sch.cache_write(block, 0, "local")
            sch.reverse_compute_at(acc, tx)
        sch.decompose_reduction(block, red)

    q_load = sch.get_sblock("q_load")
    d, h = sch.get_loops(q_load)[-2:]
    sch.reorder(h, d)
    spread("q_load", 2)
    for name, n in (("w_load", 1), ("list_init", 1), ("pend_init", 1), ("pend_reset", 1), ("tile_load", 2),
                    ("cand", 1), ("pend", 1), ("move_list", 1), ("move_cand", 1), ("commit", 1),
                    ("f_move_list", 1), ("f_move_cand", 1), ("f_commit", 1)):
        spread(name, n)
    qk = sch.get_sblock("qk")
    j, h, d = sch.get_loops(qk)[-3:]
    _, tx = sch.split(sch.fuse(j, h), factors=[None, threads])
    sch.bind(tx, "threadIdx.x")
    dot = sch.cache_write(qk, 0, "local")
    sch.reverse_compute_at(dot, tx)
    sch.decompose_reduction(qk, d)
    for name in ("weigh", "rank_list", "rank_cand", "f_rank_list", "f_rank_cand"):
        per_thread_reduction(name, cache_local=True)
    if merged:
        for name in ("m_list_init", "m_load", "m_move_list", "m_move_cand", "m_commit", "emit"):
            spread(name, 1)
        for name in ("m_rank_list", "m_rank_cand"):
            per_thread_reduction(name, cache_local=True)
        spread("store_part", 1)
    else:
        spread("emit", 1)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


# ---------------------------------------------------------------------------------------------
# Compressor (tide.ops.compressor)


def schedule_compressor(func, target_kind: str):
    if target_kind == "cuda":
        return schedule_compressor_cuda(func)
    if target_kind == "cpu":
        return schedule_compressor_cpu(func)
    if target_kind == "ascend":
        return ascend_cores.kernel(func)
    raise ValueError(f"no compressor schedule for target '{target_kind}'")


_SLOT_REDUCTIONS = ("slot_max", "slot_pool")


def schedule_compressor_cpu(func, target=None):
    """CPU: candidates on the thread pool; the slot softmax and pooling with slots outside and
    channels in the vector; the ring rows parallel over tokens, vectorized over features."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    sch.parallel(sch.fuse(*sch.get_loops(sch.get_sblock("entry"))))
    for name in _SLOT_REDUCTIONS:
        _rank_vectorized(sch, sch.get_sblock(name))
    for name in ("pooled", "norm", "rope", "cache_row"):
        _vectorize_last(sch, sch.get_sblock(name))
    rows = sch.get_sblock("ring_rows")
    b, i, f = sch.get_loops(rows)
    sch.parallel(sch.fuse(b, i))
    _vectorize_last(sch, rows)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


CPU_PROJ_ROWS, CPU_PROJ_COLS, CPU_PROJ_K = 4, 64, 256


def compressor_projection_fits(rows: int, dim: int, out: int) -> bool:
    """Whether ``schedule_compressor_projection_cpu`` tiles this GEMM (output columns in 16-lane vectors)."""
    return out % VECTOR == 0 and dim > 0 and rows > 0


def schedule_compressor_projection_cpu(func, target=None):
    """CPU GEMM of ``tide.ops.compressor_proj``: column panels of 64 on the thread pool; inside, the
    reduction in blocks of 256 outermost, then 4-row tiles, so the panel's 256 x 64 weight block is
    read from cache by every tile; a 4 x 64 accumulator tile (4 x 4 vectors) per reduction step.
    (The generic GEMM rule runs the whole reduction per tile: ~2.3x slower at 64 x 4096 x 1024.)"""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    block = sch.get_sblock("proj")
    m, n, k = sch.get_loops(block)
    rows, out, dim = (_extent(sch, l) for l in (m, n, k))
    if not compressor_projection_fits(rows, dim, out):
        raise ValueError(f"projection {rows} x {dim} x {out}: output width is no multiple of {VECTOR}")
    row_tile = CPU_PROJ_ROWS if rows % CPU_PROJ_ROWS == 0 else 1
    col_tile = CPU_PROJ_COLS if out % CPU_PROJ_COLS == 0 else VECTOR
    k_block = CPU_PROJ_K if dim % CPU_PROJ_K == 0 else dim
    m0, m1 = sch.split(m, factors=[None, row_tile])
    n0, n1 = sch.split(n, factors=[None, col_tile])
    n1a, n1v = sch.split(n1, factors=[None, VECTOR])
    k0, k1 = sch.split(k, factors=[None, k_block])
    sch.reorder(n0, k0, m0, k1, m1, n1a, n1v)
    sch.parallel(n0)
    sch.unroll(m1)
    sch.unroll(n1a)
    sch.vectorize(n1v)
    sch.decompose_reduction(block, k0)
    sch.vectorize(sch.get_loops(sch.get_sblock("proj_init"))[-1])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def schedule_compressor_cuda(func, target=None):
    """CUDA: one thread block per candidate; thread t owns a contiguous run of channels (their
    running max, sum and pool stay in registers), slots serial in each thread; the squared sum a
    cross-thread reduction; RoPE reads neighbours from shared memory. The ring rows: one thread
    per feature."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    sch.bind(sch.fuse(*sch.get_loops(sch.get_sblock("entry"))), "blockIdx.x")
    dim = _extent(sch, sch.get_loops(sch.get_sblock("norm"))[-1])
    threads = min(dim, CUDA_THREADS)
    for name, index in (("slot_max", 0), ("slot_pool", 0), ("slot_pool", 1), ("pooled", 0)):
        sch.set_scope(sch.get_sblock(name), index, "local")
    sch.set_scope(sch.get_sblock("square_sum"), 0, "shared")
    sch.set_scope(sch.get_sblock("norm"), 0, "shared")

    def own_channels(loop):
        tx, _ = sch.split(loop, factors=[threads, None])
        sch.bind(tx, "threadIdx.x")

    for name in _SLOT_REDUCTIONS:
        block = sch.get_sblock(name)
        c, j = sch.get_loops(block)[-2:]
        own_channels(c)
        sch.decompose_reduction(block, j)
    for name in ("pooled", "square_sum", "norm"):
        own_channels(sch.get_loops(sch.get_sblock(name))[-1])
    for name in ("rope", "cache_row", "cache_index"):
        _, tx = sch.split(sch.get_loops(sch.get_sblock(name))[-1], factors=[None, threads])
        sch.bind(tx, "threadIdx.x")
    for name in ("ring_rows", "ring_index"):
        block = sch.get_sblock(name)
        bx, tx = sch.split(sch.fuse(*sch.get_loops(block)), factors=[None, threads])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)
