"""Schedules of the MoE kernels (``tide.ops.moe_*``, ``tide.ops.router*``) for the CPU and CUDA.

Every MoE PrimFunc names its kind in the ``tide.moe_kernel`` attribute; ``schedule`` picks the
target's rule for it and marks the result ``tirx.is_scheduled`` so the generic target rules leave
it alone.

CPU (LLVM, AVX-512): the grouped GEMMs run one task per (column block, tile) on the thread pool,
column-block major so that consecutive tasks of a thread reuse an expert's weight panel from
cache; inside a task the reduction loop is outermost and a ``rows x 64`` accumulator tile
(3 x 4 zmm for 3-row tiles) stays in registers: each step broadcasts one x value per row and
loads 64 weights once for all rows. Epilogues and element-wise kernels are vectorized 16 wide.

On K-contiguous "rows" weights (parameters) the tasks are a few columns wide and each dot product
is split into 16 vector lanes (rfactor), summed once at the end.

CUDA (sm_80 / sm_90): prefill on packed panels: one thread block per (column block, tile), a
thread per output element of the tile (gate and up accumulated by the same thread), weight loads
coalesced along the packed column axis. Decode (1-row tiles) and parameters read K-contiguous rows
with a weight-streaming GEMV: many blocks over the output columns, a warp per column, the K
reduction split over the warp's lanes and merged by shuffles. Blocks of unused tiles exit at once.
Prefill on bfloat16 weights runs ``tide.ops.moe_grouped_mma``'s tensor-core kernels (mma.sync
m16n8k16, fp32 accumulation; 16-row tiles). Sequential kernels (the permutation) run on one
thread; per-row kernels (router selection) one thread per token.

``layout`` and ``tensor_cores`` are the compile-time choices of the weight layout and the GEMM
kind for a target and regime (tokens per call are static: decode = batch, prefill = batch x chunk).
"""

from __future__ import annotations

from .ascend import cores as ascend_cores

VECTOR = 16  # fp32 lanes of a 512-bit register
CUDA_THREADS = 128


def schedule(func, target_kind: str, target=None):
    """``func`` scheduled for ``target_kind`` ("cpu" or "cuda"), marked as scheduled."""
    if target_kind == "cpu":
        return schedule_cpu(func, target)
    if target_kind == "cuda":
        return schedule_cuda(func, target)
    if target_kind == "ascend":
        return ascend_cores.kernel(func)
    raise ValueError(f"no MoE kernel schedules for target kind '{target_kind}'")


def _kind(func) -> str:
    kind = func.attrs.get("tide.moe_kernel") if func.attrs else None
    if kind is None:
        raise ValueError("not a tide MoE kernel (no tide.moe_kernel attribute)")
    return str(kind)


def _layout(sch) -> str:
    return str(sch.mod["main"].attrs.get("tide.weight_layout", "panel"))


def layout(target_kind: str, block_rows: int, constant: bool) -> str:
    """The expert weights' layout for a target and regime, chosen at compile time: weights that are
    parameters (memory-mapped, not folded) are read as the checkpoint stores them ("rows",
    K-contiguous); constants are packed into "panel"s on the CPU (a register tile streams one
    contiguous panel); on CUDA the decode GEMV reads K-contiguous rows (a warp along K)."""
    if not constant:
        return "rows"
    if target_kind == "cpu":
        return "panel"
    if target_kind == "cuda":
        return "rows" if block_rows == 1 else "panel"
    if target_kind == "ascend":
        return "rows"
    raise ValueError(f"no MoE weight layout for target kind '{target_kind}'")


def tensor_cores(target_kind: str, block_rows: int, weight_dtype: str, dim: int, inter: int) -> bool:
    """CUDA prefill on bfloat16 weights runs the grouped GEMMs on tensor cores
    (``tide.ops.moe_grouped_mma``); float32 weights keep the exact float32 SIMT schedule."""
    from ..ops import moe_grouped_mma

    return (target_kind == "cuda" and block_rows > 1 and weight_dtype == "bfloat16"
            and moe_grouped_mma.supported(dim, inter))


def _done(sch):
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


# ---------------------------------------------------------------------------------------------
# CPU


def schedule_cpu(func, target=None):
    from tvm import s_tir

    if _kind(func) == "mma":
        raise ValueError("tensor-core MoE kernels (tide.ops.moe_grouped_mma) are CUDA-only")

    sch = s_tir.Schedule(func)
    rule = {"permute": lambda s: None, "gate_up": _cpu_gate_up, "down": _cpu_down,
            "combine": _cpu_rows, "router_scores": _cpu_router_scores, "router_select": _cpu_per_row}[_kind(func)]
    rule(sch)
    return _done(sch)


def _cpu_gemm(sch, gemm, epilogue):
    """The shared part of the grouped GEMMs: parallel (column block, tile) tasks, k outermost
    inside a task, the register tile unrolled and its last axis vectorized."""
    tile_block = sch.get_sblock("tile")
    jb, tile = sch.get_loops(tile_block)
    sch.parallel(sch.fuse(jb, tile))
    sch.set_scope(gemm, 0, "global")  # CPU: a stack array (promoted to registers), not a workspace
    *spatial, k = sch.get_loops(gemm)
    sch.reorder(k, *spatial)
    c_out, c_vec = sch.split(spatial[-1], factors=[None, VECTOR])
    sch.vectorize(c_vec)
    for loop in (*spatial[:-1], c_out):
        sch.unroll(loop)
    init = sch.decompose_reduction(gemm, k)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.split(sch.get_loops(epilogue)[-1], factors=[None, VECTOR])[1])


def _cpu_gemm_rows(sch, gemm, epilogue):
    """Grouped GEMM on K-contiguous weight rows: parallel (column block, tile) tasks; inside, the
    reduction split into VECTOR lanes (rfactor) with the lane axis vectorized and innermost, so
    each step loads VECTOR consecutive weights of every column of the block once for all rows;
    the lanes are summed once at the end."""
    tile_block = sch.get_sblock("tile")
    jb, tile = sch.get_loops(tile_block)
    sch.parallel(sch.fuse(jb, tile))
    *spatial, k = sch.get_loops(gemm)
    lanes = _divisor(int(sch.get(k).extent), (VECTOR, 8, 4, 2, 1))
    k_out, k_lane = sch.split(k, factors=[None, lanes])
    lanes_block = sch.rfactor(k_lane, len(spatial))  # lane index last in the partial sums
    sch.set_scope(lanes_block, 0, "global")  # stack arrays (registers), not workspaces
    sch.set_scope(gemm, 0, "global")
    *spatial, k_out, k_lane = sch.get_loops(lanes_block)
    sch.reorder(k_out, *spatial, k_lane)
    for loop in spatial:
        sch.unroll(loop)
    sch.vectorize(k_lane)
    init = sch.decompose_reduction(lanes_block, k_out)
    sch.vectorize(sch.get_loops(init)[-1])
    for loop in sch.get_loops(gemm)[2:]:
        sch.unroll(loop)
    sch.unroll(sch.get_loops(epilogue)[-1])


def _cpu_gate_up(sch):
    rows = _layout(sch) == "rows"
    (_cpu_gemm_rows if rows else _cpu_gemm)(sch, sch.get_sblock("gemm"), sch.get_sblock("swiglu"))


def _cpu_down(sch):
    rows = _layout(sch) == "rows"
    (_cpu_gemm_rows if rows else _cpu_gemm)(sch, sch.get_sblock("gemm"), sch.get_sblock("store"))


def _cpu_rows(sch):
    """A spatial [rows, cols] block: rows x column chunks in parallel, chunks vectorized."""
    block = sch.get_child_blocks(sch.get_sblock("root"))[0]
    rows, cols = sch.get_loops(block)
    extent = int(sch.get(cols).extent)
    if extent % VECTOR:
        sch.parallel(rows)
        return
    chunk = next(c for c in (256, 128, 64, 32, 16) if extent % c == 0)
    c_out, c_in = sch.split(cols, factors=[None, chunk])
    sch.parallel(sch.fuse(rows, c_out))
    sch.vectorize(sch.split(c_in, factors=[None, VECTOR])[1])


def _divisor(n: int, options) -> int:
    return next((c for c in options if n % c == 0), n)


def _cpu_router_scores(sch):
    """The score GEMM in (rows x experts) register tiles, parallel over tiles; the score function
    runs on each tile right after its reduction."""
    logits, scores = sch.get_sblock("logits"), sch.get_sblock("scores")
    t, e, k = sch.get_loops(logits)
    rows = _divisor(int(sch.get(t).extent), (3, 2, 1))
    cols = _divisor(int(sch.get(e).extent), (64, 32, 16))
    t_out, t_in = sch.split(t, factors=[None, rows])
    e_out, e_in = sch.split(e, factors=[None, cols])
    sch.reorder(t_out, e_out, k, t_in, e_in)
    task = sch.fuse(t_out, e_out)
    sch.parallel(task)
    sch.reverse_compute_at(scores, task)
    sch.unroll(t_in)
    if cols % VECTOR == 0:
        e_unroll, e_vec = sch.split(e_in, factors=[None, VECTOR])
        sch.unroll(e_unroll)
        sch.vectorize(e_vec)
    init = sch.decompose_reduction(logits, k)
    if cols % VECTOR == 0:
        sch.vectorize(sch.get_loops(init)[-1])
        sch.vectorize(sch.split(sch.get_loops(scores)[-1], factors=[None, VECTOR])[1])


def _cpu_per_row(sch):
    """One opaque block per row: rows on the thread pool."""
    block = sch.get_child_blocks(sch.get_sblock("root"))[0]
    sch.parallel(sch.get_loops(block)[0])


# ---------------------------------------------------------------------------------------------
# CUDA


def schedule_cuda(func, target=None):
    from tvm import s_tir

    if _kind(func) == "mma":  # written with its thread mapping and warp fragments
        return func.with_attr("tirx.is_scheduled", True)
    sch = s_tir.Schedule(func)
    gemm = _cuda_gemm_rows if _layout(sch) == "rows" else _cuda_gemm
    rule = {"permute": _cuda_single, "gate_up": gemm, "down": gemm,
            "combine": _cuda_rows, "router_scores": _cuda_router_scores, "router_select": _cuda_rows}[_kind(func)]
    rule(sch)
    return _done(sch)


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


CUDA_WARP = 32
CUDA_K_UNROLL = 4


def _cuda_gemm_rows(sch):
    """Weight-streaming GEMV on K-contiguous rows (decode, and parameters): a thread block per
    (column block, tile), a warp per column of the block, computing that column for every row of
    the tile (and gate and up): the reduction is split over the warp's 32 lanes (consecutive
    lanes on consecutive k: coalesced row reads, CUDA_K_UNROLL independent loads in flight per
    lane) and merged by warp shuffles, so the warp holds its column's results in registers and
    runs the epilogue (SwiGLU or store) on them without shared memory or block barriers."""
    tile_block = sch.get_sblock("tile")
    jb, tile = sch.get_loops(tile_block)
    sch.bind(sch.fuse(jb, tile), "blockIdx.x")
    gemm = sch.get_sblock("gemm")
    *spatial, k = sch.get_loops(gemm)
    *per_thread, col = spatial
    extent = int(sch.get(k).extent)
    if extent % (CUDA_WARP * CUDA_K_UNROLL) == 0:
        k_out, k_unroll, lane = sch.split(k, factors=[None, CUDA_K_UNROLL, CUDA_WARP])
        sch.reorder(col, *per_thread, lane, k_out, k_unroll)
        sch.unroll(k_unroll)
    else:
        k_out, lane = sch.split(k, factors=[None, CUDA_WARP])
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
    b, t = sch.split(fused, factors=[None, CUDA_THREADS])
    sch.bind(b, "blockIdx.x")
    sch.bind(t, "threadIdx.x")


def _cuda_router_scores(sch):
    """A thread per score: consecutive threads on consecutive experts (coalesced weight loads),
    the score function applied by the same thread to its register accumulator."""
    logits, scores = sch.get_sblock("logits"), sch.get_sblock("scores")
    t, e, k = sch.get_loops(logits)
    b, th = sch.split(sch.fuse(t, e), factors=[None, CUDA_THREADS])
    sch.bind(b, "blockIdx.x")
    sch.bind(th, "threadIdx.x")
    sch.set_scope(logits, 0, "local")
    sch.reverse_compute_at(scores, th)
    sch.decompose_reduction(logits, k)
