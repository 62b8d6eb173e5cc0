"""Shared expert: serves ``tide.SharedExpert(x, gate_weight, up_weight, down_weight) -> y``.

The dense SwiGLU expert every token passes through, ``y = W_down(silu(min(W_gate x, L)) *
clip(W_up x, -L, L))``, runs on the routed experts' kernels as ONE expert whose tiles are fixed at
compile time (every token, in order, weight 1): ``tide.ops.moe_gate_up`` (gate and up fused, the
clamps and SiLU in its epilogue), ``tide.ops.moe_down``, then ``tide.ops.moe_experts``' combine
with one slot per token, which drops the tile padding. No permutation kernel runs; the weights
are laid out at compile time exactly as the routed experts' are (the target's ``moe_gemm``
choice, which may also pick a GEMM variant and tile height of its own, e.g. CUDA's tensor cores on
16-row tiles for bfloat16 prefill). Weights that are parameters rather than constants (only above ``onnx_import.PARAMETER_MIN_BYTES``,
far beyond any V4 shared expert) are read in the rows layout after a run-time concatenation of
gate and up (a copy, no transpose).
"""

from __future__ import annotations

import numpy as np

from . import kernel, moe_down, moe_experts, moe_gate_up


def block_rows(tokens: int) -> int:
    """Rows per tile: 1 for a single token (decode: the weights stream once), else 3."""
    return 1 if tokens == 1 else 3


def tiles(tokens: int, tile_rows: int) -> dict:
    """The fixed tile schedule: numpy arrays for the GEMMs' row_token, row_weight, tile_expert,
    num_tiles and the combine's slot."""
    count = -(-tokens // tile_rows)
    rows = np.arange(count * tile_rows)
    return {"row_token": np.where(rows < tokens, rows, 0).astype(np.int32),
            "row_weight": (rows < tokens).astype(np.float32),
            "tile_expert": np.zeros(count, np.int32), "num_tiles": np.array([count], np.int32),
            "slot": np.arange(tokens, dtype=np.int32)[:, None]}


def kernels(tokens: int, dim: int, inter: int, limit: float, layout: str = "panel", weight_dtype: str = "float32",
            tile_rows: int | None = None, variant: str = "", col_blocks: tuple[int, int] = (0, 0)):
    """(name, PrimFunc) of gate/up, down and combine for this shape (unscheduled, tagged with their
    identity; ``variant`` and ``col_blocks`` as in ``moe_experts.kernels``)."""
    br = tile_rows or block_rows(tokens)
    count = -(-tokens // br)
    shape = f"t{tokens}d{dim}f{inter}"
    wtag = f"_{variant}" if variant else f"_{layout}" + ("_bf16" if weight_dtype == "bfloat16" else "")
    names = [f"tide_shared_gate_up_{shape}{wtag}", f"tide_shared_down_{shape}{wtag}",
             f"tide_shared_rows_{shape}_b{br}"]
    gemm = {"experts": 1, "dim": dim, "inter": inter, "max_tiles": count, "tile_rows": br, "layout": layout,
            "variant": variant}
    rows = count * br
    funcs = [
        kernel.tag(moe_gate_up.prim_func(tokens, dim, 1, inter, count, br, limit, name=names[0], layout=layout,
                                         weight_dtype=weight_dtype, nb=col_blocks[0]), "moe_gate_up", tokens=tokens, limit=limit,
                   **moe_gate_up.cost(rows, 1, dim, inter), **gemm),
        kernel.tag(moe_down.prim_func(dim, 1, inter, count, br, name=names[1], layout=layout,
                                      weight_dtype=weight_dtype, nb=col_blocks[1]), "moe_down",
                   **moe_down.cost(rows, 1, dim, inter), **gemm),
        kernel.tag(moe_experts.prim_func(tokens, 1, dim, rows, name=names[2]), "moe_combine", tokens=tokens,
                   top_k=1, dim=dim, **moe_experts.cost(tokens, 1, dim))]
    return list(zip(names, funcs))


def pack(gate_weight: np.ndarray, up_weight: np.ndarray, down_weight: np.ndarray, layout: str = "panel",
         col_blocks: tuple[int, int] = (0, 0)):
    """The kernels' weight layouts from ``[F, D], [F, D], [D, F]``."""
    return (moe_gate_up.pack(np.concatenate([gate_weight, up_weight])[None], layout, col_blocks[0]),
            moe_down.pack(down_weight[None], layout, col_blocks[1]))


def reference(x, gate_weight, up_weight, down_weight, limit):
    x64 = x.astype(np.float64)
    g = np.minimum(x64 @ gate_weight.astype(np.float64).T, limit)
    u = np.clip(x64 @ up_weight.astype(np.float64).T, -limit, limit)
    return (g / (1 + np.exp(-g)) * u) @ down_weight.astype(np.float64).T


def cost(tokens: int, dim: int, inter: int, itemsize: int = 4) -> dict:
    """Three GEMMs and the epilogue; the three weights, x, h and y once each."""
    return {"flops": 6 * tokens * dim * inter + 6 * tokens * inter,
            "bytes": (3 * dim * inter + 2 * tokens * dim + tokens * inter) * itemsize}


def as_linears(bb, x, gate_weight, up_weight, down_weight, limit: float):
    """The expert as three ``x @ W^T`` matmuls and its SwiGLU: for weights computed in the graph
    (``tide.DequantizeFP8`` outputs), whose matmuls kernel substitution turns into linears that read
    the stored weights (``tide.ops.linear_fp8``)."""
    from tvm import relax

    def linear(a, w):
        return bb.emit(relax.op.matmul(a, relax.op.permute_dims(w, [1, 0])))

    lim = relax.const(limit, "float32")
    gate = bb.emit(relax.op.minimum(linear(x, gate_weight), lim))
    up = relax.op.clip(linear(x, up_weight), -limit, limit)
    act = bb.emit(relax.op.multiply(relax.op.multiply(gate, relax.op.sigmoid(gate)), up))
    return relax.op.matmul(act, relax.op.permute_dims(down_weight, [1, 0]))


def relax_convert(bb, inputs, attrs, *, choose, report):
    """``tide.SharedExpert`` -> gate/up, down and the row copy-out on a fixed tile schedule; for
    weights computed in the graph, ``as_linears``."""
    from tvm import relax
    from tvm.ir.expr import GenericConst

    from .rope import bound_value

    x, gate_weight, up_weight, down_weight = inputs
    limit = float(attrs.get("swiglu_limit", 10.0))
    if any(isinstance(bound_value(bb, w), relax.Call) for w in inputs[1:]):
        return as_linears(bb, x, gate_weight, up_weight, down_weight, limit)
    tokens, dim = (int(v) for v in x.ty.shape)
    inter = int(gate_weight.ty.shape[0])
    weight_dtype = moe_experts.check_dtypes("SharedExpert", {"x": x}, {
        "gate_weight": gate_weight, "up_weight": up_weight, "down_weight": down_weight})
    constant = all(isinstance(w, GenericConst) for w in inputs[1:])
    cfg = choose("moe_gemm", block_rows=block_rows(tokens), weight_dtype=weight_dtype, dim=dim, inter=inter,
                 constant=constant)
    layout, variant = cfg.get("layout", "rows"), cfg.get("variant", "")
    br = cfg.get("block_rows", block_rows(tokens))
    nbs = (int(cfg.get("gate_up_block", 0)), int(cfg.get("down_block", 0)))
    funcs = kernels(tokens, dim, inter, limit, layout, weight_dtype, br, variant, nbs)
    gvs = [bb.add_func(f, n) for n, f in funcs]
    for (n, _), what in zip(funcs, ("gate/up GEMM + SwiGLU", "down GEMM", "rows out")):
        report.add(n, f"tide.SharedExpert [T {tokens}, D {dim}, F {inter}, {weight_dtype} {layout} weights]: {what}")
    fixed = tiles(tokens, br)
    rows = fixed["row_token"].shape[0]
    sched = {k: relax.const(v) for k, v in fixed.items()}
    gate_up = bb.emit(relax.op.expand_dims(relax.op.concat([gate_weight, up_weight], axis=0), 0))
    down = bb.emit(relax.op.expand_dims(down_weight, 0))
    h = bb.emit(relax.call_tir(gvs[0], [x, moe_gate_up.relax_pack(bb, gate_up, layout, nbs[0]), sched["row_token"],
                                        sched["row_weight"], sched["tile_expert"], sched["num_tiles"]],
                               out_ty=relax.TensorType((rows, inter), "float32")))
    o = bb.emit(relax.call_tir(gvs[1], [h, moe_down.relax_pack(bb, down, layout, nbs[1]), sched["tile_expert"],
                                        sched["num_tiles"]],
                               out_ty=relax.TensorType((rows, dim), "float32")))
    return relax.call_tir(gvs[2], [o, sched["slot"]], out_ty=relax.TensorType((tokens, dim), "float32"))
