"""CUDA schedules and choices of tide's hybrid-attention kernels: ``tide.ops.sink_attention`` (and
its sparse variant), ``tide.ops.indexer`` and ``tide.ops.compressor``.

One thread block per outer (batch, query, head block, split) iteration (split-K merges are
separate kernels); q, the entry tile and softmax state in shared memory (dynamic shared memory for
the large buffers: a runtime must allow more than 48 KiB per block), accumulators in registers
with a fixed channel-per-thread map. Entry tiles are 16 entries; decode splits the entry list until
the grid has CTAS thread blocks.

Prefill (more than one query token) of a bfloat16 model runs sink attention on tensor cores
instead: the choice ``variant = "mma_bf16"``, whose rule builds ``sink_attention_prefill_mma``
(written with its own thread mapping) from the kernel's parameters: q and the entries rounded to
bfloat16, float32 accumulation and softmax. Decode and float32 models keep the exact float32
kernels.
"""

from __future__ import annotations

from ...ops import indexer, sink_attention
from .kernels import sink_attention_prefill_mma
from ..helpers import schedule_of
from ..helpers import has_block as _has_block
from ..helpers import loop_extent as _extent
from .limits import STATIC_SHARED_BYTES, THREADS
from ...ops.kernel import identity

ENTRY_BLOCK = 16
CTAS = 264  # two waves' worth of thread blocks on a 132-SM H100/H200


def choose_sink_attention(*, batch: int, seq: int, heads: int, head_dim: int, entries: int,
                          model_dtype: str = "float32", **_) -> dict:
    if seq > 1 and model_dtype == "bfloat16" and sink_attention_prefill_mma.supported(heads, head_dim):
        return {"variant": "mma_bf16"}
    return sink_attention.blocking(batch, seq, heads, entries, ENTRY_BLOCK, CTAS)


def choose_indexer(*, batch: int, seq: int, cache_rows: int, top_k: int, **_) -> dict:
    return indexer.blocking(batch, seq, cache_rows, top_k, ENTRY_BLOCK, CTAS)


def schedule_sink_attention(func, target=None):
    """The tensor-core kernel for the ``mma_bf16`` variant, else ``schedule_simt``."""
    _, params = identity(func)
    if params.get("variant") != "mma_bf16":
        return schedule_simt(func)
    sparse = None
    if "top_k" in params:
        sparse = {k: params[k] for k in ("top_k", "cache_rows", "new_rows", "ratio")}
    name = str(func.attrs["global_symbol"])
    return sink_attention_prefill_mma.prim_func(params["batch"], params["seq"], params["heads"], params["head_dim"],
                                                params["n_kv"], params["scale"], sparse=sparse, name=name)


def schedule_simt(func, target=None):
    """The float32 SIMT schedule of a ``sink_attention`` kernel: one thread block per (batch, query, head
    block, split); the query block, the entry tile, logits and softmax state in shared memory; each
    thread owns ``head_block x 4`` accumulator channels in registers. The split merge is a second
    kernel (one thread block per query row, channels over threads)."""
    sch = schedule_of(func)
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


def schedule_indexer(func, target=None):
    """CUDA: one thread block per (batch, query, split); q, the key tile and the top-k lists in
    shared memory; one (entry, head) dot product per thread; merges one list slot or candidate per
    thread. The split merge is a second kernel, one thread block per query row."""
    sch = schedule_of(func)
    threads = THREADS
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
    if fixed > STATIC_SHARED_BYTES:
        raise ValueError(f"indexer top-k {k} needs {fixed} bytes of static shared memory in the CUDA schedule "
                         f"(limit {STATIC_SHARED_BYTES})")
    lists = "shared" if fixed + 12 * k <= STATIC_SHARED_BYTES else "shared.dyn"
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
        m_lists = "shared" if 4 * (8 * k + 2) <= STATIC_SHARED_BYTES else "shared.dyn"
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


_SLOT_REDUCTIONS = ("slot_max", "slot_pool")


def schedule_compressor(func, target=None):
    """CUDA: one thread block per candidate; thread t owns a contiguous run of channels (their
    running max, sum and pool stay in registers), slots serial in each thread; the squared sum a
    cross-thread reduction; RoPE reads neighbours from shared memory. The ring rows: one thread
    per feature."""
    sch = schedule_of(func)
    sch.bind(sch.fuse(*sch.get_loops(sch.get_sblock("entry"))), "blockIdx.x")
    dim = _extent(sch, sch.get_loops(sch.get_sblock("norm"))[-1])
    threads = min(dim, THREADS)
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


CHOICES = {"sink_attention": choose_sink_attention, "indexer": choose_indexer}
RULES = {"sink_attention": schedule_sink_attention, "sink_attention_sparse": schedule_sink_attention,
         "indexer": schedule_indexer, "compressor": schedule_compressor}
