"""In-place state update: ScatterND (reduction none) that writes only the updated rows.

The exporter expresses every decode-state update as ``present.X = ScatterND(past.X, idx, upd)``.
The compiler binds ``present.X`` to the state buffer of ``past.X`` and calls this kernel last, so a
step writes only the rows it changes instead of copying the cache. Indices outside the tensor are
skipped (memory safety); distinct indices are part of the exporter's contract.
"""

from __future__ import annotations

import math

import numpy as np


def prim_func(data_shape, index_shape, dtype: str = "float32", index_dtype: str = "int64",
              target_kind: str = "cpu", name: str = "tide_state_scatter"):
    """Updated rows are written in parallel: the CPU thread pool, or one row per CUDA thread
    (``tide.targets.row_loop``)."""
    import textwrap

    import tvm
    from tvm.script import tirx as T  # noqa: F401  (referenced by the parsed source)

    from ..targets import row_loop

    k = index_shape[-1]
    if not 1 <= k <= len(data_shape):
        raise ValueError(f"index depth {k} does not fit data of rank {len(data_shape)}")
    rows_m = math.prod(index_shape[:-1])
    inner = math.prod(data_shape[k:])
    total = math.prod(data_shape)
    upd_shape = tuple(index_shape[:-1]) + tuple(data_shape[k:])
    strides = [math.prod(data_shape[j + 1:k]) for j in range(k)]
    row_expr = " + ".join(f"T.int64(idx[m * {k} + {j}]) * T.int64({strides[j]})" for j in range(k))
    in_range = " and ".join(
        f"T.int64(idx[m * {k} + {j}]) >= T.int64(0) and T.int64(idx[m * {k} + {j}]) < T.int64({data_shape[j]})"
        for j in range(k))
    row = f'''
        if {in_range}:
            for e in range({inner}):
                out[({row_expr}) * T.int64({inner}) + T.int64(e)] = upd[m * {inner} + e]
'''
    src = f'''
@T.prim_func(s_tir=True)
def {name}(index: T.Buffer({tuple(index_shape)}, "{index_dtype}"), updates: T.Buffer({upd_shape}, "{dtype}"),
           state: T.Buffer({tuple(data_shape)}, "{dtype}")):
    T.func_attr({{"global_symbol": "{name}", "tirx.noalias": True, "tirx.is_scheduled": True}})
    with T.sblock("root"):
        idx = T.decl_buffer(({rows_m * k},), "{index_dtype}", data=index.data)
        upd = T.decl_buffer(({rows_m * inner},), "{dtype}", data=updates.data)
        out = T.decl_buffer(({total},), "{dtype}", data=state.data)
{textwrap.indent(row_loop(target_kind, "m", rows_m, row), " " * 8)}
'''
    return tvm.script.from_source(src)


def reference(data: np.ndarray, indices: np.ndarray, updates: np.ndarray) -> np.ndarray:
    out = data.copy()
    k = indices.shape[-1]
    for m, idx in enumerate(indices.reshape(-1, k)):
        if all(0 <= idx[j] < data.shape[j] for j in range(k)):
            out[tuple(idx)] = updates.reshape((-1,) + data.shape[k:])[m]
    return out


def cost(index_shape, data_shape, itemsize: int = 4) -> dict:
    k = index_shape[-1]
    moved = math.prod(index_shape[:-1]) * math.prod(data_shape[k:]) * itemsize
    return {"flops": 0, "bytes": 2 * moved + math.prod(index_shape) * 8}
