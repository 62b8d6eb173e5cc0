/*
 * Test helper: assembles tide artifacts in memory (an independent, minimal writer of
 * docs/artifact-format.md), used by the C tests and the fuzzer. Not part of the runtime.
 */
#ifndef TIDE_TESTS_BUILDER_H_
#define TIDE_TESTS_BUILDER_H_

#include <stddef.h>
#include <stdint.h>

typedef struct tb_bytes_s {
  uint8_t* p;
  size_t n, cap;
} tb_bytes_t;

void tb_raw(tb_bytes_t* b, const void* data, size_t n);
void tb_u8(tb_bytes_t* b, uint8_t v);
void tb_u32(tb_bytes_t* b, uint32_t v);
void tb_u64(tb_bytes_t* b, uint64_t v);
void tb_str(tb_bytes_t* b, const char* s);
/* dtype + shape: tb_desc(b, 2, 32, 2, (int64_t[]){2, 3}) */
void tb_desc(tb_bytes_t* b, uint8_t code, uint8_t bits, uint32_t ndim, const int64_t* shape);
void tb_free(tb_bytes_t* b);

typedef struct tb_section_s {
  uint32_t kind;
  uint32_t align;
  const char* name;
  tb_bytes_t body;
} tb_section_t;

/* Header + table at 64 + each section at its alignment; fills in every CRC. */
void tb_assemble(tb_section_t* sections, int n, tb_bytes_t* out);

/* Recomputes the CRC of every section whose table entry lies inside the image, except sections of
 * kind skip_kind (0: none), then the header's. */
void tb_fix_crcs(uint8_t* image, size_t size, uint32_t skip_kind);

/* Section layout of an assembled image, for targeted mutations. */
typedef struct tb_layout_s {
  int num_sections;
  uint32_t kind[64];
  uint64_t offset[64], size[64];
} tb_layout_t;
void tb_layout(const uint8_t* image, tb_layout_t* out);

/* The standard test model over tests/test_kernels.c (see builder.c for its entries). */
typedef struct tb_config_s {
  const char* kernels_path;
  uint32_t version;
  uint32_t target_kind;
  const char* host_arch;
  uint64_t cpu_features;
  const char* device_arch;
  int extra_missing_kernel; /* add a kernel "missing" with no symbol in the library */
  int bad_arg_index;        /* op argument refers to buffer 99 */
  const tb_bytes_t* device_code; /* DEVICE_CODE body; NULL: 18 opaque bytes (ignored on cpu) */
  int no_kernels_host;      /* leave out the KERNELS_HOST section (ascend) */
  int cuda_stubs;           /* kernels add and accumulate are the CUDA host stubs cuda_add and cuda_accumulate */
} tb_config_t;

/* A DEVICE_CODE body (docs/artifact-format.md): fake cubin images for sm_80 and sm_90 and two
 * functions, vadd_kernel(handle, handle, handle, int32; blockIdx.x, threadIdx.x) and
 * vscale_kernel(handle, float32, int64; blockIdx.x, threadIdx.x, tir.use_dyn_shared_memory). */
void tb_device_code_default(tb_bytes_t* out);
/* The standard model as a cuda artifact for sm_80,sm_90 with tb_device_code_default. */
void tb_build_cuda(const char* kernels_path, tb_bytes_t* out);
/* The standard model as a cuda artifact whose add and accumulate kernels are CUDA host stubs
 * (test_kernels.c) launching add_w_kernel / accum_kernel, with cubin images (ELF headers only) for
 * sm_80 and sm_90: entries step and fail run on a cuda device (the stand-in driver emulates both). */
void tb_build_cuda_stubs(const char* kernels_path, tb_bytes_t* out);
/* The standard model as an ascend artifact for Ascend910B1: DEVICE_CODE with each kernel's HIVM
 * placeholder, a "TIDEBIN <name>" binary (what the AscendCL stand-in accepts), block_dim and the
 * argument kinds of its calls; no KERNELS_HOST. */
void tb_build_ascend(const char* kernels_path, tb_bytes_t* out);

void tb_config_default(tb_config_t* c, const char* kernels_path);
/* Exits the process with a message if the kernel library cannot be read. */
void tb_build(const tb_config_t* c, tb_bytes_t* out);
/* Writes bytes to a new file; exits on failure. */
void tb_write_file(const char* path, const uint8_t* data, size_t n);

#endif /* TIDE_TESTS_BUILDER_H_ */
