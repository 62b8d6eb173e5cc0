"""Writer and reader of the tide artifact (docs/artifact-format.md, format version 1).

The last stage of the compiler: ``tide.compiler.driver`` hands ``write_artifact`` the plan, the
kernel library and the weights; the C runtime (runtime/src/artifact.c) loads the file.
``read_artifact`` parses and validates a file completely with the same rules as the C loader
(``tide inspect`` and the tests use it). Only numpy (and ml_dtypes, for bfloat16 weights) is needed.

Data model (plain dataclasses): a :class:`Plan` holds kernel names, :class:`WeightSpec` and
:class:`StateSpec` lists and :class:`Entry` objects; an entry has :class:`Buffer` objects (kind
``"arena" | "input" | "weight" | "state"``), input/output :class:`IOBinding` objects (role
``"data" | "state"``) and :class:`Op` objects (kind ``"call" | "copy"``, args ``("buf", i)`` or
``("imm", v)``). dtypes are names: ``"float32"``, ``"bfloat16"``, ``"int64"``, ``"bool"``, ...
"""

from __future__ import annotations

import json
import mmap
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
MAX_SECTIONS = 64
MAX_SECTION_ALIGN = 1 << 20
WEIGHT_ALIGN = 64
WEIGHTS_SECTION_ALIGN = 4096
MAX_STRING = 4096
MAX_RANK = 8
MAX_CALL_ARGS = 64
MAX_COUNT = 2**31 - 1

SECTION_KINDS = {"TARGET": 1, "PLAN": 2, "KERNELS_HOST": 3, "WEIGHTS": 4, "METADATA": 5, "DEVICE_CODE": 6}
SECTION_NAMES = {v: k for k, v in SECTION_KINDS.items()}
# Alignment the writer gives each section (the loader requires >= 4096 for WEIGHTS only).
SECTION_ALIGN = {"TARGET": 8, "PLAN": 8, "METADATA": 8, "KERNELS_HOST": 64, "DEVICE_CODE": 64,
                 "WEIGHTS": WEIGHTS_SECTION_ALIGN}
TARGET_KINDS = {"cpu": 1, "cuda": 2, "ascend": 3}
BUFFER_KINDS = {"arena": 0, "input": 1, "weight": 2, "state": 3}
ROLES = {"data": 0, "state": 1}
OPS = {"call": 0, "copy": 1}
DEVICE_MAGIC = b"TIDECUDA"
DEVICE_VERSION = 1
DEVICE_FORMATS = {"cubin": 0, "fatbin": 1, "ptx": 2}
DEVICE_HANDLE = (3, 64)  # DLPack opaque handle: a pointer argument of a device kernel
ASCEND_MAGIC = b"TIDEASCN"
ASCEND_VERSION = 1
ASCEND_ARG_KINDS = {"ptr": 0, "i64": 1}  # a kernel argument: a buffer's device address, or an int64
ASCEND_MAX_BLOCK_DIM = 65535
DEVICE_TAGS = ("blockIdx.x", "blockIdx.y", "blockIdx.z", "threadIdx.x", "threadIdx.y", "threadIdx.z",
               "tir.use_dyn_shared_memory")
# Required-CPU-feature bits of the TARGET section (bit i = FEATURES[i]).
FEATURES = ("sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vnni",
            "avx512bf16")
FEATURE_BIT_COUNT = len(FEATURES)

# dtype name -> (DLPack code, bits)
DTYPES = {
    "int8": (0, 8), "int16": (0, 16), "int32": (0, 32), "int64": (0, 64),
    "uint8": (1, 8), "uint16": (1, 16), "uint32": (1, 32), "uint64": (1, 64),
    "float16": (2, 16), "float32": (2, 32), "float64": (2, 64),
    "bfloat16": (4, 16), "bool": (6, 8),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

_WRITE_CHUNK = 64 << 20  # bytes per write/CRC step when streaming weights
_CRC_CHUNK = 64 << 20


class ArtifactError(Exception):
    """An artifact (or a plan about to be written) breaks the format; the message says where."""


@dataclass
class TargetInfo:
    kind: str  # "cpu" | "cuda" | "ascend"
    host_arch: str  # "x86_64" | "aarch64"
    host_features: int = 0  # required CPU feature bits (see FEATURES, feature_mask)
    device_arch: str = ""  # "" on cpu, e.g. "sm_90" on cuda

    @property
    def features(self) -> list[str]:
        """The required CPU features by name."""
        return [name for bit, name in enumerate(FEATURES) if self.host_features >> bit & 1]


def feature_mask(names) -> int:
    """The TARGET feature bits for feature names (``FEATURES``); unknown names are an error."""
    mask = 0
    for name in names:
        if name not in FEATURES:
            raise ArtifactError(f"unknown CPU feature '{name}' (known: {', '.join(FEATURES)})")
        mask |= 1 << FEATURES.index(name)
    return mask


@dataclass
class WeightSpec:
    name: str
    dtype: str
    shape: tuple
    offset: int = 0  # inside the WEIGHTS section: filled in by write_artifact and read_artifact
    nbytes: int = 0


@dataclass
class StateSpec:
    name: str
    dtype: str
    shape: tuple


@dataclass
class Buffer:
    kind: str  # "arena" | "input" | "weight" | "state"
    index: int  # input position / weight index / state index; 0 for arena
    offset: int  # bytes into the arena or into the referenced tensor (views)
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
    kernel: int | None  # kernel index for a call; None (or 0) for a copy
    args: list  # [("buf", i) | ("imm", v)]; a copy: [("buf", src), ("buf", dst)]


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
    kernels: list  # kernel names; the library exports "__tvm_ffi_" + name
    weights: list
    states: list
    entries: list


@dataclass
class DeviceImage:
    arch: str  # "sm_80", "sm_90", "sm_90a"
    format: str  # "cubin" | "fatbin" | "ptx"
    data: bytes


@dataclass
class DeviceFunction:
    name: str  # the device kernel symbol the host stubs look up
    args: list  # dtype names in launch order; "handle" for a pointer
    tags: list  # launch dimensions after the arguments ("blockIdx.x", ..., "tir.use_dyn_shared_memory")


@dataclass
class DeviceCode:
    """The DEVICE_CODE section (cuda): images per architecture and the kernels' launch signatures."""

    images: list
    functions: list


@dataclass
class AscendKernel:
    """One kernel of an ascend artifact (DEVICE_CODE, docs/artifact-format.md)."""
    name: str          # the plan's kernel name (and the kernel's symbol in its binary)
    block_dim: int     # AI cores one launch uses
    args: list         # "ptr" | "i64" per argument, the plan's call arguments in order
    hivm: str          # the HIVM MLIR module bishengir-compile takes
    binary: bytes = b""  # the device binary hivmc made from it; empty when compiled without CANN


@dataclass
class AscendCode:
    soc: str           # "Ascend910B1", "Ascend950PR_9599": the TARGET record's device architecture
    kernels: list


@dataclass
class Section:
    kind: str  # "TARGET", "PLAN", ...
    offset: int
    size: int
    crc32: int
    alignment: int


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
    device_code: DeviceCode | AscendCode | None = None  # the parsed DEVICE_CODE section (cuda, ascend)

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


def np_dtype(name: str) -> np.dtype:
    """The numpy dtype of a format dtype name (bfloat16 through ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if name not in DTYPES:
        raise ArtifactError(f"unsupported dtype '{name}'")
    return np.dtype(name)


def _shape_ok(shape) -> bool:
    return isinstance(shape, (tuple, list)) and len(shape) <= MAX_RANK and all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) and 0 <= int(d) < 2**63 for d in shape)


def nbytes_of(dtype: str, shape) -> int:
    """Byte size of a tensor; ArtifactError for an unsupported dtype or a bad shape."""
    if dtype not in DTYPES:
        raise ArtifactError(f"unsupported dtype '{dtype}' (supported: {', '.join(DTYPES)})")
    if not _shape_ok(shape):
        raise ArtifactError(f"shape {tuple(shape) if isinstance(shape, (list, tuple)) else shape!r} is not a "
                            f"tuple of at most {MAX_RANK} non-negative integers")
    count = 1
    for d in shape:
        count *= int(d)
    size = count * (DTYPES[dtype][1] // 8)
    if size >= 2**64:
        raise ArtifactError(f"{dtype}{list(shape)} has more than 2^64 bytes")
    return size


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _desc(dtype: str, shape) -> str:
    return f"{dtype}{list(shape)}"


def _check_string(s, what: str, allow_empty: bool = False) -> None:
    if not isinstance(s, str) or (not s and not allow_empty) or len(s) > MAX_STRING or \
            not all(32 <= ord(c) < 127 for c in s):
        raise ArtifactError(f"{what} {s!r} is not a {'' if allow_empty else 'non-empty '}printable ASCII "
                            f"string of at most {MAX_STRING} characters")


def _check_unique(names, what: str) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise ArtifactError(f"duplicate {what} name '{n}'")
        seen.add(n)


def _check_int(v, lo: int, hi: int, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
        raise ArtifactError(f"{what} is {v!r}, expected an integer in [{lo}, {hi}]")
    return int(v)


# ---- validation: the loader's rules ------------------------------------------------------------

def validate_target(t: TargetInfo) -> None:
    if t.kind not in TARGET_KINDS:
        raise ArtifactError(f"target: unknown kind '{t.kind}' (known: {', '.join(TARGET_KINDS)})")
    _check_string(t.host_arch, "target host architecture")
    _check_string(t.device_arch, "target device architecture", allow_empty=True)
    _check_int(t.host_features, 0, 2**64 - 1, "target CPU feature mask")
    if t.host_features >> FEATURE_BIT_COUNT:
        raise ArtifactError(f"target: unknown CPU feature bits 0x{t.host_features >> FEATURE_BIT_COUNT << FEATURE_BIT_COUNT:x}")
    if t.kind == "cpu" and t.device_arch:
        raise ArtifactError(f"target: a cpu target has device architecture '{t.device_arch}' (expected '')")


def validate_plan(plan: Plan) -> None:
    """Checks ``plan`` against every rule of the format (the same rules as the C loader)."""
    for what, items in (("kernel", plan.kernels), ("weight", plan.weights), ("state", plan.states),
                        ("entry", plan.entries)):
        if len(items) > MAX_COUNT:
            raise ArtifactError(f"{len(items)} {what}s exceed {MAX_COUNT}")
    for i, k in enumerate(plan.kernels):
        _check_string(k, f"kernel {i} name")
    _check_unique(plan.kernels, "kernel")
    for w in plan.weights:
        _check_string(w.name, "weight name")
        try:
            nbytes_of(w.dtype, w.shape)
        except ArtifactError as err:
            raise ArtifactError(f"weight '{w.name}': {err}") from None
    _check_unique([w.name for w in plan.weights], "weight")
    state_bytes = []
    for s in plan.states:
        _check_string(s.name, "state name")
        try:
            state_bytes.append(nbytes_of(s.dtype, s.shape))
        except ArtifactError as err:
            raise ArtifactError(f"state '{s.name}': {err}") from None
    _check_unique([s.name for s in plan.states], "state")
    if not plan.entries:
        raise ArtifactError("the plan has no entries")
    for e in plan.entries:
        _check_string(e.name, "entry name")
        _validate_entry(plan, e, state_bytes)
    _check_unique([e.name for e in plan.entries], "entry")


def _validate_entry(plan: Plan, e: Entry, state_bytes: list) -> None:
    where_e = f"entry '{e.name}'"
    _check_int(e.arena_bytes, 0, 2**64 - 1, f"{where_e} arena bytes")
    if e.arena_bytes % 64:
        raise ArtifactError(f"{where_e}: arena bytes {e.arena_bytes} is not a multiple of 64")
    for what, items in (("buffer", e.buffers), ("input", e.inputs), ("output", e.outputs), ("op", e.ops)):
        if len(items) > MAX_COUNT:
            raise ArtifactError(f"{where_e}: {len(items)} {what}s exceed {MAX_COUNT}")
    sizes = []
    for i, b in enumerate(e.buffers):
        where = f"{where_e} buffer {i}"
        if b.kind not in BUFFER_KINDS:
            raise ArtifactError(f"{where}: unknown kind {b.kind!r} (known: {', '.join(BUFFER_KINDS)})")
        try:
            size = nbytes_of(b.dtype, b.shape)
        except ArtifactError as err:
            raise ArtifactError(f"{where}: {err}") from None
        sizes.append(size)
        index = _check_int(b.index, 0, 2**32 - 1, f"{where} index")
        offset = _check_int(b.offset, 0, 2**64 - 1, f"{where} offset")
        if b.kind == "arena":
            if index != 0:
                raise ArtifactError(f"{where}: arena buffer has index {index} (expected 0)")
            if offset + size > e.arena_bytes:
                raise ArtifactError(f"{where}: {size} bytes at offset {offset} exceed the {e.arena_bytes}-byte arena")
        elif b.kind == "weight":
            if index >= len(plan.weights):
                raise ArtifactError(f"{where}: weight index {index} out of range ({len(plan.weights)} weights)")
            w = plan.weights[index]
            if offset + size > nbytes_of(w.dtype, w.shape):
                raise ArtifactError(f"{where}: view of {size} bytes at offset {offset} exceeds weight '{w.name}'")
        elif b.kind == "state":
            if index >= len(plan.states):
                raise ArtifactError(f"{where}: state index {index} out of range ({len(plan.states)} states)")
            if offset + size > state_bytes[index]:
                raise ArtifactError(f"{where}: view of {size} bytes at offset {offset} exceeds state "
                                    f"'{plan.states[index].name}'")
    for what, ios in (("input", e.inputs), ("output", e.outputs)):
        for io in ios:
            _check_string(io.name, f"{where_e} {what} name")
            if io.role not in ROLES:
                raise ArtifactError(f"{where_e} {what} '{io.name}': unknown role {io.role!r} (known: data, state)")
            _check_int(io.buffer, 0, 2**32 - 1, f"{where_e} {what} '{io.name}' buffer")
            if io.buffer >= len(e.buffers):
                raise ArtifactError(f"{where_e} {what} '{io.name}': buffer index {io.buffer} out of range "
                                    f"({len(e.buffers)} buffers)")
        _check_unique([io.name for io in ios], f"{where_e} {what}")

    def check_whole_state(io: IOBinding, what: str, bound: dict) -> None:
        b = e.buffers[io.buffer]
        if b.kind != "state" or b.offset != 0:
            raise ArtifactError(f"{where_e} {what} '{io.name}': role state must be bound to a whole state "
                                f"buffer (buffer {io.buffer} is a {b.kind} buffer at offset {b.offset})")
        st = plan.states[b.index]
        if st.dtype != b.dtype or tuple(st.shape) != tuple(b.shape):
            raise ArtifactError(f"{where_e} {what} '{io.name}': state '{st.name}' is {_desc(st.dtype, st.shape)}, "
                                f"its buffer {_desc(b.dtype, b.shape)}")
        if b.index in bound:
            raise ArtifactError(f"{where_e}: state '{st.name}' is bound to {what}s '{bound[b.index]}' and '{io.name}'")
        bound[b.index] = io.name

    bound_in: dict = {}
    for pos, io in enumerate(e.inputs):
        b = e.buffers[io.buffer]
        if io.role == "data":
            if b.kind != "input" or b.index != pos or b.offset != 0:
                raise ArtifactError(f"{where_e} input '{io.name}': a data input must be bound to an input buffer "
                                    f"with index {pos} and offset 0 (buffer {io.buffer} is {b.kind}, index "
                                    f"{b.index}, offset {b.offset})")
        else:
            check_whole_state(io, "input", bound_in)
    for i, b in enumerate(e.buffers):
        if b.kind != "input":
            continue
        if b.index >= len(e.inputs):
            raise ArtifactError(f"{where_e} buffer {i}: input index {b.index} out of range ({len(e.inputs)} inputs)")
        io = e.inputs[b.index]
        if io.role != "data":
            raise ArtifactError(f"{where_e} buffer {i}: input buffer refers to state input '{io.name}'")
        limit = sizes[io.buffer]
        if b.offset + sizes[i] > limit:
            raise ArtifactError(f"{where_e} buffer {i}: view of {sizes[i]} bytes at offset {b.offset} exceeds "
                                f"input '{io.name}' ({limit} bytes)")
    bound_out: dict = {}
    for io in e.outputs:
        if io.role == "state":
            check_whole_state(io, "output", bound_out)
    for o, op in enumerate(e.ops):
        where = f"{where_e} op {o}"
        if op.kind not in OPS:
            raise ArtifactError(f"{where}: unknown op kind {op.kind!r} (known: call, copy)")
        if len(op.args) > MAX_CALL_ARGS:
            raise ArtifactError(f"{where}: {len(op.args)} arguments exceed the limit of {MAX_CALL_ARGS}")
        for a, arg in enumerate(op.args):
            if not isinstance(arg, (tuple, list)) or len(arg) != 2 or arg[0] not in ("buf", "imm"):
                raise ArtifactError(f"{where}: argument {a} is {arg!r}, expected ('buf', index) or ('imm', value)")
            if arg[0] == "buf":
                if _check_int(arg[1], -2**63, 2**63 - 1, f"{where} argument {a}") >= len(e.buffers) or arg[1] < 0:
                    raise ArtifactError(f"{where}: argument {a}: buffer {arg[1]} out of range "
                                        f"({len(e.buffers)} buffers)")
            else:
                _check_int(arg[1], -2**63, 2**63 - 1, f"{where} argument {a} (int64 immediate)")
        if op.kind == "call":
            _check_int(op.kernel, 0, 2**32 - 1, f"{where} kernel index")
            if op.kernel >= len(plan.kernels):
                raise ArtifactError(f"{where}: kernel index {op.kernel} out of range ({len(plan.kernels)} kernels)")
        else:
            if op.kernel not in (None, 0):
                raise ArtifactError(f"{where}: a copy has kernel {op.kernel!r} (expected None)")
            if len(op.args) != 2 or any(kind != "buf" for kind, _ in op.args):
                raise ArtifactError(f"{where}: a copy takes exactly two buffer arguments (source, destination)")
            src, dst = (int(v) for _, v in op.args)
            if sizes[src] != sizes[dst]:
                raise ArtifactError(f"{where}: copy between buffers of {sizes[src]} and {sizes[dst]} bytes")
            if e.buffers[dst].kind in ("weight", "input"):
                raise ArtifactError(f"{where}: copy into a {e.buffers[dst].kind} buffer (read-only)")


# ---- encoding ------------------------------------------------------------------------------------

class _Out:
    def __init__(self):
        self.parts = []

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

    def desc(self, dtype: str, shape):
        code, bits = DTYPES[dtype]
        self.parts.append(struct.pack("<BBHI", code, bits, 1, len(shape)))
        for d in shape:
            self.i64(int(d))

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def _encode_target(t: TargetInfo) -> bytes:
    out = _Out()
    out.u32(TARGET_KINDS[t.kind])
    out.string(t.host_arch)
    out.u64(t.host_features)
    out.string(t.device_arch)
    return out.bytes()


def _encode_plan(plan: Plan, layout: list) -> bytes:
    """``layout``: (offset, nbytes) per weight."""
    out = _Out()
    out.u32(len(plan.kernels))
    for k in plan.kernels:
        out.string(k)
    out.u32(len(plan.weights))
    for w, (offset, nbytes) in zip(plan.weights, layout):
        out.string(w.name)
        out.desc(w.dtype, w.shape)
        out.u64(offset)
        out.u64(nbytes)
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
            out.u32(b.index)
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


def _is_device_arch(arch: str) -> bool:
    return arch.startswith("sm_") and len(arch) > 3 and (arch[3:].isdigit() or
                                                         (arch.endswith("a") and arch[3:-1].isdigit()))


def _device_arch_key(arch: str):
    return (int(arch[3:].rstrip("a")), arch.endswith("a"))


def validate_device_code(code: DeviceCode, device_arch: str | None = None) -> None:
    """The DEVICE_CODE rules (docs/artifact-format.md); ``device_arch``: the TARGET record's list,
    which must name exactly the images' architectures in ascending order."""
    if not code.images:
        raise ArtifactError("DEVICE_CODE: no device image")
    for i, img in enumerate(code.images):
        _check_string(img.arch, f"DEVICE_CODE image {i} architecture")
        if not _is_device_arch(img.arch):
            raise ArtifactError(f"DEVICE_CODE image {i}: architecture '{img.arch}' is not sm_<digits>[a]")
        if img.format not in DEVICE_FORMATS:
            raise ArtifactError(f"DEVICE_CODE image {img.arch}: unknown format '{img.format}' "
                                f"(known: {', '.join(DEVICE_FORMATS)})")
        if not img.data:
            raise ArtifactError(f"DEVICE_CODE image {img.arch}: empty")
        if img.format == "ptx" and b"\0" in bytes(img.data):
            raise ArtifactError(f"DEVICE_CODE image {img.arch}: ptx text holds a NUL byte")
    _check_unique([img.arch for img in code.images], "DEVICE_CODE image architecture")
    for f in code.functions:
        _check_string(f.name, "DEVICE_CODE function name")
        for a in f.args:
            if a != "handle" and a not in DTYPES:
                raise ArtifactError(f"DEVICE_CODE function '{f.name}': unknown argument dtype '{a}'")
        for t in f.tags:
            _check_string(t, f"DEVICE_CODE function '{f.name}' launch tag")
            if t not in DEVICE_TAGS:
                raise ArtifactError(f"DEVICE_CODE function '{f.name}': unknown launch tag '{t}' "
                                    f"(known: {', '.join(DEVICE_TAGS)})")
        if "tir.use_dyn_shared_memory" in f.tags[:-1]:
            raise ArtifactError(f"DEVICE_CODE function '{f.name}': the dynamic shared memory tag must be last")
    _check_unique([f.name for f in code.functions], "DEVICE_CODE function name")
    if device_arch is not None:
        expected = ",".join(sorted((img.arch for img in code.images), key=_device_arch_key))
        if device_arch != expected:
            raise ArtifactError(f"target device architecture '{device_arch}' does not list the DEVICE_CODE "
                                f"images in ascending order (expected '{expected}')")


def encode_device_code(code: DeviceCode) -> bytes:
    """The DEVICE_CODE section bytes of ``code`` (validated first)."""
    validate_device_code(code)
    out = _Out()
    out.parts.append(DEVICE_MAGIC)
    out.u32(DEVICE_VERSION)
    out.u32(len(code.images))
    for img in code.images:
        out.string(img.arch)
        out.u8(DEVICE_FORMATS[img.format])
        out.u64(len(img.data))
        out.parts.append(bytes(img.data))
    out.u32(len(code.functions))
    for f in code.functions:
        out.string(f.name)
        out.u32(len(f.args))
        for a in f.args:
            code_, bits = DEVICE_HANDLE if a == "handle" else DTYPES[a]
            out.parts.append(struct.pack("<BBH", code_, bits, 1))
        out.u32(len(f.tags))
        for t in f.tags:
            out.string(t)
    return out.bytes()


def validate_ascend_code(code: AscendCode, plan: Plan | None = None, soc: str | None = None) -> None:
    """The ascend DEVICE_CODE rules; with ``plan``, one kernel per plan kernel whose argument kinds
    match every call (buffer -> "ptr", immediate -> "i64"); with ``soc``, the TARGET's device
    architecture must name the same SoC."""
    _check_string(code.soc, "DEVICE_CODE SoC")
    if not code.soc.startswith("Ascend"):
        raise ArtifactError(f"DEVICE_CODE: SoC '{code.soc}' is not an Ascend SoC name (e.g. Ascend910B1)")
    if soc is not None and soc != code.soc:
        raise ArtifactError(f"target device architecture '{soc}' is not the DEVICE_CODE SoC '{code.soc}'")
    for k in code.kernels:
        _check_string(k.name, "DEVICE_CODE kernel name")
        _check_int(k.block_dim, 1, ASCEND_MAX_BLOCK_DIM, f"DEVICE_CODE kernel '{k.name}' block_dim")
        for a in k.args:
            if a not in ASCEND_ARG_KINDS:
                raise ArtifactError(f"DEVICE_CODE kernel '{k.name}': unknown argument kind '{a}' (ptr, i64)")
        if not k.hivm or "\0" in k.hivm:
            raise ArtifactError(f"DEVICE_CODE kernel '{k.name}': the HIVM text is empty or holds a NUL")
    _check_unique([k.name for k in code.kernels], "DEVICE_CODE kernel name")
    if plan is None:
        return
    by_name = {k.name: k for k in code.kernels}
    if set(by_name) != set(plan.kernels):
        missing = sorted(set(plan.kernels) - set(by_name))
        extra = sorted(set(by_name) - set(plan.kernels))
        raise ArtifactError(f"DEVICE_CODE kernels do not match the plan's: missing {missing}, not in the plan {extra}")
    for e in plan.entries:
        for i, op in enumerate(e.ops):
            if op.kind != "call":
                continue
            k = by_name[plan.kernels[op.kernel]]
            kinds = ["ptr" if kind == "buf" else "i64" for kind, _ in op.args]
            if kinds != list(k.args):
                raise ArtifactError(f"entry '{e.name}' op {i} calls '{k.name}' with ({', '.join(kinds)}); the kernel "
                                    f"takes ({', '.join(k.args)})")


def encode_ascend_code(code: AscendCode) -> bytes:
    """The DEVICE_CODE section bytes of an ascend artifact (validated first)."""
    validate_ascend_code(code)
    out = _Out()
    out.parts.append(ASCEND_MAGIC)
    out.u32(ASCEND_VERSION)
    out.string(code.soc)
    out.u32(len(code.kernels))
    for k in code.kernels:
        out.string(k.name)
        out.u32(k.block_dim)
        out.u32(len(k.args))
        out.parts.append(bytes(ASCEND_ARG_KINDS[a] for a in k.args))
        text = k.hivm.encode("utf-8")
        out.u64(len(text))
        out.parts.append(text)
        out.u64(len(k.binary))
        out.parts.append(bytes(k.binary))
    return out.bytes()


def _check_elf(image, where: str) -> None:
    """An ELF64 little-endian shared object (the C loader also checks its machine against the host)."""
    head = bytes(image[:20])
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise ArtifactError(f"{where}: the kernel library is not an ELF file")
    if head[4] != 2 or head[5] != 1:
        raise ArtifactError(f"{where}: the kernel library is not a 64-bit little-endian ELF file")
    etype = struct.unpack_from("<H", head, 16)[0]
    if etype != 3:
        raise ArtifactError(f"{where}: the kernel library has ELF type {etype}, not a shared object (3)")


def _array_chunks(array: np.ndarray):
    """The array's bytes in C order, in chunks of about _WRITE_CHUNK bytes, without copying a
    C-contiguous array and without ever copying more than a chunk of another."""
    if array.flags.c_contiguous:
        flat = memoryview(array.reshape(-1).view(np.uint8))
        for start in range(0, len(flat), _WRITE_CHUNK):
            yield flat[start:start + _WRITE_CHUNK]
        return
    rows = max(1, _WRITE_CHUNK // max(1, array[0].nbytes)) if array.shape[0] else 1
    for start in range(0, array.shape[0], rows):
        yield memoryview(np.ascontiguousarray(array[start:start + rows]).reshape(-1).view(np.uint8))


def write_artifact(path: str, target: TargetInfo, plan: Plan, kernel_library: bytes, weights: list,
                   metadata: dict, device_code: bytes | None = None, *, check: bool = True) -> None:
    """Writes the artifact ``path`` atomically.

    ``weights``: numpy arrays in ``plan.weights`` order, each exactly of its spec's dtype and shape
    (bfloat16 as ml_dtypes.bfloat16); they are streamed to the file (each read once, chunk by chunk,
    CRC computed on the way), so they may be memory-mapped and larger than RAM. The weight layout
    (64-byte aligned, in order) is stored into each spec's ``offset``/``nbytes``.
    ``kernel_library``: the ELF shared object (linked with the runtime's kernel shim); may be empty
    only when the plan has no kernels. ``metadata``: JSON-serializable dict.

    The file is written to a temporary file in the same directory, fsynced and renamed over
    ``path``: a reader never sees a partial file, and on any error ``path`` is untouched and the
    temporary file removed. ``check=False`` skips the plan validation (for testing a loader's own
    checks); the writer still refuses what it cannot encode.
    """
    if check:
        validate_target(target)
        validate_plan(plan)
    elif target.kind not in TARGET_KINDS:
        raise ArtifactError(f"target: unknown kind '{target.kind}'")
    if len(weights) != len(plan.weights):
        raise ArtifactError(f"{len(weights)} weight arrays for {len(plan.weights)} weight specs")
    layout, offset = [], 0
    for spec, array in zip(plan.weights, weights):
        if not isinstance(array, np.ndarray):
            raise ArtifactError(f"weight '{spec.name}': expected a numpy array, got {type(array).__name__}")
        if str(array.dtype) != spec.dtype or tuple(array.shape) != tuple(spec.shape):
            raise ArtifactError(f"weight '{spec.name}': array is {array.dtype}{list(array.shape)}, its spec "
                                f"{_desc(spec.dtype, spec.shape)}")
        offset = _align(offset, WEIGHT_ALIGN)
        layout.append((offset, int(array.nbytes)))
        offset += int(array.nbytes)
    weights_size = offset
    kernel_library = bytes(kernel_library or b"")
    if check and target.kind == "ascend" and kernel_library:
        raise ArtifactError("an ascend artifact has no kernel library: its kernels are in DEVICE_CODE")
    if check and target.kind != "ascend":
        if plan.kernels and not kernel_library:
            raise ArtifactError(f"the plan calls {len(plan.kernels)} kernels but no kernel library was given")
        if kernel_library:
            _check_elf(kernel_library, "KERNELS_HOST")
    try:
        meta = json.dumps(metadata, sort_keys=True, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as err:
        raise ArtifactError(f"metadata is not JSON-serializable: {err}") from None

    try:
        blobs = [("TARGET", _encode_target(target)), ("PLAN", _encode_plan(plan, layout)), ("METADATA", meta)]
    except (struct.error, KeyError, UnicodeEncodeError, TypeError, ValueError) as err:
        raise ArtifactError(f"the plan cannot be encoded: {type(err).__name__}: {err}") from None
    if kernel_library:
        blobs.append(("KERNELS_HOST", kernel_library))
    if device_code:
        blobs.append(("DEVICE_CODE", bytes(device_code)))
    if check and target.kind in ("cuda", "ascend"):
        if not device_code:
            raise ArtifactError(f"a {target.kind} target needs a DEVICE_CODE section")
        if target.kind == "cuda":
            validate_device_code(decode_device_code(bytes(device_code)), target.device_arch)
        else:
            validate_ascend_code(decode_ascend_code(bytes(device_code)), plan, target.device_arch)
    n = len(blobs) + 1
    pos = HEADER_BYTES + n * TABLE_ENTRY_BYTES
    sections = []
    for name, blob in blobs:
        pos = _align(pos, SECTION_ALIGN[name])
        sections.append(Section(name, pos, len(blob), zlib.crc32(blob), SECTION_ALIGN[name]))
        pos += len(blob)
    weights_off = _align(pos, WEIGHTS_SECTION_ALIGN)
    file_size = weights_off + weights_size

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * (HEADER_BYTES + n * TABLE_ENTRY_BYTES))
            for section, (_, blob) in zip(sections, blobs):
                f.write(b"\0" * (section.offset - f.tell()))
                f.write(blob)
            f.write(b"\0" * (weights_off - f.tell()))
            crc = 0
            for array, (w_off, _) in zip(weights, layout):
                pad = b"\0" * (weights_off + w_off - f.tell())
                f.write(pad)
                crc = zlib.crc32(pad, crc)
                for chunk in _array_chunks(array):
                    f.write(chunk)
                    crc = zlib.crc32(chunk, crc)
            if f.tell() != file_size:
                raise ArtifactError(f"internal error: wrote {f.tell()} bytes, planned {file_size}")
            sections.append(Section("WEIGHTS", weights_off, weights_size, crc, WEIGHTS_SECTION_ALIGN))
            table = b"".join(struct.pack("<IIQQII16s", SECTION_KINDS[s.kind], 0, s.offset, s.size, s.crc32,
                                         s.alignment, s.kind.encode("ascii")) for s in sections)
            head = bytearray(struct.pack("<8sIIIIQQI20s", MAGIC, FORMAT_VERSION, HEADER_BYTES, n, 0,
                                         HEADER_BYTES, file_size, 0, b"\0" * 20))
            struct.pack_into("<I", head, 40, zlib.crc32(table, zlib.crc32(bytes(head))))
            f.seek(0)
            f.write(head)
            f.write(table)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    for spec, (w_off, nbytes) in zip(plan.weights, layout):
        spec.offset, spec.nbytes = w_off, nbytes
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


# ---- decoding ------------------------------------------------------------------------------------

class _In:
    """A bounds-checked cursor over one section; errors name the section, context and byte."""

    def __init__(self, data, where: str):
        self.data, self.pos, self.where, self.context = data, 0, where, "start"

    def fail(self, message: str):
        raise ArtifactError(f"{self.where} section, {self.context} (byte {self.pos}): {message}")

    def take(self, n: int, what: str):
        if len(self.data) - self.pos < n:
            self.fail(f"truncated: {what} needs {n} bytes, {len(self.data) - self.pos} left")
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

    def count(self, what, min_bytes):
        n = self.u32(what)
        if n > MAX_COUNT:
            self.fail(f"{what} {n} exceeds {MAX_COUNT}")
        if n * min_bytes > len(self.data) - self.pos:
            self.fail(f"{what} {n} cannot fit in the {len(self.data) - self.pos} bytes left (truncated?)")
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

    def desc(self):
        code, bits, lanes = struct.unpack("<BBH", self.take(4, "dtype"))
        if (code, bits) not in DTYPE_NAMES or lanes != 1:
            self.fail(f"unsupported dtype (code {code}, bits {bits}, lanes {lanes})")
        ndim = self.u32("ndim")
        if ndim > MAX_RANK:
            self.fail(f"rank {ndim} exceeds {MAX_RANK}")
        shape = []
        for i in range(ndim):
            d = self.i64("shape dimension")
            if d < 0:
                self.fail(f"shape dimension {i} is negative ({d})")
            shape.append(d)
        dtype = DTYPE_NAMES[(code, bits)]
        count = 1
        for d in shape:
            count *= d
        if count * (bits // 8) >= 2**64:
            self.fail("byte size overflows 64 bits")
        return dtype, tuple(shape)


_MIN_STRING, _MIN_DESC = 5, 8
_MIN = {"weight": _MIN_STRING + _MIN_DESC + 16, "state": _MIN_STRING + _MIN_DESC, "buffer": 13 + _MIN_DESC,
        "io": _MIN_STRING + 8, "op": 9, "arg": 9, "entry": _MIN_STRING + 24}
_KIND_OF = {v: k for k, v in BUFFER_KINDS.items()}
_ROLE_OF = {v: k for k, v in ROLES.items()}


def _decode_target(data) -> TargetInfo:
    r = _In(data, "TARGET")
    r.context = "target"
    kind = r.u32("target kind")
    kinds = {v: k for k, v in TARGET_KINDS.items()}
    if kind not in kinds:
        r.fail(f"unknown target kind {kind}")
    host = r.string("host architecture")
    features = r.u64("CPU feature mask")
    if features >> FEATURE_BIT_COUNT:
        r.fail(f"unknown CPU feature bits 0x{features >> FEATURE_BIT_COUNT << FEATURE_BIT_COUNT:x}")
    device = r.string("device architecture", allow_empty=True)
    if kinds[kind] == "cpu" and device:
        r.fail(f"a cpu target has device architecture '{device}' (expected \"\")")
    if r.pos != len(data):
        r.fail(f"{len(data) - r.pos} unexpected trailing bytes")
    return TargetInfo(kinds[kind], host, features, device)


def _decode_plan(data) -> Plan:
    r = _In(data, "PLAN")
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
            buffers.append(Buffer(_KIND_OF[kind], index, offset, dtype, shape))
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
        ops = []
        for o in range(r.count("op count", _MIN["op"])):
            r.context = f"entry '{name}' op {o}"
            kind, kernel = r.u8("op"), r.u32("kernel index")
            if kind not in (0, 1):
                r.fail(f"unknown op {kind}")
            if kind == 1 and kernel != 0:
                r.fail(f"copy op has kernel index {kernel} (expected 0)")
            args = []
            for a in range(r.count("argument count", _MIN["arg"])):
                akind = r.u8("argument kind")
                value = r.i64("argument value")
                if akind not in (0, 1):
                    r.fail(f"argument {a} has unknown kind {akind}")
                args.append(("buf" if akind == 0 else "imm", value))
            ops.append(Op("call" if kind == 0 else "copy", kernel if kind == 0 else None, args))
        entries.append(Entry(name, arena, buffers, ios[0], ios[1], ops))
    r.context = "end"
    if r.pos != len(data):
        r.fail(f"{len(data) - r.pos} unexpected trailing bytes")
    plan = Plan(kernels, weights, states, entries)
    try:
        validate_plan(plan)
    except ArtifactError as err:
        raise ArtifactError(f"PLAN section: {err}") from None
    return plan


def decode_device_code(data) -> DeviceCode:
    """Parses and validates a DEVICE_CODE section (the C loader's rules)."""
    r = _In(data, "DEVICE_CODE")
    r.context = "header"
    if bytes(r.take(8, "magic")) != DEVICE_MAGIC:
        r.pos -= 8
        r.fail('bad magic (expected "TIDECUDA")')
    version = r.u32("version")
    if version != DEVICE_VERSION:
        r.fail(f"version {version} is not supported (expected {DEVICE_VERSION})")
    formats = {v: k for k, v in DEVICE_FORMATS.items()}
    images = []
    for i in range(r.count("image count", 4 + 1 + 8)):
        r.context = f"image {i}"
        arch = r.string("architecture")
        fmt = r.u8("format")
        if fmt not in formats:
            r.fail(f"unknown image format {fmt} (0 cubin, 1 fatbin, 2 ptx)")
        n = r.u64("image size")
        if n > len(r.data) - r.pos:
            r.fail(f"image of {n} bytes exceeds the {len(r.data) - r.pos} bytes left (truncated?)")
        images.append(DeviceImage(arch, formats[fmt], bytes(r.take(n, "image"))))
    functions = []
    for i in range(r.count("function count", 4 + 1 + 8)):
        r.context = f"function {i}"
        name = r.string("function name")
        r.context = f"function {i} ('{name}')"
        args = []
        for _ in range(r.count("argument count", 4)):
            code, bits, lanes = struct.unpack("<BBH", r.take(4, "argument dtype"))
            if (code, bits) == DEVICE_HANDLE and lanes == 1:
                args.append("handle")
            elif (code, bits) in DTYPE_NAMES and lanes == 1:
                args.append(DTYPE_NAMES[(code, bits)])
            else:
                r.pos -= 4
                r.fail(f"unsupported argument dtype (code {code}, bits {bits}, lanes {lanes})")
        tags = [r.string("launch tag") for _ in range(r.count("launch tag count", 5))]
        functions.append(DeviceFunction(name, args, tags))
    if r.pos != len(r.data):
        r.context = "end"
        r.fail(f"{len(r.data) - r.pos} bytes follow the last function")
    code = DeviceCode(images, functions)
    try:
        validate_device_code(code)
    except ArtifactError as err:
        raise ArtifactError(f"DEVICE_CODE section: {str(err).removeprefix('DEVICE_CODE').lstrip(': ')}") from None
    return code


def decode_ascend_code(data) -> AscendCode:
    """Parses and validates an ascend DEVICE_CODE section (the C loader's rules, without the plan)."""
    r = _In(data, "DEVICE_CODE")
    r.context = "header"
    if bytes(r.take(8, "magic")) != ASCEND_MAGIC:
        r.pos -= 8
        r.fail('bad magic (expected "TIDEASCN")')
    version = r.u32("version")
    if version != ASCEND_VERSION:
        r.fail(f"version {version} is not supported (expected {ASCEND_VERSION})")
    soc = r.string("SoC")
    kinds = {v: k for k, v in ASCEND_ARG_KINDS.items()}
    kernels = []
    for i in range(r.count("kernel count", 4 + 4 + 4 + 8 + 8)):
        r.context = f"kernel {i}"
        name = r.string("kernel name")
        r.context = f"kernel {i} ('{name}')"
        block_dim = r.u32("block_dim")
        args = []
        for _ in range(r.count("argument count", 1)):
            kind = r.u8("argument kind")
            if kind not in kinds:
                r.fail(f"unknown argument kind {kind} (0 ptr, 1 i64)")
            args.append(kinds[kind])
        n = r.u64("HIVM size")
        if n > len(r.data) - r.pos:
            r.fail(f"HIVM text of {n} bytes exceeds the {len(r.data) - r.pos} bytes left (truncated?)")
        try:
            hivm = bytes(r.take(n, "HIVM text")).decode("utf-8")
        except UnicodeDecodeError:
            r.fail("the HIVM text is not UTF-8")
        n = r.u64("binary size")
        if n > len(r.data) - r.pos:
            r.fail(f"binary of {n} bytes exceeds the {len(r.data) - r.pos} bytes left (truncated?)")
        kernels.append(AscendKernel(name, block_dim, args, hivm, bytes(r.take(n, "binary"))))
    if r.pos != len(r.data):
        r.context = "end"
        r.fail(f"{len(r.data) - r.pos} bytes follow the last kernel")
    code = AscendCode(soc, kernels)
    try:
        validate_ascend_code(code)
    except ArtifactError as err:
        raise ArtifactError(f"DEVICE_CODE section: {str(err).removeprefix('DEVICE_CODE').lstrip(': ')}") from None
    return code


def _crc_range(data, offset: int, size: int) -> int:
    """CRC-32 of data[offset:offset + size] in chunks, without copying and without leaving a buffer
    export behind (the mmap must stay closable)."""
    crc = 0
    with memoryview(data) as view:
        for start in range(offset, offset + size, _CRC_CHUNK):
            with view[start:min(start + _CRC_CHUNK, offset + size)] as chunk:
                crc = zlib.crc32(chunk, crc)
    return crc


def _parse(path: str, data, verify: bool) -> Artifact:
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
    sections: dict = {}
    for i in range(n):
        kind, sflags, off, length, scrc, align, raw_name = struct.unpack_from(
            "<IIQQII16s", data, table_off + i * TABLE_ENTRY_BYTES)
        name = SECTION_NAMES.get(kind)
        if name is None:
            raise ArtifactError(f"section table entry {i}: unknown section kind {kind}")
        if name in sections:
            raise ArtifactError(f"section table entry {i}: a second {name} section")
        if sflags:
            raise ArtifactError(f"{name} section: flags are 0x{sflags:x}, expected 0")
        if align == 0 or align & (align - 1) or align > MAX_SECTION_ALIGN:
            raise ArtifactError(f"{name} section: alignment {align} is not a power of two up to {MAX_SECTION_ALIGN}")
        if name == "WEIGHTS" and align < WEIGHTS_SECTION_ALIGN:
            raise ArtifactError(f"WEIGHTS section: alignment {align} is below {WEIGHTS_SECTION_ALIGN}")
        if off % align:
            raise ArtifactError(f"{name} section: offset {off} is not {align}-byte aligned")
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
        sections[name] = Section(name, off, length, scrc, align)
    for required in ("TARGET", "PLAN", "WEIGHTS"):
        if required not in sections:
            raise ArtifactError(f"the artifact has no {required} section")
    for s in sections.values():
        if verify or s.kind not in ("WEIGHTS", "DEVICE_CODE"):
            computed = _crc_range(data, s.offset, s.size)
            if computed != s.crc32:
                raise ArtifactError(f"{s.kind} section: checksum mismatch (stored 0x{s.crc32:08x}, computed "
                                    f"0x{computed:08x}): the file is corrupt")

    def blob(kind):
        s = sections[kind]
        return data[s.offset:s.offset + s.size]

    metadata = {}
    if "METADATA" in sections:
        raw = blob("METADATA")
        nul = raw.find(b"\0")
        if nul >= 0:
            raise ArtifactError(f"METADATA section: NUL byte at offset {nul}")
        try:
            metadata = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ArtifactError(f"METADATA section: invalid UTF-8 at offset {err.start}") from None
        except json.JSONDecodeError as err:
            raise ArtifactError(f"METADATA section: not JSON: {err}") from None
    target = _decode_target(blob("TARGET"))
    plan = _decode_plan(blob("PLAN"))
    wsize = sections["WEIGHTS"].size
    for w in plan.weights:
        if w.offset % WEIGHT_ALIGN:
            raise ArtifactError(f"PLAN section: weight '{w.name}': offset {w.offset} is not {WEIGHT_ALIGN}-byte aligned")
        if w.nbytes != nbytes_of(w.dtype, w.shape):
            raise ArtifactError(f"PLAN section: weight '{w.name}': byte size {w.nbytes} does not match its dtype "
                                f"and shape ({nbytes_of(w.dtype, w.shape)})")
        if w.offset + w.nbytes > wsize:
            raise ArtifactError(f"PLAN section: weight '{w.name}': {w.nbytes} bytes at offset {w.offset} exceed the "
                                f"{wsize}-byte WEIGHTS section")
    if target.kind == "ascend" and "KERNELS_HOST" in sections:
        raise ArtifactError("an ascend artifact has a KERNELS_HOST section (its kernels are in DEVICE_CODE)")
    if plan.kernels and target.kind != "ascend":
        if "KERNELS_HOST" not in sections:
            raise ArtifactError(f"the plan calls {len(plan.kernels)} kernels but the artifact has no KERNELS_HOST "
                                "section")
        s = sections["KERNELS_HOST"]
        _check_elf(data[s.offset:s.offset + min(s.size, 64)], "KERNELS_HOST section")
    device_code = None
    if target.kind == "cuda":
        if "DEVICE_CODE" not in sections:
            raise ArtifactError("a cuda target needs a DEVICE_CODE section")
        device_code = decode_device_code(blob("DEVICE_CODE"))
        validate_device_code(device_code, target.device_arch)
    elif target.kind == "ascend":
        if "DEVICE_CODE" not in sections:
            raise ArtifactError("an ascend target needs a DEVICE_CODE section")
        device_code = decode_ascend_code(blob("DEVICE_CODE"))
        validate_ascend_code(device_code, plan, target.device_arch)
    return Artifact(path, size, target, plan, metadata, {k: (s.offset, s.size) for k, s in sections.items()},
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
