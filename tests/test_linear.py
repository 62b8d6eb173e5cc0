"""``tide.ops.linear``: the kernel on its own (CPU schedule, float32 and bfloat16 weights) against
numpy in float64, and its substitution for model-weight matmuls in compiled graphs against
onnxruntime: constants packed by folding, weight parameters by a packed view of the stored array."""

from __future__ import annotations

import math
import re

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tide
from tide.compiler import onnx_import
from tide.compiler.artifact import read_artifact
from tide.compiler.artifact.reader import load_weight
from tide.compiler.driver import CompileOptions, compile_model
from tide.compiler.substitute import cpu_features
from tide.ops import kernel, linear
from tide.targets.cpu import linear as cpu_linear
from tide.targets.target import compile_kernels


def _tvm_target():
    import tvm

    return tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})


@pytest.mark.parametrize("rows,dim,cols,wdtype,groups", [(1, 512, 64, "float32", 1), (2, 300, 48, "float32", 1),
                                                         (32, 256, 96, "float32", 1), (7, 128, 32, "float32", 1),
                                                         (5, 200, 64, "bfloat16", 1), (1, 96, 32, "float32", 4),
                                                         (6, 64, 48, "float32", 3),
                                                         (3, 64, 24, "float32", 1),  # one-vector panels
                                                         (8, 4096, 1024, "float32", 1),  # V4-Flash compressor
                                                         (50, 96, 32, "float32", 1),  # 6-row tiles, last of 2
                                                         (13, 64, 32, "bfloat16", 2)])  # 6-row tiles, last of 1
def test_kernel_matches_numpy(rows, dim, cols, wdtype, groups):
    """Every element of y against float64 numpy; bfloat16 weights widened exactly, so the only
    error is float32 accumulation over K (a few ulps times sqrt(K) of the output scale). Row counts
    that no 4-to-6-row tile divides run a predicated last tile."""
    import tvm

    target = _tvm_target()
    cfg = cpu_linear.choose_linear(rows=rows, cols=cols, features=cpu_features(target))
    assert cfg["layout"] == "panel"
    assert rows in (7, 13, 50) or rows % cfg["tile_rows"] == 0
    func = kernel.tag(linear.prim_func(rows, dim, cols, cfg["panel"], wdtype, "k", groups), "linear", **cfg)
    lib = compile_kernels({"k": cpu_linear.schedule_linear(func, target)}, target)
    rng = np.random.default_rng(rows * 1000 + dim)
    x = rng.standard_normal((rows, groups * dim), dtype=np.float32)
    w = (rng.standard_normal((groups, dim, cols), dtype=np.float32) / math.sqrt(dim)).astype(
        ml_dtypes.bfloat16 if wdtype == "bfloat16" else np.float32)
    w = w[0] if groups == 1 else w
    packed = np.ascontiguousarray(linear.pack(w, cfg["panel"]))
    assert packed.shape == linear.weight_shape(dim, cols, cfg["panel"], groups)
    y = tvm.runtime.empty((rows, groups * cols), "float32")
    lib["k"](tvm.runtime.tensor(x), tvm.runtime.tensor(packed), y)
    want = linear.reference(x, w.astype(np.float32))
    np.testing.assert_allclose(y.numpy(), want, rtol=0, atol=1e-6 * math.sqrt(dim) * float(np.abs(want).max()))


def test_tile_rows():
    """6-row register tiles where 6 divides M, past TAIL_ROWS rows and where no 4- or 5-row tile
    divides; otherwise the largest dividing tile; the FP8 linear's choice never has a partial tile."""
    assert [cpu_linear.tile_rows_for(r) for r in (1, 5, 8, 12, 13, 32, 50, 256)] == [1, 5, 4, 6, 6, 4, 6, 6]
    assert [cpu_linear.tile_rows_for(r, tail=False) for r in (13, 32, 50, 256)] == [1, 4, 5, 4]
    assert cpu_linear.choose_linear_fp8(rows=256, cols=256, block_n=128, features={"avx2", "f16c"})["tile_rows"] == 4


def test_pack_is_a_view_of_a_transposed_weight():
    """The panel layout of a stored [N, K] weight read as [K, N] is a strided view (no copy of a
    memory-mapped checkpoint array at compile time); element (j, k, p) is W[j*P + p, k]."""
    stored = np.arange(6 * 32, dtype=np.float32).reshape(32, 6)  # [N, K]
    packed = linear.pack(stored.T, 16)
    assert packed.shape == (1, 2, 6, 16) and np.shares_memory(packed, stored)
    for j, k, p in [(0, 0, 0), (1, 5, 15), (1, 2, 3)]:
        assert packed[0, j, k, p] == stored[j * 16 + p, k]
    grouped = np.arange(3 * 32 * 6, dtype=np.float32).reshape(3 * 32, 6)  # [G * N, K], as V4's wo_a
    packed = linear.pack(grouped.reshape(3, 32, 6).transpose(0, 2, 1), 16)
    assert packed.shape == (3, 2, 6, 16) and np.shares_memory(packed, grouped)
    for g, j, k, p in [(0, 0, 0, 0), (2, 1, 5, 15), (1, 1, 2, 3)]:
        assert packed[g, j, k, p] == grouped[g * 32 + j * 16 + p, k]
    with pytest.raises(ValueError, match="whole number of 16-wide panels"):
        linear.pack(np.zeros((4, 40), np.float32), 16)


def _graph(path, rows: int, dim: int, hidden: int, out: int, bf16: bool, seed: int = 0):
    """x [rows, dim] -> Gemm(W1 [hidden, dim], transB=1) -> Relu -> MatMul(W2 [hidden, out]) -> y,
    W1 stored bfloat16 and widened by a Cast when ``bf16``."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((hidden, dim)) / math.sqrt(dim)).astype(np.float32)
    w2 = (rng.standard_normal((hidden, out)) / math.sqrt(hidden)).astype(np.float32)
    nodes, inits = [], [numpy_helper.from_array(w2, "w2")]
    if bf16:
        w1_bf16 = w1.astype(ml_dtypes.bfloat16)
        inits.append(helper.make_tensor("w1_stored", TensorProto.BFLOAT16, w1.shape,
                                        w1_bf16.view(np.uint16).tobytes(), raw=True))
        nodes.append(helper.make_node("Cast", ["w1_stored"], ["w1"], to=TensorProto.FLOAT))
    else:
        inits.append(numpy_helper.from_array(w1, "w1"))
    nodes += [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
              helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "linears", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, out])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _run_both(onnx_path, art, rows, dim, seed=1):
    x = np.random.default_rng(seed).standard_normal((rows, dim), dtype=np.float32)
    got = tide.load(art).run({"x": x})["y"]
    want = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


def test_weight_matmuls_become_linears_on_packed_constants(tmp_path):
    """Both weight matmuls (the Gemm's transposed weight, the MatMul's [K, N] one) run as tide
    linears on [N/P, K, P] packed constants, and the result equals onnxruntime's."""
    onnx_path, art = str(tmp_path / "m.onnx"), str(tmp_path / "m.tide")
    _graph(onnx_path, 6, 512, 256, 64, False)
    result = compile_model(onnx_path, art, CompileOptions(progress=False))
    panel = cpu_linear.choose_linear(rows=6, cols=256, features=cpu_features(_tvm_target()))["panel"]
    assert sorted(k for k in result.kernels if k.startswith("tide_linear_")) == \
        [f"tide_linear_6x256x64_p{panel}", f"tide_linear_6x512x256_p{panel}"]
    shapes = {tuple(w.shape) for w in read_artifact(art).plan.weights}
    assert {(1, 256 // panel, 512, panel), (1, 64 // panel, 256, panel)} <= shapes
    assert not shapes & {(512, 256), (256, 512), (256, 64)}  # no unpacked copy kept
    _run_both(onnx_path, art, 6, 512)


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bfloat16"])
def test_weight_parameter_is_replaced_by_a_packed_view(tmp_path, monkeypatch, bf16):
    """A weight passed as a parameter (memory-mapped, not folded): its use becomes a new parameter
    ``<weight>.T.panelP`` bound to a packed view of the same array in its stored dtype (a bfloat16
    weight behind a widening Cast is read as bfloat16), the unpacked one is dropped, and the artifact
    holds the packed bytes."""
    monkeypatch.setattr(onnx_import, "PARAMETER_MIN_BYTES", 1 << 12)
    monkeypatch.setattr(onnx_import, "FOLD_MAX_ELEMENTS", 1 << 10)  # held out of the graph, as big weights are
    onnx_path, art = str(tmp_path / "m.onnx"), str(tmp_path / "m.tide")
    _graph(onnx_path, 4, 64, 96, 48, bf16)
    result = compile_model(onnx_path, art, CompileOptions(progress=False))
    stored = "w1_stored" if bf16 else "w1"
    a = read_artifact(art)
    names = [w.name for w in a.plan.weights]
    packed = [n for n in names if n.startswith(f"{stored}.T.panel")]
    assert len(packed) == 1 and stored not in names and f"{stored}.T" not in names, names
    panel = int(packed[0].rsplit("panel", 1)[1])
    assert f"tide_linear_4x64x96_p{panel}{'_bf16' if bf16 else ''}" in result.kernels
    init = next(i for i in onnx.load(onnx_path).graph.initializer if i.name == stored)
    w1 = numpy_helper.to_array(init) if not bf16 else \
        np.frombuffer(init.raw_data, np.uint16).view(ml_dtypes.bfloat16).reshape(tuple(init.dims))
    got = load_weight(a, names.index(packed[0]))
    assert str(got.dtype) == ("bfloat16" if bf16 else "float32")
    np.testing.assert_array_equal(got, linear.pack(w1.T, panel))
    _run_both(onnx_path, art, 4, 64)


def test_uneven_columns_and_kernels_off_keep_the_generic_matmul(tmp_path):
    """Columns that are not whole panels, or ``kernels=False``: no tide linear, same results."""
    onnx_path = str(tmp_path / "m.onnx")
    _graph(onnx_path, 3, 40, 68, 36, False)  # 68 and 36 columns: no whole panels of 8 or more
    art = str(tmp_path / "odd.tide")
    result = compile_model(onnx_path, art, CompileOptions(progress=False))
    assert not [k for k in result.kernels if k.startswith("tide_linear_")]
    _run_both(onnx_path, art, 3, 40)
    even = str(tmp_path / "m2.onnx")
    _graph(even, 3, 64, 96, 64, False)
    off = str(tmp_path / "off.tide")
    result = compile_model(even, off, CompileOptions(progress=False, kernels=False))
    assert not [k for k in result.kernels if k.startswith("tide_linear_")]
    _run_both(even, off, 3, 64)


def _grouped_graph(path, batch: int, seq: int, groups: int, dim: int, cols: int, seed: int = 0):
    """V4's grouped output projection: x [B, S, G, K] -> Einsum("bsgi,gli->bsgl", x, Reshape(W [G * N, K],
    [G, N, K])) -> y [B, S, G, N]."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((groups * cols, dim)) / math.sqrt(dim)).astype(np.float32)
    nodes = [helper.make_node("Reshape", ["w", "gnk"], ["w3"]),
             helper.make_node("Einsum", ["x", "w3"], ["y"], equation="bsgi,gli->bsgl")]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([groups, cols, dim], np.int64), "gnk")]
    graph = helper.make_graph(
        nodes, "grouped", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, groups, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, groups, cols])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return w


@pytest.mark.parametrize("as_param", [False, True], ids=["constant", "parameter"])
def test_grouped_einsum_becomes_a_grouped_linear(tmp_path, monkeypatch, as_param):
    """The grouped einsum on a reshaped stored [G * N, K] weight runs as one grouped tide linear on a
    [G, N/P, K, P] packing of it (a folded constant, or a packed view of the parameter), and y equals
    onnxruntime's in every element."""
    if as_param:
        monkeypatch.setattr(onnx_import, "PARAMETER_MIN_BYTES", 1 << 12)
        monkeypatch.setattr(onnx_import, "FOLD_MAX_ELEMENTS", 1 << 10)
    onnx_path, art = str(tmp_path / "g.onnx"), str(tmp_path / "g.tide")
    w = _grouped_graph(onnx_path, 2, 3, 4, 64, 32)
    result = compile_model(onnx_path, art, CompileOptions(progress=False))
    panel = cpu_linear.choose_linear(rows=6, cols=32, features=cpu_features(_tvm_target()))["panel"]
    assert f"tide_linear_6x4g64x32_p{panel}" in result.kernels, result.kernels
    a = read_artifact(art)
    shapes = [tuple(x.shape) for x in a.plan.weights]
    assert (4, 32 // panel, 64, panel) in shapes and (4 * 32, 64) not in shapes
    if as_param:
        names = [x.name for x in a.plan.weights]
        np.testing.assert_array_equal(load_weight(a, names.index(f"w.g4T.panel{panel}")),
                                      linear.pack(w.reshape(4, 32, 64).transpose(0, 2, 1), panel))
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 64), dtype=np.float32)
    got = tide.load(art).run({"x": x})["y"]
    want = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize("rows", [1, 4, 12])
def test_schedule_spreads_tasks_over_the_thread_pool(rows):
    """Whatever the row tile (a one-row decode tile included), the fused (group, panel, row tile)
    loop is the parallel one and nothing outside the register tile is unrolled."""
    import tvm

    target = _tvm_target()
    cfg = cpu_linear.choose_linear(rows=rows, cols=64, features=cpu_features(target))
    func = cpu_linear.schedule_linear(kernel.tag(linear.prim_func(rows, 128, 64, cfg["panel"], "float32", "k", 2),
                                                 "linear", **cfg), target)
    script = func.script()
    tasks = 2 * (64 // cfg["panel"]) * (rows // cfg["tile_rows"])
    assert re.findall(r"for (\w+) in T\.parallel\((\d+)\)", script) == [("g_jb_i_0_fused", str(tasks))], script
    assert all(int(n) <= cfg["tile_rows"] for n in re.findall(r"T\.unroll\((\d+)\)", script)), script
