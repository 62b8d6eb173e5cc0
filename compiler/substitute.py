"""Kernel substitution: replaces Relax ops with tide's own TensorIR kernels.

Runs after ``tide.compiler.relax_import`` and before legalization (``tide.compiler.lower``), so the
kernels it inserts are opaque ``call_tir`` calls that LegalizeOps leaves alone and FuseOps does not
fuse. Every kernel it inserts is unscheduled, tagged with its identity (``tide.ops.kernel``) and
built with the target's choices (``Target.choose``); the schedule stage (``tide.compiler.schedule``)
schedules it afterwards. What it replaces today:

- ``relax.topk`` -> ``tide.ops.topk`` (TVM's CPU lowering of top-k calls a runtime sort function);
- ``relax.scatter_nd`` whose data is a decode-state input -> ``tide.ops.state_scatter``, an in-place
  update: the call's output is bound to the state buffer by the plan builder, which also orders
  the call after every read of the old state.

``function_kernels`` gives the converters of ``tide``-domain ONNX functions (``tide.ops``'
FUNCTION_KERNELS, and ``tide.RoPE``); those calls are never inlined and become kernel calls during
the Relax import. A ``tide.RoPE`` whose x is a ``tide.RMSNorm`` output (V4's q and kv paths) becomes
one fused kernel (``tide.ops.qnorm_rope``) on the RMSNorm's input; the RMSNorm call is then
reported only if something else still reads it (``substitute`` resolves that after dead-code
elimination).

Every substitution is recorded in the returned report (kernel name -> what it serves).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import CompileError



@dataclass
class SubstitutionReport:
    """Which tide kernel serves which op of the graph, plus what used generic lowering."""

    kernels: dict[str, str] = field(default_factory=dict)
    # kernels whose calls a fusion may leave dead: reported by ``substitute`` if still called
    pending: dict[str, str] = field(default_factory=dict)

    def add(self, kernel: str, served: str) -> None:
        self.kernels.setdefault(kernel, served)


@dataclass
class NormOutput:
    """A ``tide.RMSNorm`` call as its converter emitted it: input, weight, epsilon."""

    x: object
    weight: object
    epsilon: float


class NormOutputs:
    """The ``tide.RMSNorm`` outputs of the graph being imported, for RoPE's fusion: ``record``
    wraps the RMSNorm converter (its kernels go to the report's ``pending``), ``lookup`` finds the
    call behind a RoPE input."""

    def __init__(self, report: SubstitutionReport):
        self.report = report
        self.calls: list = []  # (the kernel call's output var, NormOutput)

    def record(self, convert, choose):
        def wrapped(bb, inputs, attrs):
            from tvm import relax

            private = SubstitutionReport()
            # bound once here: the fused kernel reads the same value as the RMSNorm call
            inputs = [bb.emit(i) if isinstance(i, (relax.Call, relax.TupleGetItem)) else i for i in inputs]
            expr = convert(bb, inputs, attrs, choose=choose, report=private)
            for name, served in private.kernels.items():
                if name not in self.report.kernels:
                    self.report.pending.setdefault(name, served)
            if isinstance(expr, relax.Call) and expr.args and isinstance(expr.args[0], relax.Var):
                self.calls.append((expr.args[0], NormOutput(inputs[0], inputs[1], float(attrs.get("epsilon", 1e-6)))))
            return expr

        return wrapped

    def lookup(self, bb, x):
        """The RMSNorm call whose (reshaped) output ``x`` is, or None."""
        from tvm import relax

        from ..ops.rope import bound_value

        value = bound_value(bb, x)
        if not isinstance(value, relax.Call) or value.op != tvm_op("relax.reshape"):
            return None
        source = value.args[0]
        for var, norm in self.calls:
            if var.same_as(source) and list(norm.x.ty.shape) == list(x.ty.shape):
                return norm
        return None


def substitute(mod, target, state_params: dict[str, str], report: SubstitutionReport):
    """Returns ``mod`` with tide kernels in place, built with ``target``'s choices. ``state_params``
    maps a main parameter name to its state name (``past.0.window`` -> ``0.window``)."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    from ..ops import kernel, state_scatter, topk

    op_topk = tvm_op("relax.topk")
    op_scatter = tvm_op("relax.scatter_nd")
    params = {p.name: p for p in mod["main"].params}
    state_vars = {params[name]: state for name, state in state_params.items() if name in params}

    @mutator
    class Rewriter(PyExprMutator):
        def __init__(self, module):
            super().__init__(module)
            self.cache = {}

        def _add(self, func, name, identity, **params):
            if name not in self.cache:
                self.cache[name] = self.builder_.add_func(kernel.tag(func, identity, **params), name)
            return self.cache[name]

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op == op_topk:
                return self._topk(call)
            if call.op == op_scatter and call.args[0] in state_vars:
                return self._state_scatter(call, state_vars[call.args[0]])
            return call

        def _topk(self, call):
            data = call.args[0]
            shape = [int(d) for d in data.ty.shape]
            axis = int(call.attrs.axis) % len(shape)
            k = int(call.attrs.k)
            largest = bool(call.attrs.largest)
            if call.attrs.ret_type != "both":
                raise CompileError(f"top-k with ret_type={call.attrs.ret_type} is not supported")
            perm = [i for i in range(len(shape)) if i != axis] + [axis]
            if axis != len(shape) - 1:
                data = self.builder_.emit(relax.op.permute_dims(data, perm))
            outer = [shape[i] for i in perm[:-1]]
            rows, n = math.prod(outer), shape[axis]
            if not 1 <= k <= n:
                raise CompileError(f"top-k with k={k} over an axis of {n} elements")
            dtype = data.ty.dtype
            name = f"tide_topk_{dtype}_{rows}x{n}_k{k}{'' if largest else '_min'}"
            row_threads = target.choose("rows", rows=rows).get("row_threads")
            gv = self._add(topk.prim_func(rows, n, k, dtype, str(call.attrs.dtype), largest, row_threads, name),
                           name, "topk", rows=rows, n=n, k=k)
            report.add(name, f"top-k over {n} (k={k}) x {rows} rows")
            flat = self.builder_.emit(relax.op.reshape(data, (rows, n)))
            res = self.builder_.emit(relax.call_tir(gv, [flat], out_ty=[
                relax.TensorType((rows, k), dtype), relax.TensorType((rows, k), str(call.attrs.dtype))]))
            outs = []
            inverse = [perm.index(i) for i in range(len(shape))]
            for i in range(2):
                item = self.builder_.emit(relax.TupleGetItem(res, i))
                item = self.builder_.emit(relax.op.reshape(item, tuple(outer) + (k,)))
                if axis != len(shape) - 1:
                    item = self.builder_.emit(relax.op.permute_dims(item, inverse))
                outs.append(item)
            return relax.Tuple(outs)

        def _state_scatter(self, call, state):
            data, index, updates = call.args
            if call.attrs.reduction != "update":
                raise CompileError(f"state '{state}' is updated with ScatterND reduction "
                                   f"'{call.attrs.reduction}'; only 'none' is an in-place update")
            dshape = [int(d) for d in data.ty.shape]
            ishape = [int(d) for d in index.ty.shape]
            name = f"tide_state_scatter_{state.replace('.', '_')}"
            row_threads = target.choose("rows", rows=math.prod(ishape[:-1])).get("row_threads")
            func = state_scatter.prim_func(dshape, ishape, data.ty.dtype, index.ty.dtype, row_threads, name)
            gv = self._add(func, name, "state_scatter", state=state)
            report.add(name, f"in-place update of state '{state}'")
            return relax.call_tir(gv, [index, updates], out_ty=data.ty)

    rewriter = Rewriter(mod)
    main = rewriter.visit_expr(mod["main"])
    out = rewriter.builder_.get()
    out["main"] = main
    if report.pending:
        out = relax.transform.DeadCodeElimination()(out)
        live = called_kernels(out["main"])
        for name, served in report.pending.items():
            if name in live:
                report.add(name, served)
        report.pending.clear()
    return out


def function_kernels(target, report: SubstitutionReport, model_dtype: str = "float32") -> dict:
    """The ``tide``-domain functions a tide kernel serves: name -> converter ``fn(bb, inputs, attrs)``
    for ``tide.compiler.relax_import``, building kernels with ``target``'s choices. The rest are
    inlined and lowered generically. ``model_dtype`` (the export's ``tide.dtype``) goes to the
    converters that take it (the attention kernels: a target may pick a bfloat16 variant)."""
    import functools
    import importlib
    import inspect

    from ..ops import FUNCTION_KERNELS

    norms = NormOutputs(report)
    converters = {}
    for function, module_name in FUNCTION_KERNELS.items():
        module = importlib.import_module(f"{__package__.rsplit('.', 1)[0]}.ops.{module_name}")
        extra = {"report": report}
        if "model_dtype" in inspect.signature(module.relax_convert).parameters:
            extra["model_dtype"] = model_dtype
        if function == "RoPE":  # fuses into the RMSNorm call that produced its x
            extra["norms"] = norms
        convert = functools.partial(module.relax_convert, choose=target.choose, **extra)
        # the RMSNorm calls are recorded for RoPE's fusion (their kernels reported only if still called)
        converters[function] = norms.record(module.relax_convert, target.choose) if function == "RMSNorm" else convert
    return converters


def called_kernels(func) -> set[str]:
    """Names of the PrimFuncs that ``func`` (a Relax function) calls through ``call_tir``."""
    from tvm import relax

    call_tir = tvm_op("relax.call_tir")
    names = set()

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op == call_tir and isinstance(expr.args[0], relax.GlobalVar):
            names.add(expr.args[0].name_hint)

    relax.analysis.post_order_visit(func, visit)
    return names


def tvm_op(name: str):
    import tvm

    return tvm.ir.Op.get(name)
