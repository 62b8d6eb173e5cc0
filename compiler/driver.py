"""``tide compile``: the whole pipeline, one entry point at a time, into one artifact.

ONNX file -> onnx_import (specialize each entry's shapes) -> relax_import -> substitute (tide
kernels, built with the target's choices) -> lower.legalize_and_fuse -> schedule (the target's
rules) -> lower.build_plan -> ``Target.build`` (the kernel library: host code, device code) ->
artifact. The target comes from the registry (``tide.targets.get``); nothing here names one.

A model with ``input_ids``/``start_pos``/``past.*`` inputs and ``logits``/``present.*`` outputs
(the exporter's contract, docs/onnx-contract.md) becomes a decode model with entries ``decode``
(one token) and ``prefill_<S>`` per chunk size; any other graph gets ``main``. A prefill entry
returns the last position's logits only, the row-wise tail of the graph computed for that position
alone (``tide.compiler.last_position``; metadata
``prefill_logits`` "last") unless ``CompileOptions.all_logits``.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from dataclasses import dataclass, field

from . import last_position, lower, onnx_import, relax_import, schedule, substitute
from .errors import CompileError, internal, readable, sentence

DEFAULT_PREFILL_CHUNKS = (32,)
COLLECT_WEIGHT_BYTES = 256 << 20  # weights from which each entry's stages end with a garbage collection


@dataclass
class CompileOptions:
    target: str = "cpu"
    batch: int | None = None
    max_seq_len: int | None = None
    prefill_chunks: tuple[int, ...] = DEFAULT_PREFILL_CHUNKS
    dims: dict[str, int] = field(default_factory=dict)
    mcpu: str | None = None
    arch: str | None = None  # device architectures of a device target, e.g. "sm_80,sm_90" (cuda: default sm_90)
    all_logits: bool = False  # prefill entries return every position's logits, not only the last one's
    progress: bool = True
    kernels: bool = True  # False: no tide-domain function kernels (their ONNX bodies get generic lowering)
    #                       and no tide linears (weight matmuls stay TVM-lowered)
    bind: dict = field(default_factory=dict)  # graph input name -> its value (a number, numbers or an
    #                       array), compiled in as a constant of the input's dtype and shape (--bind)


@dataclass
class CompileResult:
    path: str
    entries: list[str]
    kernels: dict[str, str]  # kernel -> what it serves ("generic" for TVM-lowered ones)
    seconds: float


class _Progress:
    def __init__(self, enabled: bool, total: int = 0):
        self.enabled, self.total, self.step, self.t0 = enabled, total, 0, time.time()
        self.what = "load"  # the stage running now (named in a failure's report)

    def __call__(self, what: str) -> None:
        self.step += 1
        self.what = what
        if self.enabled:
            print(f"[{self.step}/{self.total}] {what} ({time.time() - self.t0:.1f}s)", file=sys.stderr,
                  flush=True)


def _decode_signature(model) -> dict | None:
    """The exporter's decode contract, if the graph follows it: seq dim name, batch, state names."""
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    names = [i.name for i in inputs]
    outs = [o.name for o in model.graph.output]
    if names[:2] != ["input_ids", "start_pos"] or not outs or outs[0] != "logits":
        return None
    past = names[2:]
    present = outs[1:]
    if [p.removeprefix("past.") for p in past] != [p.removeprefix("present.") for p in present] or \
            not all(p.startswith("past.") for p in past):
        raise CompileError("decode graph: state inputs past.* and outputs present.* must pair up in order, "
                           f"got inputs {past} and outputs {present}")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].dim_param:
        raise CompileError("decode graph: input_ids must be [batch, seq] with a symbolic seq dimension")
    return {"seq": dims[1].dim_param, "batch": dims[0], "states": [p.removeprefix("past.") for p in past]}


def _entries(loaded, options: CompileOptions):
    model = loaded.model
    symbolic = onnx_import.symbolic_dims(model)
    sig = _decode_signature(model)
    dims = dict(options.dims)
    for name in symbolic:
        if name not in dims and options.batch is not None and "batch" in name.lower():
            dims[name] = options.batch
    if sig is None:
        return None, [("main", dims)]
    static_batch = sig["batch"].dim_value if sig["batch"].HasField("dim_value") else None
    if static_batch is not None and options.batch not in (None, static_batch):
        raise CompileError(f"{loaded.path}: the graph was exported for batch {static_batch}, not "
                           f"{options.batch}; export it again with --batch {options.batch}")
    chunks = sorted({int(c) for c in options.prefill_chunks if int(c) > 1}, reverse=True)
    entries = [("decode", {**dims, sig["seq"]: 1})]
    entries += [(f"prefill_{c}", {**dims, sig["seq"]: c}) for c in chunks]
    return sig, entries


def compile_model(onnx_path: str, output_path: str, options: CompileOptions | None = None) -> CompileResult:
    """Compiles ``onnx_path`` for ``options.target`` into the artifact ``output_path``.

    Every failure is a CompileError with a one-line message: a stage's own report as it is (or its
    first meaningful line, without printed IR), anything unexpected as an internal compiler error
    naming the stage; the original exception is chained."""
    options = options or CompileOptions()
    progress = _Progress(options.progress)
    try:
        return _compile(onnx_path, output_path, options, progress)
    except CompileError as err:
        message = str(err) if str(err).startswith(onnx_path) else f"{onnx_path}: {err}"
        if message == str(err) and readable(message):
            raise
        raise CompileError(sentence(message)) from err
    except Exception as err:  # noqa: BLE001  (TVM, numpy, ...: reported as an internal error of the stage)
        raise internal(onnx_path, progress.what, err) from err


def _compile(onnx_path: str, output_path: str, options: CompileOptions, progress: _Progress) -> CompileResult:
    from ..targets import get as get_target
    from . import artifact

    t0 = time.time()
    tgt = get_target(options.target)
    loaded = onnx_import.load(onnx_path)
    onnx_import.bind_inputs(loaded, options.bind)
    sig, entries = _entries(loaded, options)
    progress.total = 4 * len(entries) + 2
    device_archs = tgt.parse_archs(options.arch)
    target = tgt.tvm_target(options.mcpu, device_archs)
    model = loaded.model
    input_names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    output_names = [o.name for o in model.graph.output]
    state_names = sig["states"] if sig else []
    state_specs = []
    if sig:
        for inp in model.graph.input:
            if inp.name.startswith("past."):
                state_specs.append((inp.name.removeprefix("past."), inp.type.tensor_type))
    weights = lower.WeightTable()
    report = substitute.SubstitutionReport()
    model_dtype = {p.key: p.value for p in model.metadata_props}.get("tide.dtype", "float32")
    converters = substitute.function_kernels(tgt, report, model_dtype, target) if options.kernels else {}
    if "HyperConnectionPre" in converters and not onnx_import.sinkhorn_kernel_usable(onnx_path, model):
        del converters["HyperConnectionPre"]
    plans, kernels = [], {}
    packed: dict = {}  # weight parameters re-laid-out for a kernel, shared by the entries
    # the modules lowering replaces hold the entry's weights as constants, kept alive by reference
    # cycles of TVM's Python mutators (their memo holds every expression they visited): for a model
    # with large weights they are collected at the end of each stage, not whenever Python's collector
    # next runs (flash-2layer's three entries otherwise piled up past 23 GB); a small model skips the
    # collections (0.15 s each with TVM loaded: most of a small graph's compile)
    collect = gc.collect if sum(w.nbytes for w in loaded.weights.values()) >= COLLECT_WEIGHT_BYTES else lambda: 0
    for entry, dims in entries:
        shape_note = ", ".join(f"{k}={v}" for k, v in dims.items())
        progress(f"import {entry}" + (f" ({shape_note})" if shape_note else ""))
        static = onnx_import.specialize(loaded, dims, frozenset(converters))
        if entry.startswith("prefill_") and not options.all_logits:
            static, _ = last_position.last_position_only(onnx_path, static)
        static, params = onnx_import.weights_as_inputs(static, loaded.weights)
        mod = relax_import.to_relax(onnx_import.with_weights(static, loaded.weights), onnx_path, converters)
        del static  # its initializers hold a copy of every weight the import made a constant
        collect()
        progress(f"substitute kernels for {entry}")
        state_params = {}
        for param, name in zip(mod["main"].params, input_names):
            if sig and name.startswith("past."):
                state_params[param.name] = name.removeprefix("past.")
        mod = substitute.substitute(mod, tgt, state_params, report, target, params, linears=options.kernels,
                                    packed=packed)
        progress(f"lower and schedule {entry} for {options.target}")
        mod = lower.legalize_and_fuse(mod, target, tgt.fused_tensor_bytes)
        collect()
        mod = schedule.schedule(mod, tgt, target)
        mod = lower.to_dps(mod)
        progress(f"plan {entry}")
        state_index = {f"past.{s}": i for i, s in enumerate(state_names)}
        plan, entry_kernels = lower.build_plan(mod, entry, input_names, output_names, state_index,
                                               state_names, weights, params)
        del mod
        collect()
        _merge_kernels(kernels, entry_kernels, plan)
        _check_state_bindings(plan, sig)
        plans.append(plan)
    for name in kernels:
        report.kernels.setdefault(name, "generic")
    progress(f"codegen {len(kernels)} kernels for {options.target}")
    library = tgt.build(kernels, target, device_archs)
    progress(f"write {output_path}")
    needs = tgt.requirements(target, device_archs)
    metadata = {
        "source": os.path.basename(onnx_path),
        "kind": "decode" if sig else "graph",
        "target": options.target,
        "mcpu": str((target.host or target).attrs.get("mcpu", "")),
        "kernels": report.kernels,
        "kernel_costs": {name: _cost(func) for name, func in kernels.items()},
        "entries": [p.name for p in plans],
        "weight_formats": onnx_import.quantized_formats(model),
    }
    if sig:
        metadata.update(_decode_metadata(model, plans, options))
    artifact.write_artifact(
        output_path,
        artifact.TargetInfo(kind=tgt.runtime, host_arch=needs.host_arch,
                            host_features=artifact.feature_mask(needs.host_features), device_arch=library.device_arch),
        _artifact_plan(plans, kernels, weights, state_specs),
        library.host,
        weights.arrays,
        metadata,
        library.device_code,
    )
    return CompileResult(output_path, [p.name for p in plans], dict(report.kernels), time.time() - t0)


def _cost(func) -> dict:
    """FLOPs and bytes of one call of a kernel, for profiles: a tide kernel's own counts
    (``tide.params``); else TVM's FLOP estimate from the loop nest (None when it cannot count) and no
    bytes (a profile then takes the call's argument bytes from the plan)."""
    import tvm
    from tvm.s_tir.analysis import estimate_tir_flops

    from ..ops.kernel import identity

    _, params = identity(func)
    if "flops" in params:
        return {"flops": int(params["flops"]), "bytes": int(params["bytes"])}
    try:
        flops = int(estimate_tir_flops(tvm.IRModule({"main": func})))
    except Exception:  # noqa: BLE001  (TVM cannot count this loop nest: no figure)
        flops = None
    return {"flops": flops, "bytes": None}


def _decode_metadata(model, plans, options: CompileOptions) -> dict:
    props = {p.key: p.value for p in model.metadata_props}
    exported = int(props.get("tide.max_seq_len", "0")) or None
    if exported and options.max_seq_len not in (None, exported):
        raise CompileError(f"decode graph: its state holds {exported} tokens (fixed at export); export it "
                           f"again with --max-seq-len {options.max_seq_len}")
    max_len = exported or options.max_seq_len
    if max_len is None:
        raise CompileError("decode graph: state capacity unknown: pass --max-seq-len (the graph has no "
                           "tide.max_seq_len metadata)")
    chunks = sorted(int(p.name.split("_")[1]) for p in plans if p.name.startswith("prefill_"))
    logits = next(o for o in plans[0].outputs if o.name == "logits")
    shape = plans[0].buffers[logits.buffer].shape
    return {"max_seq_len": max_len, "batch": int(shape[0]), "vocab": int(shape[-1]),
            "prefill_chunks": chunks, "prefill_logits": "all" if options.all_logits else "last",
            "model": props.get("tide.model", "")}


def _check_state_bindings(plan, sig) -> None:
    if not sig:
        return
    for name, role in ((io.name, io.role) for io in plan.outputs):
        if name.startswith("present.") and role != "state":
            raise CompileError(
                f"entry {plan.name}: output '{name}' is not an in-place update of '{name.replace('present.', 'past.', 1)}'"
                " (the contract: present.X = ScatterND(past.X, ...), see docs/onnx-contract.md)")


def _merge_kernels(kernels: dict, entry_kernels: dict, plan) -> None:
    """Adds an entry's kernels to the compile's ``kernels`` (name -> PrimFunc) and points the entry's
    calls at them. A kernel equal, but for its name, to one already there (the same fused kernel in
    another layer of the same kind, or in another entry) is not added: its calls use the one there,
    so codegen compiles each distinct kernel once, however deep the model. A different kernel under a
    name already taken is added as ``<entry>_<name>``."""
    from tvm_ffi import StructuralKey

    def key(func):
        return StructuralKey(func.with_attr("global_symbol", ""))

    existing = {key(func): name for name, func in kernels.items()}
    rename = {}
    for name, func in entry_kernels.items():
        k = key(func)
        same = existing.get(k)
        if same is None:
            same = f"{plan.name}_{name}" if name in kernels else name
            kernels[same] = func
            existing[k] = same
        rename[name] = same
    for call in plan.calls:
        call.kernel = rename.get(call.kernel, call.kernel)


def _artifact_plan(plans, kernels, weights, state_specs):
    """The artifact's plan: every entry's plan as lowering built it, the kernels, weights and states."""
    from onnx import helper

    from . import artifact

    states = [artifact.StateSpec(name=name, dtype=str(helper.tensor_dtype_to_np_dtype(ttype.elem_type)),
                                 shape=tuple(d.dim_value for d in ttype.shape.dim)) for name, ttype in state_specs]
    wspecs = [artifact.WeightSpec(name=n, dtype=str(a.dtype), shape=tuple(a.shape))
              for n, a in zip(weights.names, weights.arrays)]
    return artifact.Plan(kernels=list(kernels), weights=wspecs, states=states, entries=plans)
