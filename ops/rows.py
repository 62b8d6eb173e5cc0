"""The loop over independent rows shared by the row-wise kernels (``tide.ops.topk``,
``tide.ops.state_scatter``): a kernel that runs one row per iteration with no schedule of its own
defines its row loop here, on the CPU's thread pool or over a GPU grid of one row per thread.
"""

from __future__ import annotations


def over_rows(rows: int, row_threads: int | None = None):
    """A ``T.macro`` ``loop(row, *args)`` that runs the ``T.macro`` ``row(r, *args)`` once per row
    ``r < rows``: ``row_threads`` None, a ``T.parallel`` loop (the runtime's thread pool); an int, one
    row per thread over blocks of ``min(row_threads, rows)`` threads (``blockIdx.x`` x
    ``threadIdx.x``), guarded by ``r < rows`` when ``rows`` is no multiple of the block."""
    from tvm.script import tirx as T

    threads = min(row_threads or rows, rows)
    blocks = -(-rows // threads)

    @T.macro
    def loop(row, *args):
        if row_threads is None:
            for r in T.parallel(rows):
                row(r, *args)
        else:
            for r_bx in T.thread_binding(blocks, thread="blockIdx.x"):
                for r_tx in T.thread_binding(threads, thread="threadIdx.x"):
                    r: T.int32 = r_bx * threads + r_tx
                    if blocks * threads == rows:
                        row(r, *args)
                    else:
                        if r < rows:
                            row(r, *args)

    return loop
