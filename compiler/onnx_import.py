"""ONNX loading, validation, shape specialization and constant folding.

Runs first in the pipeline: ONNX file -> (this module) -> a static-shape ONNX graph ready for the
Relax frontend (``tide.compiler.relax_import``). Nothing before it. After it, every tensor has a
static shape, every shape computation is folded to a constant, and every node is an op the
frontend (or a tide converter) accepts; anything else was refused with a CompileError naming the
node, op type, opset and reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.inliner
from onnx import helper, numpy_helper, shape_inference

from .errors import CompileError

# Constants up to this many elements are folded at compile time; larger ones (weights and their
# transforms) stay in the graph so their storage dtype is kept.
FOLD_MAX_ELEMENTS = 1 << 16

TIDE_DOMAIN = "tide"


@dataclass
class LoadedModel:
    """An ONNX model read from disk. Large initializers are held outside the protobuf (``weights``,
    memory-mapped when they are external data) and the graph keeps data-less initializers (name,
    dtype, dims), so graph passes never copy or serialize weight bytes."""

    path: str
    model: onnx.ModelProto
    weights: dict

    @property
    def opset(self) -> int:
        return _default_opset(self.model)


def _default_opset(model: onnx.ModelProto) -> int:
    version = _opset_version(model, "")
    if version is None:
        raise CompileError("model has no default-domain opset import")
    return version


def _opset_version(model: onnx.ModelProto, domain: str) -> int | None:
    """The opset the model imports for ``domain`` ("" and "ai.onnx": the default domain)."""
    default = ("", "ai.onnx")
    for imp in model.opset_import:
        if imp.domain == domain or (imp.domain in default and domain in default):
            return imp.version
    return None


def load(path: str) -> LoadedModel:
    """Reads and checks an ONNX file; malformed or truncated files raise CompileError."""
    if not os.path.isfile(path):
        raise CompileError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError, Message errors, ValueError ...
        raise CompileError(f"{path}: not a readable ONNX model ({type(err).__name__}: {err})") from err
    if not model.HasField("graph") or not model.graph.output:
        raise CompileError(f"{path}: ONNX model has no graph or no graph outputs")
    try:  # by path: external data files are then resolved next to the model, not in the cwd
        onnx.checker.check_model(path)
    except Exception as err:
        raise CompileError(f"{path}: ONNX model is invalid: {err}") from err
    base = os.path.dirname(os.path.abspath(path))
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in init.external_data}
            loc = os.path.join(base, info.get("location", ""))
            if not os.path.isfile(loc):
                raise CompileError(
                    f"{path}: initializer '{init.name}' refers to missing external data file {loc}")
    weights = {}
    for init in model.graph.initializer:
        small = int(np.prod(init.dims, dtype=np.int64)) <= FOLD_MAX_ELEMENTS
        if small and init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        try:
            value = _read_initializer(init, base)
        except Exception as err:
            raise CompileError(f"{path}: initializer '{init.name}' cannot be read: {err}") from err
        if small:  # small constants stay in the graph, where the folder can use them
            init.CopyFrom(numpy_helper.from_array(np.array(value), init.name))
            continue
        weights[init.name] = value
        init.CopyFrom(onnx.TensorProto(name=init.name, data_type=init.data_type, dims=list(init.dims)))
    return LoadedModel(path=path, model=model, weights=weights)


def _read_initializer(init: onnx.TensorProto, base: str) -> np.ndarray:
    """The initializer's values; external data is memory-mapped, not read."""
    if init.data_location != onnx.TensorProto.EXTERNAL:
        return numpy_helper.to_array(init)
    info = {e.key: e.value for e in init.external_data}
    dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
    count = int(np.prod(init.dims, dtype=np.int64))
    offset = int(info.get("offset", 0))
    length = int(info.get("length", count * dtype.itemsize))
    if length != count * dtype.itemsize:
        raise ValueError(f"external data length {length} != {count} x {dtype.itemsize} bytes")
    location = os.path.join(base, info["location"])
    if offset + length > os.path.getsize(location):
        raise ValueError(f"external data [{offset}, {offset + length}) lies outside {location}")
    return np.memmap(location, dtype=dtype, mode="r", offset=offset, shape=tuple(init.dims))


# Weights of at least this many bytes enter Relax as function parameters bound to the held-out
# (memory-mapped) arrays instead of as constants, so importing never copies them; compile-time
# transforms (folding) then do not apply to them.
PARAMETER_MIN_BYTES = 1 << 30
# Weights stored narrower than float32 (bf16, fp16) are never folded (a fold would widen them: the
# kernels read them as stored), so those of this size or more are parameters too: a V4 checkpoint's
# bf16 embedding and head (about 1 GB each) are then memory-mapped, not copied at every entry's import.
NARROW_PARAMETER_MIN_BYTES = 16 << 20
# tide functions whose first input is a quantized weight (docs/onnx-contract.md, section 7)
QUANTIZED_READERS = ("DequantizeFP8", "DequantizeFP4")


def weights_as_inputs(model: onnx.ModelProto, weights: dict) -> tuple[onnx.ModelProto, dict]:
    """Turns the held-out initializers of PARAMETER_MIN_BYTES or more (NARROW_PARAMETER_MIN_BYTES for
    bf16 / fp16 ones) into trailing graph inputs; returns the model and those parameters (name ->
    array) in input order.

    Folding does not reach parameters, so a layout change the graph asks of one is made here, once,
    at compile time: a ``Gemm(x, W, transB=1)`` reads ``W`` through a new parameter ``W.T`` (a
    transposed view of the memory-mapped array, written out in that layout), never transposing
    gigabytes at run time. ``W`` itself stays only if something else (an embedding Gather) reads it."""
    def threshold(array: np.ndarray) -> int:
        narrow = array.dtype.kind in "fV" and array.dtype.itemsize == 2   # fp16, bf16 (ml_dtypes: "V")
        return min(NARROW_PARAMETER_MIN_BYTES, PARAMETER_MIN_BYTES) if narrow else PARAMETER_MIN_BYTES

    big = {i.name: i for i in model.graph.initializer if i.name in weights
           and weights[i.name].size * weights[i.name].dtype.itemsize >= threshold(weights[i.name])}
    # quantized weights and their scales (what tide.DequantizeFP8 / FP4 read) are parameters
    # whatever their size, so that no compile-time fold turns them into float32: they reach the
    # artifact as stored, under their own names
    weights = dict(weights)
    quantized = {name for node in model.graph.node if node.domain == "tide" and node.op_type in QUANTIZED_READERS
                 for name in node.input[:2]}
    for init in model.graph.initializer:
        if init.name in quantized and init.name not in big:
            big[init.name] = init
            if init.name not in weights:
                weights[init.name] = numpy_helper.to_array(init)
    params: dict = {}
    if not big:
        return model, params
    transposed: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in big:
            continue
        attrs = {a.name: a for a in node.attribute}
        if "transB" not in attrs or helper.get_attribute_value(attrs["transB"]) != 1 or \
                len(big[node.input[1]].dims) != 2:
            continue
        name = node.input[1]
        transposed[name] = f"{name}.T"
        node.input[1] = transposed[name]
        attrs["transB"].i = 0
    used = {name for node in model.graph.node for name in node.input}
    keep = [i for i in model.graph.initializer if i.name not in big]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    for name, init in big.items():
        if name in used:
            model.graph.input.append(helper.make_tensor_value_info(name, init.data_type, list(init.dims)))
            params[name] = weights[name]
        if name in transposed:
            model.graph.input.append(helper.make_tensor_value_info(transposed[name], init.data_type,
                                                                   list(init.dims)[::-1]))
            params[transposed[name]] = weights[name].T
    return model, params


def quantized_formats(model: onnx.ModelProto) -> dict[str, str]:
    """The stored format of each quantized weight of the graph: initializer name -> "fp8" or "fp4"
    (what tide.DequantizeFP8 / FP4 read), and "e8m0" for their scales."""
    formats = {}
    for node in model.graph.node:
        if node.domain == "tide" and node.op_type in QUANTIZED_READERS:
            formats[node.input[0]] = "fp8" if node.op_type == "DequantizeFP8" else "fp4"
            formats[node.input[1]] = "e8m0"
    return formats


def with_weights(model: onnx.ModelProto, weights: dict) -> onnx.ModelProto:
    """Puts the held-out weight values back into the (specialized) graph's initializers."""
    for init in model.graph.initializer:
        if init.name in weights and not init.raw_data:
            init.raw_data = np.ascontiguousarray(weights[init.name]).tobytes()
    return model


def symbolic_dims(model: onnx.ModelProto) -> dict[str, list[tuple[str, int]]]:
    """Maps each symbolic dimension name to the (input, axis) pairs that carry it."""
    dims: dict[str, list[tuple[str, int]]] = {}
    init_names = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        for axis, d in enumerate(inp.type.tensor_type.shape.dim):
            if d.HasField("dim_param") or not d.HasField("dim_value"):
                dims.setdefault(d.dim_param or f"{inp.name}:{axis}", []).append((inp.name, axis))
    return dims


def sinkhorn_kernel_usable(path: str, model: onnx.ModelProto) -> bool:
    """Whether ``tide.HyperConnectionPre`` calls can be served by their kernel (``tide.ops.hc_pre``),
    which takes the Sinkhorn iteration count from the calls' ``sinkhorn_iters`` attribute while the
    function body has the loop unrolled. False for a function that does not declare the attribute
    (an older export: its body is inlined and lowered generically); a call whose count disagrees
    with the body's normalizations (``2 * iters - 1`` Div nodes) is a CompileError naming the node."""
    function = next((f for f in model.functions if f.domain == TIDE_DOMAIN and f.name == "HyperConnectionPre"),
                    None)
    if function is None or "sinkhorn_iters" not in function.attribute:
        return False
    divisions = sum(n.op_type == "Div" for n in function.node)
    for node in model.graph.node:
        if node.domain != TIDE_DOMAIN or node.op_type != "HyperConnectionPre":
            continue
        iters = _attr(node, "sinkhorn_iters")
        if not isinstance(iters, int) or iters < 1 or 2 * iters - 1 != divisions:
            raise CompileError(f"{path}: node '{node.name}' (tide.HyperConnectionPre): attribute "
                               f"'sinkhorn_iters' is {iters!r}, but the function body unrolls "
                               f"{(divisions + 1) / 2:g} Sinkhorn iterations ({divisions} normalizations)")
    return True


def specialize(loaded: LoadedModel, dim_values: dict[str, int],
               kernel_functions: frozenset[str] = frozenset()) -> onnx.ModelProto:
    """Returns a copy of the model with every symbolic input dimension set to a static value.

    Calls of the ``tide``-domain functions named in ``kernel_functions`` stay single nodes (a tide
    kernel serves each, see ``tide.compiler.substitute``); every other local function is inlined.
    Then shapes are inferred and constant subgraphs folded until nothing changes.
    """
    model = onnx.ModelProto()
    model.CopyFrom(loaded.model)
    missing = [d for d in symbolic_dims(model) if d not in dim_values]
    if missing:
        raise CompileError(
            f"{loaded.path}: symbolic dimension(s) {missing} need a value "
            "(--batch / --seq / prefill chunk options)")
    for inp in model.graph.input:
        for axis, d in enumerate(inp.type.tensor_type.shape.dim):
            name = d.dim_param or f"{inp.name}:{axis}"
            if name in dim_values:
                d.Clear()
                d.dim_value = int(dim_values[name])
    for out in model.graph.output:
        for d in out.type.tensor_type.shape.dim:
            if d.dim_param in dim_values:
                value = int(dim_values[d.dim_param])
                d.Clear()
                d.dim_value = value
    del model.graph.value_info[:]
    kept_shapes = {}
    if model.functions and kernel_functions:
        # ONNX shape inference does not always see through a kept function call; the static shapes
        # of the calls' outputs come from the same graph with every function inlined.
        inlined = fold_to_fixpoint(loaded.path, onnx.inliner.inline_local_functions(model), frozenset())
        shapes = value_shapes(inlined)
        kept_shapes = {o: shapes[o] for n in model.graph.node if n.domain == TIDE_DOMAIN
                       and n.op_type in kernel_functions for o in n.output if o in shapes}
    if model.functions:
        keep = [(TIDE_DOMAIN, name) for name in sorted(kernel_functions)]
        model = onnx.inliner.inline_selected_functions(model, keep, exclude=True)
    model = fold_to_fixpoint(loaded.path, model, kernel_functions, kept_shapes)
    _check_static(loaded.path, model)
    _check_tensors(loaded.path, model)
    _check_modes(loaded.path, model)
    return model


def fold_to_fixpoint(path: str, model: onnx.ModelProto, kernel_functions: frozenset[str],
                     kept_shapes: dict | None = None) -> onnx.ModelProto:
    """``model`` checked (supported ops, static operands), then shape-inferred and its constant
    subgraphs folded until nothing changes; calls of ``kernel_functions`` stay single nodes."""
    _check_supported(path, model, kernel_functions)
    check_static_operands(path, model)
    for _ in range(8):
        model = _infer(path, model, kept_shapes)
        if not _fold_once(path, model):
            break
    return _infer(path, model, kept_shapes)


def _infer(path: str, model: onnx.ModelProto, kept_shapes: dict | None = None) -> onnx.ModelProto:
    if kept_shapes:
        known = {vi.name for vi in model.graph.value_info}
        for name, (dims, elem_type) in kept_shapes.items():
            if name not in known and None not in dims:
                model.graph.value_info.append(helper.make_tensor_value_info(name, elem_type, dims))
    try:
        return shape_inference.infer_shapes(model, check_type=True, strict_mode=False, data_prop=True)
    except Exception as err:
        raise CompileError(f"{path}: shape inference failed: {err}") from err


def _widens_weight(node: onnx.NodeProto, consts: dict) -> bool:
    """A ``Cast`` of a bfloat16 initializer (a weight read through a widening cast): left in the graph
    so that kernel substitution reads the weight as stored (``tide.compiler.substitute``) instead of
    a float32 copy."""
    return node.op_type == "Cast" and node.input[0] in consts and consts[node.input[0]].dtype.name == "bfloat16"


def value_shapes(model: onnx.ModelProto) -> dict[str, tuple[list[int | None], int]]:
    """Every value's dims (None where symbolic) and ONNX element type, as the graph declares them."""
    out = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        out[vi.name] = (dims, t.elem_type)
    for init in model.graph.initializer:
        out[init.name] = (list(init.dims), init.data_type)
    return out


def _fold_once(path: str, model: onnx.ModelProto) -> bool:
    """Folds every node whose inputs are known constants (or static shapes); True if any changed."""
    graph = model.graph
    consts: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        if int(np.prod(init.dims, dtype=np.int64)) <= FOLD_MAX_ELEMENTS:
            consts[init.name] = numpy_helper.to_array(init)
    shapes = value_shapes(model)
    opset = _default_opset(model)
    kept, new_inits, changed = [], [], False
    for node in graph.node:
        value = None
        if node.domain in ("", "ai.onnx") and node.op_type == "Shape" and node.input[0] in shapes:
            dims, _ = shapes[node.input[0]]
            if all(d is not None for d in dims):
                start = next((a.i for a in node.attribute if a.name == "start"), 0)
                end = next((a.i for a in node.attribute if a.name == "end"), len(dims))
                value = [np.array(dims, dtype=np.int64)[start:end]]
        elif node.op_type == "Constant":
            value = _evaluate(path, node, consts, opset)
        elif node.domain in ("", "ai.onnx") and all(i == "" or i in consts for i in node.input) and \
                not _widens_weight(node, consts):
            outs_small = True
            for o in node.output:
                if o in shapes:
                    dims, _ = shapes[o]
                    if None in dims or int(np.prod(dims, dtype=np.int64)) > FOLD_MAX_ELEMENTS:
                        outs_small = False
                else:
                    outs_small = False
            if outs_small and node.op_type not in ("RandomNormal", "RandomUniform", "RandomNormalLike",
                                                   "RandomUniformLike", "Multinomial", "Bernoulli"):
                value = _evaluate(path, node, consts, opset)
        if value is None:
            kept.append(node)
            continue
        changed = True
        for name, arr in zip(node.output, value):
            arr = np.asarray(arr)
            consts[name] = arr
            new_inits.append(numpy_helper.from_array(arr, name))
    if not changed:
        return False
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_inits)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    del graph.value_info[:]
    return True


def _evaluate(path, node, consts, opset):
    from onnx.reference import ReferenceEvaluator

    inputs = [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(consts[i].dtype),
                                            consts[i].shape) for i in node.input if i]
    outputs = [helper.make_empty_tensor_value_info(o) for o in node.output]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    single = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        return ReferenceEvaluator(single).run(None, {i: consts[i] for i in node.input if i})
    except Exception as err:
        raise CompileError(
            f"{path}: node '{node.name}' ({node.op_type}, opset {opset}): constant folding failed: {err}"
        ) from err


def _check_static(path: str, model: onnx.ModelProto) -> None:
    shapes = value_shapes(model)
    for out in model.graph.output:
        dims = shapes.get(out.name, ([None], 0))[0]
        if None in dims:
            raise CompileError(
                f"{path}: output '{out.name}' has a data-dependent shape {dims}; tide compiles static "
                "execution plans, so every shape must follow from the input shapes")


def _dtype_name(elem_type: int) -> str:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:  # noqa: BLE001  (a type numpy has no dtype for)
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _check_tensors(path: str, model: onnx.ModelProto) -> None:
    """Refuses graph inputs, outputs and node results whose dtype tide's runtime does not hold, and
    empty graph inputs and outputs (after ``specialize``, so every result has its inferred type)."""
    from ..runtime.dtypes import DTYPES

    known = ", ".join(DTYPES)
    shapes = value_shapes(model)
    inits = {i.name for i in model.graph.initializer}
    opset = _opset_version(model, "")
    for vi in [i for i in model.graph.input if i.name not in inits] + list(model.graph.output):
        kind = "input" if vi in model.graph.input else "output"
        if not vi.type.HasField("tensor_type"):
            raise CompileError(f"{path}: graph {kind} '{vi.name}' is not a tensor (a sequence, map or optional); "
                               "tide compiles tensors only")
        dims, elem = shapes.get(vi.name, ([], vi.type.tensor_type.elem_type))
        if _dtype_name(elem) not in DTYPES:
            raise CompileError(f"{path}: graph {kind} '{vi.name}' is {_dtype_name(elem)}, a dtype tide does not "
                               f"compile (it compiles {known})")
        if 0 in dims:
            raise CompileError(f"{path}: graph {kind} '{vi.name}' is empty (shape {dims}); tide does not compile "
                               "empty tensors")
    for node in model.graph.node:
        for out in node.output:
            if out in shapes and _dtype_name(shapes[out][1]) not in DTYPES:
                raise CompileError(
                    f"{path}: node '{node.name or node.output[0]}' (op {node.op_type}, opset {opset}): its output "
                    f"'{out}' is {_dtype_name(shapes[out][1])}, a dtype tide does not compile (it compiles {known})")


def frontend_ops() -> set[str]:
    """The default-domain ops the Relax import has a converter for: TVM's frontend's and tide's own
    (``tide.compiler.onnx_ops``)."""
    from tvm.relax.frontend.onnx import onnx_frontend

    from . import onnx_ops

    return set(onnx_frontend._get_convert_map()) | {"Constant"} | set(onnx_ops.CONVERTERS)


# The default-domain ops tide compiles: each passes ONNX's backend node tests but for the modes it
# refuses by name (``_REFUSED_MODES``, dtypes the runtime does not hold, empty tensors, operands
# that must be constants); ``tests/onnx_conformance.py`` checks it and writes docs/onnx-ops.md from
# it. Every other op is refused.
SUPPORTED_OPS = frozenset({
    "Abs", "Acos", "Acosh", "Add", "AffineGrid", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh",
    "Attention", "AveragePool", "BatchNormalization", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor",
    "BlackmanWindow", "Cast", "CastLike", "Ceil", "CenterCropPad", "Clip", "Concat", "Constant", "ConstantOfShape",
    "Conv", "ConvTranspose", "Cos", "Cosh", "DepthToSpace", "Div", "Dropout", "DynamicQuantizeLinear", "Einsum",
    "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor", "Gather", "GatherElements", "GatherND",
    "Gelu", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample",
    "GroupNormalization", "HammingWindow", "HannWindow", "HardSigmoid", "HardSwish", "Hardmax", "Identity",
    "InstanceNormalization", "IsInf", "IsNaN", "LRN", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual",
    "Log", "LogSoftmax", "LpPool", "MatMul", "MatMulInteger", "Max", "MaxPool", "MaxUnpool", "Mean",
    "MeanVarianceNormalization", "Min", "Mod", "Mul", "Neg", "NegativeLogLikelihoodLoss", "Not", "Or", "PRelu",
    "Pad", "Pow", "RMSNormalization", "Range", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
    "Relu", "Reshape", "RotaryEmbedding", "Round", "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape",
    "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign", "Split",
    "Sqrt", "Squeeze", "Sub", "Sum", "Swish", "Tan", "Tanh", "ThresholdedRelu", "Tile", "TopK", "Transpose",
    "Trilu", "Unsqueeze", "Where", "Xor",
})

# Ops the frontend lists but tide refuses, with the reason.
_REFUSED = {
    "If": "control flow is not compiled into static plans",
    "Loop": "control flow is not compiled into static plans",
    "Scan": "control flow is not compiled into static plans",
    "NonZero": "its output shape depends on the data",
    "Unique": "its output shape depends on the data",
    "Compress": "its output shape depends on the data",
    "RandomNormal": "random ops are not deterministic",
    "RandomUniform": "random ops are not deterministic",
    "RandomNormalLike": "random ops are not deterministic",
    "RandomUniformLike": "random ops are not deterministic",
    "Multinomial": "random ops are not deterministic",
    "Bernoulli": "random ops are not deterministic",
    "CumSum": "TVM's CPU lowering has no kernel for cumulative sums",
}


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _dropout_mode(node: onnx.NodeProto, _types: dict) -> str | None:
    if len(node.output) > 1 and node.output[1]:
        return "its mask output is not compiled (Dropout compiles as inference: the identity)"
    if len(node.input) > 2 and node.input[2]:
        return "a training_mode input is not compiled (Dropout compiles as inference: the identity)"
    return None


def _float_input(node: onnx.NodeProto, types: dict) -> bool:
    return _dtype_name(types.get(node.input[0], onnx.TensorProto.UNDEFINED)).startswith(("float", "bfloat"))


# Modes of otherwise supported ops that tide refuses, per op: a check of the node and the element
# types of the (specialized) graph's values returning the reason, or None when the node is fine.
# Each is a mode whose lowering is known to give results that differ from ONNX's.
_REFUSED_MODES = {
    "Dropout": _dropout_mode,
    "ConvTranspose": lambda node, _t: ("its output_shape attribute is not compiled (give pads instead)"
                                       if _attr(node, "output_shape") else None),
    "BatchNormalization": lambda node, _t: ("training_mode=1 is not compiled (inference statistics only)"
                                            if _attr(node, "training_mode", 0) else None),
    "IsInf": lambda node, _t: ("detect_positive=0 or detect_negative=0 is not compiled"
                               if not (_attr(node, "detect_positive", 1) and _attr(node, "detect_negative", 1))
                               else None),
    **{op: (lambda node, types: "bool values are not compiled (TVM has no identity value for a bool "
                                "reduction)" if _dtype_name(types.get(node.input[0], 0)) == "bool" else None)
       for op in ("ReduceMax", "ReduceMin")},
    "Pow": lambda node, types: ("an integer base is not compiled (TVM's power is defined on floating point only)"
                                if not _float_input(node, types) else None),
    "Mod": lambda node, types: ("floating-point values are not compiled (the results at infinities and zero "
                                "divisors differ from ONNX's)" if _float_input(node, types) else None),
}


def _check_modes(path: str, model: onnx.ModelProto) -> None:
    """Refuses the modes of ``_REFUSED_MODES`` (after ``specialize``: element types inferred)."""
    types = {name: elem for name, (_, elem) in value_shapes(model).items()}
    opset = _opset_version(model, "")
    for node in model.graph.node:
        check = _REFUSED_MODES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        why = check(node, types) if check else None
        if why:
            raise CompileError(f"{path}: node '{node.name or node.output[0]}' (op {node.op_type}, opset {opset}): "
                               f"unsupported: {why}")


def _check_supported(path: str, model: onnx.ModelProto, kernel_functions: frozenset[str]) -> None:
    supported = frontend_ops()
    for node in model.graph.node:
        opset = _opset_version(model, node.domain)
        where = f"{path}: node '{node.name or node.output[0]}' (op {node.domain + '.' if node.domain else ''}{node.op_type}, opset {opset})"
        if node.domain == TIDE_DOMAIN and node.op_type in kernel_functions:
            continue
        if node.domain not in ("", "ai.onnx"):
            raise CompileError(f"{where}: unsupported: custom domain '{node.domain}' has no tide converter")
        if node.op_type in _REFUSED:
            raise CompileError(f"{where}: unsupported: {_REFUSED[node.op_type]}")
        if node.op_type not in supported:
            raise CompileError(f"{where}: unsupported: no converter for this op type")
        if node.op_type not in SUPPORTED_OPS:
            raise CompileError(f"{where}: unsupported: not among the ops tide compiles (its lowering fails "
                               "ONNX's conformance tests; docs/onnx-ops.md lists the ops tide compiles)")


# Operands that must be known at compile time, per op: (first opset where the operand is an input,
# input index, operand name). Each of them decides an output shape, or a parameter the Relax
# frontend builds into the computation (a reduction's axes, a cumulative sum's axis, Trilu's
# diagonal). tide compiles static plans, so such an operand must be a constant, or computed from
# constants and static shapes only; a graph input that feeds one is refused before import
# (``check_static_operands``) unless ``bind_inputs`` gave it a value (``tide compile --bind``).
STATIC_OPERANDS: dict[str, tuple[tuple[int, int, str], ...]] = {
    "Reshape": ((5, 1, "shape"),),
    "Expand": ((8, 1, "shape"),),
    "Tile": ((6, 1, "repeats"),),
    "ConstantOfShape": ((9, 0, "shape"),),
    "Slice": ((10, 1, "starts"), (10, 2, "ends"), (10, 3, "axes"), (10, 4, "steps")),
    "Squeeze": ((13, 1, "axes"),),
    "Unsqueeze": ((13, 1, "axes"),),
    "Split": ((13, 1, "split"),),
    "ReduceSum": ((13, 1, "axes"),),
    **{op: ((18, 1, "axes"),) for op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                                           "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")},
    "TopK": ((10, 1, "k"),),
    "Range": ((11, 0, "start"), (11, 1, "limit"), (11, 2, "delta")),
    "CumSum": ((11, 1, "axis"),),
    "Trilu": ((14, 1, "k"),),
    "Pad": ((11, 1, "pads"), (11, 2, "constant_value"), (18, 3, "axes")),
    "Resize": ((10, 1, "scales"), (11, 1, "roi"), (11, 2, "scales"), (11, 3, "sizes")),
    "Upsample": ((9, 1, "scales"),),
    "OneHot": ((9, 1, "depth"), (9, 2, "values")),
    "Dropout": ((12, 1, "ratio"), (12, 2, "training_mode")),
    "AffineGrid": ((20, 1, "size"),),
    "MaxUnpool": ((11, 2, "output_shape"),),
}

# ops whose output depends only on their input's shape (static once specialized), not its values
_SHAPE_READERS = ("Shape", "Size")


def static_operands(op_type: str, opset: int) -> dict[int, str]:
    """Input index -> operand name of ``op_type``'s compile-time operands at ``opset``
    (``STATIC_OPERANDS``; a later opset's entry for an index replaces an earlier one's)."""
    out: dict[int, str] = {}
    for since, index, name in STATIC_OPERANDS.get(op_type, ()):
        if opset >= since:
            out[index] = name
    return out


@dataclass(frozen=True)
class StaticOperandUse:
    """A graph input whose values reach a compile-time operand of a node."""

    input: str
    node: str
    op_type: str
    operand: str
    direct: bool  # the operand is the graph input itself (not computed from it)


def static_operand_uses(model: onnx.ModelProto) -> list[StaticOperandUse]:
    """Every (graph input, node) pair where the input's values flow into one of the node's
    ``STATIC_OPERANDS``; values flow through every node but ``Shape`` and ``Size``."""
    opset = _opset_version(model, "") or 0
    inits = {i.name for i in model.graph.initializer}
    sources: dict[str, frozenset[str]] = {i.name: frozenset([i.name]) for i in model.graph.input
                                          if i.name not in inits}
    uses = []
    for node in model.graph.node:
        default = node.domain in ("", "ai.onnx")
        if default:
            for index, operand in sorted(static_operands(node.op_type, opset).items()):
                name = node.input[index] if index < len(node.input) else ""
                for source in sorted(sources.get(name, ())):
                    uses.append(StaticOperandUse(source, node.name or node.output[0], node.op_type, operand,
                                                 source == name))
        if default and node.op_type in _SHAPE_READERS:
            continue
        reached = frozenset().union(*(sources.get(i, frozenset()) for i in node.input))
        if reached:
            for o in node.output:
                sources[o] = reached
    return uses


def check_static_operands(path: str, model: onnx.ModelProto) -> None:
    """Refuses (before import) a graph whose compile-time operands depend on a graph input."""
    uses = static_operand_uses(model)
    if not uses:
        return
    use = uses[0]
    how = "is the graph input" if use.direct else "is computed from the graph input"
    raise CompileError(
        f"{path}: node '{use.node}' (op {use.op_type}, opset {_default_opset(model)}): its {use.operand} operand "
        f"{how} '{use.input}'; tide compiles static plans: give its value with --bind {use.input}=...")


def parse_bind(text: str) -> tuple[str, list[int | float]]:
    """``NAME=VALUE`` (``tide compile --bind``): VALUE a number or comma-separated numbers."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value.strip():
        raise CompileError(f"--bind expects NAME=VALUE (a number or comma-separated numbers), got '{text}'")
    numbers: list[int | float] = []
    for item in value.split(","):
        item = item.strip()
        try:
            numbers.append(int(item))
        except ValueError:
            try:
                numbers.append(float(item))
            except ValueError:
                raise CompileError(f"--bind {name}: '{item}' is not a number (VALUE: a number or "
                                   "comma-separated numbers)") from None
    return name, numbers


def bind_inputs(loaded: LoadedModel, values: dict) -> None:
    """Replaces each graph input named in ``values`` by a constant of its declared dtype and shape
    (in place, before ``specialize``); constant folding then treats it like any other constant.
    A value is a number, a sequence of numbers (reshaped to the declared shape) or an array."""
    if not values:
        return
    graph = loaded.model.graph
    inputs = {i.name: i for i in graph.input}
    for name, value in values.items():
        where = f"{loaded.path}: --bind {name}"
        if name not in inputs:
            names = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
            raise CompileError(f"{where}: the graph has no input '{name}' (its inputs: {', '.join(names)})")
        ttype = inputs[name].type.tensor_type
        if not inputs[name].type.HasField("tensor_type") or ttype.elem_type == onnx.TensorProto.STRING:
            raise CompileError(f"{where}: input '{name}' is not a numeric tensor; only those can be bound")
        dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim] \
            if ttype.HasField("shape") else None
        array = _bound_array(where, name, np.asarray(value), dims)
        const = _representable(where, name, array, dtype)
        graph.input.remove(inputs[name])
        kept = [i for i in graph.initializer if i.name != name]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        graph.initializer.append(numpy_helper.from_array(const, name))


def _bound_array(where: str, name: str, array: np.ndarray, dims: list[int | None] | None) -> np.ndarray:
    """``array`` in the input's declared shape ``dims`` (None: no shape declared; a None dim: symbolic)."""
    if array.dtype.kind not in "biuf" and array.dtype.name != "bfloat16":
        raise CompileError(f"{where}: expected numbers for input '{name}', got {array.dtype} values")
    if dims is None:
        return array
    if array.ndim == len(dims) and all(d is None or d == s for d, s in zip(dims, array.shape)):
        return array
    shape_text = "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
    known = int(np.prod([d for d in dims if d is not None], dtype=np.int64))
    unknown = [i for i, d in enumerate(dims) if d is None]
    if not unknown:
        if array.size != known:
            raise CompileError(f"{where}: input '{name}' has shape {shape_text}: expected {known} value(s), "
                               f"got {array.size}")
        return array.reshape(dims)
    if len(unknown) == 1 and known > 0 and array.size % known == 0:
        shape = list(dims)
        shape[unknown[0]] = array.size // known
        return array.reshape(shape)
    raise CompileError(f"{where}: input '{name}' has shape {shape_text}: {array.size} value(s) do not fill it "
                       "(give the value as an array of that shape)")


def _representable(where: str, name: str, array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``array`` as ``dtype``, or a CompileError naming the first value that dtype cannot hold."""
    flat = array.reshape(-1)
    if dtype == np.bool_:
        bad = [v for v in flat.tolist() if v not in (0, 1)]
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        bad = [v for v in flat.tolist()
               if not np.isfinite(float(v)) or float(v) != int(v) or not info.min <= int(v) <= info.max]
    else:
        with np.errstate(over="ignore"):
            cast = flat.astype(dtype)
        bad = [v for v, c in zip(flat.tolist(), cast.tolist()) if np.isfinite(v) and not np.isfinite(c)]
    if bad:
        raise CompileError(f"{where}: input '{name}' is {np.dtype(dtype).name}: expected values it can hold, "
                           f"got {bad[0]}")
    return array.astype(dtype)
