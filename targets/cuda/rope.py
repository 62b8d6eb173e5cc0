"""CUDA schedule and choices of the RoPE kernels: ``tide.ops.rope`` and its RMSNorm-fused form
``tide.ops.qnorm_rope``: one thread block per row (the row loop kind the kernel is defined with),
channels over the threads; the squared sum is a cross-thread reduction into shared memory.
"""

from __future__ import annotations

from ..helpers import schedule_of
from ..helpers import has_block as _has_block
from ..helpers import loop_extent as _extent
from .limits import THREADS


def choose_rope(**_) -> dict:
    return {"row_kind": "blockIdx.x"}


def schedule_rope(func, target=None):
    sch = schedule_of(func)
    rotate = sch.get_sblock("rotate")
    rd = _extent(sch, sch.get_loops(rotate)[-2]) * 2
    dim = rd
    if _has_block(sch, "pass"):
        dim += _extent(sch, sch.get_loops(sch.get_sblock("pass"))[-1])
    threads = min(THREADS, dim)
    if _has_block(sch, "sum_sq"):
        block = sch.get_sblock("sum_sq")
        sch.set_scope(block, 0, "shared")
        tx, _ = sch.split(sch.get_loops(block)[-1], factors=[threads, None])
        sch.bind(tx, "threadIdx.x")
    if _has_block(sch, "pass"):
        _, tx = sch.split(sch.get_loops(sch.get_sblock("pass"))[-1], factors=[None, threads])
        sch.bind(tx, "threadIdx.x")
    _, tx = sch.split(sch.fuse(*sch.get_loops(rotate)[-2:]), factors=[None, threads])
    sch.bind(tx, "threadIdx.x")
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


CHOICES = {"rope": choose_rope}
RULES = {"rope": schedule_rope, "qnorm_rope": schedule_rope}
