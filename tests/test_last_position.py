"""The last-position pass (tide.compiler.last_position): a prefill graph cut to the logits of its last
position, its row-wise tail computed on one row per sequence. Every case runs the graph before and
after in onnxruntime (the reference for ONNX semantics): the cut graph's logits must equal the full
graph's last position, and every other output must be unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tide.compiler import last_position, onnx_import

B, S, D, V = 2, 6, 8, 5


def _run(model: onnx.ModelProto, feeds: dict) -> dict:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def _check(model: onnx.ModelProto, feeds: dict, rows_expected) -> int:
    full = onnx.ModelProto()
    full.CopyFrom(model)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    cut, rows = last_position.cut("test.onnx", model)
    onnx.checker.check_model(cut, full_check=True)
    want, got = _run(full, feeds), _run(cut, feeds)
    assert got["logits"].shape == (want["logits"].shape[0], 1, want["logits"].shape[2])
    np.testing.assert_allclose(got["logits"], want["logits"][:, -1:], rtol=1e-5, atol=1e-6)
    for name in want:
        if name != "logits":
            np.testing.assert_array_equal(got[name], want[name])
    assert rows_expected(rows), rows
    return rows


def _model(nodes, inits, extra_outputs=(), batch=B):
    rng = np.random.default_rng(7)
    initializers = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
                    if isinstance(shape, tuple) else numpy_helper.from_array(shape, name) for name, shape in inits]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, S, D])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, S, V])]
        + [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in extra_outputs], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _x(batch=B):
    return {"x": np.random.default_rng(3).standard_normal((batch, S, D)).astype(np.float32)}


def _i64(*v):
    return np.array(v, np.int64)


@pytest.mark.parametrize("batch", [1, B])
def test_row_wise_tail_is_computed_on_the_last_rows(batch):
    """norm-like mixing, a [B*S, D] Gemm and the head: everything runs on the last rows; the state
    output (a function of every row) is untouched."""
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "ax"], ["ms"], keepdims=1),
        helper.make_node("Add", ["ms", "eps"], ["ms_eps"]),
        helper.make_node("Sqrt", ["ms_eps"], ["rms"]),
        helper.make_node("Div", ["x", "rms"], ["h"]),
        helper.make_node("Unsqueeze", ["h", "ax2"], ["h4"]),
        helper.make_node("Transpose", ["h4"], ["h4t"], perm=[0, 1, 3, 2]),
        helper.make_node("Softmax", ["h4t"], ["p"], axis=2),
        helper.make_node("Squeeze", ["p", "ax3"], ["p3"]),
        helper.make_node("Reshape", ["p3", "rows"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w", "bias"], ["proj"]),
        helper.make_node("Reshape", ["proj", "bsv"], ["logits"]),
        helper.make_node("ReduceSum", ["x", "ax1"], ["state"], keepdims=0),
    ]
    inits = [("ax", _i64(-1)), ("eps", np.array(1e-6, np.float32)), ("ax2", _i64(2)), ("ax3", _i64(3)),
             ("rows", _i64(batch * S, D)), ("w", (D, V)), ("bias", (V,)), ("bsv", _i64(batch, S, V)), ("ax1", _i64(1))]
    rows = _check(_model(nodes, inits, ["state"], batch), _x(batch), lambda r: r >= 11)
    assert rows == 12  # every node but the state's reduction


def test_attention_rows_read_every_key():
    """softmax(x x^T) x: row i of the output needs row i of the scores and every key: the queries are
    cut, the keys are not."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["x", "xt"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "x"], ["ctx"]),
        helper.make_node("Einsum", ["ctx", "w"], ["logits"], equation="bsd,dv->bsv"),
    ]
    _check(_model(nodes, [("w", (D, V))]), _x(), lambda r: r == 4)


@pytest.mark.parametrize("case", ["softmax over positions", "cumulative", "reshape across rows", "state consumer",
                                  "einsum over positions", "einsum diagonal"])
def test_ops_that_mix_positions_stop_the_region(case):
    """a node that mixes positions (or whose output also feeds a state) is computed whole and its
    output cut; the result still equals the full graph's last position."""
    head = [helper.make_node("Einsum", ["mixed", "w"], ["logits"], equation="bsd,dv->bsv")]
    extra = []
    if case == "softmax over positions":
        mix = [helper.make_node("Softmax", ["x"], ["mixed"], axis=1)]
    elif case == "cumulative":
        mix = [helper.make_node("CumSum", ["x", "axis1"], ["mixed"])]
    elif case == "reshape across rows":
        mix = [helper.make_node("Reshape", ["x", "swap"], ["r"]),
               helper.make_node("Transpose", ["r"], ["rt"], perm=[0, 2, 1, 3]),
               helper.make_node("Reshape", ["rt", "back"], ["mixed"])]
    elif case == "state consumer":
        mix = [helper.make_node("Relu", ["x"], ["mixed"])]
        extra = ["mixed"]
    elif case == "einsum over positions":
        mix = [helper.make_node("Einsum", ["x", "x"], ["g"], equation="bsd,btd->bst"),
               helper.make_node("Einsum", ["g", "x"], ["mixed"], equation="bst,btd->bsd")]
    else:
        mix = [helper.make_node("Einsum", ["x", "x"], ["g"], equation="bsd,btd->bst"),
               helper.make_node("Einsum", ["g"], ["diag"], equation="bss->bs"),
               helper.make_node("Unsqueeze", ["diag", "last"], ["d3"]),
               helper.make_node("Mul", ["d3", "x"], ["mixed"])]
    inits = [("w", (D, V)), ("axis1", np.array(1, np.int64)), ("swap", _i64(B, S // 2, 2, D)),
             ("back", _i64(B, S, D)), ("last", _i64(-1))]
    rows = _check(_model(mix + head, inits, extra), _x(), lambda r: r >= 1)
    # g's rows need x's rows and every key; a diagonal reads a column per row: computed whole
    assert rows == {"einsum over positions": 3, "einsum diagonal": 3}.get(case, 1)


def test_no_row_wise_tail_slices_the_output():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("CumSum", ["y", "axis1"], ["logits"])]
    _check(_model(nodes, [("w", (D, V)), ("axis1", np.array(1, np.int64))]), _x(), lambda r: r == 0)


@pytest.mark.parametrize("batch", [1, 2])
def test_exported_v4_prefill_cuts_the_last_layer_tail(tmp_path, batch):
    """The exported tiny V4 graph, specialized for a 16-token prefill: the cut reaches back to the last
    layer's attention output (the output projection, mHC mixing, router, experts and head run on the
    last rows); logits equal the full graph's last position and every present.* state is unchanged."""
    from tide.compiler import driver, substitute
    from tide.compiler.driver import CompileOptions
    from tide.compiler.export import export
    from tide.targets import get

    path = str(tmp_path / "tiny.onnx")
    export("tiny", path, seed=0, batch=batch)
    loaded = onnx_import.load(path)
    _, entries = driver._entries(loaded, CompileOptions(target="cpu", prefill_chunks=(16,)))
    cpu = get("cpu")
    kernels = frozenset(substitute.function_kernels(cpu, substitute.SubstitutionReport(), "float32",
                                                    cpu.tvm_target(None, ())))
    dims = next(d for e, d in entries if e == "prefill_16")
    static = onnx_import.specialize(loaded, dims, kernels)
    full = onnx_import.with_weights(static, loaded.weights)
    cut, rows = last_position.last_position_only(path, onnx_import.specialize(loaded, dims, kernels))
    cut = onnx_import.with_weights(cut, loaded.weights)
    assert rows > 30  # the last layer's tail: output projection, mixing, router, experts, head
    sources = {n.input[0] for n in cut.graph.node if n.name.endswith(".last_rows")}
    assert any("SinkAttention" in s for s in sources), sources
    rng = np.random.default_rng(11)
    sess = ort.InferenceSession(full.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            feeds[i.name] = rng.integers(0, 500, size=i.shape).astype(np.int64)
        elif i.type == "tensor(int64)":
            feeds[i.name] = np.full(i.shape, 3, np.int64)  # a prefill after 3 decoded positions
        else:
            feeds[i.name] = rng.standard_normal(i.shape).astype(np.float32)
    want, got = _run(full, feeds), _run(cut, feeds)
    np.testing.assert_allclose(got["logits"], want["logits"][:, -1:], rtol=1e-5,
                               atol=1e-5 * float(np.abs(want["logits"]).max()))
    for name in want:
        if name != "logits":
            np.testing.assert_array_equal(got[name], want[name])


def test_a_graph_without_static_logits_is_refused_by_name():
    from tide.compiler.errors import CompileError

    model = _model([helper.make_node("Einsum", ["x", "w"], ["logits"], equation="bsd,dv->bsv")], [("w", (D, V))])
    with pytest.raises(CompileError, match="test.onnx: the graph has no output 'scores'"):
        last_position.cut("test.onnx", model, output="scores")
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "seq"
    with pytest.raises(CompileError, match=r"output 'logits' is \[2, None, 5\], expected a static \[batch, seq, vocab\]"):
        last_position.cut("test.onnx", model)
