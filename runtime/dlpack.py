"""DLPack: the Tensor views of runtime memory that tide exports, and borrowing the DLPack tensors
given as inputs (https://dmlc.github.io/dlpack/latest/python_spec.html)."""

from __future__ import annotations

import ctypes

import numpy as np

from ._ffi import ffi
from .dtypes import DTYPES, ITEMSIZE, describe, np_dtype
from .errors import TideError

# device name -> DLPack device_type (DLPack has no Ascend type: its extension type 12)
DEVICE_TYPES = {"cpu": 1, "cuda": 2, "ascend": 12}
HOST = (DEVICE_TYPES["cpu"], 0)  # the DLPack (device_type, device_id) of host memory

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

    def __init__(self, ptr: int, dtype: str, shape: tuple, owner, device: tuple = HOST):
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
        where = "" if self.device == HOST else f" on cuda:{self.device[1]}"
        return f"tide.runtime.Tensor({describe(self.dtype, self.shape)} at 0x{self._ptr:x}{where})"

    def numpy(self) -> np.ndarray:
        """A numpy view (no copy) of the same memory (host tensors only)."""
        if self.device != HOST:
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
        if self.device == HOST and stream is not None and stream != -1:
            raise BufferError("tide tensors are CPU memory: stream must be None")
        if dl_device is not None and tuple(dl_device) != self.device:
            raise BufferError(f"this tide tensor lives on DLPack device {self.device}; cannot export to device "
                              f"{tuple(dl_device)}")
        if copy and self.device != HOST:
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


def borrow(obj):
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

