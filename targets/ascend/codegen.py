"""TIR kernels -> MLIR modules for bishengir (``tide compile --target ascend``).

Runs after ``tide.compiler.lower`` (every kernel is a PrimFunc as the plan calls it, marked
scheduled by ``tide.targets.ascend.cores`` or by its op's ascend schedule) and before the artifact
is written. Each kernel becomes one module with one ``hacc.entry`` device function whose arguments
are the kernel's buffers as GM memrefs (and ``i64`` scalars), in the plan's argument order:

- the PrimFunc is lowered to loops first (``LowerInitBlock``, ``ConvertBlocksToOpaque``,
  ``LowerOpaqueBlock``, ``StmtSimplify``), then translated statement by statement: loops to
  ``scf.for`` / ``scf.while``, conditions to ``scf.if`` (``if_then_else`` too, so a guarded load is
  never executed), buffer accesses to ``memref.load`` / ``memref.store``, views to
  ``memref.reinterpret_cast``, local buffers to UB allocations at the entry (bishengir plans the
  UB and refuses what does not fit), arithmetic to ``arith`` / ``math``;
- an innermost element-wise float32 loop becomes HIVM vector ops on UB tiles (``vector_loops``);
- the kernel's parallel row loop (the one the kernel's body consists of) runs on the AI cores:
  ``for r = get_block_idx; r < extent; r += get_block_num`` with ``hacc.block_dim`` =
  min(extent, the SoC's vector cores); a kernel without one runs on one core.

Where ``kernels/`` has a hand-written HIVM kernel for the op (RMSNorm, RoPE, a plain GEMM), that
kernel is emitted instead, its entry declared with the plan's argument types. Both are written
through ``mlir.Builder`` (``_Translator`` is one).

The translation is exact (every element computed as TIR says, in its dtypes). Outside the
vectorized loops these kernels run on the AI cores' scalar units: correct, but far from the vector
and cube throughput that the hand-written HIVM kernels (``kernels/``) get. Constructs the translator does not know are a
CompileError naming the kernel and the construct.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...compiler.errors import CompileError
from . import cost, hivm, mlir
from . import vector_loops as _vector
from .mlir import Unsupported

_MATH = {"tirx.exp": "math.exp", "tirx.log": "math.log", "tirx.sqrt": "math.sqrt", "tirx.rsqrt": "math.rsqrt",
         "tirx.tanh": "math.tanh", "tirx.sin": "math.sin", "tirx.cos": "math.cos", "tirx.fabs": "math.absf",
         "tirx.floor": "math.floor", "tirx.ceil": "math.ceil", "tirx.erf": "math.erf", "tirx.log1p": "math.log1p",
         "tirx.exp2": "math.exp2", "tirx.log2": "math.log2", "tirx.round": "math.roundeven",
         "tirx.nearbyint": "math.roundeven", "tirx.trunc": "math.trunc", "tirx.pow": "math.powf",
         "tirx.atan": "math.atan", "tirx.tan": "math.tan"}


@dataclass
class Kernel:
    """One kernel translated: its module text, the AI cores a launch uses and its argument kinds."""
    name: str
    text: str
    block_dim: int
    args: list  # "ptr" | "i64" per argument


def unit_of(text: str) -> str:
    """Where a kernel module's work runs: "cube" (mmadL1), "vector" (HIVM vector ops and no scalar
    memory access left) or "scalar" (any scalar load or store: translated loops, fully or in part)."""
    if "hivm.hir.mmadL1" in text:
        return "cube"
    scalar = "memref.load " in text or "memref.store " in text
    return "scalar" if scalar or "hivm.hir.v" not in text else "vector"


def lower_to_loops(func):
    """``func`` with its blocks lowered to plain loops, allocations and stores."""
    import tvm
    from tvm import s_tir, tirx

    seq = tvm.transform.Sequential([s_tir.transform.LowerInitBlock(), s_tir.transform.ConvertBlocksToOpaque(),
                                    s_tir.transform.LowerOpaqueBlock(), tirx.transform.StmtSimplify(),
                                    tirx.transform.CommonSubexprElim()])
    return seq(tvm.IRModule({"main": func}))["main"]


def translate(name: str, func, soc: str) -> Kernel:
    """The MLIR module of PrimFunc ``func`` as kernel ``name`` for ``soc``: the hand-written HIVM
    kernel of its op where ``kernels/`` has one for these shapes and dtypes, else the translation."""
    try:
        hand = _hand_written(name, func, soc)
        return hand if hand is not None else _Translator(name, lower_to_loops(func), soc).run()
    except Unsupported as err:
        raise CompileError(f"ascend codegen: kernel '{name}': {err}") from None


def _param_types(func) -> list:
    """(entry argument type, argument kind) per parameter of ``func``, as the plan passes them."""
    return [(memref_type(p, mlir.GM), "ptr") if _is_buffer(p) else ("i64", "i64") for p in func.params]


def memref_type(buf, space: str | None) -> mlir.MemRef:
    """The memref type of TIR buffer ``buf`` (static shape) in address space ``space``."""
    dims = []
    for d in buf.shape:
        if not isinstance(d, int) and not hasattr(d, "value"):
            raise Unsupported(f"buffer '{buf.name}' has a dynamic shape ({d})")
        dims.append(int(d))
    return mlir.memref(dims, mlir.elem(str(buf.dtype), f"buffer '{buf.name}'"), space)


def _hand_written(name: str, func, soc: str) -> Kernel | None:
    """``kernels/``' HIVM kernel for ``func`` (by its identity, ``tide.ops.kernel``, or a plain GEMM
    by its computation), with its entry taking the plan's argument types, or None."""
    from ...ops.kernel import identity
    from .kernels import matmul

    kernel, params = identity(func)
    types = _param_types(func)
    plan = [t for t, _ in types]
    if kernel == "rmsnorm" and all(str(p.dtype) == "float32" for p in func.params):
        from .kernels import rmsnorm

        rows, dim = (int(d) for d in func.params[0].shape)
        text = rmsnorm.emit(rows, dim, soc, float(params["epsilon"]), name=name, arg_types=plan)
    elif kernel == "rope" and all(str(p.dtype) == "float32" for p in func.params):
        from .kernels import rope

        shape = [int(d) for d in func.params[0].shape]
        text = rope.emit(math.prod(shape[:-1]), shape[-1], int(params["rope_dim"]), int(params["groups"]),
                         soc, inverse=bool(params["inverse"]), name=name, arg_types=plan)
    elif (gemm := _gemm_shape(func)) is not None:
        m, n, k, dtype, b_kn = gemm
        text = matmul.emit(m, n, k, soc, dtype, name=name, b_kn=b_kn, arg_types=plan)
    else:
        return None
    return Kernel(name, text, mlir.block_dim(text), [k for _, k in types])


def _gemm_shape(func):
    """(m, n, k, input dtype, B stored [K, N]) when ``func`` is exactly ``C[..., n] = sum_k A[..., k]
    B[k, n]`` (or ``B[n, k]``) over three buffers with a float32 C from zero, else None: a GEMM the
    cube kernel (``kernels/matmul``) computes."""
    from tvm import s_tir, tirx
    from tvm.ir.expr import TensorLoad

    from .kernels import matmul

    params = list(func.params)
    if len(params) != 3 or not all(_is_buffer(p) for p in params):
        return None
    a, b, c = params
    if str(c.dtype) != "float32" or str(a.dtype) != str(b.dtype) or str(a.dtype) not in matmul.DTYPES \
            or len(b.shape) != 2 or len(a.shape) < 2 or len(c.shape) != len(a.shape):
        return None
    blocks = []

    def walk(node):
        if isinstance(node, s_tir.SBlockRealize):
            walk(node.block)
        elif isinstance(node, s_tir.SBlock):
            if node.name_hint != "root":
                blocks.append(node)
            walk(node.body)
        elif isinstance(node, tirx.SeqStmt):
            for x in node.seq:
                walk(x)
        elif isinstance(node, tirx.For):
            walk(node.body)

    walk(func.body)
    if len(blocks) != 1 or blocks[0].init is None:
        return None
    blk = blocks[0]
    red = [iv.var for iv in blk.iter_vars if int(iv.iter_type) == 2]  # CommReduce
    spatial = [iv.var for iv in blk.iter_vars if int(iv.iter_type) == 0]  # DataPar
    st, init = blk.body, blk.init
    if len(red) != 1 or not isinstance(st, tirx.BufferStore) or not st.buffer.same_as(c) \
            or not isinstance(init, tirx.BufferStore) or not isinstance(init.value, tirx.FloatImm) \
            or float(init.value.value) != 0.0 or not isinstance(st.value, tirx.Add):
        return None

    def load_of(e, buf):
        return isinstance(e, TensorLoad) and e.source.same_as(buf)

    acc, prod = st.value.a, st.value.b
    if not load_of(acc, c) or not isinstance(prod, tirx.Mul):
        return None
    x, y = (prod.a, prod.b) if load_of(prod.a, a) else (prod.b, prod.a)
    if not (load_of(x, a) and load_of(y, b)):
        return None

    def same(idx, want):
        return len(idx) == len(want) and all(isinstance(i, tirx.Var) and i.same_as(w) for i, w in zip(idx, want))

    k_var, out_idx = red[0], list(st.indices)
    if not same(out_idx, spatial) or not same(list(acc.indices), spatial):
        return None
    n_var = spatial[-1]
    if not same(list(x.indices), spatial[:-1] + [k_var]):
        return None
    if same(list(y.indices), [k_var, n_var]):
        b_kn = True
    elif same(list(y.indices), [n_var, k_var]):
        b_kn = False
    else:
        return None
    m = math.prod(int(d) for d in a.shape[:-1])
    return m, int(c.shape[-1]), int(a.shape[-1]), str(a.dtype), b_kn


def _dtype(e) -> str:
    """The dtype of a TIR expression (0.27 expressions carry it as their PrimType)."""
    ty = getattr(e, "ty", None)
    return str(getattr(ty, "dtype", ty))


def _is_buffer(var) -> bool:
    from tvm.tirx.buffer import BufferType

    return isinstance(getattr(var, "ty", None), BufferType)


class _Translator(mlir.Builder):
    """One PrimFunc (lowered to loops) written as a kernel module."""

    def __init__(self, name: str, func, soc: str):
        super().__init__()
        self.name, self.func, self.soc = name, func, soc
        self.vals: dict = {}      # tirx.Var -> (ssa, mlir type): scalars, loop variables as integers
        self.index: dict = {}     # tirx.Var -> ssa of type index (loop variables)
        self.bufs: dict = {}      # buffer Var -> (ssa, mlir.MemRef)
        self.pool: dict = {}  # vector loops' UB temporaries: length -> [ssa], shared by the loops

    # -- entry ---------------------------------------------------------------------------------
    def run(self) -> Kernel:
        args, kinds = [], []
        for i, p in enumerate(self.func.params):
            ssa = f"%arg{i}"
            if _is_buffer(p):
                self._check_dense(p)
                t = memref_type(p, mlir.GM)
                self.bufs[p] = (ssa, t)
                args.append((ssa, t))
                kinds.append("ptr")
            else:
                t = mlir.elem(_dtype(p), f"scalar parameter '{p.name}'")
                args.append((ssa, "i64"))
                kinds.append("i64")
                self.vals[p] = (ssa if t == "i64" else self.op(f"arith.trunci {ssa} : i64 to {t}"), t)
        loop = self._row_loop(self.func.body)
        blocks = 1
        if loop is None:
            self.stmt(self.func.body)
        else:
            blocks = max(1, min(int(loop.extent), cost.soc(self.soc).vector_cores))
            self._outer(self.func.body, loop)
        return Kernel(self.name, self.module(self.name, args, blocks), blocks, kinds)

    def _row_loop(self, body):
        """The parallel loop the whole body consists of (through allocations and bindings), or None."""
        from tvm import tirx

        while True:
            if isinstance(body, tirx.SeqStmt):
                rest = [s for s in body.seq if not isinstance(s, (tirx.AllocBuffer, tirx.DeclBuffer))]
                if len(rest) != 1:
                    return None
                body = rest[0]
            elif isinstance(body, tirx.AttrStmt):
                body = body.body
            elif isinstance(body, tirx.For):
                if body.kind == tirx.ForKind.PARALLEL and isinstance(body.extent, tirx.IntImm) and \
                        isinstance(body.min, tirx.IntImm) and int(body.min) == 0:
                    return body
                return None
            else:
                return None

    def _outer(self, body, loop):
        """Emits ``body`` with ``loop`` distributed over the AI cores."""
        from tvm import tirx

        if body.same_as(loop):
            with hivm.block_loop(self, self.const(int(loop.extent)), "i") as iv:
                self._loop_body(loop, iv)
        elif isinstance(body, tirx.SeqStmt):
            self._seq(body.seq, lambda s: self._outer(s, loop) if self._contains(s, loop) else self.stmt(s))
        elif isinstance(body, tirx.AttrStmt):
            self._outer(body.body, loop)
        else:
            raise Unsupported(f"unexpected {type(body).__name__} around the row loop")

    @staticmethod
    def _contains(stmt, loop) -> bool:
        from tvm import tirx

        while True:
            if stmt.same_as(loop):
                return True
            if isinstance(stmt, tirx.AttrStmt):
                stmt = stmt.body
            elif isinstance(stmt, tirx.SeqStmt):
                return any(_Translator._contains(s, loop) for s in stmt.seq)
            else:
                return False

    # -- buffers -------------------------------------------------------------------------------
    def _check_dense(self, buf):
        if buf.strides and len(buf.strides):
            raise Unsupported(f"buffer '{buf.name}' has explicit strides")
        if int(getattr(buf.elem_offset, "value", -1)) != 0:
            raise Unsupported(f"buffer '{buf.name}' has an element offset")

    def _view(self, s):
        """``DeclBuffer`` of a view over another buffer's data: a ``memref.reinterpret_cast`` with the
        view's shape, row-major strides and element offset."""
        src = s.data.args[0] if hasattr(s.data, "op") and str(s.data.op.name) == "tirx.buffer_data" else None
        if src is None or src not in self.bufs:
            raise Unsupported(f"buffer '{s.buffer.name}' is declared over data that is no buffer's")
        if s.buffer.strides and len(s.buffer.strides):
            raise Unsupported(f"view '{s.buffer.name}' has explicit strides")
        if str(s.buffer.dtype) != str(src.dtype):
            raise Unsupported(f"view '{s.buffer.name}' reinterprets {src.dtype} as {s.buffer.dtype}")
        ssa, src_t = self.bufs[src]
        shape = [int(d) for d in s.buffer.shape]
        strides = [1] * len(shape)
        for i in range(len(shape) - 2, -1, -1):
            strides[i] = strides[i + 1] * shape[i + 1]
        offset = int(getattr(s.buffer.elem_offset, "value", -1))
        if offset < 0:
            raise Unsupported(f"view '{s.buffer.name}' has a dynamic element offset")
        t = mlir.memref(shape, mlir.elem(str(s.buffer.dtype), f"view '{s.buffer.name}'"),
                        mlir.GM if src_t.space == mlir.GM else None, strides, offset)
        view = self.op(f"memref.reinterpret_cast {ssa} to offset: [{offset}], sizes: [{', '.join(map(str, shape))}],"
                       f" strides: [{', '.join(map(str, strides))}] : {src_t} to {t}", "view")
        self.bufs[s.buffer] = (view, t)

    def _buffer(self, buf):
        if buf not in self.bufs:
            raise Unsupported(f"buffer '{buf.name}' is used outside its allocation")
        return self.bufs[buf]

    # -- statements ----------------------------------------------------------------------------
    def _seq(self, stmts, each):
        """Emits ``stmts`` in order. Their local buffers become UB allocations at the function's
        entry: a fresh TIR buffer holds nothing a program may read, so hoisting one out of a loop
        keeps its meaning, and bishengir 1.2.0 plans the UB statically (it checks that they fit;
        ``memref.dealloc`` crashes its memory planner)."""
        from tvm import tirx

        for s in stmts:
            if isinstance(s, tirx.AllocBuffer):
                self._check_dense(s.buffer)
                t = memref_type(s.buffer, mlir.UB)
                self.bufs[s.buffer] = (self.alloc(t), t)
            else:
                each(s)

    def stmt(self, s):
        from tvm import tirx

        if isinstance(s, tirx.SeqStmt):
            self._seq(s.seq, self.stmt)
        elif isinstance(s, tirx.AllocBuffer):
            self._seq([s], self.stmt)
        elif isinstance(s, tirx.DeclBuffer):
            self._view(s)
        elif isinstance(s, tirx.BufferStore):
            ssa, t = self._buffer(s.buffer)
            value = self.expr(s.value)
            idx = ", ".join(self.idx(i) for i in s.indices)
            self.emit(f"memref.store {value}, {ssa}[{idx}] : {t}")
        elif isinstance(s, tirx.For):
            if not _vector.emit_loop(self, s):
                self._for(s, self.idx(s.min), self._add_idx(s.min, s.extent), self.const(1) if s.step is None
                          else self.idx(s.step))
        elif isinstance(s, tirx.IfThenElse):
            cond = self.expr(s.condition)
            self.emit(f"scf.if {cond} {{")
            self._scoped(s.then_case)
            if s.else_case is not None:
                self.emit("} else {")
                self._scoped(s.else_case)
            self.emit("}")
        elif isinstance(s, (tirx.Bind, tirx.LetStmt)):
            self.vals[s.var] = (self.expr(s.value), mlir.elem(_dtype(s.var), f"variable '{s.var.name}'"))
        elif isinstance(s, tirx.AttrStmt):
            self.stmt(s.body)
        elif isinstance(s, tirx.While):
            self._while(s)
        elif isinstance(s, tirx.Evaluate):
            if not isinstance(s.value, tirx.IntImm):
                raise Unsupported(f"statement evaluating {s.value} (only constants are no-ops)")
        else:
            raise Unsupported(f"statement {type(s).__name__} is not supported")

    def _scoped(self, body):
        """Emits ``body`` one level deeper, its bindings local to it."""
        saved = dict(self.vals), dict(self.index)
        with self.nested():
            self.stmt(body)
        self.vals, self.index = saved

    def _add_idx(self, a, b) -> str:
        from tvm import tirx

        if isinstance(a, tirx.IntImm) and isinstance(b, tirx.IntImm):
            return self.const(int(a) + int(b))
        return self.op(f"arith.addi {self.idx(a)}, {self.idx(b)} : index")

    def _for(self, loop, lo: str, hi: str, step: str):
        iv = self.fresh("i")
        with self.region(f"scf.for {iv} = {lo} to {hi} step {step} {{"):
            self._loop_body(loop, iv)

    def _loop_body(self, loop, iv: str):
        """Emits ``loop``'s body with its loop variable bound to ``iv``."""
        saved = dict(self.vals), dict(self.index)
        self.index[loop.loop_var] = iv
        self.stmt(loop.body)
        self.vals, self.index = saved

    def _while(self, s):
        self.emit("scf.while : () -> () {")
        with self.nested():
            self.emit(f"scf.condition({self.expr(s.condition)})")
        self.emit("} do {")
        self._scoped(s.body)
        with self.nested():
            self.emit("scf.yield")
        self.emit("}")

    # -- expressions ---------------------------------------------------------------------------
    def idx(self, e) -> str:
        """``e`` (an integer expression) as an ``index`` value."""
        from tvm import tirx

        if isinstance(e, tirx.IntImm):
            return self.const(int(e))
        if isinstance(e, tirx.Var) and e in self.index:
            return self.index[e]
        ops = {tirx.Add: "arith.addi", tirx.Sub: "arith.subi", tirx.Mul: "arith.muli", tirx.Min: "arith.minsi",
               tirx.Max: "arith.maxsi"}
        if type(e) in ops:
            return self.op(f"{ops[type(e)]} {self.idx(e.a)}, {self.idx(e.b)} : index")
        if isinstance(e, tirx.FloorDiv):
            return self.op(f"arith.floordivsi {self.idx(e.a)}, {self.idx(e.b)} : index")
        if isinstance(e, tirx.FloorMod):
            a, b = self.idx(e.a), self.idx(e.b)
            q = self.op(f"arith.floordivsi {a}, {b} : index")
            qb = self.op(f"arith.muli {q}, {b} : index")
            return self.op(f"arith.subi {a}, {qb} : index")
        v = self.expr(e)
        return self.op(f"arith.index_cast {v} : {self.type_of(e)} to index")

    def type_of(self, e) -> str:
        return mlir.elem(_dtype(e), f"expression {e}")

    def expr(self, e) -> str:
        from tvm import tirx
        from tvm.ir.expr import Call, TensorLoad

        t = self.type_of(e)
        if isinstance(e, tirx.IntImm):
            v = int(e)
            return self.const("true" if v else "false", "i1") if t == "i1" else self.const(v, t)
        if isinstance(e, tirx.FloatImm):
            return self.const(mlir.float_literal(float(e.value), t), t)
        if isinstance(e, tirx.Var):
            if e in self.vals:
                return self.vals[e][0]
            if e in self.index:
                return self.op(f"arith.index_cast {self.index[e]} : index to {t}")
            raise Unsupported(f"variable '{e.name}' is not bound")
        if isinstance(e, TensorLoad):
            ssa, mt = self._buffer(e.source)
            idx = ", ".join(self.idx(i) for i in e.indices)
            return self.op(f"memref.load {ssa}[{idx}] : {mt}")
        if isinstance(e, tirx.Cast):
            return self.cast(self.expr(e.value), self.type_of(e.value), t)
        if isinstance(e, tirx.Select):
            c, a, b = self.expr(e.condition), self.expr(e.true_value), self.expr(e.false_value)
            return self.op(f"arith.select {c}, {a}, {b} : {t}")
        if isinstance(e, tirx.Let):
            saved = dict(self.vals)
            self.vals[e.var] = (self.expr(e.value), self.type_of(e.value))
            out = self.expr(e.body)
            self.vals = saved
            return out
        if isinstance(e, Call):
            return self.call(e, t)
        binary = self.binary(e, t)
        if binary is not None:
            return binary
        raise Unsupported(f"expression {type(e).__name__} ({e}) is not supported")

    def binary(self, e, t: str):
        from tvm import tirx

        if isinstance(e, (tirx.And, tirx.Or)):
            return self.op(f"arith.{'andi' if isinstance(e, tirx.And) else 'ori'} {self.expr(e.a)}, {self.expr(e.b)} : i1")
        if isinstance(e, tirx.Not):
            return self.op(f"arith.xori {self.expr(e.a)}, {self.const('true', 'i1')} : i1")
        cmp = {tirx.LT: ("slt", "olt"), tirx.LE: ("sle", "ole"), tirx.GT: ("sgt", "ogt"), tirx.GE: ("sge", "oge"),
               tirx.EQ: ("eq", "oeq"), tirx.NE: ("ne", "une")}
        if type(e) in cmp:
            at = self.type_of(e.a)
            a, b = self.expr(e.a), self.expr(e.b)
            if mlir.is_float(at):
                return self.op(f"arith.cmpf {cmp[type(e)][1]}, {a}, {b} : {at}")
            return self.op(f"arith.cmpi {cmp[type(e)][0]}, {a}, {b} : {at}")
        bits = {tirx.LShift: "shli", tirx.RShift: "shrsi", tirx.BitwiseAnd: "andi", tirx.BitwiseOr: "ori",
                tirx.BitwiseXor: "xori"}
        if type(e) in bits:
            return self.op(f"arith.{bits[type(e)]} {self.expr(e.a)}, {self.expr(e.b)} : {t}")
        fl = mlir.is_float(t)
        table = {tirx.Add: ("addf", "addi"), tirx.Sub: ("subf", "subi"), tirx.Mul: ("mulf", "muli"),
                 tirx.Div: ("divf", "divsi"), tirx.Mod: ("remf", "remsi"), tirx.Min: ("minimumf", "minsi"),
                 tirx.Max: ("maximumf", "maxsi")}
        if type(e) in table:
            name = table[type(e)][0 if fl else 1]
            return self.op(f"arith.{name} {self.expr(e.a)}, {self.expr(e.b)} : {t}")
        if isinstance(e, (tirx.FloorDiv, tirx.FloorMod)):
            a, b = self.expr(e.a), self.expr(e.b)
            if fl:
                q = self.op(f"math.floor {self.op(f'arith.divf {a}, {b} : {t}')} : {t}")
                if isinstance(e, tirx.FloorDiv):
                    return q
                return self.op(f"arith.subf {a}, {self.op(f'arith.mulf {q}, {b} : {t}')} : {t}")
            q = self.op(f"arith.floordivsi {a}, {b} : {t}")
            if isinstance(e, tirx.FloorDiv):
                return q
            return self.op(f"arith.subi {a}, {self.op(f'arith.muli {q}, {b} : {t}')} : {t}")
        return None

    def call(self, e, t: str) -> str:
        name = "tirx." + str(e.op.name).split(".", 1)[-1]
        args = list(e.args)
        if name == "tirx.if_then_else":
            cond = self.expr(args[0])
            out = self.fresh("sel")
            self.emit(f"{out} = scf.if {cond} -> ({t}) {{")
            for branch in (args[1], args[2]):
                saved = dict(self.vals), dict(self.index)
                with self.nested():
                    self.emit(f"scf.yield {self.expr(branch)} : {t}")
                self.vals, self.index = saved
                self.emit("} else {" if branch is args[1] else "}")
            return out
        if name == "tirx.likely":
            return self.expr(args[0])
        if name in _MATH:
            vals = [self.expr(a) for a in args]
            return self.op(f"{_MATH[name]} {', '.join(vals)} : {t}")
        if name == "tirx.sigmoid":
            x = self.expr(args[0])
            one = self.const(mlir.float_literal(1.0, t), t)
            nx = self.op(f"arith.negf {x} : {t}")
            den = self.op(f"arith.addf {one}, {self.op(f'math.exp {nx} : {t}')} : {t}")
            return self.op(f"arith.divf {one}, {den} : {t}")
        if name == "tirx.isnan":
            x = self.expr(args[0])
            return self.op(f"arith.cmpf uno, {x}, {x} : {self.type_of(args[0])}")
        if name == "tirx.reinterpret":
            return self.op(f"arith.bitcast {self.expr(args[0])} : {self.type_of(args[0])} to {t}")
        if name in ("tirx.bitwise_and", "tirx.bitwise_or", "tirx.bitwise_xor", "tirx.shift_left",
                    "tirx.shift_right"):
            op = {"tirx.bitwise_and": "andi", "tirx.bitwise_or": "ori", "tirx.bitwise_xor": "xori",
                  "tirx.shift_left": "shli", "tirx.shift_right": "shrsi"}[name]
            return self.op(f"arith.{op} {self.expr(args[0])}, {self.expr(args[1])} : {t}")
        raise Unsupported(f"call to {name} is not supported")

    def cast(self, v: str, src: str, dst: str) -> str:
        if src == dst:
            return v
        if dst == "i1":
            zero = self.const(mlir.float_literal(0.0, src) if mlir.is_float(src) else 0, src)
            pred = "arith.cmpf une" if mlir.is_float(src) else "arith.cmpi ne"
            return self.op(f"{pred}, {v}, {zero} : {src}")
        if mlir.is_float(src) and mlir.is_float(dst):
            if src in ("f16", "bf16") and dst in ("f16", "bf16"):
                return self.cast(self.cast(v, src, "f32"), "f32", dst)
            op = "extf" if mlir.bits(dst) > mlir.bits(src) else "truncf"
            return self.op(f"arith.{op} {v} : {src} to {dst}")
        if mlir.is_float(src):
            return self.op(f"arith.fptosi {v} : {src} to {dst}")
        if mlir.is_float(dst):
            op = "uitofp" if src == "i1" else "sitofp"
            return self.op(f"arith.{op} {v} : {src} to {dst}")
        if mlir.bits(dst) > mlir.bits(src):
            return self.op(f"arith.{'extui' if src == 'i1' else 'extsi'} {v} : {src} to {dst}")
        return self.op(f"arith.trunci {v} : {src} to {dst}")


def build(kernels: dict, soc: str, workers: int | None = None):
    """Every kernel of ``kernels`` (name -> PrimFunc) translated and compiled by bishengir for
    ``soc`` (in parallel): the artifact's ``device_code.AscendCode``. A kernel bishengir rejects is a
    CompileError naming it and quoting the tool."""
    import os
    import tempfile
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from . import toolchain
    from .device_code import AscendCode, AscendKernel

    if toolchain.missing():
        raise CompileError(f"--target ascend needs the Ascend toolchain: {toolchain.missing()}")
    translated = [translate(name, func, soc) for name, func in kernels.items()]
    with tempfile.TemporaryDirectory(prefix="tide-ascend-") as tmp:
        def check(item):
            i, k = item
            try:
                return toolchain.compile_kernel(k.text, soc, Path(tmp) / f"k{i}")[1]
            except toolchain.ToolchainError as err:
                raise CompileError(f"ascend: kernel '{k.name}' does not compile for {soc}: {err}") from None

        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            binaries = list(pool.map(check, enumerate(translated)))
    return AscendCode(soc=soc, kernels=[AscendKernel(name=k.name, block_dim=k.block_dim, args=k.args, hivm=k.text,
                                                     binary=b) for k, b in zip(translated, binaries)])
