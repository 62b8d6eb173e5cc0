"""Kernel substitution: replaces Relax ops with tide's own TensorIR kernels.

Runs after ``tide.compiler.relax_import`` and before legalization (``tide.compiler.lower``), so the
kernels it inserts are opaque ``call_tir`` calls that LegalizeOps leaves alone and FuseOps does not
fuse. Every kernel it inserts is unscheduled, tagged with its identity (``tide.ops.kernel``) and
built with the target's choices (``Target.choose``); the schedule stage (``tide.compiler.schedule``)
schedules it afterwards. What it replaces today:

- ``relax.topk`` -> ``tide.ops.topk`` (TVM's CPU lowering of top-k calls a runtime sort function);
- ``relax.scatter_nd`` whose data is a decode-state input -> ``tide.ops.state_scatter``, an in-place
  update: the call's output is bound to the state buffer by the plan builder, which also orders
  the call after every read of the old state;
- ``relax.take(W, ids)`` of a stored weight table (float32, or bfloat16 through a widening cast:
  the embedding) -> ``tide.ops.embedding``;
- ``relax.matmul(x, W)`` with W a model weight ([K, N], or the transpose of a stored [N, K]; float32
  or bfloat16, read through a widening cast if the graph has one), and the grouped
  ``relax.einsum("...gk,gnk->...gn", x, W)`` on a stored [G * N, K] weight -> ``tide.ops.linear``
  when the target chooses a ``linear`` layout for it. The weight is re-laid-out at compile time: a constant
  by Relax ops that ``FoldConstant`` (in ``lower.legalize_and_fuse``) evaluates, a weight parameter
  by replacing it with a new parameter bound to a packed view of the same memory-mapped array
  (``weight_params`` is updated in place), so nothing is copied or transposed at run time.

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


def substitute(mod, target, state_params: dict[str, str], report: SubstitutionReport, tvm_target=None,
               weight_params: dict | None = None, linears: bool = True, packed: dict | None = None):
    """Returns ``mod`` with tide kernels in place, built with ``target``'s choices. ``state_params``
    maps a main parameter name to its state name (``past.0.window`` -> ``0.window``);
    ``weight_params`` (name -> array) are main's trailing parameters, the weights passed as
    parameters (``onnx_import.weights_as_inputs``): updated in place, in main's new parameter order,
    when one is re-laid-out. ``tvm_target`` tells the choices the CPU's vector features;
    ``linears`` False keeps weight matmuls as they are (TVM lowers them). ``packed`` (new parameter
    name -> array), shared by the entries of one compile, keeps each re-laid-out weight parameter
    packed once, not once per entry."""
    from tvm import relax
    from tvm.ir.expr import GenericConst
    from tvm.relax.expr_functor import PyExprMutator, mutator

    from ..ops import embedding, kernel, linear, linear_fp8, quant, state_scatter, topk

    op_topk = tvm_op("relax.topk")
    op_scatter = tvm_op("relax.scatter_nd")
    op_matmul, op_permute, op_astype = tvm_op("relax.matmul"), tvm_op("relax.permute_dims"), tvm_op("relax.astype")
    op_einsum, op_reshape = tvm_op("relax.einsum"), tvm_op("relax.reshape")
    op_call_tir, op_take = tvm_op("relax.call_tir"), tvm_op("relax.take")
    op_where, op_less, op_add = tvm_op("relax.where"), tvm_op("relax.less"), tvm_op("relax.add")
    op_slice, op_to_tensor, op_shape_of = (tvm_op("relax.strided_slice"), tvm_op("relax.shape_to_tensor"),
                                           tvm_op("relax.shape_of"))
    weight_params = {} if weight_params is None else weight_params
    params = {p.name: p for p in mod["main"].params}
    state_vars = {params[name]: state for name, state in state_params.items() if name in params}
    main_params = list(mod["main"].params)
    weight_vars = dict(zip(main_params[len(main_params) - len(weight_params):], weight_params)) if weight_params else {}
    features = cpu_features(tvm_target)
    relaid: dict = {}  # (weight param, layout) -> the new parameter var
    packed = {} if packed is None else packed

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
            if call.op == op_matmul and linears:
                return self._linear(call)
            if call.op == op_einsum and linears:
                return self._grouped_linear(call)
            if call.op == op_take:
                return self._take(call)
            return call

        def _take(self, call):
            """``take(W, ids, axis=0)`` of a stored [V, D] weight table, float32 or bfloat16 read
            through a widening astype (the embedding) -> ``tide.ops.embedding``: the table stays as
            stored (folding would widen a constant bf16 table) and a step reads only its rows."""
            data, ids = call.args
            if int(call.attrs.axis) != 0 or str(ids.ty.dtype) not in ("int32", "int64") or \
                    str(call.ty.dtype) != "float32":
                return call
            table = self._stored(self._unwidened(self._value(data)), ("float32", "bfloat16"))
            if table is None or len(table.ty.shape) != 2:
                return call
            vocab, dim = (int(d) for d in table.ty.shape)
            shape = [int(d) for d in ids.ty.shape]
            rows, dtype = math.prod(shape), str(table.ty.dtype)
            name = f"tide_embedding_{rows}x{vocab}x{dim}" + ("_bf16" if dtype == "bfloat16" else "")
            row_threads = target.choose("rows", rows=rows).get("row_threads")
            gv = self._add(embedding.prim_func(rows, vocab, dim, dtype, str(ids.ty.dtype), row_threads, name), name,
                           "embedding", rows=rows, vocab=vocab, dim=dim,
                           **embedding.cost(rows, dim, 2 if dtype == "bfloat16" else 4))
            report.add(name, f"embedding lookup of {rows} ids in a [{vocab} x {dim}] {dtype} table")
            flat = ids if len(shape) == 1 else self.builder_.emit(relax.op.reshape(ids, (rows,)))
            out = self.builder_.emit(relax.call_tir(gv, [table, flat], out_ty=relax.TensorType((rows, dim), "float32")))
            return relax.op.reshape(out, shape + [dim])

        def _value(self, expr):
            """What a variable of main is bound to (None for a parameter)."""
            if not isinstance(expr, relax.Var) or expr in weight_vars:
                return expr
            try:
                return self.lookup_binding(expr)
            except Exception:  # noqa: BLE001  (no binding in this function: a parameter)
                return None

        def _unwidened(self, value, dtype: str = "float32"):
            """What an ``astype`` to ``dtype`` (a widening one to float32 by default) reads (``value``
            itself when it is not one)."""
            if isinstance(value, relax.Call) and value.op == op_astype and str(value.attrs.dtype) == dtype:
                return self._value(value.args[0])
            return value

        def _weight(self, expr):
            """``(weight, transposed)`` when ``expr`` is a model weight, read as [K, N]: a constant or
            weight parameter as stored (transposed False) or through ``permute_dims`` of a stored
            [N, K] one (True), either possibly through a widening ``astype`` to float32; else None."""
            value = self._unwidened(self._value(expr))
            transposed = False
            if isinstance(value, relax.Call) and value.op == op_permute and len(value.args[0].ty.shape) == 2:
                axes = value.attrs.axes
                if axes is not None and [int(a) for a in axes] != [1, 0]:
                    return None
                value, transposed = self._value(value.args[0]), True
            value = self._unwidened(value)
            stored = self._stored(value)
            return (stored, transposed) if stored is not None and len(stored.ty.shape) == 2 else None

        def _fp8_weight(self, value):
            """``(q, scale, block_n, block_k)`` when ``value`` is (a reshape of) the float32 output of a
            one-group ``tide.DequantizeFP8`` kernel call on a stored weight q [N, K]; else None."""
            if isinstance(value, relax.Call) and value.op == op_reshape:
                value = self._value(value.args[0])
            if not (isinstance(value, relax.Call) and value.op == op_call_tir and
                    isinstance(value.args[0], relax.GlobalVar)):
                return None
            name, params = kernel.identity(self.builder_.get()[value.args[0]])
            if name != "dequantize_fp8" or int(params["lead"]) != 1:
                return None
            q3, s3 = (self._value(a) for a in value.args[1].fields)
            if not all(isinstance(v, relax.Call) and v.op == op_reshape for v in (q3, s3)):
                return None
            q, scale = (self._value(v.args[0]) for v in (q3, s3))
            if self._stored(q, ("uint8",)) is None or self._stored(scale, ("uint8",)) is None or \
                    len(q.ty.shape) != 2:
                return None
            return q, scale, int(params["block_n"]), int(params["block_k"])

        def _linear(self, call):
            x, w = call.args
            value = self._value(w)
            if isinstance(value, relax.Call) and value.op == op_permute and len(value.args[0].ty.shape) == 2 and \
                    (value.attrs.axes is None or [int(a) for a in value.attrs.axes] == [1, 0]):
                fp8 = self._fp8_weight(self._value(value.args[0]))
                if fp8 is not None and str(x.ty.dtype) == "float32" and len(x.ty.shape) >= 2:
                    cols, dim = (int(d) for d in fp8[0].ty.shape)
                    xshape = [int(d) for d in x.ty.shape]
                    if xshape[-1] == dim:
                        return self._emit_linear_fp8(call, x, xshape[:-1], 1, dim, cols, *fp8)
            found = self._weight(w)
            if found is None or str(x.ty.dtype) != "float32" or len(x.ty.shape) < 2 or \
                    str(call.ty.dtype) != "float32":
                return call
            weight, transposed = found
            xshape = [int(d) for d in x.ty.shape]
            wshape = [int(d) for d in weight.ty.shape]
            dim, cols = wshape[::-1] if transposed else wshape
            if xshape[-1] != dim:
                return call
            return self._emit_linear(call, x, xshape[:-1], weight, transposed, 1, dim, cols)

        def _grouped_linear(self, call):
            """``einsum("<rows>gk,gnk-><rows>gn", x, W)`` with W a stored [G * N, K] weight reshaped to
            [G, N, K] (or stored so), possibly through a widening astype: a grouped linear."""
            operands = self._value(call.args[0])
            if not isinstance(operands, relax.Tuple) or len(operands.fields) != 2:
                return call
            x, w = operands.fields
            terms, _, out = str(call.attrs.subscripts).replace(" ", "").partition("->")
            lhs = terms.split(",")
            if len(lhs) != 2 or "." in terms or len(lhs[1]) != 3 or str(x.ty.dtype) != "float32" or \
                    str(call.ty.dtype) != "float32":
                return call
            g, n, k = lhs[1]
            batch = lhs[0][:-2]
            if lhs[0][-2:] != g + k or out != batch + g + n or len(set(lhs[0] + n)) != len(lhs[0]) + 1:
                return call
            gnk = [int(d) for d in w.ty.shape]
            xshape = [int(d) for d in x.ty.shape]
            value = self._value(w)
            if isinstance(value, relax.Call) and value.op == op_reshape and xshape[-2:] == [gnk[0], gnk[2]]:
                fp8 = self._fp8_weight(self._value(value.args[0]))
                if fp8 is not None and [int(d) for d in fp8[0].ty.shape] == [gnk[0] * gnk[1], gnk[2]]:
                    return self._emit_linear_fp8(call, x, xshape[:-2], gnk[0], gnk[2], gnk[1], *fp8)
            value = self._unwidened(value)
            if isinstance(value, relax.Call) and value.op == op_reshape:
                value = self._value(value.args[0])
            value = self._unwidened(value)
            stored = self._stored(value)
            if stored is None or [int(d) for d in stored.ty.shape] not in ([gnk[0] * gnk[1], gnk[2]], gnk):
                return call
            if xshape[-2:] != [gnk[0], gnk[2]]:
                return call
            return self._emit_linear(call, x, xshape[:-2], stored, True, gnk[0], gnk[2], gnk[1])

        def _stored(self, value, dtypes=linear.WEIGHT_DTYPES):
            """``value`` if it is a model weight (a constant or weight parameter) of one of ``dtypes``,
            else None."""
            if isinstance(value, GenericConst) or (isinstance(value, relax.Var) and value in weight_vars):
                if str(value.ty.dtype) in dtypes:
                    return value
            return None

        def _array(self, value):
            """The numpy value of a stored weight (a constant or weight parameter)."""
            return weight_params[weight_vars[value]] if value in weight_vars else value.value.numpy()

        def _emit_linear_fp8(self, call, x, lead, groups: int, dim: int, cols: int, q, scale, block_n: int,
                             block_k: int):
            """The FP8 linear for ``x [*lead, groups * dim]`` on q [groups * cols, dim] and its scales, or
            ``call`` unchanged when the target has no FP8 linear for it."""
            rows = math.prod(lead)
            cfg = target.choose("linear_fp8", rows=rows, dim=dim, cols=cols, groups=groups, block_n=block_n,
                                block_k=block_k, features=features)
            panel = int(cfg.get("panel", 0))
            if cfg.get("layout") not in linear_fp8.LAYOUTS or block_n % panel or (groups > 1 and cols % block_n):
                return call
            scales = self._array(scale)
            if scales.size and int(scales.max()) > quant.SCALE_MAX:
                where = weight_vars.get(scale, "a scale constant")
                raise CompileError(f"FP8 weight scales '{where}': exponent byte {int(scales.max())} (2^"
                                   f"{int(scales.max()) - 127}) exceeds the largest scale tide reads, "
                                   f"2^{quant.SCALE_MAX - 127}")
            shape = f"{rows}x{dim}x{cols}" if groups == 1 else f"{rows}x{groups}g{dim}x{cols}"
            name = f"tide_linear_fp8_{shape}_p{panel}"
            gv = self._add(linear_fp8.prim_func(rows, dim, cols, panel, groups, block_n, block_k, name), name,
                           "linear_fp8", rows=rows, dim=dim, cols=cols, groups=groups, panel=panel, layout="panel",
                           weight_dtype="fp8", tile_rows=int(cfg.get("tile_rows", 1)), block_n=block_n,
                           block_k=block_k, **linear_fp8.cost(rows, dim, cols, groups, block_n, block_k))
            what = f"[{dim} x {cols}]" if groups == 1 else f"{groups} groups of [{dim} x {cols}]"
            report.add(name, f"linear [{rows} x {groups * dim}] @ {what} (fp8 weight, {block_n}x{block_k} "
                             f"scale blocks, {panel}-wide panels)")
            packed = self._packed(q, True, groups, panel)
            xshape = [int(d) for d in x.ty.shape]
            flat = x if xshape == [rows, groups * dim] else \
                self.builder_.emit(relax.op.reshape(x, (rows, groups * dim)))
            y = self.builder_.emit(relax.call_tir(gv, [flat, packed, scale],
                                                  out_ty=relax.TensorType((rows, groups * cols), "float32")))
            oshape = [int(d) for d in call.ty.shape]
            return y if oshape == [rows, groups * cols] else relax.op.reshape(y, oshape)

        def _emit_linear(self, call, x, lead, weight, transposed: bool, groups: int, dim: int, cols: int):
            """The linear call for ``x [*lead, groups * dim]`` (or ``[*lead, groups, dim]``), or ``call``
            unchanged when the target chooses no layout for it."""
            rows, wdtype = math.prod(lead), str(weight.ty.dtype)
            cfg = target.choose("linear", rows=rows, dim=dim, cols=cols, groups=groups, weight_dtype=wdtype,
                                features=features)
            if cfg.get("layout") not in linear.LAYOUTS:
                return call
            panel = int(cfg["panel"])
            shape = f"{rows}x{dim}x{cols}" if groups == 1 else f"{rows}x{groups}g{dim}x{cols}"
            name = f"tide_linear_{shape}_p{panel}" + ("_bf16" if wdtype == "bfloat16" else "")
            itemsize = 2 if wdtype == "bfloat16" else 4
            gv = self._add(linear.prim_func(rows, dim, cols, panel, wdtype, name, groups), name, "linear",
                           rows=rows, dim=dim, cols=cols, groups=groups, panel=panel, layout="panel",
                           weight_dtype=wdtype, tile_rows=int(cfg.get("tile_rows", 1)),
                           **linear.cost(rows, dim, cols, itemsize, groups))
            what = f"[{dim} x {cols}]" if groups == 1 else f"{groups} groups of [{dim} x {cols}]"
            report.add(name, f"linear [{rows} x {groups * dim}] @ {what} ({wdtype} weight, {panel}-wide panels)")
            packed = self._packed(weight, transposed, groups, panel)
            xshape = [int(d) for d in x.ty.shape]
            flat = x if xshape == [rows, groups * dim] else \
                self.builder_.emit(relax.op.reshape(x, (rows, groups * dim)))
            y = self.builder_.emit(relax.call_tir(gv, [flat, packed],
                                                  out_ty=relax.TensorType((rows, groups * cols), "float32")))
            oshape = [int(d) for d in call.ty.shape]
            return y if oshape == [rows, groups * cols] else relax.op.reshape(y, oshape)

        def _packed(self, weight, transposed: bool, groups: int, panel: int):
            """The weight in the panel layout ``[G, N / P, K, P]``, from a stored [K, N] one
            (``transposed`` False, one group) or a stored [G * N, K] / [G, N, K] one: Relax ops on a
            constant (folded at compile time), a new parameter bound to a packed view for a weight
            parameter."""
            if isinstance(weight, GenericConst):
                n_k = weight if transposed else self.builder_.emit(relax.op.permute_dims(weight, [1, 0]))
                shape = [int(d) for d in n_k.ty.shape]
                cols, dim = math.prod(shape[:-1]) // groups, shape[-1]
                split = self.builder_.emit(relax.op.reshape(n_k, (groups, cols // panel, panel, dim)))
                return self.builder_.emit(relax.op.permute_dims(split, [0, 1, 3, 2]))
            key = (weight, transposed, groups, panel)
            if key not in relaid:
                name = weight_vars[weight]
                array = weight_params[name]
                if transposed:
                    g_n_k = array.reshape(groups, -1, array.shape[-1])
                    g_k_n = g_n_k.transpose(0, 2, 1)
                else:
                    g_k_n = array[None]
                suffix = ("" if not transposed else ".T" if groups == 1 else f".g{groups}T")
                new = f"{name}{suffix}.panel{panel}"
                _, dim, cols = g_k_n.shape
                if new not in packed:
                    packed[new] = linear.pack(g_k_n, panel)
                relaid[key] = (relax.Var(new, relax.TensorType(linear.weight_shape(dim, cols, panel, groups),
                                                                str(weight.ty.dtype))),
                               new, packed[new])
            return relaid[key][0]

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
                           name, "topk", rows=rows, n=n, k=k, **topk.cost(rows, n, k))
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

        def _bound_call(self, expr, op):
            """The call of ``op`` that ``expr`` is (or is bound to), else None."""
            value = self._value(expr)
            return value if isinstance(value, relax.Call) and value.op == op else None

        def _unwrapped_index(self, index, data):
            """``i`` when ``index`` is the ONNX frontend's wrap of negative coordinates ``i`` against the
            leading extents of ``data`` (``where(i < 0, i + shape(data)[:k], i)``), else None."""
            where = self._bound_call(index, op_where)
            if where is None:
                return None
            cond, wrapped, raw = where.args
            less, add = self._bound_call(cond, op_less), self._bound_call(wrapped, op_add)
            if less is None or add is None or not (less.args[0].same_as(raw) and add.args[0].same_as(raw)) or \
                    not (isinstance(less.args[1], GenericConst) and int(less.args[1].value.numpy()) == 0):
                return None
            extents = self._bound_call(self._unwidened(self._value(add.args[1]), str(index.ty.dtype)), op_slice)
            if extents is None or len(extents.args) != 4:
                return None
            try:  # axes, begin, end: tuples of integers
                bounds = [[int(f.value) for f in a.fields] for a in extents.args[1:]]
            except (AttributeError, TypeError):
                return None
            tensor = self._bound_call(extents.args[0], op_to_tensor)
            shape = None if tensor is None else self._bound_call(tensor.args[0], op_shape_of)
            if bounds != [[0], [0], [int(index.ty.shape[-1])]] or shape is None or not shape.args[0].same_as(data):
                return None
            return raw

        def _state_scatter(self, call, state):
            data, index, updates = call.args
            if call.attrs.reduction != "update":
                raise CompileError(f"state '{state}' is updated with ScatterND reduction "
                                   f"'{call.attrs.reduction}'; only 'none' is an in-place update")
            dshape = [int(d) for d in data.ty.shape]
            ishape = [int(d) for d in index.ty.shape]
            name = f"tide_state_scatter_{state.replace('.', '_')}"
            row_threads = target.choose("rows", rows=math.prod(ishape[:-1])).get("row_threads")
            raw = self._unwrapped_index(index, data)
            if raw is not None:  # the kernel wraps negative coordinates itself
                index = raw
            func = state_scatter.prim_func(dshape, ishape, data.ty.dtype, index.ty.dtype, row_threads, raw is not None,
                                           name)
            gv = self._add(func, name, "state_scatter", state=state, **state_scatter.cost(ishape, dshape))
            report.add(name, f"in-place update of state '{state}'")
            return relax.call_tir(gv, [index, updates], out_ty=data.ty)

    rewriter = Rewriter(mod)
    main = rewriter.visit_expr(mod["main"])
    out = rewriter.builder_.get()
    out["main"] = main
    if relaid:
        out = _relaid_params(out, weight_vars, weight_params, list(relaid.values()))
    if report.pending:
        out = relax.transform.DeadCodeElimination()(out)
        live = called_kernels(out["main"])
        for name, served in report.pending.items():
            if name in live:
                report.add(name, served)
        report.pending.clear()
    return out


def _relaid_params(mod, weight_vars: dict, weight_params: dict, relaid: list):
    """``mod`` with the re-laid-out weight parameters appended to main's parameters and the weight
    parameters nothing reads any more dropped (after dead-code elimination of their old uses);
    ``weight_params`` rewritten to match, in parameter order. ``relaid``: (new var, name, array)."""
    from tvm import relax

    main = mod["main"]
    mod["main"] = relax.Function(list(main.params) + [var for var, _, _ in relaid], main.body, main.ret_ty,
                                 main.is_pure, main.attrs)
    mod = relax.transform.DeadCodeElimination()(mod)
    main = mod["main"]
    used = set(relax.analysis.free_vars(main.body))
    weights = {var: (name, weight_params[name]) for var, name in weight_vars.items()}
    weights.update({var: (name, array) for var, name, array in relaid})
    keep = [p for p in main.params if p not in weights or p in used]
    func = relax.Function(keep, main.body, main.ret_ty, main.is_pure, main.attrs)
    if main.attrs is not None and "num_input" in main.attrs:  # the frontend counts every parameter
        func = func.with_attr("num_input", len(keep))
    mod["main"] = func
    weight_params.clear()
    weight_params.update(dict(weights[p] for p in keep if p in weights))
    return mod


def cpu_features(tvm_target) -> frozenset:
    """The LLVM CPU features of ``tvm_target``'s host code (empty without an LLVM host)."""
    if tvm_target is None:
        return frozenset()
    from tvm.target import codegen

    host = tvm_target.host or tvm_target
    if host.kind.name != "llvm":
        return frozenset()
    return frozenset(str(f) for f in codegen.llvm_get_cpu_features(host))


def function_kernels(target, report: SubstitutionReport, model_dtype: str = "float32", tvm_target=None) -> dict:
    """The ``tide``-domain functions a tide kernel serves: name -> converter ``fn(bb, inputs, attrs)``
    for ``tide.compiler.relax_import``, building kernels with ``target``'s choices. The rest are
    inlined and lowered generically. ``model_dtype`` (the export's ``tide.dtype``) goes to the
    converters that take it (the attention kernels: a target may pick a bfloat16 variant); every
    choice is told the CPU's vector features of ``tvm_target``."""
    import functools
    import importlib
    import inspect

    from ..ops import FUNCTION_KERNELS

    features = cpu_features(tvm_target)

    def choose(op: str, **facts) -> dict:
        return target.choose(op, features=features, **facts)

    norms = NormOutputs(report)
    converters = {}
    for function, module_name in FUNCTION_KERNELS.items():
        module = importlib.import_module(f"{__package__.rsplit('.', 1)[0]}.ops.{module_name}")
        extra = {"report": report}
        if "model_dtype" in inspect.signature(module.relax_convert).parameters:
            extra["model_dtype"] = model_dtype
        if function == "RoPE":  # fuses into the RMSNorm call that produced its x
            extra["norms"] = norms
        convert = functools.partial(module.relax_convert, choose=choose, **extra)
        # the RMSNorm calls are recorded for RoPE's fusion (their kernels reported only if still called)
        converters[function] = norms.record(module.relax_convert, choose) if function == "RMSNorm" else convert
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
