"""The target registry: every folder of ``tide/targets/`` that exports ``TARGET``, plus targets
registered at run time (``register``). The command line and the compiler ask it; nothing else
names a target.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

from ..compiler.errors import CompileError
from .target import Target

_REGISTERED: dict[str, Target] = {}


def _folders() -> list[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    return sorted(m.name for m in pkgutil.iter_modules([here]) if m.ispkg)


def kinds() -> list[str]:
    """The names ``--target`` accepts: every target folder, then the registered targets."""
    return _folders() + sorted(k for k in _REGISTERED if k not in _folders())


def get(kind: str) -> Target:
    """The target named ``kind``; a CompileError listing the available ones otherwise."""
    if kind in _REGISTERED:
        return _REGISTERED[kind]
    if kind in _folders():
        target = getattr(importlib.import_module(f"{__package__}.{kind}"), "TARGET", None)
        if isinstance(target, Target) and target.kind == kind:
            return target
        raise CompileError(f"tide/targets/{kind}/ does not export a Target named '{kind}' as TARGET")
    raise CompileError(f"target '{kind}' is not available in this build of tide (available: {', '.join(kinds())})")


def register(target: Target) -> None:
    """Makes ``target`` available under ``target.kind`` (replacing one registered before)."""
    if not isinstance(target, Target) or not target.kind:
        raise CompileError("register() takes a Target instance with a kind")
    _REGISTERED[target.kind] = target


def unregister(kind: str) -> None:
    """Removes a target ``register`` added."""
    _REGISTERED.pop(kind, None)
