"""CPU schedule and choices of the RoPE kernels: ``tide.ops.rope`` and its RMSNorm-fused form
``tide.ops.qnorm_rope`` (one ``row`` block per row of x holding an optional ``sum_sq`` reduction,
the ``pass`` copy of the leading channels and the ``rotate`` block over the rotated pairs).

Rows run on the thread pool (the row loop kind is a choice the kernel is defined with: the
pass-through and rotated channels are two writers of y, which ``parallel`` cannot prove
independent across rows), serially for a tensor too small to share; inside a row the squared sum
runs as 16 vector partial sums (rfactor), the pass-through channels in 16-lane vectors, the
rotated pairs as a loop LLVM vectorizes.
"""

from __future__ import annotations

from ..helpers import schedule_of
from ..helpers import has_block as _has_block
from ..helpers import loop_extent as _extent
from ..helpers import vectorize as _vectorize
from .generic import VECTOR

PARALLEL_MIN = 1 << 15  # elements of x below which the thread pool's wake-up costs more than it saves


def choose_rope(*, rows: int, dim: int, **_) -> dict:
    return {"row_kind": "serial" if rows * dim < PARALLEL_MIN else "parallel"}


def schedule_rope(func, target=None):
    sch = schedule_of(func)
    if _has_block(sch, "sum_sq"):
        block = sch.get_sblock("sum_sq")
        (k,) = sch.get_loops(block)[-1:]
        if _extent(sch, k) % VECTOR == 0:
            k0, k1 = sch.split(k, factors=[None, VECTOR])
            partial = sch.rfactor(k1, 0)
            k0, k1 = sch.get_loops(partial)[-2:]
            sch.vectorize(k1)
            sch.decompose_reduction(partial, k0)
    if _has_block(sch, "pass"):
        _vectorize(sch, sch.get_loops(sch.get_sblock("pass"))[-1], VECTOR)
    # pairs serial with both members unrolled: LLVM vectorizes the interleaved pair loop itself
    # (measured 0.19 ms vs 0.25 ms for TVM's 16-lane form with gathered partners, flash q S=64)
    sch.unroll(sch.get_loops(sch.get_sblock("rotate"))[-1])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


CHOICES = {"rope": choose_rope}
RULES = {"rope": schedule_rope, "qnorm_rope": schedule_rope}
