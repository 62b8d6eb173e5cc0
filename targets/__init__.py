"""tide.targets: one folder per target (``cpu/``, ``cuda/``, ``ascend/``), each exporting one
``Target`` as ``TARGET``; ``registry`` finds them. See ``target.py`` for what a target gives each
compiler stage and docs/architecture.md for how to add one.
"""

from .registry import get, kinds, register, unregister
from .target import KernelLibrary, Requirements, Target

__all__ = ["KernelLibrary", "Requirements", "Target", "get", "kinds", "register", "unregister"]
