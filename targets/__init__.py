"""tide.targets: one module per target: its TVM target, what its artifacts require of the machine,
and how every kernel is scheduled for it."""

import textwrap

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


def row_loop(target_kind: str, var: str, rows: int, body: str) -> str:
    """TVMScript of a loop over ``rows`` independent rows that runs ``body`` (TVMScript text using
    ``var``) once per row: on the CPU a ``T.parallel`` loop (the runtime's thread pool), on CUDA one
    row per thread over blocks of ``cuda.ROW_THREADS`` threads, guarded when ``rows`` is no multiple."""
    body = textwrap.dedent(body).strip("\n")
    if target_kind != "cuda":
        return f"for {var} in T.parallel({rows}):\n" + textwrap.indent(body, " " * 4)
    from . import cuda

    threads = min(cuda.ROW_THREADS, rows)
    blocks = -(-rows // threads)
    lines = [f'for {var}_bx in T.thread_binding({blocks}, thread="blockIdx.x"):',
             f'    for {var}_tx in T.thread_binding({threads}, thread="threadIdx.x"):',
             f"        {var}: T.int32 = {var}_bx * {threads} + {var}_tx"]
    pad = " " * 8
    if blocks * threads != rows:
        lines.append(f"{pad}if {var} < {rows}:")
        pad += " " * 4
    return "\n".join(lines) + "\n" + textwrap.indent(body, pad)
