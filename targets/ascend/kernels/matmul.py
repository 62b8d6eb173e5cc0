"""Tiled cube GEMM for Ascend as HIVM MLIR: ``C[M, N] = A[M, K] @ B[N, K]^T`` (B as V4 stores its
weights: rows of K), bf16 or fp16 inputs, fp32 accumulation and output.

The kernel is written at tensor level, the form bishengir 1.2.0 compiles for both 910B and 950:
per output tile, a K loop of ``hivm.hir.load`` (GM -> a local buffer) -> ``bufferization.to_tensor``
-> ``hivm.hir.mmadL1`` (accumulating in its ``outs`` tensor, initialised on the first K step), then
one ``hivm.hir.fixpipe`` of the accumulator to the output. L1/L0 placement, the NZ layout
conversion, multi-buffering and pipe synchronisation are left to bishengir. Output tiles are spread
round-robin over the AI cores with ``get_block_idx`` / ``get_block_num``; edge tiles (shapes that do
not divide the tiles) load, multiply and write back only their valid part (dynamic sizes).
"""

from __future__ import annotations

from tide.targets.ascend import cost, hivm, mlir

DTYPES = ("bfloat16", "float16", "float32")  # the cube's input dtypes


def input_elem(dtype: str) -> str:
    """The MLIR element type of cube input dtype ``dtype``."""
    if dtype not in DTYPES:
        raise ValueError(f"ascend matmul: input dtype must be one of {sorted(DTYPES)}, got '{dtype}'")
    return mlir.elem(dtype)


def choose_tiling(soc: str, m: int, n: int, k: int, dtype: str = "bfloat16") -> cost.GemmTiling:
    """The cost model's best tiling among those that fit the SoC's L1 / L0A / L0B / L0C."""
    input_elem(dtype)
    return cost.choose_tiling(soc, [m], n, k, itemsize=mlir.itemsize(dtype))


def estimate(soc: str, m: int, n: int, k: int, dtype: str = "bfloat16", tiling: cost.GemmTiling | None = None,
             kernel: str = "gemm") -> cost.Estimate:
    """Cost-model estimate of the kernel ``emit`` writes for these arguments."""
    return cost.gemm(soc, m, n, k, tiling or choose_tiling(soc, m, n, k, dtype), itemsize=mlir.itemsize(dtype),
                     kernel=kernel)


def load_tile(b: mlir.Builder, view: str, view_t: mlir.MemRef, rows: str, ks: str, tile_rows: int, tk: int,
              elem: str) -> str:
    """Load a (rows x ks) GM view into a fresh (tile_rows x tk) local buffer; returns it as a tensor
    (the part outside rows x ks is never read: every consumer takes the valid sizes)."""
    buf_t = mlir.memref((tile_rows, tk), elem)
    buf = b.op(f"memref.alloc() : {buf_t}", "buf")
    dv_t = mlir.memref(("?", "?"), elem, strides=(tk, 1))
    dv = b.op(f"memref.subview {buf}[0, 0] [{rows}, {ks}] [1, 1] : {buf_t} to {dv_t}", "dst")
    b.emit(f"hivm.hir.load ins({view} : {view_t}) outs({dv} : {dv_t})")
    return b.op(f"bufferization.to_tensor {buf} restrict writable : {buf_t}", "t")


def view2d(b: mlir.Builder, src: str, src_shape, lead, row0: str, rows: str, k0: str, ks: str,
           elem: str) -> tuple[str, mlir.MemRef]:
    """Rank-reduced GM view ``src[*lead, row0 : row0 + rows, k0 : k0 + ks]`` -> (value, type)."""
    lead = list(lead)
    t = mlir.gm(("?", "?"), elem, (src_shape[-1], 1), "?")
    offs = ", ".join(lead + [row0, k0])
    sizes = ", ".join(["1"] * len(lead) + [rows, ks])
    strides = ", ".join(["1"] * len(src_shape))
    v = b.op(f"memref.subview {src}[{offs}] [{sizes}] [{strides}] : {mlir.gm(src_shape, elem)} to {t}", "src")
    return v, t


def emit_tile_loads(b: mlir.Builder, src: str, src_shape, lead, row0: str, rows: str, k0: str, ks: str,
                    tile_rows: int, tk: int, elem: str) -> str:
    """Load ``src[*lead, row0 : row0 + rows, k0 : k0 + ks]`` into a (tile_rows x tk) local tensor."""
    v, t = view2d(b, src, src_shape, lead, row0, rows, k0, ks, elem)
    return load_tile(b, v, t, rows, ks, tile_rows, tk, elem)


def emit_mmad(b: mlir.Builder, a: str, bt: str, init: str, ms: str, ks: str, ns: str, acc: str,
              tm: int, tn: int, tk: int, elem: str, b_kn: bool = False) -> str:
    """acc (+)= a[:ms, :ks] @ bt[:ns, :ks]^T (B transposed: rows of K), or with ``b_kn``
    acc (+)= a[:ms, :ks] @ bt[:ks, :ns] (B as stored [K, N])."""
    attr, b_t = ("", mlir.tensor((tk, tn), elem)) if b_kn else ("{b_transpose} ", mlir.tensor((tn, tk), elem))
    acc_t = mlir.tensor((tm, tn), "f32")
    return b.op(f"hivm.hir.mmadL1 {attr}ins({a}, {bt}, {init}, {ms}, {ks}, {ns} : {mlir.tensor((tm, tk), elem)}, "
                f"{b_t}, i1, index, index, index) outs({acc} : {acc_t}) -> {acc_t}", "mm")


def emit_k_loop(b: mlir.Builder, k: int, tk: int, tm: int, tn_list, ms: str, ns: str, elem: str,
                load_a, b_sources, b_kn: bool = False) -> list:
    """K loop over tk steps; ``load_a(k0, ks)`` returns the A tile tensor; ``b_sources`` are
    (B memref, its shape, leading indices, first row) per accumulator, all sharing the A tile
    (``b_kn``: B stored [K, N], the "first row" is then its first column). Returns the final
    accumulators."""
    accs0 = [b.op(f"tensor.empty() : {mlir.tensor((tm, tn), 'f32')}", "e") for tn in tn_list]
    kt = -(-k // tk)
    iters = [b.fresh("acc") for _ in tn_list]
    res = b.fresh("accs")
    types = ", ".join(mlir.tensor((tm, tn), "f32") for tn in tn_list)
    kk = b.fresh("kk")
    iter_args = ", ".join(f"{i} = {a0}" for i, a0 in zip(iters, accs0))
    with b.region(f"{res}:{len(tn_list)} = scf.for {kk} = {b.const(0)} to {b.const(kt)} step {b.const(1)} "
                  f"iter_args({iter_args}) -> ({types}) {{"):
        k0 = b.op(f"arith.muli {kk}, {b.const(tk)} : index", "k0")
        kr = b.op(f"arith.subi {b.const(k)}, {k0} : index", "kr")
        ks = b.op(f"arith.minui {kr}, {b.const(tk)} : index", "ks")
        ta = load_a(k0, ks)
        init = b.op(f"arith.cmpi eq, {kk}, {b.const(0)} : index", "init")
        outs = []
        for (src, src_shape, lead, row0), tn, it in zip(b_sources, tn_list, iters):
            if b_kn:
                tb = emit_tile_loads(b, src, src_shape, lead, k0, ks, row0, ns, tk, tn, elem)
            else:
                tb = emit_tile_loads(b, src, src_shape, lead, row0, ns, k0, ks, tn, tk, elem)
            outs.append(emit_mmad(b, ta, tb, init, ms, ks, ns, it, tm, tn, tk, elem, b_kn))
        b.emit(f"scf.yield {', '.join(outs)} : {types}")
    return [f"{res}#{i}" for i in range(len(tn_list))]


def emit(m: int, n: int, k: int, soc: str, dtype: str = "bfloat16", tiling: cost.GemmTiling | None = None,
         name: str = "tide_gemm", b_kn: bool = False, arg_types=None) -> str:
    """HIVM module of ``C[m, n] = A[m, k] @ B[n, k]^T`` for ``soc`` (``b_kn``: ``A @ B`` with B
    stored ``[k, n]``; tiling: the cost model's choice unless given). float32 inputs use the cube's
    float32 mode (C is float32 in every case). ``arg_types``: the entry's argument types as its
    caller passes them (the plan's shapes), each reshaped to the kernel's own at the entry
    (``mlir.Builder.module``); default the kernel's own."""
    elem = input_elem(dtype)
    if min(m, n, k) < 1:
        raise ValueError(f"ascend matmul: shape must be positive, got m={m} n={n} k={k}")
    s = cost.soc(soc)
    t = tiling or choose_tiling(soc, m, n, k, dtype)
    if not t.fits(s, mlir.itemsize(dtype)):
        raise ValueError(f"ascend matmul: tiling {t} does not fit {soc}'s L1/L0 buffers")
    tm, tn, tk = t.tm, t.tn, t.tk
    mt, nt = -(-m // tm), -(-n // tn)
    b_shape = (k, n) if b_kn else (n, k)
    a_t, b_t, c_t = mlir.gm((m, k), elem), mlir.gm(b_shape, elem), mlir.gm((m, n), "f32")
    b = mlir.Builder()
    with hivm.block_loop(b, b.const(mt * nt)) as task:
        m0, n0 = hivm.tile_origin(b, task, nt, tm, tn)
        ms = b.op(f"arith.minui {b.op(f'arith.subi {b.const(m)}, {m0} : index', 'mr')}, {b.const(tm)} : index", "ms")
        ns = b.op(f"arith.minui {b.op(f'arith.subi {b.const(n)}, {n0} : index', 'nr')}, {b.const(tn)} : index", "ns")
        acc, = emit_k_loop(b, k, tk, tm, [tn], ms, ns, elem,
                           lambda k0, ks: emit_tile_loads(b, "%A", (m, k), [], m0, ms, k0, ks, tm, tk, elem),
                           [("%B", b_shape, [], n0)], b_kn)
        out_t = mlir.gm(("?", "?"), "f32", (n, 1), "?")
        out = b.op(f"memref.subview %C[{m0}, {n0}] [{ms}, {ns}] [1, 1] : {c_t} to {out_t}", "out")
        b.emit(f"hivm.hir.fixpipe {{enable_nz2nd}} ins({acc} : {mlir.tensor((tm, tn), 'f32')}) outs({out} : {out_t})")
    return b.module(name, [("%A", a_t), ("%B", b_t), ("%C", c_t)], t.blocks, arg_types)
