"""``tide inspect``: what an artifact holds, read with the format's own validating reader (the
DEVICE_CODE section described by its target's format)."""

from __future__ import annotations

from .artifact import ArtifactError, nbytes_of, read_artifact
from .artifact.format import device_format, size_text
from .errors import CompileError

# a layer's kind by the decode state it keeps (first match): V4's compressed sparse attention keeps
# indexer keys, its heavily compressed attention compressed entries only, a sliding-window layer its ring
LAYER_KINDS = (("index_keys", "CSA"), ("compressed", "HCA"), ("window", "sliding window"))
CONTEXT_STATES = ("compressed", "index_keys")  # one entry per `ratio` positions: grow with the context
# a DeepSeek-V3.2-style MLA cache: kv_lora_rank 512 + 64 RoPE dims per position per layer, bfloat16
MLA_VALUES, MLA_ITEMSIZE = 576, 2


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
    layers = 0
    if meta.get("kind") == "decode" and plan.states:
        sp = state_plan(plan, meta)
        layers = sp["layers"]
        lines += state_plan_lines(sp)
    lines.append("weights by stored form: " + ", ".join(
        f"{form} {size_text(n)}" for form, n in sorted(weight_forms(plan, meta).items(), key=lambda kv: -kv[1])))
    for e in plan.entries:
        per_layer = (f" ({len(e.calls) / layers:.0f} per layer over {layers} layers, embedding and head included)"
                     if layers else "")
        lines.append(f"entry {e.name}: {len(e.calls)} kernel calls{per_layer}, arena {size_text(e.arena_bytes)}, "
                     f"{size_text(step_bytes(e, meta))} moved per run")
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


def state_plan(plan, meta: dict) -> dict:
    """The decode state by layer kind for the artifact's capacity: per kind its layers, compression
    ratio, and bytes per layer that grow with the context (compressed entries, indexer keys) or stay
    fixed (window ring, compressor rings); the total, and what a V3.2-style MLA cache would hold for
    the same depth, capacity and batch."""
    capacity, batch = int(meta["max_seq_len"]), int(meta["batch"])
    layers: dict[str, dict] = {}
    for s in plan.states:
        layer, _, what = s.name.partition(".")
        layers.setdefault(layer, {})[what] = s
    kinds: dict[str, dict] = {}
    for states in layers.values():
        kind = next((label for key, label in LAYER_KINDS if key in states), "other")
        ratio = None
        if "compressed" in states:
            entries = states["compressed"].shape[1]
            ratio = round(capacity / max(entries - 1, 1))
            kind = f"{kind} 1/{ratio}"
        grows = sum(nbytes_of(s.dtype, s.shape) for w, s in states.items() if w in CONTEXT_STATES)
        fixed = sum(nbytes_of(s.dtype, s.shape) for w, s in states.items() if w not in CONTEXT_STATES)
        entry = kinds.setdefault(kind, {"layers": 0, "grows": grows, "fixed": fixed, "ratio": ratio})
        entry["layers"] += 1
    total = sum(k["layers"] * (k["grows"] + k["fixed"]) for k in kinds.values())
    mla = len(layers) * batch * capacity * MLA_VALUES * MLA_ITEMSIZE
    return {"capacity": capacity, "batch": batch, "layers": len(layers), "kinds": kinds, "total": total,
            "dtypes": sorted({s.dtype for s in plan.states}), "mla": mla, "ratio": total / mla}


def state_plan_lines(sp: dict) -> list[str]:
    lines = [f"decode state for {sp['capacity']} positions x batch {sp['batch']} ({', '.join(sp['dtypes'])}): "
             f"{size_text(sp['total'])} for {sp['layers']} layers; a V3.2-style MLA cache ({MLA_VALUES} bf16 "
             f"values per position per layer) for the same depth and length: {size_text(sp['mla'])}; "
             f"ratio {100 * sp['ratio']:.1f}%"]
    for kind, k in sorted(sp["kinds"].items(), key=lambda kv: -kv[1]["layers"] * (kv[1]["grows"] + kv[1]["fixed"])):
        split = (f"{size_text(k['grows'])} grows with the context, {size_text(k['fixed'])} fixed" if k["grows"]
                 else "fixed")
        lines.append(f"  {kind} x {k['layers']} layer{'s' if k['layers'] > 1 else ''}: "
                     f"{size_text(k['grows'] + k['fixed'])} per layer ({split})")
    return lines


def weight_forms(plan, meta: dict) -> dict[str, int]:
    """Weight bytes per stored form: "fp8" / "fp4" codes and "e8m0" scales (the compiler's
    ``weight_formats``; a weight re-laid-out at compile time keeps its name as a prefix), else the
    dtype."""
    formats = meta.get("weight_formats", {})
    out: dict[str, int] = {}
    for w in plan.weights:
        names = [name for name in formats if w.name == name or w.name.startswith(name + ".")]
        form = formats[max(names, key=len)] if names else w.dtype
        out[form] = out.get(form, 0) + w.nbytes
    return out


def step_bytes(entry, meta: dict) -> int:
    """Bytes one run of ``entry`` reads and writes: each call's own count where its kernel has one
    (a tide kernel: the weights it really reads, e.g. only the routed experts), else its
    arguments' bytes."""
    costs = meta.get("kernel_costs", {})
    total = 0
    for call in entry.calls:
        cost = costs.get(call.kernel, {}).get("bytes")
        if cost is None:
            cost = sum(entry.buffers[v].nbytes for kind, v in call.args if kind == "buf")
        total += int(cost)
    return total
