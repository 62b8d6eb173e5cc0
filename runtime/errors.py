"""TideError, the one exception of tide.runtime (no dependencies: every module can raise it)."""

from __future__ import annotations


class TideError(RuntimeError):
    """An error from the runtime or a rejected call. ``code``: the C status code (0 for errors
    found by the Python layer)."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message)
        self.code = code
