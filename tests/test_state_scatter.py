"""tide's in-place state update (``tide.ops.state_scatter``) built for the CPU and run on a state
buffer, against its reference: updated rows written, every other row untouched, coordinates outside
the state skipped, and negative coordinates wrapped from the end of their axis when the kernel
takes over the ONNX frontend's wrap (``wrap_negative``); and the substitution that makes that choice
on an imported ScatterND of a decode state."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper
from tvm import relax

from tide.compiler import relax_import, schedule, substitute
from tide.ops import state_scatter
from tide.ops.kernel import tag
from tide.targets import get


@functools.cache
def _target():
    return get("cpu").tvm_target()


def _run(data, indices, updates, wrap):
    func = state_scatter.prim_func(list(data.shape), list(indices.shape), str(data.dtype), str(indices.dtype),
                                   None, wrap, "scatter")
    func = schedule.schedule_kernel(tag(func, "state_scatter", state="s"), get("cpu"), _target())
    lib = tvm.compile(tvm.IRModule({"scatter": func}), target=_target())
    state = tvm.runtime.tensor(data.copy())
    lib["scatter"](tvm.runtime.tensor(indices), tvm.runtime.tensor(updates), state)
    return state.numpy()


@pytest.mark.parametrize("wrap", [False, True])
def test_state_scatter_writes_rows_in_place(wrap):
    rng = np.random.default_rng(5)
    data = rng.standard_normal((2, 16, 8)).astype(np.float32)
    # [batch, position] coordinates: in range, negative (wrapped or skipped), past the end (skipped)
    indices = np.array([[[0, 3], [1, 15], [1, -1], [0, -16], [-1, 4], [2, 0], [0, 16], [0, -17]]], np.int64)
    updates = rng.standard_normal((1, 8, 8)).astype(np.float32)
    got = _run(data, indices, updates, wrap)
    want = state_scatter.reference(data, indices, updates, wrap)
    np.testing.assert_array_equal(got, want)
    changed = {(int(b), int(p)) for b, p in zip(*np.nonzero((want != data).any(-1)))}
    assert changed == ({(0, 3), (1, 15), (0, 0), (1, 4)} if wrap else {(0, 3), (1, 15)})


def test_substitution_takes_over_the_frontends_index_wrap():
    """An imported ``present = ScatterND(past, idx, upd)``: the frontend wraps idx (where/less/add on
    the state's shape); the substituted kernel reads idx as given and wraps itself, so the step has
    no kernel but the update."""
    past = helper.make_tensor_value_info("past.s", TensorProto.FLOAT, [2, 16, 8])
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, [1, 3, 2])
    upd = helper.make_tensor_value_info("upd", TensorProto.FLOAT, [1, 3, 8])
    out = helper.make_tensor_value_info("present.s", TensorProto.FLOAT, [2, 16, 8])
    graph = helper.make_graph([helper.make_node("ScatterND", ["past.s", "idx", "upd"], ["present.s"])], "g",
                              [past, idx, upd], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    mod = relax_import.to_relax(model, "m.onnx")
    report = substitute.SubstitutionReport()
    mod = substitute.substitute(mod, get("cpu"), {mod["main"].params[0].name: "s"}, report, _target())
    assert list(report.kernels) == ["tide_state_scatter_s"]
    func = mod["tide_state_scatter_s"]
    assert [int(d) for d in func.params[0].shape] == [1, 3, 2]
    # the kernel's index operand is main's idx parameter itself: after dead-code elimination (which
    # lowering runs) nothing computes it
    text = relax.transform.DeadCodeElimination()(mod)["main"].script()
    assert "R.where" not in text and "R.less" not in text and "call_tir(tide_state_scatter_s, (idx, upd)" in text, text
