"""CPU choice and schedule of ``tide.ops.linear`` (a model weight's matmul on panel-packed weights).

Choice: panels two vector registers wide (16 float32 columns with AVX2, 32 with AVX-512, 8 with
128-bit vectors; one register wide when the columns are not a whole number of two) and a row tile of
up to 6 rows, so a register tile of ``tile_rows`` x 2 vector accumulators, two weight loads and one
broadcast per row fit the 16 architectural vector registers of AVX2 (the classic 6 x 16 float32
micro-kernel). The tile divides M where a divisor of 4 or more does; from ``TAIL_ROWS`` rows on,
and where no such divisor exists, the 6-row tile is used anyway, its last tile predicated to the rows
that exist (12 accumulators hide the FMA latency that 8 barely do: 256-row prefill GEMMs are ~15%
faster than with 4-row tiles). The FP8 linear, whose e4m3 decode needs registers of its own, keeps
dividing tiles.

Schedule: one task per (group, panel, row tile), panel-major, on the thread pool: a thread's tasks walk
consecutive panels, so decode streams the packed weight front to back and a prefill chunk's row
tiles reuse their panel from L2. Inside a task the reduction is outermost and the
``tile_rows x panel`` accumulator tile stays in registers (rows unrolled, the panel vectorized);
the tile is stored once at the end.
"""

from __future__ import annotations

from ...ops.kernel import identity
from ..helpers import schedule_of

# Register budget: tile_rows x (panel / lanes) accumulators; 12 leaves room for the weight loads
# and the broadcast in the 16 vector registers of AVX2 (32 with AVX-512: the same tile, half used).
MAX_TILE_ROWS = 6
# rows from which a 6-row tile with a predicated last tile beats the largest dividing tile
TAIL_ROWS = 48


def tile_rows_for(rows: int, tail: bool = True) -> int:
    """The register tile's rows for an M of ``rows``: all of them up to MAX_TILE_ROWS; beyond, the
    largest divisor of ``rows`` up to MAX_TILE_ROWS, or (with ``tail``) MAX_TILE_ROWS with a partial
    last tile when that divisor is under 4 or ``rows`` reaches TAIL_ROWS."""
    if rows <= MAX_TILE_ROWS:
        return rows
    divisor = next(r for r in range(MAX_TILE_ROWS, 0, -1) if rows % r == 0)
    if tail and divisor < MAX_TILE_ROWS and (divisor < 4 or rows >= TAIL_ROWS):
        return MAX_TILE_ROWS
    return divisor


def vector_lanes(features) -> int:
    """float32 lanes of the widest vector registers the CPU features enable."""
    if "avx512f" in features:
        return 16
    if "avx" in features or "avx2" in features:
        return 8
    return 4


def choose_linear(*, rows: int, cols: int, features=frozenset(), tail: bool = True, **_) -> dict:
    lanes = vector_lanes(features)
    panel = next((p for p in (2 * lanes, lanes) if cols % p == 0), None)
    if panel is None:
        return {}  # not whole vectors of columns: the generic schedule
    return {"layout": "panel", "panel": panel, "tile_rows": tile_rows_for(rows, tail)}


def schedule_linear(func, target=None):
    params = identity(func)[1]
    sch = schedule_of(func)
    block = sch.get_sblock("gemm")
    g, jb, i, p, k = sch.get_loops(block)
    i0, i1 = sch.split(i, factors=[None, int(params["tile_rows"])])
    sch.reorder(g, jb, i0, k, i1, p)
    task = sch.fuse(g, jb, i0)
    sch.parallel(task)
    acc = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(acc, task)
    sch.unroll(i1)
    sch.vectorize(p)
    init = sch.decompose_reduction(block, k)
    for tile in (init, acc):
        # under the task loop: the row loop (absent when a one-row tile was folded away) and the lanes
        *rows, lanes = sch.get_loops(tile)[1:]
        for row in rows:
            sch.unroll(row)
        sch.vectorize(lanes)
    return sch.mod["main"]


def choose_linear_fp8(*, rows: int, cols: int, block_n: int, features=frozenset(), **_) -> dict:
    """The float32 linear's panels and row tiles, with panels inside one scale block; F16C (the
    float16 -> float32 conversion that decodes e4m3 in registers) is required."""
    if "f16c" not in features:
        return {}
    cfg = choose_linear(rows=rows, cols=cols, features=features, tail=False)
    return cfg if cfg and block_n % cfg["panel"] == 0 else {}


CHOICES = {"linear": choose_linear, "linear_fp8": choose_linear_fp8}
# the FP8 linear has the float32 one's loop nest (its weight decode is inside the reduction)
RULES = {"linear": schedule_linear, "linear_fp8": schedule_linear}
