"""Interleaved partial RoPE: serves the exporter's ``tide.RoPE`` function (docs/onnx-contract.md).

``y = RoPE(x, cos, sin)`` rotates the LAST ``rope_dim`` channels of x in interleaved pairs
``(x[off + 2p], x[off + 2p + 1])``, ``off = dim - rope_dim``, and passes the leading ``off``
channels through::

    y[off + 2p]     = x[off + 2p] cos_p - x[off + 2p + 1] sin_p
    y[off + 2p + 1] = x[off + 2p + 1] cos_p + x[off + 2p] sin_p

V4 applies it to the query heads, to the kv latent, to every compressed entry and index query, and,
as the inverse rotation (the same function called with ``-sin``), to the attention output. The
kernel runs over the rows of x (every index of its leading dims, x and y keep their shape) and sees
cos/sin as ``[groups, rope_dim / 2]``: row i uses group ``i // (rows / groups)`` (the exporter's
tables are per token and broadcast over the heads; other broadcasts are materialized first).
``inverse`` rotates by ``-angle`` from the given sin, which lets the compiler drop the graph's
``Neg(sin)`` in front of the inverse RoPE.

Precision: x, cos and sin share one dtype (float32, or float16) and each output channel is computed
in it (two products and a sum, no accumulation).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import kernel


def check_dims(dim: int, rope_dim: int, rows: int, groups: int) -> None:
    if rope_dim % 2 or not 0 < rope_dim <= dim:
        raise ValueError(f"rope_dim {rope_dim} must be even and in (0, {dim}] (the last axis of x)")
    if groups < 1 or rows % groups:
        raise ValueError(f"{rows} rows cannot share {groups} cos/sin rows (rows must be a multiple)")


def rotation(dtype: str, off: int, inner: int, inverse: bool, value, cos, sin, vi, vp, vt):
    """The rotated channel ``off + 2 vp + vt`` of row ``vi``; ``value(c)`` is the (pre-rotation)
    channel c of that row. The pair partner is ``off + 2 vp + 1 - vt`` and its sign ``2 vt - 1``
    (``1 - 2 vt`` for the inverse); row vi reads the cos/sin row ``vi // inner``."""
    from tvm.script import tirx as T

    sign = T.int32(1) - T.int32(2) * vt if inverse else T.int32(2) * vt - T.int32(1)
    return (value(off + 2 * vp + vt) * cos[vi // inner, vp]
            + T.Cast(dtype, sign) * value(off + 2 * vp + 1 - vt) * sin[vi // inner, vp])


def row_loop(row_kind: str):
    """The loop over the rows, as a function of their count: ``serial``, ``parallel`` (the CPU
    thread pool) or a CUDA grid axis such as ``blockIdx.x``. Rows are independent, but the
    pass-through and rotated channels of a row are two writers of y, so the schedule primitives
    cannot prove it: the target picks the kind (its ``rope`` choice)."""
    from tvm.script import tirx as T

    if row_kind == "serial":
        return T.serial
    if row_kind == "parallel":
        return T.parallel
    if row_kind.startswith("blockIdx."):
        return functools.partial(T.thread_binding, thread=row_kind)
    raise ValueError(f"unknown row loop kind '{row_kind}'")


def leading_shape(rows: int, lead) -> tuple:
    """x's and y's shape before their last axis: ``lead``, or ``(rows,)`` when not given. Taking the
    tensors as they are spares the copy a reshape of the output costs when it is a graph output."""
    lead = tuple(int(d) for d in (lead or (rows,)))
    if math.prod(lead) != rows:
        raise ValueError(f"leading shape {list(lead)} does not hold {rows} rows")
    return lead


def row_index(lead: tuple, vi) -> tuple:
    """Row ``vi`` of x and y as their index over the leading shape ``lead`` (its multi-index)."""
    if len(lead) == 1:
        return (vi,)
    index, stride = [], 1
    for d in reversed(lead):
        index.append(vi // stride % d if stride > 1 else vi % d)
        stride *= d
    return tuple(reversed(index))


@kernel.builder
def prim_func(rows: int, dim: int, rope_dim: int, groups: int, inverse: bool = False, dtype: str = "float32",
              name: str = "tide_rope", row_kind: str = "serial", lead=None):
    """The kernel ``(x [rows, dim], cos, sin [groups, rope_dim/2]) -> y [rows, dim]`` (x and y shaped
    ``lead + (dim,)`` when given), unscheduled but for the kind of its row loop."""
    from tvm.script import tirx as T

    check_dims(dim, rope_dim, rows, groups)
    off, half = dim - rope_dim, rope_dim // 2
    inner = rows // groups
    lead = leading_shape(rows, lead)
    loop = row_loop(row_kind)
    at = functools.partial(row_index, lead)

    def channels(x, vi):
        """Channel c of row vi of x, as a function of c."""
        return lambda c: x[(*at(vi), c)]

    @T.prim_func(s_tir=True)
    def kernel(x: T.Buffer((*lead, dim), dtype), cos: T.Buffer((groups, half), dtype),
               sin: T.Buffer((groups, half), dtype), y: T.Buffer((*lead, dim), dtype)):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        with T.sblock("root"):
            for i in loop(rows):
                with T.sblock("row"):
                    vi = T.axis.remap("S", [i])
                    T.reads(x[*at(vi), 0:dim], cos[vi // inner, 0:half], sin[vi // inner, 0:half])
                    T.writes(y[*at(vi), 0:dim])
                    if off > 0:
                        for c in range(off):
                            with T.sblock("pass"):
                                vc = T.axis.remap("S", [c])
                                y[*at(vi), vc] = x[*at(vi), vc]
                    for p, t in T.grid(half, 2):
                        with T.sblock("rotate"):
                            vp, vt = T.axis.remap("SS", [p, t])
                            y[*at(vi), off + 2 * vp + vt] = rotation(
                                dtype, off, inner, inverse, channels(x, vi), cos, sin, vi, vp, vt)

    return kernel


def reference(x, cos, sin, rope_dim: int, inverse: bool = False) -> np.ndarray:
    """float64 RoPE with the function's broadcasting: ``cos``/``sin`` ``[..., rope_dim/2]``
    broadcast against ``x[..., :rope_dim/2]``."""
    x = np.asarray(x, np.float64)
    cos, sin = np.asarray(cos, np.float64), np.asarray(sin, np.float64)
    if inverse:
        sin = -sin
    off = x.shape[-1] - rope_dim
    x0, x1 = x[..., off::2], x[..., off + 1::2]
    out = x.copy()
    out[..., off::2] = x0 * cos - x1 * sin
    out[..., off + 1::2] = x1 * cos + x0 * sin
    return out


def cost(rows: int, dim: int, rope_dim: int, groups: int, itemsize: int = 4) -> dict:
    """Two multiplies and an add per rotated channel; x read and y written once, cos/sin once."""
    return {"flops": 3 * rows * rope_dim, "bytes": (2 * rows * dim + groups * rope_dim) * itemsize}


def table_layout(x_shape, cos_shape, sin_shape, rope_dim: int):
    """How ``cos``/``sin`` broadcast against x's leading dims: ``(groups, None)`` when they vary
    over a prefix of them (and are 1 over the rest), so they read as ``[groups, rope_dim/2]``;
    ``(groups, target)`` when they must first be broadcast to ``target`` (every row its own)."""
    lead, half = list(x_shape[:-1]), rope_dim // 2
    for name, shape in (("cos", cos_shape), ("sin", sin_shape)):
        if len(shape) < 1 or len(shape) > len(x_shape) or shape[-1] not in (1, half):
            raise ValueError(f"RoPE {name} of shape {list(shape)} does not broadcast to x {list(x_shape)} "
                             f"with rope_dim {rope_dim} (expected [..., {half}])")
        padded = [1] * (len(lead) + 1 - len(shape)) + list(shape)
        for got, want in zip(padded[:-1], lead):
            if got not in (1, want):
                raise ValueError(f"RoPE {name} of shape {list(shape)} does not broadcast to x {list(x_shape)}")
    padded = [1] * (len(lead) + 1 - len(cos_shape)) + list(cos_shape)
    k = 0
    while k < len(lead) and padded[k] == lead[k]:
        k += 1
    prefix = all(d == 1 for d in padded[k:-1]) and padded[-1] == half and list(cos_shape) == list(sin_shape)
    if prefix:
        return math.prod(lead[:k]), None
    return math.prod(lead), tuple(lead) + (half,)


def emit_tables(bb, cos, sin, x_shape, rope_dim: int):
    """(groups, cos, sin) with the tables viewed as ``[groups, rope_dim/2]``."""
    from tvm import relax

    cos_shape = [int(d) for d in cos.ty.shape]
    sin_shape = [int(d) for d in sin.ty.shape]
    groups, target = table_layout(x_shape, cos_shape, sin_shape, rope_dim)
    tables = []
    for t in (cos, sin):
        if target is not None:
            t = bb.emit(relax.op.broadcast_to(t, target))
        tables.append(bb.emit(relax.op.reshape(t, (groups, rope_dim // 2))))
    return groups, tables[0], tables[1]


def bound_value(bb, expr):
    """What ``expr`` computes: the expression itself, or the value a variable is bound to in the
    function being built (the ONNX frontend passes un-emitted calls, a BlockBuilder user variables)."""
    from tvm import relax

    if not isinstance(expr, relax.Var):
        return expr
    try:
        return bb.lookup_binding(expr)
    except Exception:  # noqa: BLE001  (a variable without a binding in this scope: a parameter)
        return None


def negated(bb, expr):
    """``v`` when ``expr`` computes ``negative(v)``, else None."""
    import tvm
    from tvm import relax

    value = bound_value(bb, expr)
    if isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.negative"):
        return value.args[0]
    return None


def relax_convert(bb, inputs, attrs, *, choose, report, norms=None):
    """``tide.RoPE(x, cos, sin)`` -> one call of this kernel over the rows of x, or of
    ``tide.ops.qnorm_rope`` on the RMSNorm input when x is a ``tide.RMSNorm`` output that ``norms``
    (``tide.compiler.substitute.NormOutputs``) recorded. A sin bound to ``Neg(s)`` (the inverse
    RoPE on the attention output) becomes the inverse kernel on s."""
    from tvm import relax

    from ..compiler.errors import CompileError

    x, cos, sin = inputs
    if "rope_dim" not in attrs:
        raise CompileError("tide.RoPE without its rope_dim attribute")
    rope_dim = int(attrs["rope_dim"])
    shape = [int(d) for d in x.ty.shape]
    dtype = str(x.ty.dtype)
    rows, dim = math.prod(shape[:-1]), shape[-1]
    inverse = False
    positive = negated(bb, sin)
    if positive is not None and list(positive.ty.shape) == list(sin.ty.shape):
        sin, inverse = positive, True
    try:
        check_dims(dim, rope_dim, rows, 1)
        groups, cos_t, sin_t = emit_tables(bb, cos, sin, shape, rope_dim)
    except ValueError as err:
        raise CompileError(f"tide.RoPE: {err}") from err
    norm = norms.lookup(bb, x) if norms is not None else None
    if norm is not None:
        from . import qnorm_rope

        return qnorm_rope.emit(bb, norm, cos_t, sin_t, shape, rope_dim, groups, inverse, choose, report)
    if isinstance(x, (relax.Call, relax.TupleGetItem)):  # the frontend passes calls it has not bound yet
        x = bb.emit(x)
    name = f"tide_rope_{'x'.join(map(str, shape))}_r{rope_dim}_g{groups}{'_inv' if inverse else ''}"
    row_kind = choose("rope", rows=rows, dim=dim).get("row_kind", "serial")
    func = prim_func(rows, dim, rope_dim, groups, inverse, dtype, name, row_kind, shape[:-1])
    gv = kernel.add(bb, func, name, "rope", rows=rows, dim=dim, rope_dim=rope_dim, groups=groups, inverse=inverse,
                    **cost(rows, dim, rope_dim, groups))
    what = "inverse RoPE (Neg(sin) folded)" if inverse else "RoPE"
    report.add(name, f"tide.RoPE: {what} [{rows} x {dim}, rope_dim {rope_dim}, {groups} cos/sin rows]")
    return relax.call_tir(gv, [x, cos_t, sin_t], out_ty=relax.TensorType(shape, dtype))
