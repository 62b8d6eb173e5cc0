"""General ONNX models through the whole spine: torch export -> tide compile -> C runtime,
checked element by element against onnxruntime on the same ONNX file."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import tide
from tide.compiler.driver import CompileOptions, compile_model
from tide.compiler.errors import CompileError


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = torch.nn.Linear(48, 96), torch.nn.Linear(96, 40)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.l1(x))
        return torch.softmax(self.l2(h), -1), torch.topk(h, 5, dim=-1)[1]


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.c2, self.fc = torch.nn.Conv2d(8, 16, 3, stride=2), torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.c1(x))), 2)
        return self.fc(torch.relu(self.c2(x)).mean((2, 3)))


class Encoder(torch.nn.Module):
    """A BERT-like encoder: embeddings, learned positions, 2 post-norm transformer layers."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(100, 32)
        self.pos = torch.nn.Parameter(torch.randn(16, 32))
        layer = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
        self.enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.ln = torch.nn.LayerNorm(32)

    def forward(self, ids):
        return self.ln(self.enc(self.emb(ids) + self.pos[: ids.shape[1]]))


def _export(module, example, path, names_out, train=False):
    torch.manual_seed(0)
    module.train(train)
    if not train:
        module.eval()
    torch.onnx.export(module, (example,), path, input_names=["x"], output_names=names_out, dynamo=False,
                      dynamic_axes={"x": {0: "batch"}}, opset_version=17)


CASES = {
    "mlp": (MLP, lambda rng: rng.standard_normal((3, 48), dtype=np.float32), ["y", "idx"], False),
    "cnn": (CNN, lambda rng: rng.standard_normal((2, 3, 16, 16), dtype=np.float32), ["y"], False),
    "encoder": (Encoder, lambda rng: rng.integers(0, 100, (2, 16)).astype(np.int64), ["y"], True),
}


def _compile_case(name, tmp_path_factory):
    make, draw, outs, train = CASES[name]
    tmp = tmp_path_factory.mktemp(name)
    rng = np.random.default_rng(0)
    x = draw(rng)
    onnx_path = str(tmp / f"{name}.onnx")
    torch.manual_seed(0)
    _export(make(), torch.from_numpy(x), onnx_path, outs, train)
    art = str(tmp / f"{name}.tide")
    compile_model(onnx_path, art, CompileOptions(batch=x.shape[0], progress=False))
    return name, onnx_path, art, x


@pytest.fixture(scope="module", params=sorted(CASES))
def compiled(request, tmp_path_factory):
    return _compile_case(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return _compile_case("mlp", tmp_path_factory)


def test_matches_onnxruntime(compiled):
    name, onnx_path, art, x = compiled
    model = tide.load(art)
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    for seed in range(3):  # fresh random inputs each run: the plan must not keep stale data
        rng = np.random.default_rng(100 + seed)
        feed = CASES[name][1](rng)
        want = sess.run(None, {"x": feed})
        got = model.run({"x": feed})
        assert list(got) == [o.name for o in sess.get_outputs()]
        for (out_name, g), w in zip(got.items(), want):
            assert g.dtype == w.dtype and g.shape == w.shape, out_name
            if g.dtype.kind == "f":
                # float32 with different reduction orders (tiled GEMM vs MLAS): a few ulps of the
                # largest terms; every element is checked.
                np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5 * float(np.abs(w).max()))
            else:
                np.testing.assert_array_equal(g, w)


def test_run_rejects_bad_inputs_and_stays_usable(compiled):
    name, _, art, x = compiled
    model = tide.load(art)
    good = model.run({"x": x})
    with pytest.raises(Exception, match="x"):
        model.run({"not_x": x})
    with pytest.raises(Exception, match="dtype|int64|float32"):
        model.run({"x": x.astype(np.float64 if x.dtype != np.float64 else np.float32)})
    with pytest.raises(Exception, match=r"'x'.*expected.*got"):
        model.run({"x": np.concatenate([x, x])})
    again = model.run({"x": x})
    for k in good:
        np.testing.assert_array_equal(good[k], again[k])


def test_large_weights_are_collected_after_each_stage(tmp_path, mlp, monkeypatch):
    """The driver frees what lowering replaced (garbage holding the weights) at the end of each
    entry's stages once the weights reach COLLECT_WEIGHT_BYTES; a small model skips the collections."""
    import gc

    from tide.compiler import driver

    _, onnx_path, _, x = mlp
    calls = []
    monkeypatch.setattr(gc, "collect", lambda *args: calls.append(args) or 0)
    compile_model(onnx_path, str(tmp_path / "small.tide"), CompileOptions(batch=x.shape[0], progress=False))
    assert calls == []
    monkeypatch.setattr(driver, "COLLECT_WEIGHT_BYTES", 0)
    compile_model(onnx_path, str(tmp_path / "large.tide"), CompileOptions(batch=x.shape[0], progress=False))
    assert len(calls) == 3  # the one entry: after the import, after lowering, after planning


def _node_model(tmp_path, node, inputs, outputs, opset=17, domain_imports=()):
    graph = helper.make_graph([node], "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *domain_imports])
    path = str(tmp_path / "m.onnx")
    onnx.save(model, path)
    return path


def test_unsupported_op_is_refused_by_name(tmp_path):
    path = _node_model(tmp_path, helper.make_node("NonZero", ["x"], ["y"], name="find_nonzero"),
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                       [helper.make_tensor_value_info("y", TensorProto.INT64, [1, None])])
    out = str(tmp_path / "m.tide")
    with pytest.raises(CompileError, match=r"find_nonzero.*NonZero.*opset 17.*depends on the data"):
        compile_model(path, out, CompileOptions(progress=False))
    assert not os.path.exists(out)


def test_custom_domain_op_is_refused(tmp_path):
    path = _node_model(tmp_path, helper.make_node("Frobnicate", ["x"], ["y"], name="frob", domain="acme"),
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                       domain_imports=[helper.make_opsetid("acme", 1)])
    with pytest.raises(CompileError, match=r"frob.*acme.*custom domain"):
        compile_model(path, str(tmp_path / "m.tide"), CompileOptions(progress=False))


def test_truncated_and_garbage_onnx_are_refused(tmp_path, mlp):
    _, onnx_path, _, _ = mlp
    data = open(onnx_path, "rb").read()
    for i, blob in enumerate([data[: len(data) // 2], b"\x00garbage" * 10, b""]):
        path = tmp_path / f"bad{i}.onnx"
        path.write_bytes(blob)
        out = tmp_path / f"bad{i}.tide"
        with pytest.raises(CompileError, match="bad"):
            compile_model(str(path), str(out), CompileOptions(progress=False))
        assert not out.exists()


def test_missing_symbolic_dim_is_named(tmp_path, mlp):
    _, onnx_path, _, _ = mlp
    with pytest.raises(CompileError, match="batch"):
        compile_model(onnx_path, str(tmp_path / "m.tide"), CompileOptions(progress=False))


def test_cli_compile_and_inspect(tmp_path, mlp):
    _, onnx_path, _, x = mlp
    art = str(tmp_path / "cli.tide")
    cmd = [sys.executable, "-m", "tide.cli"]
    res = subprocess.run(cmd + ["compile", onnx_path, "-o", art, "--batch", str(x.shape[0])],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "tide_topk" in res.stdout and "generic TVM lowering" in res.stdout
    res = subprocess.run(cmd + ["inspect", art], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for word in ("cpu", "main", "x", "idx", "arena", "weights", "tide_topk"):
        assert word in res.stdout, word
    res = subprocess.run(cmd + ["compile", onnx_path + ".missing", "-o", art], capture_output=True, text=True)
    assert res.returncode == 2 and "no such ONNX file" in res.stderr


def test_external_data_model_compiles_from_another_directory(tmp_path, mlp, monkeypatch):
    """Weights in an ONNX external-data file are found next to the model, whatever the cwd; a
    missing data file is named."""
    _, onnx_path, art, x = mlp
    model = onnx.load(onnx_path)
    ext = tmp_path / "models" / "mlp_ext.onnx"
    ext.parent.mkdir()
    onnx.save_model(model, str(ext), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="mlp_ext.onnx.data", size_threshold=0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = str(tmp_path / "ext.tide")
    compile_model(str(ext), out, CompileOptions(batch=x.shape[0], progress=False))
    want = tide.load(art).run({"x": x})
    got = tide.load(out).run({"x": x})
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    os.remove(tmp_path / "models" / "mlp_ext.onnx.data")
    with pytest.raises(CompileError, match="mlp_ext.onnx.data"):
        compile_model(str(ext), str(tmp_path / "missing.tide"), CompileOptions(batch=x.shape[0], progress=False))
