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

import functools
import inspect

KERNEL_ATTR = "tide.kernel"
PARAMS_ATTR = "tide.params"
OPAQUE = 8  # Relax op pattern of a tide kernel: never fused with its neighbours
BUILDER_CACHE_SIZE = 4096  # kernels kept per builder (``builder``)


def builder(build):
    """Decorates a kernel builder (a function of shape parameters and choices returning a PrimFunc)
    so that each distinct kernel is built once per process.

    Builders are pure: the same arguments give the same kernel, and TVMScript parsing costs tens of
    milliseconds a kernel, so the layers of a model (and the entries of one compile, and the compiles
    of one process) that need the same kernel share one parse. The cache key is every argument but
    ``name`` (lists and dicts keyed by value); a hit is returned renamed (``global_symbol``) to the
    name asked for, sharing the cached function's body. TVM's schedule edits the function it is given
    in place, so a kernel is scheduled only through a copy (``tide.targets.helpers.schedule_of``)."""
    signature = inspect.signature(build)
    cache: dict = {}

    @functools.wraps(build)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        name = bound.arguments.pop("name", None)
        key = _frozen(bound.arguments)
        func = cache.get(key)
        if func is None:
            if len(cache) >= BUILDER_CACHE_SIZE:
                cache.clear()
            func = cache[key] = build(*bound.args, **bound.kwargs, **({} if name is None else {"name": name}))
        return func if name is None else func.with_attr("global_symbol", name)

    return wrapper


def _frozen(value):
    """``value`` made hashable (lists and tuples as tuples, dicts as sorted item tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    return value


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
