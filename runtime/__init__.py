"""tide.runtime: the Python API over tide's C runtime (cffi, ABI mode).

Needs only numpy and cffi: no TVM, torch or onnx. ``load(path)`` returns a :class:`Model`;
``Model.run(feeds)`` follows onnxruntime's convention for any graph; decode models (entries
``decode`` and ``prefill_<S>``, see docs/onnx-contract.md) also give ``Model.session()`` with
``prefill``/``decode``/``generate``/``reset``, their state kept and updated in place by the runtime.

Thread safety: a Model may be shared; each Session (and ``Model.run``'s internal session) must be
used by one thread at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from . import build
from ._ffi import ffi

_DTYPES = {(0, 8): "int8", (0, 16): "int16", (0, 32): "int32", (0, 64): "int64", (1, 8): "uint8",
           (1, 16): "uint16", (1, 32): "uint32", (1, 64): "uint64", (2, 16): "float16",
           (2, 32): "float32", (2, 64): "float64", (4, 16): "bfloat16", (6, 8): "bool"}
_CODES = {v: k for k, v in _DTYPES.items()}
ALIGNMENT = 64

_lib = None


def _library():
    global _lib
    if _lib is None:
        _lib = ffi.dlopen(build.library_path())
    return _lib


class TideError(RuntimeError):
    """An error reported by the runtime (load, validation, a kernel); ``code`` is the status code."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message)
        self.code = code


def _check(status) -> None:
    if status != ffi.NULL:
        lib = _library()
        message = ffi.string(lib.tide_status_message(status)).decode("utf-8", "replace")
        code = int(lib.tide_status_code(status))
        lib.tide_status_free(status)
        raise TideError(message, code)


def _np_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple
    role: str  # "data" | "state"


def _info(c) -> TensorInfo:
    return TensorInfo(ffi.string(c.name).decode(), _DTYPES[(c.dtype.code, c.dtype.bits)],
                      tuple(int(c.shape[i]) for i in range(c.ndim)), "state" if c.role == 1 else "data")


def _aligned(array: np.ndarray) -> np.ndarray:
    """The array itself when C-contiguous and 64-byte aligned (zero copy), else an aligned copy."""
    if array.flags.c_contiguous and array.ctypes.data % ALIGNMENT == 0:
        return array
    raw = np.empty(array.nbytes + ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    out = raw[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


def _as_array(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "__dlpack__"):
        return np.from_dlpack(value)  # zero copy for CPU tensors (torch, jax, ...)
    return np.asarray(value)


class _CSession:
    """One C session: arena, state, thread pool."""

    def __init__(self, model: "Model", threads: int):
        lib = _library()
        opts = ffi.new("tide_session_options_t*")
        lib.tide_session_options_initialize(opts)
        opts.num_threads = threads
        out = ffi.new("tide_session_t**")
        _check(lib.tide_session_create(model._handle, opts, out))
        self._handle = ffi.gc(out[0], lib.tide_session_release)
        self.model = model

    def reset(self) -> None:
        _check(_library().tide_session_reset_state(self._handle))

    def run(self, entry: str, arrays: list) -> list[np.ndarray]:
        """``arrays`` in the entry's input order (None keeps a state input); returns views of the
        outputs, valid until this session's next run."""
        model = self.model
        index = model._entry_index(entry)
        infos = model.inputs(entry)
        outs = model.outputs(entry)
        c_in = ffi.new("tide_tensor_t[]", max(len(infos), 1))
        keep = []
        for i, (info, array) in enumerate(zip(infos, arrays)):
            code, bits = _CODES[info.dtype]
            c_in[i].dtype.code, c_in[i].dtype.bits, c_in[i].dtype.lanes = code, bits, 1
            c_in[i].ndim = len(info.shape)
            for d, n in enumerate(info.shape):
                c_in[i].shape[d] = n
            if array is None:
                c_in[i].data = ffi.NULL
            else:
                array = _aligned(array)
                keep.append(array)
                c_in[i].data = ffi.cast("void*", array.ctypes.data)
        c_out = ffi.new("tide_tensor_t[]", max(len(outs), 1))
        _check(_library().tide_session_run(self._handle, index, c_in, len(infos), c_out, len(outs)))
        results = []
        for i, info in enumerate(outs):
            dtype = _np_dtype(info.dtype)
            shape = tuple(int(c_out[i].shape[d]) for d in range(c_out[i].ndim))
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            buf = ffi.buffer(c_out[i].data, nbytes) if nbytes else b""
            results.append(np.frombuffer(buf, dtype=dtype).reshape(shape))
        return results


class Model:
    """A loaded artifact. ``run`` for any graph; ``session`` for decode models."""

    def __init__(self, path: str, verify: bool = True):
        lib = _library()
        opts = ffi.new("tide_model_options_t*")
        lib.tide_model_options_initialize(opts)
        opts.verify_checksums = 1 if verify else 0
        out = ffi.new("tide_model_t**")
        _check(lib.tide_model_load_file(str(path).encode(), opts, out))
        self._handle = ffi.gc(out[0], lib.tide_model_release)
        self.path = str(path)
        self.target = ffi.string(lib.tide_model_target(self._handle)).decode()
        self.metadata = json.loads(ffi.string(lib.tide_model_metadata(self._handle)).decode("utf-8"))
        n = lib.tide_model_entry_count(self._handle)
        self.entries = [ffi.string(lib.tide_model_entry_name(self._handle, i)).decode() for i in range(n)]
        self._io = {}
        for i, name in enumerate(self.entries):
            self._io[name] = (self._infos(lib.tide_model_input_count, lib.tide_model_input_info, i),
                              self._infos(lib.tide_model_output_count, lib.tide_model_output_info, i))
        info = ffi.new("tide_tensor_info_t*")
        self.states = []
        for i in range(lib.tide_model_state_count(self._handle)):
            _check(lib.tide_model_state_info(self._handle, i, info))
            self.states.append(_info(info))
        sizes = ffi.new("uint64_t[3]")
        lib.tide_model_memory(self._handle, sizes, sizes + 1, sizes + 2)
        self.memory = {"arena_bytes": int(sizes[0]), "state_bytes": int(sizes[1]), "weight_bytes": int(sizes[2])}
        self._run_session = None

    def _infos(self, count_fn, info_fn, entry: int) -> list[TensorInfo]:
        info = ffi.new("tide_tensor_info_t*")
        out = []
        for j in range(count_fn(self._handle, entry)):
            _check(info_fn(self._handle, entry, j, info))
            out.append(_info(info))
        return out

    def _entry_index(self, entry: str) -> int:
        if entry not in self._io:
            raise TideError(f"{self.path}: no entry '{entry}' (entries: {', '.join(self.entries)})")
        return self.entries.index(entry)

    def inputs(self, entry: str = "main") -> list[TensorInfo]:
        self._entry_index(entry)
        return self._io[entry][0]

    def outputs(self, entry: str = "main") -> list[TensorInfo]:
        self._entry_index(entry)
        return self._io[entry][1]

    def run(self, feeds: dict, entry: str = "main", copy: bool = True) -> dict:
        """Runs ``entry`` on ``feeds`` (name -> array or DLPack tensor). Returns name -> array: fresh
        copies, or with ``copy=False`` zero-copy views (numpy arrays that also export DLPack, e.g. to
        ``torch.from_dlpack``) valid until the model's next run."""
        infos = self.inputs(entry)
        names = {i.name for i in infos}
        unknown = sorted(set(feeds) - names)
        if unknown:
            raise TideError(f"{self.path}: entry '{entry}' has no input {unknown}; its inputs are "
                            f"{[i.name for i in infos]}")
        arrays = []
        for info in infos:
            if info.name not in feeds:
                if info.role == "state":
                    arrays.append(None)
                    continue
                raise TideError(f"{self.path}: entry '{entry}': input '{info.name}' is missing")
            array = _as_array(feeds[info.name])
            want = _np_dtype(info.dtype)
            if array.dtype != want:
                raise TideError(f"input '{info.name}': expected dtype {info.dtype}, got {array.dtype}")
            if tuple(array.shape) != info.shape:
                raise TideError(f"input '{info.name}': expected shape {list(info.shape)}, got "
                                f"{list(array.shape)}")
            arrays.append(array)
        if self._run_session is None:
            self._run_session = _CSession(self, 0)
        outs = self._run_session.run(entry, arrays)
        return {info.name: (o.copy() if copy else o) for info, o in zip(self.outputs(entry), outs)}

    def session(self, batch: int | None = None, threads: int = 0) -> "Session":
        """A decode session (own arena, state and thread pool) for decode models."""
        return Session(self, batch, threads)


class Session:
    """Prefill/decode with the state held by the runtime (decode models only).

    All rows advance together: ``position`` is the number of tokens each row has consumed.
    """

    def __init__(self, model: Model, batch: int | None, threads: int):
        if model.metadata.get("kind") != "decode" or "decode" not in model.entries:
            raise TideError(f"{model.path} is not a decode model (entries: {model.entries})")
        meta = model.metadata
        self.model = model
        self.batch = int(meta["batch"])
        if batch is not None and batch != self.batch:
            raise TideError(f"{model.path} was compiled for batch {self.batch}, not {batch}")
        self.vocab = int(meta["vocab"])
        self.capacity = int(meta["max_seq_len"])
        self.chunks = sorted((int(c) for c in meta.get("prefill_chunks", [])), reverse=True)
        self._c = _CSession(model, threads)
        self._states = sum(1 for i in model.inputs("decode") if i.role == "state")
        self.position = np.zeros(self.batch, dtype=np.int64)

    def reset(self) -> None:
        self._c.reset()
        self.position = np.zeros(self.batch, dtype=np.int64)

    def _check_ids(self, ids) -> np.ndarray:
        ids = _as_array(ids)
        if ids.dtype != np.int64 or ids.ndim != 2:
            raise TideError(f"token ids must be int64 [batch, tokens], got {ids.dtype}{list(ids.shape)}")
        if ids.shape[0] != self.batch:
            raise TideError(f"token ids have batch {ids.shape[0]}; the model was compiled for batch {self.batch}")
        if ids.shape[1] < 1:
            raise TideError("no tokens given")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab):
            raise TideError(f"token ids must lie in [0, {self.vocab}), got [{ids.min()}, {ids.max()}]")
        if int(self.position.max()) + ids.shape[1] > self.capacity:
            raise TideError(f"{ids.shape[1]} tokens at position {int(self.position.max())} exceed the state "
                            f"capacity (max_seq_len {self.capacity})")
        return ids

    def _step(self, entry: str, ids: np.ndarray) -> np.ndarray:
        arrays = [np.ascontiguousarray(ids), self.position.copy()] + [None] * self._states
        logits = self._c.run(entry, arrays)[0].copy()
        self.position = self.position + ids.shape[1]
        return logits

    def prefill(self, ids, all_logits: bool = False) -> np.ndarray:
        """Consumes ``ids`` [batch, T]; returns the last position's logits [batch, vocab] (every
        position's [batch, T, vocab] with ``all_logits``)."""
        ids = self._check_ids(ids)
        outs, pos = [], 0
        while pos < ids.shape[1]:
            left = ids.shape[1] - pos
            size = next((c for c in self.chunks if c <= left), 1)
            outs.append(self._step(f"prefill_{size}" if size > 1 else "decode", ids[:, pos:pos + size]))
            pos += size
        logits = np.concatenate(outs, axis=1)
        return logits if all_logits else logits[:, -1]

    def decode(self, ids) -> np.ndarray:
        """One token per row ([batch, 1]) -> logits [batch, vocab]."""
        ids = self._check_ids(ids)
        if ids.shape[1] != 1:
            raise TideError(f"decode takes one token per row, got {ids.shape[1]}")
        return self._step("decode", ids)[:, -1]

    def generate(self, prompt_ids, max_new_tokens: int) -> np.ndarray:
        """Greedy generation from a fresh state: returns the new ids [batch, max_new_tokens]."""
        prompt_ids = _as_array(prompt_ids)
        if max_new_tokens < 1:
            raise TideError("max_new_tokens must be >= 1")
        if prompt_ids.ndim == 2 and prompt_ids.shape[1] + max_new_tokens - 1 > self.capacity:
            raise TideError(f"{prompt_ids.shape[1]} prompt + {max_new_tokens} new tokens exceed the state "
                            f"capacity (max_seq_len {self.capacity})")
        self.reset()
        tokens = [np.argmax(self.prefill(prompt_ids), axis=-1)]
        for _ in range(max_new_tokens - 1):
            tokens.append(np.argmax(self.decode(tokens[-1][:, None].astype(np.int64)), axis=-1))
        return np.stack(tokens, axis=1).astype(np.int64)


def load(path, device: str = "cpu", verify: bool = True) -> Model:
    """Loads a compiled ``.tide`` artifact for ``device`` ("cpu")."""
    if device != "cpu":
        raise TideError(f"device '{device}': this runtime build runs cpu artifacts only")
    return Model(path, verify)
