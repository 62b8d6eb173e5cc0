"""tide's Ascend vector kernels beyond the norms (targets/ascend/kernels/swiglu.py, sink_combine.py)
and what all vector kernels share (targets/ascend/hivm.py): each compile-checked with bishengir for
910B and 950 up to the external hivmc step; run on this CPU through bishengir's CPU-runner lowering
(MALLOC_PERTURB_ set by the runner) against numpy float64 on seeded random inputs, every element;
planted bugs caught; a tiling that overflows the unified buffer refused by bishengir for every vector
kernel on both SoCs; the per-SoC syntax difference checked against both tools.
RMSNorm's and the router scores' own numerics: tests/test_ascend_vector.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tide.targets.ascend import cost, emulation, hivm, mlir, toolchain
from tide.ops import rope as rope_op
from tide.targets.ascend.kernels import (compressor_pool, rmsnorm, rope, router_scores, sink_combine, sink_softmax,
                                        swiglu)

SOCS = ("Ascend910B1", "Ascend950PR_9599")
needs_bishengir = pytest.mark.skipif(toolchain.missing() is not None, reason=str(toolchain.missing()))
needs_cpu_runner = pytest.mark.skipif(toolchain.missing_cpu_runner() is not None,
                                      reason=str(toolchain.missing_cpu_runner()))
LIMIT = 7.0  # V4's swiglu_limit


def compiles(text: str, soc: str, tmp: Path) -> str:
    """The optimized HIVM module's text; the tool's errors as the failure message."""
    try:
        return toolchain.compile_check(text, soc, tmp).read_text()
    except toolchain.ToolchainError as err:
        pytest.fail(str(err))


def run_cpu(text: str, name: str, tmp: Path, *arrays):
    so = toolchain.cpu_build(emulation.cpu_module(text), name, tmp)
    return toolchain.cpu_run(so, name, mlir.block_dim(text), *arrays)


# ---- SwiGLU ----------------------------------------------------------------------------------------

SWIGLU_SHAPES = [(16, 256), (64, 2048), (37, 384), (1, 8192)]  # 2048: V4-Flash's expert F; 8192: column tiles


def swiglu_inputs(rows: int, inter: int, seed: int):
    rng = np.random.default_rng(seed)
    gu = (rng.standard_normal((rows, 2 * inter)) * 6).astype(np.float32)  # many values past the clamps
    gu[0, :4] = [-100.0, 100.0, LIMIT, -LIMIT]                              # exp overflow, clamp edges
    gu[0, inter:inter + 2] = [100.0, -100.0]
    rw = (rng.random((rows, 1)) + 0.05).astype(np.float32)
    return gu, rw


@needs_bishengir
@pytest.mark.parametrize("soc", SOCS)
@pytest.mark.parametrize("rows, inter", SWIGLU_SHAPES)
def test_swiglu_compiles(soc, rows, inter, tmp_path):
    compiles(swiglu.emit(rows, inter, LIMIT, soc), soc, tmp_path)


@needs_cpu_runner
@pytest.mark.parametrize("soc", SOCS)
@pytest.mark.parametrize("rows, inter", SWIGLU_SHAPES)
def test_swiglu_cpu_numerics(soc, rows, inter, tmp_path):
    """Each SoC's own tiling (the 950's larger UB gives other tiles) on the CPU."""
    gu, rw = swiglu_inputs(rows, inter, rows * inter)
    text = swiglu.emit(rows, inter, LIMIT, soc)
    got = run_cpu(text, "tide_swiglu", tmp_path, gu, rw, np.full((rows, inter), np.nan, np.float32))[2]
    want = swiglu.reference(gu, rw, LIMIT)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
    assert np.abs(want).max() > LIMIT  # the clamps were reached: |h| up to w * L * L


@needs_cpu_runner
def test_swiglu_cpu_check_catches_a_planted_bug(tmp_path):
    """The up clamp at -L replaced by -0.99 L: far past the tolerance."""
    rows, inter = 16, 256
    gu, rw = swiglu_inputs(rows, inter, 3)
    text = swiglu.emit(rows, inter, LIMIT, "Ascend910B1")
    assert f"arith.constant {-LIMIT:e} : f32" in text
    bad = text.replace(f"arith.constant {-LIMIT:e} : f32", f"arith.constant {-0.99 * LIMIT:e} : f32")
    got = run_cpu(bad, "tide_swiglu", tmp_path, gu, rw, np.zeros((rows, inter), np.float32))[2]
    assert np.abs(got - swiglu.reference(gu, rw, LIMIT)).max() > 100 * 2e-6


def test_swiglu_tiling():
    for soc in SOCS:
        ub = cost.soc(soc).ub
        for rows, inter in SWIGLU_SHAPES + [(512, 2048), (4096, 3072)]:
            tr, tc = swiglu.choose_tiling(soc, rows, inter)
            assert rows % tr == 0 and inter % tc == 0
            assert swiglu.LIVE_TILES * swiglu.BUFFERING * tr * tc * 4 <= ub
        assert swiglu.choose_tiling(soc, 1, 8192)[1] < 8192   # a row that does not fit is cut in columns
    with pytest.raises(ValueError, match="does not divide"):
        swiglu.emit(16, 256, LIMIT, "Ascend910B1", tiling=(3, 256))
    with pytest.raises(ValueError, match="limit must be positive"):
        swiglu.emit(16, 256, 0.0, "Ascend910B1")
    assert swiglu.cost_counts(2, 8) == {"flops": 9 * 16, "bytes": 4 * (48 + 2)}


# ---- sink-attention decode merge --------------------------------------------------------------------

COMBINE_SHAPES = [(64, 4, 512), (37, 3, 128), (128, 16, 512), (8, 1, 64)]  # 64 heads x D 512: V4-Flash decode


def combine_inputs(rows: int, splits: int, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    m = (rng.standard_normal((rows, splits)) * 5).astype(np.float32)
    m[0, -1] = 90.0                      # one split dominates: the others' weights underflow
    l_ = (rng.random((rows, splits)) * 10 + 0.1).astype(np.float32)
    l_[:, 0] += 1.0                      # split 0 carries the sink's weight
    acc = rng.standard_normal((splits, rows, dim)).astype(np.float32) * l_.T[:, :, None]
    return m, l_, acc


@needs_bishengir
@pytest.mark.parametrize("soc", SOCS)
@pytest.mark.parametrize("rows, splits, dim", COMBINE_SHAPES)
def test_sink_combine_compiles(soc, rows, splits, dim, tmp_path):
    compiles(sink_combine.emit(rows, splits, dim, soc), soc, tmp_path)


@needs_cpu_runner
@pytest.mark.parametrize("soc", SOCS)
@pytest.mark.parametrize("rows, splits, dim", COMBINE_SHAPES)
def test_sink_combine_cpu_numerics(soc, rows, splits, dim, tmp_path):
    m, l_, acc = combine_inputs(rows, splits, dim, rows + splits + dim)
    text = sink_combine.emit(rows, splits, dim, soc)
    got = run_cpu(text, "tide_sink_combine", tmp_path, m, l_, acc.reshape(splits * rows, dim),
                  np.full((rows, dim), np.nan, np.float32))[3]
    np.testing.assert_allclose(got, sink_combine.reference(m, l_, acc), rtol=2e-5, atol=2e-6)


@needs_cpu_runner
def test_sink_combine_cpu_check_catches_a_planted_bug(tmp_path):
    """The last split reading the previous split's accumulator: far past the tolerance."""
    rows, splits, dim = 64, 4, 512
    m, l_, acc = combine_inputs(rows, splits, dim, 5)
    text = sink_combine.emit(rows, splits, dim, "Ascend910B1")
    last, prev = f"%c{(splits - 1) * rows}_index : index", f"%c{(splits - 2) * rows}_index : index"
    bad = "\n".join(ln.replace(last, prev) if "arith.addi" in ln else ln for ln in text.split("\n"))
    assert bad != text
    got = run_cpu(bad, "tide_sink_combine", tmp_path, m, l_, acc.reshape(splits * rows, dim),
                  np.zeros((rows, dim), np.float32))[3]
    assert np.abs(got - sink_combine.reference(m, l_, acc)).max() > 100 * 2e-5


def test_sink_combine_tiling():
    for soc in SOCS:
        ub = cost.soc(soc).ub
        for rows, splits, dim in COMBINE_SHAPES:
            tr = sink_combine.choose_tile_rows(soc, rows, splits, dim)
            assert rows % tr == 0
            assert sink_combine.BUFFERING * tr * 4 * (sink_combine.LIVE_TILES * dim + 4 * splits) <= ub
    with pytest.raises(ValueError, match="does not fit"):
        sink_combine.choose_tile_rows("Ascend910B1", 64, 4, 8192)
    assert sink_combine.cost_counts(2, 3, 4) == {"flops": 2 * 3 * 14, "bytes": 4 * (12 + 24 + 8)}


@needs_cpu_runner
def test_norm_and_scores_950_tiling_cpu_numerics(tmp_path):
    """RMSNorm and the router scores with the 950's tiles (and its vreduce syntax) on the CPU."""
    rng = np.random.default_rng(11)
    rows, dim = 60, 1024
    assert [rmsnorm.choose_tile_rows(soc, rows, dim) for soc in SOCS] == [5, 6]
    x = (rng.standard_normal((rows, dim)) * 3 + 0.5).astype(np.float32)
    w = rng.standard_normal((1, dim)).astype(np.float32)
    text = rmsnorm.emit(rows, dim, "Ascend950PR_9599", 1e-6)
    assert "unsigned_src" in text
    got = run_cpu(text, "tide_rmsnorm", tmp_path / "norm", x, w, np.full_like(x, np.nan))[2]
    np.testing.assert_allclose(got, rmsnorm.reference(x, w, 1e-6), rtol=2e-5, atol=2e-5)
    v = (rng.standard_normal((rows, 256)) * 8).astype(np.float32)
    text = router_scores.emit(rows, 256, "Ascend950PR_9599")
    got = run_cpu(text, "tide_router_scores", tmp_path / "scores", v, np.full_like(v, np.nan))[1]
    np.testing.assert_allclose(got, router_scores.reference(v), rtol=1e-5, atol=1e-6)


# ---- sink-attention decode softmax -------------------------------------------------------------------

SOFTMAX_SHAPES = [(64, 512), (64, 4096), (37, 100), (128, 256)]   # V4-Flash's 64 heads, Pro's 128
SCALE = 512 ** -0.5


def softmax_inputs(heads: int, entries: int, seed: int):
    rng = np.random.default_rng(seed)
    s = (rng.standard_normal((heads, entries)) * 30).astype(np.float32)
    bias = (rng.standard_normal((1, entries)) * 0.5).astype(np.float32)
    bias[0, ::7] = -np.inf                                  # masked entries
    sinks = (rng.standard_normal((heads, 1)) * 2).astype(np.float32)
    sinks[0, 0] = 60.0                                       # a head whose sink takes (almost) everything
    return s, bias, sinks


@needs_bishengir
@pytest.mark.parametrize("soc", SOCS)
@pytest.mark.parametrize("heads, entries", SOFTMAX_SHAPES)
def test_sink_softmax_compiles(soc, heads, entries, tmp_path):
    compiles(sink_softmax.emit(heads, entries, SCALE, soc), soc, tmp_path)


@needs_cpu_runner
@pytest.mark.parametrize("soc", SOCS)
@pytest.mark.parametrize("heads, entries", SOFTMAX_SHAPES)
def test_sink_softmax_cpu_numerics(soc, heads, entries, tmp_path):
    s, bias, sinks = softmax_inputs(heads, entries, heads * entries)
    text = sink_softmax.emit(heads, entries, SCALE, soc)
    got = run_cpu(text, "tide_sink_softmax", tmp_path, s, bias, sinks, np.full_like(s, np.nan))[3]
    want = sink_softmax.reference(s, bias, sinks, SCALE)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
    assert (got[:, ::7] == 0).all()
    assert want[0].sum() < 1e-3 < 0.5 < want[1:].sum(axis=1).min()  # both regimes: sink-dominated and not


@needs_cpu_runner
def test_sink_softmax_all_masked_and_planted_bug(tmp_path):
    """Every entry masked: exact zeros (the sink takes all). Without the sink in the denominator
    (planted: its exp scaled by 0) rows no longer match."""
    heads, entries = 16, 256
    s, bias, sinks = softmax_inputs(heads, entries, 2)
    text = sink_softmax.emit(heads, entries, SCALE, "Ascend910B1")
    masked = np.full_like(bias, -np.inf)
    got = run_cpu(text, "tide_sink_softmax", tmp_path / "masked", s, masked, sinks, np.full_like(s, np.nan))[3]
    assert (got == 0).all()
    lines = text.split("\n")
    at = next(i for i, ln in enumerate(lines) if "hivm.hir.vexp" in ln and "tensor<16x1xf32>" in ln)
    den = next(i for i in range(at, len(lines)) if "hivm.hir.vadd" in lines[i])
    lines[den] = lines[den].replace("hivm.hir.vadd", "hivm.hir.vmax")   # den = max(sum, exp(sink - M))
    got = run_cpu("\n".join(lines), "tide_sink_softmax", tmp_path / "bad", s, bias, sinks, np.zeros_like(s))[3]
    assert np.abs(got - sink_softmax.reference(s, bias, sinks, SCALE)).max() > 1e-3


def test_sink_softmax_tiling():
    for soc in SOCS:
        ub = cost.soc(soc).ub
        for heads, entries in SOFTMAX_SHAPES:
            tr = sink_softmax.choose_tile_rows(soc, heads, entries)
            assert heads % tr == 0
            assert sink_softmax.BUFFERING * 4 * entries * (sink_softmax.LIVE_TILES * tr + 1) <= ub
    with pytest.raises(ValueError, match="sink softmax: the smallest tile"):
        sink_softmax.choose_tile_rows("Ascend910B1", 64, 16384)
    assert sink_softmax.cost_counts(2, 3) == {"flops": 42, "bytes": 4 * (12 + 5)}


# ---- compressor slot pooling --------------------------------------------------------------------------

POOL_SHAPES = [(4, 8, 512), (2, 128, 512), (3, 8, 128)]   # V4 CSA (ratio 4, overlap: 8 slots), HCA (128)


@needs_bishengir
@pytest.mark.parametrize("soc", SOCS)
@pytest.mark.parametrize("windows, slots, dim", POOL_SHAPES)
def test_compressor_pool_compiles(soc, windows, slots, dim, tmp_path):
    compiles(compressor_pool.emit(windows, slots, dim, soc), soc, tmp_path)


@needs_cpu_runner
@pytest.mark.parametrize("soc", SOCS)
@pytest.mark.parametrize("windows, slots, dim", POOL_SHAPES)
def test_compressor_pool_cpu_numerics(soc, windows, slots, dim, tmp_path):
    rng = np.random.default_rng(windows * slots + dim)
    score = (rng.standard_normal((windows, slots, dim)) * 4).astype(np.float32)
    score[0, 0, :3] = np.finfo(np.float32).min           # slots before position 0: weight 0
    score[-1, -1, :5] = 60.0                              # one slot takes a channel's whole weight
    kv = rng.standard_normal((windows, slots, dim)).astype(np.float32)
    text = compressor_pool.emit(windows, slots, dim, soc)
    got = run_cpu(text, "tide_compressor_pool", tmp_path, score.reshape(-1, dim), kv.reshape(-1, dim),
                  np.full((windows, dim), np.nan, np.float32))[2]
    np.testing.assert_allclose(got, compressor_pool.reference(score, kv), rtol=1e-5, atol=3e-6)


@needs_cpu_runner
def test_compressor_pool_planted_bug(tmp_path):
    """The scores read from kv (a swapped operand): far past the tolerance."""
    windows, slots, dim = 4, 8, 512
    rng = np.random.default_rng(9)
    score = (rng.standard_normal((windows, slots, dim)) * 4).astype(np.float32)
    kv = rng.standard_normal((windows, slots, dim)).astype(np.float32)
    text = compressor_pool.emit(windows, slots, dim, "Ascend910B1")
    assert text.count("memref.subview %SC[") == 1
    bad = text.replace("memref.subview %SC[", "memref.subview %KV[")
    got = run_cpu(bad, "tide_compressor_pool", tmp_path, score.reshape(-1, dim), kv.reshape(-1, dim),
                  np.zeros((windows, dim), np.float32))[2]
    assert np.abs(got - compressor_pool.reference(score, kv)).max() > 1e-2


def test_compressor_pool_tiling():
    for soc in SOCS:
        ub = cost.soc(soc).ub
        for windows, slots, dim in POOL_SHAPES:
            tc = compressor_pool.choose_tile_cols(soc, slots, dim)
            assert dim % tc == 0
            assert compressor_pool.LIVE_TILES * compressor_pool.BUFFERING * slots * tc * 4 <= ub
    assert compressor_pool.choose_tile_cols("Ascend910B1", 128, 512) < 512     # HCA windows are cut in channels
    with pytest.raises(ValueError, match="at least 2 slots"):
        compressor_pool.choose_tile_cols("Ascend910B1", 1, 512)
    assert compressor_pool.cost_counts(1, 2, 3) == {"flops": 36, "bytes": 4 * (12 + 3)}


# ---- RoPE --------------------------------------------------------------------------------------------

# (rows, dim, rope_dim, groups, inverse): q heads (64 per token, 2 tokens), kv latent (a group per row),
# the attention output's inverse rotation, rope over the whole row
ROPE_CASES = [(128, 512, 64, 2, False), (16, 512, 64, 16, False), (64, 512, 64, 1, True), (8, 64, 64, 1, False)]


@needs_bishengir
@pytest.mark.parametrize("soc", SOCS)
@pytest.mark.parametrize("rows, dim, rope_dim, groups, inverse", ROPE_CASES)
def test_rope_compiles(soc, rows, dim, rope_dim, groups, inverse, tmp_path):
    compiles(rope.emit(rows, dim, rope_dim, groups, soc, inverse), soc, tmp_path)


@needs_cpu_runner
@pytest.mark.parametrize("soc", SOCS)
@pytest.mark.parametrize("rows, dim, rope_dim, groups, inverse", ROPE_CASES)
def test_rope_cpu_numerics(soc, rows, dim, rope_dim, groups, inverse, tmp_path):
    """Against tide.ops.rope's float64 reference (its broadcast of a group's table over its rows)."""
    rng = np.random.default_rng(rows + dim + groups)
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    angle = rng.random((groups, rope_dim // 2)) * 6
    cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    text = rope.emit(rows, dim, rope_dim, groups, soc, inverse)
    got = run_cpu(text, "tide_rope", tmp_path, x, cos, sin, np.full_like(x, np.nan))[3]
    want = rope_op.reference(x.reshape(groups, rows // groups, dim), cos[:, None, :], sin[:, None, :], rope_dim,
                             inverse).reshape(rows, dim)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@needs_cpu_runner
def test_rope_planted_bug(tmp_path):
    """Pairs read one channel off (odd members from the next pair's even channel): caught."""
    rows, dim, rope_dim = 16, 128, 64
    rng = np.random.default_rng(4)
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    cos, sin = rng.standard_normal((2, rows, rope_dim // 2)).astype(np.float32)
    text = rope.emit(rows, dim, rope_dim, rows, "Ascend910B1")
    odd = f"%c{dim - rope_dim + 1}_index] [{rows}, {rope_dim // 2}] [1, 2]"
    assert odd in text
    lines = text.split("\n")
    i = next(i for i, ln in enumerate(lines) if "memref.subview %X[" in ln and odd in ln)
    lines[i] = lines[i].replace(odd, f"%c{dim - rope_dim}_index] [{rows}, {rope_dim // 2}] [1, 2]")
    got = run_cpu("\n".join(lines), "tide_rope", tmp_path, x, cos, sin, np.zeros_like(x))[3]
    want = rope_op.reference(x, cos, sin, rope_dim)
    assert np.abs(got - want).max() > 1e-2


def test_rope_tiling_and_errors():
    for soc in SOCS:
        for rows, dim, rope_dim, groups, _ in ROPE_CASES:
            tr = rope.choose_tile_rows(soc, rows, dim, rope_dim, groups)
            per_group = rows // groups
            assert (per_group % tr == 0) if per_group > 1 else rows % tr == 0
    with pytest.raises(ValueError, match="must be even"):
        rope.emit(8, 64, 63, 1, "Ascend910B1")
    with pytest.raises(ValueError, match="groups do not divide"):
        rope.emit(8, 64, 64, 3, "Ascend910B1")
    with pytest.raises(ValueError, match="rows of a cos/sin group"):
        rope.emit(128, 512, 64, 2, "Ascend910B1", tile_rows=128)
    assert rope.cost_counts(2, 8, 4, 1) == {"flops": 2 * 2 * 6, "bytes": 4 * (32 + 4)}


# ---- RMSNorm rows longer than the UB (column-split form) ---------------------------------------------

PRO_SHAPES = [(16, 7168), (37, 7168)]   # V4-Pro's hidden size


@needs_bishengir
@pytest.mark.parametrize("soc", SOCS)
@pytest.mark.parametrize("rows, dim", PRO_SHAPES)
def test_rmsnorm_split_compiles(soc, rows, dim, tmp_path):
    assert not rmsnorm.row_fits(soc, dim)
    compiles(rmsnorm.emit(rows, dim, soc, 1e-6), soc, tmp_path)


@needs_cpu_runner
@pytest.mark.parametrize("soc", SOCS)
@pytest.mark.parametrize("rows, dim", PRO_SHAPES)
def test_rmsnorm_split_cpu_numerics(soc, rows, dim, tmp_path):
    rng = np.random.default_rng(rows * dim)
    x = (rng.standard_normal((rows, dim)) * 3 + 0.5).astype(np.float32)
    w = rng.standard_normal((1, dim)).astype(np.float32)
    text = rmsnorm.emit(rows, dim, soc, 1e-6)
    got = run_cpu(text, "tide_rmsnorm", tmp_path, x, w, np.full_like(x, np.nan))[2]
    np.testing.assert_allclose(got, rmsnorm.reference(x, w, 1e-6), rtol=2e-5, atol=2e-5)


@needs_cpu_runner
def test_rmsnorm_split_planted_bug(tmp_path):
    """The column blocks' sums of squares combined by max instead of added: caught."""
    rows, dim = 16, 7168
    tr, cb = rmsnorm.choose_split("Ascend910B1", rows, dim)
    assert dim // cb >= 2
    rng = np.random.default_rng(8)
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    w = rng.standard_normal((1, dim)).astype(np.float32)
    text = rmsnorm.emit(rows, dim, "Ascend910B1", 1e-6)
    lines = text.split("\n")
    first_sum = next(i for i, ln in enumerate(lines) if "hivm.hir.vadd" in ln and f"tensor<{tr}x1xf32>, tensor<" in ln)
    lines[first_sum] = lines[first_sum].replace("hivm.hir.vadd", "hivm.hir.vmax")
    got = run_cpu("\n".join(lines), "tide_rmsnorm", tmp_path, x, w, np.zeros_like(x))[2]
    assert np.abs(got - rmsnorm.reference(x, w, 1e-6)).max() > 1e-2


def test_rmsnorm_split_tiling():
    for soc in SOCS:
        ub = cost.soc(soc).ub
        for rows, dim in PRO_SHAPES:
            tr, cb = rmsnorm.choose_split(soc, rows, dim)
            assert rows % tr == 0 and dim % cb == 0
            assert (rmsnorm.SPLIT_LIVE_TILES * tr + 1) * cb * 4 * rmsnorm.BUFFERING <= ub
        for dim in (128, 4096, 7168):   # the split form exactly where the one-pass tiles do not fit
            assert rmsnorm.row_fits(soc, dim) == (dim != 7168)
    with pytest.raises(ValueError, match="does not divide"):
        rmsnorm.emit_split(16, 7168, "Ascend910B1", 1e-6, split=(3, 3584))


# ---- every vector kernel: UB overflow refused, per-SoC syntax ---------------------------------------

OVERSIZED = {  # one tile far larger than any UB (bishengir's own check, not tide's tiling rule)
    "rmsnorm": lambda soc: rmsnorm.emit(256, 4096, soc, 1e-6, tile_rows=256),
    "router_scores": lambda soc: router_scores.emit(512, 384, soc, tile_rows=512),
    "swiglu": lambda soc: swiglu.emit(64, 2048, LIMIT, soc, tiling=(64, 2048)),
    "sink_combine": lambda soc: sink_combine.emit(64, 4, 512, soc, tile_rows=64),
    "sink_softmax": lambda soc: sink_softmax.emit(64, 4096, SCALE, soc, tile_rows=64),
    "compressor_pool": lambda soc: compressor_pool.emit(2, 128, 512, soc, tile_cols=512),
    "rope": lambda soc: rope.emit(1024, 512, 64, 1, soc, tile_rows=1024),
}


@needs_bishengir
@pytest.mark.parametrize("soc", SOCS)
@pytest.mark.parametrize("kernel", sorted(OVERSIZED))
def test_ub_overflow_is_refused(kernel, soc, tmp_path):
    with pytest.raises(toolchain.ToolchainError, match=r"ub overflow, requires \d+ bits while "
                                                       rf"{cost.soc(soc).ub * 8} bits available"):
        toolchain.compile_check(OVERSIZED[kernel](soc), soc, tmp_path)


@needs_bishengir
def test_vreduce_syntax_is_per_soc(tmp_path):
    """Each tool refuses the other's vreduce: the 950 tool requires unsigned_src, the 910B tool does
    not parse it."""
    assert "unsigned_src" in hivm.reduce_attrs("Ascend950PR_9599", [1])
    assert "unsigned_src" not in hivm.reduce_attrs("Ascend910B1", [1])
    with pytest.raises(toolchain.ToolchainError, match="expected 'unsigned_src'"):
        toolchain.compile_check(rmsnorm.emit(16, 128, "Ascend910B1", 1e-6), "Ascend950PR_9599", tmp_path / "a")
    with pytest.raises(toolchain.ToolchainError, match="expected 'reduce_dims'"):
        toolchain.compile_check(rmsnorm.emit(16, 128, "Ascend950PR_9599", 1e-6), "Ascend910B1", tmp_path / "b")


def test_tile_rows_rule():
    """Largest divisor of rows under the UB budget; a row that cannot fit names the SoC and sizes."""
    ub = cost.soc("Ascend910B1").ub
    assert hivm.tile_rows("Ascend910B1", 100, 1024, 4) == 20           # limit 24 -> divisor 20
    assert hivm.tile_rows("Ascend910B1", 97, 1024, 4) == 1             # prime rows: one-row tiles
    with pytest.raises(ValueError, match=f"does not fit Ascend910B1's {ub} byte unified buffer"):
        hivm.tile_rows("Ascend910B1", 8, ub, 1)


@needs_bishengir
def test_unit_broadcast_regression_workaround(tmp_path):
    """A [rows, 1] operand broadcast onto [rows, 1] breaks the 950 tool's final pipeline (kept
    input); the merge of a single split emits no broadcast and compiles."""
    bad = (Path(__file__).parent / "ascend_regressions" / "vector_unit_broadcast_a5.mlir").read_text()
    with pytest.raises(toolchain.ToolchainError, match="broadcast dim exceeds op's rank"):
        toolchain.compile_check(bad, "Ascend950PR_9599", tmp_path / "bad")
    compiles(sink_combine.emit(8, 1, 64, "Ascend950PR_9599"), "Ascend950PR_9599", tmp_path / "good")


# ---- the toolchain itself -----------------------------------------------------------------------------

@needs_bishengir
def test_compile_check_reports_the_tools_error(tmp_path):
    """A module bishengir cannot parse is a ToolchainError carrying the tool's own message."""
    with pytest.raises(toolchain.ToolchainError, match="custom op 'hivm.hir.vfoo'|hivm.hir.vfoo"):
        toolchain.compile_check(swiglu.emit(16, 256, LIMIT, "Ascend910B1").replace("hivm.hir.vexp", "hivm.hir.vfoo"),
                                "Ascend910B1", tmp_path)


def test_missing_pieces_are_named(monkeypatch):
    """Each absent piece of the CPU runner is named with the package that provides it."""
    monkeypatch.setattr(toolchain, "LLVM_TOOLS", [None, "/usr/bin/llc-19"])
    monkeypatch.setattr(toolchain, "RUNNER_LIB", Path("/nonexistent/libmlir_c_runner_utils.so"))
    msg = toolchain.missing_cpu_runner()
    assert "mlir-translate-19 (apt-get install mlir-19-tools)" in msg and "libmlir-19-dev" in msg
    assert "llc-19" not in msg
    monkeypatch.setattr(toolchain, "BIN", None)
    assert "pip install 'tide[ascend]'" in toolchain.missing()
    with pytest.raises(toolchain.ToolchainError, match="ascendnpu-ir"):
        toolchain.compile_check("module {}", "Ascend910B1", Path("/nonexistent"))
