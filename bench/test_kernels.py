"""pytest-benchmark front end of the suite (cases and engines from bench/conftest.py options).

Each test compiles (or finds in the cache) its case, checks the engine's output against the
float64 reference, then lets pytest-benchmark time calls over the rotated input sets. The
analytic FLOPs/bytes go to ``extra_info`` (so ``--benchmark-json`` carries them)."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from tide.bench import harness, suite
from tide.bench.cases import KERNELS


def test_kernel(benchmark, bench_case, bench_engine):
    from tide.bench.prepare import DEFAULT_CACHE, prepare_case

    case, kdef = bench_case, KERNELS[bench_case.kernel]
    folder = prepare_case(case, "cpu", DEFAULT_CACHE, log=lambda m: None)
    weights = kdef.make_weights(case, np.random.default_rng(case.seed))
    sets = suite._input_sets(case, 0)
    want = kdef.reference(case, sets[0], weights)
    threads = os.cpu_count() or 1
    if bench_engine in ("tide", "generic"):
        path = folder / ("kernel.tide" if bench_engine == "tide" else "generic.tide")
        if not path.exists():
            pytest.skip("tide substitutes this op in every build: no generic variant")
        eng = suite._TideEngine(path, "cpu", 0)
        prepared = [eng.prepare(s) for s in sets]
    elif bench_engine == "torch":
        fn = kdef.torch_fn(case, weights, "cpu")
        if fn is None:
            pytest.skip("no torch eager implementation of this kernel")
        eng = suite._TorchEngine(fn, case, "cpu")
        prepared = [eng.prepare(s) for s in sets]
    else:
        eng, prepared = suite._OrtEngine(folder / "model.onnx", case, "cpu", threads), sets
    harness.check_outputs(case.outputs, eng.outputs(prepared[0]), want, kdef.paired)
    cost = kdef.cost(case, sets[0])
    benchmark.group = case.name
    benchmark.extra_info.update(case=case.name, engine=bench_engine, flops=cost["flops"], bytes=cost["bytes"])
    rotation = itertools.cycle(range(len(prepared)))
    benchmark(lambda: eng.call(prepared[next(rotation)]))
