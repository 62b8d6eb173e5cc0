/*
 * A recording stand-in for the CUDA driver API entry points the runtime dlsyms today (device
 * discovery), for tests on machines without a GPU. Backed by nothing; configured through the
 * environment when each call is made:
 *   TIDE_STANDIN_DEVICES   device count (default 1)
 *   TIDE_STANDIN_CC        compute capability as major*10+minor (default 90)
 *   TIDE_STANDIN_INIT_RC   the result cuInit returns (default 0)
 *   TIDE_STANDIN_LOG       a file each call appends one line to ("cuInit 0", ...)
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>

#define EXPORT __attribute__((visibility("default")))

static int env_int(const char* name, int fallback) {
  const char* v = getenv(name);
  return v && *v ? atoi(v) : fallback;
}

static void record(const char* fmt, int a, int b) {
  const char* path = getenv("TIDE_STANDIN_LOG");
  if (!path) return;
  FILE* f = fopen(path, "a");
  if (!f) return;
  fprintf(f, fmt, a, b);
  fputc('\n', f);
  fclose(f);
}

EXPORT int cuInit(unsigned flags) {
  record("cuInit %d%.0d", (int)flags, 0);
  return env_int("TIDE_STANDIN_INIT_RC", 0);
}

EXPORT int cuDeviceGetCount(int* count) {
  *count = env_int("TIDE_STANDIN_DEVICES", 1);
  record("cuDeviceGetCount -> %d%.0d", *count, 0);
  return 0;
}

EXPORT int cuDeviceGet(int* device, int ordinal) {
  if (ordinal < 0 || ordinal >= env_int("TIDE_STANDIN_DEVICES", 1)) return 101; /* CUDA_ERROR_INVALID_DEVICE */
  *device = ordinal;
  record("cuDeviceGet %d%.0d", ordinal, 0);
  return 0;
}

EXPORT int cuDeviceGetAttribute(int* value, int attribute, int device) {
  int cc = env_int("TIDE_STANDIN_CC", 90);
  if (attribute == 75) {
    *value = cc / 10;
  } else if (attribute == 76) {
    *value = cc % 10;
  } else {
    return 1; /* CUDA_ERROR_INVALID_VALUE */
  }
  record("cuDeviceGetAttribute %d %d", attribute, device);
  return 0;
}

EXPORT int cuGetErrorString(int error, const char** text) {
  switch (error) {
    case 100: *text = "no CUDA-capable device is detected"; return 0;
    case 101: *text = "invalid device ordinal"; return 0;
    default: *text = NULL; return 1;
  }
}
