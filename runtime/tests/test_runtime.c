/*
 * C tests of the runtime, built with the runtime sources under ASan + UBSan.
 *   test_runtime <libtest_kernels.so> <scratch dir> <libcuda_standin.so> <libacl_standin.so>
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "builder.h"
#include "crc32_table.h"
#include "internal.h"
#include "tide/runtime.h"

static int g_failures;
static const char* g_kernels;
static const char* g_dir;
static const char* g_standin;
static const char* g_acl_standin;

#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                        \
    }                                                                      \
  } while (0)

/* Expects success; prints and counts the status otherwise. */
#define OK(expr)                                                                                    \
  do {                                                                                              \
    tide_status_t st_ = (expr);                                                                     \
    if (st_) {                                                                                      \
      fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #expr, tide_status_message(st_)); \
      tide_status_free(st_);                                                                        \
      ++g_failures;                                                                                 \
    }                                                                                               \
  } while (0)

/* Expects a status with `code` whose message contains `needle`. */
static void expect_error(tide_status_t st, tide_status_code_t code, const char* needle, const char* what, int line) {
  if (!st) {
    fprintf(stderr, "line %d: %s: expected an error containing '%s', got OK\n", line, what, needle);
    ++g_failures;
    return;
  }
  if (tide_status_code(st) != code || !strstr(tide_status_message(st), needle)) {
    fprintf(stderr, "line %d: %s: expected code %d containing '%s', got code %d: %s\n", line, what, code, needle,
            tide_status_code(st), tide_status_message(st));
    ++g_failures;
  }
  tide_status_free(st);
}
#define EXPECT_ERROR(expr, code, needle) expect_error((expr), (code), (needle), #expr, __LINE__)

static char* scratch_path(const char* name) {
  static char path[4096];
  snprintf(path, sizeof(path), "%s/%s", g_dir, name);
  return path;
}

static tide_model_t* load_bytes(const tb_bytes_t* img, const tide_model_options_t* opts, tide_status_t* out_st) {
  const char* path = scratch_path("t.tide");
  tb_write_file(path, img->p, img->n);
  tide_model_t* m = NULL;
  *out_st = tide_model_load_file(path, opts, &m);
  return m;
}

static tide_model_t* load_standard(void) {
  tb_config_t c;
  tb_config_default(&c, g_kernels);
  tb_bytes_t img;
  tb_build(&c, &img);
  tide_status_t st;
  tide_model_t* m = load_bytes(&img, NULL, &st);
  tb_free(&img);
  OK(st);
  return m;
}

/* A session on the standard artifact, *out_model holding its own reference (the caller releases
 * both); NULL when loading or creating failed (already counted as a failure). */
static tide_session_t* standard_session(tide_model_t** out_model) {
  *out_model = load_standard();
  if (!*out_model) return NULL;
  tide_session_t* s = NULL;
  OK(tide_session_create(*out_model, NULL, &s));
  if (!s) {
    tide_model_release(*out_model);
    *out_model = NULL;
  }
  return s;
}

static void* aligned(size_t n) {
  void* p = NULL;
  if (posix_memalign(&p, 64, n ? n : 64) != 0) abort();
  memset(p, 0, n);
  return p;
}

static tide_tensor_t f32_tensor(void* data, int32_t ndim, const int64_t* shape) {
  tide_tensor_t t;
  memset(&t, 0, sizeof(t));
  t.data = data;
  t.dtype = (tide_dtype_t){2, 32, 1};
  t.ndim = ndim;
  memcpy(t.shape, shape, sizeof(int64_t) * (size_t)ndim);
  return t;
}

static int32_t entry(tide_model_t* m, const char* name) {
  int32_t e = -1;
  OK(tide_model_find_entry(m, name, &e));
  return e;
}

/* ---- tests --------------------------------------------------------------------------------- */

static void test_crc32(void) {
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ 0xEDB88320u : (c >> 1);
    CHECK(k_crc32_table[0][i] == c);
    for (int t = 1; t < 8; ++t) {
      CHECK(k_crc32_table[t][i] == ((k_crc32_table[t - 1][i] >> 8) ^ k_crc32_table[0][k_crc32_table[t - 1][i] & 0xFF]));
    }
  }
  CHECK(tide_crc32(0, "123456789", 9) == 0xCBF43926u);
  /* Incremental and unaligned use agree with one pass. */
  uint8_t buf[1000];
  for (int i = 0; i < 1000; ++i) buf[i] = (uint8_t)(i * 7 + 3);
  uint32_t whole = tide_crc32(0, buf, sizeof(buf));
  CHECK(tide_crc32(tide_crc32(0, buf, 13), buf + 13, sizeof(buf) - 13) == whole);
  CHECK(tide_crc32(0, NULL, 0) == 0);
}

static void test_status(void) {
  CHECK(tide_status_code(NULL) == TIDE_STATUS_OK);
  CHECK(strcmp(tide_status_message(NULL), "OK") == 0);
  tide_status_free(NULL);
  tide_status_t st = tide_status_wrap(tide_make_status(TIDE_STATUS_NOT_FOUND, "inner %d", 7), "outer");
  CHECK(tide_status_code(st) == TIDE_STATUS_NOT_FOUND);
  CHECK(strcmp(tide_status_message(st), "outer: inner 7") == 0);
  tide_status_free(st);
}

static void test_load_and_query(void) {
  tide_model_t* m = load_standard();
  if (!m) return;
  CHECK(strcmp(tide_model_target(m), "cpu") == 0);
  CHECK(strstr(tide_model_metadata(m), "\"standard\"") != NULL);
  CHECK(tide_model_entry_count(m) == 5);
  CHECK(strcmp(tide_model_entry_name(m, 0), "main") == 0);
  CHECK(tide_model_entry_name(m, 5) == NULL);
  CHECK(tide_model_input_count(m, -1) == -1);
  int32_t e = entry(m, "step");
  CHECK(e == 1);
  EXPECT_ERROR(tide_model_find_entry(m, "nope", &e), TIDE_STATUS_NOT_FOUND, "no entry 'nope' (the model has 'main'");
  CHECK(tide_model_input_count(m, 1) == 2);
  CHECK(tide_model_output_count(m, 0) == 4);
  tide_tensor_info_t info;
  OK(tide_model_input_info(m, 1, 1, &info));
  CHECK(strcmp(info.name, "acc") == 0 && info.role == TIDE_IO_STATE && info.state_index == 0);
  CHECK(info.ndim == 1 && info.shape[0] == 4 && info.dtype.code == 2 && info.dtype.bits == 32);
  OK(tide_model_output_info(m, 0, 2, &info));
  CHECK(strcmp(info.name, "t") == 0 && info.ndim == 2 && info.role == TIDE_IO_DATA && info.state_index == -1);
  EXPECT_ERROR(tide_model_output_info(m, 0, 4, &info), TIDE_STATUS_NOT_FOUND, "output index 4 out of range");
  EXPECT_ERROR(tide_model_input_info(m, 9, 0, &info), TIDE_STATUS_NOT_FOUND, "entry index 9");
  CHECK(tide_model_state_count(m) == 1);
  OK(tide_model_state_info(m, 0, &info));
  CHECK(strcmp(info.name, "acc") == 0 && info.state_index == 0);
  uint64_t arena, state, weights;
  tide_model_memory(m, &arena, &state, &weights);
  CHECK(arena == 12096 && state == 64 && weights == 80);
  tide_model_release(m);
}

static void test_options(void) {
  tide_model_options_t o;
  tide_model_options_initialize(&o);
  CHECK(o.struct_size == sizeof(o) && o.verify_checksums == 1 && o.allowed_cpu_features == ~(uint64_t)0);
  o.struct_size = sizeof(o) + 8;
  tide_model_t* m = NULL;
  EXPECT_ERROR(tide_model_load_file(scratch_path("x"), &o, &m), TIDE_STATUS_INVALID_ARGUMENT, "struct_size");
  EXPECT_ERROR(tide_model_load_file(scratch_path("does-not-exist.tide"), NULL, &m), TIDE_STATUS_NOT_FOUND,
               "does-not-exist.tide");
  EXPECT_ERROR(tide_model_load_file(g_dir, NULL, &m), TIDE_STATUS_INVALID_ARGUMENT, "not a regular file");
  tb_write_file(scratch_path("empty.tide"), (const uint8_t*)"", 0);
  EXPECT_ERROR(tide_model_load_file(scratch_path("empty.tide"), NULL, &m), TIDE_STATUS_DATA_LOSS, "empty");
  CHECK(m == NULL);

  tide_model_t* model = load_standard();
  if (!model) return;
  tide_session_options_t so;
  tide_session_options_initialize(&so);
  so.num_threads = -1;
  tide_session_t* s = NULL;
  EXPECT_ERROR(tide_session_create(model, &so, &s), TIDE_STATUS_INVALID_ARGUMENT, "num_threads -1");
  so.num_threads = 3;
  OK(tide_session_create(model, &so, &s));
  CHECK(tide_session_num_threads(s) == 3);
  tide_session_release(s);
  OK(tide_session_create(model, NULL, &s));
  CHECK(tide_session_num_threads(s) >= 1);
  tide_session_release(s);
  tide_model_release(model);
}

static void test_run_main(void) {
  tide_model_t* m = load_standard();
  if (!m) return;
  tide_session_t* s = NULL;
  OK(tide_session_create(m, NULL, &s));
  tide_model_release(m); /* the session keeps it alive */
  if (!s) return;
  float* x = aligned(16);
  for (int i = 0; i < 4; ++i) x[i] = (float)(i + 1) * 0.5f;
  tide_tensor_t in = f32_tensor(x, 1, (int64_t[]){4});
  tide_tensor_t out[4];
  for (int rep = 0; rep < 3; ++rep) {
    OK(tide_session_run(s, 0, &in, 1, out, 4));
    const float w0[4] = {1, 2, 3, 4}, w1[4] = {10, 20, 30, 40};
    for (int i = 0; i < 4; ++i) {
      CHECK(((float*)out[0].data)[i] == x[i] + w0[i]);
      CHECK(((float*)out[1].data)[i] == (x[i] + w0[i]) * 3);
      CHECK(((float*)out[2].data)[i] == x[i] + w1[i]);
      CHECK(((float*)out[3].data)[i] == x[i] + w1[i]);
    }
    CHECK(out[2].ndim == 2 && out[2].shape[0] == 2 && out[2].shape[1] == 2);
    CHECK(out[3].ndim == 1 && out[3].dtype.code == 2 && out[3].dtype.bits == 32);
    CHECK((uint8_t*)out[1].data - (uint8_t*)out[0].data == 64); /* views into the arena */
    x[0] += 1.0f;
  }

  /* Input validation: each error leaves the session usable. */
  EXPECT_ERROR(tide_session_run(s, 0, &in, 0, out, 4), TIDE_STATUS_INVALID_ARGUMENT, "entry 'main' takes 1 inputs, got 0");
  EXPECT_ERROR(tide_session_run(s, 0, &in, 1, out, 3), TIDE_STATUS_INVALID_ARGUMENT, "entry 'main' has 4 outputs");
  EXPECT_ERROR(tide_session_run(s, 0, NULL, 1, out, 4), TIDE_STATUS_INVALID_ARGUMENT, "inputs is NULL");
  EXPECT_ERROR(tide_session_run(s, 0, &in, 1, NULL, 4), TIDE_STATUS_INVALID_ARGUMENT, "outputs is NULL");
  EXPECT_ERROR(tide_session_run(s, 7, &in, 1, out, 4), TIDE_STATUS_NOT_FOUND, "entry index 7");
  EXPECT_ERROR(tide_session_run(NULL, 0, &in, 1, out, 4), TIDE_STATUS_INVALID_ARGUMENT, "session is NULL");
  tide_tensor_t bad = in;
  bad.dtype.bits = 16;
  EXPECT_ERROR(tide_session_run(s, 0, &bad, 1, out, 4), TIDE_STATUS_INVALID_ARGUMENT,
               "entry 'main' input 'x': expected float32[4], got float16[4]");
  bad = f32_tensor(x, 2, (int64_t[]){2, 2});
  EXPECT_ERROR(tide_session_run(s, 0, &bad, 1, out, 4), TIDE_STATUS_INVALID_ARGUMENT, "expected float32[4], got float32[2, 2]");
  bad = in;
  bad.ndim = 99;
  EXPECT_ERROR(tide_session_run(s, 0, &bad, 1, out, 4), TIDE_STATUS_INVALID_ARGUMENT, "got rank 99");
  bad = in;
  bad.data = NULL;
  EXPECT_ERROR(tide_session_run(s, 0, &bad, 1, out, 4), TIDE_STATUS_INVALID_ARGUMENT, "data is NULL");
  bad = in;
  bad.data = (uint8_t*)x + 4;
  EXPECT_ERROR(tide_session_run(s, 0, &bad, 1, out, 4), TIDE_STATUS_INVALID_ARGUMENT, "not 64-byte aligned");
  OK(tide_session_run(s, 0, &in, 1, out, 4));
  CHECK(((float*)out[0].data)[1] == x[1] + 2);
  free(x);
  tide_session_release(s);
}

/* Zeroes the WEIGHTS section of the artifact file at path in place (no truncation, no rename). */
static void zero_weights_in_place(const char* path, const tb_bytes_t* img) {
  tb_layout_t lay;
  tb_layout(img->p, &lay);
  for (int i = 0; i < lay.num_sections; ++i) {
    if (lay.kind[i] != TIDE_SECTION_WEIGHTS) continue;
    FILE* f = fopen(path, "r+b");
    CHECK(f != NULL);
    if (!f) return;
    CHECK(fseek(f, (long)lay.offset[i], SEEK_SET) == 0);
    for (uint64_t j = 0; j < lay.size[i]; ++j) CHECK(fputc(0, f) == 0);
    CHECK(fclose(f) == 0);
  }
}

/* The first output of entry main (x + w0) on a fixed x, into y[4]. */
static void run_main_once(tide_model_t* m, float* y) {
  tide_session_t* s = NULL;
  OK(tide_session_create(m, NULL, &s));
  if (!s) return;
  float* x = aligned(16);
  for (int i = 0; i < 4; ++i) x[i] = (float)(i + 1) * 0.25f;
  tide_tensor_t in = f32_tensor(x, 1, (int64_t[]){4});
  tide_tensor_t out[4];
  OK(tide_session_run(s, 0, &in, 1, out, 4));
  for (int i = 0; i < 4; ++i) y[i] = ((float*)out[0].data)[i] - x[i];
  free(x);
  tide_session_release(s);
}

/* copy_weights: a model that copied its weights keeps them when the file's bytes change under it,
 * where a model reading the mapping sees the change; a value other than 0 or 1, or a device
 * artifact, is refused. */
static void test_copy_weights(void) {
  tb_config_t c;
  tb_config_default(&c, g_kernels);
  tb_bytes_t img;
  tb_build(&c, &img);
  tide_model_options_t o;
  tide_model_options_initialize(&o);
  CHECK(o.copy_weights == 0);
  o.copy_weights = 2;
  tide_status_t st;
  CHECK(load_bytes(&img, &o, &st) == NULL);
  EXPECT_ERROR(st, TIDE_STATUS_INVALID_ARGUMENT, "copy_weights is 2 (0 or 1)");
  for (int copy = 0; copy <= 1; ++copy) {
    o.copy_weights = copy;
    tide_model_t* m = load_bytes(&img, &o, &st);
    OK(st);
    if (!m) continue;
    float y[4] = {0};
    run_main_once(m, y);
    for (int i = 0; i < 4; ++i) CHECK(y[i] == (float)(i + 1));
    zero_weights_in_place(scratch_path("t.tide"), &img);
    run_main_once(m, y);
    for (int i = 0; i < 4; ++i) CHECK(y[i] == (copy ? (float)(i + 1) : 0.0f));
    tide_model_release(m);
  }
  tb_free(&img);

  tb_build_cuda(g_kernels, &img);
  o.copy_weights = 1;
  o.device_kind = TIDE_DEVICE_CUDA;
  o.cuda_driver_path = g_standin;
  CHECK(load_bytes(&img, &o, &st) == NULL);
  EXPECT_ERROR(st, TIDE_STATUS_INVALID_ARGUMENT, "copy_weights: the artifact targets cuda");
  tb_free(&img);
}

static void test_state(void) {
  tide_model_t* m = NULL;
  tide_session_t* s = standard_session(&m);
  if (!s) return;
  int32_t e = entry(m, "step");
  float* x = aligned(16);
  for (int i = 0; i < 4; ++i) x[i] = (float)i;
  tide_tensor_t in[2] = {f32_tensor(x, 1, (int64_t[]){4}), f32_tensor(NULL, 1, (int64_t[]){4})};
  tide_tensor_t out[2];
  tide_tensor_t state;
  OK(tide_session_state(s, 0, &state));
  EXPECT_ERROR(tide_session_state(s, 1, &state), TIDE_STATUS_NOT_FOUND, "state index 1");
  for (int i = 0; i < 4; ++i) CHECK(((float*)state.data)[i] == 0.0f); /* zero-filled at create */

  /* NULL keeps the state: two runs accumulate. */
  OK(tide_session_run(s, e, in, 2, out, 2));
  OK(tide_session_run(s, e, in, 2, out, 2));
  CHECK(out[0].data == state.data); /* present aliases the state */
  for (int i = 0; i < 4; ++i) {
    CHECK(((float*)state.data)[i] == 2.0f * (float)i);
    CHECK(((float*)out[1].data)[i] == 2.0f * (float)i + (float)(i + 1)); /* snapshot = acc + w0 */
  }
  /* Given data is copied into the state first (any alignment). */
  float given[5] = {0, 100, 200, 300, 400};
  in[1].data = given + 1;
  OK(tide_session_run(s, e, in, 2, out, 2));
  for (int i = 0; i < 4; ++i) CHECK(((float*)state.data)[i] == given[i + 1] + (float)i);
  CHECK(given[1] == 100.0f); /* the caller's copy is not written */
  /* Passing the state's own memory is allowed. */
  in[1].data = state.data;
  OK(tide_session_run(s, e, in, 2, out, 2));
  CHECK(((float*)state.data)[3] == 400.0f + 6.0f);
  /* A rejected call leaves the state alone. */
  in[1].data = NULL;
  tide_tensor_t bad[2] = {in[0], f32_tensor(NULL, 1, (int64_t[]){5})};
  EXPECT_ERROR(tide_session_run(s, e, bad, 2, out, 2), TIDE_STATUS_INVALID_ARGUMENT, "input 'acc'");
  CHECK(((float*)state.data)[3] == 406.0f);
  OK(tide_session_reset_state(s));
  for (int i = 0; i < 4; ++i) CHECK(((float*)state.data)[i] == 0.0f);
  OK(tide_session_run(s, e, in, 2, out, 2));
  CHECK(((float*)state.data)[3] == 3.0f);
  /* Sessions have separate states. */
  tide_session_t* s2 = NULL;
  OK(tide_session_create(m, NULL, &s2));
  tide_tensor_t state2;
  OK(tide_session_state(s2, 0, &state2));
  CHECK(state2.data != state.data && ((float*)state2.data)[3] == 0.0f);
  tide_session_release(s2);
  free(x);
  tide_session_release(s);
  tide_model_release(m);
}

static void test_time(void) {
  tide_model_t* m = NULL;
  tide_session_t* s = standard_session(&m);
  if (!s) return;
  int32_t e = entry(m, "step");
  float* x = aligned(16);
  for (int i = 0; i < 4; ++i) x[i] = 0.25f * (float)(i + 1);
  tide_tensor_t in[2] = {f32_tensor(x, 1, (int64_t[]){4}), f32_tensor(NULL, 1, (int64_t[]){4})};
  double seconds[5] = {-1, -1, -1, -1, -1};
  OK(tide_session_time(s, e, in, 2, 5, seconds));
  for (int i = 0; i < 5; ++i) CHECK(seconds[i] >= 0.0 && seconds[i] < 10.0);
  /* Every iteration ran: the accumulator state advanced five times. */
  tide_tensor_t state;
  OK(tide_session_state(s, 0, &state));
  for (int i = 0; i < 4; ++i) CHECK(((float*)state.data)[i] == 5.0f * x[i]);
  EXPECT_ERROR(tide_session_time(s, e, in, 2, 0, seconds), TIDE_STATUS_INVALID_ARGUMENT, "iterations must be >= 1");
  EXPECT_ERROR(tide_session_time(s, e, in, 2, 1, NULL), TIDE_STATUS_INVALID_ARGUMENT, "out_seconds is NULL");
  EXPECT_ERROR(tide_session_time(s, e, in, 1, 1, seconds), TIDE_STATUS_INVALID_ARGUMENT, "takes 2 inputs, got 1");
  EXPECT_ERROR(tide_session_time(s, 9, in, 2, 1, seconds), TIDE_STATUS_NOT_FOUND, "entry index 9");
  EXPECT_ERROR(tide_session_time(s, entry(m, "fail"), in, 1, 2, seconds), TIDE_STATUS_INTERNAL,
               "timing iteration 0 of 2: entry 'fail' op 1: kernel 'fail' failed");
  CHECK(((float*)state.data)[3] == 5.0f * x[3]); /* rejected calls ran nothing */
  free(x);
  tide_session_release(s);
  tide_model_release(m);
}

static void test_profile(void) {
  tide_model_t* m = NULL;
  tide_session_t* s = standard_session(&m);
  if (!s) return;
  int32_t e = entry(m, "step");
  float* x = aligned(16);
  tide_tensor_t in[2] = {f32_tensor(x, 1, (int64_t[]){4}), f32_tensor(NULL, 1, (int64_t[]){4})};
  tide_tensor_t out[2];
  tide_call_profile_t p[3];
  int32_t n = -1;
  OK(tide_session_run(s, e, in, 2, out, 2)); /* not profiled */
  OK(tide_session_read_profile(s, e, p, 3, &n));
  CHECK(n == 2 && p[0].calls == 0 && p[0].seconds == 0.0);
  CHECK(tide_model_kernel_count(m) == 8 && tide_model_kernel_name(m, 8) == NULL && tide_model_kernel_name(m, -1) == NULL);
  CHECK(strcmp(tide_model_kernel_name(m, p[0].kernel), "accumulate") == 0 && p[0].bytes == 32); /* acc, x */
  CHECK(strcmp(tide_model_kernel_name(m, p[1].kernel), "add") == 0 && p[1].bytes == 48);        /* acc, w0, snapshot */
  OK(tide_session_set_profiling(s, 1));
  for (int i = 0; i < 3; ++i) OK(tide_session_run(s, e, in, 2, out, 2));
  double seconds[2];
  OK(tide_session_time(s, e, in, 2, 2, seconds)); /* timed runs are profiled too */
  OK(tide_session_read_profile(s, e, p, 3, &n));
  CHECK(n == 2 && p[0].calls == 5 && p[1].calls == 5 && p[0].seconds > 0.0 && p[1].seconds > 0.0);
  CHECK(seconds[0] >= p[0].seconds / 5 && seconds[0] < 10.0);
  OK(tide_session_set_profiling(s, 0));
  OK(tide_session_run(s, e, in, 2, out, 2));
  OK(tide_session_read_profile(s, e, p, 1, &n)); /* a short buffer gets the first records */
  CHECK(n == 2 && p[0].calls == 5);
  OK(tide_session_set_profiling(s, 1)); /* restarting clears the counters */
  OK(tide_session_read_profile(s, e, NULL, 0, &n));
  OK(tide_session_read_profile(s, e, p, 3, &n));
  CHECK(n == 2 && p[0].calls == 0 && p[1].seconds == 0.0);
  EXPECT_ERROR(tide_session_read_profile(s, 9, p, 3, &n), TIDE_STATUS_NOT_FOUND, "entry index 9");
  EXPECT_ERROR(tide_session_read_profile(s, e, NULL, 3, &n), TIDE_STATUS_INVALID_ARGUMENT, "capacity 3");
  EXPECT_ERROR(tide_session_read_profile(s, e, p, 3, NULL), TIDE_STATUS_INVALID_ARGUMENT, "out_count is NULL");
  EXPECT_ERROR(tide_session_set_profiling(NULL, 1), TIDE_STATUS_INVALID_ARGUMENT, "session is NULL");
  /* A failing kernel under profiling: the error, and the calls before it are not counted as a run. */
  EXPECT_ERROR(tide_session_run(s, entry(m, "fail"), in, 1, out, 1), TIDE_STATUS_INTERNAL, "kernel 'fail' failed");
  OK(tide_session_read_profile(s, entry(m, "fail"), p, 3, &n));
  CHECK(n == 2 && p[0].calls == 0);
  free(x);
  tide_session_release(s);
  tide_model_release(m);
}

static void test_kernel_error(void) {
  tide_model_t* m = NULL;
  tide_session_t* s = standard_session(&m);
  if (!s) return;
  float* x = aligned(16);
  tide_tensor_t in = f32_tensor(x, 1, (int64_t[]){4});
  tide_tensor_t out[4];
  for (int rep = 0; rep < 2; ++rep) {
    EXPECT_ERROR(tide_session_run(s, entry(m, "fail"), &in, 1, out, 1), TIDE_STATUS_INTERNAL,
                 "entry 'fail' op 1: kernel 'fail' failed: ValueError: intentional failure from the fail kernel");
    OK(tide_session_run(s, 0, &in, 1, out, 4));
  }
  free(x);
  tide_session_release(s);
  tide_model_release(m);
}

static void check_par(tide_session_t* s, int32_t e, const float* x, int reps) {
  tide_tensor_t in = f32_tensor((void*)x, 1, (int64_t[]){1000});
  tide_tensor_t out[3];
  for (int r = 0; r < reps; ++r) {
    tide_status_t st = tide_session_run(s, e, &in, 1, out, 3);
    if (st) {
      fprintf(stderr, "par run failed: %s\n", tide_status_message(st));
      tide_status_free(st);
      ++g_failures;
      return;
    }
    int bad = 0;
    for (int i = 0; i < 1000; ++i) {
      bad += ((float*)out[0].data)[i] != x[999 - i] * 2.0f;
      bad += ((float*)out[1].data)[i] != x[i] * 2.0f;
      bad += ((float*)out[2].data)[i] != x[i] + 1.0f;
    }
    if (bad) {
      fprintf(stderr, "par run %d: %d wrong values\n", r, bad);
      ++g_failures;
      return;
    }
  }
}

typedef struct {
  tide_model_t* model;
  const float* x;
} par_thread_arg_t;

static void* par_thread(void* p) {
  par_thread_arg_t* a = p;
  tide_session_options_t o;
  tide_session_options_initialize(&o);
  o.num_threads = 3;
  tide_session_t* s = NULL;
  OK(tide_session_create(a->model, &o, &s));
  if (s) check_par(s, entry(a->model, "par"), a->x, 150);
  tide_session_release(s);
  return NULL;
}

static void test_parallel(void) {
  tide_model_t* m = load_standard();
  if (!m) return;
  float* x = aligned(4000);
  for (int i = 0; i < 1000; ++i) x[i] = (float)i - 300.0f;
  int32_t e = entry(m, "par");
  const int32_t threads[] = {1, 2, 4, 8};
  for (size_t k = 0; k < sizeof(threads) / sizeof(threads[0]); ++k) {
    tide_session_options_t o;
    tide_session_options_initialize(&o);
    o.num_threads = threads[k];
    tide_session_t* s = NULL;
    OK(tide_session_create(m, &o, &s));
    if (!s) continue;
    check_par(s, e, x, 200);
    /* A barrier that cannot complete fails with a message instead of hanging. */
    EXPECT_ERROR(tide_session_run(s, entry(m, "barrier"), NULL, 0, NULL, 0), TIDE_STATUS_INTERNAL,
                 threads[k] == 1 ? "run serially" : "cannot all run at once");
    check_par(s, e, x, 3);
    tide_session_release(s);
  }
  /* Sessions of one model running concurrently on different threads. */
  pthread_t t[3];
  par_thread_arg_t arg = {m, x};
  for (int i = 0; i < 3; ++i) CHECK(pthread_create(&t[i], NULL, par_thread, &arg) == 0);
  for (int i = 0; i < 3; ++i) pthread_join(t[i], NULL);
  free(x);
  tide_model_release(m);
}

static void test_two_models(void) {
  /* Two live models and a reload after release get their own kernel library instances. */
  tide_model_t* a = load_standard();
  tide_model_t* b = load_standard();
  tide_model_release(a);
  tide_model_t* c = load_standard();
  tide_model_t* models[2] = {b, c};
  for (int k = 0; k < 2; ++k) {
    if (!models[k]) continue;
    tide_session_t* s = NULL;
    OK(tide_session_create(models[k], NULL, &s));
    float* x = aligned(16);
    tide_tensor_t in = f32_tensor(x, 1, (int64_t[]){4});
    tide_tensor_t out[4];
    EXPECT_ERROR(tide_session_run(s, entry(models[k], "fail"), &in, 1, out, 1), TIDE_STATUS_INTERNAL,
                 "intentional failure");
    OK(tide_session_run(s, 0, &in, 1, out, 4));
    free(x);
    tide_session_release(s);
  }
  tide_model_release(b);
  tide_model_release(c);
  CHECK(a != b && b != c);
}

/* ---- corrupt and incompatible artifacts ---------------------------------------------------- */

static void expect_load_error(const tb_bytes_t* img, const tide_model_options_t* opts, tide_status_code_t code,
                              const char* needle, const char* what, int line) {
  tide_status_t st;
  tide_model_t* m = load_bytes(img, opts, &st);
  CHECK(m == NULL);
  if (m) tide_model_release(m);
  expect_error(st, code, needle, what, line);
}
#define EXPECT_LOAD_ERROR(img, opts, code, needle) expect_load_error((img), (opts), (code), (needle), #img, __LINE__)

static const char* section_name(uint32_t kind) {
  static const char* const names[] = {"?", "TARGET", "PLAN", "KERNELS_HOST", "WEIGHTS", "METADATA", "DEVICE_CODE"};
  return kind <= 6 ? names[kind] : "?";
}

static void test_corruption(void) {
  tb_config_t c;
  tb_config_default(&c, g_kernels);
  tb_bytes_t good;
  tb_build(&c, &good);
  tb_layout_t lay;
  tb_layout(good.p, &lay);
  tb_bytes_t img = {0};
  tb_raw(&img, good.p, good.n);

  /* Truncation anywhere. */
  const size_t cuts[] = {0, 1, 8, 63, 64, 100, 64 + 48 * 6 - 1, good.n / 2, good.n - 4097, good.n - 1};
  for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); ++i) {
    img.n = cuts[i];
    EXPECT_LOAD_ERROR(&img, NULL, TIDE_STATUS_DATA_LOSS, cuts[i] == 0 ? "empty" : "truncated");
  }
  img.n = good.n;

  /* A flipped byte in the header, the table and every section. */
  const size_t header_bytes[] = {20, 33, 41, 50, 64 + 5, 64 + 48 + 17};
  for (size_t i = 0; i < sizeof(header_bytes) / sizeof(header_bytes[0]); ++i) {
    img.p[header_bytes[i]] ^= 0x10;
    EXPECT_LOAD_ERROR(&img, NULL, TIDE_STATUS_DATA_LOSS, "header");
    img.p[header_bytes[i]] ^= 0x10;
  }
  img.p[44] ^= 1;
  EXPECT_LOAD_ERROR(&img, NULL, TIDE_STATUS_DATA_LOSS, "header: checksum mismatch");
  img.p[44] ^= 1;
  for (int i = 0; i < lay.num_sections; ++i) {
    char needle[64];
    snprintf(needle, sizeof(needle), "%s section: checksum mismatch", section_name(lay.kind[i]));
    size_t at = (size_t)(lay.offset[i] + lay.size[i] / 2);
    img.p[at] ^= 0x01;
    EXPECT_LOAD_ERROR(&img, NULL, TIDE_STATUS_DATA_LOSS, needle);
    /* Skipping bulk checksums still verifies the sections the loader parses or loads. */
    tide_model_options_t o;
    tide_model_options_initialize(&o);
    o.verify_checksums = 0;
    if (lay.kind[i] == TIDE_SECTION_WEIGHTS || lay.kind[i] == TIDE_SECTION_DEVICE_CODE) {
      tide_status_t st;
      tide_model_t* m = load_bytes(&img, &o, &st);
      OK(st);
      tide_model_release(m);
    } else {
      EXPECT_LOAD_ERROR(&img, &o, TIDE_STATUS_DATA_LOSS, needle);
    }
    img.p[at] ^= 0x01;
  }
  img.p[0] = 'X';
  EXPECT_LOAD_ERROR(&img, NULL, TIDE_STATUS_DATA_LOSS, "bad magic");
  tb_free(&img);

  tb_config_t v = c;
  v.version = 2;
  tb_build(&v, &img);
  EXPECT_LOAD_ERROR(&img, NULL, TIDE_STATUS_UNIMPLEMENTED, "format version 2 is not supported");
  tb_free(&img);

  tb_build_cuda(g_kernels, &img);
  EXPECT_LOAD_ERROR(&img, NULL, TIDE_STATUS_UNIMPLEMENTED, "targets cuda (device 'sm_80,sm_90')");
  tb_free(&img);

  v = c;
  v.target_kind = 9;
  tb_build(&v, &img);
  EXPECT_LOAD_ERROR(&img, NULL, TIDE_STATUS_DATA_LOSS, "unknown target kind 9");
  tb_free(&img);

  v = c;
  v.host_arch = strcmp(tide_host_arch(), "aarch64") == 0 ? "x86_64" : "aarch64";
  tb_build(&v, &img);
  EXPECT_LOAD_ERROR(&img, NULL, TIDE_STATUS_UNIMPLEMENTED, "compiled for host architecture");
  tb_free(&img);

  v = c;
  v.cpu_features = (uint64_t)1 << 12;
  tb_build(&v, &img);
  EXPECT_LOAD_ERROR(&img, NULL, TIDE_STATUS_DATA_LOSS, "unknown CPU feature bits 0x1000");
  tb_free(&img);

#if defined(__x86_64__)
  /* Requires avx2 + fma; pretend the machine lacks them. */
  v = c;
  v.cpu_features = (1u << 2) | (1u << 3);
  tb_build(&v, &img);
  tide_model_options_t o;
  tide_model_options_initialize(&o);
  o.allowed_cpu_features = ~(uint64_t)((1u << 2) | (1u << 3));
  EXPECT_LOAD_ERROR(&img, &o, TIDE_STATUS_UNIMPLEMENTED, "CPU features this machine lacks: avx2, fma");
  o.allowed_cpu_features = ~(uint64_t)0;
  if ((tide_host_cpu_features() & 0xC) == 0xC) {
    tide_status_t st;
    tide_model_t* m = load_bytes(&img, &o, &st);
    OK(st);
    tide_model_release(m);
  }
  tb_free(&img);
#endif

  v = c;
  v.extra_missing_kernel = 1;
  tb_build(&v, &img);
  EXPECT_LOAD_ERROR(&img, NULL, TIDE_STATUS_NOT_FOUND, "kernel 'missing' (index 8): symbol __tvm_ffi_missing is missing");
  tb_free(&img);

  v = c;
  v.bad_arg_index = 1;
  tb_build(&v, &img);
  EXPECT_LOAD_ERROR(&img, NULL, TIDE_STATUS_DATA_LOSS,
                    "PLAN section, entry 'main' op 0 (byte");
  EXPECT_LOAD_ERROR(&img, NULL, TIDE_STATUS_DATA_LOSS, "argument 0: buffer 99 out of range (9 buffers)");
  tb_free(&img);
  tb_free(&good);
}

/* Parses `img` (a cuda artifact) directly: the cpu-only loader refuses cuda targets after parsing. */
static tide_status_t parse_image(const tb_bytes_t* img, tide_artifact_t* art) {
  return tide_artifact_parse(img->p, img->n, 1, art);
}

/* The cuda standard artifact with DEVICE_CODE bytes [at, at+len) replaced by `with` (CRCs fixed). */
static void device_code_variant(const tb_bytes_t* code, size_t at, size_t len, const void* with, size_t with_len,
                                tb_bytes_t* out_img) {
  tb_bytes_t v = {0};
  tb_raw(&v, code->p, at);
  tb_raw(&v, with, with_len);
  tb_raw(&v, code->p + at + len, code->n - at - len);
  tb_config_t c;
  tb_config_default(&c, g_kernels);
  c.target_kind = 2;
  c.device_arch = "sm_80,sm_90";
  c.device_code = &v;
  tb_build(&c, out_img);
  tb_free(&v);
}

static size_t find_bytes(const tb_bytes_t* b, const char* needle, size_t n) {
  for (size_t i = 0; i + n <= b->n; ++i) {
    if (memcmp(b->p + i, needle, n) == 0) return i;
  }
  abort();
}

static void expect_parse_error(const tb_bytes_t* code, const char* find, size_t find_len, const void* with,
                               size_t with_len, const char* needle, int line) {
  size_t at = find_bytes(code, find, find_len);
  tb_bytes_t img;
  device_code_variant(code, at, find_len, with, with_len, &img);
  tide_artifact_t art;
  tide_status_t st = parse_image(&img, &art);
  if (!st) tide_artifact_free(&art);
  expect_error(st, TIDE_STATUS_DATA_LOSS, needle, "DEVICE_CODE mutation", line);
  tb_free(&img);
}
/* Replaces the first occurrence of string literal `find` by string literal `with` (NULs included). */
#define EXPECT_PARSE_ERROR(find, with, needle) \
  expect_parse_error(&code, (find), sizeof(find) - 1, (with), sizeof(with) - 1, (needle), __LINE__)

static void test_device_code(void) {
  tb_bytes_t img;
  tb_build_cuda(g_kernels, &img);
  tide_artifact_t art;
  OK(parse_image(&img, &art));
  CHECK(art.target_kind == TIDE_TARGET_CUDA && art.num_device_images == 2 && art.num_device_functions == 2);
  if (art.num_device_images == 2 && art.num_device_functions == 2) {
    const tide_device_image_t* i0 = &art.device_images[0];
    const tide_device_image_t* i1 = &art.device_images[1];
    CHECK(strcmp(i0->arch, "sm_80") == 0 && i0->sm == 80 && !i0->arch_specific && i0->format == TIDE_IMAGE_CUBIN);
    CHECK(strcmp(i1->arch, "sm_90") == 0 && i1->sm == 90);
    const uint8_t* section = img.p + art.sections[TIDE_SECTION_DEVICE_CODE].offset;
    CHECK(i1->size == 20 && memcmp(section + i1->offset, "fake cubin for sm_90", 20) == 0);
    const tide_device_function_t* f = &art.device_functions[1];
    CHECK(strcmp(f->name, "vscale_kernel") == 0 && f->num_args == 3 && f->num_tags == 3);
    CHECK(f->args[0].code == 3 && f->args[0].bits == 64 && f->args[1].code == 2 && f->args[1].bits == 32);
    CHECK(f->tags[0] == TIDE_TAG_BLOCK_X && f->tags[1] == TIDE_TAG_THREAD_X && f->tags[2] == TIDE_TAG_DYN_SHARED);
    tide_artifact_free(&art);
  }
  /* A cuda artifact needs a cuda device. */
  tide_status_t st;
  tide_model_t* m = load_bytes(&img, NULL, &st);
  CHECK(m == NULL);
  EXPECT_ERROR(st, TIDE_STATUS_UNIMPLEMENTED, "the artifact targets cuda (device 'sm_80,sm_90'); it cannot run on the cpu");
  /* Device cuda: the driver is looked up first; its absence or a library without its entry points
   * is a clear error, and the process goes on. */
  tide_model_options_t o;
  tide_model_options_initialize(&o);
  o.device_kind = TIDE_DEVICE_CUDA;
  o.cuda_driver_path = "/nonexistent/libcuda.so.1";
  m = load_bytes(&img, &o, &st);
  CHECK(m == NULL);
  EXPECT_ERROR(st, TIDE_STATUS_UNAVAILABLE, "/nonexistent/libcuda.so.1 not found: ");
  o.cuda_driver_path = "libc.so.6";
  m = load_bytes(&img, &o, &st);
  CHECK(m == NULL);
  EXPECT_ERROR(st, TIDE_STATUS_UNAVAILABLE, "the CUDA driver libc.so.6 lacks the entry point cuInit");
  o.device_kind = 7;
  m = load_bytes(&img, &o, &st);
  EXPECT_ERROR(st, TIDE_STATUS_INVALID_ARGUMENT, "device_kind is 7");
  /* Image choice per compute capability. */
  OK(parse_image(&img, &art));
  uint32_t chosen = 99;
  OK(tide_cuda_select_image(&art, 9, 0, &chosen));
  CHECK(chosen == 1);
  chosen = 99;
  OK(tide_cuda_select_image(&art, 8, 6, &chosen));
  CHECK(chosen == 0);
  OK(tide_cuda_select_image(&art, 8, 0, &chosen));
  CHECK(chosen == 0);
  EXPECT_ERROR(tide_cuda_select_image(&art, 7, 5, &chosen), TIDE_STATUS_UNIMPLEMENTED,
               "device code for sm_80 (cubin), sm_90 (cubin); this device is sm_75 (compute capability 7.5)");
  EXPECT_ERROR(tide_cuda_select_image(&art, 10, 0, &chosen), TIDE_STATUS_UNIMPLEMENTED, "this device is sm_100");
  /* ptx of the highest arch <= the device's is the fallback (JIT). */
  art.device_images[0].format = TIDE_IMAGE_PTX;
  OK(tide_cuda_select_image(&art, 10, 0, &chosen));
  CHECK(chosen == 1 - 1);
  art.device_images[1].format = TIDE_IMAGE_PTX;
  OK(tide_cuda_select_image(&art, 10, 0, &chosen));
  CHECK(chosen == 1);
  OK(tide_cuda_select_image(&art, 8, 9, &chosen));
  CHECK(chosen == 0);
  tide_artifact_free(&art);
  tb_free(&img);

  /* A cuda artifact without DEVICE_CODE. */
  tb_config_t c;
  tb_config_default(&c, g_kernels);
  c.target_kind = 2;
  c.device_arch = "sm_90";
  tb_build(&c, &img);
  EXPECT_ERROR(parse_image(&img, &art), TIDE_STATUS_DATA_LOSS, "DEVICE_CODE section, header (byte 0): bad magic");
  tb_free(&img);

  tb_bytes_t code;
  tb_device_code_default(&code);
  EXPECT_PARSE_ERROR("TIDECUDA", "TIDECUDX", "bad magic (expected TIDECUDA)");
  EXPECT_PARSE_ERROR("\x05\0\0\0sm_80", "\x05\0\0\0sm_8x", "image 'sm_8x' (byte 25): architecture 'sm_8x' is not sm_<digits>[a]");
  EXPECT_PARSE_ERROR("\x05\0\0\0sm_80", "\x05\0\0\0sm_90", "duplicate image architecture name 'sm_90'");
  EXPECT_PARSE_ERROR("\x05\0\0\0sm_80", "\x06\0\0\0sm_100", "not in ascending architecture order ('sm_90' after 'sm_100')");
  EXPECT_PARSE_ERROR("\x05\0\0\0sm_80", "\x06\0\0\0sm_80a",
                     "the images are sm_80a,sm_90 but the TARGET device architecture is 'sm_80,sm_90'");
  EXPECT_PARSE_ERROR("sm_80\0", "sm_80\x07", "image 'sm_80' (byte 26): unknown image format 7");
  EXPECT_PARSE_ERROR("sm_80\0\x14\0\0\0\0\0\0\0fake", "sm_80\x02\x14\0\0\0\0\0\0\0\0ake",
                     "image 'sm_80' (byte 34): ptx text holds a NUL byte");
  EXPECT_PARSE_ERROR("\x0b\0\0\0threadIdx.x\x0d", "\x0b\0\0\0threadIdx.w\x0d", "function 'vadd_kernel' (byte");
  EXPECT_PARSE_ERROR("\x0b\0\0\0threadIdx.x\x0d", "\x0a\0\0\0blockIdx.x\x0d", "launch tag 1: 'blockIdx.x' repeated");
  EXPECT_PARSE_ERROR("tir.use_dyn_shared_memory", "tir.use_dyn_shared_memorx", "unknown tag 'tir.use_dyn_shared_memorx'");
  EXPECT_PARSE_ERROR("\x03\x40\x01\0\x02\x20\x01\0", "\x03\x40\x01\0\x02\x21\x01\0",
                     "function 'vscale_kernel' (byte 189): argument 1: unsupported dtype (code 2, bits 33, lanes 1)");
  EXPECT_PARSE_ERROR("\x02\0\0\0\x0b\0\0\0vadd", "\x03\0\0\0\x0b\0\0\0vadd", "function 2 (byte 259): truncated: function name needs 4 bytes, 0 left");
  EXPECT_PARSE_ERROR("tir.use_dyn_shared_memory", "tir.use_dyn_shared_memory!", "end (byte 259): 1 unexpected trailing bytes");
  /* The dynamic shared memory tag must be last. */
  {
    tb_bytes_t v = {0};
    size_t at = find_bytes(&code, "\x03\0\0\0\x0a\0\0\0blockIdx.x\x0b", 19);
    tb_raw(&v, code.p, at);
    tb_u32(&v, 3);
    tb_str(&v, "blockIdx.x");
    tb_str(&v, "tir.use_dyn_shared_memory");
    tb_str(&v, "threadIdx.x");
    tb_config_default(&c, g_kernels);
    c.target_kind = 2;
    c.device_arch = "sm_80,sm_90";
    c.device_code = &v;
    tb_build(&c, &img);
    EXPECT_ERROR(parse_image(&img, &art), TIDE_STATUS_DATA_LOSS, "launch tag 1: the dynamic shared memory tag must be last");
    tb_free(&img);
    tb_free(&v);
  }
  tb_free(&code);
}

static tide_ffi_any_t any_int(int64_t v) {
  tide_ffi_any_t a;
  memset(&a, 0, sizeof(a));
  a.type_index = TIDE_FFI_INT;
  a.v_int64 = v;
  return a;
}

/* Launch packing from the stub's arguments (vscale_kernel: handle, float32, int64; blockIdx.x,
 * threadIdx.x, dynamic shared memory). */
static void test_cuda_pack_launch(void) {
  tb_bytes_t img;
  tb_build_cuda(g_kernels, &img);
  tide_artifact_t art;
  OK(parse_image(&img, &art));
  tb_free(&img);
  if (art.num_device_functions != 2) return;
  const tide_device_function_t* scale = &art.device_functions[1];
  const tide_device_function_t* add = &art.device_functions[0];
  float buf[4];
  tide_ffi_any_t args[6];
  memset(args, 0, sizeof(args));
  args[0].type_index = TIDE_FFI_OPAQUE_PTR;
  args[0].v_ptr = buf;
  args[1].type_index = TIDE_FFI_FLOAT;
  args[1].v_float64 = 0.375;
  args[2] = any_int((int64_t)1 << 40);
  args[3] = any_int(17);
  args[4] = any_int(128);
  args[5] = any_int(4096);
  tide_cuda_launch_t l;
  OK(tide_cuda_pack_launch(scale, args, 6, &l));
  CHECK(l.grid[0] == 17 && l.grid[1] == 1 && l.grid[2] == 1 && l.block[0] == 128 && l.block[1] == 1);
  CHECK(l.shared_bytes == 4096 && l.num_params == 3);
  void* p = NULL;
  memcpy(&p, l.params[0], sizeof(p));
  float f = 0;
  memcpy(&f, l.params[1], sizeof(f));
  int64_t n = 0;
  memcpy(&n, l.params[2], sizeof(n));
  CHECK(p == buf && f == 0.375f && n == (int64_t)1 << 40);
  /* vadd_kernel: three pointers (NULL allowed) and an int32, narrowed. */
  tide_ffi_any_t a2[6];
  memset(a2, 0, sizeof(a2));
  for (int i = 0; i < 3; ++i) {
    a2[i].type_index = TIDE_FFI_OPAQUE_PTR;
    a2[i].v_ptr = buf + i;
  }
  a2[1].type_index = TIDE_FFI_NONE;
  a2[3] = any_int(-5);
  a2[4] = any_int(3);
  a2[5] = any_int(64);
  OK(tide_cuda_pack_launch(add, a2, 6, &l));
  int32_t k = 0;
  memcpy(&k, l.params[3], sizeof(k));
  memcpy(&p, l.params[1], sizeof(p));
  CHECK(k == -5 && p == NULL && l.grid[0] == 3 && l.block[0] == 64 && l.shared_bytes == 0);
  EXPECT_ERROR(tide_cuda_pack_launch(add, a2, 5, &l), TIDE_STATUS_INVALID_ARGUMENT,
               "device function 'vadd_kernel' was called with 5 arguments; it takes 4 parameters and 2 launch dimensions");
  a2[3].type_index = TIDE_FFI_FLOAT;
  EXPECT_ERROR(tide_cuda_pack_launch(add, a2, 6, &l), TIDE_STATUS_INVALID_ARGUMENT, "argument 3: expected an integer");
  a2[3] = any_int(1);
  a2[4] = any_int(0);
  EXPECT_ERROR(tide_cuda_pack_launch(add, a2, 6, &l), TIDE_STATUS_INVALID_ARGUMENT, "argument 4: launch dimension 0 out of range");
  args[0] = any_int(1);
  EXPECT_ERROR(tide_cuda_pack_launch(scale, args, 6, &l), TIDE_STATUS_INVALID_ARGUMENT, "argument 0: expected a pointer");
  art.device_functions[1].args[1] = (tide_dtype_t){2, 16, 1};
  args[0].type_index = TIDE_FFI_OPAQUE_PTR;
  EXPECT_ERROR(tide_cuda_pack_launch(scale, args, 6, &l), TIDE_STATUS_INVALID_ARGUMENT,
               "argument 1: parameter dtype float16 is not supported by the launcher");
  tide_artifact_free(&art);
}


static int log_count(const char* path, const char* prefix) {
  FILE* f = fopen(path, "r");
  if (!f) return 0;
  char buf[512];
  int n = 0;
  while (fgets(buf, sizeof(buf), f)) n += strncmp(buf, prefix, strlen(prefix)) == 0;
  fclose(f);
  return n;
}

static int log_has(const char* path, const char* prefix) { return log_count(path, prefix) > 0; }

/* Options for a cuda load through the stand-in driver, its log (fresh) at <scratch>/<name>. */
static void standin_options(tide_model_options_t* o, char* log, size_t log_size, const char* name) {
  tide_model_options_initialize(o);
  o->device_kind = TIDE_DEVICE_CUDA;
  o->cuda_driver_path = g_standin;
  snprintf(log, log_size, "%s/%s", g_dir, name);
  remove(log);
  setenv("TIDE_STANDIN_LOG", log, 1);
}

/* Device discovery against the recording stand-in driver. */
static void test_cuda_device(void) {
  tb_bytes_t img;
  tb_build_cuda(g_kernels, &img);
  tide_model_options_t o;
  char log[4096];
  standin_options(&o, log, sizeof(log), "standin.log");
  struct {
    const char* cc;
    const char* devices;
    const char* init_rc;
    int32_t ordinal;
    tide_status_code_t code;
    const char* needle;
  } cases[] = {
      /* the chosen image is loaded: the builder's images are not cubins, which the driver refuses */
      {"90", "1", "0", 0, TIDE_STATUS_DATA_LOSS, "cuModuleLoadData of the sm_90 image"},
      {"86", "2", "0", 1, TIDE_STATUS_DATA_LOSS, "cuModuleLoadData of the sm_80 image"},
      {"75", "1", "0", 0, TIDE_STATUS_UNIMPLEMENTED,
       "device code for sm_80 (cubin), sm_90 (cubin); this device is sm_75 (compute capability 7.5) and can run none"},
      {"90", "0", "0", 0, TIDE_STATUS_UNAVAILABLE, "no CUDA device: the driver reports 0 devices"},
      {"90", "2", "0", 2, TIDE_STATUS_UNAVAILABLE, "CUDA device 2 does not exist (the driver reports 2 devices)"},
      {"90", "1", "100", 0, TIDE_STATUS_UNAVAILABLE, "cuInit failed: CUDA error 100 (no CUDA-capable device is detected)"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) {
    setenv("TIDE_STANDIN_CC", cases[i].cc, 1);
    setenv("TIDE_STANDIN_DEVICES", cases[i].devices, 1);
    setenv("TIDE_STANDIN_INIT_RC", cases[i].init_rc, 1);
    o.device_ordinal = cases[i].ordinal;
    tide_status_t st;
    tide_model_t* m = load_bytes(&img, &o, &st);
    CHECK(m == NULL);
    EXPECT_ERROR(st, cases[i].code, cases[i].needle);
  }
  CHECK(log_has(log, "cuInit 0"));
  CHECK(log_has(log, "cuDeviceGet 1"));
  CHECK(log_has(log, "cuDeviceGetAttribute 75 1"));
  CHECK(log_has(log, "cuDeviceGetAttribute 76 1"));
  CHECK(log_has(log, "cuDevicePrimaryCtxRetain 1"));
  CHECK(log_has(log, "cuModuleLoadData: not a cubin"));
  CHECK(log_has(log, "cuDevicePrimaryCtxRelease 1"));
  unsetenv("TIDE_STANDIN_LOG");
  unsetenv("TIDE_STANDIN_CC");
  unsetenv("TIDE_STANDIN_DEVICES");
  unsetenv("TIDE_STANDIN_INIT_RC");
  /* A cpu artifact is refused on a cuda device. */
  tb_free(&img);
  tb_config_t c;
  tb_config_default(&c, g_kernels);
  tb_build(&c, &img);
  tide_status_t st;
  CHECK(load_bytes(&img, &o, &st) == NULL);
  EXPECT_ERROR(st, TIDE_STATUS_INVALID_ARGUMENT, "the artifact targets cpu; it cannot be loaded onto cuda:0");
  tb_free(&img);
}

/* A cuda session end to end against the stand-in driver: host stubs (test_kernels.c) launching
 * emulated device kernels, device arena/state/inputs, copies, graphs, device I/O, timing, errors. */
static void test_cuda_session(void) {
  tb_bytes_t img;
  tb_build_cuda_stubs(g_kernels, &img);
  tide_model_options_t o;
  char log[4096];
  standin_options(&o, log, sizeof(log), "standin-session.log");
  setenv("TIDE_STANDIN_KERNELS", "add_w_kernel=x,w,y;accum_kernel=acc,y,#k", 1);
  tide_status_t st;
  tide_model_t* m = load_bytes(&img, &o, &st);
  OK(st);
  tb_free(&img);
  if (!m) return;
  CHECK(strcmp(tide_model_target(m), "cuda") == 0);
  tide_session_t* s = NULL;
  OK(tide_session_create(m, NULL, &s));
  if (!s) {
    tide_model_release(m);
    return;
  }
  CHECK(tide_session_num_threads(s) == 1);
  int32_t step = entry(m, "step");
  float x[5] = {0, 0.5f, -1.25f, 3, 7}; /* x + 1: host inputs need no alignment on cuda */
  tide_tensor_t in[2] = {f32_tensor(x + 1, 1, (int64_t[]){4}), f32_tensor(NULL, 1, (int64_t[]){4})};
  tide_tensor_t out[2];
  float acc[4] = {0, 0, 0, 0}, got[4];
  for (int rep = 0; rep < 4; ++rep) { /* eager, captured, replayed, replayed */
    OK(tide_session_run(s, step, in, 2, out, 2));
    for (int i = 0; i < 4; ++i) {
      acc[i] += x[i + 1];
      CHECK(((float*)out[0].data)[i] == acc[i]);
      CHECK(((float*)out[1].data)[i] == acc[i] + (float)(i + 1)); /* snapshot = acc + w0 */
    }
  }
  CHECK(log_count(log, "cuStreamEndCapture nodes 2") == 1); /* the accum and the add launches */
  CHECK(log_count(log, "cuGraphLaunch nodes 2") == 3);
  CHECK(log_count(log, "cuLaunchKernel accum_kernel grid 1,1,1 block 4,1,1 shared 0") == 2); /* eager + captured */
  OK(tide_session_read_state(s, 0, got, sizeof(got)));
  CHECK(memcmp(got, acc, sizeof(got)) == 0);
  EXPECT_ERROR(tide_session_read_state(s, 0, got, 8), TIDE_STATUS_INVALID_ARGUMENT, "state 'acc' has 16 bytes");

  /* Device I/O: the state's device memory as the input; outputs are device views. */
  tide_tensor_t dev;
  OK(tide_session_state(s, 0, &dev));
  in[0].data = dev.data;
  OK(tide_session_run_device(s, step, in, 2, out, 2));
  CHECK(out[0].data == dev.data);
  for (int i = 0; i < 4; ++i) CHECK(((float*)out[1].data)[i] == 2 * acc[i] + (float)(i + 1)); /* stand-in memory is host memory */
  in[0].data = x + 1;

  /* A state input with data is copied in; reset zeroes the device state. */
  float start[4] = {1, 2, 3, 4};
  in[1].data = start;
  OK(tide_session_run(s, step, in, 2, out, 2));
  for (int i = 0; i < 4; ++i) CHECK(((float*)out[0].data)[i] == start[i] + x[i + 1]);
  in[1].data = NULL;
  OK(tide_session_reset_state(s));
  OK(tide_session_read_state(s, 0, got, sizeof(got)));
  for (int i = 0; i < 4; ++i) CHECK(got[i] == 0.0f);

  double seconds[3] = {-1, -1, -1};
  OK(tide_session_time(s, step, in, 2, 3, seconds));
  for (int i = 0; i < 3; ++i) CHECK(seconds[i] >= 0);
  CHECK(log_count(log, "cuEventRecord") == 6);

  /* Profiling: eager launches (no graph replay) with an event before the first call and after each. */
  int replays = log_count(log, "cuGraphLaunch");
  OK(tide_session_set_profiling(s, 1));
  OK(tide_session_run(s, step, in, 2, out, 2));
  OK(tide_session_run(s, step, in, 2, out, 2));
  OK(tide_session_set_profiling(s, 0));
  CHECK(log_count(log, "cuGraphLaunch") == replays);
  CHECK(log_count(log, "cuEventRecord") == 6 + 2 * 3);
  tide_call_profile_t prof[2];
  int32_t calls = 0;
  OK(tide_session_read_profile(s, step, prof, 2, &calls));
  CHECK(calls == 2 && prof[0].calls == 2 && prof[1].calls == 2 && prof[0].seconds >= 0);
  CHECK(strcmp(tide_model_kernel_name(m, prof[0].kernel), "cuda_accumulate") == 0);
  OK(tide_session_run(s, step, in, 2, out, 2)); /* back to the graph */
  CHECK(log_count(log, "cuGraphLaunch") == replays + 1);

  /* A kernel error (the cpu kernel 'fail' refuses) and a device fault at the sync: clear errors, and
   * the session still runs. */
  int32_t fail = entry(m, "fail");
  EXPECT_ERROR(tide_session_run(s, fail, in, 1, out, 1), TIDE_STATUS_INTERNAL, "kernel 'fail' failed");
  setenv("TIDE_STANDIN_SYNC_RC", "700", 1);
  EXPECT_ERROR(tide_session_run(s, step, in, 2, out, 2), TIDE_STATUS_UNAVAILABLE,
               "CUDA error 700 (an illegal memory access was encountered)");
  unsetenv("TIDE_STANDIN_SYNC_RC");
  OK(tide_session_run(s, step, in, 2, out, 2));

  /* No graph when turned off; a session that does not fit is refused naming the bytes. */
  tide_session_options_t so;
  tide_session_options_initialize(&so);
  so.use_cuda_graphs = 0;
  tide_session_t* s2 = NULL;
  OK(tide_session_create(m, &so, &s2));
  int captures = log_count(log, "cuStreamBeginCapture");
  for (int rep = 0; s2 && rep < 3; ++rep) OK(tide_session_run(s2, step, in, 2, out, 2));
  CHECK(log_count(log, "cuStreamBeginCapture") == captures);
  tide_session_release(s2);
  setenv("TIDE_STANDIN_MEM_BYTES", "100", 1);
  tide_session_t* s3 = NULL;
  EXPECT_ERROR(tide_session_create(m, NULL, &s3), TIDE_STATUS_RESOURCE_EXHAUSTED,
               "out of device memory on cuda:0 allocating 12096 bytes for the arena");
  CHECK(s3 == NULL);
  unsetenv("TIDE_STANDIN_MEM_BYTES");

  tide_session_release(s);
  tide_model_release(m);
  CHECK(log_count(log, "cuMemAlloc ") == log_count(log, "cuMemFree ") + 1); /* + the refused arena */
  CHECK(log_has(log, "cuModuleUnload"));
  CHECK(log_has(log, "cuDevicePrimaryCtxRelease 0"));
  CHECK(log_count(log, "cuMemAlloc ") > 0 && !log_has(log, "cuLaunchKernel add_w_kernel: "));
  unsetenv("TIDE_STANDIN_LOG");
  unsetenv("TIDE_STANDIN_KERNELS");
}

/* An ascend session against the AscendCL stand-in (kernels recorded, not run): load, argument slots,
 * launches, copies, state, timing, SoC check, release; under ASan/UBSan. */
static void test_ascend_session(void) {
  tb_bytes_t img;
  tb_build_ascend(g_kernels, &img);
  tide_model_options_t o;
  tide_model_options_initialize(&o);
  o.device_kind = TIDE_DEVICE_ASCEND;
  o.ascend_acl_path = g_acl_standin;
  char log[4096];
  snprintf(log, sizeof(log), "%s/acl.log", g_dir);
  remove(log);
  setenv("TIDE_ACL_LOG", log, 1);
  setenv("TIDE_ACL_SOC", "Ascend950PR_9599", 1);
  tide_status_t st;
  CHECK(load_bytes(&img, &o, &st) == NULL);
  EXPECT_ERROR(st, TIDE_STATUS_UNIMPLEMENTED, "compiled for Ascend910B1; ascend:0 is Ascend950PR_9599");
  unsetenv("TIDE_ACL_SOC");
  tide_model_t* m = load_bytes(&img, &o, &st);
  OK(st);
  tb_free(&img);
  if (!m) return;
  CHECK(strcmp(tide_model_target(m), "ascend") == 0);
  tide_session_t* s = NULL;
  OK(tide_session_create(m, NULL, &s));
  if (s) {
    float x[4] = {1, 2, 3, 4}, got[4];
    tide_tensor_t in[2] = {f32_tensor(x, 1, (int64_t[]){4}), f32_tensor(NULL, 1, (int64_t[]){4})};
    tide_tensor_t out[4];
    OK(tide_session_run(s, entry(m, "main"), in, 1, out, 4));
    OK(tide_session_run(s, entry(m, "step"), in, 2, out, 2));
    double seconds[2];
    OK(tide_session_time(s, entry(m, "step"), in, 2, 2, seconds));
    OK(tide_session_set_profiling(s, 1));
    OK(tide_session_run(s, entry(m, "step"), in, 2, out, 2));
    tide_call_profile_t prof[2];
    int32_t calls = 0;
    OK(tide_session_read_profile(s, entry(m, "step"), prof, 2, &calls));
    CHECK(calls == 2 && prof[0].calls == 1 && prof[1].calls == 1);
    CHECK(log_count(log, "aclrtRecordEvent") == 4 + 3); /* timing: 2 per run; profiling: before and after each */
    OK(tide_session_reset_state(s));
    OK(tide_session_read_state(s, 0, got, sizeof(got)));
    for (int i = 0; i < 4; ++i) CHECK(got[i] == 0.0f);
    tide_session_release(s);
  }
  tide_model_release(m);
  CHECK(log_has(log, "aclrtLaunchKernel add block_dim 8 args 24"));
  CHECK(log_has(log, "aclrtLaunchKernel scale block_dim 4 args 24"));
  CHECK(log_count(log, "aclrtLaunchKernel accumulate block_dim 2 args 16") == 4); /* run, 2 timed, profiled */
  CHECK(log_count(log, "aclrtBinaryLoadFromData") == 8); /* the SoC mismatch is found before any load */
  CHECK(log_count(log, "aclrtMalloc ") == log_count(log, "aclrtFree "));
  CHECK(!log_has(log, "aclrtLaunchKernel add: ") && !log_has(log, "aclrtMemcpyAsync: "));
  unsetenv("TIDE_ACL_LOG");
}

int main(int argc, char** argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s <libtest_kernels.so> <scratch dir> <libcuda_standin.so> <libacl_standin.so>\n", argv[0]);
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  g_kernels = argv[1];
  g_dir = argv[2];
  g_standin = argv[3];
  g_acl_standin = argv[4];
  struct {
    const char* name;
    void (*fn)(void);
  } tests[] = {
      {"crc32", test_crc32},          {"status", test_status},           {"load_and_query", test_load_and_query},
      {"options", test_options},      {"run_main", test_run_main},       {"copy_weights", test_copy_weights},
      {"state", test_state},
      {"kernel_error", test_kernel_error}, {"time", test_time}, {"profile", test_profile}, {"parallel", test_parallel},
      {"two_models", test_two_models},
      {"corruption", test_corruption},   {"device_code", test_device_code}, {"cuda_device", test_cuda_device}, {"cuda_pack_launch", test_cuda_pack_launch},
      {"cuda_session", test_cuda_session},
      {"ascend_session", test_ascend_session},
  };
  for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); ++i) {
    int before = g_failures;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    tests[i].fn();
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    printf("%-16s %s (%.0f ms)\n", tests[i].name, g_failures == before ? "ok" : "FAILED", ms);
  }
  if (g_failures) {
    printf("%d check(s) failed\n", g_failures);
    return 1;
  }
  printf("all C runtime tests passed\n");
  return 0;
}
