"""Session: prefill / decode / generate on a decode model, with its own C session holding the state;
``prefill_chunks``: how a prompt is split over the compiled prefill entries."""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING

import numpy as np

from . import profile as profiles
from ._ffi import ffi
from .bindings import check, library
from .dlpack import Tensor
from .dtypes import describe, np_dtype
from .errors import TideError
from .runner import ALIGNMENT, Runner, create_session

if TYPE_CHECKING:
    from .model import Model


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


_PREFILL = re.compile(r"prefill_([1-9][0-9]*)$")


class Session:
    """Prefill / decode on a decode model, its state held and updated in place by the runtime.

    A decode model has entries ``decode`` and ``prefill_<S>`` (any chunk sizes S), each with inputs
    ``input_ids`` int64 [B, S], ``start_pos`` int64 [B] and the ``past.*`` states, and outputs
    ``logits`` float32 [B, S, V] and the ``present.*`` states; metadata ``max_seq_len`` is the state
    capacity. With metadata ``prefill_logits`` "last" a prefill entry's logits are [B, 1, V] (the
    last position's only; ``prefill(all_logits=True)`` then needs an artifact compiled with
    ``--all-logits``). All rows advance together; ``position`` is how many tokens each row has consumed. A call
    that is rejected (wrong batch, too many tokens, bad ids) changes nothing. If a kernel fails during
    a call, the state is reset (zeroed, position 0) and TideError says so.
    """

    def __init__(self, model: Model, batch: int | None = None, num_threads: int = 0, profile: bool = False):
        if "decode" not in model.entries:
            raise TideError(f"{model.path} is not a decode model: it has no 'decode' entry (entries: "
                            f"{', '.join(model.entries)}); use Model.run")
        self.model = model
        kept = model.metadata.get("prefill_logits", "all")
        if kept not in ("all", "last"):
            raise TideError(f"{model.path}: metadata 'prefill_logits' is {kept!r}, expected 'all' or 'last'")
        self.all_positions = kept == "all"
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
        self._handle = create_session(model, num_threads)
        self._lock = threading.Lock()
        self._runners = {e: Runner(model, self._handle, e) for e in ["decode"] + [f"prefill_{s}" for s in sizes]}
        self._ids = {e: self._aligned((self.batch, 1 if e == "decode" else int(e.split("_")[1])), np.int64)
                     for e in self._runners}
        self._start = self._aligned((self.batch,), np.int64)
        self._position = np.zeros(self.batch, dtype=np.int64)
        if profile:
            profiles.set_profiling(self._handle, True)

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
        return int(library().tide_session_num_threads(self._handle.ptr))

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
        positions = seq if self.all_positions or entry == "decode" else 1
        if lg.dtype != "float32" or len(lg.shape) != 3 or lg.shape[:2] != (batch, positions):
            raise TideError(f"{where}: logits is {describe(lg.dtype, lg.shape)}, expected "
                            f"float32[{batch}, {positions}, vocab]")
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
                check(library().tide_session_reset_state(self._handle.ptr))
                self._position[:] = 0
                raise TideError(f"{err} (the session state was reset)", err.code) from None
            raise
        self._position += ids.shape[1]
        return logits

    def prefill(self, ids, all_logits: bool = False) -> np.ndarray:
        """Consumes ``ids`` (integer [batch, T], T >= 1). Returns the last position's logits
        [batch, vocab], or every position's [batch, T, vocab] with ``all_logits``."""
        if all_logits and not self.all_positions:
            raise TideError(f"{self.model.path}: its prefill entries return the last position's logits only; "
                            "compile with --all-logits (CompileOptions.all_logits) for every position's")
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

    def profiling(self, enabled: bool = True) -> None:
        """Starts (counters cleared) or stops timing every kernel call of this session's runs (see
        ``profile``). A profiled run on a device launches its calls eagerly (no CUDA graph)."""
        with self._lock:
            profiles.set_profiling(self._handle, enabled)

    def profile(self) -> profiles.Profile:
        """The per-kernel profile of the runs since profiling started (``profiling()``, or
        ``Model.session(profile=True)``): ``print()`` it for the table, ``.to_json()`` for tools."""
        with self._lock:
            return profiles.read(self.model, self._handle)

    def reset(self) -> None:
        """Zero-fills the state and sets every row's position to 0."""
        with self._lock:
            check(library().tide_session_reset_state(self._handle.ptr))
            self._position[:] = 0

    def state(self, index: int) -> np.ndarray:
        """A copy of state tensor ``index`` (see ``Model.states``)."""
        with self._lock:
            if not isinstance(index, int) or not 0 <= index < len(self.model.states):
                raise TideError(f"state index {index!r} out of range ({len(self.model.states)} states)")
            info = self.model.states[index]
            out = np.empty(info.shape, dtype=np_dtype(info.dtype))
            check(library().tide_session_read_state(self._handle.ptr, index, ffi.cast("void*", out.ctypes.data),
                                                    out.nbytes))
            return out
