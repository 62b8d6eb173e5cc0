"""In-place state update: ScatterND (reduction none) that writes only the updated rows.

The exporter expresses every decode-state update as ``present.X = ScatterND(past.X, idx, upd)``.
The compiler binds ``present.X`` to the state buffer of ``past.X`` and calls this kernel last, so a
step writes only the rows it changes instead of copying the cache. Indices outside the tensor are
skipped (memory safety); distinct indices are part of the exporter's contract.

Precision: copies the updates as they are (any dtype); reads the indices as int64 or int32 and
compares them as int64.
"""

from __future__ import annotations

import functools
import math
import operator

import numpy as np

from . import kernel


@kernel.builder
def prim_func(data_shape, index_shape, dtype: str = "float32", index_dtype: str = "int64",
              row_threads: int | None = None, wrap_negative: bool = False, name: str = "tide_state_scatter"):
    """Updated rows are written in parallel: the CPU thread pool, or one row per GPU thread over
    blocks of ``row_threads`` (``tide.ops.rows.over_rows``). ``wrap_negative``: a negative
    coordinate counts from the end of its axis (ONNX's rule: ``c + extent``) before the range check,
    so the graph's own wrap of the indices (a kernel call per update) is not needed."""
    import tvm
    from tvm.script import tirx as T

    from .rows import over_rows

    k = index_shape[-1]
    if not 1 <= k <= len(data_shape):
        raise ValueError(f"index depth {k} does not fit data of rank {len(data_shape)}")
    index_shape, data_shape = tuple(index_shape), tuple(data_shape)
    rows_m = math.prod(index_shape[:-1])
    inner = math.prod(data_shape[k:])
    total = math.prod(data_shape)
    upd_shape = index_shape[:-1] + data_shape[k:]
    strides = [math.prod(data_shape[j + 1:k]) for j in range(k)]
    loop = over_rows(rows_m, row_threads)

    def coords(idx, m):
        """The k int64 coordinates of index row ``m``."""
        raw = [T.int64(idx[m * k + j]) for j in range(k)]
        if not wrap_negative:
            return raw
        return [T.if_then_else(c < T.int64(0), c + T.int64(extent), c) for c, extent in zip(raw, data_shape)]

    def in_range(idx, m):
        """Whether index row ``m`` lies inside the state."""
        bounds = []
        for c, extent in zip(coords(idx, m), data_shape):
            bounds += [c >= T.int64(0), c < T.int64(extent)]
        return functools.reduce(tvm.tirx.And, bounds)

    def state_row(idx, m):
        """The row of the flattened state that index row ``m`` names."""
        return functools.reduce(operator.add, [c * T.int64(s) for c, s in zip(coords(idx, m), strides)])

    @T.macro
    def row(m, idx, upd, out):
        if in_range(idx, m):
            for e in range(inner):
                out[state_row(idx, m) * T.int64(inner) + T.int64(e)] = upd[m * inner + e]

    @T.prim_func(s_tir=True)
    def kernel(index: T.Buffer(index_shape, index_dtype), updates: T.Buffer(upd_shape, dtype),
               state: T.Buffer(data_shape, dtype)):
        T.func_attr({"global_symbol": name, "tirx.noalias": True, "tirx.is_scheduled": True})
        with T.sblock("root"):
            idx = T.decl_buffer((rows_m * k,), index_dtype, data=index.data)
            upd = T.decl_buffer((rows_m * inner,), dtype, data=updates.data)
            out = T.decl_buffer((total,), dtype, data=state.data)
            loop(row, idx, upd, out)

    return kernel


def reference(data: np.ndarray, indices: np.ndarray, updates: np.ndarray, wrap_negative: bool = False) -> np.ndarray:
    out = data.copy()
    k = indices.shape[-1]
    for m, idx in enumerate(indices.reshape(-1, k)):
        if wrap_negative:
            idx = np.where(idx < 0, idx + np.array(data.shape[:k]), idx)
        if all(0 <= idx[j] < data.shape[j] for j in range(k)):
            out[tuple(idx)] = updates.reshape((-1,) + data.shape[k:])[m]
    return out


def cost(index_shape, data_shape, itemsize: int = 4) -> dict:
    k = index_shape[-1]
    moved = math.prod(index_shape[:-1]) * math.prod(data_shape[k:]) * itemsize
    return {"flops": 0, "bytes": 2 * moved + math.prod(index_shape) * 8}
