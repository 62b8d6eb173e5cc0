"""The artifact format (docs/artifact-format.md, version 1) in Python: its constants, its data model
and its validation rules, the same rules as the C loader (runtime/src/artifact.c).

The data model is the one the compiler's lowering builds (``tide.compiler.lower``) and the writer
writes: a :class:`Plan` holds kernel names, :class:`WeightSpec` and :class:`StateSpec` lists and
:class:`Entry` objects; an entry has :class:`Buffer` objects (kind ``"arena" | "input" | "weight" |
"state"``), input/output :class:`IOBinding` objects (role ``"data" | "state"``) and :class:`Call`
objects (a kernel name and arguments ``("buf", i)`` or ``("imm", v)``). dtypes are names:
``"float32"``, ``"bfloat16"``, ``"int64"``, ``"bool"``, ...

The DEVICE_CODE section belongs to the runtime backend that executes the artifact: its format lives
in that target's folder (``tide.targets.<kind>.device_code``, see ``device_format``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...runtime.dtypes import DEVICE_KINDS, DTYPES
from ...runtime.dtypes import describe as desc
from ...runtime.dtypes import np_dtype as _numpy_dtype

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
ARENA_ALIGN = 64

SECTION_KINDS = {"TARGET": 1, "PLAN": 2, "KERNELS_HOST": 3, "WEIGHTS": 4, "METADATA": 5, "DEVICE_CODE": 6}
SECTION_NAMES = {v: k for k, v in SECTION_KINDS.items()}
# Alignment the writer gives each section (the loader requires >= 4096 for WEIGHTS only).
SECTION_ALIGN = {"TARGET": 8, "PLAN": 8, "METADATA": 8, "KERNELS_HOST": 64, "DEVICE_CODE": 64,
                 "WEIGHTS": WEIGHTS_SECTION_ALIGN}
TARGET_KINDS = DEVICE_KINDS  # the TARGET record names the runtime backend that executes the artifact
BUFFER_KINDS = {"arena": 0, "input": 1, "weight": 2, "state": 3}
ROLES = {"data": 0, "state": 1}
ARG_KINDS = {"buf": 0, "imm": 1}
OP_CALL = 0  # the one op kind: a kernel call
# Required-CPU-feature bits of the TARGET section (bit i = FEATURES[i]), named as LLVM names them.
FEATURES = ("sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vnni",
            "avx512bf16")
FEATURE_BIT_COUNT = len(FEATURES)


class ArtifactError(Exception):
    """An artifact (or a plan about to be written) breaks the format; the message says where."""


@dataclass
class TargetInfo:
    kind: str  # the runtime backend: "cpu" | "cuda" | "ascend"
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
    dtype: str
    shape: tuple
    offset: int = 0  # bytes into the arena or into the referenced tensor (views)

    @property
    def nbytes(self) -> int:
        return nbytes_of(self.dtype, self.shape)


@dataclass
class IOBinding:
    name: str
    buffer: int
    role: str  # "data" | "state"


@dataclass
class Call:
    kernel: str  # a name of Plan.kernels (the file stores its index)
    args: list  # [("buf", buffer index) | ("imm", int64)]


@dataclass
class Entry:
    name: str
    buffers: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    calls: list = field(default_factory=list)
    arena_bytes: int = 0


@dataclass
class Plan:
    kernels: list  # kernel names; the library exports "__tvm_ffi_" + name
    weights: list
    states: list
    entries: list


@dataclass
class Section:
    kind: str  # "TARGET", "PLAN", ...
    offset: int
    size: int
    crc32: int
    alignment: int


def device_format(kind: str):
    """The DEVICE_CODE format of the runtime backend ``kind`` (None when it has no device code):
    the ``device_code`` of the target folder of that name, a module with ``encode(code) -> bytes``,
    ``decode(data) -> code``, ``validate(code, plan, device_arch)``, ``describe(code) -> [lines]`` and
    ``HOST_LIBRARY`` (whether the artifact also carries a KERNELS_HOST library)."""
    from ...targets import get

    return get(kind).device_code


def np_dtype(name: str) -> np.dtype:
    """The numpy dtype of a format dtype name (bfloat16 through ml_dtypes)."""
    if name not in DTYPES:
        raise ArtifactError(f"unsupported dtype '{name}'")
    return _numpy_dtype(name)


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


def size_text(n: int) -> str:
    """A byte count for people: MiB from 1 MiB up, else KiB."""
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def check_string(s, what: str, allow_empty: bool = False) -> None:
    if not isinstance(s, str) or (not s and not allow_empty) or len(s) > MAX_STRING or \
            not all(32 <= ord(c) < 127 for c in s):
        raise ArtifactError(f"{what} {s!r} is not a {'' if allow_empty else 'non-empty '}printable ASCII "
                            f"string of at most {MAX_STRING} characters")


def check_unique(names, what: str) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise ArtifactError(f"duplicate {what} name '{n}'")
        seen.add(n)


def check_int(v, lo: int, hi: int, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
        raise ArtifactError(f"{what} is {v!r}, expected an integer in [{lo}, {hi}]")
    return int(v)


# ---- validation: the loader's rules ------------------------------------------------------------

def validate_target(t: TargetInfo) -> None:
    if t.kind not in TARGET_KINDS:
        raise ArtifactError(f"target: unknown kind '{t.kind}' (known: {', '.join(TARGET_KINDS)})")
    check_string(t.host_arch, "target host architecture")
    check_string(t.device_arch, "target device architecture", allow_empty=True)
    check_int(t.host_features, 0, 2**64 - 1, "target CPU feature mask")
    if t.host_features >> FEATURE_BIT_COUNT:
        unknown = t.host_features >> FEATURE_BIT_COUNT << FEATURE_BIT_COUNT
        raise ArtifactError(f"target: unknown CPU feature bits 0x{unknown:x}")
    if device_format(t.kind) is None and t.device_arch:
        raise ArtifactError(f"target: a {t.kind} target has device architecture '{t.device_arch}' (expected '')")


def validate_plan(plan: Plan) -> None:
    """Checks ``plan`` against every rule of the format (the same rules as the C loader)."""
    for what, items in (("kernel", plan.kernels), ("weight", plan.weights), ("state", plan.states),
                        ("entry", plan.entries)):
        if len(items) > MAX_COUNT:
            raise ArtifactError(f"{len(items)} {what}s exceed {MAX_COUNT}")
    for i, k in enumerate(plan.kernels):
        check_string(k, f"kernel {i} name")
    check_unique(plan.kernels, "kernel")
    for w in plan.weights:
        check_string(w.name, "weight name")
        try:
            nbytes_of(w.dtype, w.shape)
        except ArtifactError as err:
            raise ArtifactError(f"weight '{w.name}': {err}") from None
    check_unique([w.name for w in plan.weights], "weight")
    state_bytes = []
    for s in plan.states:
        check_string(s.name, "state name")
        try:
            state_bytes.append(nbytes_of(s.dtype, s.shape))
        except ArtifactError as err:
            raise ArtifactError(f"state '{s.name}': {err}") from None
    check_unique([s.name for s in plan.states], "state")
    if not plan.entries:
        raise ArtifactError("the plan has no entries")
    kernels = set(plan.kernels)
    for e in plan.entries:
        check_string(e.name, "entry name")
        _validate_entry(plan, kernels, e, state_bytes)
    check_unique([e.name for e in plan.entries], "entry")


def _validate_entry(plan: Plan, kernels: set, e: Entry, state_bytes: list) -> None:
    where_e = f"entry '{e.name}'"
    check_int(e.arena_bytes, 0, 2**64 - 1, f"{where_e} arena bytes")
    if e.arena_bytes % ARENA_ALIGN:
        raise ArtifactError(f"{where_e}: arena bytes {e.arena_bytes} is not a multiple of {ARENA_ALIGN}")
    for what, items in (("buffer", e.buffers), ("input", e.inputs), ("output", e.outputs), ("call", e.calls)):
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
        index = check_int(b.index, 0, 2**32 - 1, f"{where} index")
        offset = check_int(b.offset, 0, 2**64 - 1, f"{where} offset")
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
            check_string(io.name, f"{where_e} {what} name")
            if io.role not in ROLES:
                raise ArtifactError(f"{where_e} {what} '{io.name}': unknown role {io.role!r} (known: data, state)")
            check_int(io.buffer, 0, 2**32 - 1, f"{where_e} {what} '{io.name}' buffer")
            if io.buffer >= len(e.buffers):
                raise ArtifactError(f"{where_e} {what} '{io.name}': buffer index {io.buffer} out of range "
                                    f"({len(e.buffers)} buffers)")
        check_unique([io.name for io in ios], f"{where_e} {what}")

    def check_whole_state(io: IOBinding, what: str, bound: dict) -> None:
        b = e.buffers[io.buffer]
        if b.kind != "state" or b.offset != 0:
            raise ArtifactError(f"{where_e} {what} '{io.name}': role state must be bound to a whole state "
                                f"buffer (buffer {io.buffer} is a {b.kind} buffer at offset {b.offset})")
        st = plan.states[b.index]
        if st.dtype != b.dtype or tuple(st.shape) != tuple(b.shape):
            raise ArtifactError(f"{where_e} {what} '{io.name}': state '{st.name}' is {desc(st.dtype, st.shape)}, "
                                f"its buffer {desc(b.dtype, b.shape)}")
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
    for c, call in enumerate(e.calls):
        where = f"{where_e} op {c}"  # the file's word for a call, as the C loader says it
        if call.kernel not in kernels:
            raise ArtifactError(f"{where}: kernel {call.kernel!r} is not in the plan's {len(plan.kernels)} kernels")
        if len(call.args) > MAX_CALL_ARGS:
            raise ArtifactError(f"{where}: {len(call.args)} arguments exceed the limit of {MAX_CALL_ARGS}")
        for a, arg in enumerate(call.args):
            if not isinstance(arg, (tuple, list)) or len(arg) != 2 or arg[0] not in ARG_KINDS:
                raise ArtifactError(f"{where}: argument {a} is {arg!r}, expected ('buf', index) or ('imm', value)")
            if arg[0] == "buf":
                if check_int(arg[1], -2**63, 2**63 - 1, f"{where} argument {a}") >= len(e.buffers) or arg[1] < 0:
                    raise ArtifactError(f"{where}: argument {a}: buffer {arg[1]} out of range "
                                        f"({len(e.buffers)} buffers)")
            else:
                check_int(arg[1], -2**63, 2**63 - 1, f"{where} argument {a} (int64 immediate)")
