"""Errors the compiler reports to users, and the one place that turns a failure from inside a stage
(TVM's frontend, legalization, scheduling, code generation) into a readable sentence."""

from __future__ import annotations

import re


class CompileError(Exception):
    """A model cannot be compiled; the message names the file, node, op type, opset and reason."""


# lines of a TVM message that are not its reason: tracebacks, stack frames, source excerpts
_NOISE = re.compile(r"^\s*(Traceback|File \"|\d+: |at |\^|\[bt\]|During handling|The above exception|"
                    r"Stack trace|-+$)")
# prefixes of a reason that only name the error class or the failed check
_PREFIX = re.compile(r"^(?:(?:[\w.]+(?:Error|Exception)):\s*|Check failed:\s*\(.*?\) is false:\s*|\[[\d:.]+\] \S+: )+")
# where printed IR starts inside a message (Relax / TensorIR script, an op's repr)
_IR = re.compile(r"\bR\.\w|\bT\.\w|\bI\.\w|ir\.Op\(|\bspan=|@\w+\.ir_module|\bdef main\(|0x[0-9a-f]{6,}")
MAX_CHARS = 400

INTERNAL = "internal compiler error"


def sentence(message: str) -> str:
    """``message`` as one readable line: its first meaningful line, cut before any printed IR (at the
    last full stop before it when there is one), error-class prefixes removed, at most MAX_CHARS."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip() and not _NOISE.match(ln)]
    text = _PREFIX.sub("", lines[0]) if lines else ""
    ir = _IR.search(text)
    if ir:
        head = text[:ir.start()]
        stop = head.rfind(". ")
        text = head[:stop + 1] if stop > 0 else head.rstrip(" ,;:(") + " ..."
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return text.strip()


def readable(message: str) -> bool:
    """True when ``message`` is already one readable sentence (``sentence`` leaves it unchanged)."""
    return bool(message) and sentence(message) == message.strip()


def internal(where: str, stage: str, err: BaseException) -> CompileError:
    """The report of an unexpected failure ``err`` of ``stage``: a sentence, marked internal."""
    what = sentence(str(err)) or type(err).__name__
    return CompileError(f"{where}: {stage} failed ({INTERNAL}: {type(err).__name__}: {what})")
