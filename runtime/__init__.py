"""tide.runtime: the Python API over tide's C runtime (libtide_runtime.so through cffi, ABI mode).

Needs only numpy and cffi (ml_dtypes for bfloat16 numpy arrays); never imports TVM, torch or onnx.

    model = tide.runtime.load("model.tide")          # tide.load re-exports it
    outs = model.run({"x": x})                        # onnxruntime convention: fresh numpy arrays
    views = model.run_dlpack({"x": torch_tensor})     # zero copy both ways (DLPack)
    s = model.session()                               # decode models: prefill / decode / generate
    ids = s.generate(prompt_ids, 32)

Inputs are numpy arrays or any object implementing ``__dlpack__`` (a torch CPU tensor, ...); they are
used in place when C-contiguous and 64-byte aligned (kernels use aligned vector loads), otherwise
copied into an aligned staging buffer. dtypes and shapes must match exactly.

On a cuda model (``load(path, device="cuda:0")``) host inputs are copied to the device and outputs
back. When the data inputs are DLPack tensors on the model's CUDA device (torch CUDA tensors), the
run stays on the device: inputs are copied device to device into the session's buffers and
``run_dlpack`` returns device views (``torch.from_dlpack`` takes them without a copy).

Lifetimes: ``run`` returns copies. ``run_dlpack`` returns :class:`Tensor` views of the runtime's
memory (implementing ``__dlpack__``, so ``torch.from_dlpack`` / ``np.from_dlpack`` view them without a
copy): their contents are valid until the next run of the same model (``run``/``run_dlpack``) or
session; the memory itself stays allocated as long as any view or DLPack consumer is alive.

Thread safety: a Model may be shared by threads; ``Model.run``/``run_dlpack`` calls are serialized
on the model's internal session, and each :class:`Session` serializes its own calls. Different
sessions run in parallel (the C calls release the GIL).
"""

from __future__ import annotations

import ctypes
import json
import re
import threading
from dataclasses import dataclass

import numpy as np

from . import build
from ._ffi import ffi
from .dtypes import DEVICE_KINDS, DTYPE_NAMES, DTYPES, ITEMSIZE, describe, np_dtype, parse_device
from .errors import TideError

__all__ = ["load", "Model", "Session", "Tensor", "TensorInfo", "MemoryInfo", "TideError"]

ALIGNMENT = 64
_lib = None
_lib_lock = threading.Lock()


def prefill_chunks(prefill_sizes, total: int) -> list[tuple[str, int]]:
    """The (entry, tokens) steps that consume ``total`` prompt tokens: the largest compiled prefill
    size that fits, then smaller ones; single tokens through decode."""
    plan, left = [], total
    for size in sorted(prefill_sizes, reverse=True):
        while left >= size:
            plan.append((f"prefill_{size}", size))
            left -= size
    plan.extend([("decode", 1)] * left)
    return plan


def _library():
    global _lib
    with _lib_lock:
        if _lib is None:
            _lib = ffi.dlopen(build.library_path())
        return _lib


def _check(status) -> None:
    if status != ffi.NULL:
        lib = _library()
        message = ffi.string(lib.tide_status_message(status)).decode("utf-8", "replace")
        code = int(lib.tide_status_code(status))
        lib.tide_status_free(status)
        raise TideError(message, code)


@dataclass(frozen=True)
class TensorInfo:
    """An input, output or state of a model."""

    name: str
    dtype: str  # "float32", "int64", "bfloat16", ...
    shape: tuple
    role: str  # "data" | "state"
    state_index: int | None = None  # which state, for role "state"

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * ITEMSIZE[self.dtype]


@dataclass(frozen=True)
class MemoryInfo:
    """The memory plan: the arena (largest entry), the decode state, the (memory-mapped) weights."""

    arena_bytes: int
    state_bytes: int
    weight_bytes: int


def _info(c) -> TensorInfo:
    role = "state" if c.role == 1 else "data"
    return TensorInfo(ffi.string(c.name).decode(), DTYPE_NAMES[(c.dtype.code, c.dtype.bits)],
                      tuple(int(c.shape[i]) for i in range(c.ndim)), role,
                      int(c.state_index) if role == "state" else None)


# ---- DLPack ---------------------------------------------------------------------------------------

_capi = ctypes.pythonapi
_capi.PyCapsule_IsValid.restype = ctypes.c_int
_capi.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capi.PyCapsule_GetPointer.restype = ctypes.c_void_p
_capi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capi.PyCapsule_SetName.restype = ctypes.c_int
_capi.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
_CAPSULE_DESTRUCTOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_capi.PyCapsule_New.restype = ctypes.py_object
_capi.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, _CAPSULE_DESTRUCTOR]
# Raw-pointer variants for the capsule destructor (the capsule is being deallocated: no py_object).
_capsule_is_valid_raw = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p)(("PyCapsule_IsValid", _capi))
_capsule_get_pointer_raw = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", _capi))

_NAME_LEGACY = b"dltensor"
_NAME_VERSIONED = b"dltensor_versioned"
_NAME_USED_LEGACY = b"used_dltensor"
_NAME_USED_VERSIONED = b"used_dltensor_versioned"
_DLPACK_CPU = 1
_DLPACK_CUDA = 2
_DLPACK_FLAG_READ_ONLY = 1

# Exported DLManagedTensor(s) still owned by a consumer: address -> what keeps their memory alive.
_exports: dict = {}


def _release_export(address: int) -> None:
    _exports.pop(address, None)


@ffi.callback("void(DLManagedTensor*)")
def _deleter_legacy(managed):
    _release_export(int(ffi.cast("uintptr_t", managed)))


@ffi.callback("void(DLManagedTensorVersioned*)")
def _deleter_versioned(managed):
    _release_export(int(ffi.cast("uintptr_t", managed)))


@_CAPSULE_DESTRUCTOR
def _capsule_destructor(capsule):
    # Never consumed (still under its original name): the producer frees it.
    for name in (_NAME_LEGACY, _NAME_VERSIONED):
        if _capsule_is_valid_raw(capsule, name):
            _release_export(_capsule_get_pointer_raw(capsule, name))
            return


class Tensor:
    """A zero-copy view of tensor memory owned by the runtime (``run_dlpack`` outputs).

    Implements ``__dlpack__``/``__dlpack_device__`` and ``__array__``; ``numpy()`` gives a numpy view.
    The contents are valid until the next run of the model or session that produced it.
    """

    __slots__ = ("_ptr", "dtype", "shape", "_owner", "device")

    def __init__(self, ptr: int, dtype: str, shape: tuple, owner, device: tuple = (_DLPACK_CPU, 0)):
        self._ptr = ptr
        self.dtype = dtype
        self.shape = tuple(shape)
        self._owner = owner  # keeps the runtime memory alive
        self.device = device  # DLPack (device_type, device_id)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * ITEMSIZE[self.dtype]

    @property
    def data_ptr(self) -> int:
        return self._ptr

    def __repr__(self) -> str:
        where = "" if self.device == (_DLPACK_CPU, 0) else f" on cuda:{self.device[1]}"
        return f"tide.runtime.Tensor({describe(self.dtype, self.shape)} at 0x{self._ptr:x}{where})"

    def numpy(self) -> np.ndarray:
        """A numpy view (no copy) of the same memory (host tensors only)."""
        if self.device != (_DLPACK_CPU, 0):
            raise TideError(f"{self!r} is CUDA device memory: view it with torch.from_dlpack, or run with host "
                            "inputs to get host outputs")
        dtype = np_dtype(self.dtype)
        if self.nbytes == 0:
            return np.zeros(self.shape, dtype=dtype)
        buf = ffi.buffer(ffi.cast("char*", self._ptr), self.nbytes)
        return np.frombuffer(buf, dtype=dtype).reshape(self.shape)

    def __array__(self, dtype=None, copy=None):
        view = self.numpy()
        if copy:
            view = view.copy()
        return view if dtype is None else view.astype(dtype, copy=bool(copy))

    def __dlpack_device__(self):
        return self.device

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        # Device tensors are complete when their run returns (the runtime waits for its stream), so
        # any consumer stream may read them.
        if self.device == (_DLPACK_CPU, 0) and stream is not None and stream != -1:
            raise BufferError("tide tensors are CPU memory: stream must be None")
        if dl_device is not None and tuple(dl_device) != self.device:
            raise BufferError(f"this tide tensor lives on DLPack device {self.device}; cannot export to device "
                              f"{tuple(dl_device)}")
        if copy and self.device != (_DLPACK_CPU, 0):
            raise BufferError("tide cannot copy a device tensor on export; copy it on the consumer's side")
        source = self
        if copy:
            holder = np.empty(max(self.nbytes, 1), dtype=np.uint8)
            if self.nbytes:
                ffi.memmove(ffi.cast("char*", holder.ctypes.data), ffi.cast("char*", self._ptr), self.nbytes)
            source = Tensor(holder.ctypes.data, self.dtype, self.shape, holder, self.device)
        versioned = max_version is not None and tuple(max_version)[0] >= 1
        managed = ffi.new("DLManagedTensorVersioned*" if versioned else "DLManagedTensor*")
        shape = ffi.new("int64_t[]", max(len(source.shape), 1))
        for i, d in enumerate(source.shape):
            shape[i] = d
        t = managed.dl_tensor
        t.data = ffi.cast("void*", source._ptr)
        t.device.device_type, t.device.device_id = source.device
        t.ndim = len(source.shape)
        t.dtype.code, t.dtype.bits = DTYPES[source.dtype]
        t.dtype.lanes = 1
        t.shape = shape
        t.strides = ffi.NULL
        t.byte_offset = 0
        if versioned:
            managed.version.major, managed.version.minor = 1, 0
            managed.flags = 0
            managed.deleter = _deleter_versioned
        else:
            managed.deleter = _deleter_legacy
        address = int(ffi.cast("uintptr_t", managed))
        _exports[address] = (managed, shape, source)
        return _capi.PyCapsule_New(address, _NAME_VERSIONED if versioned else _NAME_LEGACY, _capsule_destructor)


class _Borrowed:
    """A DLPack input held for the duration of one run (the deleter is called on release)."""

    __slots__ = ("capsule", "managed")

    def __init__(self, capsule, managed):
        self.capsule, self.managed = capsule, managed

    def release(self) -> None:
        if self.managed is not None and self.managed.deleter != ffi.NULL:
            self.managed.deleter(self.managed)
        self.managed = None


def _borrow_dlpack(obj):
    """(DLTensor cdata, _Borrowed) for an object implementing __dlpack__ (consumed per the spec)."""
    try:
        capsule = obj.__dlpack__(max_version=(1, 0))
    except TypeError:
        capsule = obj.__dlpack__()
    if _capi.PyCapsule_IsValid(capsule, _NAME_VERSIONED):
        managed = ffi.cast("DLManagedTensorVersioned*", _capi.PyCapsule_GetPointer(capsule, _NAME_VERSIONED))
        _capi.PyCapsule_SetName(capsule, _NAME_USED_VERSIONED)
    elif _capi.PyCapsule_IsValid(capsule, _NAME_LEGACY):
        managed = ffi.cast("DLManagedTensor*", _capi.PyCapsule_GetPointer(capsule, _NAME_LEGACY))
        _capi.PyCapsule_SetName(capsule, _NAME_USED_LEGACY)
    else:
        raise TideError(f"{type(obj).__name__}.__dlpack__() did not return a DLPack capsule")
    return managed.dl_tensor, _Borrowed(capsule, managed)


# ---- running an entry ---------------------------------------------------------------------------

class _Handle:
    """Owns one C session; whatever holds it (a Model, a Session, output views) keeps it alive."""

    __slots__ = ("ptr", "__weakref__")

    def __init__(self, ptr):
        self.ptr = ptr


class _Runner:
    """One entry on one C session, with its C input/output arrays built once."""

    def __init__(self, model: "Model", handle: _Handle, entry: str):
        self.model, self.handle, self.entry = model, handle, entry
        self.index = model._entry_index(entry)
        self.inputs = model.inputs(entry)
        self.outputs = model.outputs(entry)
        self.c_in = ffi.new("tide_tensor_t[]", max(len(self.inputs), 1))
        self.c_out = ffi.new("tide_tensor_t[]", max(len(self.outputs), 1))
        for i, info in enumerate(self.inputs):
            c = self.c_in[i]
            c.dtype.code, c.dtype.bits = DTYPES[info.dtype]
            c.dtype.lanes = 1
            c.ndim = len(info.shape)
            for d, n in enumerate(info.shape):
                c.shape[d] = n
        self.staging: dict = {}  # input index -> aligned buffer for inputs that must be copied

    def _staging(self, i: int, nbytes: int) -> np.ndarray:
        buf = self.staging.get(i)
        if buf is None or buf.nbytes < nbytes:
            raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
            start = -raw.ctypes.data % ALIGNMENT
            buf = raw[start:start + nbytes]
            self.staging[i] = buf
        return buf

    def _on_device(self, values: list) -> bool:
        """True when the inputs are on the model's CUDA device (a device run), False for host memory."""
        device = [v for v in values if v is not None and not isinstance(v, np.ndarray) and hasattr(v, "__dlpack__")
                  and tuple(v.__dlpack_device__())[0] != _DLPACK_CPU]
        return bool(device) and self.model.device[0] == _DLPACK_CUDA

    def _bind(self, i: int, info: TensorInfo, value, keep: list, borrowed: list, on_device: bool = False) -> None:
        where = f"entry '{self.entry}' input '{info.name}'"
        c = self.c_in[i]
        if value is None:
            if info.role != "state":
                raise TideError(f"{where} is missing")
            c.data = ffi.NULL
            return
        if on_device and (isinstance(value, np.ndarray) or not hasattr(value, "__dlpack__")):
            raise TideError(f"{where}: other inputs are on cuda:{self.model.device[1]}; give every input there "
                            "(a DLPack CUDA tensor) or every input in host memory")
        if not isinstance(value, np.ndarray) and hasattr(value, "__dlpack__"):
            t, held = _borrow_dlpack(value)
            borrowed.append(held)
            got = (DTYPE_NAMES.get((t.dtype.code, t.dtype.bits), f"dtype(code {t.dtype.code}, bits {t.dtype.bits})")
                   if t.dtype.lanes == 1 else f"{t.dtype.lanes}-lane vector")
            shape = tuple(int(t.shape[d]) for d in range(t.ndim))
            dev = (int(t.device.device_type), int(t.device.device_id))
            if on_device and dev != self.model.device:
                raise TideError(f"{where}: the tensor is on DLPack device {dev}; the model runs on "
                                f"cuda:{self.model.device[1]} {self.model.device}")
            if not on_device and dev[0] != _DLPACK_CPU:
                raise TideError(f"{where}: the tensor is on DLPack device type {dev[0]}; this model takes host "
                                "memory" + ("" if self.model.device[0] == _DLPACK_CUDA else
                                            " (it is a cpu model)"))
            if got != info.dtype or shape != info.shape:
                raise TideError(f"{where}: expected {describe(info.dtype, info.shape)}, got {describe(got, shape)}")
            if t.strides != ffi.NULL:
                expect = 1
                for d in reversed(range(t.ndim)):
                    if shape[d] != 1 and t.strides[d] != expect:
                        raise TideError(f"{where}: the tensor is not contiguous (make it contiguous first)")
                    expect *= shape[d]
            ptr = int(ffi.cast("uintptr_t", t.data)) + int(t.byte_offset)
            if not on_device and info.role == "data" and ptr % ALIGNMENT:
                buf = self._staging(i, info.nbytes)
                if info.nbytes:
                    ffi.memmove(ffi.cast("char*", buf.ctypes.data), ffi.cast("char*", ptr), info.nbytes)
                ptr = buf.ctypes.data
            c.data = ffi.cast("void*", ptr)
            return
        want = np_dtype(info.dtype)
        if not isinstance(value, np.ndarray):  # a list or scalar has no dtype of its own: take the input's
            try:
                value = np.asarray(value, dtype=want)
            except (TypeError, ValueError) as err:
                raise TideError(f"{where}: cannot convert {type(value).__name__} to {info.dtype}: {err}") from None
        array = value
        if array.dtype != want or tuple(array.shape) != info.shape:
            raise TideError(f"{where}: expected {describe(info.dtype, info.shape)}, got "
                            f"{describe(str(array.dtype), array.shape)}")
        if not array.flags.c_contiguous or (info.role == "data" and array.ctypes.data % ALIGNMENT):
            buf = self._staging(i, info.nbytes)
            np.copyto(buf.view(want).reshape(info.shape), array)
            array = buf
        keep.append(array)
        c.data = ffi.cast("void*", array.ctypes.data)

    def run(self, values: list) -> list[Tensor]:
        """``values`` in input order (None keeps a state input); returns output views (device views
        for a device run)."""
        keep: list = []
        borrowed: list = []
        on_device = self._on_device(values)
        lib = _library()
        run = lib.tide_session_run_device if on_device else lib.tide_session_run
        try:
            for i, (info, value) in enumerate(zip(self.inputs, values)):
                self._bind(i, info, value, keep, borrowed, on_device)
            _check(run(self.handle.ptr, self.index, self.c_in, len(self.inputs), self.c_out, len(self.outputs)))
        finally:
            for held in borrowed:
                held.release()
        device = self.model.device if on_device else (_DLPACK_CPU, 0)
        return [Tensor(int(ffi.cast("uintptr_t", self.c_out[i].data)), info.dtype,
                       tuple(int(self.c_out[i].shape[d]) for d in range(self.c_out[i].ndim)), self.handle, device)
                for i, info in enumerate(self.outputs)]

    def time(self, values: list, iterations: int) -> np.ndarray:
        """Binds ``values`` like ``run`` and runs the entry ``iterations`` times; per-run seconds."""
        if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
            raise TideError(f"iterations must be an integer >= 1, got {iterations!r}")
        seconds = np.empty(iterations, dtype=np.float64)
        keep: list = []
        borrowed: list = []
        try:
            for i, (info, value) in enumerate(zip(self.inputs, values)):
                self._bind(i, info, value, keep, borrowed)
            _check(_library().tide_session_time(self.handle.ptr, self.index, self.c_in, len(self.inputs), iterations,
                                                ffi.cast("double*", seconds.ctypes.data)))
        finally:
            for held in borrowed:
                held.release()
        return seconds


def _create_session(model: "Model", num_threads: int) -> _Handle:
    lib = _library()
    if not isinstance(num_threads, int) or num_threads < 0:
        raise TideError(f"num_threads must be an integer >= 0 (0: one per CPU), got {num_threads!r}")
    opts = ffi.new("tide_session_options_t*")
    lib.tide_session_options_initialize(opts)
    opts.num_threads = num_threads
    opts.use_cuda_graphs = 1 if model.cuda_graphs else 0
    out = ffi.new("tide_session_t**")
    _check(lib.tide_session_create(model._ptr, opts, out))
    return _Handle(ffi.gc(out[0], lib.tide_session_release))


class Model:
    """A loaded artifact (see :func:`load`). ``run``/``run_dlpack`` for any entry; ``session()`` for
    decode models."""

    def __init__(self, path, verify: bool = True, num_threads: int = 0, device: str = "cpu",
                 cuda_driver: str | None = None, cuda_graphs: bool = True, ascend_acl: str | None = None):
        lib = _library()
        name, ordinal = parse_device(device)
        # DLPack (device_type, device_id); DLPack has no Ascend type: its extension type 12
        self.device = ({"cpu": 1, "cuda": 2, "ascend": 12}[name], ordinal)
        self.cuda_graphs = bool(cuda_graphs)
        opts = ffi.new("tide_model_options_t*")
        lib.tide_model_options_initialize(opts)
        opts.verify_checksums = 1 if verify else 0
        opts.device_kind = DEVICE_KINDS[name]
        opts.device_ordinal = ordinal
        driver = ffi.new("char[]", cuda_driver.encode()) if cuda_driver is not None else ffi.NULL
        opts.cuda_driver_path = driver
        acl = ffi.new("char[]", ascend_acl.encode()) if ascend_acl is not None else ffi.NULL
        opts.ascend_acl_path = acl
        out = ffi.new("tide_model_t**")
        _check(lib.tide_model_load_file(str(path).encode(), opts, out))
        self._ptr = ffi.gc(out[0], lib.tide_model_release)
        self.path = str(path)
        self.num_threads = num_threads
        self.target = ffi.string(lib.tide_model_target(self._ptr)).decode()
        raw_meta = ffi.string(lib.tide_model_metadata(self._ptr)).decode("utf-8")
        try:
            self.metadata = json.loads(raw_meta)
        except json.JSONDecodeError as err:
            raise TideError(f"{self.path}: the METADATA section is not JSON: {err}") from None
        n = lib.tide_model_entry_count(self._ptr)
        self.entries = [ffi.string(lib.tide_model_entry_name(self._ptr, i)).decode() for i in range(n)]
        self._io = {name: (self._infos(lib.tide_model_input_count, lib.tide_model_input_info, i),
                           self._infos(lib.tide_model_output_count, lib.tide_model_output_info, i))
                    for i, name in enumerate(self.entries)}
        info = ffi.new("tide_tensor_info_t*")
        self.states = []
        for i in range(lib.tide_model_state_count(self._ptr)):
            _check(lib.tide_model_state_info(self._ptr, i, info))
            self.states.append(_info(info))
        sizes = ffi.new("uint64_t[3]")
        lib.tide_model_memory(self._ptr, sizes, sizes + 1, sizes + 2)
        self.memory = MemoryInfo(int(sizes[0]), int(sizes[1]), int(sizes[2]))
        self._lock = threading.Lock()
        self._handle: _Handle | None = None
        self._runners: dict = {}

    def __repr__(self) -> str:
        return f"tide.runtime.Model('{self.path}', target={self.target}, entries={self.entries})"

    def _infos(self, count_fn, info_fn, entry: int) -> list[TensorInfo]:
        info = ffi.new("tide_tensor_info_t*")
        out = []
        for j in range(count_fn(self._ptr, entry)):
            _check(info_fn(self._ptr, entry, j, info))
            out.append(_info(info))
        return out

    def _entry_index(self, entry: str) -> int:
        if entry not in self._io:
            raise TideError(f"{self.path}: no entry '{entry}' (the model has {', '.join(self.entries)})")
        return self.entries.index(entry)

    def inputs(self, entry: str = "main") -> list[TensorInfo]:
        self._entry_index(entry)
        return list(self._io[entry][0])

    def outputs(self, entry: str = "main") -> list[TensorInfo]:
        self._entry_index(entry)
        return list(self._io[entry][1])

    def _values(self, feeds: dict, entry: str) -> list:
        if not isinstance(feeds, dict):
            raise TideError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}")
        infos = self.inputs(entry)
        names = [i.name for i in infos]
        unknown = sorted(set(feeds) - set(names))
        if unknown:
            raise TideError(f"entry '{entry}' has no input(s) {', '.join(map(repr, unknown))}; its inputs are "
                            f"{', '.join(names)}")
        missing = [i.name for i in infos if i.role == "data" and feeds.get(i.name) is None]
        if missing:
            raise TideError(f"entry '{entry}': missing input(s) {', '.join(map(repr, missing))}")
        return [feeds.get(i.name) for i in infos]

    def _runner(self, entry: str) -> "_Runner":
        """The internal session's runner of ``entry`` (both made on first use)."""
        if self._handle is None:
            self._handle = _create_session(self, self.num_threads)
        runner = self._runners.get(entry)
        if runner is None:
            runner = self._runners[entry] = _Runner(self, self._handle, entry)
        return runner

    def _run(self, feeds: dict, entry: str) -> list[Tensor]:
        values = self._values(feeds, entry)
        return self._runner(entry).run(values)

    def run(self, feeds: dict, entry: str = "main") -> dict:
        """Runs ``entry`` on ``feeds`` (input name -> numpy array or DLPack tensor) and returns output
        name -> a fresh numpy array. State inputs may be omitted: the model's internal session keeps
        its state between calls (``reset()`` zeroes it); given, they are copied into the state."""
        with self._lock:
            values = self._values(feeds, entry)
            runner = self._runner(entry)
            if runner._on_device(values):
                raise TideError("Model.run returns numpy arrays and takes host inputs; for inputs and outputs on "
                                f"cuda:{self.device[1]} use run_dlpack")
            outs = runner.run(values)
            return {info.name: t.numpy().copy() for info, t in zip(self.outputs(entry), outs)}

    def run_dlpack(self, feeds: dict, entry: str = "main") -> dict:
        """Like ``run`` but zero copy: returns output name -> :class:`Tensor` views (DLPack), valid
        until this model's next ``run``/``run_dlpack``."""
        with self._lock:
            outs = self._run(feeds, entry)
            return {info.name: t for info, t in zip(self.outputs(entry), outs)}

    def time(self, feeds: dict, entry: str = "main", iterations: int = 10) -> np.ndarray:
        """Runs ``entry`` on ``feeds`` ``iterations`` times back to back on the internal session and
        returns each run's duration in seconds (float64 [iterations]; host monotonic clock around
        each synchronous run on the cpu). No outputs; states advance as on every run."""
        with self._lock:
            values = self._values(feeds, entry)
            return self._runner(entry).time(values, iterations)

    def reset(self) -> None:
        """Zero-fills the state of the internal session used by ``run``/``run_dlpack``."""
        with self._lock:
            if self._handle is not None:
                _check(_library().tide_session_reset_state(self._handle.ptr))

    def session(self, batch: int | None = None, num_threads: int | None = None) -> "Session":
        """A decode session with its own arena, state and threads (decode models only)."""
        return Session(self, batch, self.num_threads if num_threads is None else num_threads)


_PREFILL = re.compile(r"prefill_([1-9][0-9]*)$")


class Session:
    """Prefill / decode on a decode model, its state held and updated in place by the runtime.

    A decode model has entries ``decode`` and ``prefill_<S>`` (any chunk sizes S), each with inputs
    ``input_ids`` int64 [B, S], ``start_pos`` int64 [B] and the ``past.*`` states, and outputs
    ``logits`` float32 [B, S, V] and the ``present.*`` states; metadata ``max_seq_len`` is the state
    capacity. All rows advance together; ``position`` is how many tokens each row has consumed. A call
    that is rejected (wrong batch, too many tokens, bad ids) changes nothing. If a kernel fails during
    a call, the state is reset (zeroed, position 0) and TideError says so.
    """

    def __init__(self, model: Model, batch: int | None = None, num_threads: int = 0):
        if "decode" not in model.entries:
            raise TideError(f"{model.path} is not a decode model: it has no 'decode' entry (entries: "
                            f"{', '.join(model.entries)}); use Model.run")
        self.model = model
        self.batch, self.vocab_size = self._signature("decode", 1)
        sizes = []
        for entry in model.entries:
            m = _PREFILL.match(entry)
            if m:
                b, v = self._signature(entry, int(m.group(1)))
                if (b, v) != (self.batch, self.vocab_size):
                    raise TideError(f"{model.path}: entry '{entry}' has batch {b} / vocab {v}, 'decode' has "
                                    f"{self.batch} / {self.vocab_size}")
                sizes.append(int(m.group(1)))
        self.prefill_sizes = tuple(sorted(sizes))
        if batch is not None and batch != self.batch:
            raise TideError(f"{model.path} was compiled for batch {self.batch}, not batch {batch}")
        capacity = model.metadata.get("max_seq_len")
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise TideError(f"{model.path}: metadata 'max_seq_len' (the state capacity) is missing or invalid: "
                            f"{capacity!r}")
        self.max_seq_len = capacity
        self._handle = _create_session(model, num_threads)
        self._lock = threading.Lock()
        self._runners = {e: _Runner(model, self._handle, e) for e in ["decode"] + [f"prefill_{s}" for s in sizes]}
        self._ids = {e: self._aligned((self.batch, 1 if e == "decode" else int(e.split("_")[1])), np.int64)
                     for e in self._runners}
        self._start = self._aligned((self.batch,), np.int64)
        self._position = np.zeros(self.batch, dtype=np.int64)

    @property
    def vocab(self) -> int:
        return self.vocab_size

    @property
    def capacity(self) -> int:
        return self.max_seq_len

    @property
    def position(self) -> np.ndarray:
        """Tokens consumed so far, per row (int64 [batch]; a copy)."""
        return self._position.copy()

    @property
    def num_threads(self) -> int:
        return int(_library().tide_session_num_threads(self._handle.ptr))

    @staticmethod
    def _aligned(shape, dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raw = np.zeros(nbytes + ALIGNMENT, dtype=np.uint8)
        start = -raw.ctypes.data % ALIGNMENT
        return raw[start:start + nbytes].view(dtype).reshape(shape)

    def _signature(self, entry: str, seq: int) -> tuple[int, int]:
        """Checks an entry against the decode-model contract; returns (batch, vocab)."""
        ins, outs = self.model.inputs(entry), self.model.outputs(entry)
        where = f"{self.model.path}: entry '{entry}'"
        if len(ins) < 2 or ins[0].name != "input_ids" or ins[1].name != "start_pos":
            raise TideError(f"{where}: inputs must be input_ids, start_pos, then states; got "
                            f"{', '.join(i.name for i in ins)}")
        ids, start = ins[0], ins[1]
        if ids.dtype != "int64" or len(ids.shape) != 2 or ids.shape[1] != seq:
            raise TideError(f"{where}: input_ids is {describe(ids.dtype, ids.shape)}, expected int64[batch, {seq}]")
        batch = ids.shape[0]
        if start.dtype != "int64" or start.shape != (batch,):
            raise TideError(f"{where}: start_pos is {describe(start.dtype, start.shape)}, expected int64[{batch}]")
        if any(i.role != "state" for i in ins[2:]):
            raise TideError(f"{where}: inputs after start_pos must all be states")
        if not outs or outs[0].name != "logits":
            raise TideError(f"{where}: the first output must be logits")
        lg = outs[0]
        if lg.dtype != "float32" or len(lg.shape) != 3 or lg.shape[:2] != (batch, seq):
            raise TideError(f"{where}: logits is {describe(lg.dtype, lg.shape)}, expected "
                            f"float32[{batch}, {seq}, vocab]")
        return batch, lg.shape[2]

    def _check_ids(self, ids, what: str = "token ids") -> np.ndarray:
        if not isinstance(ids, np.ndarray) and hasattr(ids, "__dlpack__"):
            ids = np.from_dlpack(ids)
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu" or ids.ndim != 2:
            raise TideError(f"{what} must be an integer array [batch, tokens], got {ids.dtype}{list(ids.shape)}")
        if ids.shape[0] != self.batch:
            raise TideError(f"{what} have batch {ids.shape[0]}; the model was compiled for batch {self.batch}")
        if ids.shape[1] < 1:
            raise TideError(f"{what}: no tokens given")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.vocab_size:
            raise TideError(f"{what} must lie in [0, {self.vocab_size}), got values in [{lo}, {hi}]")
        return ids

    def _check_capacity(self, tokens: int) -> None:
        pos = int(self._position.max())
        if pos + tokens > self.max_seq_len:
            raise TideError(f"{tokens} more tokens at position {pos} exceed the state capacity "
                            f"(max_seq_len {self.max_seq_len}); reset() the session or compile with a larger "
                            "--max-seq-len")

    def _chunks(self, total: int) -> list[tuple[str, int]]:
        return prefill_chunks(self.prefill_sizes, total)

    def _step(self, entry: str, ids: np.ndarray) -> Tensor:
        """Runs one chunk; returns the logits view. Caller holds the lock and has validated."""
        buf = self._ids[entry]
        np.copyto(buf, ids, casting="unsafe")
        np.copyto(self._start, self._position)
        runner = self._runners[entry]
        try:
            logits = runner.run([buf, self._start] + [None] * (len(runner.inputs) - 2))[0]
        except TideError as err:
            if err.code == 6:  # a kernel failed: the state may be half-updated
                _check(_library().tide_session_reset_state(self._handle.ptr))
                self._position[:] = 0
                raise TideError(f"{err} (the session state was reset)", err.code) from None
            raise
        self._position += ids.shape[1]
        return logits

    def prefill(self, ids, all_logits: bool = False) -> np.ndarray:
        """Consumes ``ids`` (integer [batch, T], T >= 1). Returns the last position's logits
        [batch, vocab], or every position's [batch, T, vocab] with ``all_logits``."""
        with self._lock:
            ids = self._check_ids(ids)
            total = ids.shape[1]
            self._check_capacity(total)
            out = np.empty((self.batch, total, self.vocab_size), dtype=np.float32) if all_logits else None
            pos = 0
            for entry, size in self._chunks(total):
                logits = self._step(entry, ids[:, pos:pos + size]).numpy()
                if all_logits:
                    out[:, pos:pos + size] = logits
                pos += size
            return out if all_logits else logits[:, -1].copy()

    def decode(self, ids) -> np.ndarray:
        """One token per row (integer [batch, 1]) -> logits [batch, vocab]."""
        with self._lock:
            ids = self._check_ids(ids)
            if ids.shape[1] != 1:
                raise TideError(f"decode takes one token per row ([batch, 1]), got {ids.shape[1]} tokens; use prefill")
            self._check_capacity(1)
            return self._step("decode", ids).numpy()[:, -1].copy()

    def generate(self, prompt_ids, max_new_tokens: int, on_token=None) -> np.ndarray:
        """Greedy generation continuing from the current state (``reset()`` first for a new
        sequence): prefills ``prompt_ids`` [batch, T], then picks ``max_new_tokens`` tokens by argmax,
        feeding each back. Returns the new ids int64 [batch, max_new_tokens].
        ``on_token(step, ids)`` (optional) is called with each new token column (int64 [batch])."""
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise TideError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        with self._lock:
            prompt = self._check_ids(prompt_ids, "prompt ids")
            # The last new token is returned, not fed back.
            self._check_capacity(prompt.shape[1] + max(max_new_tokens - 1, 0))
        out = np.empty((self.batch, max_new_tokens), dtype=np.int64)
        if max_new_tokens == 0:
            self.prefill(prompt)
            return out
        logits = self.prefill(prompt)
        for step in range(max_new_tokens):
            out[:, step] = np.argmax(logits, axis=-1)
            if on_token is not None:
                on_token(step, out[:, step].copy())
            if step + 1 < max_new_tokens:
                logits = self.decode(out[:, step:step + 1])
        return out

    def time(self, ids, iterations: int = 10) -> np.ndarray:
        """Times one chunk: ``ids`` integer [batch, S] with S = 1 (the decode entry) or a compiled
        prefill size, run ``iterations`` times at the current position (each run rewrites the same
        state rows; the position does not advance). Returns per-run seconds (float64 [iterations])."""
        with self._lock:
            ids = self._check_ids(ids)
            size = ids.shape[1]
            entry = "decode" if size == 1 else f"prefill_{size}"
            if entry not in self._runners:
                raise TideError(f"no entry for {size} tokens: the model has decode (1) and prefill sizes "
                                f"{list(self.prefill_sizes)}")
            self._check_capacity(size)
            buf = self._ids[entry]
            np.copyto(buf, ids, casting="unsafe")
            np.copyto(self._start, self._position)
            runner = self._runners[entry]
            return runner.time([buf, self._start] + [None] * (len(runner.inputs) - 2), iterations)

    def reset(self) -> None:
        """Zero-fills the state and sets every row's position to 0."""
        with self._lock:
            _check(_library().tide_session_reset_state(self._handle.ptr))
            self._position[:] = 0

    def state(self, index: int) -> np.ndarray:
        """A copy of state tensor ``index`` (see ``Model.states``)."""
        with self._lock:
            if not isinstance(index, int) or not 0 <= index < len(self.model.states):
                raise TideError(f"state index {index!r} out of range ({len(self.model.states)} states)")
            info = self.model.states[index]
            out = np.empty(info.shape, dtype=np_dtype(info.dtype))
            _check(_library().tide_session_read_state(self._handle.ptr, index, ffi.cast("void*", out.ctypes.data),
                                                      out.nbytes))
            return out


def load(path, device: str = "cpu", verify: bool = True, num_threads: int = 0,
         cuda_driver: str | None = None, cuda_graphs: bool = True, ascend_acl: str | None = None) -> Model:
    """Loads a compiled ``.tide`` artifact. ``device``: "cpu", or "cuda[:N]" for a cuda artifact
    (the CUDA driver is dlopened, the device's image loaded and the weights copied to the device).
    ``cuda_driver``: the driver library to dlopen (default "libcuda.so.1"). ``cuda_graphs``: capture
    each entry into a CUDA graph on its second run and replay it after (default). "ascend[:N]" for an
    ascend artifact (AscendCL is dlopened, default "libascendcl.so" or ``ascend_acl``; the artifact
    must hold device binaries, i.e. have been compiled where CANN's hivmc is installed).
    ``verify=False`` skips the weight/device-code checksums (faster load of big models; the plan and
    kernel library are always verified). ``num_threads``: threads per session (0: one per CPU)."""
    return Model(path, verify, num_threads, device, cuda_driver, cuda_graphs, ascend_acl)
