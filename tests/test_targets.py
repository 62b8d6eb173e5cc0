"""The target registry: the built-in target folders, a target added at run time and compiled
through, and the rules the command line and the compiler follow (they ask the registry; a flag of
another target is refused)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import tide
from tide import targets
from tide.cli import main as cli_main
from tide.compiler.driver import CompileOptions, compile_model
from tide.compiler.errors import CompileError
from tide.compiler.export.builder import TIDE_DOMAIN, TIDE_VERSION
from tide.compiler.export.functions import build_functions
from tide.ops.kernel import identity


class ToyTarget(targets.Target):
    """A host-only target with no choices and no rules: every tide kernel is built with its
    defaults and kept as written, generic kernels unscheduled. It runs on the CPU runtime."""

    kind = "toy"
    runtime = "cpu"
    seen: list

    def __init__(self):
        self.seen = []

    def tvm_target(self, mcpu=None, archs=()):
        import tvm

        return tvm.target.Target({"kind": "llvm"})

    def schedule_generic(self, func, tvm_target):
        self.seen.append(identity(func)[0] or "generic")
        return None


def _model(path: str) -> None:
    """z = SharedExpert(RMSNorm(x)) (tide-domain functions, so tide kernels), then y = softmax(z @ w + b)
    and the top-3 of each row of y (top-k: a tide kernel too)."""
    rng = np.random.default_rng(0)

    def weight(name, shape, scale=1.0):
        return helper.make_tensor(name, TensorProto.FLOAT, shape,
                                  (rng.standard_normal(shape) * scale).astype(np.float32).ravel())

    inits = [weight("nw", (24,)), weight("gw", (32, 24), 0.2), weight("uw", (32, 24), 0.2), weight("dw", (24, 32), 0.2),
             weight("w", (24, 40)), weight("b", (40,)), helper.make_tensor("k", TensorProto.INT64, (1,), [3])]
    nodes = [helper.make_node("RMSNorm", ["x", "nw"], ["n"], domain=TIDE_DOMAIN, epsilon=1e-6),
             helper.make_node("SharedExpert", ["n", "gw", "uw", "dw"], ["e"], domain=TIDE_DOMAIN, swiglu_limit=10.0),
             helper.make_node("MatMul", ["e", "w"], ["ew"]), helper.make_node("Add", ["ew", "b"], ["z"]),
             helper.make_node("Softmax", ["z"], ["y"], axis=-1),
             helper.make_node("TopK", ["y", "k"], ["top", "idx"], axis=-1)]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (5, 24))],
                              [helper.make_tensor_value_info(n, t, (5, s)) for n, t, s in
                               (("y", TensorProto.FLOAT, 40), ("top", TensorProto.FLOAT, 3),
                                ("idx", TensorProto.INT64, 3))], inits)
    opset = 17
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid(TIDE_DOMAIN, TIDE_VERSION)],
                              functions=build_functions({"RMSNorm", "SharedExpert"}, opset, 1))
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


def test_the_built_in_targets_are_the_target_folders():
    assert targets.kinds() == ["ascend", "cpu", "cuda"]
    for kind in targets.kinds():
        target = targets.get(kind)
        assert target.kind == kind and target.runtime == kind
    with pytest.raises(CompileError, match="target 'tpu' is not available in this build of tide "
                                           r"\(available: ascend, cpu, cuda\)"):
        targets.get("tpu")


def test_a_registered_target_compiles_and_runs_a_model(tmp_path):
    onnx_path, art = str(tmp_path / "toy.onnx"), str(tmp_path / "toy.tide")
    _model(onnx_path)
    toy = ToyTarget()
    targets.register(toy)
    try:
        assert "toy" in targets.kinds() and targets.get("toy") is toy
        result = compile_model(onnx_path, art, CompileOptions(target="toy", progress=False))
    finally:
        targets.unregister("toy")
    assert "toy" not in targets.kinds()
    # the one scheduling stage asked the target about every kernel without a schedule of its own: the
    # tide kernels by their identity, TVM's generic ones; top-k is written with its row loop (kept)
    assert {"rmsnorm", "moe_gate_up", "moe_down", "moe_combine", "generic"} <= set(toy.seen)
    assert "topk" not in toy.seen and any(name.startswith("tide_topk") for name in result.kernels)
    x = np.random.default_rng(1).standard_normal((5, 24)).astype(np.float32)
    got = tide.load(art).run({"x": x})
    want = ort.InferenceSession(onnx_path).run(None, {"x": x})
    np.testing.assert_allclose(got["y"], want[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["top"], want[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got["idx"], want[2])


def test_a_flag_of_another_target_is_refused(tmp_path, capsys):
    onnx_path = str(tmp_path / "toy.onnx")
    _model(onnx_path)
    with pytest.raises(SystemExit, match="--soc is for --target ascend, not --target cuda"):
        cli_main(["compile", onnx_path, "-o", str(tmp_path / "x.tide"), "--target", "cuda", "--soc", "Ascend910B1"])
    with pytest.raises(SystemExit, match="--arch is for --target cuda, not --target cpu"):
        cli_main(["compile", onnx_path, "-o", str(tmp_path / "x.tide"), "--arch", "sm_90"])
    assert not (tmp_path / "x.tide").exists()
