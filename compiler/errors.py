"""Errors the compiler reports to users."""


class CompileError(Exception):
    """A model cannot be compiled; the message names the file, node, op type, opset and reason."""
