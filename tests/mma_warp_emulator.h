/* A CPU stand-in for the CUDA names that tide's tensor-core MoE kernels use, so that their
 * generated CUDA source runs on the host (tests/test_moe_kernels.py): a thread per CUDA thread,
 * one thread block at a time, and mma.sync.m16n8k16 (bf16 in, fp32 accumulate) emulated over
 * the 32 lanes of a warp with the PTX ISA fragment layouts. Only what those kernels use. */
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

struct tide_emu_dim3 { unsigned x, y, z; };
static thread_local tide_emu_dim3 blockIdx, threadIdx;

struct nv_bfloat16 {
  uint16_t bits;
  nv_bfloat16() = default;
  nv_bfloat16(float f) {  /* round to nearest even, as __float2bfloat16 */
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    bits = (uint16_t)(u >> 16);
  }
  operator float() const {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

static inline float min(float a, float b) { return a < b ? a : b; }
static inline float max(float a, float b) { return a > b ? a : b; }

/* One warp's fragments between two barriers. */
struct tide_emu_warp {
  uint32_t a[32][4], b[32][2];
  std::barrier<> *sync;
};
static thread_local tide_emu_warp *tide_emu_my_warp;

static inline float tide_emu_half(uint32_t reg, int j) {
  nv_bfloat16 v;
  v.bits = (uint16_t)(j ? reg >> 16 : reg & 0xffffu);
  return (float)v;
}

/* A (16x16 row): lane 4g+q holds rows g, g+8 x columns 2q, 2q+1 (regs 0, 1) and 2q+8, 2q+9
 * (regs 2, 3). B (16x8 col): lane 4g+q holds column g x rows 2q, 2q+1 (reg 0), 2q+8, 2q+9 (reg 1).
 * C (16x8): lane 4g+q holds rows g, g+8 x columns 2q, 2q+1. */
static void tide_emu_mma(const uint32_t *a, const uint32_t *b, float *c) {
  tide_emu_warp *w = tide_emu_my_warp;
  int lane = (int)threadIdx.x;
  std::memcpy(w->a[lane], a, sizeof w->a[lane]);
  std::memcpy(w->b[lane], b, sizeof w->b[lane]);
  w->sync->arrive_and_wait();
  int g = lane / 4, q = lane % 4;
  for (int i = 0; i < 4; ++i) {
    int row = g + (i / 2) * 8, col = 2 * q + i % 2;
    float sum = c[i];
    for (int k = 0; k < 16; ++k) {
      float av = tide_emu_half(w->a[(row % 8) * 4 + (k % 8) / 2][(k / 8) * 2 + row / 8], k % 2);
      float bv = tide_emu_half(w->b[col * 4 + (k % 8) / 2][k / 8], k % 2);
      sum += av * bv;
    }
    c[i] = sum;
  }
  w->sync->arrive_and_wait();
}

/* Runs kernel(args...) on a grid of `blocks` blocks of (32, warps) threads. */
template <typename F>
static void tide_emu_launch(unsigned blocks, unsigned warps, F kernel) {
  for (unsigned bx = 0; bx < blocks; ++bx) {
    std::vector<tide_emu_warp> ws(warps);
    std::vector<std::unique_ptr<std::barrier<>>> bars;
    for (unsigned w = 0; w < warps; ++w) {
      bars.push_back(std::make_unique<std::barrier<>>(32));
      ws[w].sync = bars.back().get();
    }
    std::vector<std::thread> threads;
    for (unsigned ty = 0; ty < warps; ++ty)
      for (unsigned tx = 0; tx < 32; ++tx)
        threads.emplace_back([=, &ws] {
          blockIdx = {bx, 0, 0};
          threadIdx = {tx, ty, 0};
          tide_emu_my_warp = &ws[ty];
          kernel();
        });
    for (auto &t : threads) t.join();
  }
}
