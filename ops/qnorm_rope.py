"""RMSNorm followed by RoPE on the same tensor, in one pass: ``RoPE(RMSNorm(x, weight), cos, sin)``.

The exporter emits V4's query path as ``RMSNorm`` per head (with a ones weight) then ``RoPE`` on its
output, and the kv latent as ``RMSNorm(kv_norm)`` then ``RoPE`` (docs/onnx-contract.md, "The main
graph around the functions"). ``tide.ops.rope.relax_convert`` calls this kernel instead of the RoPE
kernel when its x is the output of a ``tide.RMSNorm`` call (``tide.compiler.substitute.NormOutputs``
records those); the RMSNorm call is then dead unless something else reads its output. Per row of
x ``[rows, dim]``: the squared sum, then the pass-through channels scaled, and the last ``rope_dim``
channels scaled and rotated. Scheduled by ``tide.targets.rope``.
"""

from __future__ import annotations

import numpy as np

from . import rope


def kernel_source(name: str, rows: int, dim: int, rope_dim: int, groups: int, epsilon: float,
                  inverse: bool = False, dtype: str = "float32", row_kind: str = "serial", lead=None) -> str:
    rope.check_dims(dim, rope_dim, rows, groups)
    off, half = dim - rope_dim, rope_dim // 2
    inner = rows // groups
    scale = f"T.rsqrt(ssq[0] / T.{dtype}({dim}) + T.{dtype}({float(epsilon)!r}))"

    def normed(c):
        return f"(x[vi, {c}] * {scale} * weight[{c}])"

    passthrough = "" if off == 0 else f'''
                for c in range({off}):
                    with T.sblock("pass"):
                        vc = T.axis.remap("S", [c])
                        y[vi, vc] = {normed("vc")}'''
    rotate = rope.rotation(dtype, off, inner, inverse, normed)
    source = f'''
@T.prim_func(s_tir=True)
def {name}(x: T.Buffer(({rows}, {dim}), "{dtype}"), weight: T.Buffer(({dim},), "{dtype}"),
           cos: T.Buffer(({groups}, {half}), "{dtype}"), sin: T.Buffer(({groups}, {half}), "{dtype}"),
           y: T.Buffer(({rows}, {dim}), "{dtype}")):
    T.func_attr({{"global_symbol": "{name}", "tirx.noalias": True}})
    with T.sblock("root"):
        for i in {rope.row_loop(rows, row_kind)}:
            with T.sblock("row"):
                vi = T.axis.remap("S", [i])
                T.reads(x[vi, 0:{dim}], weight[0:{dim}], cos[vi // {inner}, 0:{half}], sin[vi // {inner}, 0:{half}])
                T.writes(y[vi, 0:{dim}])
                ssq = T.sblock_alloc_buffer((1,), "{dtype}")
                for k in range({dim}):
                    with T.sblock("sum_sq"):
                        vk = T.axis.remap("R", [k])
                        with T.init():
                            ssq[0] = T.{dtype}(0)
                        ssq[0] = ssq[0] + x[vi, vk] * x[vi, vk]{passthrough}
                for p, t in T.grid({half}, 2):
                    with T.sblock("rotate"):
                        vp, vt = T.axis.remap("SS", [p, t])
                        y[vi, {off} + 2 * vp + vt] = {rotate}
'''
    return rope.with_lead(source, rows, dim, lead)


def prim_func(rows: int, dim: int, rope_dim: int, groups: int, epsilon: float, inverse: bool = False,
              dtype: str = "float32", name: str = "tide_norm_rope", row_kind: str = "serial", lead=None):
    """``(x [rows, dim], weight [dim], cos, sin [groups, rope_dim/2]) -> y [rows, dim]`` (x and y
    shaped ``lead + (dim,)`` when given), unscheduled but for its row loop (``tide.ops.rope.row_loop``)."""
    import tvm
    from tvm.script import tirx as T  # noqa: F401  (referenced by the parsed source)

    return tvm.script.from_source(kernel_source(name, rows, dim, rope_dim, groups, epsilon, inverse, dtype,
                                                row_kind, lead))


def reference(x, weight, cos, sin, epsilon: float, rope_dim: int, inverse: bool = False) -> np.ndarray:
    from .rmsnorm import reference as rmsnorm_reference

    return rope.reference(rmsnorm_reference(np.asarray(x), np.asarray(weight), epsilon), cos, sin, rope_dim, inverse)


def cost(rows: int, dim: int, rope_dim: int, groups: int, itemsize: int = 4) -> dict:
    """RMSNorm's 4 FLOPs per element plus RoPE's 3 per rotated channel; x read once, y written once
    (the unfused pair moves the normalized tensor through memory twice more)."""
    return {"flops": 4 * rows * dim + 3 * rows * rope_dim,
            "bytes": (2 * rows * dim + dim + groups * rope_dim) * itemsize}


def emit(bb, norm, cos, sin, shape, rope_dim: int, groups: int, inverse: bool, target_kind: str, report):
    """The fused call for ``tide.RoPE(tide.RMSNorm(norm.x, norm.weight))``; ``cos``/``sin`` already
    ``[groups, rope_dim/2]``."""
    import math

    from tvm import relax

    from ..targets import rope as schedules

    dtype = str(norm.x.ty.dtype)
    rows, dim = math.prod(shape[:-1]), shape[-1]
    name = f"tide_norm_rope_{'x'.join(map(str, shape))}_r{rope_dim}_g{groups}{'_inv' if inverse else ''}"
    func = prim_func(rows, dim, rope_dim, groups, norm.epsilon, inverse, dtype, name,
                     schedules.row_kind(target_kind, rows, dim), shape[:-1])
    gv = bb.add_func(schedules.schedule(func, target_kind).with_attr("op_pattern", 8), name)
    report.add(name, f"tide.RMSNorm + tide.RoPE fused [{rows} x {dim}, rope_dim {rope_dim}, {groups} cos/sin rows]")
    return relax.call_tir(gv, [norm.x, norm.weight, cos, sin], out_ty=relax.TensorType(shape, dtype))
