"""An ascend artifact run on this CPU: every kernel's MLIR (the text in the artifact, the one bishengir
compiled) through the CPU-runner lowering (``toolchain.cpu_build``; ``get_block_idx`` emulated by
calling each kernel once per AI core block), chained by the artifact's plan as the runtime chains
it: arena, state, input and weight buffers, copies, in-place state updates.

This is how tide checks an Ascend build's numerics without a device: the kernels' indexing,
tiling, loop bounds and arithmetic are the compiled ones; the AI core's own hardware behaviour
(cube fractals, vector instructions, memory timing) is not emulated.

    python -m tide.targets.ascend.cpu_runner model.tide --prompt "5 17 3" -n 8
    python -m tide.targets.ascend.cpu_runner graph.tide --inputs in.npz --outputs out.npz [--entry main]

prints the greedy tokens of a decode model, or runs one entry of any artifact on the inputs of an
``.npz`` and writes its outputs to another (run it with ``MALLOC_PERTURB_`` set to catch reads of
freed memory).
Built kernels are cached by the hash of their text under ``$TIDE_CACHE`` (default ~/.cache/tide).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ...compiler.artifact import ArtifactError, np_dtype, read_artifact
from .device_code import AscendCode
from . import emulation, toolchain


def cache_dir() -> Path:
    return Path(os.environ.get("TIDE_CACHE", Path.home() / ".cache" / "tide")) / "ascend-cpu"


def build_kernel(name: str, text: str) -> Path:
    """The CPU shared object of one kernel's MLIR (cached by the text's hash)."""
    key = hashlib.sha256(f"{name}\n{text}".encode()).hexdigest()[:24]
    final = cache_dir() / f"{key}.so"
    if final.exists():
        return final
    work = cache_dir() / f"build-{key}-{os.getpid()}"
    try:
        so = toolchain.cpu_build(emulation.cpu_module(text), name, work)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(so, tmp)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _memref_args(a: np.ndarray) -> list:
    """The MLIR memref calling convention for ``a``: allocated and aligned pointer, offset, sizes,
    strides (in elements)."""
    p = ctypes.c_void_p(a.ctypes.data)
    return [p, p, ctypes.c_int64(0)] + [ctypes.c_int64(d) for d in a.shape] + \
        [ctypes.c_int64(s // a.itemsize) for s in a.strides]


class CpuRunner:
    """Runs the entries of an ascend artifact on the CPU (one session: its states persist).

    Every buffer (arena, states, weights and the data inputs, which ``run`` copies in) is allocated
    once, so each kernel call's arguments are built once at load and a run only calls kernels."""

    def __init__(self, path: str, workers: int | None = None, observer=None):
        """``observer(kernel, before, after)``, when given, sees every kernel call: the kernel's
        name, its arguments before the call (buffers copied, immediates as ints) and after it."""
        art = read_artifact(path)
        if art.target.kind != "ascend" or not isinstance(art.device_code, AscendCode):
            raise ValueError(f"{path}: not an ascend artifact (target {art.target.kind})")
        self.plan, self.meta, self.observer = art.plan, art.metadata, observer
        code = {k.name: k for k in art.device_code.kernels}
        names = self.plan.kernels
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            sos = list(pool.map(lambda n: build_kernel(n, code[n].hivm), names))
        kernels = {n: (getattr(ctypes.CDLL(str(so)), n), code[n].block_dim) for n, so in zip(names, sos)}
        self.block = np.zeros(1, np.int64)
        block_args = _memref_args(self.block)
        self.weights = [np.array(art.weight(i)) for i in range(len(self.plan.weights))]
        self.states = [np.zeros(s.shape, np_dtype(s.dtype)) for s in self.plan.states]
        self.entries = {e.name: e for e in self.plan.entries}
        self.inputs = {}  # (entry, input position) -> the entry's buffer for that data input
        self.steps = {}   # entry -> [(name, fn, blocks, args, views)] per kernel call
        for e in self.plan.entries:
            for binding in e.inputs:
                buf = e.buffers[binding.buffer]
                if binding.role == "data":
                    self.inputs[(e.name, buf.index)] = np.zeros(buf.shape, np_dtype(buf.dtype))
            arena = np.zeros(max(e.arena_bytes, 1), np.uint8)
            steps = []
            for call in e.calls:
                views = [self._view(e, arena, v) if kind == "buf" else int(v) for kind, v in call.args]
                fn, blocks = kernels[call.kernel]
                args = [a for v in views
                        for a in (_memref_args(v) if isinstance(v, np.ndarray) else [ctypes.c_int64(v)])]
                steps.append((call.kernel, fn, blocks, args + block_args, views))
            outputs = {o.name: self._view(e, arena, o.buffer) for o in e.outputs if o.role == "data"}
            self.steps[e.name] = (steps, outputs)

    def _view(self, entry, arena, b) -> np.ndarray:
        """Plan buffer ``b`` of ``entry`` as an array over the memory it lies in."""
        buf = entry.buffers[b]
        dtype = np_dtype(buf.dtype)
        if buf.kind == "arena":
            base = arena
        elif buf.kind == "input":
            base = self.inputs[(entry.name, buf.index)]
        else:
            base = (self.weights if buf.kind == "weight" else self.states)[buf.index]
        raw = base.reshape(-1).view(np.uint8)
        count = int(np.prod(buf.shape, dtype=np.int64))
        return raw[buf.offset:buf.offset + count * dtype.itemsize].view(dtype).reshape(buf.shape)

    def run(self, entry_name: str, feeds: dict) -> dict:
        """Runs entry ``entry_name`` with data inputs ``feeds`` (name -> array; states are the
        session's); returns its data outputs by name."""
        entry = self.entries[entry_name]
        for binding in entry.inputs:
            if binding.role == "state":
                continue
            buf = entry.buffers[binding.buffer]
            arr = np.asarray(feeds[binding.name])
            if tuple(arr.shape) != tuple(buf.shape):
                raise ValueError(f"input '{binding.name}': expected shape {tuple(buf.shape)}, got {arr.shape}")
            np.copyto(self.inputs[(entry.name, buf.index)], arr, casting="unsafe")
        steps, outputs = self.steps[entry_name]
        for name, fn, blocks, args, views in steps:
            before = [v.copy() if isinstance(v, np.ndarray) else v for v in views] if self.observer else None
            for blk in range(blocks):
                self.block[0] = blk
                fn(*args)
            if self.observer:
                self.observer(name, before, views)
        return {name: view.copy() for name, view in outputs.items()}

    def generate(self, prompt: np.ndarray, new_tokens: int) -> np.ndarray:
        """Greedy tokens after ``prompt`` [batch, T], as ``tide.Session.generate`` picks them: the
        prompt in the largest compiled prefill chunks, the rest and every new token by decode."""
        from ...runtime import prefill_chunks

        pos, logits = 0, None
        for entry, size in prefill_chunks(self.meta.get("prefill_chunks", []), prompt.shape[1]):
            logits = self.run(entry, {"input_ids": prompt[:, pos:pos + size],
                                      "start_pos": np.full(1, pos, np.int64)})["logits"][:, -1]
            pos += size
        out = np.empty((prompt.shape[0], new_tokens), np.int64)
        for step in range(new_tokens):
            out[:, step] = np.argmax(logits, axis=-1)
            if step + 1 < new_tokens:
                logits = self.run("decode", {"input_ids": out[:, step:step + 1],
                                             "start_pos": np.full(1, pos, np.int64)})["logits"][:, -1]
                pos += 1
        return out


def main(argv=None) -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m tide.targets.ascend.cpu_runner", description=__doc__.splitlines()[0])
    p.add_argument("artifact")
    p.add_argument("--prompt", help="decode models: prompt token ids, space or comma separated")
    p.add_argument("-n", type=int, default=8, help="decode models: new tokens")
    p.add_argument("--inputs", help="an .npz of the entry's data inputs by name")
    p.add_argument("--outputs", help="where to write the entry's data outputs (.npz)")
    p.add_argument("--entry", default="main", help="the entry --inputs feeds (default main)")
    args = p.parse_args(argv)
    if (args.prompt is None) == (args.inputs is None) or (args.inputs is None) != (args.outputs is None):
        p.error("give --prompt (decode models) or --inputs with --outputs")
    try:
        runner = CpuRunner(args.artifact)
    except (ArtifactError, OSError, ValueError, toolchain.ToolchainError) as err:
        raise SystemExit(f"cpu_runner: {args.artifact}: {err}") from None
    if args.inputs:
        if args.entry not in runner.entries:
            p.error(f"no entry '{args.entry}' (entries: {', '.join(runner.entries)})")
        with np.load(args.inputs) as feeds:
            out = runner.run(args.entry, {k: feeds[k] for k in feeds.files})
        np.savez(args.outputs, **out)
        return 0
    ids = [int(t) for t in args.prompt.replace(",", " ").split()]
    prompt = np.array([ids] * int(runner.meta["batch"]), np.int64)
    print(json.dumps(runner.generate(prompt, args.n).tolist()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
