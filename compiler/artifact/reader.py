"""The artifact reader: parses and validates a file completely, with the C loader's rules
(``tide inspect``, the Ascend CPU runner and the tests use it). Only numpy (and ml_dtypes, for
bfloat16 weights) is needed.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from .encoding import In
from .format import (ARG_KINDS, BUFFER_KINDS, FEATURE_BIT_COUNT, FORMAT_VERSION, HEADER_BYTES, MAGIC,
                     MAX_SECTION_ALIGN, MAX_SECTIONS, OP_CALL, ROLES, SECTION_NAMES, TABLE_ENTRY_BYTES, TARGET_KINDS,
                     WEIGHT_ALIGN, WEIGHTS_SECTION_ALIGN, ArtifactError, Buffer, Call, Entry, IOBinding, Plan, Section,
                     StateSpec, TargetInfo, WeightSpec, device_format, nbytes_of, np_dtype, validate_plan)
from .writer import check_elf

_CRC_CHUNK = 64 << 20
_MIN_STRING, _MIN_DESC = 5, 8
_MIN = {"weight": _MIN_STRING + _MIN_DESC + 16, "state": _MIN_STRING + _MIN_DESC, "buffer": 13 + _MIN_DESC,
        "io": _MIN_STRING + 8, "call": 9, "arg": 9, "entry": _MIN_STRING + 24}
_KIND_OF = {v: k for k, v in BUFFER_KINDS.items()}
_ROLE_OF = {v: k for k, v in ROLES.items()}
_ARG_OF = {v: k for k, v in ARG_KINDS.items()}
_TARGET_OF = {v: k for k, v in TARGET_KINDS.items()}


@dataclass
class Artifact:
    """What ``read_artifact`` returns: the data model plus where each section lies."""

    path: str
    file_size: int
    target: TargetInfo
    plan: Plan
    metadata: dict
    sections: dict = field(default_factory=dict)  # kind name -> (offset, size), in file order
    section_info: dict = field(default_factory=dict)  # kind name -> Section (with CRC and alignment)
    device_code: object | None = None  # the parsed DEVICE_CODE section, in its target's format

    def section_bytes(self, kind: str) -> bytes:
        """A section's bytes (e.g. "KERNELS_HOST"); b"" when the artifact has none."""
        s = self.section_info.get(kind)
        if s is None:
            return b""
        with open(self.path, "rb") as f:
            f.seek(s.offset)
            return f.read(s.size)

    def weight(self, index: int) -> np.ndarray:
        """Weight ``index`` as a read-only array memory-mapped from the file."""
        return load_weight(self, index)


def _decode_target(data) -> TargetInfo:
    r = In(data, "TARGET")
    r.context = "target"
    kind = r.u32("target kind")
    if kind not in _TARGET_OF:
        r.fail(f"unknown target kind {kind}")
    host = r.string("host architecture")
    features = r.u64("CPU feature mask")
    if features >> FEATURE_BIT_COUNT:
        r.fail(f"unknown CPU feature bits 0x{features >> FEATURE_BIT_COUNT << FEATURE_BIT_COUNT:x}")
    device = r.string("device architecture", allow_empty=True)
    if device_format(_TARGET_OF[kind]) is None and device:
        r.fail(f"a {_TARGET_OF[kind]} target has device architecture '{device}' (expected \"\")")
    r.end("unexpected trailing bytes")
    return TargetInfo(_TARGET_OF[kind], host, features, device)


def _decode_plan(data) -> Plan:
    r = In(data, "PLAN")
    r.context = "kernels"
    kernels = [r.string("kernel name") for _ in range(r.count("kernel count", _MIN_STRING))]
    r.context = "weights"
    weights = []
    for i in range(r.count("weight count", _MIN["weight"])):
        r.context = f"weight {i}"
        name = r.string("weight name")
        r.context = f"weight '{name}'"
        dtype, shape = r.desc()
        weights.append(WeightSpec(name, dtype, shape, r.u64("offset"), r.u64("byte size")))
    r.context = "states"
    states = []
    for i in range(r.count("state count", _MIN["state"])):
        r.context = f"state {i}"
        name = r.string("state name")
        r.context = f"state '{name}'"
        states.append(StateSpec(name, *r.desc()))
    r.context = "entries"
    entries = []
    for i in range(r.count("entry count", _MIN["entry"])):
        r.context = f"entry {i}"
        name = r.string("entry name")
        r.context = f"entry '{name}'"
        arena = r.u64("arena bytes")
        buffers = []
        for b in range(r.count("buffer count", _MIN["buffer"])):
            r.context = f"entry '{name}' buffer {b}"
            kind = r.u8("kind")
            index, offset = r.u32("index"), r.u64("offset")
            dtype, shape = r.desc()
            if kind not in _KIND_OF:
                r.fail(f"unknown buffer kind {kind}")
            buffers.append(Buffer(_KIND_OF[kind], index, dtype, shape, offset))
        ios = []
        for what in ("input", "output"):
            r.context = f"entry '{name}' {what}s"
            items = []
            for j in range(r.count(f"{what} count", _MIN["io"])):
                r.context = f"entry '{name}' {what} {j}"
                io_name = r.string("name")
                buffer, role = r.u32("buffer index"), r.u32("role")
                if role not in _ROLE_OF:
                    r.fail(f"unknown role {role}")
                items.append(IOBinding(io_name, buffer, _ROLE_OF[role]))
            ios.append(items)
        r.context = f"entry '{name}' ops"
        calls = []
        for c in range(r.count("op count", _MIN["call"])):
            r.context = f"entry '{name}' op {c}"
            op, kernel = r.u8("op"), r.u32("kernel index")
            if op != OP_CALL:
                r.fail(f"unknown op {op} (0: a kernel call)")
            if kernel >= len(kernels):
                r.fail(f"kernel index {kernel} out of range ({len(kernels)} kernels)")
            args = []
            for a in range(r.count("argument count", _MIN["arg"])):
                akind = r.u8("argument kind")
                value = r.i64("argument value")
                if akind not in _ARG_OF:
                    r.fail(f"argument {a} has unknown kind {akind}")
                args.append((_ARG_OF[akind], value))
            calls.append(Call(kernels[kernel], args))
        entries.append(Entry(name, buffers, ios[0], ios[1], calls, arena))
    r.context = "end"
    r.end("unexpected trailing bytes")
    plan = Plan(kernels, weights, states, entries)
    try:
        validate_plan(plan)
    except ArtifactError as err:
        raise ArtifactError(f"PLAN section: {err}") from None
    return plan


def _crc_range(data, offset: int, size: int) -> int:
    """CRC-32 of data[offset:offset + size] in chunks, without copying and without leaving a buffer
    export behind (the mmap must stay closable)."""
    crc = 0
    with memoryview(data) as view:
        for start in range(offset, offset + size, _CRC_CHUNK):
            with view[start:min(start + _CRC_CHUNK, offset + size)] as chunk:
                crc = zlib.crc32(chunk, crc)
    return crc


def _header(data) -> tuple[int, int]:
    """Checks the header; returns (section count, section table offset)."""
    size = len(data)
    if size < HEADER_BYTES:
        raise ArtifactError(f"file is {size} bytes, smaller than the {HEADER_BYTES}-byte header (truncated, "
                            "or not a tide artifact)")
    magic, version, hsize, n, flags, table_off, file_size, crc = struct.unpack_from("<8sIIIIQQI", data, 0)
    if magic != MAGIC:
        raise ArtifactError('not a tide artifact: bad magic (expected "TIDEART\\0")')
    if version != FORMAT_VERSION:
        raise ArtifactError(f"artifact format version {version} is not supported (this reader reads version "
                            f"{FORMAT_VERSION})")
    if hsize != HEADER_BYTES:
        raise ArtifactError(f"header: header size is {hsize}, expected {HEADER_BYTES}")
    if file_size != size:
        raise ArtifactError(f"header: the header records a file of {file_size} bytes but the file has {size} "
                            "bytes (truncated or corrupt)")
    if not 1 <= n <= MAX_SECTIONS:
        raise ArtifactError(f"header: section count {n} is outside 1..{MAX_SECTIONS}")
    table_end = table_off + n * TABLE_ENTRY_BYTES
    if table_off < HEADER_BYTES or table_off % 8 or table_end > size:
        raise ArtifactError(f"header: section table at offset {table_off} ({n} entries) is misaligned, overlaps "
                            f"the header or lies outside the {size}-byte file")
    head = bytearray(data[:HEADER_BYTES])
    head[40:44] = b"\0\0\0\0"
    computed = zlib.crc32(data[table_off:table_end], zlib.crc32(bytes(head)))
    if computed != crc:
        raise ArtifactError(f"header: checksum mismatch over the header and section table (stored 0x{crc:08x}, "
                            f"computed 0x{computed:08x}): the file is corrupt")
    if flags:
        raise ArtifactError(f"header: flags are 0x{flags:x}, expected 0")
    if any(data[44:HEADER_BYTES]):
        raise ArtifactError("header: reserved bytes are not zero")
    return n, table_off


def _section_table(data, n: int, table_off: int) -> dict:
    size = len(data)
    table_end = table_off + n * TABLE_ENTRY_BYTES
    sections: dict = {}
    for i in range(n):
        kind, sflags, off, length, scrc, alignment, raw_name = struct.unpack_from(
            "<IIQQII16s", data, table_off + i * TABLE_ENTRY_BYTES)
        name = SECTION_NAMES.get(kind)
        if name is None:
            raise ArtifactError(f"section table entry {i}: unknown section kind {kind}")
        if name in sections:
            raise ArtifactError(f"section table entry {i}: a second {name} section")
        if sflags:
            raise ArtifactError(f"{name} section: flags are 0x{sflags:x}, expected 0")
        if alignment == 0 or alignment & (alignment - 1) or alignment > MAX_SECTION_ALIGN:
            raise ArtifactError(f"{name} section: alignment {alignment} is not a power of two up to "
                                f"{MAX_SECTION_ALIGN}")
        if name == "WEIGHTS" and alignment < WEIGHTS_SECTION_ALIGN:
            raise ArtifactError(f"WEIGHTS section: alignment {alignment} is below {WEIGHTS_SECTION_ALIGN}")
        if off % alignment:
            raise ArtifactError(f"{name} section: offset {off} is not {alignment}-byte aligned")
        if off + length > size:
            raise ArtifactError(f"{name} section: bytes {off}..+{length} lie outside the {size}-byte file "
                                "(truncated?)")
        text = raw_name.rstrip(b"\0")
        if b"\0" in text or not all(0x20 <= c <= 0x7E for c in text):
            raise ArtifactError(f"{name} section: table name is not NUL-padded printable ASCII")
        if length:
            if off < table_end and table_off < off + length:
                raise ArtifactError(f"{name} section overlaps the section table")
            if off < HEADER_BYTES:
                raise ArtifactError(f"{name} section overlaps the header")
            for other in sections.values():
                if other.size and off < other.offset + other.size and other.offset < off + length:
                    raise ArtifactError(f"{name} section overlaps the {other.kind} section")
        sections[name] = Section(name, off, length, scrc, alignment)
    for required in ("TARGET", "PLAN", "WEIGHTS"):
        if required not in sections:
            raise ArtifactError(f"the artifact has no {required} section")
    return sections


def _metadata(raw) -> dict:
    nul = raw.find(b"\0")
    if nul >= 0:
        raise ArtifactError(f"METADATA section: NUL byte at offset {nul}")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ArtifactError(f"METADATA section: invalid UTF-8 at offset {err.start}") from None
    except json.JSONDecodeError as err:
        raise ArtifactError(f"METADATA section: not JSON: {err}") from None


def _parse(path: str, data, verify: bool) -> Artifact:
    n, table_off = _header(data)
    sections = _section_table(data, n, table_off)
    for s in sections.values():
        if verify or s.kind not in ("WEIGHTS", "DEVICE_CODE"):
            computed = _crc_range(data, s.offset, s.size)
            if computed != s.crc32:
                raise ArtifactError(f"{s.kind} section: checksum mismatch (stored 0x{s.crc32:08x}, computed "
                                    f"0x{computed:08x}): the file is corrupt")

    def blob(kind):
        s = sections[kind]
        return data[s.offset:s.offset + s.size]

    metadata = _metadata(blob("METADATA")) if "METADATA" in sections else {}
    target = _decode_target(blob("TARGET"))
    plan = _decode_plan(blob("PLAN"))
    wsize = sections["WEIGHTS"].size
    for w in plan.weights:
        if w.offset % WEIGHT_ALIGN:
            raise ArtifactError(f"PLAN section: weight '{w.name}': offset {w.offset} is not {WEIGHT_ALIGN}-byte "
                                "aligned")
        if w.nbytes != nbytes_of(w.dtype, w.shape):
            raise ArtifactError(f"PLAN section: weight '{w.name}': byte size {w.nbytes} does not match its dtype "
                                f"and shape ({nbytes_of(w.dtype, w.shape)})")
        if w.offset + w.nbytes > wsize:
            raise ArtifactError(f"PLAN section: weight '{w.name}': {w.nbytes} bytes at offset {w.offset} exceed the "
                                f"{wsize}-byte WEIGHTS section")
    fmt = device_format(target.kind)
    if fmt is not None and not fmt.HOST_LIBRARY and "KERNELS_HOST" in sections:
        raise ArtifactError(f"an {target.kind} artifact has a KERNELS_HOST section (its kernels are in DEVICE_CODE)")
    if plan.kernels and (fmt is None or fmt.HOST_LIBRARY):
        if "KERNELS_HOST" not in sections:
            raise ArtifactError(f"the plan calls {len(plan.kernels)} kernels but the artifact has no KERNELS_HOST "
                                "section")
        s = sections["KERNELS_HOST"]
        check_elf(data[s.offset:s.offset + min(s.size, 64)], "KERNELS_HOST section")
    device_code = None
    if fmt is not None:
        if "DEVICE_CODE" not in sections:
            raise ArtifactError(f"a {target.kind} target needs a DEVICE_CODE section")
        device_code = fmt.decode(blob("DEVICE_CODE"))
        fmt.validate(device_code, plan, target.device_arch)
    return Artifact(path, len(data), target, plan, metadata, {k: (s.offset, s.size) for k, s in sections.items()},
                    sections, device_code)


def read_artifact(path: str, verify: bool = True) -> Artifact:
    """Parses and validates ``path`` with the C loader's rules; raises ArtifactError naming the first
    problem. The file is memory-mapped, not read into memory; ``verify=False`` skips the WEIGHTS and
    DEVICE_CODE checksums (the others are always checked)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ArtifactError(f"{path}: the file is empty (truncated artifact)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                try:
                    return _parse(str(path), data, verify)
                except ArtifactError as err:
                    raise ArtifactError(f"{path}: {err}") from None
    except OSError as err:
        raise ArtifactError(f"{path}: cannot read: {err}") from err


def load_weight(artifact: Artifact, index: int) -> np.ndarray:
    """Weight ``index`` of a read artifact as a read-only array memory-mapped from its file."""
    if not 0 <= index < len(artifact.plan.weights):
        raise ArtifactError(f"weight index {index} out of range ({len(artifact.plan.weights)} weights)")
    spec = artifact.plan.weights[index]
    dtype = np_dtype(spec.dtype)
    if spec.nbytes == 0:
        return np.zeros(spec.shape, dtype=dtype)
    return np.memmap(artifact.path, dtype=dtype, mode="r", offset=artifact.sections["WEIGHTS"][0] + spec.offset,
                     shape=tuple(spec.shape))
