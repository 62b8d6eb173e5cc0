"""Schedule helpers the target folders share (``tvm.s_tir.Schedule`` conveniences)."""

from __future__ import annotations


def schedule_of(func):
    """A ``tvm.s_tir.Schedule`` of a private copy of ``func``. TVM's schedule edits the function it
    is given in place, and tide's kernel builders hand out one parse per distinct kernel
    (``tide.ops.kernel.builder``), so a rule that scheduled a kernel itself would edit every other
    use of it."""
    import copy

    from tvm import s_tir

    return s_tir.Schedule(copy.deepcopy(func))


def loop_extent(sch, loop) -> int:
    """The constant extent of ``loop`` in schedule ``sch``."""
    return int(sch.get(loop).extent)


def has_block(sch, name: str) -> bool:
    """Whether schedule ``sch`` has a block named ``name``."""
    try:
        sch.get_sblock(name)
    except Exception:  # noqa: BLE001  (tvm raises its own error type for a missing block)
        return False
    return True


def vectorize(sch, loop, lanes: int) -> None:
    """Vectorizes ``loop`` in chunks of ``lanes`` (the whole loop when it is shorter; left scalar
    when ``lanes`` does not divide it)."""
    n = loop_extent(sch, loop)
    if n <= lanes:
        sch.vectorize(loop)
    elif n % lanes == 0:
        _, inner = sch.split(loop, factors=[None, lanes])
        sch.vectorize(inner)


def vectorize_last(sch, block, lanes: int) -> None:
    """Vectorizes the innermost loop of ``block`` in chunks of ``lanes``."""
    vectorize(sch, sch.get_loops(block)[-1], lanes)


def schedule_rule(body):
    """A schedule rule ``rule(func, target=None)`` from a body that edits a ``tvm.s_tir.Schedule``
    of the kernel in place."""

    def rule(func, target=None):
        sch = schedule_of(func)
        body(sch)
        return sch.mod["main"]

    return rule


def weight_layout(sch) -> str:
    """The weight layout a kernel of schedule ``sch`` was built for (its identity's ``layout``
    parameter; "rows" when it has none)."""
    from ..ops.kernel import identity

    return identity(sch.mod["main"])[1].get("layout", "rows")
