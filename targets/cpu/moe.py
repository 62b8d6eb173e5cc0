"""CPU schedules and choices of the MoE kernels (``tide.ops.moe_*``, ``tide.ops.router*``).

The grouped GEMMs run one task per (column block, tile) on the thread pool, column-block major so
that consecutive tasks of a thread reuse an expert's weight panel from cache; inside a task the
reduction loop is outermost and a ``rows x 2 vectors`` accumulator tile stays in registers: each
step broadcasts one x value per row and loads two vectors of weights once for all rows. Epilogues
and element-wise kernels are vectorized 16 wide.

On K-contiguous "rows" weights (parameters) the tasks are a few columns wide and each dot product
is split into 16 vector lanes (rfactor), summed once at the end.

Choice: FP4 expert weights (parameters) are read as the checkpoint packs them ("rows", decoded in
registers with F16C). Constant expert weights are packed into "panel"s at compile time (a register tile streams
one contiguous panel); weights that are parameters (memory-mapped, not folded) are read as the
checkpoint stores them ("rows"). Panels are sized to the vector registers so that the register
tile fits them (the same sizes for every entry, so decode and prefill share one packed copy):
gate/up blocks of one vector of columns (gate and up: two vectors per row), down blocks of two
vectors; prefill tiles of ``MAX_TILE_ROWS`` rows, so 12 accumulators of the 16 AVX2 registers.
"""

from __future__ import annotations

from ..helpers import schedule_rule, weight_layout
from .generic import VECTOR
from .linear import MAX_TILE_ROWS, vector_lanes


def choose_moe_gemm(*, constant: bool, block_rows: int = 1, features=frozenset(), weight_dtype: str = "float32",
                    **_) -> dict:
    if weight_dtype == "fp4":   # packed FP4 read as stored (rows), decoded with F16C's conversions
        # 2 gate/up columns (4 dot products) and 4 down columns per task: 8 accumulators of two
        # vectors each would spill, the decode temporaries need the rest of the 16 registers
        return {"layout": "rows", "fp4": True, "gate_up_block": 2, "down_block": 4} if "f16c" in features else {}
    if not constant:
        return {"layout": "rows"}
    lanes = vector_lanes(features)
    return {"layout": "panel", "gate_up_block": lanes, "down_block": 2 * lanes,
            "block_rows": 1 if block_rows == 1 else MAX_TILE_ROWS}


def _cpu_gemm(sch, gemm, epilogue):
    """The shared part of the grouped GEMMs: parallel (column block, tile) tasks, k outermost
    inside a task, the register tile unrolled and its last axis vectorized."""
    tile_block = sch.get_sblock("tile")
    jb, tile = sch.get_loops(tile_block)
    sch.parallel(sch.fuse(jb, tile))
    sch.set_scope(gemm, 0, "global")  # CPU: a stack array (promoted to registers), not a workspace
    *spatial, k = sch.get_loops(gemm)
    sch.reorder(k, *spatial)
    c_out, c_vec = sch.split(spatial[-1], factors=[None, min(VECTOR, int(sch.get(spatial[-1]).extent))])
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
    for loop in sch.get_loops(gemm)[1:]:  # every loop under the task: the partial sums stay in registers
        sch.unroll(loop)
    sch.unroll(sch.get_loops(epilogue)[-1])


def _cpu_gate_up(sch):
    rows = weight_layout(sch) == "rows"
    (_cpu_gemm_rows if rows else _cpu_gemm)(sch, sch.get_sblock("gemm"), sch.get_sblock("swiglu"))


def _cpu_down(sch):
    rows = weight_layout(sch) == "rows"
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


CHOICES = {"moe_gemm": choose_moe_gemm}
RULES = {"moe_permute": lambda func, target=None: func,  # one sequential block, as written
         "moe_gate_up": schedule_rule(_cpu_gate_up), "moe_down": schedule_rule(_cpu_down),
         "moe_combine": schedule_rule(_cpu_rows), "router_scores": schedule_rule(_cpu_router_scores),
         "router_select": schedule_rule(_cpu_per_row), "router_hash": schedule_rule(_cpu_per_row)}
