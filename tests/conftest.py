"""Test order: the files that take longest (a whole-model compile in their fixtures) run first, so that
the parallel workers of ./test.sh (pytest-xdist, one file per worker at a time) share the long ones
at the start instead of one worker finishing alone with them. The order inside a file is kept."""

from __future__ import annotations

# longest first (about 1-3 minutes each on a 2-core machine); the two CUDA files share one compiled
# artifact (tide_test_models.tiny_cuda_artifact), so they sit apart: the second finds it built
LONG_FILES = (
    "test_onnx_conformance.py",
    "test_v4_spine.py",
    "test_quantized_model.py",
    "test_runtime_cuda.py",
    "test_ascend_ops.py",
    "test_moe_kernels.py",
    "test_ascend_model.py",
    "test_runtime_ascend.py",
    "test_compile_cuda.py",
    "test_export.py",
    "test_export_quantized.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: file order kept otherwise
