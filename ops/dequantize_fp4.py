"""Block FP4 dequantization: serves ``tide.DequantizeFP4(q, scale) -> y`` where no kernel reads the
weight directly.

``y [R, N, K] = e2m1(code k of q [R, N, K / 2]) * 2^(scale [R, N, K / 32] - 127)``, code 2j in the low
nibble of byte j, 2j + 1 in the high one (R: the leading dimensions flattened, e.g. the experts).
q and scale are uint8; y is float32 and exact. Like ``tide.ops.dequantize_fp8`` it runs only where
no kernel reads the packed weight itself, materializing float32 at run time, never in the artifact.
"""

from __future__ import annotations

import math

import numpy as np

from . import kernel, quant

BLOCK = 32


@kernel.builder
def prim_func(lead: int, rows: int, cols: int, name: str = "tide_dequantize_fp4"):
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def func(q: T.Buffer((lead, rows, cols // 2), "uint8"), scale: T.Buffer((lead, rows, cols // BLOCK), "uint8"),
             y: T.Buffer((lead, rows, cols), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        for r, n, k in T.grid(lead, rows, cols):
            with T.sblock("dequantize"):
                vr, vn, vk = T.axis.remap("SSS", [r, n, k])
                y[vr, vn, vk] = quant.e2m1(T.bitwise_and(T.shift_right(quant.byte(q[vr, vn, vk // 2]),
                                                                       (vk % 2) * 4), 15)) \
                    * quant.e8m0(scale[vr, vn, vk // BLOCK])

    return func


def reference(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    table = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float64)
    codes = np.stack([q & 15, q >> 4], axis=-1).reshape(*q.shape[:-1], -1)
    values = np.where(codes & 8, -1.0, 1.0) * table[codes & 7]
    return values * np.repeat(np.exp2(scale.astype(np.float64) - 127), BLOCK, axis=-1)


def cost(lead: int, rows: int, cols: int) -> dict:
    """One multiply per element; q read once (half a byte per element), y written once, the scales once."""
    count = lead * rows * cols
    return {"flops": count, "bytes": count // 2 + 4 * count + count // BLOCK}


def relax_convert(bb, inputs, attrs, *, choose, report):
    """``tide.DequantizeFP4(q, scale)`` -> one call of this kernel on q viewed as ``[R, N, K / 2]``."""
    from tvm import relax

    q, scale = inputs
    shape = [int(d) for d in q.ty.shape]
    sshape = [int(d) for d in scale.ty.shape]
    if str(q.ty.dtype) != "uint8" or str(scale.ty.dtype) != "uint8" or len(shape) < 2 or \
            sshape != shape[:-1] + [shape[-1] * 2 // BLOCK] or (2 * shape[-1]) % BLOCK:
        raise ValueError(f"tide.DequantizeFP4: expected uint8 q [..., N, K / 2] and uint8 scale [..., N, K / {BLOCK}], "
                         f"got {q.ty.dtype}{shape} and {scale.ty.dtype}{sshape}")
    lead, rows, cols = math.prod(shape[:-2]), shape[-2], 2 * shape[-1]
    name = f"tide_dequantize_fp4_{lead}x{rows}x{cols}"
    gv = kernel.add(bb, prim_func(lead, rows, cols, name), name, "dequantize_fp4", lead=lead, rows=rows, cols=cols,
                    **cost(lead, rows, cols))
    # reported only if a call survives: substitution usually reads the FP4 weight directly
    report.pending.setdefault(name, f"tide.DequantizeFP4 [{lead} x {rows} x {cols}] to float32 at run time")
    q3 = bb.emit(relax.op.reshape(q, (lead, rows, cols // 2)))
    s3 = bb.emit(relax.op.reshape(scale, (lead, rows, cols // BLOCK)))
    out = bb.emit(relax.call_tir(gv, [q3, s3], out_ty=relax.TensorType((lead, rows, cols), "float32")))
    return relax.op.reshape(out, shape[:-1] + [cols])
