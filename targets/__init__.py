"""tide.targets: one module per target: its TVM target, what its artifacts require of the machine,
and how every kernel is scheduled for it."""

VECTOR = 16  # fp32 lanes of a 512-bit register


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


def vectorize(sch, loop, lanes: int = VECTOR) -> None:
    """Vectorizes ``loop`` in chunks of ``lanes`` (the whole loop when it is shorter; left scalar
    when ``lanes`` does not divide it)."""
    n = loop_extent(sch, loop)
    if n <= lanes:
        sch.vectorize(loop)
    elif n % lanes == 0:
        _, inner = sch.split(loop, factors=[None, lanes])
        sch.vectorize(inner)

