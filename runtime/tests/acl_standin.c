/*
 * A recording stand-in for the AscendCL entry points the runtime's Ascend backend uses, for tests
 * without an Ascend device or CANN. Device memory is host memory; every call checks its arguments
 * (a current context for device work, allocated ranges, known handles) and appends one line to a
 * log. Two kernels are emulated so a test can check numbers end to end, both over argument slots
 * read from device memory (docs/artifact-format.md): vadd(a, b, c, n): c = a + b over n floats, and
 * vacc(acc, x, n): acc += x. A binary must start with "TIDEBIN"; functions are looked up by name.
 *
 * Configured through the environment when each call is made:
 *   TIDE_ACL_DEVICES     device count (default 1)      TIDE_ACL_SOC        SoC name (default Ascend910B1)
 *   TIDE_ACL_INIT_RC     aclInit's result (default 0)  TIDE_ACL_MEM_BYTES  device memory (default 1 GiB)
 *   TIDE_ACL_SYNC_RC     aclrtSynchronizeStream's result (default 0)
 *   TIDE_ACL_LOG         a file each call appends one line to
 */
#define _GNU_SOURCE
#define STANDIN_LOG "TIDE_ACL_LOG"
#define STANDIN_MEM "TIDE_ACL_MEM_BYTES"
#include "standin.h"

#define MAX_FUNCTIONS 1024

enum { OK = 0, INVALID_PARAM = 100000, BAD_ALLOC = 200000, NO_CONTEXT = 107002, INVALID_HANDLE = 107000 };

static int g_context;
static _Thread_local void* t_current;
static int need_context(const char* call) {
  if (t_current == &g_context) return 0;
  record("%s: no current context", call);
  return 1;
}

static int on_device_ptr(const void* p, size_t n) { return on_device((uint64_t)(uintptr_t)p, n); }

EXPORT int aclInit(const char* config) {
  record("aclInit %s", config ? config : "(null)");
  return (int)env("TIDE_ACL_INIT_RC", 0);
}

EXPORT int aclrtGetDeviceCount(uint32_t* count) {
  *count = (uint32_t)env("TIDE_ACL_DEVICES", 1);
  record("aclrtGetDeviceCount -> %u", *count);
  return OK;
}

EXPORT int aclrtSetDevice(int32_t device) {
  if (device < 0 || device >= env("TIDE_ACL_DEVICES", 1)) return INVALID_PARAM;
  record("aclrtSetDevice %d", device);
  return OK;
}

EXPORT int aclrtResetDevice(int32_t device) {
  record("aclrtResetDevice %d", device);
  return OK;
}

EXPORT const char* aclrtGetSocName(void) {
  const char* soc = getenv("TIDE_ACL_SOC");
  return soc && *soc ? soc : "Ascend910B1";
}

EXPORT const char* aclGetRecentErrMsg(void) { return "stand-in error"; }

EXPORT int aclrtCreateContext(void** ctx, int32_t device) {
  *ctx = &g_context;
  record("aclrtCreateContext %d", device);
  return OK;
}

EXPORT int aclrtDestroyContext(void* ctx) {
  if (ctx != &g_context) return INVALID_HANDLE;
  record("aclrtDestroyContext");
  return OK;
}

EXPORT int aclrtSetCurrentContext(void* ctx) {
  if (ctx != &g_context) return INVALID_HANDLE;
  t_current = ctx;
  return OK;
}

EXPORT int aclrtGetMemInfo(int attr, size_t* free_bytes, size_t* total) {
  size_t limit = memory_size();
  (void)attr;
  *total = limit;
  *free_bytes = g_used < limit ? limit - g_used : 0;
  return OK;
}

EXPORT int aclrtMalloc(void** ptr, size_t size, int policy) {
  (void)policy;
  if (need_context("aclrtMalloc")) return NO_CONTEXT;
  if (!size) return INVALID_PARAM;
  *ptr = device_alloc(size, 512, 0x5A);
  if (!*ptr) {
    record("aclrtMalloc %zu -> out of memory", size);
    return BAD_ALLOC;
  }
  record("aclrtMalloc %zu", size);
  return OK;
}

EXPORT int aclrtFree(void* ptr) {
  size_t size = device_free((uint64_t)(uintptr_t)ptr);
  if (size) {
    record("aclrtFree %zu", size);
    return OK;
  }
  record("aclrtFree: %p was not allocated", ptr);
  return INVALID_PARAM;
}

/* kinds: 1 host to device, 2 device to host, 3 device to device */
static int copy(const char* call, void* dst, size_t max, const void* src, size_t n, int kind) {
  if (need_context(call)) return NO_CONTEXT;
  if (n > max || kind < 1 || kind > 3) return INVALID_PARAM;
  if ((kind != 2 && !on_device_ptr(dst, n)) || (kind != 1 && !on_device_ptr(src, n))) {
    record("%s: a device side is not device memory", call);
    return INVALID_PARAM;
  }
  memmove(dst, src, n);
  record("%s %zu kind %d", call, n, kind);
  return OK;
}

EXPORT int aclrtMemcpy(void* dst, size_t max, const void* src, size_t n, int kind) {
  return copy("aclrtMemcpy", dst, max, src, n, kind);
}

EXPORT int aclrtMemcpyAsync(void* dst, size_t max, const void* src, size_t n, int kind, void* stream) {
  if (!stream) return INVALID_HANDLE;
  return copy("aclrtMemcpyAsync", dst, max, src, n, kind);
}

EXPORT int aclrtMemsetAsync(void* dst, size_t max, int32_t value, size_t n, void* stream) {
  if (need_context("aclrtMemsetAsync")) return NO_CONTEXT;
  if (!stream || n > max || !on_device_ptr(dst, n)) return INVALID_PARAM;
  memset(dst, value, n);
  record("aclrtMemsetAsync %zu", n);
  return OK;
}

EXPORT int aclrtCreateStream(void** stream) {
  if (need_context("aclrtCreateStream")) return NO_CONTEXT;
  *stream = malloc(1);
  record("aclrtCreateStream");
  return *stream ? OK : BAD_ALLOC;
}

EXPORT int aclrtDestroyStream(void* stream) {
  free(stream);
  record("aclrtDestroyStream");
  return OK;
}

EXPORT int aclrtSynchronizeStream(void* stream) {
  if (need_context("aclrtSynchronizeStream")) return NO_CONTEXT;
  return stream ? (int)env("TIDE_ACL_SYNC_RC", 0) : INVALID_HANDLE;
}

/* ---- binaries and launches --------------------------------------------------------------------- */

static int g_binary;
static char g_functions[MAX_FUNCTIONS][256];
static int g_num_functions;

EXPORT int aclrtBinaryLoadFromData(const void* data, size_t length, const void* options, void** handle) {
  (void)options;
  if (need_context("aclrtBinaryLoadFromData")) return NO_CONTEXT;
  if (length < 7 || memcmp(data, "TIDEBIN", 7) != 0) {
    record("aclrtBinaryLoadFromData: not a kernel binary");
    return INVALID_PARAM;
  }
  *handle = &g_binary;
  record("aclrtBinaryLoadFromData %zu", length);
  return OK;
}

EXPORT int aclrtBinaryGetFunction(void* binary, const char* name, void** function) {
  if (binary != &g_binary) return INVALID_HANDLE;
  for (int i = 0; i < g_num_functions; ++i) {
    if (strcmp(g_functions[i], name) == 0) {
      *function = g_functions[i];
      return OK;
    }
  }
  if (g_num_functions == MAX_FUNCTIONS) return BAD_ALLOC;
  if (strlen(name) >= sizeof(g_functions[0])) return INVALID_PARAM;
  snprintf(g_functions[g_num_functions], sizeof(g_functions[0]), "%s", name);
  *function = g_functions[g_num_functions++];
  return OK;
}

EXPORT int aclrtBinaryUnLoad(void* binary) {
  if (binary != &g_binary) return INVALID_HANDLE;
  record("aclrtBinaryUnLoad");
  return OK;
}

EXPORT int aclrtLaunchKernel(void* function, uint32_t block_dim, const void* args, size_t size, void* stream) {
  if (need_context("aclrtLaunchKernel")) return NO_CONTEXT;
  const char* name = function;
  if (!stream || !block_dim || size % 8 || !on_device_ptr(args, size)) {
    record("aclrtLaunchKernel %s: bad launch (block_dim %u, %zu argument bytes)", name, block_dim, size);
    return INVALID_PARAM;
  }
  const uint64_t* slot = args;
  record("aclrtLaunchKernel %s block_dim %u args %zu", name, block_dim, size);
  if (strcmp(name, "vadd") == 0 && size == 32) {
    float *a = (float*)(uintptr_t)slot[0], *b = (float*)(uintptr_t)slot[1], *c = (float*)(uintptr_t)slot[2];
    size_t n = (size_t)slot[3];
    if (!on_device_ptr(a, 4 * n) || !on_device_ptr(b, 4 * n) || !on_device_ptr(c, 4 * n)) return INVALID_PARAM;
    for (size_t i = 0; i < n; ++i) c[i] = a[i] + b[i];
  } else if (strcmp(name, "vacc") == 0 && size == 24) {
    float *acc = (float*)(uintptr_t)slot[0], *x = (float*)(uintptr_t)slot[1];
    size_t n = (size_t)slot[2];
    if (!on_device_ptr(acc, 4 * n) || !on_device_ptr(x, 4 * n)) return INVALID_PARAM;
    for (size_t i = 0; i < n; ++i) acc[i] += x[i];
  }
  return OK;
}

/* ---- events ---------------------------------------------------------------------------------- */

EXPORT int aclrtCreateEvent(void** event) {
  *event = event_create();
  return *event ? OK : BAD_ALLOC;
}

EXPORT int aclrtRecordEvent(void* event, void* stream) {
  if (!event || !stream) return INVALID_HANDLE;
  event_record(event);
  record("aclrtRecordEvent");
  return OK;
}

EXPORT int aclrtSynchronizeEvent(void* event) { return event ? (int)env("TIDE_ACL_SYNC_RC", 0) : INVALID_HANDLE; }

EXPORT int aclrtEventElapsedTime(float* ms, void* start, void* stop) {
  if (!start || !stop) return INVALID_HANDLE;
  *ms = event_elapsed_ms(start, stop);
  return OK;
}

EXPORT int aclrtDestroyEvent(void* event) {
  free(event);
  return OK;
}
