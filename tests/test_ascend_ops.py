"""Every tide kernel compiled for Ascend against the same float64 references as its CPU and CUDA builds.

Each benchmark case at the ``tiny`` shapes (``bench/cases.py``: RMSNorm, RoPE, sink attention and
its sparse variant, the indexer with its top-k, the compressor, both routers, MoE experts and the
shared expert, top-k) is compiled with ``tide compile --target ascend`` for both SoCs (bishengir
accepts every kernel), run through the CPU runner (``tide.targets.ascend.cpu_runner``: the
artifact's own MLIR of each kernel, in a child process with ``MALLOC_PERTURB_`` set) on the case's
seeded inputs, and checked with
``bench.harness.check_outputs`` (relative 1e-4; top-k picks by their scores), as ``tide bench``
checks the CPU and CUDA kernels. Every case runs for the 910B; for the 950 the default run takes the
first decode and the first prefill case of each kernel, ``-m heavy`` the others.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tide.targets.ascend import toolchain

pytestmark = pytest.mark.skipif(toolchain.missing_cpu_runner() is not None,
                                reason=str(toolchain.missing_cpu_runner()))

SOCS = ("Ascend910B1", "Ascend950PR_9599")


def _runs():
    """(soc, case) pairs: every case for the 910B; for the 950 each kernel's first decode and first
    prefill case, the other cases heavy."""
    from tide.bench.cases import all_cases

    cases = all_cases(["tiny"])
    firsts = {(c.kernel, c.phase): c.name for c in reversed(cases)}
    runs = [pytest.param(SOCS[0], c, id=f"{SOCS[0]}-{c.name}") for c in cases]
    for c in cases:
        marks = () if firsts[(c.kernel, c.phase)] == c.name else (pytest.mark.heavy,)
        runs.append(pytest.param(SOCS[1], c, id=f"{SOCS[1]}-{c.name}", marks=marks))
    return runs


@pytest.mark.parametrize("soc, case", _runs())
def test_kernel_matches_reference(soc, case, tmp_path):
    from tide.bench import harness
    from tide.bench.cases import KERNELS
    from tide.bench.prepare import write_onnx
    from tide.compiler.driver import CompileOptions, compile_model

    kdef = KERNELS[case.kernel]
    weights = kdef.make_weights(case, np.random.default_rng(case.seed))
    onnx_path = tmp_path / "model.onnx"
    write_onnx(case, weights, onnx_path)
    feeds = kdef.make_inputs(case, np.random.default_rng([1, case.seed]))
    want = kdef.reference(case, feeds, weights)
    np.savez(tmp_path / "in.npz", **feeds)
    art = tmp_path / f"{soc}.tide"
    compile_model(str(onnx_path), str(art), CompileOptions(target="ascend", arch=soc, progress=False))
    out = tmp_path / f"{soc}-out.npz"
    proc = subprocess.run([sys.executable, "-m", "tide.targets.ascend.cpu_runner", str(art), "--inputs",
                           str(tmp_path / "in.npz"), "--outputs", str(out)], capture_output=True, text=True,
                          env={**os.environ, "MALLOC_PERTURB_": "165"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as got:
        harness.check_outputs(case.outputs, {k: got[k] for k in got.files}, want, kdef.paired)


def test_cpu_runner_command_line_errors(tmp_path):
    run = [sys.executable, "-m", "tide.targets.ascend.cpu_runner", str(tmp_path / "none.tide")]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "give --prompt (decode models) or --inputs with --outputs" in proc.stderr
    proc = subprocess.run(run + ["--prompt", "1", "--inputs", "x.npz"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "give --prompt" in proc.stderr
    proc = subprocess.run(run + ["--prompt", "1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "none.tide" in proc.stderr and "Traceback" not in proc.stderr
