"""Innermost element-wise loops of a translated kernel as HIVM vector ops (``codegen._Translator``).

A loop ``for j in range(n): D[..., j] = f(...)`` is vectorized when ``n`` is static (at least
MIN_LENGTH), the body is that one store of float32, and ``f`` is built from

- loads whose last index is ``j`` and whose other indices do not depend on ``j`` (vector operands),
- sub-expressions that do not depend on ``j`` (computed once by scalar code, broadcast with ``vbrc``),
- ``+ - * /``, ``max``/``min``, ``exp``, ``sqrt``, ``fabs``, ``log``, ``tanh``, ``rsqrt`` and
  ``sigmoid`` (as ``1 / (1 + exp(-x))``).

``D`` may not be read as a broadcast operand (the scalar loop would see its own earlier stores).
Tiles are ``[c]`` with ``c`` = n, or the largest divisor of n up to CHUNK (a loop over chunks):
GM operands are loaded into UB temporaries (``hivm.hir.load``), UB buffers are used in place
(subviews), each operation writes a UB temporary, and the result is stored to GM
(``hivm.hir.store``) or written straight into a UB destination. Temporaries are allocated once per
kernel and tile length at the entry and shared by all its vector loops (they run one after another).
Everything else stays scalar.
"""

from __future__ import annotations

from . import mlir

MIN_LENGTH = 8
CHUNK = 512  # float32 elements per tile (2 KiB of UB per temporary)

_BINARY = {"Add": "vadd", "Sub": "vsub", "Mul": "vmul", "Div": "vdiv", "Max": "vmax", "Min": "vmin"}
_UNARY = {"exp": "vexp", "sqrt": "vsqrt", "fabs": "vabs", "log": "vln", "tanh": "vtanh", "rsqrt": "vrsqrt"}


def _children(e):
    from tvm import tirx
    from tvm.ir.expr import Call, TensorLoad

    if isinstance(e, TensorLoad):
        return list(e.indices)
    if isinstance(e, Call):
        return list(e.args)
    if isinstance(e, tirx.Cast):
        return [e.value]
    if isinstance(e, tirx.Select):
        return [e.condition, e.true_value, e.false_value]
    if isinstance(e, tirx.Let):
        return [e.value, e.body]
    if isinstance(e, tirx.Not):
        return [e.a]
    if hasattr(e, "a") and hasattr(e, "b"):
        return [e.a, e.b]
    return []


def _uses(e, var) -> bool:
    from tvm import tirx

    if isinstance(e, tirx.Var) and e.same_as(var):
        return True
    return any(_uses(c, var) for c in _children(e))


def _loads_of(e, buf) -> bool:
    from tvm.ir.expr import TensorLoad

    if isinstance(e, TensorLoad) and e.source.same_as(buf):
        return True
    return any(_loads_of(c, buf) for c in _children(e))


def _plan(e, j, dest):
    """The vector plan of expression ``e``: ("scalar", e) | ("load", buf, indices) | ("op", name,
    [plans]); None when ``e`` is not vectorizable."""
    from tvm import tirx
    from tvm.ir.expr import Call, TensorLoad

    from .codegen import _dtype

    if _dtype(e) != "float32":
        return None
    if not _uses(e, j):
        return None if _loads_of(e, dest) else ("scalar", e)
    if isinstance(e, TensorLoad):
        idx = list(e.indices)
        if isinstance(idx[-1], tirx.Var) and idx[-1].same_as(j) and not any(_uses(i, j) for i in idx[:-1]):
            return ("load", e.source, idx[:-1])
        return None
    kind = type(e).__name__
    if kind in _BINARY:
        a, b = _plan(e.a, j, dest), _plan(e.b, j, dest)
        return None if a is None or b is None else ("op", _BINARY[kind], [a, b])
    if isinstance(e, Call):
        name = str(e.op.name).split(".", 1)[-1]
        if name in _UNARY:
            x = _plan(e.args[0], j, dest)
            return None if x is None else ("op", _UNARY[name], [x])
        if name == "sigmoid":
            x = _plan(e.args[0], j, dest)
            if x is None:
                return None
            neg = ("op", "vmul", [x, ("const", -1.0)])
            den = ("op", "vadd", [("op", "vexp", [neg]), ("const", 1.0)])
            return ("op", "vdiv", [("const", 1.0), den])
    return None


def emit_loop(tr, loop) -> bool:
    """Emits ``loop`` as vector ops through translator ``tr`` when it qualifies; False otherwise
    (nothing emitted)."""
    from tvm import tirx

    from .codegen import _dtype

    if not (isinstance(loop.min, tirx.IntImm) and int(loop.min) == 0 and isinstance(loop.extent, tirx.IntImm)):
        return False
    if loop.kind not in (tirx.ForKind.SERIAL, tirx.ForKind.VECTORIZED, tirx.ForKind.UNROLLED):
        return False
    n, j, st = int(loop.extent), loop.loop_var, loop.body
    if n < MIN_LENGTH or not isinstance(st, tirx.BufferStore) or str(st.buffer.dtype) != "float32":
        return False
    idx = list(st.indices)
    if not (isinstance(idx[-1], tirx.Var) and idx[-1].same_as(j)) or any(_uses(i, j) for i in idx[:-1]):
        return False
    if _dtype(st.value) != "float32":
        return False
    plan = _plan(st.value, j, st.buffer)
    if plan is None or st.buffer not in tr.bufs:
        return False
    if plan[0] == "load" and tr.bufs[st.buffer][1].space != mlir.GM and tr.bufs[plan[1]][1].space != mlir.GM:
        return False  # a UB -> UB copy: no vector op moves it
    c = max((d for d in range(1, min(n, CHUNK) + 1) if n % d == 0), default=1)
    if c < MIN_LENGTH:
        return False
    _Emitter(tr, c).loop(plan, st, n)
    return True


class _Emitter:
    def __init__(self, tr, c: int):
        self.tr, self.c = tr, c
        self.t = mlir.memref((c,), "f32", mlir.UB)
        self.used = 0  # temporaries of the pool taken by the tile being emitted
        self.memo = {}  # operands already in UB in this tile: loads by (buffer, indices), broadcasts by value

    def temp(self) -> str:
        pool = self.tr.pool.setdefault(self.c, [])
        if self.used == len(pool):
            pool.append(self.tr.alloc(self.t, f"%vt{self.c}_{len(pool)}"))
        self.used += 1
        return pool[self.used - 1]

    def view(self, buf, lead, j0: str) -> tuple[str, mlir.MemRef]:
        """A rank-reduced ``[c]`` subview of ``buf[*lead, j0 : j0 + c]`` and its type."""
        ssa, t = self.tr.bufs[buf]
        offs = [self.tr.idx(i) for i in lead] + [j0]
        rank = len(offs)
        sizes = ["1"] * (rank - 1) + [str(self.c)]
        vt = mlir.memref((self.c,), "f32", t.space, (1,), "?")
        v = self.tr.op(f"memref.subview {ssa}[{', '.join(offs)}] [{', '.join(sizes)}] [{', '.join(['1'] * rank)}] : "
                       f"{t} to {vt}", "vv")
        return v, vt

    def loop(self, plan, st, n: int):
        tr = self.tr
        scalars = {}
        self._scalars(plan, scalars)
        if self.c == n:
            self.body(plan, st, tr.const(0), scalars)
            return
        iv = tr.fresh("vj")
        with tr.region(f"scf.for {iv} = {tr.const(0)} to {tr.const(n)} step {tr.const(self.c)} {{"):
            self.body(plan, st, iv, scalars)

    def _scalars(self, plan, out: dict):
        """Scalar operands, computed once before the loop (they do not depend on j)."""
        if plan[0] == "scalar":
            out[id(plan)] = self.tr.expr(plan[1])
        elif plan[0] == "const":
            out[id(plan)] = self.tr.const(mlir.float_literal(plan[1], "f32"), "f32")
        elif plan[0] == "op":
            for p in plan[2]:
                self._scalars(p, out)

    def body(self, plan, st, j0: str, scalars: dict):
        self.used, self.memo = 0, {}
        if self.tr.bufs[st.buffer][1].space == mlir.GM:
            res, rt = self.value(plan, j0, scalars)
            view, vt = self.view(st.buffer, list(st.indices)[:-1], j0)
            self.tr.emit(f"hivm.hir.store ins({res} : {rt}) outs({view} : {vt})")
        else:
            out = self.view(st.buffer, list(st.indices)[:-1], j0)
            self.value(plan, j0, scalars, out)

    def value(self, plan, j0: str, scalars: dict, out=None) -> tuple[str, mlir.MemRef]:
        """Emits ``plan``; returns its UB tile (``out`` when given, for the root operation)."""
        tr = self.tr
        key = ("brc", scalars[id(plan)]) if plan[0] in ("scalar", "const") else \
            ("load", plan[1], tuple(str(i) for i in plan[2])) if plan[0] == "load" else None
        if key is not None and out is None and key in self.memo:
            return self.memo[key]
        if plan[0] in ("scalar", "const"):
            dst, dt = out if out is not None else (self.temp(), self.t)
            tr.emit(f"hivm.hir.vbrc ins({scalars[id(plan)]} : f32) outs({dst} : {dt})")
            self.memo[key] = (dst, dt)
            return dst, dt
        if plan[0] == "load":
            view, vt = self.view(plan[1], plan[2], j0)
            if vt.space != mlir.GM:
                return view, vt  # a UB buffer: used in place (emit_loop refused a UB -> UB copy)
            dst, dt = out if out is not None else (self.temp(), self.t)
            tr.emit(f"hivm.hir.load ins({view} : {vt}) outs({dst} : {dt})")
            self.memo[key] = (dst, dt)
            return dst, dt
        args = [self.value(p, j0, scalars) for p in plan[2]]
        dst, dt = out if out is not None else (self.temp(), self.t)
        ins, types = ", ".join(a for a, _ in args), ", ".join(str(t) for _, t in args)
        tr.emit(f"hivm.hir.{plan[1]} ins({ins} : {types}) outs({dst} : {dt})")
        return dst, dt
