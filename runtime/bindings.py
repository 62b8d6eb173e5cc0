"""The bindings: libtide_runtime.so (found or built by ``build.library_path``) dlopened once
through cffi (ABI mode, declarations in ``_ffi``), and its statuses turned into TideError."""

from __future__ import annotations

import threading

from . import build
from ._ffi import ffi
from .errors import TideError

_lib = None
_lib_lock = threading.Lock()


def library():
    """The cffi library of libtide_runtime.so (dlopened on the first call)."""
    global _lib
    with _lib_lock:
        if _lib is None:
            _lib = ffi.dlopen(build.library_path())
        return _lib


def check(status) -> None:
    """Raises TideError for a failed call's ``tide_status_t`` (freeing it); NULL is success."""
    if status != ffi.NULL:
        lib = library()
        message = ffi.string(lib.tide_status_message(status)).decode("utf-8", "replace")
        code = int(lib.tide_status_code(status))
        lib.tide_status_free(status)
        raise TideError(message, code)
