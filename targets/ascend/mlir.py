"""The Ascend target's MLIR text builder: every kernel module for bishengir is written through it,
hand-written (``kernels/``) or translated from TIR (``codegen``).

- types: tide dtypes as MLIR element types (the target's one dtype table), memref types (``MemRef``:
  shape, strided layout, GM or UB address space) and tensor types;
- ``Builder``: one kernel function being written: its lines at the current nesting, fresh SSA names
  (``%<hint><n>``), constants hoisted to the top of the function and named by value
  (``%c<value>_<type>``), allocations hoisted to the entry, and the module around it (``module``):
  one ``hacc.entry`` device function with its ``hacc.block_dim``, whose arguments may be declared
  with the caller's shapes (the plan's) and reshaped to the kernel's own at the entry.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass

GM = "#hivm.address_space<gm>"
UB = "#hivm.address_space<ub>"

# tide dtype -> (MLIR element type, bits)
DTYPES = {"float32": ("f32", 32), "float16": ("f16", 16), "bfloat16": ("bf16", 16), "float64": ("f64", 64),
          "int64": ("i64", 64), "int32": ("i32", 32), "int16": ("i16", 16), "int8": ("i8", 8), "bool": ("i1", 1),
          # quantized weights' bytes: MLIR integers are signless and the translator widens with a sign
          # extension, so a kernel reading uint8 masks after widening (``tide.ops.quant.byte``)
          "uint8": ("i8", 8)}
_BITS = dict(DTYPES.values())


class Unsupported(ValueError):
    """A type or construct the Ascend target does not take (codegen reports it as a CompileError
    naming the kernel)."""


def elem(dtype: str, what: str = "a value") -> str:
    """The MLIR element type of tide dtype ``dtype`` (``what``: how an error names its holder)."""
    if dtype not in DTYPES:
        raise Unsupported(f"{what} has dtype {dtype}, which the Ascend target does not take "
                          f"(supported: {', '.join(DTYPES)})")
    return DTYPES[dtype][0]


def bits(t: str) -> int:
    """The width of MLIR element type ``t``."""
    return _BITS[t]


def itemsize(dtype: str) -> int:
    """Bytes per element of tide dtype ``dtype``."""
    return -(-bits(elem(dtype)) // 8)


def is_float(t: str) -> bool:
    return t in ("f32", "f16", "bf16", "f64")


def float_literal(value: float, t: str) -> str:
    """``value`` rounded to float type ``t`` as MLIR's exact hexadecimal float literal."""
    import numpy as np

    if t == "bf16":
        import ml_dtypes

        return f"0x{int(np.array(value, ml_dtypes.bfloat16).view(np.uint16)):04X}"
    np_t, int_t, width = {"f16": (np.float16, np.uint16, 4), "f32": (np.float32, np.uint32, 8),
                          "f64": (np.float64, np.uint64, 16)}[t]
    with np.errstate(over="ignore"):
        return f"0x{int(np.array(value, np_t).view(int_t)):0{width}X}"


@dataclass(frozen=True)
class MemRef:
    """A memref type: ``shape`` (ints, ``"?"`` for a dynamic size), element type, optional strided
    layout (``strides``, ``offset``: an int or ``"?"``) and address space (``GM``, ``UB`` or None)."""
    shape: tuple
    elem: str
    space: str | None = None
    strides: tuple | None = None
    offset: int | str | None = None

    def __str__(self) -> str:
        parts = ["x".join([*map(str, self.shape), self.elem])]
        if self.strides is not None:
            offset = "" if self.offset is None else f", offset: {self.offset}"
            parts.append(f"strided<[{', '.join(map(str, self.strides))}]{offset}>")
        if self.space is not None:
            parts.append(self.space)
        return f"memref<{', '.join(parts)}>"


def memref(shape, elem_t: str, space: str | None = None, strides=None, offset=None) -> MemRef:
    """A ``MemRef`` of ``shape`` (any sequence) and element type ``elem_t``."""
    return MemRef(tuple(shape), elem_t, space, None if strides is None else tuple(strides), offset)


def gm(shape, elem_t: str, strides=None, offset=None) -> MemRef:
    """A memref in global memory."""
    return memref(shape, elem_t, GM, strides, offset)


def tensor(shape, elem_t: str) -> str:
    return "tensor<" + "x".join([*map(str, shape), elem_t]) + ">"


class Builder:
    """One kernel function being written (see the module docstring); ``module`` gives its text."""

    def __init__(self):
        self.lines: list[str] = []
        self.count = 0
        self.consts: dict = {}            # (literal, type) -> ssa
        self.const_lines: list[str] = []  # at the top of the function
        self.alloc_lines: list[str] = []  # allocations at the function's entry, after the constants
        self.ind = 2

    def fresh(self, hint: str = "v") -> str:
        self.count += 1
        return f"%{hint}{self.count}"

    def emit(self, line: str):
        self.lines.append("  " * self.ind + line)

    def op(self, rhs: str, hint: str = "v") -> str:
        """Emits ``%<fresh> = rhs``; returns the fresh name."""
        ssa = self.fresh(hint)
        self.emit(f"{ssa} = {rhs}")
        return ssa

    def const(self, value, t: str = "index") -> str:
        """The constant ``value`` (an int, or a literal's text such as a hex float or ``true``) of type
        ``t``, defined once at the top of the function."""
        key = (str(value), t)
        if key not in self.consts:
            ssa = f"%c{value}_{t}".replace("-", "m")
            self.consts[key] = ssa
            typed = "" if t == "i1" else f" : {t}"  # true / false carry their type
            self.const_lines.append(f"    {ssa} = arith.constant {value}{typed}")
        return self.consts[key]

    def alloc(self, t: MemRef, name: str | None = None) -> str:
        """A ``memref.alloc`` of ``t`` at the function's entry (named ``%buf<n>`` unless ``name``)."""
        ssa = name or f"%buf{len(self.alloc_lines)}"
        self.alloc_lines.append(f"    {ssa} = memref.alloc() : {t}")
        return ssa

    @contextmanager
    def nested(self):
        """Lines emitted inside are one nesting level deeper."""
        self.ind += 1
        try:
            yield
        finally:
            self.ind -= 1

    @contextmanager
    def region(self, head: str):
        """``head`` (an op opening a region with ``{``), the lines emitted inside, and the closing ``}``."""
        self.emit(head)
        with self.nested():
            yield
        self.emit("}")

    def module(self, name: str, args, block_dim: int, arg_types=None) -> str:
        """The module text: one device entry function ``name`` on ``block_dim`` AI cores, taking
        ``args`` ((ssa, type) as the body uses them) and running the body written so far.

        ``arg_types`` (one per argument; default the body's types): the types the entry is declared
        with, as its caller passes them. A memref argument declared with another shape of the same
        elements is reshaped to the body's at the entry: ``<ssa>_plan``, collapsed to one dimension
        (``<ssa>_flat``) unless it has one, then expanded to the body's shape as ``<ssa>``."""
        if arg_types is not None and len(arg_types) != len(args):
            raise Unsupported(f"the kernel takes {len(args)} arguments, its caller passes {len(arg_types)}")
        params, prologue = [], []
        for (ssa, have), want in zip(args, arg_types or [t for _, t in args]):
            if have == want:
                params.append(f"{ssa}: {have}")
                continue
            if not (isinstance(have, MemRef) and isinstance(want, MemRef)) or have.elem != want.elem \
                    or math.prod(have.shape) != math.prod(want.shape):
                raise Unsupported(f"argument {ssa}: the kernel takes {have}, its caller passes {want}")
            cur, cur_t = f"{ssa}_plan", want
            params.append(f"{cur}: {want}")
            if len(want.shape) != 1:
                flat_t = memref((math.prod(want.shape),), want.elem, want.space)
                prologue.append(f"    {ssa}_flat = memref.collapse_shape {cur} {_groups(want)} : {cur_t} into {flat_t}")
                cur, cur_t = f"{ssa}_flat", flat_t
            prologue.append(f"    {ssa} = memref.expand_shape {cur} {_groups(have)} output_shape "
                            f"[{', '.join(map(str, have.shape))}] : {cur_t} into {have}")
        head = (f"  func.func @{name}({', '.join(params)}) attributes {{hacc.entry, hacc.function_kind = "
                f"#hacc.function_kind<DEVICE>, hacc.block_dim = {block_dim} : i64}} {{")
        return "\n".join(["module {", head, *prologue, *self.const_lines, *self.alloc_lines, *self.lines,
                          "    return", "  }", "}", ""])


def _groups(t: MemRef) -> str:
    """The reassociation of all of ``t``'s dimensions into one."""
    return "[[" + ", ".join(map(str, range(len(t.shape)))) + "]]"


def block_dim(text: str) -> int:
    """The ``hacc.block_dim`` of a module's entry (as ``Builder.module`` writes it)."""
    m = re.search(r"hacc\.block_dim = (\d+) : i64", text)
    if not m:
        raise ValueError("ascend: module has no hacc.block_dim")
    return int(m.group(1))
