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
def _converters(path: str, opset: int, function_converters: dict):
    """Adds tide's converters for ``tide``-domain function calls to the frontend's convert map
    (its extension point), its own ``Einsum`` converter (see ``_einsum``) and ``Cast`` of bfloat16
    weights (``_widening_cast``), and names the ONNX node in every converter failure."""
    from tvm.relax.frontend.onnx import onnx_frontend

    importer = onnx_frontend.ONNXGraphImporter
    original = importer._convert_operator
    original_map = onnx_frontend._get_convert_map

    def convert_map():
        table = dict(original_map())
        table["Einsum"] = _converter_class("Einsum", _einsum)
        table["Cast"] = _widening_cast(table["Cast"])
        for name, fn in function_converters.items():
            table[name] = _converter_class(name, fn)
        return table

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
    onnx_frontend._get_convert_map = convert_map
    try:
        yield
    finally:
        importer._convert_operator = original
        onnx_frontend._get_convert_map = original_map


def _einsum(bb, inputs, attrs):
    """ONNX ``Einsum`` as the Relax ``einsum`` op (legalized later to the same TE computation the
    frontend would emit now): the op keeps its equation, so kernel substitution can recognise the
    grouped linear it may be."""
    from tvm import relax

    equation = attrs["equation"]
    return relax.op.einsum(inputs, equation.decode() if isinstance(equation, bytes) else equation)


def _widening_cast(original):
    """The frontend's ``Cast`` converter, except that a bfloat16 constant cast to float32 (a weight
    read through a widening cast) stays a Relax ``astype`` instead of being evaluated now: kernel
    substitution then reads the weight as stored, and only what no kernel absorbs is folded later."""
    import onnx
    from tvm import relax
    from tvm.ir.expr import GenericConst

    def get_converter(_cls, opset):
        convert = original.get_converter(opset)

        def cast(bb, inputs, attrs, params):
            data = inputs[0]
            if isinstance(data, GenericConst) and str(data.ty.dtype) == "bfloat16" and \
                    attrs.get("to") == onnx.TensorProto.FLOAT:
                return relax.op.astype(data, "float32")
            return convert(bb, inputs, attrs, params)

        return cast

    return type("TideCast", (), {"get_converter": classmethod(get_converter)})


def _converter_class(name: str, fn):
    """A frontend converter class whose conversion is ``fn(bb, inputs, attrs)``."""

    def get_converter(_cls, _opset):
        return lambda bb, inputs, attrs, _params: fn(
            bb, list(inputs), {k: v for k, v in attrs.items() if k != "tvm_custom"})

    return type(f"Tide{name}", (), {"get_converter": classmethod(get_converter)})


def to_relax(model: onnx.ModelProto, path: str, function_converters: dict | None = None):
    """Imports a static ONNX graph; returns the IRModule whose ``main`` takes the graph inputs.
    ``function_converters`` maps a kept ``tide`` function name to ``fn(bb, inputs, attrs)``
    returning the Relax expression of its outputs (a ``relax.Tuple`` for several)."""
    import warnings

    from tvm.relax.frontend.onnx import from_onnx

    opset = next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))
    with _converters(path, opset, function_converters or {}), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return from_onnx(model, opset=opset, keep_params_in_input=False)
        except CompileError:
            raise
        except Exception as err:
            raise CompileError(f"{path}: import into Relax failed: {type(err).__name__}: {err}") from err
