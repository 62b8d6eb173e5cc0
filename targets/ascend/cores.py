"""Ascend "schedules" at the TIR level, before ``tide.targets.ascend.codegen`` translates a kernel to
MLIR: tide's kernels arrive written with their independent row loops as ``T.parallel`` (the
definitions' non-CUDA form); codegen maps a kernel's parallel loop onto the AI cores
(``get_block_idx`` / ``get_block_num``). Generic kernels get their leading data-parallel loop marked
parallel here when the kernel is a single loop nest (several nests in one kernel would need a
cross-core barrier between them, so they run on one core).
"""

from __future__ import annotations

CORES = 48  # vector cores of a 910B (Ascend910B1); the attention and indexer split-K targets


def kernel(func):
    """A tide kernel as the Ascend codegen takes it: its definition, marked scheduled."""
    return func.with_attr("tirx.is_scheduled", True)


def _single_nest_loop(func):
    """The outermost loop of ``func`` when its body is one loop nest, else None."""
    from tvm import s_tir, tirx

    body = func.body
    while isinstance(body, s_tir.SBlockRealize) and not body.iter_values:
        body = body.block.body
    return body if isinstance(body, tirx.For) else None


def schedule(mod, target=None):
    """Marks every not-yet-scheduled PrimFunc of ``mod`` scheduled, with its outermost loop parallel
    where ``tvm.s_tir.Schedule.parallel`` accepts it (every block under it binds the loop to
    data-parallel iterators only) and the kernel is one loop nest."""
    from tvm import s_tir, tirx

    updated = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or (func.attrs and func.attrs.get("tirx.is_scheduled")):
            continue
        if _single_nest_loop(func) is not None:
            sch = s_tir.Schedule(func)
            blocks = sch.get_child_blocks(sch.get_sblock("root")) if _has_root(func) else []
            if len(blocks) == 1:
                try:
                    sch.parallel(sch.get_loops(blocks[0])[0])
                    func = sch.mod["main"]
                except Exception:  # noqa: BLE001  (tvm's ScheduleError: the loop is not data-parallel)
                    pass
        updated[gv] = func.with_attr("tirx.is_scheduled", True)
    for gv, func in updated.items():
        mod[gv] = func
    return mod


def _has_root(func) -> bool:
    from tvm import s_tir

    return isinstance(func.body, s_tir.SBlockRealize) and func.body.block.name_hint == "root"
