"""Every tide kernel compiled for Ascend against the same float64 references as its CPU and CUDA builds.

Each benchmark case at the ``tiny`` shapes (``bench/cases.py``: RMSNorm, RoPE, sink attention and
its sparse variant, the indexer with its top-k, the compressor, both routers, MoE experts and the
shared expert, top-k) is compiled with ``tide compile --target ascend`` for both SoCs (bishengir
accepts every kernel), run through the CPU runner (``tide.targets.ascend.cpu_runner``: the
artifact's own MLIR of each kernel) on the case's seeded inputs, and checked with
``bench.harness.check_outputs`` (relative 1e-4; top-k picks by their scores), as ``tide bench``
checks the CPU and CUDA kernels.
"""

from __future__ import annotations

import numpy as np
import pytest

from tide.targets.ascend import toolchain

pytestmark = pytest.mark.skipif(toolchain.missing_cpu_runner() is not None,
                                reason=str(toolchain.missing_cpu_runner()))

SOCS = ("Ascend910B1", "Ascend950PR_9599")


def _cases():
    from tide.bench.cases import all_cases

    return all_cases(["tiny"])


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.name)
def test_kernel_matches_reference_on_both_socs(case, tmp_path):
    from tide.bench import harness
    from tide.bench.cases import KERNELS
    from tide.bench.prepare import write_onnx
    from tide.compiler.driver import CompileOptions, compile_model
    from tide.targets.ascend.cpu_runner import CpuRunner

    kdef = KERNELS[case.kernel]
    weights = kdef.make_weights(case, np.random.default_rng(case.seed))
    onnx_path = tmp_path / "model.onnx"
    write_onnx(case, weights, onnx_path)
    feeds = kdef.make_inputs(case, np.random.default_rng([1, case.seed]))
    want = kdef.reference(case, feeds, weights)
    for soc in SOCS:
        art = tmp_path / f"{soc}.tide"
        compile_model(str(onnx_path), str(art), CompileOptions(target="ascend", arch=soc, progress=False))
        got = CpuRunner(str(art)).run("main", feeds)
        harness.check_outputs(case.outputs, got, want, kdef.paired)
