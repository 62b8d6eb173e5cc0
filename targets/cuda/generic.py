"""The CUDA schedule of generic kernels (TVM-lowered ops, and tide kernels without a rule such as
RMSNorm): dlight's GPU rules, first that applies wins (Matmul, GEMV, Reduction, GeneralReduction,
Fallback). A kernel left without a thread binding would run on the host and fail TVM's memory
verification: that is an error naming it.
"""

from __future__ import annotations

import functools

_THREAD_MARKERS = ("T.thread_binding(", "T.launch_thread(", "T.env_thread(")


@functools.lru_cache(maxsize=None)
def _rules():
    from tvm.s_tir import dlight as dl

    return (dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback())


def schedule(func, tvm_target):
    """``func`` scheduled by the first dlight rule that applies (a rule that fails on it is skipped);
    ValueError if none binds it to threads."""
    from tvm import s_tir

    for rule in _rules():
        try:
            space = rule.apply(func, tvm_target, False)
        except (ValueError, AssertionError):  # the rule does not fit this kernel's form: try the next
            space = None
        if space is None:
            continue
        func = (space if isinstance(space, s_tir.Schedule) else space[0]).mod["main"]
        break
    if not has_thread_binding(func):
        raise ValueError("no thread binding after dlight's GPU rules (the kernel would run on the host and "
                         "fail TVM's memory verification)")
    return func


def has_thread_binding(func) -> bool:
    text = func.script()
    return any(marker in text for marker in _THREAD_MARKERS)
