"""CUDA schedules and choices of the MoE kernels (``tide.ops.moe_*``, ``tide.ops.router*``).

Prefill on packed panels: one thread block per (column block, tile), a thread per output element
of the tile (gate and up accumulated by the same thread), weight loads coalesced along the packed
column axis. Decode (1-row tiles) and parameters read K-contiguous rows with a weight-streaming
GEMV: many blocks over the output columns, a warp per column, the K reduction split over the warp's
lanes and merged by shuffles. Blocks of unused tiles exit at once. Sequential kernels (the
permutation) run on one thread; per-row kernels (router selection) one thread per token.

Choice: prefill on bfloat16 weights runs the grouped GEMMs on tensor cores (``variant =
"mma_bf16"``: 16-row tiles, rows layout; the rules build ``moe_grouped_mma``'s kernels from the
kernel's parameters: mma.sync m16n8k16, fp32 accumulation); float32 weights keep the exact float32
SIMT schedules. Decode reads K-contiguous rows (a warp along K), prefill packed panels.
"""

from __future__ import annotations

from .kernels import moe_grouped_mma
from ...ops.kernel import identity
from ..helpers import schedule_rule
from .limits import THREADS, WARP


def choose_moe_gemm(*, block_rows: int, weight_dtype: str, dim: int, inter: int, constant: bool, **_) -> dict:
    if block_rows > 1 and weight_dtype == "bfloat16" and moe_grouped_mma.supported(dim, inter):
        return {"variant": "mma_bf16", "layout": "rows", "block_rows": moe_grouped_mma.TILE_ROWS}
    return {"layout": "rows" if block_rows == 1 or not constant else "panel"}


def schedule_gemm(func, target=None):
    """The tensor-core kernel for the ``mma_bf16`` variant; else the rows GEMV or the panel GEMM."""
    kernel, params = identity(func)
    name = str(func.attrs["global_symbol"])
    if params.get("variant") == "mma_bf16":
        if kernel == "moe_gate_up":
            return moe_grouped_mma.gate_up_func(params["tokens"], params["dim"], params["experts"], params["inter"],
                                                params["max_tiles"], params["limit"], name=name)
        return moe_grouped_mma.down_func(params["dim"], params["experts"], params["inter"], params["max_tiles"],
                                         name=name)
    return schedule_rule(_cuda_gemm_rows if params.get("layout", "rows") == "rows" else _cuda_gemm)(func)


def _cuda_single(sch):
    """A sequential kernel: its unit loop becomes one block of one thread."""
    block = sch.get_child_blocks(sch.get_sblock("root"))[0]
    (unit,) = sch.get_loops(block)
    b, t = sch.split(unit, factors=[1, 1])
    sch.bind(b, "blockIdx.x")
    sch.bind(t, "threadIdx.x")


def _cuda_gemm(sch):
    """A thread block per (column block, tile); its threads cover the tile's outputs."""
    tile_block = sch.get_sblock("tile")
    jb, tile = sch.get_loops(tile_block)
    sch.bind(sch.fuse(jb, tile), "blockIdx.x")
    gemm = sch.get_sblock("gemm")
    *spatial, k = sch.get_loops(gemm)
    rows, *cols = spatial
    if len(cols) == 2:  # gate_up: (gate|up, column): one thread computes both for its column
        half, col = cols
        sch.reorder(rows, col, k, half)
        sch.bind(sch.fuse(rows, col), "threadIdx.x")
        sch.unroll(half)
    else:
        sch.bind(sch.fuse(rows, *cols), "threadIdx.x")
    init = sch.decompose_reduction(gemm, k)
    if len(cols) == 2:
        sch.unroll(sch.get_loops(init)[-1])
    epilogue = next(b for b in sch.get_child_blocks(tile_block) if sch.get(b).name_hint in ("swiglu", "store"))
    sch.bind(sch.fuse(*sch.get_loops(epilogue)), "threadIdx.x")


K_UNROLL = 4  # independent loads in flight per lane of the rows GEMV


def _cuda_gemm_rows(sch):
    """Weight-streaming GEMV on K-contiguous rows (decode, and parameters): a thread block per
    (column block, tile), a warp per column of the block, computing that column for every row of
    the tile (and gate and up): the reduction is split over the warp's 32 lanes (consecutive
    lanes on consecutive k: coalesced row reads, K_UNROLL independent loads in flight per
    lane) and merged by warp shuffles, so the warp holds its column's results in registers and
    runs the epilogue (SwiGLU or store) on them without shared memory or block barriers."""
    tile_block = sch.get_sblock("tile")
    jb, tile = sch.get_loops(tile_block)
    sch.bind(sch.fuse(jb, tile), "blockIdx.x")
    gemm = sch.get_sblock("gemm")
    *spatial, k = sch.get_loops(gemm)
    *per_thread, col = spatial
    extent = int(sch.get(k).extent)
    if extent % (WARP * K_UNROLL) == 0:
        k_out, k_unroll, lane = sch.split(k, factors=[None, K_UNROLL, WARP])
        sch.reorder(col, *per_thread, lane, k_out, k_unroll)
        sch.unroll(k_unroll)
    else:
        k_out, lane = sch.split(k, factors=[None, WARP])
        sch.reorder(col, *per_thread, lane, k_out)
    sch.bind(col, "threadIdx.y")
    sch.bind(lane, "threadIdx.x")  # per_thread loops stay serial: TVM 0.27 loses the buffer of an unrolled allreduce
    epilogue = next(b for b in sch.get_child_blocks(tile_block) if sch.get(b).name_hint in ("swiglu", "store"))
    row, col = sch.get_loops(epilogue)
    sch.reorder(col, row)
    sch.bind(col, "threadIdx.y")


def _cuda_rows(sch):
    """The loops of the kernel's only block spread over threads (consecutive threads on
    consecutive innermost indices)."""
    block = sch.get_child_blocks(sch.get_sblock("root"))[0]
    loops = sch.get_loops(block)
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    b, t = sch.split(fused, factors=[None, THREADS])
    sch.bind(b, "blockIdx.x")
    sch.bind(t, "threadIdx.x")


def _cuda_router_scores(sch):
    """A thread per score: consecutive threads on consecutive experts (coalesced weight loads),
    the score function applied by the same thread to its register accumulator."""
    logits, scores = sch.get_sblock("logits"), sch.get_sblock("scores")
    t, e, k = sch.get_loops(logits)
    b, th = sch.split(sch.fuse(t, e), factors=[None, THREADS])
    sch.bind(b, "blockIdx.x")
    sch.bind(th, "threadIdx.x")
    sch.set_scope(logits, 0, "local")
    sch.reverse_compute_at(scores, th)
    sch.decompose_reduction(logits, k)


CHOICES = {"moe_gemm": choose_moe_gemm}
RULES = {"moe_permute": schedule_rule(_cuda_single), "moe_gate_up": schedule_gemm, "moe_down": schedule_gemm,
         "moe_combine": schedule_rule(_cuda_rows), "router_scores": schedule_rule(_cuda_router_scores),
         "router_select": schedule_rule(_cuda_rows), "router_hash": schedule_rule(_cuda_rows)}
