"""``tide inspect``: what an artifact holds, read with the format's own validating reader."""

from __future__ import annotations

from .artifact import ArtifactError, AscendCode, nbytes_of, read_artifact
from .errors import CompileError


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def describe(path: str) -> str:
    try:
        art = read_artifact(path)
    except ArtifactError as err:
        raise CompileError(str(err)) from err
    plan, meta = art.plan, art.metadata
    lines = [f"{path}: tide artifact v1, {_mib(art.file_size)}",
             f"target: {art.target.kind} ({art.target.host_arch}"
             + (f", {art.target.device_arch}" if art.target.device_arch else "")
             + (f", mcpu {meta['mcpu']}" if meta.get("mcpu") else "") + ")"]
    if meta.get("kind") == "decode":
        lines.append(f"decode model: batch {meta['batch']}, vocab {meta['vocab']}, state capacity "
                     f"{meta['max_seq_len']} tokens, prefill chunks {meta['prefill_chunks']}")
    state_bytes = sum(nbytes_of(s.dtype, s.shape) for s in plan.states)
    weight_bytes = sum(w.nbytes for w in plan.weights)
    arena = max((e.arena_bytes for e in plan.entries), default=0)
    lines.append(f"memory plan: arena {_mib(arena)} (largest entry), state {_mib(state_bytes)} in "
                 f"{len(plan.states)} tensors, weights {_mib(weight_bytes)} in {len(plan.weights)} tensors")
    for e in plan.entries:
        lines.append(f"entry {e.name}: {len(e.ops)} kernel calls, arena {_mib(e.arena_bytes)}")
        for what, ios in (("in ", e.inputs), ("out", e.outputs)):
            data = [io for io in ios if io.role == "data"]
            for io in data:
                b = e.buffers[io.buffer]
                lines.append(f"  {what} {io.name}: {b.dtype}{list(b.shape)}")
            states = len(ios) - len(data)
            if states:
                lines.append(f"  {what} {states} state tensors ({'past' if what == 'in ' else 'present'}.*, "
                             "updated in place)")
    served = meta.get("kernels", {})
    tide_kernels = {k: v for k, v in served.items() if v != "generic"}
    lines.append(f"kernels: {len(plan.kernels)} ({len(tide_kernels)} tide kernels, "
                 f"{len(plan.kernels) - len(tide_kernels)} from generic TVM lowering)")
    for name in sorted(tide_kernels):
        lines.append(f"  {name}: {tide_kernels[name]}")
    if isinstance(art.device_code, AscendCode):
        from ..targets.ascend.codegen import unit_of

        code = art.device_code
        runnable = sum(1 for k in code.kernels if k.binary)
        units = [unit_of(k.hivm) for k in code.kernels]
        counts = ", ".join(f"{units.count(u)} {u}" for u in ("cube", "vector", "scalar") if u in units)
        lines.append(f"device code: {code.soc}, {len(code.kernels)} kernels ({counts}; {runnable} with a device binary)")
        for k, unit in zip(code.kernels, units):
            binary = _mib(len(k.binary)) if k.binary else "no binary (compiled without hivmc)"
            lines.append(f"  {k.name}({', '.join(k.args)}) block_dim {k.block_dim}, {unit}: HIVM {len(k.hivm)} chars, "
                         f"{binary}")
    elif art.device_code is not None:
        code = art.device_code
        lines.append(f"device code: {len(code.images)} images, {len(code.functions)} device functions")
        for img in code.images:
            lines.append(f"  {img.arch}: {img.format}, {_mib(len(img.data))}")
        for f in code.functions:
            lines.append(f"  {f.name}({len(f.args)} args) launch {', '.join(f.tags)}")
    return "\n".join(lines)
