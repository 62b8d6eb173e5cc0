"""A damaged or foreign artifact is refused with a clear error at load, never a crash; the
runtime stays usable. The artifact is a real compiled model (a small MLP)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tide
from tide.compiler import artifact
from tide.compiler.driver import CompileOptions, compile_model
from tide.runtime import TideError


def _weight() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def mlp_artifact(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("art")
    w = numpy_helper.from_array(_weight(), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])], [w])
    path = str(tmp / "m.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    out = str(tmp / "m.tide")
    compile_model(path, out, CompileOptions(progress=False))
    return out


def _load_error(path) -> str:
    with pytest.raises(TideError) as info:
        tide.load(path)
    return str(info.value)


def _works(path):
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    y = tide.load(path).run({"x": x})["y"]
    np.testing.assert_allclose(y, np.maximum(x @ _weight(), 0), rtol=1e-5, atol=1e-5)


def test_truncated_files_are_refused(mlp_artifact, tmp_path):
    data = open(mlp_artifact, "rb").read()
    for cut in (0, 10, 63, 64, 200, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.tide"
        bad.write_bytes(data[:cut])
        assert "truncated" in _load_error(str(bad)) or "smaller than" in _load_error(str(bad))
    _works(mlp_artifact)


def test_a_flipped_byte_in_every_section_is_detected(mlp_artifact, tmp_path):
    art = artifact.read_artifact(mlp_artifact)
    data = bytearray(open(mlp_artifact, "rb").read())
    regions = {"header": (8, 32), "table": (64, 64 + 48 * len(art.sections))}
    regions.update({name: (off, off + size) for name, (off, size) in art.sections.items()})
    for name, (lo, hi) in regions.items():
        for pos in (lo, (lo + hi) // 2, hi - 1):
            bad = bytearray(data)
            bad[pos] ^= 0x20
            path = tmp_path / f"{name}_{pos}.tide"
            path.write_bytes(bytes(bad))
            message = _load_error(str(path))
            assert "checksum" in message or "corrupt" in message or "header" in message, (name, pos, message)
    _works(mlp_artifact)


def test_wrong_version_and_target_are_named(mlp_artifact, tmp_path):
    data = bytearray(open(mlp_artifact, "rb").read())
    bad = bytearray(data)
    struct.pack_into("<I", bad, 8, 2)
    path = tmp_path / "v2.tide"
    path.write_bytes(bytes(bad))
    assert "version 2" in _load_error(str(path))

    art = artifact.read_artifact(mlp_artifact)
    weights = [artifact.load_weight(art, i) for i in range(len(art.plan.weights))]
    kernels = data[slice(art.sections["KERNELS_HOST"][0], sum(art.sections["KERNELS_HOST"]))]
    for target, expect in ((artifact.TargetInfo("cuda", "x86_64", 0, "sm_90"), "cuda"),
                           (artifact.TargetInfo("cpu", "aarch64", 0, ""), "aarch64")):
        path = str(tmp_path / f"{target.kind}-{target.host_arch}.tide")
        artifact.write_artifact(path, target, art.plan, bytes(kernels), weights, art.metadata, check=False)
        assert expect in _load_error(path)


def test_inspect_refuses_corrupt_artifacts(mlp_artifact, tmp_path):
    bad = tmp_path / "bad.tide"
    bad.write_bytes(open(mlp_artifact, "rb").read()[:-7])
    res = subprocess.run([sys.executable, "-m", "tide.cli", "inspect", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2 and "truncated" in res.stderr


def test_writer_refuses_an_invalid_plan_and_leaves_no_file(mlp_artifact, tmp_path):
    art = artifact.read_artifact(mlp_artifact)
    weights = [artifact.load_weight(art, i) for i in range(len(art.plan.weights))]
    art.plan.entries[0].calls[0].args[0] = ("buf", 999)
    out = tmp_path / "never.tide"
    with pytest.raises(artifact.ArtifactError, match="buffer 999 out of range"):
        artifact.write_artifact(str(out), art.target, art.plan, b"\x7fELF", weights, {})
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]
