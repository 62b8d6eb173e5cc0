"""tide's mHC kernels (``tide.ops.hc_pre``, ``tide.ops.hc_post``) against their float64 references on
seeded random streams, through the converters the compiler uses (so ``hc_pre``'s projection goes
through kernel substitution's linear, as in a model); plus the compile-time guard on the Sinkhorn
iteration count an exported function declares.

The CPU kernels are built and run here; every element is checked. Tolerance: float32 kernels vs
float64 references: the collapsed x and the rebuilt streams are sums of N terms of magnitude ~1
(TOL 2e-5 relative to the largest value); post and comb are in (0, 2) and (0, 1) (TOL 2e-6).
"""

from __future__ import annotations

import zlib

import numpy as np
import onnx
import pytest
from onnx import helper
from tvm import relax

from tide.compiler import onnx_import
from tide.compiler.errors import CompileError
from tide.ops import hc_post, hc_pre
from tide_test_models import run_converters

TOL, TOL_WEIGHTS = 2e-5, 2e-6


def _run(name, arrays, attrs, n_outputs, weights=0):
    """The converter of tide function ``name`` on ``arrays`` (the last ``weights`` of them passed as
    model weights, as the compiler passes them), built and run for the CPU."""
    def body(bb, params, converters, _report):
        out = converters[name](bb, list(params), attrs)
        return [relax.TupleGetItem(out, i) for i in range(n_outputs)] if n_outputs > 1 else [out]

    return run_converters(body, arrays, weights)


def _close(got, want, tol):
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * scale)


# (lead dims, streams N, width D, Sinkhorn iterations)
PRE_CASES = {
    "tiny-decode": ((1, 1), 4, 128, 20),
    "tiny-prefill-batch2": ((2, 7), 4, 128, 20),
    "flash-width-decode": ((1, 1), 4, 4096, 20),
    "two-streams-one-iteration": ((3, 5), 2, 48, 1),
}


@pytest.mark.parametrize("case", PRE_CASES)
def test_hc_pre_matches_reference(case):
    lead, n, dim, iters = PRE_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    m = n * (2 + n)
    h = rng.standard_normal((*lead, n, dim)).astype(np.float32)
    fn = (rng.standard_normal((m, n * dim)) / np.sqrt(n * dim)).astype(np.float32)
    base = rng.standard_normal(m).astype(np.float32) * 0.5
    scale = rng.uniform(0.5, 2.0, 3).astype(np.float32)
    attrs = {"hc_mult": n, "hc_eps": 1e-6, "norm_eps": 1e-6, "sinkhorn_iters": iters}
    (x, post, comb), report = _run("HyperConnectionPre", [h, fn, base, scale], attrs, 3, weights=3)
    tokens = int(np.prod(lead))
    want_x, want_post, want_comb = hc_pre.reference(h.reshape(tokens, n, dim), fn, base, scale, iters, 1e-6, 1e-6)
    _close(x.reshape(tokens, dim), want_x, TOL)
    _close(post.reshape(tokens, n), want_post, TOL_WEIGHTS)
    _close(comb.reshape(tokens, n, n), want_comb, TOL_WEIGHTS)
    assert x.shape == (*lead, dim) and post.shape == (*lead, n) and comb.shape == (*lead, n, n)
    # the projection is tide's linear on fn as stored, the rest one hc_pre kernel
    assert any(k.startswith("tide_linear_") for k in report.kernels), report.kernels
    assert f"tide_hc_pre_t{tokens}n{n}d{dim}i{iters}" in report.kernels


POST_CASES = {"decode": ((1, 1), 4, 128), "prefill-batch2": ((2, 9), 4, 256), "flash-width": ((1, 3), 4, 4096)}


@pytest.mark.parametrize("case", POST_CASES)
def test_hc_post_matches_reference(case):
    lead, n, dim = POST_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    f = rng.standard_normal((*lead, dim)).astype(np.float32)
    h = rng.standard_normal((*lead, n, dim)).astype(np.float32)
    post = rng.uniform(0, 2, (*lead, n)).astype(np.float32)
    comb = rng.uniform(0, 1, (*lead, n, n)).astype(np.float32)
    (y,), report = _run("HyperConnectionPost", [f, h, post, comb], {}, 1)
    tokens = int(np.prod(lead))
    want = hc_post.reference(f.reshape(tokens, dim), h.reshape(tokens, n, dim), post.reshape(tokens, n),
                             comb.reshape(tokens, n, n))
    assert y.shape == (*lead, n, dim)
    _close(y.reshape(tokens, n, dim), want, TOL)
    assert list(report.kernels) == [f"tide_hc_post_t{tokens}n{n}d{dim}"]


def _hc_model(declared: bool, iters_attr, divisions: int) -> onnx.ModelProto:
    """A graph calling tide.HyperConnectionPre once, its body standing in with ``divisions`` Div nodes."""
    body = [helper.make_node("Div", ["h", "h"], [f"d{i}"]) for i in range(divisions)]
    body.append(helper.make_node("Identity", ["h"], ["x"]))
    attributes = ["hc_mult", "hc_eps", "norm_eps"] + (["sinkhorn_iters"] if declared else [])
    function = helper.make_function("tide", "HyperConnectionPre", ["h", "fn", "base", "scale"], ["x", "post", "comb"],
                                    body, [helper.make_opsetid("", 18)], attributes=attributes)
    call_attrs = {} if iters_attr is None else {"sinkhorn_iters": iters_attr}
    node = helper.make_node("HyperConnectionPre", ["h", "fn", "base", "scale"], ["x", "p", "c"], domain="tide",
                            name="layer0_hc_pre", **call_attrs)
    graph = helper.make_graph([node], "g", [], [])
    return helper.make_model(graph, functions=[function],
                             opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("tide", 1)])


def test_sinkhorn_count_is_checked_against_the_function_body():
    assert onnx_import.sinkhorn_kernel_usable("m.onnx", _hc_model(True, 20, 39))
    # an export from before the attribute existed: the body is lowered generically
    assert not onnx_import.sinkhorn_kernel_usable("m.onnx", _hc_model(False, None, 39))
    with pytest.raises(CompileError, match=r"node 'layer0_hc_pre' .*'sinkhorn_iters' is 3, but the function body "
                                           r"unrolls 20 Sinkhorn iterations \(39 normalizations\)"):
        onnx_import.sinkhorn_kernel_usable("m.onnx", _hc_model(True, 3, 39))
    with pytest.raises(CompileError, match="'sinkhorn_iters' is None"):
        onnx_import.sinkhorn_kernel_usable("m.onnx", _hc_model(True, None, 39))
