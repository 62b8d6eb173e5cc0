"""HIVM ops for the Ascend kernels, written through ``mlir.Builder``: the loop that spreads tasks over
the AI cores (``block_loop``, ``tile_origin``), element-wise vector ops on UB tensors and row-tile
loads and stores between GM and UB (``Vector``), the per-target syntax differences, and the UB tiling
rule the vector kernels share.

Per-target syntax (bishengir 1.2.0): the 950 tool's (``-a5``) ``vreduce`` requires an
``unsigned_src`` attribute that the 910B tool does not know; everything else the vector kernels emit
is common to both.
"""

from __future__ import annotations

from contextlib import contextmanager

from tide.targets.ascend import cost, mlir


def is_950(soc: str) -> bool:
    return cost.soc(soc).name.startswith("Ascend950")


def reduce_attrs(soc: str, dims) -> str:
    """The attribute text of ``hivm.hir.vreduce`` over ``dims`` for ``soc``'s tool."""
    dims_text = ", ".join(str(d) for d in dims)
    return ("unsigned_src = false " if is_950(soc) else "") + f"reduce_dims = [{dims_text}]"


@contextmanager
def block_loop(b: mlir.Builder, tasks: str, hint: str = "task"):
    """``for task = block_idx; task < tasks; task += block_num``: the tasks spread round-robin over
    the AI cores; yields the task index inside the loop."""
    bid = b.op("hivm.hir.get_block_idx -> i64", "bid")
    bidx = b.op(f"arith.index_cast {bid} : i64 to index", "bidx")
    bnum = b.op("hivm.hir.get_block_num -> i64", "bnum")
    bnumx = b.op(f"arith.index_cast {bnum} : i64 to index", "bnumx")
    task = b.fresh(hint)
    with b.region(f"scf.for {task} = {bidx} to {tasks} step {bnumx} {{"):
        yield task


def tile_origin(b: mlir.Builder, task: str, col_tiles: int, tile_rows: int, tile_cols: int) -> tuple[str, str]:
    """(first row, first column) of task ``task``'s tile, tasks numbered row-major over a grid of
    ``col_tiles`` tiles of ``tile_rows`` x ``tile_cols`` per row."""
    ti = b.op(f"arith.divui {task}, {b.const(col_tiles)} : index", "ti")
    tj = b.op(f"arith.remui {task}, {b.const(col_tiles)} : index", "tj")
    return (b.op(f"arith.muli {ti}, {b.const(tile_rows)} : index", "r0"),
            b.op(f"arith.muli {tj}, {b.const(tile_cols)} : index", "c0"))


class Vector:
    """float32 vector ops on UB tensors, emitted into builder ``b``."""

    def __init__(self, b: mlir.Builder, soc: str):
        self.b, self.soc = b, soc

    def op(self, name: str, ins, types, out_t: str, extra: str = "") -> str:
        """``hivm.hir.<name>`` of ``ins`` (SSA names) with ``types`` into a fresh ``out_t``;
        ``extra`` carries attributes such as `` broadcast = [1]``."""
        out = self.b.op(f"tensor.empty() : {out_t}", "ve")
        return self.b.op(f"hivm.hir.{name} ins({', '.join(ins)} : {', '.join(types)}) outs({out} : {out_t})"
                         f"{extra} -> {out_t}", "v")

    def fill(self, scalar: str, out_t: str) -> str:
        return self.op("vbrc", [scalar], ["f32"], out_t)

    def reduce(self, kind: str, src: str, src_t: str, init: str, out_t: str, dims) -> str:
        """``vreduce <kind>`` of ``src`` over ``dims`` starting from ``init`` (the CPU lowering reads
        its destination, so the caller fills it with the reduction's identity)."""
        return self.b.op(f"hivm.hir.vreduce <{kind}> ins({src} : {src_t}) outs({init} : {out_t}) "
                         f"{reduce_attrs(self.soc, dims)} -> {out_t}", "red")

    def load(self, src: str, src_t: mlir.MemRef, index, shape, row_stride: int) -> str:
        """GM ``src[index...]`` tile of ``shape`` (2-D, rows ``row_stride`` apart) -> UB buffer -> tensor."""
        view, view_t = self._tile(src, src_t, index, shape, row_stride)
        buf_t = mlir.memref(shape, "f32")
        buf = self.b.op(f"memref.alloc() : {buf_t}", "buf")
        self.b.emit(f"hivm.hir.load ins({view} : {view_t}) outs({buf} : {buf_t})")
        return self.b.op(f"bufferization.to_tensor {buf} restrict writable : {buf_t}", "t")

    def store(self, val: str, dst: str, dst_t: mlir.MemRef, index, shape, row_stride: int):
        view, view_t = self._tile(dst, dst_t, index, shape, row_stride)
        self.b.emit(f"hivm.hir.store ins({val} : {mlir.tensor(shape, 'f32')}) outs({view} : {view_t})")

    def _tile(self, mem: str, mem_t: mlir.MemRef, index, shape, row_stride: int) -> tuple[str, mlir.MemRef]:
        """The GM subview ``mem[index...]`` of ``shape`` (rows ``row_stride`` apart) and its type."""
        tile_t = mlir.gm(shape, "f32", (row_stride, 1), "?")
        view = self.b.op(f"memref.subview {mem}[{', '.join(index)}] [{shape[0]}, {shape[1]}] [1, 1] : {mem_t} to "
                         f"{tile_t}", "view")
        return view, tile_t


def largest_divisor_at_most(n: int, limit: int) -> int:
    return max(t for t in range(1, min(n, limit) + 1) if n % t == 0)


def tile_rows(soc: str, rows: int, row_bytes: int, live: int, fixed_bytes: int = 0, buffering: int = 2,
              what: str = "kernel") -> int:
    """The largest divisor of ``rows`` whose ``live`` tiles of ``row_bytes`` per row, plus
    ``fixed_bytes`` of per-kernel buffers, fit ``soc``'s UB ``buffering`` times over."""
    ub = cost.soc(soc).ub
    limit = (ub - fixed_bytes * buffering) // (live * buffering * row_bytes)
    if limit < 1:
        raise ValueError(f"ascend {what}: the smallest tile ({live} live blocks of {row_bytes} bytes, x{buffering}"
                         f" buffering"
                         f", plus {fixed_bytes} bytes) does not fit {soc}'s {ub} byte unified buffer")
    return largest_divisor_at_most(rows, limit)
