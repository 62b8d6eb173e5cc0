"""The CPU's schedule of generic kernels (TVM-lowered ops, and tide kernels without a rule).

GEMM-like kernels get a register-tiled schedule (with the reduction blocked outside the row tiles
when several row tiles share a weight panel bigger than PANEL_BYTES; see ``gemm_k_block``);
otherwise the parallel-spatial rule: each block's leading data-parallel loops fused and run on the
thread pool, the innermost data-parallel loop vectorized when it is the block's last loop.
Kernels written without blocks (tide kernels in their final form) are kept as written. (dlight's
CPU GEMV rule is not used: it vectorizes loops around a reduction, which LLVM codegen in TVM 0.27
does not finish on some kernels.)
"""

from __future__ import annotations

import functools

VECTOR = 16  # fp32 lanes of a 512-bit register (LLVM splits them on narrower machines)


def schedule(func, tvm_target):
    """``func`` scheduled by the first rule that applies, or None (a rule that fails on a kernel is
    skipped for that kernel)."""
    for rule in (_parallel_spatial_rule(),):
        try:
            sch = rule.apply(func, tvm_target, False)
        except (AssertionError, ValueError, IndexError, TypeError, RuntimeError):
            sch = None  # this rule does not fit the kernel: try the next
        if sch is not None:
            return (sch[0] if isinstance(sch, list) else sch).mod["main"]
    return None


@functools.lru_cache(maxsize=None)
def _parallel_spatial_rule():
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import try_inline
    from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

    class ParallelSpatial(CPUScheduleRule):
        def apply(self, func, target, _tunable):
            if not isinstance(func, tirx.PrimFunc):
                return None
            sch = s_tir.Schedule(func)
            try:
                infos = normalize_prim_func(sch)
            except s_tir.ScheduleError:
                return None
            if infos is None:  # written without blocks (tide kernels): already in final form
                return None
            for info in try_inline(sch, infos):
                trial = sch.copy()
                try:
                    if _tile_reduction(trial, info):
                        sch = trial
                        continue
                except s_tir.ScheduleError:
                    pass  # not a GEMM-like block after all: the generic schedule below
                _schedule_block(sch, info)
            return sch

    return ParallelSpatial()

TILE_ROWS, TILE_COLS = 4, 64  # a register tile of the GEMM-like rule: 4 x (4 vectors)
# Bytes of a weight panel (a K block x TILE_COLS columns) that the reduction-blocked GEMM keeps in
# cache while every row tile passes over it: an eighth of a 512 KiB per-core L2 (the smallest on
# current x86 server cores), leaving room for the row tiles of the input and the output panel.
PANEL_BYTES = 64 * 1024


def gemm_k_block(rows: int, dim: int, cols: int, itemsize: int = 4) -> int | None:
    """The reduction block of a ``rows x dim`` by ``dim x cols``-panel GEMM, or None to run the whole
    reduction per row tile: blocking pays only when several row tiles share a panel (decode-shaped
    GEMV of up to TILE_ROWS rows reads the weight once either way) and the whole panel overflows
    PANEL_BYTES. The block is the largest divisor of ``dim`` whose panel fits."""
    if rows <= TILE_ROWS or dim * cols * itemsize <= PANEL_BYTES:
        return None
    limit = PANEL_BYTES // (cols * itemsize)
    best = max((d for d in range(VECTOR, limit + 1) if dim % d == 0), default=None)
    return best


def _tile_reduction(sch, info) -> bool:
    """GEMM-like blocks (spatial loops then reductions, the last spatial loop a multiple of the
    vector width): a TILE_ROWS x TILE_COLS accumulator tile kept in registers across the reduction,
    tiles spread over the thread pool. False when the block does not have that shape."""
    from tvm import tirx

    block = info.block_rv
    loops = sch.get_loops(block)
    kinds = info.dom_kind()
    if len(kinds) != len(loops) or "O" in kinds or "R" not in kinds:
        return False
    first_r = kinds.index("R")
    if first_r == 0 or "S" in kinds[first_r:]:
        return False
    s_loops, r_loops = loops[:first_r], loops[first_r:]
    extents = [sch.get(l).extent for l in s_loops]
    if not all(isinstance(e, tirx.IntImm) for e in extents) or extents[-1].value % VECTOR:
        return False
    cols = TILE_COLS if extents[-1].value % TILE_COLS == 0 else VECTOR
    if len(extents) >= 2 and extents[-2].value % TILE_ROWS == 0 and len(r_loops) == 1:
        dim = sch.get(r_loops[0]).extent
        k_block = gemm_k_block(extents[-2].value, dim.value, cols) if isinstance(dim, tirx.IntImm) else None
        if k_block is not None:
            _tile_blocked_reduction(sch, block, s_loops, r_loops[0], cols, k_block)
            return True
    j0, j1 = sch.split(s_loops[-1], factors=[None, cols])
    outer = list(s_loops[:-1])
    tile = []
    if outer and extents[-2].value % TILE_ROWS == 0:
        i0, i1 = sch.split(outer.pop(), factors=[None, TILE_ROWS])
        outer.append(i0)
        tile.append(i1)
    sch.reorder(*outer, j0, *r_loops, *tile, j1)
    sch.parallel(sch.fuse(*outer, j0))
    acc = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(acc, sch.get_loops(block)[0])
    sch.decompose_reduction(block, r_loops[0])
    inner = sch.get_loops(block)
    lanes_outer, _ = sch.split(inner[-1], factors=[None, VECTOR])
    for loop in (*inner[len(inner) - 1 - len(tile):-1], lanes_outer):
        sch.unroll(loop)
    sch.unroll(sch.get_loops(block)[-1])
    return True


def _tile_blocked_reduction(sch, block, s_loops, r_loop, cols: int, k_block: int) -> None:
    """The GEMM-like rule with the reduction blocked by ``k_block`` outside the row tiles: column
    panels (and leading batch loops) on the thread pool; inside, per reduction block every
    TILE_ROWS x ``cols`` tile of the panel accumulates into the output, so the ``k_block x cols``
    weight block is read from cache by all row tiles instead of the whole weight streaming from
    memory once per row tile."""
    j0, j1 = sch.split(s_loops[-1], factors=[None, cols])
    i0, i1 = sch.split(s_loops[-2], factors=[None, TILE_ROWS])
    k0, k1 = sch.split(r_loop, factors=[None, k_block])
    lanes_outer, lanes = sch.split(j1, factors=[None, VECTOR])
    batch = list(s_loops[:-2])
    sch.reorder(*batch, j0, k0, i0, k1, i1, lanes_outer, lanes)
    sch.parallel(sch.fuse(*batch, j0) if batch else j0)
    sch.unroll(i1)
    sch.unroll(lanes_outer)
    sch.vectorize(lanes)
    init = sch.decompose_reduction(block, k0)
    sch.vectorize(sch.get_loops(init)[-1])


def _schedule_block(sch, info) -> None:
    """Spatial loops outside, reductions inside, the last spatial loop innermost and vectorized when
    it divides evenly; the outer spatial loops fused and parallel."""
    from tvm import s_tir, tirx

    block = info.block_rv
    loops = sch.get_loops(block)
    kinds = info.dom_kind()
    if not loops or len(kinds) != len(loops) or "O" in kinds:
        return
    s_loops = [l for l, k in zip(loops, kinds) if k == "S"]
    r_loops = [l for l, k in zip(loops, kinds) if k == "R"]
    if not s_loops:
        return
    inner = None
    last = sch.get(s_loops[-1]).extent
    if isinstance(last, tirx.IntImm) and last.value % VECTOR == 0 and (r_loops or len(s_loops) > 1):
        inner = s_loops.pop()
    elif isinstance(last, tirx.IntImm) and last.value % VECTOR == 0 and not r_loops:
        outer, inner = sch.split(s_loops.pop(), factors=[None, VECTOR])
        s_loops.append(outer)
    sch.reorder(*s_loops, *r_loops, *([inner] if inner is not None else []))
    fused = sch.fuse(*s_loops) if len(s_loops) > 1 else s_loops[0]
    try:
        sch.parallel(fused)
    except s_tir.ScheduleError:
        pass  # a dependence the schedule cannot prove free: the loop stays serial
    if r_loops:
        sch.decompose_reduction(block, r_loops[0])
    if inner is not None:
        vec_inner = sch.get_loops(block)[-1]
        _, vec = sch.split(vec_inner, factors=[None, VECTOR])
        try:
            sch.vectorize(vec)
        except s_tir.ScheduleError:
            pass  # a data-dependent access: the loop stays scalar
