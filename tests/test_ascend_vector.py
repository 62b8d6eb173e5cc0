"""tide's Ascend vector kernels (targets/ascend/kernels/rmsnorm.py): compile-checked with bishengir for
910B and 950 up to the external hivmc step, run on this CPU through bishengir's CPU-runner lowering
(MALLOC_PERTURB_ set) against numpy float64, a tiling that overflows the unified buffer refused by
bishengir, and the regression input kept with its workaround. Tooling: tests/test_ascend_cube.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from test_ascend_cube import BIN, SOCS, compile_check, cpu_build, cpu_run, needs_bishengir, needs_cpu_runner
from tide.targets.ascend import cost, emulation, mlir
from tide.targets.ascend.kernels import rmsnorm, router_scores

REGRESSIONS = Path(__file__).parent / "ascend_regressions"
SHAPES = [(16, 128), (37, 512), (6, 4096)]  # 37: a prime row count (one-row tiles); 4096: V4's hidden size


@needs_bishengir
@pytest.mark.parametrize("soc", SOCS)
@pytest.mark.parametrize("rows, dim", SHAPES)
def test_rmsnorm_compiles(soc, rows, dim, tmp_path):
    text = rmsnorm.emit(rows, dim, soc, 1e-6)
    opt = compile_check(text, soc, tmp_path)
    assert "hivm" in opt.read_text()


@needs_cpu_runner
@pytest.mark.parametrize("rows, dim", SHAPES)
def test_rmsnorm_cpu_numerics(rows, dim, tmp_path):
    rng = np.random.default_rng(rows * dim)
    x = (rng.standard_normal((rows, dim)) * 3 + 0.5).astype(np.float32)
    w = rng.standard_normal((1, dim)).astype(np.float32)
    y = np.full((rows, dim), np.nan, dtype=np.float32)
    text = rmsnorm.emit(rows, dim, "Ascend910B1", 1e-6)
    so = cpu_build(emulation.cpu_module(text), "tide_rmsnorm", tmp_path)
    blocks = mlir.block_dim(text)
    _, _, got = cpu_run(so, "tide_rmsnorm", blocks, x, w, y)
    want = rmsnorm.reference(x, w, 1e-6)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@needs_cpu_runner
def test_rmsnorm_cpu_check_catches_a_planted_bug(tmp_path):
    """The same check on a kernel whose 1/dim is off by 0.2% fails by far more than its tolerance."""
    rows, dim = 37, 512
    rng = np.random.default_rng(1)
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    w = rng.standard_normal((1, dim)).astype(np.float32)
    text = rmsnorm.emit(rows, dim, "Ascend910B1", 1e-6)
    assert f"arith.constant {1 / dim:e} : f32" in text
    bad = text.replace(f"arith.constant {1 / dim:e} : f32", f"arith.constant {0.998 / dim:e} : f32")
    so = cpu_build(emulation.cpu_module(bad), "tide_rmsnorm", tmp_path)
    got = cpu_run(so, "tide_rmsnorm", mlir.block_dim(bad), x, w, np.zeros((rows, dim), np.float32))[2]
    assert np.abs(got - rmsnorm.reference(x, w, 1e-6)).max() > 100 * 2e-5


def test_tiling_fits():
    """Tiles divide the rows and fit the UB with the weight row, double-buffered; a row too long
    for one row tile (V4-Pro's 7168, which the column-split form serves) is refused by the row tiling."""
    for soc in SOCS:
        s = cost.soc(soc)
        for rows, dim in SHAPES + [(512, 4096), (4096, 1024)]:
            tr = rmsnorm.choose_tile_rows(soc, rows, dim)
            assert rows % tr == 0
            assert (rmsnorm.LIVE_TILES * tr + 1) * dim * 4 * rmsnorm.BUFFERING <= s.ub
        assert rmsnorm.choose_tile_rows(soc, 512, 128) > 1
        with pytest.raises(ValueError, match="a row of 7168 float32 does not fit"):
            rmsnorm.choose_tile_rows(soc, 4096, 7168)
    assert rmsnorm.cost_counts(4, 8) == {"flops": 128, "bytes": 4 * (64 + 8)}


@needs_bishengir
def test_ub_overflow_is_refused(tmp_path):
    """A tile of 256 rows of 4096 float32 (4 MiB live) is far past the UB: bishengir says so."""
    text = rmsnorm.emit(256, 4096, "Ascend910B1", 1e-6, tile_rows=256)
    with pytest.raises(AssertionError, match="(?i)ub overflow|exceed|overflow"):
        compile_check(text, "Ascend910B1", tmp_path)


@needs_bishengir
def test_rsqrt_regression_workaround(tmp_path):
    """vrsqrt of a [rows, 1] tensor breaks the 950 tool's final pipeline (kept input); the kernel's
    sqrt-then-divide form compiles."""
    bad = (REGRESSIONS / "vector_rsqrt_broadcast_a5.mlir").read_text()
    with pytest.raises(AssertionError, match="operands' shape are inconsistent"):
        compile_check(bad, "Ascend950PR_9599", tmp_path / "bad")
    compile_check(rmsnorm.emit(16, 128, "Ascend950PR_9599", 1e-6), "Ascend950PR_9599", tmp_path / "good")
    assert BIN is not None


# ---- router scores ---------------------------------------------------------------------------------

SCORE_SHAPES = [(1, 256), (64, 256), (37, 384)]  # decode and prefill at V4-Flash's 256 experts, Pro's 384


@needs_bishengir
@pytest.mark.parametrize("soc", SOCS)
@pytest.mark.parametrize("rows, experts", SCORE_SHAPES)
def test_router_scores_compile(soc, rows, experts, tmp_path):
    compile_check(router_scores.emit(rows, experts, soc), soc, tmp_path)


@needs_cpu_runner
@pytest.mark.parametrize("rows, experts", SCORE_SHAPES)
def test_router_scores_cpu_numerics(rows, experts, tmp_path):
    rng = np.random.default_rng(rows + experts)
    v = (rng.standard_normal((rows, experts)) * 8).astype(np.float32)
    v.flat[:3] = [-100.0, 95.0, 0.0]  # exp overflow / underflow and the kink
    text = router_scores.emit(rows, experts, "Ascend910B1")
    so = cpu_build(emulation.cpu_module(text), "tide_router_scores", tmp_path)
    got = cpu_run(so, "tide_router_scores", mlir.block_dim(text), v, np.full_like(v, np.nan))[1]
    np.testing.assert_allclose(got, router_scores.reference(v), rtol=1e-5, atol=1e-6)
