"""tide's Ascend cube kernels (tiled GEMM, MoE grouped GEMMs): compile-checked with bishengir for
910B and 950 up to the external hivmc step, their numerics run on this CPU (cube ops rewritten to
linalg, bishengir's CPU-runner lowering, MALLOC_PERTURB_ set) against numpy float64, and the
analytic cost model checked by hand-computed counts and monotonicity."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from tide.targets.ascend import cost, emulation, mlir, toolchain
from tide.ops import moe_down, moe_gate_up, moe_permute
from tide.targets.ascend.kernels import matmul, moe_grouped

SOCS = ("Ascend910B1", "Ascend950PR_9599")


BIN = toolchain.BIN
needs_bishengir = pytest.mark.skipif(BIN is None, reason=str(toolchain.missing()))
needs_cpu_runner = pytest.mark.skipif(toolchain.missing_cpu_runner() is not None,
                                      reason=str(toolchain.missing_cpu_runner()))


def compile_check(text: str, soc: str, tmp: Path) -> Path:
    """toolchain.compile_check with its failure as an AssertionError (the tests' form)."""
    try:
        return toolchain.compile_check(text, soc, tmp)
    except toolchain.ToolchainError as err:
        raise AssertionError(str(err)) from None


def cpu_build(text: str, name: str, tmp: Path) -> Path:
    try:
        return toolchain.cpu_build(text, name, tmp)
    except toolchain.ToolchainError as err:
        raise AssertionError(str(err)) from None


def cpu_run(so: Path, name: str, blocks: int, *arrays):
    try:
        return toolchain.cpu_run(so, name, blocks, *arrays)
    except toolchain.ToolchainError as err:
        raise AssertionError(str(err)) from None


NP_DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}


def rand(rng, shape, dtype):
    """Seeded random values, rounded to the kernel's input dtype."""
    return rng.standard_normal(shape).astype(np.float32).astype(NP_DTYPES[dtype])


def f64(a):
    return np.asarray(a).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# tiled GEMM

GEMM_SHAPES = [(100, 200, 300), (1, 96, 4100), (37, 513, 130)]   # none divides the tiles


@needs_bishengir
@pytest.mark.parametrize("soc", SOCS)
def test_gemm_compiles(soc, tmp_path):
    for m, n, k in GEMM_SHAPES[:2]:
        opt = compile_check(matmul.emit(m, n, k, soc), soc, tmp_path / f"{m}x{n}x{k}")
        text = opt.read_text()
        assert "mma_tile" in text and "fixpipe" in text, "the cube path (mma / fixpipe library calls) is missing"


@needs_bishengir
@pytest.mark.parametrize("soc", SOCS)
def test_gemm_float32_and_kn_layout_compile(soc, tmp_path):
    """float32 inputs (the cube's float32 mode) and B stored [K, N] (mmadL1 without b_transpose)."""
    for i, b_kn in enumerate((False, True)):
        text = matmul.emit(37, 513, 130, soc, "float32", b_kn=b_kn)
        assert ("{b_transpose}" in text) != b_kn
        assert "mma_tile" in compile_check(text, soc, tmp_path / str(i)).read_text()


@needs_cpu_runner
@pytest.mark.parametrize("dtype,b_kn", [("bfloat16", False), ("float16", False), ("float32", False),
                                        ("float32", True), ("bfloat16", True)])
def test_gemm_cpu_numerics(dtype, b_kn, tmp_path):
    rng = np.random.default_rng(7)
    for i, (m, n, k) in enumerate(GEMM_SHAPES):
        soc = SOCS[i % 2]
        t = matmul.choose_tiling(soc, m, n, k, dtype)
        text = matmul.emit(m, n, k, soc, dtype, name="gemm", b_kn=b_kn)
        assert (m % t.tm, n % t.tn, k % t.tk) != (0, 0, 0)
        d = tmp_path / f"{i}"
        d.mkdir()
        so = cpu_build(emulation.cpu_module(text), "gemm", d)
        a, b = rand(rng, (m, k), dtype), rand(rng, (n, k), dtype)
        b_stored = np.ascontiguousarray(b.T) if b_kn else b
        c0 = np.full((m, n), np.nan, np.float32)
        _, _, c = cpu_run(so, "gemm", mlir.block_dim(text), a, b_stored, c0)
        ref = f64(a) @ f64(b).T
        tol = 1e-5 * np.sqrt(k) * (np.abs(f64(a)) @ np.abs(f64(b)).T) + 1e-6
        assert np.all(np.abs(c - ref) <= tol), f"{dtype} {m}x{n}x{k} tiling {t}: max err {np.nanmax(np.abs(c - ref))}"


# ---------------------------------------------------------------------------------------------
# MoE grouped GEMMs (gate/up + SwiGLU, down) over moe_permute's expert tiles


MOE = dict(tokens=5, top_k=2, experts=4, dim=100, inter=88)   # D and F do not divide the tiles
LIMIT = 7.0


MOE_DECODE = dict(tokens=1, top_k=3, experts=8, dim=72, inter=40)


def _routing(rng, tokens, top_k, experts):
    idx = np.stack([rng.choice(experts - 1, top_k, replace=False) for _ in range(tokens)])  # expert E-1 unused
    w = rng.uniform(0.2, 1.0, (tokens, top_k)).astype(np.float32)
    return moe_permute.reference(idx.astype(np.int64), w, experts, 16)


@needs_bishengir
@pytest.mark.parametrize("soc", SOCS)
def test_moe_grouped_compiles(soc, tmp_path):
    gu = moe_grouped.emit_gate_up(**MOE, limit=LIMIT, soc=soc)
    opt = compile_check(gu, soc, tmp_path / "gate_up")
    text = opt.read_text()
    assert "_mix_aic" in text and "_mix_aiv" in text, "gate/up should split into cube (AIC) and vector (AIV) parts"
    assert "vexp" in text and "mma_tile" in text
    opt = compile_check(moe_grouped.emit_down(**MOE, soc=soc), soc, tmp_path / "down")
    assert "mma_tile" in opt.read_text()


@needs_cpu_runner
@pytest.mark.parametrize("cfg", [MOE, MOE_DECODE], ids=["prefill", "decode"])
def test_moe_grouped_cpu_numerics(cfg, tmp_path):
    rng = np.random.default_rng(11)
    t, k, e, d, f = cfg["tokens"], cfg["top_k"], cfg["experts"], cfg["dim"], cfg["inter"]
    row_token, row_weight, tile_expert, num_tiles, _ = _routing(rng, t, k, e)
    used = int(num_tiles[0]) * 16
    x = (3 * rng.standard_normal((t, d))).astype(np.float32).astype(ml_dtypes.bfloat16)
    w_gu = (0.3 * rng.standard_normal((e, 2 * f, d))).astype(np.float32).astype(ml_dtypes.bfloat16)
    w_dn = (0.1 * rng.standard_normal((e, d, f))).astype(np.float32).astype(ml_dtypes.bfloat16)
    # a tiling with several K steps and a partial last column block (tn = 32 divides neither F)
    tiling = cost.GemmTiling(16, 32, 64, 3)
    gu = moe_grouped.emit_gate_up(**cfg, limit=LIMIT, soc=SOCS[0], tiling=tiling, name="gu")
    (tmp_path / "gu").mkdir()
    so = cpu_build(emulation.cpu_module(gu), "gu", tmp_path / "gu")
    h0 = np.full((row_token.shape[0], f), np.nan, np.float32).astype(ml_dtypes.bfloat16)
    out = cpu_run(so, "gu", tiling.blocks, x, w_gu, row_token.astype(np.int32), row_weight,
                  tile_expert.astype(np.int32), num_tiles.astype(np.int32), h0)
    h = out[-1]
    ref = moe_gate_up.reference(f64(x), row_token, f64(row_weight), tile_expert, num_tiles, f64(w_gu), LIMIT, 16)
    pre = np.concatenate([f64(x)[row_token[q * 16:(q + 1) * 16]] @ f64(w_gu)[tile_expert[q]].T
                          for q in range(int(num_tiles[0]))])
    assert (pre[:, :f] > LIMIT).any() and (np.abs(pre[:, f:]) > LIMIT).any(), "inputs should reach the clamps"
    err = np.abs(f64(h[:used]) - ref[:used])
    assert np.all(err <= 2 ** -8 * np.abs(ref[:used]) + 1e-4 * LIMIT), f"gate/up max err {err.max()}"

    dn = moe_grouped.emit_down(**cfg, soc=SOCS[1], tiling=cost.GemmTiling(16, 64, 32, 2), name="dn")
    (tmp_path / "dn").mkdir()
    so = cpu_build(emulation.cpu_module(dn), "dn", tmp_path / "dn")
    o0 = np.full((row_token.shape[0], d), np.nan, np.float32)
    o = cpu_run(so, "dn", 2, h, w_dn, tile_expert.astype(np.int32), num_tiles.astype(np.int32), o0)[-1]
    ref_o = moe_down.reference(f64(h), tile_expert, num_tiles, f64(w_dn), 16)
    tol = 1e-5 * np.sqrt(f) * (np.abs(f64(h)) @ np.abs(f64(w_dn)).max(0).T) + 1e-6
    assert np.all(np.abs(o[:used] - ref_o[:used]) <= tol[:used]), f"down max err {np.abs(o[:used] - ref_o[:used]).max()}"


# ---------------------------------------------------------------------------------------------
# inputs that crashed bishengir: each file names its workaround, which must compile on both SoCs

REGRESSIONS = sorted((Path(__file__).parent / "ascend_regressions").glob("cube_*.mlir"))


@needs_bishengir
@pytest.mark.parametrize("case", REGRESSIONS, ids=[p.stem for p in REGRESSIONS])
def test_cube_regression_workaround_compiles(case, tmp_path):
    text = case.read_text()
    fix = dict(re.findall(r"^// workaround-(from|to): (.*)$", text, re.M))
    assert set(fix) == {"from", "to"} and fix["from"] in text, f"{case.name}: no workaround-from/to header"
    fixed = text.replace(fix["from"] + ", ", fix["to"] + ", ", 1)
    assert fixed != text
    for soc in SOCS:
        compile_check(fixed, soc, tmp_path / soc)


# ---------------------------------------------------------------------------------------------
# cost model


@needs_bishengir
def test_soc_capacities_match_bishengir(tmp_path):
    """The model's core counts and buffer sizes are the ones bishengir itself plans memory with."""
    for soc in SOCS:
        s = cost.soc(soc)
        opt = compile_check(matmul.emit(32, 32, 32, soc), soc, tmp_path / soc).read_text()
        spec = {k: int(v) for k, v in re.findall(r'#dlti\.dl_entry<"(\w+)", (\d+) : i32>', opt)}
        assert (spec["CUBE_CORE_COUNT"], spec["VECTOR_CORE_COUNT"]) == (s.cube_cores, s.vector_cores)
        assert [spec[k] // 8 for k in ("UB_SIZE", "L1_SIZE", "L0A_SIZE", "L0B_SIZE", "L0C_SIZE")] == \
            [s.ub, s.l1, s.l0a, s.l0b, s.l0c]


def test_cost_hand_counts():
    """M=40, N=48, K=100 with 32 x 32 x 64 tiles on 2 blocks: 2 x 2 = 4 tasks, 2 per core, 2 K steps."""
    s = cost.soc("Ascend910B1")
    t = cost.GemmTiling(32, 32, 64, 2)
    e = cost.gemm("Ascend910B1", 40, 48, 100, t)
    assert (e.counts["tasks"], e.counts["cores"], e.counts["k_steps"]) == (4, 2, 2)
    per_task_load = 2 * (32 * 64 * 2 + 32 * 64 * 2)              # 2 K steps x (A + B tiles, bf16)
    assert e.counts["gm_bytes"] == 4 * per_task_load + 40 * 48 * 4
    assert e.counts["hbm_bytes"] == 40 * 100 * 2 + 48 * 100 * 2 + 40 * 48 * 4
    assert e.flops == 2 * 40 * 48 * 100
    # K padded to 112 (16-multiple), 2 tasks on the busiest core
    assert e.terms["cube"] == pytest.approx(2 * 2 * 32 * 32 * 112 / s.cube_flops_per_core_s)
    assert e.terms["mte2"] == pytest.approx(2 * per_task_load / (128 * 1.6e9))
    assert e.terms["hbm"] == pytest.approx(e.counts["hbm_bytes"] / 1.6e12)
    assert e.time_s == pytest.approx(s.launch_s + max(e.terms.values()))
    assert e.bound == max(e.terms, key=e.terms.get)


@pytest.mark.parametrize("soc", SOCS)
def test_cost_monotonic_and_tiling_fits(soc):
    s = cost.soc(soc)
    prev = 0.0
    for m in (1, 16, 64, 256, 1024, 4096):
        t = matmul.choose_tiling(soc, m, 4096, 4096)
        assert t.fits(s, 2) and t.l1_bytes(2) <= s.l1 and t.l0c_bytes() <= s.l0c and t.blocks <= s.cube_cores
        e = cost.gemm(soc, m, 4096, 4096, t)
        assert e.time_s >= prev
        prev = e.time_s
    prev = 0.0
    for n, k in ((1024, 1024), (4096, 1024), (4096, 4096), (8192, 4096)):
        t = matmul.choose_tiling(soc, 64, n, k)
        e = cost.gemm(soc, 64, n, k, t)
        assert e.time_s >= prev
        prev = e.time_s
    for kind in ("gate_up", "down"):
        prev = 0.0
        for tokens in (1, 8, 64, 512):
            t = moe_grouped.choose_tiling(soc, kind, tokens, 6, 256, 4096, 2048)
            assert t.fits(s, 2, 2 if kind == "gate_up" else 1) and t.tm == 16
            e = moe_grouped.estimate(soc, kind, tokens, 6, 256, 4096, 2048)
            assert e.time_s > prev
            prev = e.time_s


def test_cost_refuses_bad_input():
    with pytest.raises(ValueError, match="unknown SoC"):
        cost.soc("Ascend310P")
    with pytest.raises(ValueError, match="does not fit"):
        cost.gemm("Ascend910B1", 512, 512, 512, cost.GemmTiling(256, 256, 512, 24))
    with pytest.raises(ValueError, match="input dtype"):
        matmul.emit(16, 16, 16, "Ascend910B1", dtype="float64")


def _compile_errors(text: str, soc: str, tmp: Path) -> list:
    tmp.mkdir(parents=True)
    (tmp / "k.mlir").write_text(text)
    r = subprocess.run([str(BIN / cost.soc(soc).tool), str(tmp / "k.mlir"), "--enable-hivm-compile", f"--target={soc}",
                        f"--save-temps={tmp}", "-o", str(tmp / "kernel")], capture_output=True, text=True, timeout=300)
    return [ln for ln in (r.stdout + r.stderr).splitlines() if "overflow" in ln]


@needs_bishengir
@pytest.mark.parametrize("soc", SOCS)
def test_l0c_limit_agrees_with_bishengir(soc, tmp_path):
    """The model's L0C rule (fp32 tm x tn accumulator <= L0C) is bishengir's: the largest tile it
    allows compiles, the next one is refused by bishengir's own memory planning."""
    s = cost.soc(soc)
    tn = s.l0c // (4 * 128)
    ok, over = cost.GemmTiling(128, tn, 64, 4), cost.GemmTiling(128, 2 * tn, 64, 4)
    assert ok.fits(s, 2) and not over.fits(s, 2)
    assert _compile_errors(matmul.emit(300, 1000, 200, soc, tiling=ok), soc, tmp_path / "ok") == []
    text = matmul.emit(300, 1000, 200, soc, tiling=ok).replace(f"x{tn}xf32>", f"x{2 * tn}xf32>") \
        .replace(f"memref<{tn}x64xbf16>", f"memref<{2 * tn}x64xbf16>").replace(f"tensor<{tn}x64xbf16>", f"tensor<{2 * tn}x64xbf16>")
    errors = _compile_errors(text, soc, tmp_path / "over")
    assert errors and "cc overflow" in errors[0], errors


@needs_bishengir
@pytest.mark.parametrize("soc", SOCS)
def test_flash_tilings_compile(soc, tmp_path):
    """The tilings the model picks at V4-Flash decode (T=1) and prefill (T=512) shapes pass
    bishengir's memory planning: MoE gate/up + down (D=4096, F=2048, top-6 of 256) and wq_b."""
    for t in (1, 512):
        compile_check(moe_grouped.emit_gate_up(t, 6, 256, 4096, 2048, 10.0, soc), soc, tmp_path / f"gu{t}")
        compile_check(moe_grouped.emit_down(t, 6, 256, 4096, 2048, soc), soc, tmp_path / f"dn{t}")
        compile_check(matmul.emit(t, 32768, 1024, soc), soc, tmp_path / f"wqb{t}")


def test_flash_table_covers_kernels():
    rows = cost.v4_flash_table()
    assert {(r[0], r[1]) for r in rows} == {(s, t) for s in SOCS for t in (1, 512)}
    for soc, t, name, tiling, e in rows:
        assert e.time_s > cost.soc(soc).launch_s and e.bound in e.terms
        assert tiling.fits(cost.soc(soc), 2, 2 if name == "moe_gate_up" else 1)
