"""A tide kernel's identity: the one attribute pair every kernel of ``tide.ops`` carries.

``tide.kernel`` names the kernel (``"sink_attention"``, ``"moe_gate_up"``, ...: the kernel's module,
or for modules with several kernels the kernel's own name) and ``tide.params`` holds what a target's
schedule rule needs to know about it beyond its buffers: its shape parameters and the choices the
target made for it (``Target.choose``), plus ``flops`` and ``bytes``, one call's FLOPs and bytes moved
by its ``cost`` (where the data decides: every entry visible, every routed expert distinct), which the
artifact records for profiles. The schedule stage (``tide.compiler.schedule``) picks each
target's rule by ``tide.kernel``; a rule may rebuild the kernel from its parameters (a variant the
target implements itself, with the same signature and contract).
"""

from __future__ import annotations

KERNEL_ATTR = "tide.kernel"
PARAMS_ATTR = "tide.params"
OPAQUE = 8  # Relax op pattern of a tide kernel: never fused with its neighbours


def tag(func, kernel: str, **params):
    """``func`` with its identity (and opaque to fusion). ``params`` values: int, float, bool or str."""
    return func.with_attrs({KERNEL_ATTR: kernel, PARAMS_ATTR: params, "op_pattern": OPAQUE})


def identity(func) -> tuple[str | None, dict]:
    """``(kernel, params)`` of a PrimFunc; ``(None, {})`` for a kernel TVM lowered generically."""
    attrs = func.attrs
    if attrs is None or KERNEL_ATTR not in attrs:
        return None, {}
    params = attrs[PARAMS_ATTR] if PARAMS_ATTR in attrs else {}
    return str(attrs[KERNEL_ATTR]), dict(params.items())


def add(bb, func, name: str, kernel: str, **params):
    """Adds ``func`` to the module being built as ``name``, tagged; returns its GlobalVar."""
    return bb.add_func(tag(func, kernel, **params), name)
