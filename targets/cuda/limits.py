"""The CUDA launch shapes and limits tide's schedules share (one definition each)."""

THREADS = 128  # threads per block of the SIMT schedules (attention, indexer, compressor, MoE, RoPE)
ROW_THREADS = 64  # threads per block of kernels that run one independent row per thread (top-k, state scatter)
WARP = 32
# Shared memory a block may use statically: the limit every arch launches without opt-in. Kernels
# that need more use dynamic shared memory (the runtime opts in per kernel).
STATIC_SHARED_BYTES = 48 * 1024
