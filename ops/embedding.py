"""Embedding lookup: ``y [N, D] = float32(table [V, D][ids [N]])`` for a stored weight table.

Serves ``take(table, ids, axis=0)`` of a model weight, as the exporter's token embedding gives it
(``Gather``, through a widening ``Cast`` for a bfloat16 table); kernel substitution
(``tide.compiler.substitute``) puts it in place, so the table stays as stored (bf16 or float32) in
the artifact and a step reads only the rows it gathers. An id outside ``[0, V)`` gives a zero row
(never a read outside the table).

Precision: the table's values widened exactly to float32; ids int64 or int32.
"""

from __future__ import annotations

import numpy as np

from . import kernel


@kernel.builder
def prim_func(rows: int, vocab: int, dim: int, table_dtype: str = "float32", index_dtype: str = "int64",
              row_threads: int | None = None, name: str = "tide_embedding"):
    """Rows in parallel (``tide.ops.rows.over_rows``), each one row copy widened to float32."""
    from tvm.script import tirx as T

    from .rows import over_rows

    loop = over_rows(rows, row_threads)

    @T.macro
    def row(m, ids, table, out):
        token = T.Cast("int64", ids[m])
        if token >= T.int64(0) and token < T.int64(vocab):
            for e in range(dim):
                out[m, e] = T.Cast("float32", table[token, e])
        else:
            for e in range(dim):
                out[m, e] = T.float32(0)

    @T.prim_func(s_tir=True)
    def kernel(table: T.Buffer((vocab, dim), table_dtype), ids: T.Buffer((rows,), index_dtype),
               out: T.Buffer((rows, dim), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True, "tirx.is_scheduled": True})
        loop(row, ids, table, out)

    return kernel


def reference(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    out = np.zeros((ids.size, table.shape[1]))
    ok = (ids >= 0) & (ids < table.shape[0])
    out[ok] = table[ids[ok]].astype(np.float64)
    return out


def cost(rows: int, dim: int, itemsize: int = 4) -> dict:
    """The gathered rows read once (``itemsize`` bytes each element), written once as float32."""
    return {"flops": 0, "bytes": rows * dim * (itemsize + 4) + rows * 8}
