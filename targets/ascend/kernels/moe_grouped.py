"""MoE grouped GEMMs for Ascend as HIVM MLIR, over the expert row tiles of ``tide.ops.moe_permute``.

Same semantics as ``tide.ops.moe_gate_up`` / ``tide.ops.moe_down`` (weights in the checkpoint's
"rows" layout, ``gate_up [E, 2F, D]`` gate rows then up rows, ``down [E, D, F]``); the row tile of
the permutation (``block_rows``) is the cube's M tile, so an expert's rows never share a tile with
another expert's.

- ``emit_gate_up``: for every used tile q (``q < num_tiles[0]``, expert ``e = tile_expert[q]``) and
  block of tn columns of F: the tile's tokens gathered row by row from x (one DMA per row and K step,
  ``row_token``), two cube accumulators (gate rows and up rows of expert e), then the SwiGLU epilogue
  on the vector unit with V4's clamps, ``h = row_weight * silu(min(g, L)) * clip(u, -L, L)``, cast to
  the input dtype (h feeds the down GEMM's cube) and stored.
- ``emit_down``: ``o[r] = W_down[e] h[r]`` per used tile (contiguous rows), fp32 out through fixpipe.

Tasks (tile, column block) go round-robin over the AI cores; the task count is read from
``num_tiles`` at run time, so experts without tokens cost nothing.
"""

from __future__ import annotations

from tide.ops import moe_permute
from tide.targets.ascend import cost
from tide.targets.ascend.kernels import matmul
from tide.targets.ascend.kernels.matmul import GM, Body, gm

# A kernel with cube and vector work (mixed AIC/AIV) takes the FFTS base address (cross-core sync)
# and a GM workspace (the cube -> vector hand-off on 910B), both supplied by the launcher; the
# workspace memref must have no address space (tests/ascend_regressions/cube_mix_*.mlir).
MIX_ARGS = [("%FF", "i64 {hacc.arg_type = #hacc.arg_type<ffts_base_address>}"),
            ("%WS", "memref<?xi8> {hacc.arg_type = #hacc.arg_type<workspace>}")]
SWIGLU_VECTOR_OPS = 9   # min, mul(-1), exp, add(1), div, min, max, mul, mul(weight) per h element


def choose_tiling(soc: str, kind: str, tokens: int, top_k: int, experts: int, dim: int, inter: int,
           block_rows: int = 16) -> cost.GemmTiling:
    """Cost-model tiling for the balanced routing of ``tokens`` (tm is the permutation's row tile)."""
    rows = cost.balanced_routing(tokens, top_k, experts)
    if kind == "gate_up":
        return cost.choose_tiling(soc, rows, 2 * inter, dim, accumulators=2, gathered_rows=True, tm=block_rows)
    if kind == "down":
        return cost.choose_tiling(soc, rows, dim, inter, tm=block_rows)
    raise ValueError(f"ascend moe: unknown kernel kind '{kind}' (expected gate_up or down)")


def _check(soc: str, t: cost.GemmTiling, block_rows: int, accumulators: int):
    if t.tm != block_rows:
        raise ValueError(f"ascend moe: the M tile ({t.tm}) must be the permutation's block_rows ({block_rows})")
    if not t.fits(cost.soc(soc), 2, accumulators):
        raise ValueError(f"ascend moe: tiling {t} does not fit {soc}'s L1/L0 buffers")


def _tile_prologue(b: Body, nt_cols: int, tm: int, tn: int, n: int, max_tiles: int):
    """Task loop over (used tile, column block); returns (q, e, n0, ns, r0) inside the loop."""
    nt = b.op("nt", f"memref.load %NT[{b.const(0)}] : memref<1xi32, {GM}>", 2)
    ntx = b.op("ntx", f"arith.index_cast {nt} : i32 to index", 2)
    tasks = b.op("tasks", f"arith.muli {ntx}, {b.const(nt_cols)} : index", 2)
    task = matmul.emit_block_loop(b, tasks, 2)
    q = b.op("q", f"arith.divui {task}, {b.const(nt_cols)} : index", 3)
    j = b.op("j", f"arith.remui {task}, {b.const(nt_cols)} : index", 3)
    ei = b.op("e", f"memref.load %TE[{q}] : memref<{max_tiles}xi32, {GM}>", 3)
    e = b.op("ex", f"arith.index_cast {ei} : i32 to index", 3)
    n0 = b.op("n0", f"arith.muli {j}, {b.const(tn)} : index", 3)
    ns = b.op("ns", f"arith.minui {b.op('nr', f'arith.subi {b.const(n)}, {n0} : index', 3)}, {b.const(tn)} : index", 3)
    r0 = b.op("r0", f"arith.muli {q}, {b.const(tm)} : index", 3)
    return q, e, n0, ns, r0


def emit_gate_up(tokens: int, top_k: int, experts: int, dim: int, inter: int, limit: float, soc: str,
                 dtype: str = "bfloat16", block_rows: int = 16, tiling: cost.GemmTiling | None = None,
                 name: str = "tide_moe_gate_up") -> str:
    """HIVM module: ``(x [T, D], gate_up [E, 2F, D], row_token [R] i32, row_weight [R] f32,
    tile_expert [Q] i32, num_tiles [1] i32, h [R, F])``, x / weights / h in ``dtype``."""
    elem = matmul.mlir_dtype(dtype)
    if limit <= 0:
        raise ValueError(f"ascend moe: swiglu limit must be positive, got {limit}")
    t = tiling or choose_tiling(soc, "gate_up", tokens, top_k, experts, dim, inter, block_rows)
    _check(soc, t, block_rows, 2)
    tm, tn, tk = t.tm, t.tn, t.tk
    max_tiles, rows = moe_permute.tiling(tokens, top_k, experts, block_rows)
    x_t, w_t = gm((tokens, dim), elem), gm((experts, 2 * inter, dim), elem)
    h_t = gm((rows, inter), elem)
    b = Body()
    q, e, n0, ns, r0 = _tile_prologue(b, -(-inter // tn), tm, tn, inter, max_tiles)
    ms = b.const(tm)
    up0 = b.op("up0", f"arith.addi {n0}, {b.const(inter)} : index", 3)

    def gather_x(k0, ks, ind):
        buf = b.op("xbuf", f"memref.alloc() : memref<{tm}x{tk}x{elem}>", ind)
        i = b.fresh("i")
        b.emit(f"scf.for {i} = {b.const(0)} to {b.const(tm)} step {b.const(1)} {{", ind)
        r = b.op("r", f"arith.addi {r0}, {i} : index", ind + 1)
        tok = b.op("tok", f"memref.load %RT[{r}] : memref<{rows}xi32, {GM}>", ind + 1)
        tokx = b.op("tokx", f"arith.index_cast {tok} : i32 to index", ind + 1)
        v, vt = matmul.view2d(b, "%X", (tokens, dim), [], tokx, b.const(1), k0, ks, elem, ind + 1)
        dv_t = f"memref<?x?x{elem}, strided<[{tk}, 1], offset: ?>>"
        dv = b.op("xdst", f"memref.subview {buf}[{i}, 0] [{b.const(1)}, {ks}] [1, 1] : memref<{tm}x{tk}x{elem}> to {dv_t}",
                  ind + 1)
        b.emit(f"hivm.hir.load ins({v} : {vt}) outs({dv} : {dv_t})", ind + 1)
        b.emit("}", ind)
        return b.op("xt", f"bufferization.to_tensor {buf} restrict writable : memref<{tm}x{tk}x{elem}>", ind)

    g, u = matmul.emit_k_loop(b, dim, tk, tm, [tn, tn], ms, ns, elem, 3, gather_x,
                              [("%W", (experts, 2 * inter, dim), [e], n0), ("%W", (experts, 2 * inter, dim), [e], up0)])
    T = f"tensor<{tm}x{tn}xf32>"
    lim, nlim = f"{float(limit):e}", f"{-float(limit):e}"

    def vop(op, ins, types, extra=""):
        out = b.op("ve", f"tensor.empty() : {T}", 3)
        return b.op("v", f"hivm.hir.{op} ins({ins} : {types}) outs({out} : {T}){extra} -> {T}", 3)

    cl = b.op("lim", f"arith.constant {lim} : f32", 3)
    ncl = b.op("nlim", f"arith.constant {nlim} : f32", 3)
    one = b.op("one", "arith.constant 1.000000e+00 : f32", 3)
    mone = b.op("mone", "arith.constant -1.000000e+00 : f32", 3)
    gc = vop("vmin", f"{g}, {cl}", f"{T}, f32")
    ng = vop("vmul", f"{gc}, {mone}", f"{T}, f32")
    ex = vop("vexp", ng, T)
    den = vop("vadd", f"{ex}, {one}", f"{T}, f32")
    sg = vop("vdiv", f"{gc}, {den}", f"{T}, {T}")
    u1 = vop("vmin", f"{u}, {cl}", f"{T}, f32")
    uc = vop("vmax", f"{u1}, {ncl}", f"{T}, f32")
    p = vop("vmul", f"{sg}, {uc}", f"{T}, {T}")
    # routing weight of each row, broadcast along the columns
    wbuf = b.op("wbuf", f"memref.alloc() : memref<{tm}x1xf32>", 3)
    wv_t = f"memref<{tm}xf32, strided<[1], offset: ?>, {GM}>"
    wv = b.op("wv", f"memref.subview %RW[{r0}] [{tm}] [1] : memref<{rows}xf32, {GM}> to {wv_t}", 3)
    wd = b.op("wd", f"memref.collapse_shape {wbuf} [[0, 1]] : memref<{tm}x1xf32> into memref<{tm}xf32>", 3)
    b.emit(f"hivm.hir.load ins({wv} : {wv_t}) outs({wd} : memref<{tm}xf32>)", 3)
    wt = b.op("wt", f"bufferization.to_tensor {wbuf} restrict writable : memref<{tm}x1xf32>", 3)
    hw = vop("vmul", f"{p}, {wt}", f"{T}, tensor<{tm}x1xf32>", " broadcast = [1]")
    HT = f"tensor<{tm}x{tn}x{elem}>"
    hce = b.op("hce", f"tensor.empty() : {HT}", 3)
    hc = b.op("hc", f"hivm.hir.vcast ins({hw} : {T}) outs({hce} : {HT}) round_mode = <rint> -> {HT}", 3)
    hs = b.op("hs", f"tensor.extract_slice {hc}[0, 0] [{tm}, {ns}] [1, 1] : {HT} to tensor<{tm}x?x{elem}>", 3)
    ho_t = f"memref<{tm}x?x{elem}, strided<[{inter}, 1], offset: ?>, {GM}>"
    ho = b.op("ho", f"memref.subview %H[{r0}, {n0}] [{tm}, {ns}] [1, 1] : {h_t} to {ho_t}", 3)
    b.emit(f"hivm.hir.store ins({hs} : tensor<{tm}x?x{elem}>) outs({ho} : {ho_t})", 3)
    b.emit("}", 2)
    return matmul.function(name, [*MIX_ARGS, ("%X", x_t), ("%W", w_t), ("%RT", gm((rows,), "i32")), ("%RW", gm((rows,), "f32")),
                                  ("%TE", gm((max_tiles,), "i32")), ("%NT", gm((1,), "i32")), ("%H", h_t)], b, t.blocks)


def emit_down(tokens: int, top_k: int, experts: int, dim: int, inter: int, soc: str, dtype: str = "bfloat16",
              block_rows: int = 16, tiling: cost.GemmTiling | None = None, name: str = "tide_moe_down") -> str:
    """HIVM module: ``(h [R, F], down [E, D, F], tile_expert [Q] i32, num_tiles [1] i32, o [R, D] f32)``."""
    elem = matmul.mlir_dtype(dtype)
    t = tiling or choose_tiling(soc, "down", tokens, top_k, experts, dim, inter, block_rows)
    _check(soc, t, block_rows, 1)
    tm, tn, tk = t.tm, t.tn, t.tk
    max_tiles, rows = moe_permute.tiling(tokens, top_k, experts, block_rows)
    h_t, w_t, o_t = gm((rows, inter), elem), gm((experts, dim, inter), elem), gm((rows, dim), "f32")
    b = Body()
    q, e, n0, ns, r0 = _tile_prologue(b, -(-dim // tn), tm, tn, dim, max_tiles)
    ms = b.const(tm)
    acc, = matmul.emit_k_loop(
        b, inter, tk, tm, [tn], ms, ns, elem, 3,
        lambda k0, ks, ind: matmul.emit_tile_loads(b, "%Hin", (rows, inter), [], r0, ms, k0, ks, tm, tk, elem, ind),
        [("%W", (experts, dim, inter), [e], n0)])
    out_t = f"memref<?x?xf32, strided<[{dim}, 1], offset: ?>, {GM}>"
    out = b.op("out", f"memref.subview %O[{r0}, {n0}] [{ms}, {ns}] [1, 1] : {o_t} to {out_t}", 3)
    b.emit(f"hivm.hir.fixpipe {{enable_nz2nd}} ins({acc} : tensor<{tm}x{tn}xf32>) outs({out} : {out_t})", 3)
    b.emit("}", 2)
    return matmul.function(name, [("%Hin", h_t), ("%W", w_t), ("%TE", gm((max_tiles,), "i32")), ("%NT", gm((1,), "i32")),
                                  ("%O", o_t)], b, t.blocks)


def estimate(soc: str, kind: str, tokens: int, top_k: int, experts: int, dim: int, inter: int,
             block_rows: int = 16, tiling: cost.GemmTiling | None = None) -> cost.Estimate:
    """Cost-model estimate of one grouped kernel at the balanced routing of ``tokens``."""
    rows = cost.balanced_routing(tokens, top_k, experts)
    t = tiling or choose_tiling(soc, kind, tokens, top_k, experts, dim, inter, block_rows)
    if kind == "gate_up":
        return cost.grouped_gemm(soc, rows, 2 * inter, dim, t, out_itemsize=2, gathered_rows=True,
                                 kernel="moe_gate_up", epilogue_ops_per_out=SWIGLU_VECTOR_OPS, accumulators=2)
    return cost.grouped_gemm(soc, rows, dim, inter, t, kernel="moe_down")
