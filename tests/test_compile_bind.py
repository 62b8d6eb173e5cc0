"""Graph inputs that feed compile-time operands (a Reshape's shape, a TopK's k, ...): refused before
import with one sentence naming the input, node, op and opset, compiled as constants with
``--bind`` / ``CompileOptions.bind`` (validated against the input's declared dtype and shape), and
the refusals of later stages as single sentences."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import tide
from tide.compiler.driver import CompileOptions, compile_model
from tide.compiler.errors import CompileError, readable, sentence


def _reshape_model(tmp_path, shape_dims=(3,)) -> str:
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="Reshape_3")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 64]),
                                            helper.make_tensor_value_info("shape", TensorProto.INT64, list(shape_dims))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 64])])
    path = str(tmp_path / "model.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_shape_input_is_refused_before_import_with_the_option_to_use(tmp_path):
    path = _reshape_model(tmp_path)
    with pytest.raises(CompileError) as info:
        compile_model(path, str(tmp_path / "m.tide"), CompileOptions(progress=False))
    message = str(info.value)
    assert message == (f"{path}: node 'Reshape_3' (op Reshape, opset 18): its shape operand is the graph input "
                       "'shape'; tide compiles static plans: give its value with --bind shape=...")
    assert readable(message)


def test_bound_shape_compiles_as_a_constant(tmp_path):
    path = _reshape_model(tmp_path)
    art = str(tmp_path / "m.tide")
    compile_model(path, art, CompileOptions(progress=False, bind={"shape": [1, -1, 64]}))
    model = tide.load(art)
    assert [i.name for i in model.inputs()] == ["x"]
    x = np.arange(2 * 3 * 64, dtype=np.float32).reshape(2, 3, 64)
    np.testing.assert_array_equal(model.run({"x": x})["y"], x.reshape(1, 6, 64))


def test_shape_computed_from_an_input_is_refused_too(tmp_path):
    nodes = [helper.make_node("Add", ["k", "one"], ["k1"], name="add"),
             helper.make_node("TopK", ["x", "k1"], ["v", "i"], name="topk")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8]),
                                           helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("v", TensorProto.FLOAT, [4, 3]),
                               helper.make_tensor_value_info("i", TensorProto.INT64, [4, 3])],
                              [helper.make_tensor("one", TensorProto.INT64, [1], [1])])
    path = str(tmp_path / "topk.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(CompileError, match=r"node 'topk' \(op TopK, opset 17\): its k operand is computed from the "
                                           r"graph input 'k'; .* --bind k=\.\.\."):
        compile_model(path, str(tmp_path / "m.tide"), CompileOptions(progress=False))
    art = str(tmp_path / "m.tide")
    compile_model(path, art, CompileOptions(progress=False, bind={"k": 2}))
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    got = tide.load(art).run({"x": x})
    np.testing.assert_array_equal(got["v"], -np.sort(-x, axis=1)[:, :3])


@pytest.mark.parametrize("bind, match", [
    ({"shapes": [1, -1, 64]}, r"--bind shapes: the graph has no input 'shapes' \(its inputs: x, shape\)"),
    ({"shape": [1, 64]}, r"--bind shape: input 'shape' has shape \[3\]: expected 3 value\(s\), got 2"),
    ({"shape": [1, -1, 64.5]}, r"--bind shape: input 'shape' is int64: expected values it can hold, got 64.5"),
    ({"shape": [1, -1, 1e20]}, r"input 'shape' is int64: expected values it can hold, got 1e\+20"),
])
def test_bad_bindings_name_the_input_and_what_was_expected(tmp_path, bind, match):
    path = _reshape_model(tmp_path)
    with pytest.raises(CompileError, match=match):
        compile_model(path, str(tmp_path / "m.tide"), CompileOptions(progress=False, bind=bind))


def test_cli_bind(tmp_path):
    path = _reshape_model(tmp_path)
    art = str(tmp_path / "cli.tide")
    cmd = [sys.executable, "-m", "tide.cli", "compile", path, "-o", art, "-q"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 2 and "--bind shape=..." in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run(cmd + ["--bind", "shape=1,-1,64"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert tide.load(art).outputs()[0].shape == (1, 6, 64)
    res = subprocess.run(cmd + ["--bind", "shape=1,x,64"], capture_output=True, text=True)
    assert res.returncode == 2 and "'x' is not a number" in res.stderr


def test_tvm_messages_become_one_sentence():
    dump = ("Traceback (most recent call last):\n  File \"x.py\", line 3, in f\n"
            "tvm.error.InternalError: Check failed: (a == b) is false: Binary operators must have the same "
            "datatype for both operands.  However, R.subtract(R.const(1.0, \"float32\"), lv1) uses T.float32\n"
            "  0: tvm::relax::Foo\n")
    assert sentence(dump) == "Binary operators must have the same datatype for both operands."
    assert readable("m.onnx: node 'n' (op Add, opset 17): unsupported: a reason")
    assert not readable(dump)
