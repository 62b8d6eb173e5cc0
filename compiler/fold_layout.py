"""Relax pass: data-movement ops and exact widening casts on constants folded with numpy, before
legalization.

Runs after kernel substitution (``tide.compiler.substitute``: the tide kernels have taken the
weights they read as stored) and before ``LegalizeOps`` in ``tide.compiler.lower.legalize_and_fuse``.
The ONNX-level folding (``onnx_import.fold_to_fixpoint``) leaves large constants alone, and the ONNX
frontend and the substitutions then reshape, transpose, expand, concatenate or widen weights in
Relax; Relax's own ``FoldConstant`` would fold each of those by compiling and running a kernel with
LLVM (about a tenth of a second apiece, a third of a small model's compile). Here each is one numpy
call: ``reshape``, ``expand_dims``, ``squeeze``, ``permute_dims``, ``concat``, ``shape_to_tensor`` of a
static shape (a tensor's ``shape_of`` included) and ``astype`` where every value converts exactly
(bfloat16, float16 or float8 to float32 or float64, float32 to float64, an integer to a wider one of
the same signedness), repeated through chains (a reshape of a folded transpose folds too): the same
values ``FoldConstant`` would compute. Everything else (arithmetic, rounding or truncating casts) is
left to ``FoldConstant``.
"""

from __future__ import annotations

import numpy as np


def fold_layout(mod):
    """``mod`` with ``main``'s layout ops on constants replaced by their values."""
    from tvm import relax
    from tvm.ir.expr import GenericConst
    from tvm.relax.expr_functor import PyExprMutator, mutator

    from .substitute import tvm_op

    ops = {name: tvm_op(f"relax.{name}") for name in
           ("reshape", "expand_dims", "squeeze", "permute_dims", "concat", "shape_to_tensor", "astype")}
    op_shape_of = tvm_op("relax.shape_of")

    def value(expr):
        """A constant's values, as a numpy view of its tensor where numpy can hold the dtype (no
        copy of a weight), else a copy; None for anything but a constant."""
        if isinstance(expr, relax.Var):
            expr = folder.lookup_binding(expr)
        if not isinstance(expr, GenericConst):
            return None
        tensor = expr.value
        return np.from_dlpack(tensor) if str(tensor.dtype) in _DLPACK_DTYPES else tensor.numpy()

    def ints(values) -> list[int] | None:
        out = [getattr(v, "value", v) for v in values]
        return [int(v) for v in out] if all(isinstance(v, (int, np.integer)) for v in out) else None

    def fold(call) -> np.ndarray | None:
        op = call.op
        if op == ops["shape_to_tensor"]:
            shape = call.args[0]
            if isinstance(shape, relax.Var):
                shape = folder.lookup_binding(shape)
            if isinstance(shape, relax.Call) and shape.op == op_shape_of:
                shape = getattr(shape.args[0].ty, "shape", None)
            dims = ints(shape.values) if isinstance(shape, relax.ShapeExpr) else None
            return None if dims is None else np.array(dims, dtype=np.int64)
        if op == ops["concat"]:
            parts = [value(a) for a in call.args[0].fields] if isinstance(call.args[0], relax.Tuple) else [None]
            if any(p is None for p in parts):
                return None
            return np.concatenate(parts, axis=int(call.attrs.axis))
        data = value(call.args[0])
        if data is None:
            return None
        if op == ops["astype"]:
            to = str(call.attrs.dtype)
            return data.astype(to) if _exact(str(call.args[0].ty.dtype), to) else None
        if op == ops["reshape"]:
            dims = ints(call.args[1].values) if isinstance(call.args[1], relax.ShapeExpr) else None
            return None if dims is None else data.reshape(dims)
        if op == ops["expand_dims"]:
            return np.expand_dims(data, tuple(int(a) for a in call.attrs.axis))
        if op == ops["squeeze"]:
            axis = call.attrs.axis
            return np.squeeze(data, None if axis is None else tuple(int(a) for a in axis))
        axes = call.attrs.axes
        return np.transpose(data, None if axes is None else [int(a) for a in axes])

    folding = set(ops.values())

    @mutator
    class Folder(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op not in folding:
                return call
            out = fold(call)
            return call if out is None else relax.const(np.ascontiguousarray(out), str(out.dtype))

    folder = Folder(mod)
    main = folder.visit_expr(mod["main"])
    out = folder.builder_.get()
    out["main"] = main
    return out


# dtypes numpy imports through DLPack (bfloat16 and float8 it does not know)
_DLPACK_DTYPES = frozenset({"bool", "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                            "uint16", "uint32", "uint64"})
_FLOAT_BITS = {"float8_e4m3fn": 8, "float8_e5m2": 8, "bfloat16": 16, "float16": 16, "float32": 32, "float64": 64}


def _exact(source: str, to: str) -> bool:
    """Whether every ``source`` value converts to ``to`` exactly (a widening cast)."""
    if source in _FLOAT_BITS and to in ("float32", "float64"):
        return _FLOAT_BITS[source] < _FLOAT_BITS[to]
    for kind in ("int", "uint"):
        if source.startswith(kind) and to.startswith(kind) and source[len(kind):].isdigit() and \
                to[len(kind):].isdigit():
            return int(source[len(kind):]) < int(to[len(kind):])
    return False
