"""``tide inspect``: what an artifact holds, read with the format's own validating reader (the
DEVICE_CODE section described by its target's format)."""

from __future__ import annotations

from .artifact import ArtifactError, nbytes_of, read_artifact
from .artifact.format import device_format, size_text
from .errors import CompileError


def describe(path: str) -> str:
    try:
        art = read_artifact(path)
    except ArtifactError as err:
        raise CompileError(str(err)) from err
    plan, meta = art.plan, art.metadata
    lines = [f"{path}: tide artifact v1, {size_text(art.file_size)}",
             f"target: {art.target.kind} ({art.target.host_arch}"
             + (f", {art.target.device_arch}" if art.target.device_arch else "")
             + (f", mcpu {meta['mcpu']}" if meta.get("mcpu") else "") + ")"]
    if meta.get("kind") == "decode":
        lines.append(f"decode model: batch {meta['batch']}, vocab {meta['vocab']}, state capacity "
                     f"{meta['max_seq_len']} tokens, prefill chunks {meta['prefill_chunks']}")
    state_bytes = sum(nbytes_of(s.dtype, s.shape) for s in plan.states)
    weight_bytes = sum(w.nbytes for w in plan.weights)
    arena = max((e.arena_bytes for e in plan.entries), default=0)
    lines.append(f"memory plan: arena {size_text(arena)} (largest entry), state {size_text(state_bytes)} in "
                 f"{len(plan.states)} tensors, weights {size_text(weight_bytes)} in {len(plan.weights)} tensors")
    for e in plan.entries:
        lines.append(f"entry {e.name}: {len(e.calls)} kernel calls, arena {size_text(e.arena_bytes)}")
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
    if art.device_code is not None:
        lines += device_format(art.target.kind).describe(art.device_code)
    return "\n".join(lines)
