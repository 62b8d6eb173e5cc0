"""``pytest bench/ --benchmark-...``: every benchmark case and engine as a pytest-benchmark test.

Options: ``--bench-shapes tiny`` (repeatable; default tiny), ``--bench-kernel NAME`` (repeatable),
``--bench-engine tide|generic|torch|onnxruntime`` (repeatable; default all), ``--bench-heavy``.
"""

from __future__ import annotations


def pytest_addoption(parser):
    group = parser.getgroup("tide-bench")
    group.addoption("--bench-shapes", action="append", choices=["tiny", "flash", "pro"], help="shape sets")
    group.addoption("--bench-kernel", action="append", help="kernels (default: all)")
    group.addoption("--bench-engine", action="append", choices=["tide", "generic", "torch", "onnxruntime"])
    group.addoption("--bench-heavy", action="store_true", help="add the heavy cases")


def pytest_generate_tests(metafunc):
    if "bench_case" not in metafunc.fixturenames:
        return
    from tide.bench.cases import all_cases
    from tide.bench.suite import ENGINES

    opt = metafunc.config.getoption
    selected = all_cases(opt("bench_shapes") or ["tiny"], opt("bench_kernel"), opt("bench_heavy"))
    engines = opt("bench_engine") or list(ENGINES)
    params = [(case, engine) for case in selected for engine in engines]
    metafunc.parametrize("bench_case,bench_engine", params, ids=[f"{c.name}-{e}" for c, e in params])
