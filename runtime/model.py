"""Model: a loaded artifact, its entries, inputs, outputs, states and memory plan, run on an internal
session; ``load`` opens one."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import numpy as np

from . import profile as profiles
from ._ffi import ffi
from .bindings import check, library
from .dlpack import DEVICE_TYPES, Tensor
from .dtypes import DEVICE_KINDS, DTYPE_NAMES, ITEMSIZE, parse_device
from .errors import TideError
from .runner import Handle, Runner, create_session
from .session import Session


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


def _tensor_info(c) -> TensorInfo:
    role = "state" if c.role == 1 else "data"
    return TensorInfo(ffi.string(c.name).decode(), DTYPE_NAMES[(c.dtype.code, c.dtype.bits)],
                      tuple(int(c.shape[i]) for i in range(c.ndim)), role,
                      int(c.state_index) if role == "state" else None)


class Model:
    """A loaded artifact (see :func:`load`). ``run``/``run_dlpack`` for any entry; ``session()`` for
    decode models."""

    def __init__(self, path, verify: bool = True, num_threads: int = 0, device: str = "cpu",
                 cuda_driver: str | None = None, cuda_graphs: bool = True, ascend_acl: str | None = None,
                 copy_weights: bool = False):
        lib = library()
        name, ordinal = parse_device(device)
        self.device = (DEVICE_TYPES[name], ordinal)  # DLPack (device_type, device_id)
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
        opts.copy_weights = 1 if copy_weights else 0
        out = ffi.new("tide_model_t**")
        check(lib.tide_model_load_file(str(path).encode(), opts, out))
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
            check(lib.tide_model_state_info(self._ptr, i, info))
            self.states.append(_tensor_info(info))
        sizes = ffi.new("uint64_t[3]")
        lib.tide_model_memory(self._ptr, sizes, sizes + 1, sizes + 2)
        self.memory = MemoryInfo(int(sizes[0]), int(sizes[1]), int(sizes[2]))
        self._lock = threading.Lock()
        self._handle: Handle | None = None
        self._runners: dict = {}

    def __repr__(self) -> str:
        return f"tide.runtime.Model('{self.path}', target={self.target}, entries={self.entries})"

    def _infos(self, count_fn, info_fn, entry: int) -> list[TensorInfo]:
        info = ffi.new("tide_tensor_info_t*")
        out = []
        for j in range(count_fn(self._ptr, entry)):
            check(info_fn(self._ptr, entry, j, info))
            out.append(_tensor_info(info))
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

    def _runner(self, entry: str) -> Runner:
        """The internal session's runner of ``entry`` (both made on first use)."""
        if self._handle is None:
            self._handle = create_session(self, self.num_threads)
        runner = self._runners.get(entry)
        if runner is None:
            runner = self._runners[entry] = Runner(self, self._handle, entry)
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
                check(library().tide_session_reset_state(self._handle.ptr))

    def profiling(self, enabled: bool = True) -> None:
        """Starts (counters cleared) or stops per-kernel timing of the internal session's runs."""
        with self._lock:
            if self._handle is None:
                self._handle = create_session(self, self.num_threads)
            profiles.set_profiling(self._handle, enabled)

    def profile(self) -> profiles.Profile:
        """The per-kernel profile of ``run``/``run_dlpack``/``time`` calls since ``profiling()``."""
        with self._lock:
            if self._handle is None:
                raise TideError(f"{self.path}: nothing was profiled (call profiling() before running)")
            return profiles.read(self, self._handle)

    def session(self, batch: int | None = None, num_threads: int | None = None, profile: bool = False) -> Session:
        """A decode session with its own arena, state and threads (decode models only); ``profile``:
        time every kernel call from the first run on (``Session.profile``)."""
        return Session(self, batch, self.num_threads if num_threads is None else num_threads, profile)


def load(path, device: str = "cpu", verify: bool = True, num_threads: int = 0,
         cuda_driver: str | None = None, cuda_graphs: bool = True, ascend_acl: str | None = None,
         copy_weights: bool = False) -> Model:
    """Loads a compiled ``.tide`` artifact. ``device``: "cpu", or "cuda[:N]" for a cuda artifact
    (the CUDA driver is dlopened, the device's image loaded and the weights copied to the device).
    ``cuda_driver``: the driver library to dlopen (default "libcuda.so.1"). ``cuda_graphs``: capture
    each entry into a CUDA graph on its second run and replay it after (default). "ascend[:N]" for an
    ascend artifact (AscendCL is dlopened, default "libascendcl.so" or ``ascend_acl``; the artifact
    must hold device binaries, i.e. have been compiled where CANN's hivmc is installed).
    ``verify=False`` skips the weight/device-code checksums (faster load of big models; the plan and
    kernel library are always verified). ``num_threads``: threads per session (0: one per CPU).
    ``copy_weights`` (CPU artifacts): copy the weights into the model's own memory at load instead of
    reading them in place from the file mapping: the weights' size in memory and a copy at load, for
    a weight-streaming decode that reads them faster on some machines (README, "The C runtime")."""
    return Model(path, verify, num_threads, device, cuda_driver, cuda_graphs, ascend_acl, copy_weights)
