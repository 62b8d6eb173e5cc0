/*
 * What the recording stand-ins for device libraries (cuda_standin.c, acl_standin.c) share: their
 * environment settings, their call log, "device" memory (host memory in an allocation table) and
 * event clocks. Each includes this once, after defining STANDIN_LOG (the environment variable naming
 * its log file) and STANDIN_MEM (the one giving its device memory size, default 1 GiB).
 */
#ifndef TIDE_TESTS_STANDIN_H_
#define TIDE_TESTS_STANDIN_H_

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))
#define STANDIN_MAX_ALLOCS 4096

static long long env(const char* name, long long fallback) {
  const char* v = getenv(name);
  return v && *v ? atoll(v) : fallback;
}

/* Appends one line to the log named by $STANDIN_LOG (if set). */
static void record(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static void record(const char* fmt, ...) {
  const char* path = getenv(STANDIN_LOG);
  FILE* f = path ? fopen(path, "a") : NULL;
  if (!f) return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fputc('\n', f);
  fclose(f);
}

static struct {
  uint8_t* base;
  size_t size;
} g_allocs[STANDIN_MAX_ALLOCS];
static size_t g_used;

static size_t memory_size(void) { return (size_t)env(STANDIN_MEM, 1LL << 30); }

/* [p, p + n) lies inside one allocation. */
static int on_device(uint64_t p, size_t n) {
  for (int i = 0; i < STANDIN_MAX_ALLOCS; ++i) {
    uint64_t b = (uint64_t)(uintptr_t)g_allocs[i].base;
    if (g_allocs[i].base && p >= b && p + n <= b + g_allocs[i].size) return 1;
  }
  return 0;
}

/* A new allocation filled with `fill` (device memory starts undefined); NULL past the memory size. */
static void* device_alloc(size_t size, size_t alignment, int fill) {
  if (g_used + size > memory_size()) return NULL;
  for (int i = 0; i < STANDIN_MAX_ALLOCS; ++i) {
    if (g_allocs[i].base) continue;
    void* p = NULL;
    if (posix_memalign(&p, alignment, size) != 0) return NULL;
    memset(p, fill, size);
    g_allocs[i].base = p;
    g_allocs[i].size = size;
    g_used += size;
    return p;
  }
  return NULL;
}

/* The freed allocation's size, or 0 if `p` was not allocated. */
static size_t device_free(uint64_t p) {
  for (int i = 0; i < STANDIN_MAX_ALLOCS; ++i) {
    if (p && (uint64_t)(uintptr_t)g_allocs[i].base == p) {
      size_t size = g_allocs[i].size;
      g_used -= size;
      free(g_allocs[i].base);
      g_allocs[i].base = NULL;
      return size;
    }
  }
  return 0;
}

/* An event is a double: the monotonic clock in milliseconds when it was recorded. */
static void* event_create(void) { return calloc(1, sizeof(double)); }

static void event_record(void* event) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  *(double*)event = (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static float event_elapsed_ms(const void* start, const void* stop) { return (float)(*(const double*)stop - *(const double*)start); }

#endif /* TIDE_TESTS_STANDIN_H_ */
