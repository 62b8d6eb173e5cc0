/* Block-level additions to tests/mma_warp_emulator.h, for tide's attention kernels
 * (tests/test_attention_kernels.py): __syncthreads as a barrier of the whole thread block, the
 * integer min/max, conversions and vector types the generated source uses, and a launcher that
 * runs one thread block at a time with a CPU thread per CUDA thread. The test rewrites the
 * kernel's __shared__ arrays and its dynamic shared memory into function statics: one copy, seen
 * by every thread of the running block. */
#include "mma_warp_emulator.h"

typedef unsigned char uchar;
static thread_local std::barrier<> *tide_emu_block_barrier;

static inline void __syncthreads() { tide_emu_block_barrier->arrive_and_wait(); }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline int64_t min(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max(int64_t a, int64_t b) { return a > b ? a : b; }
static inline nv_bfloat16 __float2bfloat16_rn(float f) { return nv_bfloat16(f); }
struct alignas(16) float4 { float x, y, z, w; };
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

/* Runs kernel() on a grid of `blocks` blocks of (nx, ny) threads, block after block; the warps
 * (for mma.sync) are the rows of 32 threads along x. */
template <typename F>
static void tide_emu_launch_blocks(unsigned blocks, unsigned nx, unsigned ny, F kernel) {
  unsigned warps = (nx * ny + 31) / 32;
  for (unsigned bx = 0; bx < blocks; ++bx) {
    std::barrier<> block(nx * ny);
    std::vector<tide_emu_warp> ws(warps);
    std::vector<std::unique_ptr<std::barrier<>>> bars;
    for (unsigned w = 0; w < warps; ++w) {
      bars.push_back(std::make_unique<std::barrier<>>(32));
      ws[w].sync = bars.back().get();
    }
    std::vector<std::thread> threads;
    for (unsigned ty = 0; ty < ny; ++ty)
      for (unsigned tx = 0; tx < nx; ++tx)
        threads.emplace_back([=, &ws, &block] {
          blockIdx = {bx, 0, 0};
          threadIdx = {tx, ty, 0};
          tide_emu_my_warp = &ws[(ty * nx + tx) / 32];
          tide_emu_block_barrier = &block;
          kernel();
        });
    for (auto &t : threads) t.join();
  }
}
