"""Relax -> TensorIR kernels + a static execution plan for one entry point.

``legalize_and_fuse`` runs after ``tide.compiler.substitute``: it legalizes the remaining Relax ops
into TensorIR and fuses them. Then ``tide.compiler.schedule`` schedules every kernel for the
target, and ``to_dps`` / ``build_plan`` rewrite calls into destination-passing form
(CallTIRRewrite) and read ``main`` as a flat list of kernel calls, from which the entry's plan is
built: buffers (inputs, weights, states, arena tensors and views), kernel calls in order, and a
static arena layout from liveness. After it only codegen (``Target.build``) and artifact writing
remain.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..ops.kernel import OPAQUE, identity
from .artifact.format import ARENA_ALIGN, Buffer, Call, Entry, IOBinding, nbytes_of
from .errors import CompileError
from .substitute import tvm_op


@dataclass
class WeightTable:
    """Weights shared by every entry, deduplicated by content."""

    arrays: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    by_digest: dict[str, int] = field(default_factory=dict)

    def add_named(self, name: str, array: np.ndarray) -> int:
        """A model weight, identified by its name (no copy, no hashing: it may be memory-mapped)."""
        key = f"param:{name}"
        if key not in self.by_digest:
            self.by_digest[key] = len(self.arrays)
            self.arrays.append(array)
            self.names.append(name)
        return self.by_digest[key]

    def add(self, array: np.ndarray, name: str) -> int:
        array = np.ascontiguousarray(array)
        digest = hashlib.sha1(array.view(np.uint8).reshape(-1) if array.size else b"").hexdigest()
        key = f"{array.dtype}{array.shape}{digest}"
        if key not in self.by_digest:
            self.by_digest[key] = len(self.arrays)
            self.arrays.append(array)
            self.names.append(name)
        return self.by_digest[key]


def legalize_and_fuse(mod, target, max_fused_bytes: int | None = None):
    """LegalizeOps .. FuseTIR (``target``: the TVM target).

    ``max_fused_bytes`` (a target's FUSED_TENSOR_BYTES): ops with a tensor argument larger than this
    are not fused with their neighbours (marked opaque before FuseOps), so a fused kernel's
    intermediates, which a target may keep in a small local memory, stay small."""
    import tvm
    from tvm import relax

    from .fold_layout import fold_layout

    mod = fold_layout(mod)
    passes = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
              relax.transform.RewriteDataflowReshape()]
    if max_fused_bytes is not None:
        passes.append(_opaque_above(max_fused_bytes))
    seq = tvm.transform.Sequential(passes + [
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
        relax.transform.RewriteDataflowReshape(),
    ])
    with target:
        return seq(mod)


def _opaque_above(limit: int):
    """A module pass: every PrimFunc with a buffer argument of more than ``limit`` bytes gets
    ``op_pattern`` OPAQUE (FuseOps leaves it alone)."""
    import tvm
    from tvm import tirx

    def largest(func) -> int:
        sizes = [nbytes_of(str(p.dtype), tuple(int(d) for d in p.shape)) for p in func.params
                 if hasattr(p, "shape") and all(hasattr(d, "value") or isinstance(d, int) for d in p.shape)]
        return max(sizes, default=0)

    @tvm.transform.module_pass(opt_level=0, name="tide.OpaqueAboveBytes")
    def transform(mod, _ctx):
        for gv, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and largest(func) > limit:
                mod[gv] = func.with_attr("op_pattern", OPAQUE)
        return mod

    return transform


def to_dps(mod):
    import tvm
    from tvm import relax

    return tvm.transform.Sequential([
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
    ])(mod)


def build_plan(mod, entry: str, input_names: list[str], output_names: list[str],
               state_of_input: dict[str, int], state_names: list[str], weights: WeightTable,
               weight_params: dict | None = None):
    """Reads ``main`` (after ``to_dps``) into the entry's plan (``artifact.format.Entry``); returns
    it and the PrimFuncs it calls.
    ``main``'s parameters are the graph inputs, then the weights passed as parameters
    (``weight_params``: name -> array, see ``onnx_import.weights_as_inputs``)."""
    from tvm import relax, tirx
    from tvm.ir.expr import GenericConst

    main = mod["main"]
    plan = Entry(entry)
    where: dict = {}  # relax Var -> buffer id (or a tuple of ids)
    storages: dict[int, int] = {}  # arena buffer id -> storage id
    kernels: dict[str, object] = {}
    state_calls: list[Call] = []

    def new_buf(b: Buffer) -> int:
        plan.buffers.append(b)
        return len(plan.buffers) - 1

    weight_params = weight_params or {}
    for i, (param, name) in enumerate(zip(main.params, input_names + list(weight_params))):
        shape = tuple(int(d) for d in param.ty.shape)
        if name in weight_params:
            w = weights.add_named(name, weight_params[name])
            where[param] = new_buf(Buffer("weight", w, str(param.ty.dtype), shape))
        elif name in state_of_input:
            where[param] = new_buf(Buffer("state", state_of_input[name], str(param.ty.dtype), shape))
            plan.inputs.append(IOBinding(name, where[param], "state"))
        else:
            where[param] = new_buf(Buffer("input", i, str(param.ty.dtype), shape))
            plan.inputs.append(IOBinding(name, where[param], "data"))

    def operand(expr):
        if isinstance(expr, relax.Var):
            if expr not in where:
                raise CompileError(f"entry {entry}: internal: value {expr.name} used before definition")
            return where[expr]
        if isinstance(expr, GenericConst):
            arr = expr.value.numpy()
            w = weights.add(arr, f"const{len(weights.arrays)}")
            return new_buf(Buffer("weight", w, str(expr.value.dtype), tuple(arr.shape)))
        raise CompileError(f"entry {entry}: internal: unsupported operand {type(expr).__name__}")

    op_alloc = tvm_op("relax.builtin.alloc_tensor")
    op_reshape = tvm_op("relax.reshape")
    body = main.body
    for block in body.blocks:
        for binding in block.bindings:
            var, value = binding.var, binding.value
            if isinstance(value, relax.Call) and value.op == op_alloc:
                shape = tuple(int(d) for d in value.args[0].values)
                bid = new_buf(Buffer("arena", 0, str(value.args[1].value), shape))
                storages[bid] = len(storages)
                where[var] = bid
            elif isinstance(value, relax.Call) and isinstance(value.op, relax.GlobalVar):
                func = mod[value.op]
                if not isinstance(func, tirx.PrimFunc):
                    raise CompileError(f"entry {entry}: call to a non-kernel function {value.op.name_hint}")
                args = []
                for a in value.args:
                    if isinstance(a, tirx.IntImm):
                        args.append(("imm", int(a.value)))
                    else:
                        args.append(("buf", operand(a)))
                name = value.op.name_hint
                kernels[name] = func
                call = Call(name, args)
                kernel, params = identity(func)
                if kernel == "state_scatter":
                    state = params["state"]
                    out = args[-1][1]
                    sidx = state_names.index(str(state))
                    old = plan.buffers[out]
                    plan.buffers[out] = Buffer("state", sidx, old.dtype, old.shape)
                    storages.pop(out, None)
                    state_calls.append(call)
                else:
                    plan.calls.append(call)
            elif isinstance(value, relax.Call) and value.op == op_reshape:
                src = operand(value.args[0])
                base = plan.buffers[src]
                shape = tuple(int(d) for d in value.ty.shape)
                bid = new_buf(Buffer(base.kind, base.index, base.dtype, shape, base.offset))
                if src in storages:
                    storages[bid] = storages[src]
                where[var] = bid
            elif isinstance(value, relax.Tuple):
                where[var] = tuple(operand(f) for f in value.fields)
            elif isinstance(value, relax.TupleGetItem):
                where[var] = where[value.tuple_value][value.index]
            elif isinstance(value, (relax.Var, GenericConst)):
                where[var] = operand(value)
            else:
                op = getattr(value, "op", None)
                what = f"the Relax op {op.name}" if hasattr(op, "name") else f"a {type(value).__name__}"
                raise CompileError(
                    f"entry {entry}: {what} was left without a kernel (TVM has no lowering for it on this "
                    "target); tide's runtime executes only compiled kernels")
    plan.calls.extend(state_calls)

    result = body.body
    outs = where[result] if isinstance(result, relax.Var) else operand(result)
    if not isinstance(outs, tuple):
        outs = (outs,)
    if len(outs) != len(output_names):
        raise CompileError(f"entry {entry}: {len(outs)} results for {len(output_names)} graph outputs")
    for name, bid in zip(output_names, outs):
        b = plan.buffers[bid]
        role = "state" if b.kind == "state" and name.startswith("present.") else "data"
        plan.outputs.append(IOBinding(name, bid, role))
    _plan_memory(plan, storages)
    return plan, kernels


def _plan_memory(plan: Entry, storages: dict[int, int]) -> None:
    """Assigns arena offsets: storages whose lifetimes overlap never share bytes."""
    size: dict[int, int] = {}
    for bid, sid in storages.items():
        size[sid] = max(size.get(sid, 0), _align(plan.buffers[bid].nbytes))
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for t, call in enumerate(plan.calls):
        for kind, v in call.args:
            if kind == "buf" and v in storages:
                sid = storages[v]
                first.setdefault(sid, t)
                last[sid] = t
    end = len(plan.calls)
    for bid in (io.buffer for io in plan.outputs):
        if bid in storages:
            last[storages[bid]] = end
            first.setdefault(storages[bid], end)
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last)
    offset_of: dict[int, int] = {}
    for sid in sorted(size, key=lambda s: -size[s]):
        lo, hi = first.get(sid, 0), last.get(sid, 0)
        overlapping = sorted((o, s) for o, s, f, l in placed if not (l < lo or f > hi))
        off = 0
        for o, s in overlapping:
            if off + size[sid] <= o:
                break
            off = max(off, o + s)
        offset_of[sid] = off
        placed.append((off, size[sid], lo, hi))
    for bid, sid in storages.items():
        b = plan.buffers[bid]
        b.offset = offset_of[sid]
    plan.arena_bytes = _align(max((o + s for o, s, _, _ in placed), default=0))


def _align(n: int) -> int:
    return (n + ARENA_ALIGN - 1) // ARENA_ALIGN * ARENA_ALIGN

