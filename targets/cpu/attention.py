"""CPU schedules and choices of tide's hybrid-attention kernels: ``tide.ops.sink_attention`` (and
its sparse variant), ``tide.ops.indexer`` and ``tide.ops.compressor`` (their projections are
``tide.ops.linear``s).

The outer (batch, query, head block, split) loop runs on the thread pool; inside, every stage is
vectorized over 16 fp32 lanes: logits and index dots as ``[entries x heads]`` register tiles with
the head axis in the vector, the accumulator update ``acc += p @ tile`` as a 4-head x 64-channel
register tile, softmax bookkeeping over the head vector, top-k ranks over the list. Entry tiles
are 8 entries (the logits tile is 8 vectors of 16 heads); decode splits the entry list (split-K)
until the thread pool has two tasks per core.
"""

from __future__ import annotations

import math
import os

from ...ops import indexer, sink_attention
from ..helpers import schedule_of
from ..helpers import has_block as _has_block
from ..helpers import loop_extent as _extent
from ..helpers import vectorize_last
from .generic import VECTOR

ENTRY_BLOCK = 8  # entries per tile (the logits tile is 8 vectors of 16 heads)
PARALLELISM = 2 * (os.cpu_count() or 1)  # thread-pool tasks a call should offer (split-K below that)


def choose_sink_attention(*, batch: int, seq: int, heads: int, entries: int, **_) -> dict:
    return sink_attention.blocking(batch, seq, heads, entries, ENTRY_BLOCK, PARALLELISM)


def choose_indexer(*, batch: int, seq: int, cache_rows: int, top_k: int, **_) -> dict:
    return indexer.blocking(batch, seq, cache_rows, top_k, ENTRY_BLOCK, PARALLELISM)


def _vectorize_last(sch, block, lanes: int = VECTOR) -> None:
    vectorize_last(sch, block, lanes)


def schedule_sink_attention(func, target=None):
    """The CPU schedule of a ``sink_attention`` kernel (dense or sparse)."""
    sch = schedule_of(func)
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


def _rank_vectorized(sch, block) -> None:
    """A rank count ``r[x] += better(y, x)``: the compared-against loop outside, x in the vector."""
    x, y = sch.get_loops(block)[-2:]
    sch.reorder(y, x)
    _vectorize_last(sch, block)
    sch.decompose_reduction(block, y)


def schedule_indexer(func, target=None):
    """CPU: (batch, query, split) rows on the thread pool; the dots as ``[entries x 16 heads]``
    register tiles; list ranks vectorized over the list."""
    sch = schedule_of(func)
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


_SLOT_REDUCTIONS = ("slot_max", "slot_pool")


def schedule_compressor(func, target=None):
    """CPU: candidates on the thread pool; the slot softmax and pooling with slots outside and
    channels in the vector; the ring rows parallel over tokens, vectorized over features."""
    sch = schedule_of(func)
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


CHOICES = {"sink_attention": choose_sink_attention, "indexer": choose_indexer}
RULES = {"sink_attention": schedule_sink_attention, "sink_attention_sparse": schedule_sink_attention,
         "indexer": schedule_indexer, "compressor": schedule_compressor}
