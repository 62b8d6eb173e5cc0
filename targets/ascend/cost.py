"""Analytic cost model for tide's Ascend kernels (910B and 950), no device needed.

Every kernel is described by the work its chosen tiling implies:

- cube: multiply-accumulates of the padded tiles (the cube works on 16 x 16 fractals, so M, N and the
  K step are rounded up to 16), spread over the AI cores the launch uses; the critical path is the
  core with the most tiles;
- GM -> L1 (MTE2): every A and B tile a core loads, once per K step, at the core's load rate and,
  all cores together, at the L2 bandwidth; HBM sees each operand once (unique bytes: the tasks that
  share an A row block or a B column block run at about the same time on different cores, so the
  re-reads are assumed to hit L2);
- L1 -> L0A/L0B (MTE1): every L1 tile once per K step (bishengir's mmadL1 library call streams L1
  into L0 in K chunks; an (m, n) tile that fits L0C is never re-streamed);
- L0C -> GM (FIXPIPE): the accumulator tile once per output tile;
- vector: element operations of the epilogues on the AIV cores, and their GM <-> UB bytes.

Each level's time is its bytes (or operations) over its throughput: per core for the per-core units
(cube, MTE1, MTE2 issue rate, fixpipe, vector), for the whole chip for HBM. The kernel's time is
``launch + max(levels)``; the level that gives the max is reported as the bounding unit.

Hardware figures (``SOCS``). Capacities and core counts are not assumptions: they are what
bishengir-compile 1.2.0 itself writes into ``dlti.target_system_spec`` for each target (sizes there
are in bits; see ``tests/test_ascend_cube.py::test_soc_capacities_match_bishengir``). Throughputs are
public vendor figures or stated assumptions, not measurements; each field's note says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KIB = 1024


@dataclass(frozen=True)
class Soc:
    name: str
    tool: str                       # bishengir-compile executable for this target
    cube_cores: int                 # AIC count (bishengir CUBE_CORE_COUNT)
    vector_cores: int               # AIV count (bishengir VECTOR_CORE_COUNT)
    ub: int                         # bytes per AIV (UB_SIZE / 8)
    l1: int                         # bytes per AIC (L1_SIZE / 8)
    l0a: int
    l0b: int
    l0c: int
    clock_hz: float                 # assumed AI core clock, used for the per-cycle figures below
    cube_tflops: float              # dense bf16/fp16 peak of the whole chip
    hbm_bytes_per_s: float          # chip HBM bandwidth
    l2_bytes_per_s: float           # chip L2 bandwidth (re-read operand tiles)
    mte2_bytes_per_cycle: int       # one core's GM -> L1/UB load issue rate
    mte1_bytes_per_cycle: int       # one core's L1 -> L0A + L0B rate
    fixpipe_bytes_per_cycle: int    # one core's L0C -> GM rate
    vector_bytes_per_cycle: int     # one AIV's vector datapath width
    launch_s: float                 # kernel launch + block start overhead
    notes: dict = field(default_factory=dict, compare=False)

    @property
    def cube_flops_per_core_s(self) -> float:
        return self.cube_tflops * 1e12 / self.cube_cores


_COMMON_NOTES = {
    "capacities": "bishengir-compile 1.2.0 target spec (dlti.target_system_spec, in bits) for this target",
    "cube": "Da Vinci cube: one 16x16x16 fp16 fractal multiply-accumulate (4096 MACs) per cycle per "
            "core (Huawei, Hot Chips 31, 2019)",
    "vector_bytes_per_cycle": "Da Vinci vector unit 2048 bits (256 B) per cycle (Hot Chips 31, 2019); "
                              "assumed unchanged per AIV",
    "mte2_bytes_per_cycle": "assumption: 128 B/cycle per core, so that all cores together exceed HBM "
                            "(HBM binds when every core streams; one core alone binds in small launches)",
    "mte1_bytes_per_cycle": "assumption: 1 KiB/cycle per core (one bf16 16x16 A fractal + one B fractal "
                            "per cube cycle, the rate the cube needs without L0 reuse)",
    "fixpipe_bytes_per_cycle": "assumption: 128 B/cycle per core (L0C -> GM with nz2nd)",
    "l2_bytes_per_s": "assumption: 2.5x the HBM bandwidth (no public figure found)",
    "l1": "the model keeps room for two copies of the A and B tiles (multi-buffering); bishengir 1.2.0 "
          "without --enable-auto-multi-buffer holds one and accepts up to the full L1",
    "launch_s": "assumption: 5 us per kernel launch through AscendCL (order of the published ACL "
                "launch overheads), not measured",
}

SOCS = {
    "Ascend910B1": Soc(
        name="Ascend910B1", tool="bishengir-compile", cube_cores=24, vector_cores=48,
        ub=192 * KIB, l1=512 * KIB, l0a=64 * KIB, l0b=64 * KIB, l0c=128 * KIB,
        clock_hz=1.6e9, cube_tflops=24 * 8192 * 1.6e9 / 1e12, hbm_bytes_per_s=1.6e12, l2_bytes_per_s=4.0e12,
        mte2_bytes_per_cycle=128, mte1_bytes_per_cycle=1024, fixpipe_bytes_per_cycle=128,
        vector_bytes_per_cycle=256, launch_s=5e-6,
        notes={**_COMMON_NOTES,
               "clock_hz": "assumption: 1.6 GHz, which makes 24 cubes x 8192 FLOP/cycle = 315 TFLOPS, "
                           "inside the 280-320 dense fp16/bf16 TFLOPS usually quoted for 910B",
               "hbm_bytes_per_s": "assumption: 1.6 TB/s, the figure usually quoted for 910B's 64 GB HBM2e"}),
    "Ascend950PR_9599": Soc(
        name="Ascend950PR_9599", tool="bishengir-compile-a5", cube_cores=36, vector_cores=72,
        ub=248 * KIB, l1=512 * KIB, l0a=64 * KIB, l0b=64 * KIB, l0c=256 * KIB,
        clock_hz=1.6e9, cube_tflops=500.0, hbm_bytes_per_s=1.6e12, l2_bytes_per_s=4.0e12,
        mte2_bytes_per_cycle=128, mte1_bytes_per_cycle=1024, fixpipe_bytes_per_cycle=128,
        vector_bytes_per_cycle=256, launch_s=5e-6,
        notes={**_COMMON_NOTES,
               "cube_tflops": "assumption: 500 TFLOPS bf16, half of the 1 PFLOPS FP8 Huawei announced for "
                              "the 950 series (Huawei Connect 2025); no bf16 figure was published",
               "clock_hz": "assumption: 1.6 GHz (only scales the per-cycle figures)",
               "hbm_bytes_per_s": "assumption: 1.6 TB/s, the announced HiBL 1.0 figure for 950PR "
                                  "(950DT's HiZQ 2.0 is announced at 4 TB/s)"}),
}


def soc(name: str) -> Soc:
    if name not in SOCS:
        raise ValueError(f"ascend cost model: unknown SoC '{name}' (known: {', '.join(SOCS)})")
    return SOCS[name]


# Kernels that are not cube GEMMs: an element-wise / reduction kernel of known FLOPs and bytes on
# ``blocks`` AIV cores, on the vector unit (tide's hand-written HIVM vector kernels) or on the
# scalar unit (kernels translated from TIR, ``codegen._Translator``).
VECTOR_F32_LANES = 64  # 256 B per cycle of float32 (vector_bytes_per_cycle / 4)
SCALAR_INSTRUCTIONS_PER_FLOP = 4  # assumption: a translated loop issues a load, index arithmetic and a
#                                   branch around each arithmetic op, one instruction per cycle, with
#                                   GM reads hidden by the scalar data cache (no public figures)


def streaming(soc_name: str, kernel: str, flops: float, bytes_: float, blocks: int, unit: str) -> Estimate:
    """``kernel`` doing ``flops`` and moving ``bytes_`` between GM and the cores, on ``blocks``
    cores' ``unit`` ("vector": 64 float32 lanes per cycle; "scalar": one instruction per cycle,
    SCALAR_INSTRUCTIONS_PER_FLOP per FLOP). Levels: the unit, MTE2 issue of the cores used, HBM."""
    s = soc(soc_name)
    if unit not in ("vector", "scalar"):
        raise ValueError(f"ascend cost model: unit must be vector or scalar, got '{unit}'")
    blocks = max(1, min(blocks, s.vector_cores))
    per_cycle = VECTOR_F32_LANES if unit == "vector" else 1.0 / SCALAR_INSTRUCTIONS_PER_FLOP
    terms = {unit: flops / (per_cycle * s.clock_hz * blocks),
             "mte2": bytes_ / (s.mte2_bytes_per_cycle * s.clock_hz * blocks),
             "hbm": bytes_ / s.hbm_bytes_per_s}
    return _finish(kernel, s, terms, flops, {"hbm_bytes": bytes_, "blocks": blocks})


def ceil_to(x: int, m: int) -> int:
    return -(-x // m) * m


@dataclass(frozen=True)
class GemmTiling:
    """One output tile of tm x tn per task, K in steps of tk; tasks spread round-robin over
    ``blocks`` AI cores (``get_block_idx``)."""
    tm: int
    tn: int
    tk: int
    blocks: int

    def l1_bytes(self, itemsize: int, accumulators: int = 1) -> int:
        """A and B tiles (one B tile per accumulator), twice: room to double-buffer the loads of
        the K loop (bishengir 1.2.0 holds one copy unless --enable-auto-multi-buffer)."""
        return 2 * (self.tm + accumulators * self.tn) * self.tk * itemsize

    def l0c_bytes(self) -> int:
        return self.tm * self.tn * 4

    def fits(self, s: Soc, itemsize: int, accumulators: int = 1) -> bool:
        """L1 holds the double-buffered operand tiles, L0C the fp32 accumulator(s), and L0A/L0B
        at least one 16-deep K chunk of the A and B tiles, double-buffered."""
        return self.l1_bytes(itemsize, accumulators) <= s.l1 \
            and accumulators * self.l0c_bytes() <= s.l0c \
            and 2 * self.tm * 16 * itemsize <= s.l0a and 2 * self.tn * 16 * itemsize <= s.l0b \
            and min(self.tm, self.tn, self.tk) >= 16 and self.tm % 16 == 0 and self.tn % 16 == 0 \
            and self.tk % 16 == 0 and self.blocks >= 1


@dataclass
class Estimate:
    kernel: str
    soc: str
    time_s: float
    bound: str
    terms: dict          # seconds per level
    flops: float         # useful FLOPs (unpadded)
    counts: dict         # bytes / ops per level the terms come from

    def __str__(self) -> str:
        return f"{self.kernel} on {self.soc}: {self.time_s * 1e6:.1f} us ({self.bound}-bound)"


def _finish(kernel: str, s: Soc, terms: dict, flops: float, counts: dict) -> Estimate:
    bound = max(terms, key=terms.get)
    return Estimate(kernel, s.name, s.launch_s + terms[bound], bound, terms, flops, counts)


def grouped_gemm(soc_name: str, group_rows: list, n: int, k: int, tiling: GemmTiling, itemsize: int = 2,
                 out_itemsize: int = 4, gathered_rows: bool = False, kernel: str = "grouped_gemm",
                 epilogue_ops_per_out: float = 0.0, accumulators: int = 1) -> Estimate:
    """C_g[rows_g, n] = A_g[rows_g, k] @ B_g[n, k]^T for every group g (one expert each: its own B),
    each group's rows cut into tm-row tiles. ``gathered_rows``: A rows are gathered one DMA per row
    (token permutation) instead of one strided DMA per tile. ``accumulators``: output tiles computed
    together per task (2 for gate + up). ``epilogue_ops_per_out``: vector operations per output
    element on the AIVs (its operands and results travel GM <-> UB in fp32)."""
    s = soc(soc_name)
    if not tiling.fits(s, itemsize, accumulators):
        raise ValueError(f"ascend cost model: tiling {tiling} does not fit {s.name}'s buffers")
    tm, tn, tk = tiling.tm, tiling.tn, tiling.tk
    m_tiles = sum(-(-r // tm) for r in group_rows if r > 0)
    n_tiles = -(-n // (tn * accumulators))
    tasks = m_tiles * n_tiles
    if tasks == 0:
        raise ValueError("ascend cost model: no rows to compute")
    cores = min(tiling.blocks, s.cube_cores, tasks)
    per_core = -(-tasks // cores)
    k_steps = -(-k // tk)
    kp = ceil_to(k, 16)
    # per task: accumulators x (tm x tn) tiles over the padded K
    task_flops = 2.0 * tm * tn * kp * accumulators
    tile_a = tm * tk * itemsize
    tile_b = tn * tk * itemsize * accumulators
    mte2_task = k_steps * (tile_a + tile_b)
    mte1_task = mte2_task
    fix_task = tm * tn * accumulators * 4
    cyc = s.clock_hz
    rows = sum(group_rows)
    useful = 2.0 * rows * n * k
    out_bytes = rows * (n // accumulators) * out_itemsize
    gm_bytes = tasks * mte2_task + out_bytes
    hbm_bytes = rows * k * itemsize + sum(1 for r in group_rows if r > 0) * n * k * itemsize + out_bytes
    terms = {
        "cube": per_core * task_flops / s.cube_flops_per_core_s,
        "mte2": per_core * mte2_task / (s.mte2_bytes_per_cycle * cyc),
        "mte1": per_core * mte1_task / (s.mte1_bytes_per_cycle * cyc),
        "fixpipe": per_core * fix_task / (s.fixpipe_bytes_per_cycle * cyc),
        "l2": gm_bytes / s.l2_bytes_per_s,
        "hbm": hbm_bytes / s.hbm_bytes_per_s,
    }
    if gathered_rows:
        # one DMA descriptor per gathered row and K step: a fixed cost per descriptor (assumed 64 cycles)
        terms["mte2"] += per_core * k_steps * tm * 64 / cyc
    counts = {"tasks": tasks, "cores": cores, "k_steps": k_steps, "gm_bytes": gm_bytes, "hbm_bytes": hbm_bytes,
              "l1_l0_bytes": tasks * mte1_task, "l0c_gm_bytes": tasks * fix_task}
    if epilogue_ops_per_out:
        outs = m_tiles * tm * (n // accumulators)
        vcores = min(s.vector_cores, 2 * cores)
        terms["vector"] = outs * epilogue_ops_per_out * 4 / (vcores * s.vector_bytes_per_cycle * cyc)
        # cube -> AIV hand-off: the accumulators go through a GM workspace (written, then read to UB)
        ub_bytes = 2 * outs * accumulators * 4 if s.name.startswith("Ascend910") else 0
        terms["hbm"] += ub_bytes / s.hbm_bytes_per_s
        counts["vector_ops"] = outs * epilogue_ops_per_out
        counts["gm_ub_bytes"] = ub_bytes
    return _finish(kernel, s, terms, useful, counts)


def gemm(soc_name: str, m: int, n: int, k: int, tiling: GemmTiling, itemsize: int = 2,
         out_itemsize: int = 4, kernel: str = "gemm") -> Estimate:
    """C[m, n] = A[m, k] @ B[n, k]^T with the given tiling."""
    return grouped_gemm(soc_name, [m], n, k, tiling, itemsize, out_itemsize, kernel=kernel)


def balanced_routing(tokens: int, top_k: int, experts: int) -> list:
    """Rows per active expert when the T*k assignments spread evenly: the expected number of
    distinct experts under uniform routing, ``E (1 - (1 - k/E)^T)``, rounded, sharing the rows."""
    assignments = tokens * top_k
    active = max(1, min(assignments, round(experts * (1 - (1 - top_k / experts) ** tokens))))
    base, extra = divmod(assignments, active)
    return [base + 1] * extra + [base] * (active - extra)


def candidate_tilings(s: Soc, m: int, n: int, k: int, itemsize: int, accumulators: int = 1):
    """Every tiling of the search space that fits the SoC's buffers (tile sides powers of two from
    16, capped at the padded problem size)."""
    sides = [16, 32, 64, 128, 256, 512]
    mcap, ncap, kcap = ceil_to(m, 16), ceil_to(n, 16), ceil_to(k, 16)
    out = []
    for tm in sides:
        if tm > max(16, mcap) and tm != sides[0]:
            continue
        for tn in sides:
            if tn > max(16, ncap):
                continue
            for tk in [32, 64, 128, 256, 512]:
                if tk > max(32, kcap):
                    continue
                t = GemmTiling(tm, tn, tk, s.cube_cores)
                if t.fits(s, itemsize, accumulators):
                    out.append(t)
    return out


def choose_tiling(soc_name: str, group_rows: list, n: int, k: int, itemsize: int = 2,
                  accumulators: int = 1, gathered_rows: bool = False, tm: int = 0) -> GemmTiling:
    """The tiling of least estimated time (ties: fewer tasks, then larger K step). ``tm`` fixes the
    row tile (grouped GEMMs whose row tiles come from the permutation)."""
    s = soc(soc_name)
    best = None
    for t in candidate_tilings(s, max(group_rows), n, k, itemsize, accumulators):
        if tm and t.tm != tm:
            continue
        e = grouped_gemm(soc_name, group_rows, n, k, t, itemsize, gathered_rows=gathered_rows,
                         accumulators=accumulators)
        key = (round(e.time_s * 1e9), e.counts["tasks"], -t.tk)
        if best is None or key < best[0]:
            best = (key, t)
    if best is None:
        raise ValueError(f"ascend cost model: no tiling fits {s.name} for n={n} k={k} tm={tm}")
    tasks = best[0][1]
    return GemmTiling(best[1].tm, best[1].tn, best[1].tk, min(s.cube_cores, tasks))


# V4-Flash GEMMs (docs/deepseek-v4.md): hidden 4096, 64 heads x 512, q_lora 1024,
# 8 output groups x 1024, experts 256 (top-6), expert FFN 4096 -> 2048
V4_FLASH_PROJECTIONS = {       # name: (N, K) of y[T, N] = x[T, K] @ W[N, K]^T
    "wq_a": (1024, 4096), "wq_b": (64 * 512, 1024), "wkv": (512, 4096),
    "wo_b": (4096, 8 * 1024),
}
V4_FLASH_WO_A = (8, 1024, 64 * 512 // 8)   # grouped: 8 groups, each [T, 4096] @ [1024, 4096]^T


def v4_flash_table(socs=tuple(SOCS), token_counts=(1, 512)) -> list:
    """(soc, tokens, kernel, tiling, Estimate) for the attention projections and the MoE grouped
    GEMMs of one V4-Flash layer (bf16 weights, balanced top-6 routing)."""
    from tide.targets.ascend.kernels import matmul, moe_grouped

    rows = []
    for s in socs:
        for t in token_counts:
            for name, (n, k) in V4_FLASH_PROJECTIONS.items():
                tiling = matmul.choose_tiling(s, t, n, k)
                rows.append((s, t, name, tiling, matmul.estimate(s, t, n, k, tiling=tiling, kernel=name)))
            g, n, k = V4_FLASH_WO_A
            tiling = choose_tiling(s, [t] * g, n, k)
            rows.append((s, t, "wo_a (8 groups)", tiling,
                         grouped_gemm(s, [t] * g, n, k, tiling, kernel="wo_a")))
            for kind in ("gate_up", "down"):
                tiling = moe_grouped.choose_tiling(s, kind, t, 6, 256, 4096, 2048)
                rows.append((s, t, f"moe_{kind}", tiling, moe_grouped.estimate(s, kind, t, 6, 256, 4096, 2048)))
    return rows


if __name__ == "__main__":
    print(f"{'soc':17} {'T':>4} {'kernel':22} {'tiling (tm,tn,tk,blocks)':26} {'time us':>9} {'bound':8} "
          f"{'TFLOP/s':>8} {'HBM MB':>8}")
    for s, t, name, tl, e in v4_flash_table():
        print(f"{s:17} {t:4d} {name:22} {str((tl.tm, tl.tn, tl.tk, tl.blocks)):26} {e.time_s * 1e6:9.1f} "
              f"{e.bound:8} {e.flops / e.time_s / 1e12:8.1f} {e.counts['hbm_bytes'] / 1e6:8.1f}")
