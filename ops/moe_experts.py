"""Routed experts: serves ``tide.MoEExperts(x, weights, indices, gate_up, down) -> y``.

The function becomes a chain of four kernels (docs/onnx-contract.md, section 5):

1. ``tide.ops.moe_permute``: assignments grouped by expert into row tiles, plus the inverse map;
2. ``tide.ops.moe_gate_up``: grouped SwiGLU GEMM over the used tiles (routing weight applied);
3. ``tide.ops.moe_down``: grouped down GEMM over the same tiles;
4. this module's kernel, the combine: ``y[t] = sum_j o[slot[t, j]]``, a gather in fixed slot order
   (deterministic, no atomics), float32 in and float32 sums.

Only routed tokens are computed and only active experts' weights are read. Tile height
(``block_rows``) picks the regime: decode (at most one assignment per expert on average) uses
1-row tiles, so each active expert streams its weights once per token; prefill uses 3-row tiles,
so each weight load feeds three rows. The weights (float32 or bfloat16) are read in the layout the
target's schedule wants (the target's ``moe_gemm`` choice), made at compile time, never at run time.
"""

from __future__ import annotations

import functools

import numpy as np

from . import kernel, moe_down, moe_gate_up, moe_permute


def block_rows(tokens: int, top_k: int, experts: int) -> int:
    """Rows per expert tile: 1 while assignments do not outnumber experts (decode), else 3."""
    return 1 if tokens * top_k <= experts else 3


def slot_sum(o, slot, t, c, top_k: int):
    """``o[slot[t, 0], c] + ... + o[slot[t, k - 1], c]``, summed left to right (fixed slot order)."""
    total = o[slot[t, 0], c]
    for j in range(1, top_k):
        total = total + o[slot[t, j], c]
    return total


@kernel.builder
def prim_func(tokens: int, top_k: int, dim: int, rows: int, name: str = "tide_moe_combine"):
    """The combine: ``y [T, D]`` from ``o [rows, D]`` and ``slot [T, k]``."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def func(o: T.Buffer((rows, dim), "float32"), slot: T.Buffer((tokens, top_k), "int32"),
             y: T.Buffer((tokens, dim), "float32")):
        T.func_attr({"global_symbol": name, "tirx.noalias": True})
        for t, c in T.grid(tokens, dim):
            with T.sblock("combine"):
                vt, vc = T.axis.remap("SS", [t, c])
                y[vt, vc] = slot_sum(o, slot, vt, vc, top_k)

    return func


def reference(o: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """The combine in float64."""
    return o[slot].astype(np.float64).sum(axis=1)


def function_reference(x, weights, indices, gate_up, down, limit):
    """The whole ``tide.MoEExperts`` in float64, expert by expert over its routed tokens."""
    inter = gate_up.shape[1] // 2
    x64, y = x.astype(np.float64), np.zeros(x.shape)
    for e in np.unique(indices):
        tok, j = np.nonzero(indices == e)
        gu = x64[tok] @ gate_up[e].astype(np.float64).T
        g, u = np.minimum(gu[:, :inter], limit), np.clip(gu[:, inter:], -limit, limit)
        act = weights[tok, j, None].astype(np.float64) * g / (1 + np.exp(-g)) * u
        np.add.at(y, tok, act @ down[e].astype(np.float64).T)
    return y


def cost(tokens: int, top_k: int, dim: int, itemsize: int = 4) -> dict:
    """The combine: k - 1 adds per output; reads k rows per token, writes one."""
    return {"flops": tokens * (top_k - 1) * dim, "bytes": tokens * (top_k + 1) * dim * itemsize + tokens * top_k * 4}


WEIGHT_DTYPES = ("float32", "bfloat16")
# bytes per weight of each stored format, scales included
WEIGHT_BYTES = {"float32": 4, "bfloat16": 2, "fp4": 17 / 32}


def kernels(tokens: int, top_k: int, experts: int, dim: int, inter: int, limit: float, index_dtype: str = "int64",
            tag: str = "", layout: str = "panel", weight_dtype: str = "float32", tile_rows: int | None = None,
            variant: str = "", col_blocks: tuple[int, int] = (0, 0)):
    """The chain's four kernels (unscheduled, tagged with their identity) as (name, PrimFunc) pairs,
    with the tiling: ``(pairs, tile_rows, max_tiles, rows)``. ``tile_rows`` defaults to the regime's
    (``block_rows``); ``variant`` names GEMMs a target implements itself (e.g. CUDA's tensor-core
    ``"mma_bf16"``, which its rule builds from the GEMMs' parameters); ``col_blocks`` are the panel
    layouts' column blocks of gate/up and down (0: the kernels' defaults)."""
    br = tile_rows or block_rows(tokens, top_k, experts)
    max_tiles, rows = moe_permute.tiling(tokens, top_k, experts, br)
    shape = f"{tag}t{tokens}k{top_k}e{experts}d{dim}f{inter}"
    wtag = f"_{variant}" if variant else f"_{layout}" + {"bfloat16": "_bf16", "fp4": "_fp4"}.get(weight_dtype, "")
    names = [f"tide_moe_permute_{shape}_b{br}", f"tide_moe_gate_up_{shape}{wtag}", f"tide_moe_down_{shape}{wtag}",
             f"tide_moe_combine_{shape}_b{br}"]
    gemm = {"experts": experts, "dim": dim, "inter": inter, "max_tiles": max_tiles, "tile_rows": br,
            "layout": layout, "variant": variant}
    gate_up_nb, down_nb = col_blocks
    funcs = [
        kernel.tag(moe_permute.prim_func(tokens, top_k, experts, br, index_dtype, name=names[0]), "moe_permute",
                   tokens=tokens, top_k=top_k, experts=experts, tile_rows=br, **moe_permute.cost(tokens, top_k, experts, br)),
        kernel.tag(moe_gate_up.prim_func(tokens, dim, experts, inter, max_tiles, br, limit, name=names[1],
                                         layout=layout, weight_dtype=weight_dtype, nb=gate_up_nb), "moe_gate_up",
                   tokens=tokens, limit=limit, weight_dtype=weight_dtype,
                   **moe_gate_up.cost(rows, min(experts, tokens * top_k), dim, inter, WEIGHT_BYTES[weight_dtype]),
                   **gemm),
        kernel.tag(moe_down.prim_func(dim, experts, inter, max_tiles, br, name=names[2], layout=layout,
                                      weight_dtype=weight_dtype, nb=down_nb), "moe_down",
                   weight_dtype=weight_dtype,
                   **moe_down.cost(rows, min(experts, tokens * top_k), dim, inter, WEIGHT_BYTES[weight_dtype]),
                   **gemm),
        kernel.tag(prim_func(tokens, top_k, dim, rows, name=names[3]), "moe_combine", tokens=tokens, top_k=top_k,
                   dim=dim, **cost(tokens, top_k, dim))]
    return list(zip(names, funcs)), br, max_tiles, rows


def check_dtypes(function: str, activations: dict, weights: dict) -> str:
    """The weights' common dtype, after checking that activations are float32 and weights float32
    or bfloat16 (all alike); a clear error otherwise."""
    for name, value in activations.items():
        if str(value.ty.dtype) != "float32":
            raise ValueError(f"tide.{function}: input '{name}' must be float32, got {value.ty.dtype}")
    dtypes = {name: str(value.ty.dtype) for name, value in weights.items()}
    for name, dtype in dtypes.items():
        if dtype not in WEIGHT_DTYPES:
            raise ValueError(f"tide.{function}: weight '{name}' must be one of {WEIGHT_DTYPES}, got {dtype}")
    if len(set(dtypes.values())) != 1:
        raise ValueError(f"tide.{function}: weights must share one dtype, got {dtypes}")
    return next(iter(dtypes.values()))


def fp4_source(bb, value):
    """``(q, scale)`` when ``value`` is the float32 output of a ``tide.DequantizeFP4`` kernel call on a
    stored [E, N, K / 2] expert weight (as its converter emits it: a reshape of the call on reshaped
    operands), else None."""
    import tvm
    from tvm import relax

    from .rope import bound_value

    reshape = tvm.ir.Op.get("relax.reshape")
    value = bound_value(bb, value)
    if not (isinstance(value, relax.Call) and value.op == reshape):
        return None
    call = bound_value(bb, value.args[0])
    if not (isinstance(call, relax.Call) and len(call.args) == 2 and isinstance(call.args[0], relax.GlobalVar)):
        return None
    func = bb.get()[call.args[0]]
    if kernel.identity(func)[0] != "dequantize_fp4":
        return None
    operands = [bound_value(bb, a) for a in call.args[1].fields]
    if not all(isinstance(v, relax.Call) and v.op == reshape for v in operands):
        return None
    q, scale = (v.args[0] for v in operands)
    return (q, scale) if len(q.ty.shape) == 3 else None


def relax_convert(bb, inputs, attrs, *, choose, report):
    """``tide.MoEExperts`` -> permute, grouped gate/up, grouped down, combine. The weight layout (and
    a GEMM variant with its tile height) is the target's compile-time choice: constants are packed
    by folding, parameters are read as stored."""
    from tvm import relax
    from tvm.ir.expr import GenericConst

    x, weights, indices, gate_up, down = inputs
    tokens, dim = (int(v) for v in x.ty.shape)
    top_k = int(indices.ty.shape[1])
    experts, inter = int(gate_up.ty.shape[0]), int(gate_up.ty.shape[1]) // 2
    weight_dtype = check_dtypes("MoEExperts", {"x": x, "weights": weights}, {"gate_up": gate_up, "down": down})
    limit = float(attrs.get("swiglu_limit", 10.0))
    constant = isinstance(gate_up, GenericConst) and isinstance(down, GenericConst)
    fp4 = [fp4_source(bb, w) for w in (gate_up, down)]
    if all(fp4):
        cfg = choose("moe_gemm", block_rows=block_rows(tokens, top_k, experts), weight_dtype="fp4", dim=dim,
                     inter=inter, constant=False)
        if cfg.get("fp4"):   # the target reads the packed bytes itself: the dequantizations become dead
            weight_dtype, constant = "fp4", False
            (gate_up, gate_up_scale), (down, down_scale) = fp4
    cfg = choose("moe_gemm", block_rows=block_rows(tokens, top_k, experts), weight_dtype=weight_dtype, dim=dim,
                 inter=inter, constant=constant)
    layout, variant = cfg.get("layout", "rows"), cfg.get("variant", "")
    nbs = (int(cfg.get("gate_up_block", 0)), int(cfg.get("down_block", 0)))
    funcs, br, max_tiles, rows = kernels(tokens, top_k, experts, dim, inter, limit, str(indices.ty.dtype),
                                         layout=layout, weight_dtype=weight_dtype, tile_rows=cfg.get("block_rows"),
                                         variant=variant, col_blocks=nbs)
    gvs = [bb.add_func(f, n) for n, f in funcs]
    served = (f"tide.MoEExperts [T {tokens}, k {top_k}, E {experts}, D {dim}, F {inter}, {br}-row tiles, "
              f"{weight_dtype} {layout} weights{f', {variant}' if variant else ''}]")
    for (n, _), what in zip(funcs, ("permutation", "grouped SwiGLU gate/up GEMM", "grouped down GEMM", "combine")):
        report.add(n, f"{served}: {what}")
    perm = bb.emit(relax.call_tir(gvs[0], [indices, weights], out_ty=[
        relax.TensorType((rows,), "int32"), relax.TensorType((rows,), "float32"),
        relax.TensorType((max_tiles,), "int32"), relax.TensorType((1,), "int32"),
        relax.TensorType((tokens, top_k), "int32")]))
    row_token, row_weight, tile_expert, num_tiles, slot = (bb.emit(relax.TupleGetItem(perm, i)) for i in range(5))
    gate_up_w = [moe_gate_up.relax_pack(bb, gate_up, layout, nbs[0])]
    down_w = [moe_down.relax_pack(bb, down, layout, nbs[1])]
    x_in, planes = x, (lambda v: v)
    if weight_dtype == "fp4":
        gate_up_w, down_w = [gate_up, gate_up_scale], [down, down_scale]
        x_in, planes = moe_gate_up.planes(bb, x), functools.partial(moe_gate_up.planes, bb)
    h = bb.emit(relax.call_tir(gvs[1], [x_in, *gate_up_w, row_token, row_weight, tile_expert, num_tiles],
                               out_ty=relax.TensorType((rows, inter), "float32")))
    o = bb.emit(relax.call_tir(gvs[2], [planes(h), *down_w, tile_expert, num_tiles],
                               out_ty=relax.TensorType((rows, dim), "float32")))
    return relax.call_tir(gvs[3], [o, slot], out_ty=relax.TensorType((tokens, dim), "float32"))
