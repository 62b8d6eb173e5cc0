"""Block FP8 dequantization: serves ``tide.DequantizeFP8(q, scale) -> y`` where no kernel reads the
weight directly.

``y [R, N, K] = e4m3(q [R, N, K]) * 2^(scale [R, ceil(N / bn), ceil(K / bk)] - 127)`` (R: the leading
dimensions flattened, e.g. the experts). q holds float8_e4m3fn bit patterns and scale e8m0 exponent
bytes, both uint8; y is float32 and exact (every product is a float32). Kernel substitution replaces
a ``tide.ops.linear`` over ``y`` by the FP8 linear, which reads ``q`` and ``scale`` itself, and this
kernel then disappears; it runs only where the float32 weight is really needed (a target without an
FP8 kernel for that consumer), materializing it at run time in the arena, never in the artifact.
"""

from __future__ import annotations

import math

import numpy as np

from . import kernel, quant


@kernel.builder
def prim_func(lead: int, rows: int, cols: int, block_n: int, block_k: int, name: str = "tide_dequantize_fp8"):
    from tvm.script import tirx as T

    nb, kb = -(-rows // block_n), -(-cols // block_k)

    @T.prim_func(s_tir=True)
    def func(q: T.Buffer((lead, rows, cols), "uint8"), scale: T.Buffer((lead, nb, kb), "uint8"),
             y: T.Buffer((lead, rows, cols), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        for r, n, k in T.grid(lead, rows, cols):
            with T.sblock("dequantize"):
                vr, vn, vk = T.axis.remap("SSS", [r, n, k])
                y[vr, vn, vk] = quant.e4m3(q[vr, vn, vk]) * quant.e8m0(scale[vr, vn // block_n, vk // block_k])

    return func


def reference(q: np.ndarray, scale: np.ndarray, block_n: int, block_k: int) -> np.ndarray:
    import ml_dtypes

    values = q.view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    s = np.exp2(scale.astype(np.float64) - 127)
    s = np.repeat(np.repeat(s, block_n, axis=-2), block_k, axis=-1)[..., :q.shape[-2], :q.shape[-1]]
    return values * s


def cost(lead: int, rows: int, cols: int, block_n: int, block_k: int) -> dict:
    """One multiply per element; q read once (1 byte), y written once (4 bytes), the scales once."""
    count = lead * rows * cols
    return {"flops": count, "bytes": 5 * count + lead * -(-rows // block_n) * -(-cols // block_k)}


def relax_convert(bb, inputs, attrs, *, choose, report):
    """``tide.DequantizeFP8(q, scale)`` -> one call of this kernel on q viewed as ``[R, N, K]``."""
    from tvm import relax

    q, scale = inputs
    shape = [int(d) for d in q.ty.shape]
    if str(q.ty.dtype) != "uint8" or str(scale.ty.dtype) != "uint8" or len(shape) < 2:
        raise ValueError(f"tide.DequantizeFP8: q and scale must be uint8 with q of rank >= 2, got "
                         f"{q.ty.dtype}{shape} and {scale.ty.dtype}{[int(d) for d in scale.ty.shape]}")
    block_n, block_k = int(attrs.get("block_n", 128)), int(attrs.get("block_k", 128))
    lead, rows, cols = math.prod(shape[:-2]), shape[-2], shape[-1]
    sshape = [int(d) for d in scale.ty.shape]
    if sshape != shape[:-2] + [-(-rows // block_n), -(-cols // block_k)]:
        raise ValueError(f"tide.DequantizeFP8: scale shape {sshape} does not match q {shape} with "
                         f"{block_n} x {block_k} blocks")
    name = f"tide_dequantize_fp8_{lead}x{rows}x{cols}_b{block_n}x{block_k}"
    gv = kernel.add(bb, prim_func(lead, rows, cols, block_n, block_k, name), name, "dequantize_fp8", lead=lead,
                    rows=rows, cols=cols, block_n=block_n, block_k=block_k,
                    **cost(lead, rows, cols, block_n, block_k))
    # reported only if a call survives: substitution usually reads the FP8 weight directly
    report.pending.setdefault(name, f"tide.DequantizeFP8 [{lead} x {rows} x {cols}] to float32 at run time")
    q3 = bb.emit(relax.op.reshape(q, (lead, rows, cols)))
    s3 = bb.emit(relax.op.reshape(scale, (lead, sshape[-2], sshape[-1])))
    out = bb.emit(relax.call_tir(gv, [q3, s3], out_ty=relax.TensorType((lead, rows, cols), "float32")))
    return relax.op.reshape(out, shape)
