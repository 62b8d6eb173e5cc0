"""Prefill for the next token only: the rows of the prompt's last position, traced back from the logits.

A prefill entry must write the whole prompt into the decode state, but the caller needs the logits of
the last position only (generation reads nothing else). Everything between the last state write and
the logits that works position by position (the last layer's output projection, its experts, the
hyper-connection mixing, the final norm and the lm_head) therefore needs one row per sequence, not
``S``. This pass finds that region and computes it on the last row alone (llama.cpp does the same in
its last layer): the longest suffix of the graph, walking back from ``logits``, in which

- every node works row by row along the position axis, by a rule of its op (elementwise ops with ONNX
  broadcasting, Unsqueeze/Squeeze/Transpose/Reduce*/Softmax/Concat/Split/Slice/Gather off that axis, MatMul/Gemm/
  Einsum with the rows on the left operand, Reshape that keeps a row's elements together, and the
  row-wise tide functions: RMSNorm, RoPE, MoERouter, HashMoERouter, MoEExperts, SharedExpert, and the
  hyper-connection mixing HyperConnectionPre / HyperConnectionPost); and
- every output of the node feeds only nodes of the region (never a ``present.*`` state or a node that
  needs every row).

Each value entering the region from outside (an attention output, the layer's residual stream, the
RoPE tables) is cut to its last rows by one ``Slice`` (or a ``Gather`` of rows ``b*S + S-1`` when the
rows of a batch are folded into one axis); the region's values keep their shapes but for one row.
The position axis of every value is derived from the logits' ``[B, S, V]`` by each op's rule, never
guessed from sizes, except across a Reshape, where the row must stay whole: its elements before and
after are checked to fold the same way (``[B, S, inner]`` either side, rows folded or not).

Runs after ``onnx_import.specialize`` (static shapes, tide kernel functions kept as single nodes)
and before ``weights_as_inputs`` and the Relax import; the result is folded and shape-checked again.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import CompileError
from .onnx_import import TIDE_DOMAIN, fold_to_fixpoint, value_shapes

ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal",
    "Sigmoid", "Tanh", "Relu", "Erf", "Softplus", "Cast", "Identity", "Clip", "Sin", "Cos", "Not", "And", "Or",
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "IsNaN", "Floor", "Ceil", "Sign",
})
REDUCE = frozenset({"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2",
                    "ReduceSumSquare", "ReduceLogSumExp"})
# tide functions whose every output row is computed from the same row of their row inputs alone; the
# value says which inputs carry rows (the rest are weights or tables without a position axis)
ROW_FUNCTIONS = {
    "RMSNorm": (0,),
    "RoPE": (0, 1, 2),            # cos/sin broadcast against x like an elementwise op
    "MoERouter": (0,),
    "HashMoERouter": (0, 1),     # the token ids pick the hash row
    "MoEExperts": (0, 1, 2),      # tokens, their expert ids and weights
    "SharedExpert": (0,),
}
# tide functions on the residual streams ``[B, S, N, D]``: the same, with the position axis at the same
# place (from the left) in every row input and output
STREAM_FUNCTIONS = {
    "HyperConnectionPre": (0,),   # h; fn, base and scale are weights
    "HyperConnectionPost": (0, 1, 2, 3),
}


@dataclass(frozen=True)
class Rows:
    """Where a value's positions are: ``axis``; ``folded`` when that axis holds batch x positions
    (``[B*S, ...]``), else it holds the ``S`` positions (after the batch axes)."""
    axis: int
    folded: bool = False


class _NotRowWise(Exception):
    pass


def last_position_only(path: str, model: onnx.ModelProto, output: str = "logits") -> tuple[onnx.ModelProto, int]:
    """``cut`` (below), then the model folded and shape-inferred again, ready for the Relax import;
    returns it and the number of nodes computed on one row per sequence."""
    model, rows = cut(path, model, output)
    kernels = frozenset(n.op_type for n in model.graph.node if n.domain == TIDE_DOMAIN)
    return fold_to_fixpoint(path, model, kernels), rows


def cut(path: str, model: onnx.ModelProto, output: str = "logits") -> tuple[onnx.ModelProto, int]:
    """``model`` with ``output`` [B, S, V] cut to [B, 1, V], its row-wise suffix computed on the last
    rows only (module docstring). Returns the model and the number of nodes now computed on one row
    per sequence."""
    graph = model.graph
    if output not in {o.name for o in graph.output}:
        raise CompileError(f"{path}: the graph has no output '{output}'")
    typed = value_shapes(model)
    shapes = {name: dims for name, (dims, _) in typed.items()}
    dims = shapes.get(output)
    if dims is None or len(dims) != 3 or None in dims:
        raise CompileError(f"{path}: output '{output}' is {dims}, expected a static [batch, seq, vocab]")
    batch, seq, _ = dims
    if seq == 1:
        return model, 0
    const_values = {i.name: i for i in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)

    need: dict[str, Rows] = {output: Rows(1)}   # value -> where its rows are (values the region cuts)
    uses = {}                                   # value -> its uses (consumer, input index)
    for n in graph.node:
        for name in n.input:
            uses[name] = uses.get(name, 0) + 1
    row_uses: dict[str, int] = {}               # value -> its uses by region nodes that read its rows only
    nodes = list(graph.node)
    region: dict[int, dict[int, Rows]] = {}      # index of a node computed on the last rows -> its row inputs
    for index in reversed(range(len(nodes))):
        node = nodes[index]
        outs = [o for o in node.output if o]
        if not any(o in need for o in outs):
            continue
        if any(o in graph_outputs and o != output for o in outs) or any(
                row_uses.get(o, 0) != uses.get(o, 0) for o in outs):
            continue  # some use reads this node's outputs whole (a state, keys, a position-mixing op)
        try:
            inputs = _input_rows(node, {o: need.get(o) for o in outs}, shapes, const_values, batch, seq, opset)
        except _NotRowWise:
            continue
        if any(node.input[k] in need and need[node.input[k]] != rows for k, rows in inputs.items()) or len(
                {(node.input[k], rows) for k, rows in inputs.items()}) != len({node.input[k] for k in inputs}):
            continue
        region[index] = inputs
        for k, rows in inputs.items():
            need[node.input[k]] = rows
            row_uses[node.input[k]] = row_uses.get(node.input[k], 0) + 1
    if not region:
        return _cut_output(path, model, output, batch, seq), 0

    inside = {o for i in region for o in nodes[i].output}
    cuts = {}
    new_nodes = []
    for i, n in enumerate(nodes):
        if i in region:
            for k, rows in region[i].items():
                name = n.input[k]
                if name in inside:
                    continue  # computed on the last rows already
                if name not in cuts:
                    cuts[name] = f"{name}.last_rows"
                    new_nodes.extend(_cut(graph, name, cuts[name], rows, shapes[name], batch, seq))
                n.input[k] = cuts[name]
            if n.op_type == "Reshape":
                target = _cut_dims(shapes[n.output[0]], need[n.output[0]], batch)
                n.input[1] = _const(graph, f"{n.output[0]}.last_shape", np.array(target, np.int64))
        new_nodes.append(n)
    del graph.node[:]
    graph.node.extend(new_nodes)
    kept = [vi for vi in graph.value_info if vi.name not in inside]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    for name in sorted(inside):
        if name in need and shapes.get(name) is not None and name != output:
            elem = typed[name][1]
            if elem:
                graph.value_info.append(helper.make_tensor_value_info(
                    name, elem, _cut_dims(shapes[name], need[name], batch)))
    next(o for o in graph.output if o.name == output).type.tensor_type.shape.dim[1].dim_value = 1
    return model, len(region)


# ---- the per-op rules: which rows of the inputs an output row needs -----------------------------------

def _input_rows(node, out_rows: dict, shapes: dict, consts: dict, batch: int, seq: int,
                opset: int) -> dict[int, Rows]:
    """The rows each input of ``node`` (by index) must provide when its outputs are needed at ``out_rows``
    (inputs read whole, like weights or attention keys, are not listed);
    raises _NotRowWise when the op mixes positions (or its shapes are not known)."""
    op = node.op_type
    rows = [r for r in out_rows.values() if r is not None]
    if len(set(rows)) != 1:
        raise _NotRowWise
    out = rows[0]
    out_dims = shapes.get(node.output[0])
    if out_dims is None or None in out_dims or not _fits(out_dims, out, batch, seq):
        raise _NotRowWise
    ins = {}

    def broadcast(k: int, axis: int, rank: int) -> None:
        """input ``k`` broadcast (right-aligned) against an operand of ``rank`` whose rows are at ``axis``."""
        name = node.input[k] if k < len(node.input) else ""
        if not name or name in consts and len(consts[name].dims) == 0:
            return
        dims = shapes.get(name)
        if dims is None or None in dims:
            raise _NotRowWise
        at = axis - (rank - len(dims))
        if at >= len(dims):
            raise _NotRowWise
        if at < 0 or dims[at] == 1:
            return  # the same for every position
        want = Rows(at, out.folded)
        if not _fits(dims, want, batch, seq):
            raise _NotRowWise
        ins[k] = want

    if node.domain == TIDE_DOMAIN and op in STREAM_FUNCTIONS:
        for k in STREAM_FUNCTIONS[op]:
            dims = shapes.get(node.input[k]) if k < len(node.input) else None
            if dims is None or None in dims or not _fits(dims, out, batch, seq):
                raise _NotRowWise
            ins[k] = out
        return ins
    if node.domain == TIDE_DOMAIN:
        row_inputs = ROW_FUNCTIONS.get(op)
        if row_inputs is None or out.axis >= len(out_dims) - 1:
            raise _NotRowWise
        per_position = op in ("RoPE", "RMSNorm")  # x and its tables as they broadcast; else token rows
        if not per_position and out.axis != 0:
            raise _NotRowWise
        for k in row_inputs:
            if k < len(node.input) and node.input[k]:
                if per_position:
                    broadcast(k, out.axis, len(out_dims))
                else:
                    broadcast(k, 0, len(shapes.get(node.input[k]) or []))
        return ins
    if node.domain not in ("", "ai.onnx"):
        raise _NotRowWise
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    rank = len(out_dims)
    if op in ELEMENTWISE:
        for k in range(len(node.input)):
            broadcast(k, out.axis, rank)
    elif op in ("Unsqueeze", "Squeeze"):
        axes = _axes(node, attrs, consts)
        in_dims = shapes.get(node.input[0])
        if axes is None or in_dims is None:
            raise _NotRowWise
        if op == "Unsqueeze":
            axes = sorted(a % rank for a in axes)
            if out.axis in axes:
                raise _NotRowWise
            broadcast(0, out.axis - sum(a < out.axis for a in axes), len(in_dims))
        else:
            axes = sorted(a % len(in_dims) for a in axes)
            k = out.axis
            for a in axes:
                if a <= k:
                    k += 1
            broadcast(0, k, len(in_dims))
    elif op in REDUCE:
        in_dims = shapes.get(node.input[0])
        axes = _axes(node, attrs, consts)
        if in_dims is None or not axes:  # no axes: every axis (or none, by noop_with_empty_axes)
            raise _NotRowWise
        axes = sorted(a % len(in_dims) for a in axes)
        if attrs.get("keepdims", 1):
            k = out.axis
        else:
            k = out.axis
            for a in axes:
                if a <= k:
                    k += 1
        if k in axes:
            raise _NotRowWise
        broadcast(0, k, len(in_dims))
    elif op in ("Softmax", "LogSoftmax"):
        # opset 13 normalizes along `axis` (default -1); before, over the flattened axes from `axis` (default 1)
        axis = attrs.get("axis", -1 if opset >= 13 else 1) % rank
        if axis == out.axis if opset >= 13 else out.axis >= axis:
            raise _NotRowWise
        broadcast(0, out.axis, rank)
    elif op == "Slice":
        in_dims = shapes.get(node.input[0])
        if in_dims is None or any(i not in consts for i in node.input[1:] if i):
            raise _NotRowWise
        starts = numpy_helper.to_array(consts[node.input[1]]).reshape(-1)
        axes = (numpy_helper.to_array(consts[node.input[3]]).reshape(-1) if len(node.input) > 3 and node.input[3]
                else np.arange(len(starts)))
        if out.axis in {int(a) % rank for a in axes}:
            raise _NotRowWise
        broadcast(0, out.axis, rank)
    elif op == "Gather":
        in_dims, index_dims = shapes.get(node.input[0]), shapes.get(node.input[1])
        if in_dims is None or index_dims is None or node.input[1] not in consts:
            raise _NotRowWise
        axis = attrs.get("axis", 0) % len(in_dims)
        if out.axis < axis:
            broadcast(0, out.axis, len(in_dims))
        elif out.axis >= axis + len(index_dims):
            broadcast(0, out.axis - len(index_dims) + 1, len(in_dims))
        else:
            raise _NotRowWise
    elif op == "Transpose":
        perm = attrs.get("perm", list(reversed(range(rank))))
        broadcast(0, perm[out.axis], rank)
    elif op == "Concat":
        if attrs["axis"] % rank == out.axis:
            raise _NotRowWise
        for k in range(len(node.input)):
            broadcast(k, out.axis, rank)
    elif op == "Split":
        if attrs.get("axis", 0) % rank == out.axis:
            raise _NotRowWise
        broadcast(0, out.axis, rank)
    elif op == "MatMul":
        a, b = (shapes.get(n) for n in node.input)
        if a is None or b is None or len(a) < 2 or len(b) < 2:
            raise _NotRowWise
        if out.axis == rank - 2:
            broadcast(0, len(a) - 2, len(a))   # row i of A times all of B
        elif out.axis < rank - 2:
            broadcast(0, out.axis - (rank - len(a)), len(a))
            broadcast(1, out.axis - (rank - len(b)), len(b))
        else:
            raise _NotRowWise
    elif op == "Gemm":
        if out.axis != 0 or attrs.get("transA", 0):
            raise _NotRowWise
        broadcast(0, 0, 2)
        if len(node.input) > 2:
            broadcast(2, 0, 2)
    elif op == "Einsum":
        ins.update(_einsum_rows(node, attrs, out, shapes, batch, seq))
    elif op == "Reshape":
        in_dims = shapes.get(node.input[0])
        if in_dims is None or None in in_dims or node.input[1] not in consts:
            raise _NotRowWise
        k = _reshaped_rows(in_dims, out_dims, out, batch, seq)
        ins[0] = k
    else:
        raise _NotRowWise
    return ins


def _einsum_rows(node, attrs, out: Rows, shapes, batch, seq) -> dict[int, Rows]:
    equation = attrs["equation"]
    equation = equation.decode() if isinstance(equation, bytes) else equation
    if "->" not in equation or "." in equation:
        raise _NotRowWise
    lhs, rhs = equation.replace(" ", "").split("->")
    letter = rhs[out.axis]
    ins = {}
    for k, (name, term) in enumerate(zip(node.input, lhs.split(","))):
        if term.count(letter) > 1:
            raise _NotRowWise  # a diagonal: row s reads column s too
        if letter in term:
            dims = shapes.get(name)
            want = Rows(term.index(letter), out.folded)
            if dims is None or not _fits(dims, want, batch, seq):
                raise _NotRowWise
            ins[k] = want
    return ins


def _reshaped_rows(in_dims, out_dims, out: Rows, batch: int, seq: int) -> Rows:
    """The input rows of a Reshape whose output rows are ``out``: a row's elements must stay one
    contiguous block of the same size on either side (``[B, S, inner]`` in row-major order)."""
    inner = prod(out_dims[out.axis + 1:])
    for k in range(len(in_dims)):
        if prod(in_dims[k + 1:]) != inner:
            continue
        for folded in (False, True):
            rows = Rows(k, folded)
            if _fits(in_dims, rows, batch, seq) and prod(in_dims[:k]) == (1 if folded else batch):
                return rows
    raise _NotRowWise


def _fits(dims, rows: Rows, batch: int, seq: int) -> bool:
    if rows.axis >= len(dims):
        return False
    if rows.folded:
        return dims[rows.axis] == batch * seq and prod(dims[:rows.axis]) == 1
    return dims[rows.axis] == seq and prod(dims[:rows.axis]) in (1, batch)


def _axes(node, attrs, consts):
    if "axes" in attrs:
        return list(attrs["axes"])
    if len(node.input) > 1 and node.input[1]:
        if node.input[1] not in consts:
            return None
        return [int(a) for a in numpy_helper.to_array(consts[node.input[1]]).reshape(-1)]
    return None if node.op_type in REDUCE or node.op_type == "Squeeze" else []


# ---- rewriting ----------------------------------------------------------------------------------------

def _cut_dims(dims, rows: Rows, batch: int) -> list[int]:
    out = list(dims)
    out[rows.axis] = batch if rows.folded else 1
    return out


def _const(graph, name: str, value: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def _cut(graph, source: str, name: str, rows: Rows, dims, batch: int, seq: int) -> list[onnx.NodeProto]:
    """``name`` = the last position of each sequence in ``source`` (rows at ``rows``)."""
    if rows.folded and batch > 1:
        index = _const(graph, f"{name}.index", np.array([b * seq + seq - 1 for b in range(batch)], np.int64))
        return [helper.make_node("Gather", [source, index], [name], name=name, axis=rows.axis)]
    size = dims[rows.axis]
    starts = _const(graph, f"{name}.starts", np.array([size - 1], np.int64))
    ends = _const(graph, f"{name}.ends", np.array([size], np.int64))
    axes = _const(graph, f"{name}.axes", np.array([rows.axis], np.int64))
    return [helper.make_node("Slice", [source, starts, ends, axes], [name], name=name)]


def _cut_output(path, model, output, batch, seq) -> onnx.ModelProto:
    """No row-wise suffix at all: the output itself is sliced (correct, nothing saved)."""
    graph = model.graph
    whole = f"{output}.all_positions"
    for n in graph.node:
        n.input[:] = [whole if i == output else i for i in n.input]
        n.output[:] = [whole if o == output else o for o in n.output]
    graph.node.extend(_cut(graph, whole, output, Rows(1), [batch, seq], batch, seq))
    next(o for o in graph.output if o.name == output).type.tensor_type.shape.dim[1].dim_value = 1
    return model
