"""Ascend "schedules" at the TIR level, before ``tide.targets.ascend.codegen`` translates a kernel to
MLIR: tide's kernels arrive written with their independent row loops as ``T.parallel`` (the
definitions' non-CUDA form); codegen maps a kernel's parallel loop onto the AI cores
(``get_block_idx`` / ``get_block_num``). Kernels without one (generic kernels, and tide kernels
defined with plain loops) get their leading data-parallel loop marked parallel here when the kernel
is a single loop nest (several nests in one kernel would need a cross-core barrier between them, so
they run on one core).
"""

from __future__ import annotations

import math

from ..helpers import schedule_of

CORES = 48  # vector cores of a 910B (Ascend910B1): how many iterations a parallel row loop should offer


def kernel(func):
    """A tide kernel as the Ascend codegen takes it: its definition (with its leading loop made
    parallel as for generic kernels when it has none), marked scheduled."""
    return _parallel_outer(func).with_attr("tirx.is_scheduled", True)


def _parallel_outer(func):
    """``func`` with its outer loops parallel where ``tvm.s_tir.Schedule.parallel`` accepts them
    (every block under them binds them to data-parallel iterators only) and the kernel is one loop
    nest: of a nest around one block, the shortest run of leading loops (never its innermost one,
    which codegen vectorizes) that fuse into one parallel loop of at least CORES iterations (else
    the longest that fuses), so each core keeps whole inner loops; of other nests the outermost
    loop alone. ``func`` itself when none is accepted."""
    from tvm import tirx

    if _single_nest_loop(func) is None or not _has_root(func):
        return func
    sch = schedule_of(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if not blocks or sch.get(sch.get_loops(blocks[0])[0]).kind != tirx.ForKind.SERIAL:
        return func
    loops = sch.get_loops(blocks[0])
    # one block: leave its innermost loop out of the fusion (it is the one codegen vectorizes)
    depth = max(1, len(loops) - 1) if len(blocks) == 1 else 1
    extents = [sch.get(lp).extent for lp in loops[:depth]]
    best = func
    for n in range(1, depth + 1):
        trial = schedule_of(func)
        lead = trial.get_loops(trial.get_child_blocks(trial.get_sblock("root"))[0])[:n]
        try:
            trial.parallel(trial.fuse(*lead) if n > 1 else lead[0])
        except Exception:  # noqa: BLE001  (tvm's ScheduleError: not fusable, or not data-parallel)
            break
        best = trial.mod["main"]
        if not all(isinstance(e, tirx.IntImm) for e in extents[:n]) or math.prod(int(e) for e in extents[:n]) >= CORES:
            break
    return best


def _single_nest_loop(func):
    """The outermost loop of ``func`` when its body is one loop nest, else None."""
    from tvm import s_tir, tirx

    body = func.body
    while isinstance(body, s_tir.SBlockRealize) and not body.iter_values:
        body = body.block.body
    return body if isinstance(body, tirx.For) else None


def schedule(mod, target=None):
    """Every not-yet-scheduled PrimFunc of ``mod`` (the generic kernels) as ``kernel`` makes it."""
    from tvm import tirx

    updated = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or (func.attrs and func.attrs.get("tirx.is_scheduled")):
            continue
        updated[gv] = kernel(func)
    for gv, func in updated.items():
        mod[gv] = func
    return mod


def _has_root(func) -> bool:
    from tvm import s_tir

    return isinstance(func.body, s_tir.SBlockRealize) and func.body.block.name_hint == "root"
