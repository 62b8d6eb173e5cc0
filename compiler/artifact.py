"""Writer and reader of the tide artifact (docs/artifact-format.md, format version 1).

The last stage of the compiler: ``tide.compiler.driver`` hands it the plan, the kernel library and
the weights; the C runtime (runtime/src/artifact.c) reads the file. ``read_artifact`` parses and
validates a file completely (``tide inspect`` and the tests use it). Only numpy and ml_dtypes are
needed here.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field

import numpy as np

MAGIC = b"TIDEART\0"
FORMAT_VERSION = 1
HEADER_BYTES = 64
TABLE_ENTRY_BYTES = 48
WEIGHT_ALIGN = 64
WEIGHTS_SECTION_ALIGN = 4096
MAX_STRING = 4096
MAX_RANK = 8
MAX_CALL_ARGS = 64

SECTION_KINDS = {"TARGET": 1, "PLAN": 2, "KERNELS_HOST": 3, "WEIGHTS": 4, "METADATA": 5, "DEVICE_CODE": 6}
SECTION_NAMES = {v: k for k, v in SECTION_KINDS.items()}
TARGET_KINDS = {"cpu": 1, "cuda": 2, "ascend": 3}
BUFFER_KINDS = {"arena": 0, "input": 1, "weight": 2, "state": 3}
ROLES = {"data": 0, "state": 1}
OPS = {"call": 0, "copy": 1}
FEATURE_BIT_COUNT = 10

# dtype name -> (DLPack code, bits)
DTYPES = {
    "int8": (0, 8), "int16": (0, 16), "int32": (0, 32), "int64": (0, 64),
    "uint8": (1, 8), "uint16": (1, 16), "uint32": (1, 32), "uint64": (1, 64),
    "float16": (2, 16), "float32": (2, 32), "float64": (2, 64),
    "bfloat16": (4, 16), "bool": (6, 8),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class ArtifactError(Exception):
    """An artifact (or a plan about to be written) breaks the format; the message says where."""


@dataclass
class TargetInfo:
    kind: str  # "cpu" | "cuda" | "ascend"
    host_arch: str  # "x86_64" | "aarch64"
    host_features: int  # required CPU feature bits
    device_arch: str = ""


@dataclass
class WeightSpec:
    name: str
    dtype: str
    shape: tuple
    offset: int = 0  # inside the WEIGHTS section (set by the writer)
    nbytes: int = 0


@dataclass
class StateSpec:
    name: str
    dtype: str
    shape: tuple


@dataclass
class Buffer:
    kind: str  # "arena" | "input" | "weight" | "state"
    index: int
    offset: int
    dtype: str
    shape: tuple


@dataclass
class IOBinding:
    name: str
    buffer: int
    role: str  # "data" | "state"


@dataclass
class Op:
    kind: str  # "call" | "copy"
    kernel: int
    args: list  # [("buf", i) | ("imm", v)]


@dataclass
class Entry:
    name: str
    arena_bytes: int
    buffers: list
    inputs: list
    outputs: list
    ops: list


@dataclass
class Plan:
    kernels: list
    weights: list
    states: list
    entries: list


@dataclass
class Artifact:
    """What ``read_artifact`` returns."""

    path: str
    file_size: int
    target: TargetInfo
    plan: Plan
    metadata: dict
    sections: dict = field(default_factory=dict)  # name -> (offset, size)


def nbytes_of(dtype: str, shape) -> int:
    if dtype not in DTYPES:
        raise ArtifactError(f"unsupported dtype '{dtype}'")
    count = 1
    for d in shape:
        if int(d) < 0:
            raise ArtifactError(f"negative dimension in shape {tuple(shape)}")
        count *= int(d)
    return count * max(DTYPES[dtype][1] // 8, 1)


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


# ---- encoding ------------------------------------------------------------------------------------

class _Out:
    def __init__(self):
        self.parts = []

    def u8(self, v):
        self.parts.append(struct.pack("<B", v))

    def u16(self, v):
        self.parts.append(struct.pack("<H", v))

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

    def desc(self, dtype: str, shape):
        code, bits = DTYPES[dtype]
        self.u8(code)
        self.u8(bits)
        self.u16(1)
        self.u32(len(shape))
        for d in shape:
            self.i64(int(d))

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def _check_string(s: str, what: str, allow_empty: bool = False) -> None:
    if not isinstance(s, str) or (not s and not allow_empty) or len(s) > MAX_STRING or \
            not all(32 <= ord(c) < 127 for c in s):
        raise ArtifactError(f"{what}: '{s}' is not a non-empty printable ASCII string of at most {MAX_STRING}")


def validate_plan(plan: Plan) -> None:
    """The loader's rules, checked before writing so a bad plan never reaches a file."""
    for i, k in enumerate(plan.kernels):
        _check_string(k, f"kernel {i}")
    for w in plan.weights:
        _check_string(w.name, "weight name")
        nbytes_of(w.dtype, w.shape)
    for s in plan.states:
        _check_string(s.name, "state name")
        if len(s.shape) > MAX_RANK:
            raise ArtifactError(f"state '{s.name}': rank {len(s.shape)} > {MAX_RANK}")
        nbytes_of(s.dtype, s.shape)
    names = set()
    for e in plan.entries:
        _check_string(e.name, "entry name")
        if e.name in names:
            raise ArtifactError(f"entry '{e.name}' appears twice")
        names.add(e.name)
        if e.arena_bytes % WEIGHT_ALIGN:
            raise ArtifactError(f"entry '{e.name}': arena size {e.arena_bytes} is not 64-aligned")
        for b_i, b in enumerate(e.buffers):
            where = f"entry '{e.name}' buffer {b_i}"
            if b.kind not in BUFFER_KINDS or len(b.shape) > MAX_RANK:
                raise ArtifactError(f"{where}: kind '{b.kind}' / rank {len(b.shape)} invalid")
            size = nbytes_of(b.dtype, b.shape)
            if b.kind == "arena":
                if b.offset < 0 or b.offset + size > e.arena_bytes:
                    raise ArtifactError(f"{where}: [{b.offset}, {b.offset + size}) outside the "
                                        f"{e.arena_bytes}-byte arena")
            elif b.kind == "input":
                if not 0 <= b.index < len(e.inputs):
                    raise ArtifactError(f"{where}: input index {b.index} out of range")
            elif b.kind == "weight":
                if not 0 <= b.index < len(plan.weights):
                    raise ArtifactError(f"{where}: weight index {b.index} out of range")
                if b.offset + size > nbytes_of(plan.weights[b.index].dtype, plan.weights[b.index].shape):
                    raise ArtifactError(f"{where}: view larger than weight '{plan.weights[b.index].name}'")
            elif not 0 <= b.index < len(plan.states):
                raise ArtifactError(f"{where}: state index {b.index} out of range")
            elif b.offset + size > nbytes_of(plan.states[b.index].dtype, plan.states[b.index].shape):
                raise ArtifactError(f"{where}: view larger than state '{plan.states[b.index].name}'")
        for io_kind, ios in (("input", e.inputs), ("output", e.outputs)):
            for io in ios:
                _check_string(io.name, f"entry '{e.name}' {io_kind} name")
                if not 0 <= io.buffer < len(e.buffers) or io.role not in ROLES:
                    raise ArtifactError(f"entry '{e.name}' {io_kind} '{io.name}': bad buffer/role")
                buf = e.buffers[io.buffer]
                if io.role == "state":
                    if buf.kind != "state":
                        raise ArtifactError(f"entry '{e.name}' {io_kind} '{io.name}': role state needs a state buffer")
                    st = plan.states[buf.index]
                    if st.dtype != buf.dtype or tuple(st.shape) != tuple(buf.shape):
                        raise ArtifactError(f"entry '{e.name}' {io_kind} '{io.name}': state '{st.name}' is "
                                            f"{st.dtype}{tuple(st.shape)}, buffer {buf.dtype}{tuple(buf.shape)}")
        for o_i, op in enumerate(e.ops):
            where = f"entry '{e.name}' op {o_i}"
            if op.kind not in OPS or len(op.args) > MAX_CALL_ARGS:
                raise ArtifactError(f"{where}: kind '{op.kind}' / {len(op.args)} args invalid")
            if op.kind == "call" and not 0 <= op.kernel < len(plan.kernels):
                raise ArtifactError(f"{where}: kernel index {op.kernel} out of range")
            for kind, value in op.args:
                if kind == "buf" and not 0 <= value < len(e.buffers):
                    raise ArtifactError(f"{where}: buffer {value} out of range")
                if kind not in ("buf", "imm"):
                    raise ArtifactError(f"{where}: argument kind '{kind}'")
            if op.kind == "copy":
                if len(op.args) != 2 or any(k != "buf" for k, _ in op.args):
                    raise ArtifactError(f"{where}: a copy takes two buffers")
                a, b = (e.buffers[v] for _, v in op.args)
                if nbytes_of(a.dtype, a.shape) != nbytes_of(b.dtype, b.shape):
                    raise ArtifactError(f"{where}: copy between buffers of different sizes")


def _encode_target(t: TargetInfo) -> bytes:
    if t.kind not in TARGET_KINDS:
        raise ArtifactError(f"unknown target kind '{t.kind}'")
    _check_string(t.host_arch, "host architecture")
    _check_string(t.device_arch, "device architecture", allow_empty=True)
    if t.host_features >> FEATURE_BIT_COUNT:
        raise ArtifactError(f"unknown CPU feature bits in 0x{t.host_features:x}")
    out = _Out()
    out.u32(TARGET_KINDS[t.kind])
    out.string(t.host_arch)
    out.u64(t.host_features)
    out.string(t.device_arch)
    return out.bytes()


def _encode_plan(plan: Plan) -> bytes:
    out = _Out()
    out.u32(len(plan.kernels))
    for k in plan.kernels:
        out.string(k)
    out.u32(len(plan.weights))
    for w in plan.weights:
        out.string(w.name)
        out.desc(w.dtype, w.shape)
        out.u64(w.offset)
        out.u64(w.nbytes)
    out.u32(len(plan.states))
    for s in plan.states:
        out.string(s.name)
        out.desc(s.dtype, s.shape)
    out.u32(len(plan.entries))
    for e in plan.entries:
        out.string(e.name)
        out.u64(e.arena_bytes)
        out.u32(len(e.buffers))
        for b in e.buffers:
            out.u8(BUFFER_KINDS[b.kind])
            out.u32(b.index if b.kind != "arena" else 0)
            out.u64(b.offset)
            out.desc(b.dtype, b.shape)
        for ios in (e.inputs, e.outputs):
            out.u32(len(ios))
            for io in ios:
                out.string(io.name)
                out.u32(io.buffer)
                out.u32(ROLES[io.role])
        out.u32(len(e.ops))
        for op in e.ops:
            out.u8(OPS[op.kind])
            out.u32(op.kernel if op.kind == "call" else 0)
            out.u32(len(op.args))
            for kind, value in op.args:
                out.u8(0 if kind == "buf" else 1)
                out.i64(int(value))
    return out.bytes()


def _dtype_name(array: np.ndarray) -> str:
    name = str(array.dtype)
    if name not in DTYPES:
        raise ArtifactError(f"weights of dtype {name} are not supported")
    return name


def write_artifact(path: str, target: TargetInfo, plan: Plan, kernel_library: bytes, weights: list,
                   metadata: dict, device_code: bytes | None = None) -> None:
    """Writes the artifact atomically: a temporary file next to ``path``, fsync, rename. Weights are
    streamed; nothing is left at ``path`` (or the previous file stays) when anything fails."""
    if len(weights) != len(plan.weights):
        raise ArtifactError(f"{len(weights)} weight arrays for {len(plan.weights)} weight specs")
    offset = 0
    for spec, array in zip(plan.weights, weights):
        if _dtype_name(array) != spec.dtype or tuple(array.shape) != tuple(spec.shape):
            raise ArtifactError(f"weight '{spec.name}': array is {array.dtype}{array.shape}, spec "
                                f"{spec.dtype}{tuple(spec.shape)}")
        spec.offset = offset
        spec.nbytes = nbytes_of(spec.dtype, spec.shape)
        offset = _align(offset + spec.nbytes, WEIGHT_ALIGN)
    weights_size = offset
    validate_plan(plan)
    blobs = [("TARGET", _encode_target(target)), ("PLAN", _encode_plan(plan)),
             ("METADATA", json.dumps(metadata, sort_keys=True).encode("utf-8"))]
    if kernel_library:
        blobs.append(("KERNELS_HOST", bytes(kernel_library)))
    if device_code:
        blobs.append(("DEVICE_CODE", bytes(device_code)))
    n = len(blobs) + 1
    table_off = HEADER_BYTES
    pos = table_off + n * TABLE_ENTRY_BYTES
    layout = []
    for name, blob in blobs:
        pos = _align(pos, 8)
        layout.append((name, pos, len(blob), zlib.crc32(blob), 8))
        pos += len(blob)
    weights_off = _align(pos, WEIGHTS_SECTION_ALIGN)
    weights_crc = 0
    for spec, array in zip(plan.weights, weights):
        weights_crc = zlib.crc32(_weight_bytes(array), weights_crc)
        pad = _align(spec.offset + spec.nbytes, WEIGHT_ALIGN) - (spec.offset + spec.nbytes)
        weights_crc = zlib.crc32(b"\0" * pad, weights_crc)
    layout.append(("WEIGHTS", weights_off, weights_size, weights_crc, WEIGHTS_SECTION_ALIGN))
    file_size = weights_off + weights_size

    table = b"".join(struct.pack("<IIQQII16s", SECTION_KINDS[name], 0, off, size, crc, align,
                                 name.encode("ascii")[:16]) for name, off, size, crc, align in layout)
    head = bytearray(struct.pack("<8sIIIIQQI20s", MAGIC, FORMAT_VERSION, HEADER_BYTES, n, 0, table_off,
                                 file_size, 0, b"\0" * 20))
    struct.pack_into("<I", head, 40, zlib.crc32(table, zlib.crc32(bytes(head))))

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tide-", suffix=".partial", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            f.write(table)
            for (name, off, _, _, _), (_, blob) in zip(layout, blobs):
                f.write(b"\0" * (off - f.tell()))
                f.write(blob)
            f.write(b"\0" * (weights_off - f.tell()))
            for spec, array in zip(plan.weights, weights):
                f.write(b"\0" * (weights_off + spec.offset - f.tell()))
                f.write(_weight_bytes(array))
            f.write(b"\0" * (file_size - f.tell()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _weight_bytes(array: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


# ---- decoding ------------------------------------------------------------------------------------

class _In:
    def __init__(self, data: bytes, where: str):
        self.data, self.pos, self.where = data, 0, where

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ArtifactError(f"{self.where}: truncated while reading {what}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self, what):
        return self.take(1, what)[0]

    def u32(self, what):
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what):
        return struct.unpack("<Q", self.take(8, what))[0]

    def i64(self, what):
        return struct.unpack("<q", self.take(8, what))[0]

    def count(self, what, min_bytes=1):
        n = self.u32(what)
        if n * min_bytes > len(self.data) - self.pos:
            raise ArtifactError(f"{self.where}: {what} count {n} exceeds the section")
        return n

    def string(self, what, allow_empty=False):
        n = self.u32(what)
        if n > MAX_STRING:
            raise ArtifactError(f"{self.where}: {what} length {n} > {MAX_STRING}")
        raw = self.take(n, what)
        try:
            s = raw.decode("ascii")
        except UnicodeDecodeError:
            raise ArtifactError(f"{self.where}: {what} is not ASCII") from None
        _check_string(s, f"{self.where}: {what}", allow_empty)
        return s

    def desc(self, what):
        code, bits = self.u8(what), self.u8(what)
        lanes = struct.unpack("<H", self.take(2, what))[0]
        if (code, bits) not in DTYPE_NAMES or lanes != 1:
            raise ArtifactError(f"{self.where}: {what} has unsupported dtype ({code}, {bits}, {lanes})")
        ndim = self.u32(what)
        if ndim > MAX_RANK:
            raise ArtifactError(f"{self.where}: {what} rank {ndim} > {MAX_RANK}")
        shape = tuple(self.i64(what) for _ in range(ndim))
        dtype = DTYPE_NAMES[(code, bits)]
        nbytes_of(dtype, shape)
        return dtype, shape


def _decode_plan(data: bytes) -> Plan:
    r = _In(data, "PLAN")
    kernels = [r.string("kernel name") for _ in range(r.count("kernels", 5))]
    weights = []
    for _ in range(r.count("weights", 29)):
        name = r.string("weight name")
        dtype, shape = r.desc(f"weight '{name}'")
        weights.append(WeightSpec(name, dtype, shape, r.u64("weight offset"), r.u64("weight size")))
    states = []
    for _ in range(r.count("states", 13)):
        name = r.string("state name")
        dtype, shape = r.desc(f"state '{name}'")
        states.append(StateSpec(name, dtype, shape))
    entries = []
    for _ in range(r.count("entries", 29)):
        name = r.string("entry name")
        arena = r.u64("arena size")
        buffers = []
        for _ in range(r.count("buffers", 21)):
            kind = r.u8("buffer kind")
            if kind not in BUFFER_KINDS.values():
                raise ArtifactError(f"PLAN: entry '{name}': buffer kind {kind}")
            index, offset = r.u32("buffer index"), r.u64("buffer offset")
            dtype, shape = r.desc("buffer")
            buffers.append(Buffer({v: k for k, v in BUFFER_KINDS.items()}[kind], index, offset, dtype, shape))
        ios = []
        for what in ("inputs", "outputs"):
            items = []
            for _ in range(r.count(what, 13)):
                io_name = r.string(f"{what} name")
                buffer, role = r.u32("io buffer"), r.u32("io role")
                if role not in ROLES.values():
                    raise ArtifactError(f"PLAN: entry '{name}' {what} '{io_name}': role {role}")
                items.append(IOBinding(io_name, buffer, {v: k for k, v in ROLES.items()}[role]))
            ios.append(items)
        ops = []
        for _ in range(r.count("ops", 9)):
            kind, kernel = r.u8("op kind"), r.u32("op kernel")
            if kind not in OPS.values():
                raise ArtifactError(f"PLAN: entry '{name}': op kind {kind}")
            args = []
            for _ in range(r.count("args", 9)):
                akind = r.u8("arg kind")
                if akind not in (0, 1):
                    raise ArtifactError(f"PLAN: entry '{name}': argument kind {akind}")
                args.append(("buf" if akind == 0 else "imm", r.i64("arg value")))
            ops.append(Op({v: k for k, v in OPS.items()}[kind], kernel, args))
        entries.append(Entry(name, arena, buffers, ios[0], ios[1], ops))
    if r.pos != len(data):
        raise ArtifactError(f"PLAN: {len(data) - r.pos} trailing bytes")
    plan = Plan(kernels, weights, states, entries)
    validate_plan(plan)
    return plan


def read_artifact(path: str, verify: bool = True) -> Artifact:
    """Parses and validates ``path``; raises ArtifactError naming the first problem."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ArtifactError(f"{path}: cannot read: {err}") from err
    if len(data) < HEADER_BYTES:
        raise ArtifactError(f"{path}: {len(data)} bytes: truncated, or not a tide artifact")
    magic, version, hsize, n, flags, table_off, file_size, crc, _ = struct.unpack(
        "<8sIIIIQQI20s", data[:HEADER_BYTES])
    if magic != MAGIC:
        raise ArtifactError(f"{path}: not a tide artifact (bad magic)")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{path}: format version {version}; this tide reads version {FORMAT_VERSION}")
    if hsize != HEADER_BYTES or flags or file_size != len(data) or not 1 <= n <= 64:
        raise ArtifactError(f"{path}: header is corrupt or the file is truncated "
                            f"(records {file_size} bytes, has {len(data)})")
    table = data[table_off:table_off + n * TABLE_ENTRY_BYTES]
    if len(table) != n * TABLE_ENTRY_BYTES:
        raise ArtifactError(f"{path}: section table lies outside the file")
    head = bytearray(data[:HEADER_BYTES])
    head[40:44] = b"\0\0\0\0"
    if zlib.crc32(table, zlib.crc32(bytes(head))) != crc:
        raise ArtifactError(f"{path}: header checksum mismatch: the file is corrupt")
    sections = {}
    for i in range(n):
        kind, _, off, size, scrc, align, _ = struct.unpack_from("<IIQQII16s", table, i * TABLE_ENTRY_BYTES)
        name = SECTION_NAMES.get(kind)
        if name is None or name in sections:
            raise ArtifactError(f"{path}: section table entry {i}: kind {kind} unknown or repeated")
        if off + size > len(data) or align == 0 or off % align:
            raise ArtifactError(f"{path}: {name} section out of bounds or misaligned")
        if verify and zlib.crc32(data[off:off + size]) != scrc:
            raise ArtifactError(f"{path}: {name} section checksum mismatch: the file is corrupt")
        sections[name] = (off, size)
    for required in ("TARGET", "PLAN", "WEIGHTS"):
        if required not in sections:
            raise ArtifactError(f"{path}: no {required} section")

    def blob(name):
        off, size = sections[name]
        return data[off:off + size]

    r = _In(blob("TARGET"), "TARGET")
    kind = r.u32("target kind")
    kinds = {v: k for k, v in TARGET_KINDS.items()}
    if kind not in kinds:
        raise ArtifactError(f"{path}: unknown target kind {kind}")
    target = TargetInfo(kinds[kind], r.string("host architecture"), r.u64("CPU features"),
                        r.string("device architecture", allow_empty=True))
    plan = _decode_plan(blob("PLAN"))
    wsize = sections["WEIGHTS"][1]
    for w in plan.weights:
        if w.offset % WEIGHT_ALIGN or w.offset + w.nbytes > wsize or w.nbytes != nbytes_of(w.dtype, w.shape):
            raise ArtifactError(f"{path}: weight '{w.name}' lies outside the WEIGHTS section or is misaligned")
    metadata = json.loads(blob("METADATA").decode("utf-8")) if "METADATA" in sections else {}
    return Artifact(path, len(data), target, plan, metadata, sections)


def load_weight(artifact: Artifact, index: int) -> np.ndarray:
    """One weight as a numpy array (read from the file)."""
    spec = artifact.plan.weights[index]
    off = artifact.sections["WEIGHTS"][0] + spec.offset
    with open(artifact.path, "rb") as f:
        f.seek(off)
        raw = f.read(spec.nbytes)
    if spec.dtype == "bfloat16":
        import ml_dtypes

        dtype = ml_dtypes.bfloat16
    else:
        dtype = np.dtype(spec.dtype)
    return np.frombuffer(raw, dtype=dtype).reshape(spec.shape)
