"""Static-shape ONNX -> Relax, through TVM's ONNX frontend.

Runs after ``tide.compiler.onnx_import.specialize`` (static shapes, folded constants, supported
ops only) and before ``tide.compiler.substitute``. Weights become Relax constants, so every
compile-time value is visible to the later passes; the plan builder turns them into weight buffers.
Converter failures are reported with the ONNX node's name, op type and opset.
"""

from __future__ import annotations

import contextlib

import onnx

from . import onnx_ops
from .errors import CompileError, sentence


@contextlib.contextmanager
def _converters(path: str, opset: int, function_converters: dict):
    """Adds tide's converters for ``tide``-domain function calls to the frontend's convert map
    (its extension point), its own ``Einsum`` converter (see ``_einsum``), ``Cast`` of bfloat16
    weights (``_widening_cast``), ``ReduceMax`` / ``ReduceMin`` over infinite slices
    (``_infinite_extremum``), an accurate ``Softplus`` (``_softplus``) and the transformer ops of
    ``onnx_ops`` (Attention, RotaryEmbedding, RMSNormalization, LayerNormalization), and names the
    ONNX node in every converter failure."""
    from tvm.relax.frontend.onnx import onnx_frontend

    importer = onnx_frontend.ONNXGraphImporter
    original = importer._convert_operator
    original_map = onnx_frontend._get_convert_map

    def convert_map():
        table = dict(original_map())
        table["Einsum"] = _converter_class("Einsum", _einsum)
        table["Cast"] = _widening_cast(table["Cast"])
        table["ReduceMax"] = _infinite_extremum(table["ReduceMax"], "max")
        table["ReduceMin"] = _infinite_extremum(table["ReduceMin"], "min")
        table["Softplus"] = _converter_class("Softplus", _softplus)
        table.update(onnx_ops.converter_classes(path))
        for name, fn in function_converters.items():
            table[name] = _converter_class(name, fn)
        return table

    def convert(self, op_name, inputs, attrs, op_opset):
        try:
            return original(self, op_name, inputs, attrs, op_opset)
        except CompileError:
            raise
        except Exception as err:
            node = attrs.get("tvm_custom", {}).get("name") or "(unnamed)"
            raise CompileError(
                f"{path}: node '{node}' (op {op_name}, opset {opset}): the ONNX frontend could not "
                f"convert it: {sentence(f'{type(err).__name__}: {err}')}") from err

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


def _softplus(bb, inputs, attrs):
    """ONNX ``Softplus``, ``log(1 + exp(x))``, as ``max(x, 0) + log1p(exp(-|x|))``: the plain
    ``log(1 + u)`` keeps only a few bits when ``u`` is small (x far from 0, where Softplus and Mish
    are nearly ``exp(x)``), and Relax has no log1p (the usual ``log(w) * u / (w - 1)`` correction is
    simplified away when the ops fuse). For u < 0.1, log1p is its Taylor series to u^7 (truncation
    below u^8 / 8, 1e-9 relative); above, ``log(1 + u)`` is within a few ulps."""
    from tvm import relax

    x = inputs[0]
    dtype = str(x.ty.dtype)
    u = bb.emit(relax.op.exp(relax.op.negative(relax.op.abs(x))))
    series = relax.op.divide(relax.const(1, dtype), relax.const(7, dtype))
    for k in range(6, 0, -1):   # u (1 - u (1/2 - u (1/3 - ... u / 7)))
        series = relax.op.subtract(relax.op.divide(relax.const(1, dtype), relax.const(k, dtype)),
                                   relax.op.multiply(u, series))
    log1p = relax.op.where(relax.op.less(u, relax.const(0.1, dtype)), relax.op.multiply(u, series),
                           relax.op.log(relax.op.add(relax.const(1, dtype), u)))
    return relax.op.add(relax.op.maximum(x, relax.const(0, dtype)), log1p)


# Relax ops that reduce over many elements: in float16 / bfloat16 they run in float32 and round
# once (``_widen_half_reductions``)
_HALF_REDUCTIONS = ("relax.matmul", "relax.sum", "relax.mean", "relax.prod", "relax.variance", "relax.std",
                    "relax.nn.softmax", "relax.nn.log_softmax", "relax.cumsum", "relax.nn.layer_norm",
                    "relax.nn.group_norm", "relax.nn.rms_norm", "relax.nn.conv1d", "relax.nn.conv2d",
                    "relax.nn.conv3d", "relax.nn.conv1d_transpose", "relax.nn.conv2d_transpose")


def _widen_half_reductions(mod):
    """``mod`` with every float16 / bfloat16 reduction (``_HALF_REDUCTIONS``) computed in float32
    and rounded once to its half type: TVM lowers them in the half type itself, losing bits with
    every term of a long sum, while the ONNX reference and onnxruntime's CPU kernels accumulate in
    float32. Elementwise ops stay in the half type (one rounding each, as the standard says)."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class Widen(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            name = getattr(call.op, "name", "")
            if name not in _HALF_REDUCTIONS:
                return call
            half = {str(a.ty.dtype) for a in call.args if isinstance(getattr(a, "ty", None), relax.TensorType)}
            if not half or not half <= {"float16", "bfloat16"} or len(half) != 1:
                return call
            wide = [self.builder_.emit(relax.op.astype(a, "float32")) if isinstance(a.ty, relax.TensorType) else a
                    for a in call.args]
            attrs = call.attrs
            if name == "relax.matmul":
                widened = relax.op.matmul(*wide, out_dtype="float32")
            else:
                widened = relax.Call(call.op, wide, attrs, call.ty_args)
            return relax.op.astype(self.builder_.emit(widened), half.pop())

    widen = Widen(mod)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            widen.builder_.update_func(gv, widen.visit_expr(func))
    return widen.builder_.get()


def _infinite_extremum(original, kind: str):
    """The frontend's ``ReduceMax`` / ``ReduceMin`` converter, corrected where every reduced element
    is -inf (max) / +inf (min): TVM's float reductions start from the lowest / highest FINITE value,
    so such a slice would come out as -FLT_MAX instead of -inf (an attention mask's fully masked row
    is tested exactly this way). The slices with no other value are counted and set to the infinity."""
    import numpy as np
    from tvm import relax

    reduce_op = f"relax.{kind}"

    def get_converter(_cls, opset):
        convert = original.get_converter(opset)

        def reduce(bb, inputs, attrs, params):
            out = convert(bb, inputs, attrs, params)
            data = inputs[0]
            if not (isinstance(out, relax.Call) and getattr(out.op, "name", "") == reduce_op and
                    str(data.ty.dtype).startswith(("float", "bfloat"))):
                return out
            dtype = str(data.ty.dtype)
            inf = relax.const(-np.inf if kind == "max" else np.inf, dtype)
            finite = relax.op.astype(relax.op.not_equal(data, inf), "int32")
            count = relax.op.sum(finite, axis=out.attrs.axis, keepdims=out.attrs.keepdims)
            reduced = bb.emit(out)
            return relax.op.where(relax.op.equal(count, relax.const(0, "int32")), inf, reduced)

        return reduce

    return type(f"TideReduce{kind.title()}", (), {"get_converter": classmethod(get_converter)})


def _converter_class(name: str, fn):
    """A frontend converter class whose conversion is ``fn(bb, inputs, attrs)``."""

    def get_converter(_cls, _opset):
        return lambda bb, inputs, attrs, _params: fn(
            bb, list(inputs), {k: v for k, v in attrs.items() if k != "tvm_custom"})

    return type(f"Tide{name}", (), {"get_converter": classmethod(get_converter)})


def to_relax(model: onnx.ModelProto, path: str, function_converters: dict | None = None):
    """Imports a static ONNX graph; returns the IRModule whose ``main`` takes the graph inputs, its
    half-precision reductions widened (``_widen_half_reductions``). ``function_converters`` maps a kept ``tide`` function name to ``fn(bb, inputs, attrs)``
    returning the Relax expression of its outputs (a ``relax.Tuple`` for several)."""
    import warnings

    from tvm.relax.frontend.onnx import from_onnx

    opset = next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))
    with _converters(path, opset, function_converters or {}), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            mod = from_onnx(model, opset=opset, keep_params_in_input=False)
        except CompileError:
            raise
        except Exception as err:
            raise CompileError(f"{path}: import into Relax failed: {sentence(f'{type(err).__name__}: {err}')}") \
                from err
    return _widen_half_reductions(mod)
