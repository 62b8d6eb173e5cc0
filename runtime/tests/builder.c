/* Test helper: an in-memory artifact writer (see builder.h). */
#include "builder.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void die(const char* what) {
  fprintf(stderr, "builder: %s\n", what);
  exit(2);
}

void tb_raw(tb_bytes_t* b, const void* data, size_t n) {
  if (b->n + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + n) cap *= 2;
    uint8_t* p = realloc(b->p, cap);
    if (!p) die("out of memory");
    b->p = p;
    b->cap = cap;
  }
  if (n) memcpy(b->p + b->n, data, n);
  b->n += n;
}

void tb_u8(tb_bytes_t* b, uint8_t v) { tb_raw(b, &v, 1); }

void tb_u32(tb_bytes_t* b, uint32_t v) {
  uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
  tb_raw(b, x, 4);
}

void tb_u64(tb_bytes_t* b, uint64_t v) {
  tb_u32(b, (uint32_t)v);
  tb_u32(b, (uint32_t)(v >> 32));
}

void tb_str(tb_bytes_t* b, const char* s) {
  tb_u32(b, (uint32_t)strlen(s));
  tb_raw(b, s, strlen(s));
}

void tb_desc(tb_bytes_t* b, uint8_t code, uint8_t bits, uint32_t ndim, const int64_t* shape) {
  tb_u8(b, code);
  tb_u8(b, bits);
  tb_u8(b, 1);
  tb_u8(b, 0);
  tb_u32(b, ndim);
  for (uint32_t i = 0; i < ndim; ++i) tb_u64(b, (uint64_t)shape[i]);
}

void tb_free(tb_bytes_t* b) {
  free(b->p);
  memset(b, 0, sizeof(*b));
}

static void put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t* p, uint64_t v) {
  put32(p, (uint32_t)v);
  put32(p + 4, (uint32_t)(v >> 32));
}
static uint32_t get32(const uint8_t* p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t get64(const uint8_t* p) { return (uint64_t)get32(p) | ((uint64_t)get32(p + 4) << 32); }

void tb_assemble(tb_section_t* sections, int n, tb_bytes_t* out) {
  memset(out, 0, sizeof(*out));
  uint64_t table = 64, pos = table + 48u * (uint64_t)n;
  uint64_t offsets[64];
  for (int i = 0; i < n; ++i) {
    uint64_t a = sections[i].align;
    pos = (pos + a - 1) / a * a;
    offsets[i] = pos;
    pos += sections[i].body.n;
  }
  uint8_t* img = calloc(1, (size_t)pos);
  if (!img) die("out of memory");
  memcpy(img, "TIDEART\0", 8);
  put32(img + 8, 1);
  put32(img + 12, 64);
  put32(img + 16, (uint32_t)n);
  put64(img + 24, table);
  put64(img + 32, pos);
  for (int i = 0; i < n; ++i) {
    uint8_t* e = img + table + 48u * (uint64_t)i;
    put32(e, sections[i].kind);
    put64(e + 8, offsets[i]);
    put64(e + 16, sections[i].body.n);
    put32(e + 28, sections[i].align);
    strncpy((char*)e + 32, sections[i].name, 16);
    if (sections[i].body.n) memcpy(img + offsets[i], sections[i].body.p, sections[i].body.n);
  }
  out->p = img;
  out->n = out->cap = (size_t)pos;
  tb_fix_crcs(img, (size_t)pos, 0);
}

void tb_fix_crcs(uint8_t* image, size_t size, uint32_t skip_kind) {
  if (size < 64) return;
  uint32_t n = get32(image + 16);
  uint64_t table = get64(image + 24);
  if (n > 64 || table > size || 48u * (uint64_t)n > size - table) return;
  for (uint32_t i = 0; i < n; ++i) {
    uint8_t* e = image + table + 48u * i;
    uint64_t off = get64(e + 8), len = get64(e + 16);
    if (get32(e) == skip_kind) continue;
    if (off <= size && len <= size - off) put32(e + 24, tide_crc32(0, image + off, (size_t)len));
  }
  put32(image + 40, 0);
  uint32_t crc = tide_crc32(0, image, 64);
  crc = tide_crc32(crc, image + table, 48u * n);
  put32(image + 40, crc);
}

void tb_layout(const uint8_t* image, tb_layout_t* out) {
  out->num_sections = (int)get32(image + 16);
  uint64_t table = get64(image + 24);
  for (int i = 0; i < out->num_sections; ++i) {
    const uint8_t* e = image + table + 48u * (uint64_t)i;
    out->kind[i] = get32(e);
    out->offset[i] = get64(e + 8);
    out->size[i] = get64(e + 16);
  }
}

void tb_config_default(tb_config_t* c, const char* kernels_path) {
  memset(c, 0, sizeof(*c));
  c->kernels_path = kernels_path;
  c->version = 1;
  c->target_kind = 1;
  c->host_arch = tide_host_arch();
  c->cpu_features = 0;
  c->device_arch = "";
}

static void read_file(const char* path, tb_bytes_t* out) {
  FILE* f = fopen(path, "rb");
  if (!f) die("cannot open the test kernel library");
  uint8_t buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) tb_raw(out, buf, n);
  fclose(f);
}

/* The dtype and shapes used below. */
#define F32 2, 32
static const int64_t k_s4[1] = {4};
static const int64_t k_s22[2] = {2, 2};
static const int64_t k_s1000[1] = {1000};

static void buffer(tb_bytes_t* b, uint8_t kind, uint32_t index, uint64_t offset, uint32_t ndim, const int64_t* shape) {
  tb_u8(b, kind);
  tb_u32(b, index);
  tb_u64(b, offset);
  tb_desc(b, F32, ndim, shape);
}

static void io(tb_bytes_t* b, const char* name, uint32_t buf, uint32_t role) {
  tb_str(b, name);
  tb_u32(b, buf);
  tb_u32(b, role);
}

/* A kernel call whose arguments are all buffers. */
static void call(tb_bytes_t* b, uint32_t kernel, int n, const int64_t* bufs) {
  tb_u8(b, 0);
  tb_u32(b, kernel);
  tb_u32(b, (uint32_t)n);
  for (int i = 0; i < n; ++i) {
    tb_u8(b, 0);
    tb_u64(b, (uint64_t)bufs[i]);
  }
}

enum { K_ADD, K_SCALE, K_FAIL, K_ACCUMULATE, K_PAR_REVERSE, K_NESTED_PAR, K_MANY_TASKS, K_BARRIER_MANY, K_COUNT };
static const char* const k_kernels[K_COUNT] = {"add",         "scale",      "fail",       "accumulate",
                                               "par_reverse", "nested_par", "many_tasks", "barrier_many"};

/* scale(x, y, k): a call with two buffers and an int64 immediate. */
static void call_scale(tb_bytes_t* b, int64_t x, int64_t y, int64_t k) {
  tb_u8(b, 0);
  tb_u32(b, K_SCALE);
  tb_u32(b, 3);
  tb_u8(b, 0);
  tb_u64(b, (uint64_t)x);
  tb_u8(b, 0);
  tb_u64(b, (uint64_t)y);
  tb_u8(b, 1);
  tb_u64(b, (uint64_t)k);
}

/*
 * Entries:
 *   main(x f32[4]) -> y = x + w0, z = y * 3, t = x.reshape(2,2) + w1, u = t flattened, times 1
 *   step(x f32[4], acc STATE) -> acc_out STATE (acc += x), snapshot = acc + w0
 *   fail(x f32[4]) -> y: add, then the fail kernel
 *   par(x f32[1000]) -> y = reverse(x) * 2 (workspace + barrier), z = x * 2 (nested), w = x + 1
 *   barrier() -> (): a barrier over more tasks than threads (must fail cleanly)
 */
static void build_plan(const tb_config_t* c, tb_bytes_t* p) {
  tb_u32(p, K_COUNT + (c->extra_missing_kernel ? 1u : 0u));
  for (int i = 0; i < K_COUNT; ++i) {
    int stub = c->cuda_stubs && (i == K_ADD || i == K_ACCUMULATE);
    tb_str(p, stub ? (i == K_ADD ? "cuda_add" : "cuda_accumulate") : k_kernels[i]);
  }
  if (c->extra_missing_kernel) tb_str(p, "missing");
  tb_u32(p, 2);
  tb_str(p, "w0");
  tb_desc(p, F32, 1, k_s4);
  tb_u64(p, 0);
  tb_u64(p, 16);
  tb_str(p, "w1");
  tb_desc(p, F32, 2, k_s22);
  tb_u64(p, 64);
  tb_u64(p, 16);
  tb_u32(p, 1);
  tb_str(p, "acc");
  tb_desc(p, F32, 1, k_s4);

  tb_u32(p, 5);
  /* main */
  tb_str(p, "main");
  tb_u64(p, 256);
  tb_u32(p, 9);
  buffer(p, 1, 0, 0, 1, k_s4);
  buffer(p, 2, 0, 0, 1, k_s4);
  buffer(p, 0, 0, 0, 1, k_s4);
  buffer(p, 0, 0, 64, 1, k_s4);
  buffer(p, 1, 0, 0, 2, k_s22);
  buffer(p, 2, 1, 0, 2, k_s22);
  buffer(p, 0, 0, 128, 2, k_s22);
  buffer(p, 0, 0, 128, 1, k_s4);
  buffer(p, 0, 0, 192, 1, k_s4);
  tb_u32(p, 1);
  io(p, "x", 0, 0);
  tb_u32(p, 4);
  io(p, "y", 2, 0);
  io(p, "z", 3, 0);
  io(p, "t", 6, 0);
  io(p, "u", 8, 0);
  tb_u32(p, 4);
  call(p, K_ADD, 3, (int64_t[]){c->bad_arg_index ? 99 : 0, 1, 2});
  call_scale(p, 2, 3, 3);
  call(p, K_ADD, 3, (int64_t[]){4, 5, 6});
  call_scale(p, 7, 8, 1);
  /* step */
  tb_str(p, "step");
  tb_u64(p, 64);
  tb_u32(p, 4);
  buffer(p, 1, 0, 0, 1, k_s4);
  buffer(p, 3, 0, 0, 1, k_s4);
  buffer(p, 0, 0, 0, 1, k_s4);
  buffer(p, 2, 0, 0, 1, k_s4);
  tb_u32(p, 2);
  io(p, "x", 0, 0);
  io(p, "acc", 1, 1);
  tb_u32(p, 2);
  io(p, "acc_out", 1, 1);
  io(p, "snapshot", 2, 0);
  tb_u32(p, 2);
  call(p, K_ACCUMULATE, 2, (int64_t[]){1, 0});
  call(p, K_ADD, 3, (int64_t[]){1, 3, 2});
  /* fail */
  tb_str(p, "fail");
  tb_u64(p, 64);
  tb_u32(p, 3);
  buffer(p, 1, 0, 0, 1, k_s4);
  buffer(p, 2, 0, 0, 1, k_s4);
  buffer(p, 0, 0, 0, 1, k_s4);
  tb_u32(p, 1);
  io(p, "x", 0, 0);
  tb_u32(p, 1);
  io(p, "y", 2, 0);
  tb_u32(p, 2);
  call(p, K_ADD, 3, (int64_t[]){0, 1, 2});
  call(p, K_FAIL, 1, (int64_t[]){0});
  /* par */
  tb_str(p, "par");
  tb_u64(p, 12096);
  tb_u32(p, 4);
  buffer(p, 1, 0, 0, 1, k_s1000);
  buffer(p, 0, 0, 0, 1, k_s1000);
  buffer(p, 0, 0, 4032, 1, k_s1000);
  buffer(p, 0, 0, 8064, 1, k_s1000);
  tb_u32(p, 1);
  io(p, "x", 0, 0);
  tb_u32(p, 3);
  io(p, "y", 1, 0);
  io(p, "z", 2, 0);
  io(p, "w", 3, 0);
  tb_u32(p, 3);
  call(p, K_PAR_REVERSE, 2, (int64_t[]){0, 1});
  call(p, K_NESTED_PAR, 2, (int64_t[]){0, 2});
  call(p, K_MANY_TASKS, 2, (int64_t[]){0, 3});
  /* barrier */
  tb_str(p, "barrier");
  tb_u64(p, 0);
  tb_u32(p, 0);
  tb_u32(p, 0);
  tb_u32(p, 0);
  tb_u32(p, 1);
  call(p, K_BARRIER_MANY, 0, NULL);
}

void tb_build(const tb_config_t* c, tb_bytes_t* out) {
  tb_section_t s[6];
  memset(s, 0, sizeof(s));
  s[0] = (tb_section_t){1, 8, "TARGET", {0}};
  tb_u32(&s[0].body, c->target_kind);
  tb_str(&s[0].body, c->host_arch);
  tb_u64(&s[0].body, c->cpu_features);
  tb_str(&s[0].body, c->device_arch);
  s[1] = (tb_section_t){2, 8, "PLAN", {0}};
  build_plan(c, &s[1].body);
  s[2] = (tb_section_t){5, 8, "METADATA", {0}};
  const char* meta = "{\"name\": \"standard\", \"note\": \"caf\xc3\xa9\"}";
  tb_raw(&s[2].body, meta, strlen(meta));
  s[3] = (tb_section_t){3, 64, "KERNELS_HOST", {0}};
  if (!c->no_kernels_host) read_file(c->kernels_path, &s[3].body);
  s[4] = (tb_section_t){6, 64, "DEVICE_CODE", {0}};
  if (c->device_code) {
    tb_raw(&s[4].body, c->device_code->p, c->device_code->n);
  } else {
    tb_raw(&s[4].body, "opaque device code", 18);
  }
  s[5] = (tb_section_t){4, 4096, "WEIGHTS", {0}};
  const float w0[4] = {1, 2, 3, 4}, w1[4] = {10, 20, 30, 40};
  const uint8_t pad[48] = {0};
  tb_raw(&s[5].body, w0, sizeof(w0));
  tb_raw(&s[5].body, pad, sizeof(pad));
  tb_raw(&s[5].body, w1, sizeof(w1));
  if (c->no_kernels_host) {
    tb_free(&s[3].body);
    s[3] = s[5];
    memset(&s[5], 0, sizeof(s[5]));
  }
  tb_assemble(s, c->no_kernels_host ? 5 : 6, out);
  if (c->version != 1) {
    put32(out->p + 8, c->version);
    tb_fix_crcs(out->p, out->n, 0);
  }
  for (int i = 0; i < 6; ++i) tb_free(&s[i].body);
}

void tb_write_file(const char* path, const uint8_t* data, size_t n) {
  FILE* f = fopen(path, "wb");
  if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) die("cannot write a test artifact");
}

static void dtype4(tb_bytes_t* b, uint8_t code, uint8_t bits) {
  tb_u8(b, code);
  tb_u8(b, bits);
  tb_u8(b, 1);
  tb_u8(b, 0);
}

/* A DEVICE_CODE function record: its argument dtypes (code, bits) and the first `num_tags` of
 * blockIdx.x, threadIdx.x, tir.use_dyn_shared_memory. */
static void device_function(tb_bytes_t* out, const char* name, uint32_t num_args, const uint8_t* const* args,
                            uint32_t num_tags) {
  static const char* const tags[3] = {"blockIdx.x", "threadIdx.x", "tir.use_dyn_shared_memory"};
  tb_str(out, name);
  tb_u32(out, num_args);
  for (uint32_t i = 0; i < num_args; ++i) dtype4(out, args[i][0], args[i][1]);
  tb_u32(out, num_tags);
  for (uint32_t i = 0; i < num_tags; ++i) tb_str(out, tags[i]);
}

static void device_code(tb_bytes_t* out, int for_stubs) {
  memset(out, 0, sizeof(*out));
  tb_raw(out, "TIDECUDA", 8);
  tb_u32(out, 1);
  tb_u32(out, 2);
  const char* archs[2] = {"sm_80", "sm_90"};
  for (int i = 0; i < 2; ++i) {
    char image[64];
    int n = snprintf(image, sizeof(image), "%sfake cubin for %s", for_stubs ? "\177ELF" : "", archs[i]);
    tb_str(out, archs[i]);
    tb_u8(out, 0);
    tb_u64(out, (uint64_t)n);
    tb_raw(out, image, (size_t)n);
  }
  static const uint8_t ptr[2] = {3, 64}, i32[2] = {0, 32}, i64[2] = {0, 64}, f32[2] = {2, 32};
  tb_u32(out, 2);
  if (for_stubs) {
    device_function(out, "add_w_kernel", 3, (const uint8_t* [3]){ptr, ptr, ptr}, 2);
    device_function(out, "accum_kernel", 3, (const uint8_t* [3]){ptr, ptr, i32}, 2);
  } else {
    device_function(out, "vadd_kernel", 4, (const uint8_t* [4]){ptr, ptr, ptr, i32}, 2);
    device_function(out, "vscale_kernel", 3, (const uint8_t* [3]){ptr, f32, i64}, 3);
  }
}

void tb_device_code_default(tb_bytes_t* out) { device_code(out, 0); }

/* The standard model for a device target with DEVICE_CODE `code` (freed here). */
static void build_device(const char* kernels_path, uint32_t target_kind, const char* device_arch, tb_bytes_t* code,
                         int cuda_stubs, tb_bytes_t* out) {
  tb_config_t c;
  tb_config_default(&c, kernels_path);
  c.target_kind = target_kind;
  c.device_arch = device_arch;
  c.device_code = code;
  c.cuda_stubs = cuda_stubs;
  c.no_kernels_host = target_kind == 3;
  tb_build(&c, out);
  tb_free(code);
}

void tb_build_cuda_stubs(const char* kernels_path, tb_bytes_t* out) {
  tb_bytes_t code;
  device_code(&code, 1);
  build_device(kernels_path, 2, "sm_80,sm_90", &code, 1, out);
}

void tb_build_ascend(const char* kernels_path, tb_bytes_t* out) {
  /* the standard plan's kernels with the argument kinds of their calls (0 buffer, 1 immediate) */
  static const struct {
    const char* name;
    uint32_t block_dim;
    const char* kinds;
  } k[K_COUNT] = {{"add", 8, "000"},        {"scale", 4, "001"},      {"fail", 1, "0"},
                  {"accumulate", 2, "00"},  {"par_reverse", 8, "00"}, {"nested_par", 8, "00"},
                  {"many_tasks", 8, "00"},  {"barrier_many", 1, ""}};
  tb_bytes_t code;
  memset(&code, 0, sizeof(code));
  tb_raw(&code, "TIDEASCN", 8);
  tb_u32(&code, 1);
  tb_str(&code, "Ascend910B1");
  tb_u32(&code, K_COUNT);
  for (int i = 0; i < K_COUNT; ++i) {
    tb_str(&code, k[i].name);
    tb_u32(&code, k[i].block_dim);
    uint32_t n = (uint32_t)strlen(k[i].kinds);
    tb_u32(&code, n);
    for (uint32_t a = 0; a < n; ++a) tb_u8(&code, (uint8_t)(k[i].kinds[a] - '0'));
    char text[128];
    int len = snprintf(text, sizeof(text), "module {\n  func.func @%s() {\n    return\n  }\n}\n", k[i].name);
    tb_u64(&code, (uint64_t)len);
    tb_raw(&code, text, (size_t)len);
    len = snprintf(text, sizeof(text), "TIDEBIN %s", k[i].name);
    tb_u64(&code, (uint64_t)len);
    tb_raw(&code, text, (size_t)len);
  }
  build_device(kernels_path, 3, "Ascend910B1", &code, 0, out);
}

void tb_build_cuda(const char* kernels_path, tb_bytes_t* out) {
  tb_bytes_t code;
  tb_device_code_default(&code);
  build_device(kernels_path, 2, "sm_80,sm_90", &code, 0, out);
}
