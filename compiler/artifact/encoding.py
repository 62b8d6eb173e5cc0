"""The artifact's binary primitives: little-endian integers, length-prefixed ASCII strings and
tensor descriptors, written by ``Out`` and read back by ``In`` (a bounds-checked cursor whose errors
name the section, the context and the byte). The sections of ``writer``/``reader`` and the
targets' DEVICE_CODE formats are built from them.
"""

from __future__ import annotations

import struct

import numpy as np

from ...runtime.dtypes import DTYPE_NAMES, DTYPES
from .format import MAX_COUNT, MAX_RANK, MAX_STRING, ArtifactError


class Out:
    """Accumulates a section's bytes."""

    def __init__(self):
        self.parts = []

    def raw(self, data: bytes):
        self.parts.append(bytes(data))

    def u8(self, v):
        self.parts.append(struct.pack("<B", v))

    def u32(self, v):
        self.parts.append(struct.pack("<I", v))

    def u64(self, v):
        self.parts.append(struct.pack("<Q", v))

    def i64(self, v):
        self.parts.append(struct.pack("<q", v))

    def string(self, s: str):
        data = s.encode("ascii")
        self.u32(len(data))
        self.parts.append(data)

    def dtype(self, code: int, bits: int):
        self.parts.append(struct.pack("<BBH", code, bits, 1))

    def desc(self, dtype: str, shape):
        self.dtype(*DTYPES[dtype])
        self.u32(len(shape))
        for d in shape:
            self.i64(int(d))

    def bytes(self) -> bytes:
        return b"".join(self.parts)


class In:
    """A bounds-checked cursor over one section; errors name the section, context and byte."""

    def __init__(self, data, where: str):
        self.data, self.pos, self.where, self.context = data, 0, where, "start"

    def fail(self, message: str):
        raise ArtifactError(f"{self.where} section, {self.context} (byte {self.pos}): {message}")

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str):
        if self.left() < n:
            self.fail(f"truncated: {what} needs {n} bytes, {self.left()} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def blob(self, what: str) -> bytes:
        """A u64 length, then that many bytes."""
        n = self.u64(f"{what} size")
        if n > self.left():
            self.fail(f"{what} of {n} bytes exceeds the {self.left()} bytes left (truncated?)")
        return bytes(self.take(n, what))

    def magic(self, expected: bytes):
        if bytes(self.take(len(expected), "magic")) != expected:
            self.pos -= len(expected)
            self.fail(f'bad magic (expected "{expected.decode("ascii")}")')

    def u8(self, what):
        return self.take(1, what)[0]

    def u32(self, what):
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what):
        return struct.unpack("<Q", self.take(8, what))[0]

    def i64(self, what):
        return struct.unpack("<q", self.take(8, what))[0]

    def count(self, what, min_bytes):
        n = self.u32(what)
        if n > MAX_COUNT:
            self.fail(f"{what} {n} exceeds {MAX_COUNT}")
        if n * min_bytes > self.left():
            self.fail(f"{what} {n} cannot fit in the {self.left()} bytes left (truncated?)")
        return n

    def string(self, what, allow_empty=False):
        n = self.u32(what)
        if n > MAX_STRING:
            self.fail(f"{what} length {n} exceeds {MAX_STRING}")
        if n == 0 and not allow_empty:
            self.fail(f"{what} is empty")
        raw = bytes(self.take(n, what))
        for i, c in enumerate(raw):
            if not 0x20 <= c <= 0x7E:
                self.pos -= n
                self.fail(f"{what} has a non-printable byte 0x{c:02x} at position {i}")
        return raw.decode("ascii")

    def dtype(self, what: str = "dtype", extra: dict | None = None, rewind: bool = False) -> str:
        """A dtype name; ``extra`` maps more (code, bits) pairs to names (e.g. a device pointer);
        ``rewind``: an error points at the dtype rather than after it."""
        code, bits, lanes = struct.unpack("<BBH", self.take(4, what))
        names = {**DTYPE_NAMES, **(extra or {})}
        if (code, bits) not in names or lanes != 1:
            self.pos -= 4 if rewind else 0
            self.fail(f"unsupported {what} (code {code}, bits {bits}, lanes {lanes})")
        return names[(code, bits)]

    def desc(self):
        dtype = self.dtype()
        ndim = self.u32("ndim")
        if ndim > MAX_RANK:
            self.fail(f"rank {ndim} exceeds {MAX_RANK}")
        shape = []
        for i in range(ndim):
            d = self.i64("shape dimension")
            if d < 0:
                self.fail(f"shape dimension {i} is negative ({d})")
            shape.append(d)
        if int(np.prod(shape, dtype=object)) * (DTYPES[dtype][1] // 8) >= 2**64:
            self.fail("byte size overflows 64 bits")
        return dtype, tuple(shape)

    def end(self, what: str):
        if self.pos != len(self.data):
            self.fail(f"{len(self.data) - self.pos} {what}")
