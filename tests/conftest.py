"""Test order: the files that take longest (whole-model compiles, many kernel builds) run first, so that
the parallel workers of ./test.sh (pytest-xdist, one file per worker at a time) share the long ones
at the start instead of one worker finishing alone with them. The order inside a file is kept."""

from __future__ import annotations

# longest first, by their total time in a two-worker run on a 2-core machine (seconds: 263, 194,
# 189, 116, 99, 99, 95, 92, 92, 60, 56, 55, 31); ./test.sh keeps this order
# (--no-loadscope-reorder: xdist would otherwise order files by their number of tests). The two CUDA
# files share one compiled artifact (tide_test_models.tiny_cuda_artifact): test_compile_cuda.py, short,
# runs late and finds it built; test_moe_kernels.py and test_v4_spine.py share the tiny CPU artifact
# (tide_test_models.tiny_cpu_model) the same way.
LONG_FILES = (
    "test_attention_kernels.py",
    "test_onnx_conformance.py",
    "test_moe_kernels.py",
    "test_ascend_ops.py",
    "test_runtime_cuda.py",
    "test_v4_spine.py",
    "test_ascend_model.py",
    "test_export.py",
    "test_quantized_model.py",
    "test_ascend_kernels.py",
    "test_runtime_ascend.py",
    "test_onnx_ops.py",
    "test_export_quantized.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: file order kept otherwise
