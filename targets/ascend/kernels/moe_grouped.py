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

from contextlib import contextmanager

from tide.ops import moe_permute
from tide.targets.ascend import cost, hivm, mlir
from tide.targets.ascend.kernels import matmul

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


@contextmanager
def _tile_loop(b: mlir.Builder, nt_cols: int, tm: int, tn: int, n: int, max_tiles: int):
    """Task loop over (used tile, column block); yields (e, n0, ns, r0) inside the loop."""
    nt = b.op(f"memref.load %NT[{b.const(0)}] : {mlir.gm((1,), 'i32')}", "nt")
    ntx = b.op(f"arith.index_cast {nt} : i32 to index", "ntx")
    tasks = b.op(f"arith.muli {ntx}, {b.const(nt_cols)} : index", "tasks")
    with hivm.block_loop(b, tasks) as task:
        q = b.op(f"arith.divui {task}, {b.const(nt_cols)} : index", "q")
        j = b.op(f"arith.remui {task}, {b.const(nt_cols)} : index", "j")
        ei = b.op(f"memref.load %TE[{q}] : {mlir.gm((max_tiles,), 'i32')}", "e")
        e = b.op(f"arith.index_cast {ei} : i32 to index", "ex")
        n0 = b.op(f"arith.muli {j}, {b.const(tn)} : index", "n0")
        ns = b.op(f"arith.minui {b.op(f'arith.subi {b.const(n)}, {n0} : index', 'nr')}, {b.const(tn)} : index", "ns")
        r0 = b.op(f"arith.muli {q}, {b.const(tm)} : index", "r0")
        yield e, n0, ns, r0


def emit_gate_up(tokens: int, top_k: int, experts: int, dim: int, inter: int, limit: float, soc: str,
                 dtype: str = "bfloat16", block_rows: int = 16, tiling: cost.GemmTiling | None = None,
                 name: str = "tide_moe_gate_up") -> str:
    """HIVM module: ``(x [T, D], gate_up [E, 2F, D], row_token [R] i32, row_weight [R] f32,
    tile_expert [Q] i32, num_tiles [1] i32, h [R, F])``, x / weights / h in ``dtype``."""
    elem = matmul.input_elem(dtype)
    if limit <= 0:
        raise ValueError(f"ascend moe: swiglu limit must be positive, got {limit}")
    t = tiling or choose_tiling(soc, "gate_up", tokens, top_k, experts, dim, inter, block_rows)
    _check(soc, t, block_rows, 2)
    tm, tn, tk = t.tm, t.tn, t.tk
    max_tiles, rows = moe_permute.tiling(tokens, top_k, experts, block_rows)
    x_t, w_t = mlir.gm((tokens, dim), elem), mlir.gm((experts, 2 * inter, dim), elem)
    h_t, rt_t, rw_t = mlir.gm((rows, inter), elem), mlir.gm((rows,), "i32"), mlir.gm((rows,), "f32")
    b = mlir.Builder()
    v = hivm.Vector(b, soc)
    with _tile_loop(b, -(-inter // tn), tm, tn, inter, max_tiles) as (e, n0, ns, r0):
        ms = b.const(tm)
        up0 = b.op(f"arith.addi {n0}, {b.const(inter)} : index", "up0")

        def gather_x(k0, ks):
            buf_t = mlir.memref((tm, tk), elem)
            buf = b.op(f"memref.alloc() : {buf_t}", "xbuf")
            i = b.fresh("i")
            with b.region(f"scf.for {i} = {b.const(0)} to {b.const(tm)} step {b.const(1)} {{"):
                r = b.op(f"arith.addi {r0}, {i} : index", "r")
                tok = b.op(f"memref.load %RT[{r}] : {rt_t}", "tok")
                tokx = b.op(f"arith.index_cast {tok} : i32 to index", "tokx")
                xv, xv_t = matmul.view2d(b, "%X", (tokens, dim), [], tokx, b.const(1), k0, ks, elem)
                dv_t = mlir.memref(("?", "?"), elem, strides=(tk, 1), offset="?")
                dv = b.op(f"memref.subview {buf}[{i}, 0] [{b.const(1)}, {ks}] [1, 1] : {buf_t} to {dv_t}", "xdst")
                b.emit(f"hivm.hir.load ins({xv} : {xv_t}) outs({dv} : {dv_t})")
            return b.op(f"bufferization.to_tensor {buf} restrict writable : {buf_t}", "xt")

        g, u = matmul.emit_k_loop(b, dim, tk, tm, [tn, tn], ms, ns, elem, gather_x,
                                  [("%W", (experts, 2 * inter, dim), [e], n0),
                                   ("%W", (experts, 2 * inter, dim), [e], up0)])
        T = mlir.tensor((tm, tn), "f32")
        cl = b.op(f"arith.constant {float(limit):e} : f32", "lim")
        ncl = b.op(f"arith.constant {-float(limit):e} : f32", "nlim")
        one = b.op("arith.constant 1.000000e+00 : f32", "one")
        mone = b.op("arith.constant -1.000000e+00 : f32", "mone")
        gc = v.op("vmin", [g, cl], [T, "f32"], T)
        ng = v.op("vmul", [gc, mone], [T, "f32"], T)
        ex = v.op("vexp", [ng], [T], T)
        den = v.op("vadd", [ex, one], [T, "f32"], T)
        sg = v.op("vdiv", [gc, den], [T, T], T)
        u1 = v.op("vmin", [u, cl], [T, "f32"], T)
        uc = v.op("vmax", [u1, ncl], [T, "f32"], T)
        p = v.op("vmul", [sg, uc], [T, T], T)
        # routing weight of each row, broadcast along the columns
        wbuf_t, wd_t = mlir.memref((tm, 1), "f32"), mlir.memref((tm,), "f32")
        wbuf = b.op(f"memref.alloc() : {wbuf_t}", "wbuf")
        wv_t = mlir.gm((tm,), "f32", (1,), "?")
        wv = b.op(f"memref.subview %RW[{r0}] [{tm}] [1] : {rw_t} to {wv_t}", "wv")
        wd = b.op(f"memref.collapse_shape {wbuf} [[0, 1]] : {wbuf_t} into {wd_t}", "wd")
        b.emit(f"hivm.hir.load ins({wv} : {wv_t}) outs({wd} : {wd_t})")
        wt = b.op(f"bufferization.to_tensor {wbuf} restrict writable : {wbuf_t}", "wt")
        hw = v.op("vmul", [p, wt], [T, mlir.tensor((tm, 1), "f32")], T, " broadcast = [1]")
        HT = mlir.tensor((tm, tn), elem)
        hce = b.op(f"tensor.empty() : {HT}", "hce")
        hc = b.op(f"hivm.hir.vcast ins({hw} : {T}) outs({hce} : {HT}) round_mode = <rint> -> {HT}", "hc")
        hs_t = mlir.tensor((tm, "?"), elem)
        hs = b.op(f"tensor.extract_slice {hc}[0, 0] [{tm}, {ns}] [1, 1] : {HT} to {hs_t}", "hs")
        ho_t = mlir.gm((tm, "?"), elem, (inter, 1), "?")
        ho = b.op(f"memref.subview %H[{r0}, {n0}] [{tm}, {ns}] [1, 1] : {h_t} to {ho_t}", "ho")
        b.emit(f"hivm.hir.store ins({hs} : {hs_t}) outs({ho} : {ho_t})")
    return b.module(name, [*MIX_ARGS, ("%X", x_t), ("%W", w_t), ("%RT", rt_t), ("%RW", rw_t),
                           ("%TE", mlir.gm((max_tiles,), "i32")), ("%NT", mlir.gm((1,), "i32")), ("%H", h_t)],
                    t.blocks)


def emit_down(tokens: int, top_k: int, experts: int, dim: int, inter: int, soc: str, dtype: str = "bfloat16",
              block_rows: int = 16, tiling: cost.GemmTiling | None = None, name: str = "tide_moe_down") -> str:
    """HIVM module: ``(h [R, F], down [E, D, F], tile_expert [Q] i32, num_tiles [1] i32, o [R, D] f32)``."""
    elem = matmul.input_elem(dtype)
    t = tiling or choose_tiling(soc, "down", tokens, top_k, experts, dim, inter, block_rows)
    _check(soc, t, block_rows, 1)
    tm, tn, tk = t.tm, t.tn, t.tk
    max_tiles, rows = moe_permute.tiling(tokens, top_k, experts, block_rows)
    h_t, w_t, o_t = mlir.gm((rows, inter), elem), mlir.gm((experts, dim, inter), elem), mlir.gm((rows, dim), "f32")
    b = mlir.Builder()
    with _tile_loop(b, -(-dim // tn), tm, tn, dim, max_tiles) as (e, n0, ns, r0):
        ms = b.const(tm)
        acc, = matmul.emit_k_loop(
            b, inter, tk, tm, [tn], ms, ns, elem,
            lambda k0, ks: matmul.emit_tile_loads(b, "%Hin", (rows, inter), [], r0, ms, k0, ks, tm, tk, elem),
            [("%W", (experts, dim, inter), [e], n0)])
        out_t = mlir.gm(("?", "?"), "f32", (dim, 1), "?")
        out = b.op(f"memref.subview %O[{r0}, {n0}] [{ms}, {ns}] [1, 1] : {o_t} to {out_t}", "out")
        b.emit(f"hivm.hir.fixpipe {{enable_nz2nd}} ins({acc} : {mlir.tensor((tm, tn), 'f32')}) outs({out} : {out_t})")
    return b.module(name, [("%Hin", h_t), ("%W", w_t), ("%TE", mlir.gm((max_tiles,), "i32")),
                           ("%NT", mlir.gm((1,), "i32")), ("%O", o_t)], t.blocks)


def estimate(soc: str, kind: str, tokens: int, top_k: int, experts: int, dim: int, inter: int,
             block_rows: int = 16, tiling: cost.GemmTiling | None = None) -> cost.Estimate:
    """Cost-model estimate of one grouped kernel at the balanced routing of ``tokens``."""
    rows = cost.balanced_routing(tokens, top_k, experts)
    t = tiling or choose_tiling(soc, kind, tokens, top_k, experts, dim, inter, block_rows)
    if kind == "gate_up":
        return cost.grouped_gemm(soc, rows, 2 * inter, dim, t, out_itemsize=2, gathered_rows=True,
                                 kernel="moe_gate_up", epilogue_ops_per_out=SWIGLU_VECTOR_OPS, accumulators=2)
    return cost.grouped_gemm(soc, rows, dim, inter, t, kernel="moe_down")
