"""mHC pre-mixing: serves ``tide.HyperConnectionPre(h, fn, base, scale) -> (x, post, comb)``.

V4 keeps N residual streams per token; before every sublayer the streams are collapsed into the
sublayer's input and the mixing weights of the post-mixing are computed. Two kernels per call:

1. the mixing projection ``m_raw = flatten(h) @ fn^T`` ([T, N*D] x [N*D, (2+N)N]): a weight matmul
   that kernel substitution serves with ``tide.ops.linear`` (fn read as stored, streamed once);
2. this module's per-token kernel, everything else in one pass over the token's streams:
   ``r = 1 / sqrt(mean(flatten(h)^2) + norm_eps)`` (the weightless RMS norm of the streams, applied
   to the projection's output: ``rmsnorm(h) @ fn^T = r * (h @ fn^T)``), ``m = r * m_raw``,
   ``pre = sigmoid(m_pre * scale[0] + base_pre) + hc_eps``,
   ``post = 2 * sigmoid(m_post * scale[1] + base_post)``,
   ``comb = softmax(m_comb * scale[2] + base_comb) + hc_eps`` over each row of the N x N matrix,
   then the Sinkhorn normalization (columns, then ``iters - 1`` times rows and columns, each sum
   plus hc_eps) and ``x = sum_k pre_k h_k``.

The exporter's graph computes the same thing as about 90 element-wise kernels per call (the
Sinkhorn loop unrolled); here it is two calls. Rows (tokens) run in parallel
(``tide.ops.rows.over_rows``: the CPU thread pool, or one token per GPU thread).

Precision: float32 in, float32 arithmetic (the sum of squares in ``LANES`` partial sums), float32
out.
"""

from __future__ import annotations

import math

import numpy as np

from . import kernel

LANES = 8  # partial sums of the squares: independent chains the compiler can vectorize


@kernel.builder
def prim_func(tokens: int, streams: int, dim: int, iters: int, hc_eps: float, norm_eps: float,
              row_threads: int | None = None, name: str = "tide_hc_pre"):
    """``mix [T, (2+N)N]`` (the raw projection), ``h [T, N*D]``, ``base [(2+N)N]``, ``scale [3]`` ->
    ``x [T, D]``, ``post [T, N]``, ``comb [T, N, N]``."""
    from tvm.script import tirx as T

    from .rows import over_rows

    if iters < 1:
        raise ValueError(f"the Sinkhorn normalization needs at least 1 iteration, got {iters}")
    n, width = streams, streams * dim
    m = n * (2 + n)
    lanes = next(c for c in (LANES, 4, 2, 1) if width % c == 0)
    eps, one = T.float32(float(hc_eps)), T.float32(1.0)
    loop = over_rows(tokens, row_threads)

    def sigmoid(z):
        return one / (one + T.exp(-z))

    def collapsed(h, pre, t, d):
        """``sum_k pre_k h[t, k, d]``, k in order."""
        acc = pre[0] * h[t, d]
        for k in range(1, n):
            acc = acc + pre[k] * h[t, k * dim + d]
        return acc

    @T.macro
    def normalize(c, total, columns):
        """Each column (or row) of c divided by its sum plus hc_eps."""
        for i in range(n):
            total[i] = T.float32(0)
            for j in range(n):
                if columns:
                    total[i] = total[i] + c[j, i]
                else:
                    total[i] = total[i] + c[i, j]
            total[i] = total[i] + eps
        for i, j in T.grid(n, n):
            if columns:
                c[i, j] = c[i, j] / total[j]
            else:
                c[i, j] = c[i, j] / total[i]

    @T.macro
    def row(t, mix, h, base, scale, x, post, comb):
        sq = T.alloc_buffer((lanes,), "float32", scope="local")
        r = T.alloc_buffer((1,), "float32", scope="local")
        pre = T.alloc_buffer((n,), "float32", scope="local")
        c = T.alloc_buffer((n, n), "float32", scope="local")
        total = T.alloc_buffer((n,), "float32", scope="local")
        for lane in range(lanes):
            sq[lane] = T.float32(0)
        for i, lane in T.grid(width // lanes, lanes):
            sq[lane] = sq[lane] + h[t, i * lanes + lane] * h[t, i * lanes + lane]
        r[0] = T.float32(0)
        for lane in range(lanes):
            r[0] = r[0] + sq[lane]
        r[0] = one / T.sqrt(r[0] / T.float32(width) + T.float32(float(norm_eps)))
        for k in range(n):
            pre[k] = sigmoid(mix[t, k] * r[0] * scale[0] + base[k]) + eps
            post[t, k] = T.float32(2.0) * sigmoid(mix[t, n + k] * r[0] * scale[1] + base[n + k])
        for i in range(n):  # softmax of each row of the logits; total[i] holds the row's max, then its sum
            for j in range(n):
                c[i, j] = mix[t, 2 * n + i * n + j] * r[0] * scale[2] + base[2 * n + i * n + j]
            total[i] = c[i, 0]
            for j in range(1, n):
                total[i] = T.max(total[i], c[i, j])
            for j in range(n):
                c[i, j] = T.exp(c[i, j] - total[i])
            total[i] = T.float32(0)
            for j in range(n):
                total[i] = total[i] + c[i, j]
            for j in range(n):
                c[i, j] = c[i, j] / total[i] + eps
        normalize(c, total, True)
        for _ in range(iters - 1):
            normalize(c, total, False)
            normalize(c, total, True)
        for i, j in T.grid(n, n):
            comb[t, i, j] = c[i, j]
        for d in range(dim):
            x[t, d] = collapsed(h, pre, t, d)

    @T.prim_func(s_tir=True)
    def func(mix: T.Buffer((tokens, m), "float32"), h: T.Buffer((tokens, width), "float32"),
             base: T.Buffer((m,), "float32"), scale: T.Buffer((3,), "float32"),
             x: T.Buffer((tokens, dim), "float32"), post: T.Buffer((tokens, n), "float32"),
             comb: T.Buffer((tokens, n, n), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True, "tirx.is_scheduled": True})
        with T.sblock("root"):
            loop(row, mix, h, base, scale, x, post, comb)

    return func


def reference(h: np.ndarray, fn: np.ndarray, base: np.ndarray, scale: np.ndarray, iters: int, hc_eps: float,
              norm_eps: float):
    """float64 ``(x [T, D], post [T, N], comb [T, N, N])`` of ``h [T, N, D]``, as the ONNX function
    defines them (the norm applied before the projection)."""
    h64 = h.astype(np.float64)
    tokens, n, dim = h64.shape
    flat = h64.reshape(tokens, n * dim)
    normed = flat / np.sqrt(np.mean(flat * flat, axis=-1, keepdims=True) + norm_eps)
    mix = normed @ fn.astype(np.float64).T
    base64, scale64 = base.astype(np.float64), scale.astype(np.float64)
    pre = 1 / (1 + np.exp(-(mix[:, :n] * scale64[0] + base64[:n]))) + hc_eps
    post = 2 / (1 + np.exp(-(mix[:, n:2 * n] * scale64[1] + base64[n:2 * n])))
    logits = (mix[:, 2 * n:] * scale64[2] + base64[2 * n:]).reshape(tokens, n, n)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    comb = e / e.sum(-1, keepdims=True) + hc_eps
    comb = comb / (comb.sum(-2, keepdims=True) + hc_eps)
    for _ in range(iters - 1):
        comb = comb / (comb.sum(-1, keepdims=True) + hc_eps)
        comb = comb / (comb.sum(-2, keepdims=True) + hc_eps)
    x = np.einsum("tk,tkd->td", pre, h64)
    return x, post, comb


def cost(tokens: int, streams: int, dim: int, iters: int, itemsize: int = 4) -> dict:
    """Per token: 2 FLOPs per stream element for the squares, 2 for the collapse, and the N x N
    Sinkhorn (about 4 N^2 per normalization, 2 * iters of them); bytes: h read once (the collapse
    re-reads it from cache), the outputs written once."""
    n = streams
    m = n * (2 + n)
    flops = tokens * (4 * n * dim + 8 * n * n * iters + 12 * m)
    return {"flops": flops, "bytes": (tokens * (m + n * dim + dim + n + n * n) + m + 3) * itemsize}


def relax_convert(bb, inputs, attrs, *, choose, report):
    """``tide.HyperConnectionPre`` -> the projection ``flatten(h) @ fn^T`` (a weight matmul, served by
    ``tide.ops.linear`` after import), then this kernel on ``[tokens, N*D]``."""
    from tvm import relax

    h, fn, base, scale = inputs
    shape = [int(d) for d in h.ty.shape]
    *lead, n, dim = shape
    tokens, m = math.prod(lead), int(fn.ty.shape[0])
    if any(str(v.ty.dtype) != "float32" for v in inputs) or m != n * (2 + n) or \
            [int(d) for d in fn.ty.shape] != [m, n * dim]:
        raise ValueError(f"tide.HyperConnectionPre kernels take float32 inputs (a stored bf16 weight arrives "
                         f"widened) and fn [(2+N)N, N*D]; got h {h.ty.dtype}{shape}, fn {fn.ty.dtype}"
                         f"{[int(d) for d in fn.ty.shape]}, base {base.ty.dtype}, scale {scale.ty.dtype}")
    if int(attrs.get("hc_mult", n)) != n:
        raise ValueError(f"tide.HyperConnectionPre: hc_mult {attrs['hc_mult']} but h has {n} streams")
    iters = int(attrs["sinkhorn_iters"])
    hc_eps, norm_eps = float(attrs["hc_eps"]), float(attrs["norm_eps"])
    name = f"tide_hc_pre_t{tokens}n{n}d{dim}i{iters}"
    row_threads = choose("rows", rows=tokens).get("row_threads")
    gv = kernel.add(bb, prim_func(tokens, n, dim, iters, hc_eps, norm_eps, row_threads, name), name, "hc_pre",
                    tokens=tokens, streams=n, dim=dim, iters=iters, **cost(tokens, n, dim, iters))
    report.add(name, f"tide.HyperConnectionPre [T {tokens}, N {n}, D {dim}, {iters} Sinkhorn iterations]: "
                     "norm, mixing weights, Sinkhorn, collapse")
    flat = bb.emit(relax.op.reshape(h, (tokens, n * dim)))
    mix = bb.emit(relax.op.matmul(flat, bb.emit(relax.op.permute_dims(fn))))
    out = bb.emit(relax.call_tir(gv, [mix, flat, base, scale], out_ty=[
        relax.TensorType((tokens, dim), "float32"), relax.TensorType((tokens, n), "float32"),
        relax.TensorType((tokens, n, n), "float32")]))
    x, post, comb = (bb.emit(relax.TupleGetItem(out, i)) for i in range(3))
    return relax.Tuple([bb.emit(relax.op.reshape(x, lead + [dim])), bb.emit(relax.op.reshape(post, lead + [n])),
                        bb.emit(relax.op.reshape(comb, lead + [n, n]))])
