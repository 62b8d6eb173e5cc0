"""Shared expert: serves ``tide.SharedExpert(x, gate_weight, up_weight, down_weight) -> y``.

The dense SwiGLU expert every token passes through, ``y = W_down(silu(min(W_gate x, L)) *
clip(W_up x, -L, L))``, runs on the routed experts' kernels as ONE expert whose tiles are fixed at
compile time (every token, in order, weight 1): ``tide.ops.moe_gate_up`` (gate and up fused, the
clamps and SiLU in its epilogue), ``tide.ops.moe_down``, then ``tide.ops.moe_experts``' combine
with one slot per token, which drops the tile padding. No permutation kernel runs; the weights
are laid out at compile time exactly as the routed experts' are (``tide.targets.moe.layout``).
CUDA prefill on bfloat16 weights runs the tensor-core GEMMs of ``tide.ops.moe_grouped_mma`` on
16-row tiles. Weights that are parameters rather than constants (only above ``onnx_import.PARAMETER_MIN_BYTES``,
far beyond any V4 shared expert) are read in the rows layout after a run-time concatenation of
gate and up (a copy, no transpose).
"""

from __future__ import annotations

import numpy as np

from . import moe_down, moe_experts, moe_gate_up, moe_grouped_mma

TIDE_FUNCTION = "SharedExpert"


def block_rows(tokens: int, tensor_cores: bool = False) -> int:
    """Rows per tile: 1 for a single token (decode: the weights stream once), else 3; 16 on tensor
    cores (``tide.ops.moe_grouped_mma``)."""
    if tensor_cores:
        return moe_grouped_mma.TILE_ROWS
    return 1 if tokens == 1 else 3


def tiles(tokens: int, tensor_cores: bool = False) -> dict:
    """The fixed tile schedule: numpy arrays for the GEMMs' row_token, row_weight, tile_expert,
    num_tiles and the combine's slot."""
    br = block_rows(tokens, tensor_cores)
    count = -(-tokens // br)
    rows = np.arange(count * br)
    return {"row_token": np.where(rows < tokens, rows, 0).astype(np.int32),
            "row_weight": (rows < tokens).astype(np.float32),
            "tile_expert": np.zeros(count, np.int32), "num_tiles": np.array([count], np.int32),
            "slot": np.arange(tokens, dtype=np.int32)[:, None]}


def kernels(tokens: int, dim: int, inter: int, limit: float, layout: str = "panel", weight_dtype: str = "float32",
            tensor_cores: bool = False):
    """(name, PrimFunc) of gate/up, down and combine for this shape (unscheduled)."""
    br = block_rows(tokens, tensor_cores)
    count = -(-tokens // br)
    shape = f"t{tokens}d{dim}f{inter}"
    wtag = "_mma_bf16" if tensor_cores else f"_{layout}" + ("_bf16" if weight_dtype == "bfloat16" else "")
    names = [f"tide_shared_gate_up_{shape}{wtag}", f"tide_shared_down_{shape}{wtag}",
             f"tide_shared_rows_{shape}_b{br}"]
    if tensor_cores:
        if layout != "rows" or weight_dtype != "bfloat16":
            raise ValueError("tide.SharedExpert tensor-core kernels take bfloat16 weights in the rows layout, "
                             f"got {weight_dtype} {layout}")
        gemms = [moe_grouped_mma.gate_up_func(tokens, dim, 1, inter, count, limit, name=names[0]),
                 moe_grouped_mma.down_func(dim, 1, inter, count, name=names[1])]
    else:
        gemms = [moe_gate_up.prim_func(tokens, dim, 1, inter, count, br, limit, name=names[0], layout=layout,
                                       weight_dtype=weight_dtype),
                 moe_down.prim_func(dim, 1, inter, count, br, name=names[1], layout=layout, weight_dtype=weight_dtype)]
    funcs = [*gemms, moe_experts.prim_func(tokens, 1, dim, count * br, name=names[2])]
    return list(zip(names, funcs))


def pack(gate_weight: np.ndarray, up_weight: np.ndarray, down_weight: np.ndarray, layout: str = "panel"):
    """The kernels' weight layouts from ``[F, D], [F, D], [D, F]``."""
    return (moe_gate_up.pack(np.concatenate([gate_weight, up_weight])[None], layout),
            moe_down.pack(down_weight[None], layout))


def reference(x, gate_weight, up_weight, down_weight, limit):
    x64 = x.astype(np.float64)
    g = np.minimum(x64 @ gate_weight.astype(np.float64).T, limit)
    u = np.clip(x64 @ up_weight.astype(np.float64).T, -limit, limit)
    return (g / (1 + np.exp(-g)) * u) @ down_weight.astype(np.float64).T


def cost(tokens: int, dim: int, inter: int, itemsize: int = 4) -> dict:
    """Three GEMMs and the epilogue; the three weights, x, h and y once each."""
    return {"flops": 6 * tokens * dim * inter + 6 * tokens * inter,
            "bytes": (3 * dim * inter + 2 * tokens * dim + tokens * inter) * itemsize}


def relax_convert(bb, inputs, attrs, *, target_kind, report):
    """``tide.SharedExpert`` -> gate/up, down and the row copy-out on a fixed tile schedule."""
    from tvm import relax
    from tvm.ir.expr import GenericConst

    from ..targets import moe as schedules

    x, gate_weight, up_weight, down_weight = inputs
    tokens, dim = (int(v) for v in x.ty.shape)
    inter = int(gate_weight.ty.shape[0])
    weight_dtype = moe_experts.check_dtypes("SharedExpert", {"x": x}, {
        "gate_weight": gate_weight, "up_weight": up_weight, "down_weight": down_weight})
    limit = float(attrs.get("swiglu_limit", 10.0))
    constant = all(isinstance(w, GenericConst) for w in inputs[1:])
    tensor_cores = schedules.tensor_cores(target_kind, block_rows(tokens), weight_dtype, dim, inter)
    layout = "rows" if tensor_cores else schedules.layout(target_kind, block_rows(tokens), constant)
    funcs = kernels(tokens, dim, inter, limit, layout, weight_dtype, tensor_cores)
    gvs = [bb.add_func(schedules.schedule(f, target_kind).with_attr("op_pattern", 8), n) for n, f in funcs]
    for (n, _), what in zip(funcs, ("gate/up GEMM + SwiGLU", "down GEMM", "rows out")):
        report.add(n, f"tide.SharedExpert [T {tokens}, D {dim}, F {inter}, {weight_dtype} {layout} weights]: {what}")
    fixed = tiles(tokens, tensor_cores)
    rows = fixed["row_token"].shape[0]
    sched = {k: relax.const(v) for k, v in fixed.items()}
    gate_up = bb.emit(relax.op.expand_dims(relax.op.concat([gate_weight, up_weight], axis=0), 0))
    down = bb.emit(relax.op.expand_dims(down_weight, 0))
    h = bb.emit(relax.call_tir(gvs[0], [x, moe_gate_up.relax_pack(bb, gate_up, layout), sched["row_token"],
                                        sched["row_weight"], sched["tile_expert"], sched["num_tiles"]],
                               out_ty=relax.TensorType((rows, inter), "float32")))
    o = bb.emit(relax.call_tir(gvs[1], [h, moe_down.relax_pack(bb, down, layout), sched["tile_expert"],
                                        sched["num_tiles"]],
                               out_ty=relax.TensorType((rows, dim), "float32")))
    return relax.call_tir(gvs[2], [o, sched["slot"]], out_ty=relax.TensorType((tokens, dim), "float32"))
