/*
 * A recording stand-in for the CUDA driver API entry points the runtime uses, for tests on machines
 * without a GPU. "Device" memory is host memory; every call checks its arguments the way the driver
 * would (a current context, known handles, memory ranges that were allocated, launch dimensions
 * within the device's limits, dynamic shared memory within what the function opted into) and
 * appends one line to a log. Kernels do not run, except the few whose semantics the stand-in knows
 * (see emulate()), so a test can check numbers end to end; a stream capture records launches and
 * copies into a graph that cuGraphLaunch replays.
 *
 * Configured through the environment when each call is made:
 *   TIDE_STANDIN_DEVICES    device count (default 1)
 *   TIDE_STANDIN_CC         compute capability as major*10+minor (default 90)
 *   TIDE_STANDIN_INIT_RC    the result cuInit returns (default 0)
 *   TIDE_STANDIN_MEM_BYTES  device memory size (default 1 GiB): allocations beyond it fail with
 *                           CUDA_ERROR_OUT_OF_MEMORY
 *   TIDE_STANDIN_STATIC_SHARED  static shared memory bytes every function declares (default 0)
 *   TIDE_STANDIN_SYNC_RC    the result cuStreamSynchronize / cuEventSynchronize return (default 0)
 *   TIDE_STANDIN_KERNELS    "name=p0,p1,...;name2=..." kernel parameters in launch order: a name
 *                           for a pointer, "#name" for a 4-byte and "%name" for an 8-byte scalar
 *                           (tests read them from the generated CUDA source). A listed kernel's
 *                           pointer arguments must lie in allocated device memory; the kernels
 *                           emulate() knows also run.
 *   TIDE_STANDIN_LOG        a file each call appends one line to
 */
#define _GNU_SOURCE
#define STANDIN_LOG "TIDE_STANDIN_LOG"
#define STANDIN_MEM "TIDE_STANDIN_MEM_BYTES"
#include "standin.h"

enum {
  OK = 0,
  INVALID_VALUE = 1,
  OUT_OF_MEMORY = 2,
  INVALID_CONTEXT = 201,
  INVALID_HANDLE = 400,
  NOT_FOUND = 500,
  ILLEGAL_ADDRESS = 700,
  STREAM_CAPTURE_UNSUPPORTED = 900,
};

#define MAX_FUNCTIONS 1024
#define MAX_NODES 4096
#define MAX_PARAMS 64
#define STATIC_SHARED 49152
#define OPTIN_SHARED 232448 /* sm_90: 227 KiB */
#define EMULATED_N 16384      /* elements of the emulated kernels' tensors */

/* ---- contexts --------------------------------------------------------------------------------- */

static int g_context_token; /* the primary context's handle is this variable's address */
static _Thread_local int t_depth;
static int g_retained;

static int need_context(const char* call) {
  if (t_depth > 0) return 0;
  record("%s: no current context", call);
  return 1;
}

/* ---- memory ----------------------------------------------------------------------------------- */

static int device_range(uint64_t ptr, size_t size, const char* call) {
  if (on_device(ptr, size)) return 0;
  record("%s: [0x%llx, +%zu) is not device memory", call, (unsigned long long)ptr, size);
  return 1;
}

/* ---- functions and launches ------------------------------------------------------------------ */

typedef struct function_s {
  char name[256];
  int static_shared;
  int max_dynamic_shared;
} function_t;

static function_t g_functions[MAX_FUNCTIONS];
static int g_num_functions;
static int g_module_token;

typedef struct node_s {
  int is_copy;
  function_t* fn;
  unsigned grid[3], block[3], shared;
  int num_params;
  uint64_t params[MAX_PARAMS];
  uint64_t dst, src;
  size_t bytes;
} node_t;

typedef struct stream_s {
  int capturing;
  int num_nodes;
  node_t* nodes;
} stream_t;

typedef struct graph_s {
  int num_nodes;
  node_t* nodes;
} graph_t;

/* The parameter names of an emulated kernel (TIDE_STANDIN_KERNELS); 0 if not listed. */
static int param_names(const char* kernel, char names[MAX_PARAMS][64]) {
  const char* spec = getenv("TIDE_STANDIN_KERNELS");
  size_t klen = strlen(kernel);
  for (const char* p = spec; p && *p;) {
    const char* end = strchr(p, ';');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len > klen && strncmp(p, kernel, klen) == 0 && p[klen] == '=') {
      int n = 0;
      const char* q = p + klen + 1;
      while (q < p + len && n < MAX_PARAMS) {
        size_t w = strcspn(q, ",;");
        if (q + w > p + len) w = (size_t)(p + len - q);
        snprintf(names[n++], 64, "%.*s", (int)w, q);
        q += w + 1;
      }
      return n;
    }
    p = end ? end + 1 : NULL;
  }
  return 0;
}

static int is_scalar(const char* name) { return name[0] == '#' || name[0] == '%'; }

static uint64_t param(const node_t* n, char names[MAX_PARAMS][64], int count, const char* want) {
  for (int i = 0; i < count && i < n->num_params; ++i) {
    if (strcmp(names[i] + is_scalar(names[i]), want) == 0) return n->params[i];
  }
  return 0;
}

static float* floats(uint64_t p) { return (float*)(uintptr_t)p; }

/* The kernels of tests/test_runtime_cuda.py's launch artifact, run with the launch's dimensions: an
 * element-wise kernel covers only grid.x * block.x elements, the reversal needs its whole input in
 * dynamic shared memory. Unknown kernels are only recorded. */
static int emulate(const node_t* n) {
  char names[MAX_PARAMS][64];
  int count = param_names(n->fn->name, names);
  if (!count) return OK;
  size_t threads = (size_t)n->grid[0] * n->block[0];
  if (strcmp(n->fn->name, "add_w_kernel") == 0) {
    float *x = floats(param(n, names, count, "x")), *w = floats(param(n, names, count, "w")),
          *y = floats(param(n, names, count, "y"));
    for (size_t i = 0; i < threads && i < EMULATED_N; ++i) y[i] = x[i] + w[i];
  } else if (strcmp(n->fn->name, "accum_kernel") == 0) {
    float *acc = floats(param(n, names, count, "acc")), *y = floats(param(n, names, count, "y"));
    int32_t k = (int32_t)param(n, names, count, "k");
    for (size_t i = 0; i < threads && i < EMULATED_N; ++i) acc[i] += y[i] * (float)k;
  } else if (strcmp(n->fn->name, "reverse_kernel") == 0) {
    float *a = floats(param(n, names, count, "a")), *r = floats(param(n, names, count, "r"));
    if (n->shared < EMULATED_N * sizeof(float)) {
      record("reverse_kernel: %u shared bytes cannot hold its %d floats", n->shared, EMULATED_N);
      return ILLEGAL_ADDRESS;
    }
    for (size_t i = 0; i < EMULATED_N; ++i) r[i] = a[EMULATED_N - 1 - i];
  }
  return OK;
}

static int run_node(const node_t* n) {
  if (n->is_copy) {
    memmove((void*)(uintptr_t)n->dst, (const void*)(uintptr_t)n->src, n->bytes);
    return OK;
  }
  return emulate(n);
}

static int enqueue(stream_t* s, const node_t* n) {
  if (!s || !s->capturing) return run_node(n);
  node_t* grown = realloc(s->nodes, sizeof(node_t) * (size_t)(s->num_nodes + 1));
  if (!grown || s->num_nodes >= MAX_NODES) return OUT_OF_MEMORY;
  s->nodes = grown;
  s->nodes[s->num_nodes++] = *n;
  return OK;
}

/* ---- device discovery --------------------------------------------------------------------------- */

EXPORT int cuInit(unsigned flags) {
  record("cuInit %u", flags);
  return (int)env("TIDE_STANDIN_INIT_RC", 0);
}

EXPORT int cuDeviceGetCount(int* count) {
  *count = (int)env("TIDE_STANDIN_DEVICES", 1);
  record("cuDeviceGetCount -> %d", *count);
  return OK;
}

EXPORT int cuDeviceGet(int* device, int ordinal) {
  if (ordinal < 0 || ordinal >= env("TIDE_STANDIN_DEVICES", 1)) return 101; /* CUDA_ERROR_INVALID_DEVICE */
  *device = ordinal;
  record("cuDeviceGet %d", ordinal);
  return OK;
}

EXPORT int cuDeviceGetAttribute(int* value, int attribute, int device) {
  long long cc = env("TIDE_STANDIN_CC", 90);
  if (attribute == 75) {
    *value = (int)(cc / 10);
  } else if (attribute == 76) {
    *value = (int)(cc % 10);
  } else if (attribute == 97) {
    *value = OPTIN_SHARED;
  } else {
    return INVALID_VALUE;
  }
  record("cuDeviceGetAttribute %d %d", attribute, device);
  return OK;
}

EXPORT int cuGetErrorString(int error, const char** text) {
  switch (error) {
    case OUT_OF_MEMORY: *text = "out of memory"; return OK;
    case 100: *text = "no CUDA-capable device is detected"; return OK;
    case 101: *text = "invalid device ordinal"; return OK;
    case ILLEGAL_ADDRESS: *text = "an illegal memory access was encountered"; return OK;
    default: *text = NULL; return INVALID_VALUE;
  }
}

EXPORT int cuDevicePrimaryCtxRetain(void** ctx, int device) {
  *ctx = &g_context_token;
  ++g_retained;
  record("cuDevicePrimaryCtxRetain %d", device);
  return OK;
}

EXPORT int cuDevicePrimaryCtxRelease_v2(int device) {
  if (g_retained <= 0) return INVALID_CONTEXT;
  --g_retained;
  record("cuDevicePrimaryCtxRelease %d", device);
  return OK;
}

EXPORT int cuCtxPushCurrent_v2(void* ctx) {
  if (ctx != &g_context_token) return INVALID_CONTEXT;
  ++t_depth;
  return OK;
}

EXPORT int cuCtxPopCurrent_v2(void** ctx) {
  if (t_depth <= 0) return INVALID_CONTEXT;
  --t_depth;
  if (ctx) *ctx = &g_context_token;
  return OK;
}

/* ---- modules ------------------------------------------------------------------------------------ */

EXPORT int cuModuleLoadData(void** module, const void* image) {
  if (need_context("cuModuleLoadData")) return INVALID_CONTEXT;
  const unsigned char* p = image;
  int elf = p[0] == 0x7f && p[1] == 'E' && p[2] == 'L' && p[3] == 'F';
  if (!elf) {
    record("cuModuleLoadData: not a cubin");
    return 200; /* CUDA_ERROR_INVALID_IMAGE */
  }
  *module = &g_module_token;
  record("cuModuleLoadData elf machine %u", (unsigned)(p[18] | (p[19] << 8)));
  return OK;
}

EXPORT int cuModuleUnload(void* module) {
  if (module != &g_module_token) return INVALID_HANDLE;
  record("cuModuleUnload");
  return OK;
}

EXPORT int cuModuleGetFunction(void** fn, void* module, const char* name) {
  if (need_context("cuModuleGetFunction")) return INVALID_CONTEXT;
  if (module != &g_module_token) return INVALID_HANDLE;
  function_t* f = NULL;
  for (int i = 0; i < g_num_functions && !f; ++i) {
    if (strcmp(g_functions[i].name, name) == 0) f = &g_functions[i];
  }
  if (!f) {
    if (g_num_functions == MAX_FUNCTIONS) return OUT_OF_MEMORY;
    f = &g_functions[g_num_functions++];
    snprintf(f->name, sizeof(f->name), "%s", name);
  }
  /* a module load starts each function with its attributes at their defaults */
  f->static_shared = (int)env("TIDE_STANDIN_STATIC_SHARED", 0);
  f->max_dynamic_shared = STATIC_SHARED - f->static_shared;
  *fn = f;
  return OK;
}

static function_t* as_function(void* fn) {
  function_t* f = fn;
  return f >= g_functions && f < g_functions + g_num_functions ? f : NULL;
}

EXPORT int cuFuncGetAttribute(int* value, int attribute, void* fn) {
  function_t* f = as_function(fn);
  if (!f) return INVALID_HANDLE;
  if (attribute != 1) return INVALID_VALUE; /* CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES */
  *value = f->static_shared;
  return OK;
}

EXPORT int cuFuncSetAttribute(void* fn, int attribute, int value) {
  function_t* f = as_function(fn);
  if (!f) return INVALID_HANDLE;
  if (attribute != 8 || value < 0 || value > OPTIN_SHARED - f->static_shared) {
    record("cuFuncSetAttribute %s max_dynamic_shared %d: above the %d bytes left by %d static", f->name, value,
           OPTIN_SHARED - f->static_shared, f->static_shared);
    return INVALID_VALUE;
  }
  f->max_dynamic_shared = value;
  record("cuFuncSetAttribute %s max_dynamic_shared %d", f->name, value);
  return OK;
}

/* ---- memory --------------------------------------------------------------------------------- */

EXPORT int cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
  size_t limit = memory_size();
  *total = limit;
  *free_bytes = g_used < limit ? limit - g_used : 0;
  return OK;
}

EXPORT int cuMemAlloc_v2(uint64_t* ptr, size_t size) {
  if (need_context("cuMemAlloc")) return INVALID_CONTEXT;
  if (size == 0) return INVALID_VALUE;
  void* p = device_alloc(size, 256, 0xA5);
  if (!p) {
    record("cuMemAlloc %zu -> out of memory", size);
    return OUT_OF_MEMORY;
  }
  *ptr = (uint64_t)(uintptr_t)p;
  record("cuMemAlloc %zu", size);
  return OK;
}

EXPORT int cuMemFree_v2(uint64_t ptr) {
  if (need_context("cuMemFree")) return INVALID_CONTEXT;
  size_t size = device_free(ptr);
  if (size) {
    record("cuMemFree %zu", size);
    return OK;
  }
  record("cuMemFree: 0x%llx was not allocated", (unsigned long long)ptr);
  return INVALID_VALUE;
}

static int copy(const char* call, stream_t* s, uint64_t dst, uint64_t src, size_t n, int dst_device, int src_device) {
  if (need_context(call)) return INVALID_CONTEXT;
  if ((dst_device && device_range(dst, n, call)) || (src_device && device_range(src, n, call))) return INVALID_VALUE;
  if (s && s->capturing && (!dst_device || !src_device)) {
    record("%s: host memory copy inside a stream capture", call);
    return STREAM_CAPTURE_UNSUPPORTED;
  }
  record("%s %zu", call, n);
  node_t node = {.is_copy = 1, .dst = dst, .src = src, .bytes = n};
  return enqueue(s, &node);
}

EXPORT int cuMemcpyHtoDAsync_v2(uint64_t dst, const void* src, size_t n, void* stream) {
  return copy("cuMemcpyHtoDAsync", stream, dst, (uint64_t)(uintptr_t)src, n, 1, 0);
}

EXPORT int cuMemcpyDtoHAsync_v2(void* dst, uint64_t src, size_t n, void* stream) {
  return copy("cuMemcpyDtoHAsync", stream, (uint64_t)(uintptr_t)dst, src, n, 0, 1);
}

EXPORT int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t n, void* stream) {
  return copy("cuMemcpyDtoDAsync", stream, dst, src, n, 1, 1);
}

EXPORT int cuMemsetD8Async(uint64_t dst, unsigned char value, size_t n, void* stream) {
  if (need_context("cuMemsetD8Async")) return INVALID_CONTEXT;
  if (device_range(dst, n, "cuMemsetD8Async")) return INVALID_VALUE;
  stream_t* s = stream;
  if (s && s->capturing) return STREAM_CAPTURE_UNSUPPORTED;
  memset((void*)(uintptr_t)dst, value, n);
  record("cuMemsetD8Async %zu", n);
  return OK;
}

/* ---- streams, launches, graphs, events ------------------------------------------------------- */

EXPORT int cuStreamCreate(void** stream, unsigned flags) {
  if (need_context("cuStreamCreate")) return INVALID_CONTEXT;
  *stream = calloc(1, sizeof(stream_t));
  record("cuStreamCreate %u", flags);
  return *stream ? OK : OUT_OF_MEMORY;
}

EXPORT int cuStreamDestroy_v2(void* stream) {
  stream_t* s = stream;
  if (!s) return INVALID_HANDLE;
  free(s->nodes);
  free(s);
  record("cuStreamDestroy");
  return OK;
}

EXPORT int cuStreamSynchronize(void* stream) {
  if (need_context("cuStreamSynchronize")) return INVALID_CONTEXT;
  stream_t* s = stream;
  if (s && s->capturing) return STREAM_CAPTURE_UNSUPPORTED;
  return (int)env("TIDE_STANDIN_SYNC_RC", 0);
}

EXPORT int cuLaunchKernel(void* fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                          unsigned shared, void* stream, void** params, void** extra) {
  if (need_context("cuLaunchKernel")) return INVALID_CONTEXT;
  function_t* f = as_function(fn);
  if (!f || !stream || extra) return INVALID_HANDLE;
  if (!gx || !gy || !gz || !bx || !by || !bz || (unsigned long long)bx * by * bz > 1024 || gy > 65535 || gz > 65535) {
    record("cuLaunchKernel %s: bad dimensions grid %ux%ux%u block %ux%ux%u", f->name, gx, gy, gz, bx, by, bz);
    return INVALID_VALUE;
  }
  if ((int)shared > f->max_dynamic_shared) {
    record("cuLaunchKernel %s: %u dynamic shared bytes above the function's limit %d", f->name, shared,
           f->max_dynamic_shared);
    return INVALID_VALUE;
  }
  node_t node = {.fn = f, .grid = {gx, gy, gz}, .block = {bx, by, bz}, .shared = shared};
  char names[MAX_PARAMS][64];
  node.num_params = param_names(f->name, names);
  for (int i = 0; i < node.num_params; ++i) {
    node.params[i] = 0;
    memcpy(&node.params[i], params[i], names[i][0] == '#' ? 4 : 8);
    if (!is_scalar(names[i]) && device_range(node.params[i], 1, f->name)) {
      record("cuLaunchKernel %s: parameter %d (%s) is not a device pointer", f->name, i, names[i]);
      return ILLEGAL_ADDRESS;
    }
  }
  stream_t* s = stream;
  record("cuLaunchKernel %s grid %u,%u,%u block %u,%u,%u shared %u%s", f->name, gx, gy, gz, bx, by, bz, shared,
         s->capturing ? " (captured)" : "");
  return enqueue(s, &node);
}

EXPORT int cuStreamBeginCapture_v2(void* stream, int mode) {
  if (need_context("cuStreamBeginCapture")) return INVALID_CONTEXT;
  stream_t* s = stream;
  if (!s || s->capturing) return INVALID_VALUE;
  s->capturing = 1;
  s->num_nodes = 0;
  record("cuStreamBeginCapture mode %d", mode);
  return OK;
}

EXPORT int cuStreamEndCapture(void* stream, void** graph) {
  stream_t* s = stream;
  if (!s || !s->capturing) return INVALID_VALUE;
  graph_t* g = calloc(1, sizeof(*g));
  if (!g) return OUT_OF_MEMORY;
  g->num_nodes = s->num_nodes;
  g->nodes = s->nodes;
  s->nodes = NULL;
  s->num_nodes = 0;
  s->capturing = 0;
  *graph = g;
  record("cuStreamEndCapture nodes %d", g->num_nodes);
  return OK;
}

EXPORT int cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long flags) {
  graph_t* g = graph;
  if (!g || flags) return INVALID_VALUE;
  graph_t* e = calloc(1, sizeof(*e));
  if (!e) return OUT_OF_MEMORY;
  e->num_nodes = g->num_nodes;
  e->nodes = malloc(sizeof(node_t) * (size_t)(g->num_nodes ? g->num_nodes : 1));
  if (!e->nodes) {
    free(e);
    return OUT_OF_MEMORY;
  }
  memcpy(e->nodes, g->nodes, sizeof(node_t) * (size_t)g->num_nodes);
  *exec = e;
  record("cuGraphInstantiate nodes %d", e->num_nodes);
  return OK;
}

EXPORT int cuGraphLaunch(void* exec, void* stream) {
  if (need_context("cuGraphLaunch")) return INVALID_CONTEXT;
  graph_t* e = exec;
  if (!e || !stream) return INVALID_HANDLE;
  record("cuGraphLaunch nodes %d", e->num_nodes);
  for (int i = 0; i < e->num_nodes; ++i) {
    int rc = run_node(&e->nodes[i]);
    if (rc) return rc;
  }
  return OK;
}

static int destroy_graph(void* graph, const char* call) {
  graph_t* g = graph;
  if (!g) return INVALID_HANDLE;
  free(g->nodes);
  free(g);
  record("%s", call);
  return OK;
}

EXPORT int cuGraphExecDestroy(void* exec) { return destroy_graph(exec, "cuGraphExecDestroy"); }
EXPORT int cuGraphDestroy(void* graph) { return destroy_graph(graph, "cuGraphDestroy"); }

EXPORT int cuEventCreate(void** event, unsigned flags) {
  if (need_context("cuEventCreate")) return INVALID_CONTEXT;
  (void)flags;
  *event = event_create();
  return *event ? OK : OUT_OF_MEMORY;
}

EXPORT int cuEventRecord(void* event, void* stream) {
  if (!event || !stream) return INVALID_HANDLE;
  event_record(event);
  record("cuEventRecord");
  return OK;
}

EXPORT int cuEventSynchronize(void* event) {
  if (!event) return INVALID_HANDLE;
  return (int)env("TIDE_STANDIN_SYNC_RC", 0);
}

EXPORT int cuEventElapsedTime(float* ms, void* start, void* stop) {
  if (!start || !stop) return INVALID_HANDLE;
  *ms = event_elapsed_ms(start, stop);
  return OK;
}

EXPORT int cuEventDestroy_v2(void* event) {
  free(event);
  return OK;
}
