"""A small node builder shared by the main graph and the `tide` function bodies.

It names every value and node, emits small constants as Constant nodes (function bodies cannot
hold initializers), and papers over the few op signatures that changed between opset 17 and 23
(ReduceMean/ReduceMax take `axes` as an input from opset 18 on).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import AttributeProto, NodeProto, helper, numpy_helper

TIDE_DOMAIN = "tide"
TIDE_VERSION = 1

_AXES_AS_INPUT_SINCE = {"ReduceSum": 13, "ReduceMean": 18, "ReduceMax": 18}

_ATTR_KINDS = {
    "int": ("value_int", AttributeProto.INT),
    "float": ("value_float", AttributeProto.FLOAT),
    "ints": ("value_ints", AttributeProto.INTS),
}


class Builder:
    """Accumulates ONNX nodes with unique value and node names under a scope prefix."""

    def __init__(self, opset: int, scope: str):
        self.opset = opset
        self.scope = scope
        self.nodes: list[NodeProto] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self.scope}/{hint}_{self._count}"

    def op(self, op_type: str, *inputs: str, outputs: int | Sequence[str] = 1, domain: str = "",
           attr_refs: dict[str, tuple[str, int]] | None = None, **attrs) -> str | list[str]:
        """Adds one node. `outputs` is a count (fresh names) or explicit names; returns the
        output name, or the list of names when there are several. `attr_refs` maps an attribute
        of this node to (enclosing function attribute, AttributeProto type)."""
        if isinstance(outputs, int):
            out_names = [self.fresh(op_type) for _ in range(outputs)]
        else:
            out_names = list(outputs)
        node = helper.make_node(op_type, list(inputs), out_names, name=self.fresh(op_type + "_node"),
                                domain=domain, **attrs)
        for attr_name, (ref, kind) in (attr_refs or {}).items():
            node.attribute.append(helper.make_attribute_ref(attr_name, kind, ref_attr_name=ref))
        self.nodes.append(node)
        return out_names[0] if len(out_names) == 1 else out_names

    def call(self, fname: str, *inputs: str, outputs: int | Sequence[str] = 1,
             attr_refs: dict[str, tuple[str, int]] | None = None, **attrs) -> str | list[str]:
        """Calls a `tide` function."""
        return self.op(fname, *inputs, outputs=outputs, domain=TIDE_DOMAIN, attr_refs=attr_refs, **attrs)

    def rename(self, value: str, name: str) -> None:
        """Renames a produced value (e.g. to a declared function output) everywhere it occurs."""
        for node in self.nodes:
            for seq in (node.output, node.input):
                for i, v in enumerate(seq):
                    if v == value:
                        seq[i] = name
        for key, v in list(self._consts.items()):
            if v == value:
                del self._consts[key]

    # constants -----------------------------------------------------------------------------
    def const(self, value, dtype=None) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = self.fresh("const")
            self.nodes.append(helper.make_node("Constant", [], [name], name=self.fresh("Constant_node"),
                                               value=numpy_helper.from_array(arr, name)))
            self._consts[key] = name
        return self._consts[key]

    def i64(self, *values: int) -> str:
        """A 1-D int64 constant."""
        return self.const(np.array(values, dtype=np.int64))

    def scalar_i(self, value: int) -> str:
        return self.const(np.array(value, dtype=np.int64))

    def scalar_f(self, value: float) -> str:
        return self.const(np.array(value, dtype=np.float32))

    def attr(self, name: str, kind: str) -> str:
        """A Constant holding the enclosing function's attribute `name` (kind int/float/ints);
        int and float give a scalar tensor, ints a 1-D int64 tensor."""
        key = ("attr", name, kind)
        if key not in self._consts:
            attr_name, attr_type = _ATTR_KINDS[kind]
            self._consts[key] = self.op("Constant", outputs=[self.fresh(name)],
                                        attr_refs={attr_name: (name, attr_type)})
        return self._consts[key]

    # helpers over standard ops ---------------------------------------------------------------
    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool) -> str:
        if self.opset >= _AXES_AS_INPUT_SINCE[op_type]:
            return self.op(op_type, x, self.i64(*axes), keepdims=int(keepdims))
        return self.op(op_type, x, axes=list(axes), keepdims=int(keepdims))

    def shape(self, x: str, start: int | None = None, end: int | None = None) -> str:
        kwargs = {}
        if start is not None:
            kwargs["start"] = start
        if end is not None:
            kwargs["end"] = end
        return self.op("Shape", x, **kwargs)

    def dim(self, x: str, axis: int) -> str:
        """Scalar int64 size of `x` along `axis` (axis >= 0)."""
        return self.op("Squeeze", self.shape(x, axis, axis + 1), self.i64(0))

    def unsqueeze(self, x: str, *axes: int) -> str:
        return self.op("Unsqueeze", x, self.i64(*axes))

    def squeeze(self, x: str, *axes: int) -> str:
        return self.op("Squeeze", x, self.i64(*axes))

    def slice(self, x: str, start, end, axis: int) -> str:
        """Slice along one axis; start/end are Python ints or 1-D int64 value names."""
        s = self.i64(start) if isinstance(start, int) else start
        e = self.i64(end) if isinstance(end, int) else end
        return self.op("Slice", x, s, e, self.i64(axis))

    def to_1d(self, scalar: str) -> str:
        return self.unsqueeze(scalar, 0)

    def arange(self, n: str) -> str:
        """Range(0, n) for a scalar int64 value name."""
        return self.op("Range", self.scalar_i(0), n, self.scalar_i(1))

    def stack_last(self, *xs: str) -> str:
        """Stacks same-shape tensors along a new last axis."""
        return self.op("Concat", *[self.unsqueeze(x, -1) for x in xs], axis=-1)

    def batch_index(self, like: str, batch: str, rank: int) -> str:
        """Int64 tensor shaped like `like` ([B, ...], `rank` axes) holding the batch row index;
        `batch` is the scalar batch size."""
        rows = self.op("Reshape", self.arange(batch), self.i64(-1, *([1] * (rank - 1))))
        return self.op("Expand", rows, self.shape(like))

    def linear(self, x: str, weight: str) -> str:
        """y = x @ weight^T for x [..., in] and weight [out, in] (a Gemm on the flattened rows)."""
        rows = self.op("Reshape", x, self.op("Concat", self.i64(-1), self.shape(x, -1), axis=0))
        y = self.op("Gemm", rows, weight, transB=1)
        out_shape = self.op("Concat", self.shape(x, 0, -1), self.shape(weight, 0, 1), axis=0)
        return self.op("Reshape", y, out_shape)

    def rsqrt_mean_square(self, x: str, eps: str) -> str:
        """1 / sqrt(mean(x^2, -1, keepdims) + eps)."""
        var = self.reduce("ReduceMean", self.op("Mul", x, x), [-1], keepdims=True)
        return self.op("Reciprocal", self.op("Sqrt", self.op("Add", var, eps)))

    def neg_inf_where(self, keep: str, value: str | None = None) -> str:
        """Where(keep, value, -inf); value defaults to 0 (an additive mask)."""
        v = value if value is not None else self.scalar_f(0.0)
        return self.op("Where", keep, v, self.scalar_f(float("-inf")))

    def ge(self, a: str, b: str) -> str:
        """a >= b as Not(a < b) (GreaterOrEqual is not in the op set the compiler accepts)."""
        return self.op("Not", self.op("Less", a, b))
