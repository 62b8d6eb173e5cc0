"""mHC post-mixing: serves ``tide.HyperConnectionPost(f, h, post, comb) -> y``.

After every sublayer the N residual streams are rebuilt from the sublayer's output f and the old
streams: ``y[t, k, :] = post[t, k] * f[t, :] + sum_j comb[t, j, k] * h[t, j, :]``. One element-wise
kernel (the sum over j unrolled, j in order), where the exporter's graph has a broadcast multiply,
a transpose, a batched matmul and an add; targets schedule it as any element-wise kernel (on the
CPU: token x stream rows on the thread pool, the model width vectorized).

Precision: float32 in, float32 arithmetic and out.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import kernel


@kernel.builder
def prim_func(tokens: int, streams: int, dim: int, name: str = "tide_hc_post"):
    """``f [T, D]``, ``h [T, N, D]``, ``post [T, N]``, ``comb [T, N, N]`` -> ``y [T, N, D]``."""
    from tvm import te

    f = te.placeholder((tokens, dim), "float32", name="f")
    h = te.placeholder((tokens, streams, dim), "float32", name="h")
    post = te.placeholder((tokens, streams), "float32", name="post")
    comb = te.placeholder((tokens, streams, streams), "float32", name="comb")

    def value(t, k, d):
        mixed = functools.reduce(lambda acc, j: acc + comb[t, j, k] * h[t, j, d], range(1, streams),
                                 comb[t, 0, k] * h[t, 0, d])
        return post[t, k] * f[t, d] + mixed

    y = te.compute((tokens, streams, dim), value, name="y")
    return te.create_prim_func([f, h, post, comb, y]).with_attr("global_symbol", name)


def reference(f: np.ndarray, h: np.ndarray, post: np.ndarray, comb: np.ndarray) -> np.ndarray:
    """float64 ``y [T, N, D]``."""
    f64, h64 = f.astype(np.float64), h.astype(np.float64)
    return post.astype(np.float64)[..., None] * f64[:, None, :] + np.einsum("tjk,tjd->tkd", comb.astype(np.float64), h64)


def cost(tokens: int, streams: int, dim: int, itemsize: int = 4) -> dict:
    """2 FLOPs per stream element for the spread and 2 per (j, k) pair; f, h and the weights read once, y
    written once."""
    n = streams
    return {"flops": tokens * n * dim * (2 + 2 * n),
            "bytes": tokens * (dim + 2 * n * dim + n + n * n) * itemsize}


def relax_convert(bb, inputs, attrs, *, choose, report):
    """``tide.HyperConnectionPost`` -> one call of this kernel on ``[tokens, ...]`` views."""
    from tvm import relax

    f, h, post, comb = inputs
    shape = [int(d) for d in h.ty.shape]
    *lead, n, dim = shape
    tokens = math.prod(lead)
    if any(str(v.ty.dtype) != "float32" for v in inputs):
        raise ValueError("tide.HyperConnectionPost kernels take float32 inputs")
    name = f"tide_hc_post_t{tokens}n{n}d{dim}"
    gv = kernel.add(bb, prim_func(tokens, n, dim, name), name, "hc_post", tokens=tokens, streams=n, dim=dim,
                    **cost(tokens, n, dim))
    report.add(name, f"tide.HyperConnectionPost [T {tokens}, N {n}, D {dim}]: streams rebuilt from the sublayer output")
    args = [bb.emit(relax.op.reshape(v, s)) for v, s in
            ((f, (tokens, dim)), (h, (tokens, n, dim)), (post, (tokens, n)), (comb, (tokens, n, n)))]
    out = bb.emit(relax.call_tir(gv, args, out_ty=relax.TensorType((tokens, n, dim), "float32")))
    return relax.op.reshape(out, shape)
