"""``tide bench``: every kernel case through a kernel artifact and the tide runtime, against the
machine's ceilings and the baselines measured in the same run.

Engines per case (each checked against the float64 reference before it is timed):

- ``tide``: the kernel artifact (``kernel.tide``, tide's kernels), run by the C runtime;
- ``generic``: the same one-node ONNX compiled with ``kernels=False`` (TVM's generic lowering of
  the function body), run by the C runtime: the gain of each kernel;
- ``torch``: torch eager code of the same math (transformers' formulation);
- ``onnxruntime``: the same one-node ONNX (the function body) where the ONNX file is present.

TVM is needed only to compile (``prepare``); ``--bundle DIR`` runs pre-compiled artifacts.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from . import harness, report
from .cases import KERNELS, Case, all_cases

ENGINES = ("tide", "generic", "torch", "onnxruntime")
# activations of all rotation slots of one case stay under this (weights are not rotated)
ROTATION_BYTES = 256 * 2**20
MAX_SETS = 4


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _TideEngine:
    """A kernel artifact in the tide runtime. On a GPU the inputs are device tensors handed over
    by DLPack (``run_dlpack``), so no host copies are timed."""

    def __init__(self, path: Path, device: str, threads: int):
        from ..runtime import load

        self.model = load(str(path), device=device, num_threads=threads)
        self.names = [i.name for i in self.model.inputs("main")]
        self.device = device

    def prepare(self, feeds: dict):
        if not self.device.startswith("cuda"):
            return {n: feeds[n] for n in self.names}
        import torch

        return {n: torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device) for n in self.names}

    def outputs(self, prepared: dict) -> dict:
        if not self.device.startswith("cuda"):
            return self.model.run(prepared)
        import torch

        return {n: torch.from_dlpack(t).cpu().numpy() for n, t in self.model.run_dlpack(prepared).items()}

    def call(self, prepared: dict):
        return self.model.run_dlpack(prepared)


class _TorchEngine:
    def __init__(self, fn, case: Case, device: str):
        import torch

        self.torch, self.fn, self.case, self.device = torch, fn, case, device
        self.names = [n for n, _, _ in case.inputs]

    def prepare(self, feeds: dict) -> list:
        return [self.torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device) for n in self.names]

    def outputs(self, prepared) -> dict:
        with self.torch.no_grad():
            outs = self.fn(*prepared)
        return {name: o.cpu().numpy() for (name, _, _), o in zip(self.case.outputs, outs)}

    def call(self, prepared):
        with self.torch.no_grad():
            return self.fn(*prepared)


class _OrtEngine:
    def __init__(self, onnx_path: Path, case: Case, device: str, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        providers = ["CUDAExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
        self.sess = ort.InferenceSession(str(onnx_path), opts, providers=providers)
        self.case = case

    def outputs(self, feeds: dict) -> dict:
        return dict(zip([n for n, _, _ in self.case.outputs], self.call(feeds)))

    def call(self, feeds: dict):
        return self.sess.run(None, {n: feeds[n] for n, _, _ in self.case.inputs})


def _input_sets(case: Case, seed: int) -> list[dict]:
    kdef = KERNELS[case.kernel]
    per_set = sum(int(np.prod(s)) * np.dtype(t).itemsize for _, t, s in case.inputs)
    n = max(1, min(MAX_SETS, ROTATION_BYTES // max(per_set, 1)))
    rng = np.random.default_rng([seed, case.seed])
    return [{k: harness.aligned(v) for k, v in kdef.make_inputs(case, rng).items()} for _ in range(n)]


def run_case(case: Case, folder: Path, target: str, device: str, engines: tuple, policy: harness.TimingPolicy,
             seed: int, threads: int) -> dict:
    """Checks and times every available engine on ``case``; returns its JSON record."""
    kdef = KERNELS[case.kernel]
    weights = kdef.make_weights(case, np.random.default_rng(case.seed))
    sets = _input_sets(case, seed)
    with harness.one_blas_thread():
        want = kdef.reference(case, sets[0], weights)
    cost = kdef.cost(case, sets[0])
    timer = harness.CudaEventTimer() if device.startswith("cuda") else harness.CpuTimer()
    record = {"name": case.name, "kernel": case.kernel, "group": kdef.group, "shapes": case.shapes,
              "phase": case.phase, "label": case.label, "flops": cost["flops"], "bytes": cost["bytes"],
              "rotation_sets": len(sets), "timer": timer.kind, "engines": {}, "skipped": {}}
    for engine in engines:
        if engine in case.skip:
            record["skipped"][engine] = case.skip[engine]
            continue
        try:
            if engine in ("tide", "generic"):
                path = folder / ("kernel.tide" if engine == "tide" else "generic.tide")
                if not path.exists():
                    record["skipped"][engine] = ("no generic variant: tide substitutes this op in every build"
                                                 if engine == "generic" else f"{path} missing")
                    continue
                eng = _TideEngine(path, device, threads)
                prepared = [eng.prepare(s) for s in sets]
            elif engine == "torch":
                try:
                    import torch

                    torch.set_num_threads(threads or os.cpu_count() or 1)
                except ImportError:
                    record["skipped"][engine] = "torch is not installed"
                    continue
                fn = kdef.torch_fn(case, weights, device)
                if fn is None:
                    record["skipped"][engine] = "no torch eager implementation of this kernel"
                    continue
                eng = _TorchEngine(fn, case, device)
                prepared = [eng.prepare(s) for s in sets]
            else:
                onnx_path = folder / "model.onnx"
                if not onnx_path.exists():
                    record["skipped"][engine] = "the bundle carries no ONNX file"
                    continue
                try:
                    eng = _OrtEngine(onnx_path, case, device, threads or os.cpu_count() or 1)
                except ImportError:
                    record["skipped"][engine] = "onnxruntime is not installed"
                    continue
                prepared = sets
            t_check = time.perf_counter()
            harness.check_outputs(case.outputs, eng.outputs(prepared[0]), want, kdef.paired)
            if time.perf_counter() - t_check > policy.slow_call_s:
                one = harness.TimingPolicy(warmup=0, min_reps=1, min_seconds=0.0, max_reps=1)
                times = timer.measure(lambda i: eng.call(prepared[i]), len(prepared), one)
                record.setdefault("notes", {})[engine] = "slow: timed once after the checked call"
            elif isinstance(eng, _TideEngine) and eng.device.startswith("cuda"):
                # device time from the runtime itself (CUDA events around each run)
                times = harness.ReportedTimer().measure(lambda i: eng.model.time(prepared[i], iterations=1)[0],
                                                        len(prepared), policy)
            elif isinstance(eng, _TorchEngine) and not device.startswith("cuda"):
                times = _torch_best_threads(eng, prepared, timer, policy, threads or os.cpu_count() or 1, record)
            else:
                times = timer.measure(lambda i: eng.call(prepared[i]), len(prepared), policy)
            st = harness.stats(times)
            record["engines"][engine] = st
            eng = prepared = None
            gc.collect()  # the engine's runtime/thread pool goes before the next one is timed
        except harness.CheckError as err:
            record["skipped"][engine] = f"WRONG OUTPUT, not timed: {err}"
            _log(f"  {case.name} [{engine}]: WRONG OUTPUT, not timed: {err}")
        except Exception as err:  # noqa: BLE001  (a load/run failure of one engine: reported, the rest go on)
            record["skipped"][engine] = f"FAILED, not timed: {type(err).__name__}: {err}"
            _log(f"  {case.name} [{engine}]: FAILED: {type(err).__name__}: {err}")
    return record


def _torch_best_threads(eng, prepared, timer, policy, threads: int, record: dict) -> list[float]:
    """torch eager on the CPU in its better configuration: all threads, or one (small ops under
    OpenMP lose badly on a core another process is using); the thread count is noted."""
    import torch

    best = None
    for n in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(n)
        times = timer.measure(lambda i: eng.call(prepared[i]), len(prepared), policy)
        if best is None or harness.stats(times)["median_s"] < harness.stats(best[1])["median_s"]:
            best = (n, times)
    torch.set_num_threads(threads)
    record.setdefault("notes", {})["torch"] = f"best of {threads} and 1 threads: {best[0]}"
    return best[1]


def _failed_record(case: Case, why: str) -> dict:
    return {"name": case.name, "kernel": case.kernel, "group": KERNELS[case.kernel].group, "shapes": case.shapes,
            "phase": case.phase, "label": case.label, "flops": 0, "bytes": 0, "engines": {},
            "skipped": {"tide": why}}


MODEL_RUNS = {"tiny": ([64], 32), "flash-2layer": ([32, 256], 16)}  # prompt lengths, new tokens


def _model_records(threads: int, policy: harness.TimingPolicy, heavy: bool, cache: Path | None) -> list[dict]:
    """Whole-model prefill and decode (``tide.bench.e2e``): tiny, and with ``heavy`` the full-width
    flash-2layer in float32, bf16 and DeepSeek's FP8 + FP4 release format (exported and compiled
    once into the cache); tide vs its generic lowering (tiny),
    transformers, onnxruntime and llama.cpp (where its setup ran)."""
    import tempfile

    from . import e2e
    from .prepare import DEFAULT_CACHE

    out = []
    runs = [("tiny", "float32")] + ([("flash-2layer", w) for w in e2e.WEIGHTS] if heavy else [])
    for model, weights in runs:
        lens, new_tokens = MODEL_RUNS[model]
        _log(f"whole model ({model}, {e2e.WEIGHT_NAMES[weights]} weights): {', '.join(e2e.available_engines(model))}")
        with tempfile.TemporaryDirectory(prefix="tide-bench-e2e-") as tmp:
            workdir = tmp if model == "tiny" else str((cache or DEFAULT_CACHE) / "e2e")
            res = e2e.run(model, lens, new_tokens, max(policy.min_reps, 3), workdir, threads or os.cpu_count() or 1,
                          log=lambda m: _log(f"  {m}"), weights=weights)
        shapes = model if weights == "float32" else f"{model}-{weights}"
        for line in e2e.table(res).splitlines():
            _log(f"  {line}")
        skipped = {("generic" if n == "tide-generic" else n): "WRONG OUTPUT, not timed: greedy tokens differ from "
                   "transformers'" for n in res["wrong_tokens"]}
        skipped.update({n: f"not run: {why}" for n, why in res["unsupported"].items()})
        phases = [("prefill", f"prompt{n}", int(n), lambda r, n=n: r["prefill_times_s"][str(n)]) for n in lens]
        phases.append(("decode", "per-token", 1, lambda r: r["decode_times_s"]))
        for phase, label, tokens, times in phases:
            out.append({"name": f"model/{shapes}/{phase}/{label}", "kernel": "model", "group": "model",
                        "shapes": shapes, "phase": phase, "label": label,
                        "flops": 2.0 * ((res["decode_weight_elements"] - res["head_weight_elements"]) * tokens
                                        + res["head_weight_elements"]),
                        "bytes": float(res["decode_bytes_per_token"]),
                        "cost_note": "estimate: 2 FLOPs per element of the weights a decode step reads (routed "
                                     "experts at top-k/experts, one embedding row) per token, the lm_head's for the "
                                     "last position only; attention's own FLOPs not counted",
                        "rotation_sets": 1, "timer": "perf_counter_ns",
                        "engines": {("generic" if n == "tide-generic" else n): harness.stats(times(r))
                                    for n, r in res["results"].items()},
                        "skipped": dict(skipped)})
    return out


def _require_cuda(device: str, bundle: Path | None) -> None:
    """Clear errors before any work when the CUDA side is missing."""
    if bundle is None:
        from ..targets import get

        get("cuda")  # CompileError when this build cannot compile for cuda
    try:
        import torch
    except ImportError:
        raise RuntimeError("tide bench --target cuda needs torch (device timing, baselines)") from None
    if not torch.cuda.is_available():
        raise RuntimeError(f"tide bench --target cuda: torch sees no CUDA device for {device}")


def run_suite(target: str = "cpu", shapes=None, kernels=None, heavy: bool = False, bundle: Path | None = None,
              cache: Path | None = None, engines=ENGINES, policy: harness.TimingPolicy | None = None,
              seed: int = 0, threads: int = 0, models: bool = True, device: str | None = None,
              ceilings: dict | None = None) -> dict:
    """The whole suite; returns the JSON document (see ``report``). ``kernels``: None for all,
    ``[]`` for none (only the whole-model rows). ``ceilings`` given: not measured again."""
    policy = policy or harness.TimingPolicy()
    device = device or ("cuda:0" if target == "cuda" else "cpu")
    t0 = time.time()
    if target == "cuda":
        _require_cuda(device, bundle)
    failed = []
    if bundle is not None:
        index = json.loads((bundle / "bundle.json").read_text())
        if index["target"] != target:
            raise ValueError(f"bundle {bundle} was prepared for {index['target']}, not {target}")
        folders = [bundle / rel for rel in index["cases"]]
        work = [(Case.from_json(json.loads((f / "case.json").read_text())["case"]), f) for f in folders]
        if kernels is not None:
            work = [(c, f) for c, f in work if c.kernel in kernels]
        if shapes:
            work = [(c, f) for c, f in work if c.shapes in shapes]
    else:
        from .prepare import DEFAULT_CACHE, prepare_case

        selected = [] if kernels == [] else all_cases(
            shapes or (("tiny", "flash") if target == "cpu" else ("flash",)), kernels, heavy)
        from ..compiler.errors import CompileError

        work = []
        for i, case in enumerate(selected):
            _log(f"[{i + 1}/{len(selected)}] compile {case.name}")
            try:
                work.append((case, prepare_case(case, target, cache or DEFAULT_CACHE, log=_log)))
            except CompileError as err:  # reported in the results; the other cases still run
                _log(f"  {case.name}: compile failed: {err}")
                failed.append(_failed_record(case, f"compile failed: {err}"))
    measure_ceilings = ceilings is None
    if measure_ceilings:
        _log(f"tide bench: measuring the {target} ceilings")
        ceilings = harness.cuda_ceilings(device) if target == "cuda" else harness.cpu_ceilings()
    _log(f"  GEMM peak {ceilings['gemm_flops'] / 1e9:.1f} GFLOP/s ({ceilings['gemm_how']}), "
         f"bandwidth {ceilings['bandwidth'] / 1e9:.1f} GB/s ({ceilings['bandwidth_how']})")
    records = []
    for i, (case, folder) in enumerate(work):
        _log(f"[{i + 1}/{len(work)}] run {case.name}")
        records.append(run_case(case, folder, target, device, tuple(engines), policy, seed, threads))
    records.extend(failed)
    if models and bundle is None and target == "cpu":
        try:
            records.extend(_model_records(threads, policy, heavy, cache))
        except Exception as err:  # noqa: BLE001  (export/compile/transformers: reported, the kernels stand)
            _log(f"  whole model failed: {type(err).__name__}: {err}")
            records.append({"name": "model/tiny", "kernel": "model", "group": "model", "shapes": "tiny",
                            "phase": "both", "label": "", "flops": 0, "bytes": 0, "engines": {},
                            "skipped": {"tide": f"whole-model run failed: {type(err).__name__}: {err}"}})
    if measure_ceilings:  # again after the cases; the higher of both is the roof
        again = harness.cuda_ceilings(device) if target == "cuda" else harness.cpu_ceilings()
        ceilings = harness.best_ceilings(ceilings, again)
        _log(f"  ceilings (best of start and end): GEMM {ceilings['gemm_flops'] / 1e9:.1f} GFLOP/s, "
             f"bandwidth {ceilings['bandwidth'] / 1e9:.1f} GB/s")
    for rec in records:
        report.add_figures(rec, ceilings)
    return {"schema": report.SCHEMA_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.time() - t0, 1), "machine": harness.machine_info(target, device),
            "ceilings": ceilings, "policy": vars(policy), "seed": seed, "results": records}


def add_arguments(p) -> None:
    p.add_argument("--target", default="cpu", choices=["cpu", "cuda", "ascend"],
                   help="where the kernels run (ascend: --estimate only)")
    p.add_argument("--estimate", action="store_true",
                   help="ascend: the cost model's estimates per kernel and SoC instead of measurements")
    p.add_argument("--compile", action="store_true",
                   help="ascend --estimate: also compile every V4-Flash case for each SoC (minutes) and estimate it")
    p.add_argument("--kernel", action="append", metavar="NAME",
                   help=f"only these kernels (repeatable): {', '.join(KERNELS)}, model")
    p.add_argument("--shapes", action="append", choices=["tiny", "flash", "pro"],
                   help="shape sets (repeatable; default: tiny and flash on cpu, flash on cuda)")
    p.add_argument("--heavy", action="store_true",
                   help="add the big shapes: 1M contexts, 4096-token MoE prefill, the pro set")
    p.add_argument("--json", metavar="OUT", help="write every figure and the machine info here")
    p.add_argument("--plots", metavar="DIR", help="write the PNG charts here (default: next to --json)")
    p.add_argument("--compare", metavar="BASELINE", help="an earlier JSON: print regressions and improvements")
    p.add_argument("--threshold", type=float, default=0.10, help="relative change --compare reports (0.10)")
    p.add_argument("--bundle", metavar="DIR", help="run the pre-compiled artifacts of DIR (no TVM needed)")
    p.add_argument("--prepare", choices=["cpu", "cuda"], help="compile a bundle for this target into --out")
    p.add_argument("--out", metavar="DIR", help="bundle folder for --prepare")
    p.add_argument("--arch", help="device architectures of a --prepare cuda bundle (e.g. sm_90; default: the "
                                  "target's)")
    p.add_argument("--max-bundle-mib", type=float, default=50.0, help="size limit of a --prepare bundle")
    p.add_argument("--cache", metavar="DIR", help="compiled-case cache (default ~/.cache/tide-bench)")
    p.add_argument("--no-model", action="store_true", help="skip the whole-model prefill/decode rows")
    p.add_argument("--engine", action="append", choices=list(ENGINES), help="only these engines (repeatable)")
    p.add_argument("--threads", type=int, default=0, help="runtime/torch/onnxruntime threads (0: all cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the rotated inputs")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (1 warm-up, >= 3 reps, 0.05 s)")


def command(args) -> int:
    """``tide bench``."""
    if args.target == "ascend" or args.estimate or args.compile:
        if args.target != "ascend":
            raise SystemExit(f"tide bench: --{'estimate' if args.estimate else 'compile'} is for --target ascend")
        from .ascend_estimate import command as estimate

        return estimate(args)
    chosen = args.kernel or []
    case_kernels = [k for k in chosen if k != "model"] if chosen else None   # None: every kernel
    with_model = not args.no_model and (not chosen or "model" in chosen)
    if args.prepare:
        from .prepare import prepare_bundle

        if not args.out:
            raise SystemExit("tide bench: --prepare needs --out DIR")
        cases = all_cases(args.shapes or ("flash",), case_kernels, args.heavy)
        prepare_bundle(cases, args.prepare, Path(args.out), args.max_bundle_mib, log=_log, arch=args.arch)
        return 0
    policy = (harness.TimingPolicy(warmup=1, min_reps=3, min_seconds=0.05, max_reps=10, max_seconds=0.5)
              if args.quick else harness.TimingPolicy())
    try:
        baseline = report.load_json(Path(args.compare)) if args.compare else None
        doc = run_suite(args.target, args.shapes, case_kernels, args.heavy, Path(args.bundle) if args.bundle else None,
                        Path(args.cache) if args.cache else None, tuple(args.engine or ENGINES), policy, args.seed,
                        args.threads, models=with_model)
    except (RuntimeError, ValueError, OSError) as err:
        print(f"tide bench: error: {err}", file=sys.stderr)
        return 2
    print(report.table(doc))
    if args.json:
        report.write_json(doc, Path(args.json))
        print(f"wrote {args.json}")
    plot_dir = Path(args.plots) if args.plots else (Path(args.json).parent if args.json else None)
    if plot_dir is not None:
        for path in report.plots(doc, plot_dir):
            print(f"wrote {path}")
    if args.compare:
        result = report.compare(baseline, doc, args.threshold)
        print(report.compare_text(result, args.threshold))
    return 0
