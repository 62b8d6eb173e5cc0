"""Static-shape ONNX -> Relax, through TVM's ONNX frontend.

Runs after ``tide.compiler.onnx_import.specialize`` (static shapes, folded constants, supported
ops only) and before ``tide.compiler.substitute``. Weights become Relax constants, so every
compile-time value is visible to the later passes; the plan builder turns them into weight buffers.
Converter failures are reported with the ONNX node's name, op type and opset.
"""

from __future__ import annotations

import contextlib

import onnx

from .errors import CompileError


@contextlib.contextmanager
def _named_converter_errors(path: str, opset: int):
    from tvm.relax.frontend.onnx import onnx_frontend

    importer = onnx_frontend.ONNXGraphImporter
    original = importer._convert_operator

    def convert(self, op_name, inputs, attrs, op_opset):
        try:
            return original(self, op_name, inputs, attrs, op_opset)
        except CompileError:
            raise
        except Exception as err:
            node = attrs.get("tvm_custom", {}).get("name", "?")
            raise CompileError(
                f"{path}: node '{node}' (op {op_name}, opset {opset}): the ONNX frontend could not "
                f"convert it: {type(err).__name__}: {err}") from err

    importer._convert_operator = convert
    try:
        yield
    finally:
        importer._convert_operator = original


def to_relax(model: onnx.ModelProto, path: str):
    """Imports a static ONNX graph; returns the IRModule whose ``main`` takes the graph inputs."""
    import warnings

    from tvm.relax.frontend.onnx import from_onnx

    opset = next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))
    with _named_converter_errors(path, opset), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return from_onnx(model, opset=opset, keep_params_in_input=False)
        except CompileError:
            raise
        except Exception as err:
            raise CompileError(f"{path}: import into Relax failed: {type(err).__name__}: {err}") from err
