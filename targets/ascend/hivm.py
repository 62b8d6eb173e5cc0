"""Helpers for emitting HIVM vector kernels as MLIR text (on top of ``kernels.matmul.Body``): the
per-target syntax differences, element-wise vector ops on UB tensors, row-tile loads and stores
between GM and UB, and the UB tiling rule the vector kernels share.

Per-target syntax (bishengir 1.2.0): the 950 tool's (``-a5``) ``vreduce`` requires an
``unsigned_src`` attribute that the 910B tool does not know; everything else the vector kernels emit
is common to both.
"""

from __future__ import annotations

from tide.targets.ascend import cost
from tide.targets.ascend.kernels.matmul import GM, Body

F32 = "f32"
NEG_INF = "0xFF800000"  # float32 -inf as an MLIR hex literal


def is_950(soc: str) -> bool:
    return cost.soc(soc).name.startswith("Ascend950")


def reduce_attrs(soc: str, dims) -> str:
    """The attribute text of ``hivm.hir.vreduce`` over ``dims`` for ``soc``'s tool."""
    dims_text = ", ".join(str(d) for d in dims)
    return ("unsigned_src = false " if is_950(soc) else "") + f"reduce_dims = [{dims_text}]"


def tensor_t(shape, elem: str = F32) -> str:
    return "tensor<" + "x".join(str(d) for d in shape) + f"x{elem}>"


def gm_tile_t(shape, row_stride: int, elem: str = F32) -> str:
    """A 2-D GM subview type with a dynamic offset and the parent's row stride."""
    return f"memref<{shape[0]}x{shape[1]}x{elem}, strided<[{row_stride}, 1], offset: ?>, {GM}>"


class Vector:
    """Vector ops on UB tensors, emitted into ``body`` at indent ``ind``."""

    def __init__(self, body: Body, soc: str, ind: int):
        self.b, self.soc, self.ind = body, soc, ind

    def op(self, name: str, ins, types, out_t: str, extra: str = "") -> str:
        """``hivm.hir.<name>`` of ``ins`` (SSA names) with ``types`` into a fresh ``out_t``;
        ``extra`` carries attributes such as `` broadcast = [1]``."""
        out = self.b.op("ve", f"tensor.empty() : {out_t}", self.ind)
        return self.b.op("v", f"hivm.hir.{name} ins({', '.join(ins)} : {', '.join(types)}) outs({out} : {out_t})"
                              f"{extra} -> {out_t}", self.ind)

    def fill(self, scalar: str, out_t: str) -> str:
        return self.op("vbrc", [scalar], [F32], out_t)

    def reduce(self, kind: str, src: str, src_t: str, init: str, out_t: str, dims) -> str:
        """``vreduce <kind>`` of ``src`` over ``dims`` starting from ``init`` (the CPU lowering reads
        its destination, so the caller fills it with the reduction's identity)."""
        return self.b.op("red", f"hivm.hir.vreduce <{kind}> ins({src} : {src_t}) outs({init} : {out_t}) "
                                f"{reduce_attrs(self.soc, dims)} -> {out_t}", self.ind)

    def load(self, src: str, src_t: str, index, shape, row_stride: int) -> str:
        """GM ``src[index...]`` tile of ``shape`` (2-D) -> UB buffer -> tensor."""
        tile_t = gm_tile_t(shape, row_stride)
        idx = ", ".join(index)
        view = self.b.op("view", f"memref.subview {src}[{idx}] [{shape[0]}, {shape[1]}] [1, 1] : {src_t} to {tile_t}",
                         self.ind)
        buf_t = f"memref<{shape[0]}x{shape[1]}xf32>"
        buf = self.b.op("buf", f"memref.alloc() : {buf_t}", self.ind)
        self.b.emit(f"hivm.hir.load ins({view} : {tile_t}) outs({buf} : {buf_t})", self.ind)
        return self.b.op("t", f"bufferization.to_tensor {buf} restrict writable : {buf_t}", self.ind)

    def store(self, val: str, dst: str, dst_t: str, index, shape, row_stride: int):
        tile_t = gm_tile_t(shape, row_stride)
        idx = ", ".join(index)
        view = self.b.op("view", f"memref.subview {dst}[{idx}] [{shape[0]}, {shape[1]}] [1, 1] : {dst_t} to {tile_t}",
                         self.ind)
        self.b.emit(f"hivm.hir.store ins({val} : {tensor_t(shape)}) outs({view} : {tile_t})", self.ind)


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
