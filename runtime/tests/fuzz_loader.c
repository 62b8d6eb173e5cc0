/*
 * Deterministic mutation fuzzer of the artifact loader, run under ASan + UBSan:
 *   fuzz_loader <libtest_kernels.so> <iterations> <seed>
 *
 * Starting from the standard test artifact it loads thousands of mutants through
 * tide_model_load_file: truncations, bit flips in every region, random and "interesting" integer
 * overwrites, stacked mutations, extensions. Raw mutants exercise the checksum checks; mutants whose
 * CRCs are recomputed reach the header, table, TARGET, PLAN and METADATA validation. The kernel
 * library's CRC is never recomputed: the loader trusts an ELF image whose checksum matches (dlopen
 * cannot be hardened against a corrupt ELF). Every mutant must load or fail with a status - never
 * crash, leak or hang (the Makefile runs this under a timeout). A mutant that loads also gets a
 * session, which exercises the allocation paths with fuzzed sizes. Then mutants of the cuda test
 * artifact exercise the DEVICE_CODE parser (see fuzz_device_code).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "builder.h"
#include "internal.h"
#include "tide/runtime.h"

enum { M_TRUNCATE, M_FLIP_RAW, M_FLIP_FIXED, M_BYTES_FIXED, M_INT_FIXED, M_STACKED_FIXED, M_EXTEND, M_COUNT };
static const char* const k_mode_names[M_COUNT] = {"truncate",     "flip (raw)",        "flip (crc fixed)",
                                                  "bytes (fixed)", "integer (fixed)", "stacked (fixed)",
                                                  "extend"};

static uint64_t g_rng;
static uint64_t rnd(void) {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return g_rng;
}
static uint64_t below(uint64_t n) { return n ? rnd() % n : 0; }

/* Regions: 0 header, 1 table, 2.. sections. */
typedef struct region_s {
  uint64_t offset, size;
  uint32_t kind; /* section kind; 0 for header/table */
} region_t;

static int g_num_regions;
static region_t g_regions[2 + 64];

static void pick_region(region_t* out, int fixed) {
  for (;;) {
    *out = g_regions[below((uint64_t)g_num_regions)];
    if (out->size == 0) continue;
    if (fixed && out->kind == TIDE_SECTION_KERNELS_HOST) continue;
    return;
  }
}

static const uint64_t k_interesting[] = {0,          1,          2,          3,          4,          7,
                                         8,          16,         63,         64,         65,         255,
                                         4096,       0x7F,       0x80,       0xFF,       0x7FFF,     0xFFFF,
                                         0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x100000000, 0x7FFFFFFFFFFFFFFF,
                                         0x8000000000000000, 0xFFFFFFFFFFFFFFFF};

static void flip(uint8_t* img, int fixed) {
  region_t r;
  pick_region(&r, fixed);
  img[r.offset + below(r.size)] ^= (uint8_t)(1u << below(8));
}

static void overwrite_bytes(uint8_t* img) {
  region_t r;
  pick_region(&r, 1);
  uint64_t n = 1 + below(8);
  uint64_t at = r.offset + below(r.size);
  for (uint64_t i = 0; i < n && at + i < r.offset + r.size; ++i) img[at + i] = (uint8_t)rnd();
}

static void overwrite_int(uint8_t* img, uint64_t file_size) {
  region_t r;
  pick_region(&r, 1);
  uint64_t v = below(4) == 0 ? file_size + below(5) - 2 : k_interesting[below(sizeof(k_interesting) / 8)];
  if (below(3) == 0) v += below(3) - 1;
  int width = below(2) ? 4 : 8;
  uint64_t at = r.offset + below(r.size);
  for (int i = 0; i < width && at + (uint64_t)i < r.offset + r.size; ++i) img[at + (uint64_t)i] = (uint8_t)(v >> (8 * i));
}

/*
 * DEVICE_CODE: loading a cuda or ascend artifact needs its driver, so mutants of the device test
 * artifacts (bit flips, byte and integer overwrites inside DEVICE_CODE with CRCs recomputed, and
 * truncations of the whole file) go straight to tide_artifact_parse. Returns the number of problems.
 */
static int fuzz_device_code(const char* kernels, void (*build)(const char*, tb_bytes_t*), long iterations,
                            long* out_rejected, long* out_parsed) {
  tb_bytes_t base;
  build(kernels, &base);
  tb_layout_t lay;
  tb_layout(base.p, &lay);
  g_num_regions = 0;
  for (int i = 0; i < lay.num_sections; ++i) {
    if (lay.kind[i] == TIDE_SECTION_DEVICE_CODE) {
      g_regions[g_num_regions++] = (region_t){lay.offset[i], lay.size[i], lay.kind[i]};
    }
  }
  uint8_t* img = malloc(base.n);
  if (!img || g_num_regions != 1) return 1;
  int failures = 0;
  for (long it = -1; it < iterations; ++it) {
    size_t n = base.n;
    memcpy(img, base.p, n);
    switch (it < 0 ? -1 : it % 4) {
      case 0: flip(img, 1); break;
      case 1: overwrite_bytes(img); break;
      case 2: overwrite_int(img, n); break;
      case 3: n = (size_t)(g_regions[0].offset + below(g_regions[0].size)); break;
      default: break;
    }
    if (it >= 0 && it % 4 != 3) tb_fix_crcs(img, n, 0);
    tide_artifact_t art;
    tide_status_t st = tide_artifact_parse(img, n, 1, &art);
    if (st) {
      const char* msg = tide_status_message(st);
      if (it < 0 || tide_status_code(st) <= TIDE_STATUS_OK || strlen(msg) < 10) {
        fprintf(stderr, "device code iteration %ld: bad status %d: %s\n", it, tide_status_code(st), msg);
        ++failures;
      }
      ++*out_rejected;
      tide_status_free(st);
    } else {
      ++*out_parsed;
      tide_artifact_free(&art);
    }
  }
  if (iterations >= 100 && *out_rejected == 0) {
    fprintf(stderr, "no DEVICE_CODE mutant was rejected: the fuzzer is not reaching the checks\n");
    ++failures;
  }
  free(img);
  tb_free(&base);
  return failures;
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s <libtest_kernels.so> <iterations> <seed>\n", argv[0]);
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  long iterations = strtol(argv[2], NULL, 10);
  g_rng = 0x9E3779B97F4A7C15ull ^ (uint64_t)strtoull(argv[3], NULL, 10);
  tb_config_t c;
  tb_config_default(&c, argv[1]);
  tb_bytes_t base;
  tb_build(&c, &base);

  tb_layout_t lay;
  tb_layout(base.p, &lay);
  g_regions[0] = (region_t){0, 64, 0};
  g_regions[1] = (region_t){64, 48u * (uint64_t)lay.num_sections, 0};
  g_num_regions = 2;
  for (int i = 0; i < lay.num_sections; ++i) g_regions[g_num_regions++] = (region_t){lay.offset[i], lay.size[i], lay.kind[i]};

  int fd = memfd_create("tide-fuzz", MFD_CLOEXEC);
  if (fd < 0) {
    perror("memfd_create");
    return 2;
  }
  char path[64];
  snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
  size_t cap = base.n + 4096;
  uint8_t* img = malloc(cap);
  if (!img) return 2;

  long rejected[M_COUNT] = {0}, accepted[M_COUNT] = {0}, codes[8] = {0};
  int failures = 0;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long it = -1; it < iterations; ++it) {
    int mode = it < 0 ? -1 : (int)(it % M_COUNT);
    size_t n = base.n;
    memcpy(img, base.p, n);
    switch (mode) {
      case M_TRUNCATE: {
        region_t r = g_regions[below((uint64_t)g_num_regions)];
        n = (size_t)(r.offset + below(r.size + 1));
        if (n >= base.n) n = base.n - 1;
        break;
      }
      case M_FLIP_RAW: flip(img, 0); break;
      case M_FLIP_FIXED: flip(img, 1); break;
      case M_BYTES_FIXED: overwrite_bytes(img); break;
      case M_INT_FIXED: overwrite_int(img, n); break;
      case M_STACKED_FIXED:
        for (uint64_t k = 2 + below(3); k > 0; --k) {
          switch (below(3)) {
            case 0: flip(img, 1); break;
            case 1: overwrite_bytes(img); break;
            default: overwrite_int(img, n); break;
          }
        }
        break;
      case M_EXTEND: {
        size_t extra = 1 + (size_t)below(4000);
        for (size_t i = 0; i < extra; ++i) img[n + i] = (uint8_t)rnd();
        n += extra;
        if (below(2)) {
          for (int i = 0; i < 8; ++i) img[32 + i] = (uint8_t)((uint64_t)n >> (8 * i));
        }
        break;
      }
      default: break;
    }
    if (mode >= M_FLIP_FIXED) tb_fix_crcs(img, n, TIDE_SECTION_KERNELS_HOST);

    if (ftruncate(fd, 0) != 0 || ftruncate(fd, (off_t)n) != 0 || pwrite(fd, img, n, 0) != (ssize_t)n) {
      perror("writing the mutant");
      return 2;
    }
    tide_model_t* m = NULL;
    tide_status_t st = tide_model_load_file(path, NULL, &m);
    if (it < 0) {
      if (st) {
        fprintf(stderr, "the unmutated artifact does not load: %s\n", tide_status_message(st));
        return 1;
      }
    } else if (st) {
      ++rejected[mode];
      tide_status_code_t code = tide_status_code(st);
      const char* msg = tide_status_message(st);
      if (code <= TIDE_STATUS_OK || code > TIDE_STATUS_UNAVAILABLE || !msg || strlen(msg) < 10 || m) {
        fprintf(stderr, "iteration %ld: bad status (code %d, message '%s')\n", it, code, msg ? msg : "(null)");
        ++failures;
      } else {
        ++codes[code];
      }
    } else {
      ++accepted[mode];
    }
    tide_status_free(st);
    if (m) {
      for (int32_t e = 0; e < tide_model_entry_count(m); ++e) {
        tide_tensor_info_t info;
        for (int32_t i = 0; i < tide_model_input_count(m, e); ++i) tide_status_free(tide_model_input_info(m, e, i, &info));
        for (int32_t i = 0; i < tide_model_output_count(m, e); ++i) tide_status_free(tide_model_output_info(m, e, i, &info));
      }
      tide_session_options_t so;
      tide_session_options_initialize(&so);
      so.num_threads = 2;
      tide_session_t* s = NULL;
      tide_status_free(tide_session_create(m, &so, &s));
      tide_session_release(s);
      tide_model_release(m);
    }
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;

  long total_accepted = 0;
  printf("%ld mutants in %.1f s (seed %s)\n", iterations, secs, argv[3]);
  for (int k = 0; k < M_COUNT; ++k) {
    printf("  %-18s rejected %6ld  loaded %6ld\n", k_mode_names[k], rejected[k], accepted[k]);
    total_accepted += accepted[k];
    if (iterations >= 10 * M_COUNT && rejected[k] == 0) {
      fprintf(stderr, "mode '%s' never produced a rejected artifact: the fuzzer is not reaching the checks\n",
              k_mode_names[k]);
      ++failures;
    }
  }
  printf("  status codes: invalid_argument %ld, not_found %ld, data_loss %ld, unimplemented %ld, "
         "resource_exhausted %ld, unavailable %ld\n",
         codes[TIDE_STATUS_INVALID_ARGUMENT], codes[TIDE_STATUS_NOT_FOUND], codes[TIDE_STATUS_DATA_LOSS],
         codes[TIDE_STATUS_UNIMPLEMENTED], codes[TIDE_STATUS_RESOURCE_EXHAUSTED], codes[TIDE_STATUS_UNAVAILABLE]);
  if (accepted[M_TRUNCATE] || accepted[M_FLIP_RAW]) {
    fprintf(stderr, "a truncated or checksum-corrupted artifact loaded\n");
    ++failures;
  }
  close(fd);
  free(img);
  tb_free(&base);
  long dc_rejected = 0, dc_parsed = 0;
  failures += fuzz_device_code(argv[1], tb_build_cuda, iterations / 5, &dc_rejected, &dc_parsed);
  printf("  DEVICE_CODE (cuda)    rejected %6ld  parsed %6ld\n", dc_rejected, dc_parsed);
  dc_rejected = dc_parsed = 0;
  failures += fuzz_device_code(argv[1], tb_build_ascend, iterations / 5, &dc_rejected, &dc_parsed);
  printf("  DEVICE_CODE (ascend)  rejected %6ld  parsed %6ld\n", dc_rejected, dc_parsed);
  if (failures) {
    printf("FAILED: %d problem(s)\n", failures);
    return 1;
  }
  printf("fuzz OK (%ld mutants loaded and got a session)\n", total_accepted);
  return 0;
}
