"""RMSNorm followed by RoPE on the same tensor, in one pass: ``RoPE(RMSNorm(x, weight), cos, sin)``.

The exporter emits V4's query path as ``RMSNorm`` per head (with a ones weight) then ``RoPE`` on its
output, and the kv latent as ``RMSNorm(kv_norm)`` then ``RoPE`` (docs/onnx-contract.md, "The main
graph around the functions"). ``tide.ops.rope.relax_convert`` calls this kernel instead of the RoPE
kernel when its x is the output of a ``tide.RMSNorm`` call (``tide.compiler.substitute.NormOutputs``
records those); the RMSNorm call is then dead unless something else reads its output. Per row of
x ``[rows, dim]``: the squared sum, then the pass-through channels scaled, and the last ``rope_dim``
channels scaled and rotated. Scheduled by the targets' ``qnorm_rope`` rules.

Precision: x, weight, cos and sin share one dtype (float32, or float16) and everything is computed
in it: the squared sum accumulates in x's dtype, as do the scale and the rotation.
"""

from __future__ import annotations

import functools

import numpy as np

from . import kernel, rope


@kernel.builder
def prim_func(rows: int, dim: int, rope_dim: int, groups: int, epsilon: float, inverse: bool = False,
              dtype: str = "float32", name: str = "tide_norm_rope", row_kind: str = "serial", lead=None):
    """``(x [rows, dim], weight [dim], cos, sin [groups, rope_dim/2]) -> y [rows, dim]`` (x and y
    shaped ``lead + (dim,)`` when given), unscheduled but for its row loop (``tide.ops.rope.row_loop``)."""
    import tvm
    from tvm.script import tirx as T

    rope.check_dims(dim, rope_dim, rows, groups)
    off, half = dim - rope_dim, rope_dim // 2
    inner = rows // groups
    lead = rope.leading_shape(rows, lead)
    loop = rope.row_loop(row_kind)
    at = functools.partial(rope.row_index, lead)

    def normed(x, weight, ssq, vi):
        """Channel c of row vi of x normalized and weighted, as a function of c."""
        scale = T.rsqrt(ssq[0] / tvm.tirx.const(dim, dtype) + tvm.tirx.const(float(epsilon), dtype))
        return lambda c: x[(*at(vi), c)] * scale * weight[c]

    @T.prim_func(s_tir=True)
    def kernel(x: T.Buffer((*lead, dim), dtype), weight: T.Buffer((dim,), dtype),
               cos: T.Buffer((groups, half), dtype), sin: T.Buffer((groups, half), dtype),
               y: T.Buffer((*lead, dim), dtype)):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        with T.sblock("root"):
            for i in loop(rows):
                with T.sblock("row"):
                    vi = T.axis.remap("S", [i])
                    T.reads(x[*at(vi), 0:dim], weight[0:dim], cos[vi // inner, 0:half], sin[vi // inner, 0:half])
                    T.writes(y[*at(vi), 0:dim])
                    ssq = T.sblock_alloc_buffer((1,), dtype)
                    for k in range(dim):
                        with T.sblock("sum_sq"):
                            vk = T.axis.remap("R", [k])
                            with T.init():
                                ssq[0] = tvm.tirx.const(0, dtype)
                            ssq[0] = ssq[0] + x[*at(vi), vk] * x[*at(vi), vk]
                    if off > 0:
                        for c in range(off):
                            with T.sblock("pass"):
                                vc = T.axis.remap("S", [c])
                                y[*at(vi), vc] = normed(x, weight, ssq, vi)(vc)
                    for p, t in T.grid(half, 2):
                        with T.sblock("rotate"):
                            vp, vt = T.axis.remap("SS", [p, t])
                            y[*at(vi), off + 2 * vp + vt] = rope.rotation(
                                dtype, off, inner, inverse, normed(x, weight, ssq, vi), cos, sin, vi, vp, vt)

    return kernel


def reference(x, weight, cos, sin, epsilon: float, rope_dim: int, inverse: bool = False) -> np.ndarray:
    from .rmsnorm import reference as rmsnorm_reference

    return rope.reference(rmsnorm_reference(np.asarray(x), np.asarray(weight), epsilon), cos, sin, rope_dim, inverse)


def cost(rows: int, dim: int, rope_dim: int, groups: int, itemsize: int = 4) -> dict:
    """RMSNorm's 4 FLOPs per element plus RoPE's 3 per rotated channel; x read once, y written once
    (the unfused pair moves the normalized tensor through memory twice more)."""
    return {"flops": 4 * rows * dim + 3 * rows * rope_dim,
            "bytes": (2 * rows * dim + dim + groups * rope_dim) * itemsize}


def emit(bb, norm, cos, sin, shape, rope_dim: int, groups: int, inverse: bool, choose, report):
    """The fused call for ``tide.RoPE(tide.RMSNorm(norm.x, norm.weight))``; ``cos``/``sin`` already
    ``[groups, rope_dim/2]``."""
    import math

    from tvm import relax

    dtype = str(norm.x.ty.dtype)
    rows, dim = math.prod(shape[:-1]), shape[-1]
    name = f"tide_norm_rope_{'x'.join(map(str, shape))}_r{rope_dim}_g{groups}{'_inv' if inverse else ''}"
    row_kind = choose("rope", rows=rows, dim=dim).get("row_kind", "serial")
    func = prim_func(rows, dim, rope_dim, groups, norm.epsilon, inverse, dtype, name, row_kind, shape[:-1])
    gv = kernel.add(bb, func, name, "qnorm_rope", rows=rows, dim=dim, rope_dim=rope_dim, groups=groups,
                    **cost(rows, dim, rope_dim, groups),
                    inverse=inverse, epsilon=norm.epsilon)
    report.add(name, f"tide.RMSNorm + tide.RoPE fused [{rows} x {dim}, rope_dim {rope_dim}, {groups} cos/sin rows]")
    return relax.call_tir(gv, [norm.x, norm.weight, cos, sin], out_ty=relax.TensorType(shape, dtype))
