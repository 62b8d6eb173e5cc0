"""Running one entry of a model on one C session: its inputs (numpy arrays or DLPack tensors) bound
to C tensors, used in place when they can be, else staged; its outputs viewed as Tensors."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._ffi import ffi
from .bindings import check, library
from .dlpack import DEVICE_TYPES, HOST, Tensor, borrow
from .dtypes import DTYPE_NAMES, DTYPES, describe, np_dtype
from .errors import TideError

if TYPE_CHECKING:
    from .model import Model, TensorInfo

ALIGNMENT = 64  # data inputs are used in place only at this alignment (kernels use aligned vector loads)


class Handle:
    """Owns one C session; whatever holds it (a Model, a Session, output views) keeps it alive."""

    __slots__ = ("ptr", "__weakref__")

    def __init__(self, ptr):
        self.ptr = ptr


class Runner:
    """One entry on one C session, with its C input/output arrays built once."""

    def __init__(self, model: Model, handle: Handle, entry: str):
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
                  and tuple(v.__dlpack_device__())[0] != DEVICE_TYPES["cpu"]]
        return bool(device) and self.model.device[0] == DEVICE_TYPES["cuda"]

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
            t, held = borrow(value)
            borrowed.append(held)
            got = (DTYPE_NAMES.get((t.dtype.code, t.dtype.bits), f"dtype(code {t.dtype.code}, bits {t.dtype.bits})")
                   if t.dtype.lanes == 1 else f"{t.dtype.lanes}-lane vector")
            shape = tuple(int(t.shape[d]) for d in range(t.ndim))
            dev = (int(t.device.device_type), int(t.device.device_id))
            if on_device and dev != self.model.device:
                raise TideError(f"{where}: the tensor is on DLPack device {dev}; the model runs on "
                                f"cuda:{self.model.device[1]} {self.model.device}")
            if not on_device and dev[0] != DEVICE_TYPES["cpu"]:
                raise TideError(f"{where}: the tensor is on DLPack device type {dev[0]}; this model takes host "
                                "memory" + ("" if self.model.device[0] == DEVICE_TYPES["cuda"] else
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
        lib = library()
        run = lib.tide_session_run_device if on_device else lib.tide_session_run
        try:
            for i, (info, value) in enumerate(zip(self.inputs, values)):
                self._bind(i, info, value, keep, borrowed, on_device)
            check(run(self.handle.ptr, self.index, self.c_in, len(self.inputs), self.c_out, len(self.outputs)))
        finally:
            for held in borrowed:
                held.release()
        device = self.model.device if on_device else HOST
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
            check(library().tide_session_time(self.handle.ptr, self.index, self.c_in, len(self.inputs), iterations,
                                              ffi.cast("double*", seconds.ctypes.data)))
        finally:
            for held in borrowed:
                held.release()
        return seconds


def create_session(model: Model, num_threads: int) -> Handle:
    """A new C session of ``model`` (its own arena, state and ``num_threads`` threads; 0: one per CPU)."""
    lib = library()
    if not isinstance(num_threads, int) or num_threads < 0:
        raise TideError(f"num_threads must be an integer >= 0 (0: one per CPU), got {num_threads!r}")
    opts = ffi.new("tide_session_options_t*")
    lib.tide_session_options_initialize(opts)
    opts.num_threads = num_threads
    opts.use_cuda_graphs = 1 if model.cuda_graphs else 0
    out = ffi.new("tide_session_t**")
    check(lib.tide_session_create(model._ptr, opts, out))
    return Handle(ffi.gc(out[0], lib.tide_session_release))

