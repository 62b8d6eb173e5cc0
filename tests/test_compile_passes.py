"""Compile-time machinery that must not change what a model computes: the kernel builders' cache
(``tide.ops.kernel.builder``), the numpy folding of layout ops and exact casts on constants
(``tide.compiler.fold_layout``) and the merging of kernels equal but for their name
(``tide.compiler.driver``)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import relax

from tide.compiler.fold_layout import fold_layout
from tide.compiler.schedule import schedule_kernel
from tide.ops import kernel, linear
from tide.targets.registry import get


def test_a_builder_parses_each_distinct_kernel_once_and_renames_the_copies():
    built = []

    @kernel.builder
    def build(rows: int, shape, scale: float = 1.0, name: str = "k"):
        built.append((rows, shape, scale, name))
        return linear.prim_func.__wrapped__(rows, 16, 16, 16, name=name)

    a = build(2, [1, 2], name="first")
    b = build(2, (1, 2), name="second")  # a list and a tuple of the same values are one key
    c = build(2, [1, 2], 1.0)
    d = build(3, [1, 2], name="third")
    assert [(r, tuple(s), f, n) for r, s, f, n in built] == [(2, (1, 2), 1.0, "first"), (3, (1, 2), 1.0, "third")]
    assert [str(f.attrs["global_symbol"]) for f in (a, b, c, d)] == ["first", "second", "k", "third"]
    tvm.ir.assert_structural_equal(a.with_attr("global_symbol", "x"), b.with_attr("global_symbol", "x"))
    assert a.body.same_as(b.body) and not a.body.same_as(d.body)


@pytest.mark.parametrize("kind", ["cpu", "cuda"])
def test_scheduling_a_built_kernel_leaves_the_builders_copy_as_written(kind):
    """TVM's schedule edits the function it is given in place; a target's rule schedules through
    ``schedule_of`` (a private copy: the CPU's linear rule), and the generic schedule (CUDA has no
    linear rule: TVM's dlight rules schedule it) must leave it alone too, so the next compile that
    asks for the same kernel gets it as written, not already scheduled."""
    target = get(kind)
    tvm_target = target.tvm_target()
    fresh = linear.prim_func.__wrapped__(4, 32, 64, 16, name="tide_linear_test")
    params = dict(rows=4, dim=32, cols=64, groups=1, panel=16, layout="panel", weight_dtype="float32", tile_rows=4)
    for _ in range(2):
        func = kernel.tag(linear.prim_func(4, 32, 64, 16, name="tide_linear_test"), "linear", **params)
        with tvm_target:
            scheduled = schedule_kernel(func, target, tvm_target, "tide_linear_test")
        assert not tvm_ffi.structural_equal(scheduled, func.with_attr("tirx.is_scheduled", True))  # scheduled
    tvm.ir.assert_structural_equal(linear.prim_func(4, 32, 64, 16, name="tide_linear_test"), fresh)


def _folded_main(build):
    """``main`` of a module with one dataflow block built by ``build(bb, x)`` (x: a float32 [2, 6]
    parameter), after fold_layout."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 6), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(build(bb, x))
        bb.emit_func_output(out)
    mod = fold_layout(bb.get())
    return mod["main"]


def _const(expr) -> np.ndarray:
    from tvm.ir.expr import GenericConst

    assert isinstance(expr, GenericConst), f"not folded: {expr}"
    return expr.value.numpy()


def test_layout_ops_on_constants_fold_to_numpys_values_through_chains():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 6)).astype(np.float32)
    b = rng.standard_normal((4, 3)).astype(np.float32)
    seen = {}

    def build(bb, x):
        r = bb.emit(relax.op.reshape(relax.const(a), (2, 12)))
        t = bb.emit(relax.op.permute_dims(r, [1, 0]))  # of a folded value: folds too
        e = bb.emit(relax.op.expand_dims(t, [0]))
        s = bb.emit(relax.op.squeeze(e, [0]))
        c = bb.emit(relax.op.concat([relax.const(a), relax.const(b)], axis=1))
        shape = bb.emit(relax.op.shape_to_tensor(relax.op.shape_of(x)))
        wide = bb.emit(relax.op.astype(relax.const(a.astype(ml_dtypes.bfloat16), "bfloat16"), "float32"))
        seen.update(t=t, s=s, c=c, shape=shape, wide=wide)
        return relax.Tuple([s, c, shape, wide, x])

    main = _folded_main(build)
    values = {b.var.name: b.value for block in main.body.blocks for b in block.bindings}
    np.testing.assert_array_equal(_const(values[seen["t"].name]), a.reshape(2, 12).T)
    np.testing.assert_array_equal(_const(values[seen["s"].name]), a.reshape(2, 12).T)
    np.testing.assert_array_equal(_const(values[seen["c"].name]), np.concatenate([a, b], axis=1))
    shape = _const(values[seen["shape"].name])
    assert shape.dtype == np.int64 and shape.tolist() == [2, 6]
    wide = _const(values[seen["wide"].name])
    assert wide.dtype == np.float32
    np.testing.assert_array_equal(wide, a.astype(ml_dtypes.bfloat16).astype(np.float32))


@pytest.mark.parametrize("case", ["rounding astype", "truncating astype", "arithmetic", "reshape of a parameter"])
def test_only_exact_ops_on_constants_fold(case):
    """Casts that round or truncate and arithmetic are left to Relax's FoldConstant, and nothing that
    reads a non-constant folds."""
    a = np.arange(12, dtype=np.float32).reshape(2, 6)

    def build(bb, x):
        if case == "rounding astype":
            return bb.emit(relax.op.astype(relax.const(a), "float16"))
        if case == "truncating astype":
            return bb.emit(relax.op.astype(relax.const(a.astype(np.int64)), "int32"))
        if case == "arithmetic":
            return bb.emit(relax.op.add(relax.const(a), relax.const(a)))
        return bb.emit(relax.op.reshape(x, (3, 4)))

    main = _folded_main(build)
    values = [b.value for block in main.body.blocks for b in block.bindings]
    assert isinstance(values[0], relax.Call), f"{case} was folded: {values[0]}"


def test_kernels_equal_but_for_their_name_are_compiled_once():
    """The same fused kernel in several layers (or entries) becomes one kernel of the artifact that
    every such call names; a different kernel under a taken name is renamed for its entry."""
    from tide.compiler.artifact.format import Call, Entry
    from tide.compiler.driver import _merge_kernels

    def func(rows, name):
        return linear.prim_func.__wrapped__(rows, 16, 16, 16, name=name)

    kernels = {}
    decode = Entry("decode", calls=[Call("add1", []), Call("add7", []), Call("mul", [])])
    _merge_kernels(kernels, {"add1": func(1, "add1"), "add7": func(1, "add7"), "mul": func(2, "mul")}, decode)
    assert list(kernels) == ["add1", "mul"]
    assert [c.kernel for c in decode.calls] == ["add1", "add1", "mul"]
    prefill = Entry("prefill_16", calls=[Call("add3", []), Call("mul", [])])
    _merge_kernels(kernels, {"add3": func(2, "add3"), "mul": func(16, "mul")}, prefill)
    assert list(kernels) == ["add1", "mul", "prefill_16_mul"]
    assert [c.kernel for c in prefill.calls] == ["mul", "prefill_16_mul"]
    tvm.ir.assert_structural_equal(kernels["prefill_16_mul"], func(16, "mul"))
