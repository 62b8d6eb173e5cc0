"""The schedule stage: every kernel of a module scheduled for the target, in one place.

Runs after ``tide.compiler.lower.legalize_and_fuse`` (tide's kernels are in the module as
substitution left them, tagged with their identity, ``tide.ops.kernel``; the rest are TVM's fused
generic kernels) and before ``tide.compiler.lower.to_dps`` and the plan. Per PrimFunc:

- a kernel written with its own thread/loop mapping (``tirx.is_scheduled`` already set) is kept;
- a tide kernel whose ``tide.kernel`` the target has a rule for gets that rule;
- anything else gets ``Target.schedule_generic`` (None keeps it as written).

Every result is marked ``tirx.is_scheduled``, so TVM's build adds no schedule of its own, and
keeps its identity (a rule may return its own variant). A rule that fails is a CompileError naming
the kernel.
"""

from __future__ import annotations

from ..ops.kernel import identity, tag
from .errors import CompileError

SCHEDULED = "tirx.is_scheduled"


def schedule(mod, target, tvm_target):
    """``mod`` with every PrimFunc scheduled by ``target`` (a ``tide.targets.Target``)."""
    from tvm import tirx

    updated = {}
    with tvm_target:
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or (func.attrs and func.attrs.get(SCHEDULED)):
                continue
            updated[gv] = schedule_kernel(func, target, tvm_target, gv.name_hint)
    for gv, func in updated.items():
        mod[gv] = func
    return mod


def schedule_kernel(func, target, tvm_target, name: str = "kernel"):
    """One PrimFunc scheduled by ``target``'s rule for its identity, or its generic schedule."""
    kernel, params = identity(func)
    rule = target.rules.get(kernel) if kernel else None
    try:
        out = rule(func, tvm_target) if rule is not None else target.schedule_generic(func, tvm_target)
    except CompileError:
        raise
    except Exception as err:
        what = f"the {target.kind} rule for tide kernel '{kernel}'" if rule else f"the {target.kind} generic schedule"
        raise CompileError(f"kernel '{name}': {what} failed: {type(err).__name__}: {err}") from err
    out = func if out is None else out
    if kernel is not None and identity(out)[0] is None:  # a rule's own variant keeps the kernel's identity
        out = tag(out, kernel, **params)
    return out.with_attr(SCHEDULED, True)
