"""The compile side of the benchmark (needs TVM and onnx): one-node ONNX models and kernel artifacts.

For each case: ``model.onnx`` (one node: the tide function or standard op; weights as external
data initializers), ``kernel.tide`` (compiled with tide's kernels) and ``generic.tide`` (the same
ONNX with ``CompileOptions(kernels=False)``: the function bodies get TVM's generic lowering). Both
artifacts have one entry ``main`` whose inputs are the case's inputs. Artifacts are cached on disk
under a key that hashes the case, the target, tide's version and the sources of the kernels
(ops/, targets/, compiler/), so editing a kernel recompiles only what it affects.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from .cases import KERNELS, Case

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path(os.environ.get("TIDE_BENCH_CACHE", Path.home() / ".cache" / "tide-bench"))
_SOURCES = ("ops", "targets", "compiler")


def _source_digest() -> str:
    h = hashlib.sha256()
    for folder in _SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            h.update(str(path.relative_to(ROOT)).encode())
            h.update(path.read_bytes())
    for path in sorted((ROOT / "runtime" / "src").glob("*.c")):
        h.update(path.read_bytes())
    return h.hexdigest()


def case_key(case: Case, target: str, digest: str | None = None, arch: str | None = None) -> str:
    """Hash of kernel + shape + target + tide version + kernel sources."""
    try:
        version = metadata.version("tide")
    except metadata.PackageNotFoundError:
        version = "unknown"
    payload = json.dumps({"case": case.to_json(), "target": target, "arch": arch, "version": version,
                          "sources": digest or _source_digest()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def write_onnx(case: Case, weights: dict, path: Path) -> None:
    """The case's one-node ONNX model (plus the dequantization of its quantized weights); weights as
    external data next to it."""
    import onnx
    from onnx import helper, numpy_helper

    from ..compiler.export.functions import _FUNCTIONS, build_functions

    FUNCTION_INPUTS = {name: spec[0] for name, spec in _FUNCTIONS.items()}

    def info(name, dtype, shape):
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), list(shape))

    # quantized weights (``params["quantized"]``: name -> "fp8" | "fp4"): initializers ``name`` and
    # ``name.scale`` (uint8), read by the node through a tide.DequantizeFP8 / FP4 call as the exporter writes it
    quantized = case.params.get("quantized", {})
    scales = {f"{n}.scale" for n in quantized}
    names = [n for n, _, _ in case.inputs] + [n for n, _, _ in case.weights if n not in scales]
    if case.domain == "tide":  # the function's own input order (inputs and weights interleave)
        declared = FUNCTION_INPUTS[case.op]
        if sorted(declared) != sorted(names):
            raise ValueError(f"case {case.name}: tide.{case.op} takes {declared}, the case gives {names}")
        names = declared
    dequantize = {"fp8": ("DequantizeFP8", {"block_n": 128, "block_k": 128}), "fp4": ("DequantizeFP4", {})}
    nodes = [helper.make_node(dequantize[form][0], [n, f"{n}.scale"], [f"{n}.dequantized"], domain="tide",
                              name=f"{n}.dequantize", **dequantize[form][1]) for n, form in quantized.items()]
    names = [f"{n}.dequantized" if n in quantized else n for n in names]
    nodes.append(helper.make_node(case.op, names, [n for n, _, _ in case.outputs], domain=case.domain,
                                  name=case.kernel, **case.attrs))
    graph = helper.make_graph(nodes, case.kernel, [info(*i) for i in case.inputs], [info(*o) for o in case.outputs],
                              [numpy_helper.from_array(weights[n], n) for n, _, _ in case.weights])
    opsets = [helper.make_opsetid("", 18)]
    functions = []
    used = {n.op_type for n in nodes if n.domain == "tide"}
    if used:
        opsets.append(helper.make_opsetid("tide", 1))
        functions = build_functions(used, 18, 1)
    model = helper.make_model(graph, opset_imports=opsets, functions=functions, producer_name="tide.bench")
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + ".weights", size_threshold=1024)


def prepare_case(case: Case, target: str, cache: Path, generic: bool = True, onnx_file: bool = True,
                 log=print, arch: str | None = None) -> Path:
    """Compiles ``case`` for ``target`` into ``cache/<key>/`` (reused when present); returns the folder.
    ``case.json`` in it describes the case; ``onnx_file=False`` drops the ONNX after compiling."""
    from ..compiler.driver import CompileOptions, compile_model

    key = case_key(case, target, arch=arch)
    folder = cache / target / key
    done = folder / "case.json"
    if done.exists():
        return folder
    tmp = folder.with_name(key + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.time()
    weights = KERNELS[case.kernel].make_weights(case, np.random.default_rng(case.seed))
    onnx_path = tmp / "model.onnx"
    write_onnx(case, weights, onnx_path)
    del weights
    built = {}
    for variant, kernels in (("kernel", True), ("generic", False)):
        if variant == "generic" and (not generic or case.domain != "tide"):
            continue
        t1 = time.time()
        result = compile_model(str(onnx_path), str(tmp / f"{variant}.tide"),
                               CompileOptions(target=target, progress=False, kernels=kernels, arch=arch))
        built[variant] = {"seconds": round(time.time() - t1, 2),
                          "tide_kernels": sorted(k for k, v in result.kernels.items() if v != "generic"),
                          "generic_kernels": sorted(k for k, v in result.kernels.items() if v == "generic")}
    if not onnx_file:
        for p in (onnx_path, onnx_path.with_name(onnx_path.name + ".weights")):
            p.unlink(missing_ok=True)
    (tmp / "case.json").write_text(json.dumps({"case": case.to_json(), "target": target, "key": key,
                                               "artifacts": built}, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    _drop_stale(folder, case.name)
    log(f"  compiled {case.name} for {target} in {time.time() - t0:.1f}s -> {folder}")
    return folder


def _drop_stale(folder: Path, name: str) -> None:
    """Removes the cache's older compilations of the same case (other keys: older sources or
    versions), so the cache holds one copy per case and target (MoE cases weigh gigabytes)."""
    for other in folder.parent.iterdir():
        meta = other / "case.json"
        if other == folder or not meta.exists():
            continue
        try:
            if Case.from_json(json.loads(meta.read_text())["case"]).name == name:
                shutil.rmtree(other, ignore_errors=True)
        except (OSError, ValueError, KeyError, TypeError):
            continue


def prepare_bundle(cases: list[Case], target: str, out: Path, max_mib: float, log=print,
                   arch: str | None = None) -> dict:
    """``tide bench --prepare <target> --out DIR``: compiles the cases for ``target`` into ``DIR``
    (artifacts + case descriptions, no ONNX) for a machine without TVM. The weights travel inside
    the artifacts, so cases that would take the bundle past ``max_mib`` are left out (listed in
    ``bundle.json`` with their size). Returns the bundle index."""
    from ..targets import get

    get(target)  # a clear CompileError when this build cannot compile for target
    out.mkdir(parents=True, exist_ok=True)
    budget = max_mib * 2**20
    total, index, left_out = 0, [], {}
    for case in cases:
        weight_bytes = sum(int(np.prod(s)) * np.dtype(t).itemsize for _, t, s in case.weights)
        if total + 2 * weight_bytes > budget:  # kernel + generic artifact each hold the weights
            left_out[case.name] = f"weights {2 * weight_bytes / 2**20:.1f} MiB over the remaining budget"
            continue
        folder = prepare_case(case, target, out / "cases", onnx_file=False, log=log, arch=arch)
        size = sum(p.stat().st_size for p in folder.iterdir())
        if total + size > budget:
            shutil.rmtree(folder)
            left_out[case.name] = f"artifacts {size / 2**20:.1f} MiB over the remaining budget"
            continue
        total += size
        index.append(str(folder.relative_to(out)))
    doc = {"target": target, "arch": arch, "cases": index, "left_out": left_out, "bytes": total,
           "max_mib": max_mib, "python": sys.version.split()[0]}
    (out / "bundle.json").write_text(json.dumps(doc, indent=1))
    log(f"bundle {out}: {len(index)} cases, {total / 2**20:.1f} MiB (limit {max_mib:g} MiB)")
    for name, why in left_out.items():
        log(f"  left out {name}: {why} (raise --max-bundle-mib or pick cases with --kernel/--shapes)")
    return doc
