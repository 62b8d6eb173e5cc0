"""The CPU target's generic GEMM rule (``tide.targets.cpu``) through legalization, fusion, the
schedule and LLVM, element by element against numpy float64: prefill shapes (several 4-row tiles:
the reduction blocked so a weight panel stays in cache), decode shapes (1-4 rows: the whole
reduction per tile), a batched GEMM, a row count off the 4-row tile and a fused bias epilogue."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from tide.compiler import lower, schedule
from tide.targets import get
from tide.targets.cpu import generic as cpu


def _compile(shapes, build):
    params = [relax.Var(f"in{i}", relax.TensorType(s, "float32")) for i, s in enumerate(shapes)]
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(build(*params))
        bb.emit_func_output(out)
    target = get("cpu").tvm_target()
    mod = schedule.schedule(lower.legalize_and_fuse(bb.get(), target), get("cpu"), target)
    kernels = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert kernels and all(f.attrs.get("tirx.is_scheduled") for f in kernels)
    return mod, relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())


def _check(out, x, w, bias=None):
    """Every element within the float32 recursive-summation bound K * 2^-24 * sum |x| |w| (plus
    the bias's rounding) of the float64 product."""
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    want = x64 @ w64
    bound = x.shape[-1] * 2.0 ** -24 * (np.abs(x64) @ np.abs(w64))
    if bias is not None:
        want = want + bias
        bound = bound + 2.0 ** -23 * np.abs(want)
    assert out.shape == want.shape and np.isfinite(out).all()
    excess = np.abs(out - want) - bound
    assert (excess <= 0).all(), f"worst element off by {excess.max():.3g} beyond the bound"


def _update_loop_extents(func) -> list[int]:
    """Extents of the loops around the GEMM's update block, outermost first."""
    sch = tvm.s_tir.Schedule(func)
    return [int(sch.get(loop).extent) for loop in sch.get_loops(sch.get_sblock("matmul_update"))]


@pytest.mark.parametrize("rows,dim,cols", [(64, 1024, 512), (32, 768, 192), (1, 1024, 512), (4, 1024, 512),
                                           (18, 512, 256)],
                         ids=["prefill", "prefill-16col-panels", "decode-1", "decode-4", "rows-off-tile"])
def test_generic_gemm_matches_float64(rows, dim, cols):
    rng = np.random.default_rng(rows * 7 + dim + cols)
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    w = rng.standard_normal((dim, cols)).astype(np.float32)
    mod, vm = _compile([x.shape, w.shape], relax.op.matmul)
    (kernel,) = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    panel = cpu.TILE_COLS if cols % cpu.TILE_COLS == 0 else cpu.VECTOR
    k_block = cpu.gemm_k_block(rows, dim, panel) if rows % cpu.TILE_ROWS == 0 else None
    if rows > cpu.TILE_ROWS and rows % cpu.TILE_ROWS == 0:
        assert k_block is not None and dim % k_block == 0 and k_block < dim
        assert k_block * panel * 4 <= cpu.PANEL_BYTES
        extents = _update_loop_extents(kernel)
        assert extents[:4] == [cols // panel, dim // k_block, rows // cpu.TILE_ROWS, k_block]  # K blocks outside row tiles
    else:
        assert k_block is None and dim in _update_loop_extents(kernel)  # the whole reduction per tile
    out = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w)).numpy()
    _check(out, x, w)


def test_batched_gemm_with_bias_matches_float64():
    """A batched GEMM (batch loop fused with the column panels on the thread pool) followed by a
    bias add that fusion puts in the same kernel."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 16, 1024)).astype(np.float32)
    w = rng.standard_normal((1024, 128)).astype(np.float32)
    bias = rng.standard_normal(128).astype(np.float32)
    _, vm = _compile([x.shape, w.shape, bias.shape], lambda a, b, c: relax.op.add(relax.op.matmul(a, b), c))
    out = vm["main"](*[tvm.runtime.tensor(a) for a in (x, w, bias)]).numpy()
    _check(out, x, w, bias.astype(np.float64))


def test_k_block_choice():
    assert cpu.gemm_k_block(1, 4096, 64) is None and cpu.gemm_k_block(4, 4096, 64) is None  # decode GEMV
    assert cpu.gemm_k_block(64, 128, 64) is None  # the whole 128 x 64 panel already fits
    assert cpu.gemm_k_block(64, 4096, 64) == 256
    assert cpu.gemm_k_block(64, 4096, 16) == 1024
    assert cpu.gemm_k_block(64, 768, 64) == 256
    assert cpu.gemm_k_block(64, 7 * 257, 64) is None  # no divisor in [16, 256]: unblocked
