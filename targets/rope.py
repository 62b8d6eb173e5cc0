"""Target schedules of the RoPE kernels: ``tide.ops.rope`` and its RMSNorm-fused form
``tide.ops.qnorm_rope``.

Both kernels are one ``row`` block per row of x (a token, or a token's head) holding an optional
``sum_sq`` reduction (the fused RMSNorm), the ``pass`` copy of the leading channels and the
``rotate`` block over (pair, member) of the last ``rope_dim`` channels.

The row loop comes with the definition (``row_kind``): the pass-through and rotated channels are two
writers of y, which the ``parallel``/``bind`` primitives cannot prove independent across rows.

CPU: rows on the thread pool; inside a row the squared sum runs as 16 vector partial sums (rfactor),
the pass-through channels in 16-lane vectors, the rotated pairs as a loop LLVM vectorizes.

CUDA: one thread block per row, channels over the threads; the squared sum is a cross-thread
reduction into shared memory.
"""

from __future__ import annotations

from . import VECTOR
from . import has_block as _has_block
from . import loop_extent as _extent
from . import vectorize as _vectorize

from .ascend import cores as ascend_cores

CUDA_THREADS = 128


ROW_KIND = {"cpu": "parallel", "cuda": "blockIdx.x", "ascend": "parallel"}


CPU_PARALLEL_MIN = 1 << 15  # elements of x below which the thread pool's wake-up costs more than it saves


def row_kind(target_kind: str, rows: int | None = None, dim: int | None = None) -> str:
    """The row loop a kernel is defined with for this target (see ``tide.ops.rope.row_loop``):
    CUDA's grid; on the CPU the thread pool, or a serial loop for a tensor too small to share."""
    if target_kind not in ROW_KIND:
        raise ValueError(f"no RoPE schedule for target '{target_kind}'")
    if target_kind == "cpu" and rows is not None and dim is not None and rows * dim < CPU_PARALLEL_MIN:
        return "serial"
    return ROW_KIND[target_kind]


def schedule(func, target_kind: str):
    if target_kind == "cuda":
        return schedule_cuda(func)
    if target_kind == "cpu":
        return schedule_cpu(func)
    if target_kind == "ascend":
        return ascend_cores.kernel(func)
    raise ValueError(f"no RoPE schedule for target '{target_kind}'")


def schedule_cpu(func, target=None):
    from tvm import s_tir

    sch = s_tir.Schedule(func)
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
        _vectorize(sch, sch.get_loops(sch.get_sblock("pass"))[-1])
    # pairs serial with both members unrolled: LLVM vectorizes the interleaved pair loop itself
    # (measured 0.19 ms vs 0.25 ms for TVM's 16-lane form with gathered partners, flash q S=64)
    sch.unroll(sch.get_loops(sch.get_sblock("rotate"))[-1])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def schedule_cuda(func, target=None):
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    rotate = sch.get_sblock("rotate")
    rd = _extent(sch, sch.get_loops(rotate)[-2]) * 2
    dim = rd
    if _has_block(sch, "pass"):
        dim += _extent(sch, sch.get_loops(sch.get_sblock("pass"))[-1])
    threads = min(CUDA_THREADS, dim)
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
