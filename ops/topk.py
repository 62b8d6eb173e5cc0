"""Top-k along the last axis, sorted descending, ties broken by the lower index first.

The ONNX TopK rule and the one the V4 indexer and router rely on. One row per outer iteration: an
insertion into a sorted list of k, so a row costs O(n) when few elements enter the list and
O(n * k) at worst. Replaces TVM's generic lowering, which calls a runtime sort function that a
thin runtime does not provide.

Precision: reads ``dtype`` (any numeric type), compares in it and writes values unchanged and
indices as ``index_dtype`` (int64 or int32); no arithmetic on the values.
"""

from __future__ import annotations

import numpy as np

from . import kernel


@kernel.builder
def prim_func(rows: int, n: int, k: int, dtype: str = "float32", index_dtype: str = "int64",
              largest: bool = True, row_threads: int | None = None, name: str = "tide_topk"):
    """Rows run in parallel: the CPU thread pool, or one row per GPU thread over blocks of
    ``row_threads`` (``tide.ops.rows.over_rows``)."""
    from tvm.script import tirx as T

    from .rows import over_rows

    if not 1 <= k <= n:
        raise ValueError(f"top-k needs 1 <= k <= n, got k={k}, n={n}")
    loop = over_rows(rows, row_threads)

    def better(a, b):
        """Whether a value ``a`` goes before ``b`` in the list."""
        return a > b if largest else a < b

    @T.macro
    def row(r, data, values, indices):
        count = T.alloc_buffer((1,), "int32", scope="local")
        pos = T.alloc_buffer((1,), "int32", scope="local")
        count[0] = 0
        for i in range(n):
            v = data[r, i]
            if count[0] < k or better(v, values[r, k - 1]):
                pos[0] = T.min(count[0], k - 1)
                while pos[0] > 0 and better(v, values[r, pos[0] - 1]):
                    values[r, pos[0]] = values[r, pos[0] - 1]
                    indices[r, pos[0]] = indices[r, pos[0] - 1]
                    pos[0] = pos[0] - 1
                values[r, pos[0]] = v
                indices[r, pos[0]] = T.cast(i, index_dtype)
                count[0] = T.min(count[0] + 1, k)

    @T.prim_func(s_tir=True)
    def kernel(data: T.Buffer((rows, n), dtype), values: T.Buffer((rows, k), dtype),
               indices: T.Buffer((rows, k), index_dtype)):
        T.func_attr({"global_symbol": name, "tirx.noalias": True, "tirx.is_scheduled": True})
        with T.sblock("root"):
            loop(row, data, values, indices)

    return kernel


def reference(data: np.ndarray, k: int, largest: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Values and int64 indices of the k largest (or smallest) entries of each row."""
    order = np.argsort(-data if largest else data, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(data, order, axis=-1), order.astype(np.int64)


def cost(rows: int, n: int, k: int, itemsize: int = 4) -> dict:
    """Comparisons counted as FLOPs (one per element, the common case); bytes: read once, write k."""
    return {"flops": rows * n, "bytes": rows * n * itemsize + rows * k * (itemsize + 8)}
