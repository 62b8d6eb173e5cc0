/* Host architecture and the CPU features named in the TARGET section. */
#include "internal.h"

static const char* const k_feature_names[TIDE_CPU_FEATURE_COUNT] = {
    "sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vnni",
    "avx512bf16",
};

const char* tide_cpu_feature_name(int bit) {
  return (bit >= 0 && bit < TIDE_CPU_FEATURE_COUNT) ? k_feature_names[bit] : "unknown";
}

const char* tide_host_arch(void) {
#if defined(__x86_64__)
  return "x86_64";
#elif defined(__aarch64__)
  return "aarch64";
#else
  return "unknown";
#endif
}

uint64_t tide_host_cpu_features(void) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  uint64_t f = 0;
  /* __builtin_cpu_supports also checks that the OS saves the AVX / AVX-512 register state. */
  if (__builtin_cpu_supports("sse4.2")) f |= 1u << 0;
  if (__builtin_cpu_supports("avx")) f |= 1u << 1;
  if (__builtin_cpu_supports("avx2")) f |= 1u << 2;
  if (__builtin_cpu_supports("fma")) f |= 1u << 3;
  if (__builtin_cpu_supports("avx512f")) f |= 1u << 4;
  if (__builtin_cpu_supports("avx512bw")) f |= 1u << 5;
  if (__builtin_cpu_supports("avx512dq")) f |= 1u << 6;
  if (__builtin_cpu_supports("avx512vl")) f |= 1u << 7;
  if (__builtin_cpu_supports("avx512vnni")) f |= 1u << 8;
  if (__builtin_cpu_supports("avx512bf16")) f |= 1u << 9;
  return f;
#else
  /* No feature bits are defined for other architectures: artifacts for them must require none. */
  return 0;
#endif
}
