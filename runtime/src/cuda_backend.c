/*
 * The CUDA backend: what a cuda artifact needs beyond the plan executor (session.c).
 *
 * Model (shared by its sessions): the driver, the device's primary context, the DEVICE_CODE image
 * loaded as one module, a function record per device function, and the weights copied to the device
 * once. The kernel library's host stubs reach the backend through three function-pointer variables
 * the loader fills (tide_cuda_bind_library):
 *   __TVMFFIHandleInitOnce(slot, init)           fills a stub's cached handle once (lock-free)
 *   __TVMFFIEnvModLookupFromImports(ctx, name, out)  ctx = the model; name -> its function record
 *   __TVMFFIFunctionCall(handle, args, n, ret)   "__tvm_set_device" checks the device; a kernel is
 *                                                packed (tide_cuda_pack_launch) and launched on the
 *                                                stream of the session running on this thread
 * Session: a stream, the device arena / states / input staging, timing events, and one CUDA graph
 * per entry (captured on the entry's second run, replayed after).
 *
 * Every driver call runs with the model's context pushed on the calling thread (the backend's enter /
 * leave around each public call).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define TIDE_CU_ATTR_MAX_SHARED_OPTIN 97      /* CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN */
#define TIDE_CU_FUNC_ATTR_STATIC_SHARED 1      /* CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES */
#define TIDE_CU_FUNC_ATTR_MAX_DYN_SHARED 8     /* CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES */
#define TIDE_CU_STREAM_NON_BLOCKING 1
#define TIDE_CU_CAPTURE_THREAD_LOCAL 1
#define TIDE_CU_EVENT_DEFAULT 0
#define TIDE_STATIC_SHARED_LIMIT (48u * 1024u)

typedef struct tide_cuda_model_s tide_cuda_model_t;
typedef struct tide_cuda_session_s tide_cuda_session_t;

typedef struct tide_cuda_fn_s {
  tide_cuda_model_t* model;
  int32_t index; /* device function index; -1: __tvm_set_device */
  void* function;
  int static_shared; /* bytes of __shared__ arrays the function declares */
  atomic_int shared_opted_in;
} tide_cuda_fn_t;

struct tide_cuda_model_s {
  tide_cuda_driver_t* drv;
  const tide_artifact_t* artifact;
  int32_t ordinal;
  int device;
  int cc_major, cc_minor;
  int max_shared_optin;
  uint32_t image;
  void* ctx;
  void* module;
  uint64_t weights; /* device copy of the WEIGHTS section */
  tide_cuda_fn_t set_device;
  tide_cuda_fn_t* functions;
};

struct tide_cuda_session_s {
  tide_cuda_model_t* model;
  void* stream;
  void* start;
  void* stop;
  uint32_t num_graphs;
  void** graphs;       /* per entry: an instantiated graph, or NULL */
  uint32_t* eager_runs; /* per entry: runs made without a graph */
  int use_graphs;
  /* Device workspace per entry: the blocks TVMBackendAllocWorkspace asked for during a run of the
   * entry, in request order. Each run of an entry asks in the same order for the same sizes (the
   * plan is static), so runs reuse them from the first on: stable addresses for the entry's graph,
   * no cuMemAlloc after its first run. */
  struct workspace_s {
    struct {
      uint64_t ptr, size;
    }* blocks;
    uint32_t count, cap;
  }* workspace; /* per entry */
  uint32_t running_entry, workspace_next;
  void** profile_events; /* profiling: an event before the first op and after each */
  uint32_t num_profile_events;
};

static tide_status_t cuda_enter(void* dm) {
  tide_cuda_model_t* m = dm;
  int rc = m->drv->cuCtxPushCurrent(m->ctx);
  return rc ? tide_cuda_error(m->drv, rc, "cuCtxPushCurrent") : NULL;
}

static void cuda_leave(void* dm) {
  tide_cuda_model_t* m = dm;
  void* ctx = NULL;
  m->drv->cuCtxPopCurrent(&ctx);
}

static tide_status_t cuda_alloc(void* dm, uint64_t nbytes, const char* what, uint64_t* out_ptr) {
  tide_cuda_model_t* m = dm;
  *out_ptr = 0;
  int rc = m->drv->cuMemAlloc(out_ptr, (size_t)(nbytes ? nbytes : 64));
  if (!rc) return NULL;
  *out_ptr = 0;
  if (rc != TIDE_CUDA_ERROR_OUT_OF_MEMORY) return tide_cuda_error(m->drv, rc, "cuMemAlloc");
  size_t free_bytes = 0, total = 0;
  m->drv->cuMemGetInfo(&free_bytes, &total);
  return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED,
                          "out of device memory on cuda:%d allocating %llu bytes for %s (%llu of %llu bytes free)",
                          m->ordinal, (unsigned long long)nbytes, what, (unsigned long long)free_bytes,
                          (unsigned long long)total);
}

static void cuda_free(void* dm, uint64_t ptr) {
  tide_cuda_model_t* m = dm;
  if (ptr) m->drv->cuMemFree(ptr);
}

static uint64_t cuda_weights(const void* dm) { return ((const tide_cuda_model_t*)dm)->weights; }
static int32_t cuda_ordinal(const void* dm) { return ((const tide_cuda_model_t*)dm)->ordinal; }

static void cuda_model_release(void* dm) {
  tide_cuda_model_t* m = dm;
  if (!m) return;
  if (m->ctx) {
    int pushed = m->drv->cuCtxPushCurrent(m->ctx) == 0;
    cuda_free(m, m->weights);
    if (m->module) m->drv->cuModuleUnload(m->module);
    if (pushed) cuda_leave(m);
    m->drv->cuDevicePrimaryCtxRelease(m->device);
  }
  tide_cuda_driver_close(m->drv);
  free(m->functions);
  free(m);
}

static tide_status_t load_module(tide_cuda_model_t* m, const uint8_t* device_code) {
  const tide_artifact_t* a = m->artifact;
  const tide_device_image_t* img = &a->device_images[m->image];
  /* cuModuleLoadData reads a cubin/fatbin by its own headers and ptx up to a NUL: give it a copy
   * that ends in one (the section bytes are neither aligned nor terminated). */
  uint8_t* copy = malloc((size_t)img->size + 1);
  if (!copy) return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory copying the device image");
  memcpy(copy, device_code + img->offset, (size_t)img->size);
  copy[img->size] = 0;
  int rc = m->drv->cuModuleLoadData(&m->module, copy);
  free(copy);
  if (rc) {
    m->module = NULL;
    return tide_make_status(rc == TIDE_CUDA_ERROR_OUT_OF_MEMORY ? TIDE_STATUS_RESOURCE_EXHAUSTED : TIDE_STATUS_DATA_LOSS,
                            "cuModuleLoadData of the %s image (%llu bytes) failed: CUDA error %d (%s)", img->arch,
                            (unsigned long long)img->size, rc, tide_cuda_error_text(m->drv, rc));
  }
  m->functions = calloc(a->num_device_functions ? a->num_device_functions : 1, sizeof(tide_cuda_fn_t));
  if (!m->functions) return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  m->set_device = (tide_cuda_fn_t){.model = m, .index = -1};
  for (uint32_t i = 0; i < a->num_device_functions; ++i) {
    tide_cuda_fn_t* f = &m->functions[i];
    f->model = m;
    f->index = (int32_t)i;
    rc = m->drv->cuModuleGetFunction(&f->function, m->module, a->device_functions[i].name);
    if (!rc) rc = m->drv->cuFuncGetAttribute(&f->static_shared, TIDE_CU_FUNC_ATTR_STATIC_SHARED, f->function);
    if (rc) {
      return tide_make_status(TIDE_STATUS_DATA_LOSS,
                              "device function '%s' is not in the %s image: cuModuleGetFunction failed with CUDA "
                              "error %d (%s)",
                              a->device_functions[i].name, img->arch, rc, tide_cuda_error_text(m->drv, rc));
    }
  }
  return NULL;
}

tide_status_t tide_cuda_model_create(const tide_artifact_t* art, const uint8_t* file, const tide_model_options_t* o,
                                     void** out_dm) {
  *out_dm = NULL;
  tide_cuda_model_t* m = calloc(1, sizeof(*m));
  if (!m) return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  m->artifact = art;
  m->ordinal = o->device_ordinal;
  tide_status_t st = tide_cuda_driver_open(o->cuda_driver_path ? o->cuda_driver_path : "libcuda.so.1", &m->drv);
  if (!st) st = tide_cuda_device_capability(m->drv, m->ordinal, &m->cc_major, &m->cc_minor);
  if (!st) st = tide_cuda_select_image(art, m->cc_major, m->cc_minor, &m->image);
  if (!st) {
    int rc = m->drv->cuDeviceGet(&m->device, m->ordinal);
    if (!rc) rc = m->drv->cuDeviceGetAttribute(&m->max_shared_optin, TIDE_CU_ATTR_MAX_SHARED_OPTIN, m->device);
    if (rc) st = tide_cuda_error(m->drv, rc, "cuDeviceGetAttribute(max shared memory per block, opt-in)");
  }
  if (!st) {
    int rc = m->drv->cuDevicePrimaryCtxRetain(&m->ctx, m->device);
    if (rc) {
      m->ctx = NULL;
      st = tide_cuda_error(m->drv, rc, "cuDevicePrimaryCtxRetain");
    }
  }
  if (!st) st = cuda_enter(m);
  if (st) {
    cuda_model_release(m);
    return st;
  }
  st = load_module(m, file + art->sections[TIDE_SECTION_DEVICE_CODE].offset);
  const tide_section_ref_t* w = &art->sections[TIDE_SECTION_WEIGHTS];
  if (!st) st = cuda_alloc(m, w->size, "the weights", &m->weights);
  if (!st && w->size) {
    int rc = m->drv->cuMemcpyHtoDAsync(m->weights, file + w->offset, (size_t)w->size, NULL);
    if (!rc) rc = m->drv->cuStreamSynchronize(NULL);
    if (rc) st = tide_cuda_error(m->drv, rc, "copying the weights to the device");
  }
  cuda_leave(m);
  if (st) {
    cuda_model_release(m);
    return st;
  }
  *out_dm = m;
  return NULL;
}

/* ---- the host stubs' services --------------------------------------------------------------- */

typedef int (*tide_handle_init_fn_t)(void** out_handle);

static int handle_init_once(void** slot, tide_handle_init_fn_t init) {
  _Atomic(void*)* cell = (_Atomic(void*)*)slot;
  if (atomic_load(cell)) return 0;
  void* handle = NULL;
  int rc = init(&handle);
  if (rc) return rc;
  void* expected = NULL;
  atomic_compare_exchange_strong(cell, &expected, handle); /* lookups are idempotent: any winner is right */
  return 0;
}

static int env_mod_lookup(void* library_ctx, const char* name, void** out_handle) {
  tide_cuda_model_t* m = library_ctx;
  if (!m) {
    tide_report_error(tide_current_session(), "the kernel library's module context is not set (not loaded by tide)");
    return -1;
  }
  if (strcmp(name, "__tvm_set_device") == 0) {
    *out_handle = &m->set_device;
    return 0;
  }
  for (uint32_t i = 0; i < m->artifact->num_device_functions; ++i) {
    if (strcmp(m->artifact->device_functions[i].name, name) == 0) {
      *out_handle = &m->functions[i];
      return 0;
    }
  }
  tide_report_error(tide_current_session(),
                    "the kernel library looks up device function '%s', which the artifact's DEVICE_CODE lacks", name);
  return -1;
}

static int set_device(tide_cuda_fn_t* f, tide_session_t* s, const tide_ffi_any_t* args, int32_t n) {
  if (n != 2 || args[0].type_index != TIDE_FFI_INT || args[1].type_index != TIDE_FFI_INT) {
    tide_report_error(s, "__tvm_set_device takes (device_type, device_id) integers; got %d arguments", n);
    return -1;
  }
  if (args[0].v_int64 != TIDE_DL_CUDA || args[1].v_int64 != f->model->ordinal) {
    tide_report_error(s, "a kernel asks for device (type %lld, id %lld); this model runs on cuda:%d",
                      (long long)args[0].v_int64, (long long)args[1].v_int64, f->model->ordinal);
    return -1;
  }
  return 0;
}

static int function_call(void* handle, const tide_ffi_any_t* args, int32_t n, tide_ffi_any_t* result) {
  tide_cuda_fn_t* f = handle;
  tide_session_t* s = tide_current_session();
  if (result) memset(result, 0, sizeof(*result));
  if (!s || s->model->device != &tide_cuda_backend) {
    tide_report_error(s, "a device kernel was called outside a cuda session's run");
    return -1;
  }
  if (f->index < 0) return set_device(f, s, args, n);
  tide_cuda_model_t* m = f->model;
  const tide_device_function_t* df = &m->artifact->device_functions[f->index];
  tide_cuda_launch_t launch;
  tide_status_t st = tide_cuda_pack_launch(df, args, n, &launch);
  if (st) {
    tide_report_error(s, "%s", tide_status_message(st));
    tide_status_free(st);
    return -1;
  }
  /* Static plus dynamic shared memory above 48 KiB needs the function's opt-in, up to the device's
   * per-block limit. */
  uint64_t total_shared = (uint64_t)launch.shared_bytes + (uint64_t)f->static_shared;
  if (total_shared > TIDE_STATIC_SHARED_LIMIT) {
    if (total_shared > (uint64_t)m->max_shared_optin) {
      tide_report_error(s,
                        "device function '%s' needs %u + %d (static) bytes of shared memory per block; cuda:%d "
                        "allows %d (sm_%d%d)",
                        df->name, launch.shared_bytes, f->static_shared, m->ordinal, m->max_shared_optin, m->cc_major,
                        m->cc_minor);
      return -1;
    }
    if (!atomic_load(&f->shared_opted_in)) {
      int dynamic = m->max_shared_optin - f->static_shared;
      int rc = m->drv->cuFuncSetAttribute(f->function, TIDE_CU_FUNC_ATTR_MAX_DYN_SHARED, dynamic);
      if (rc) {
        tide_report_error(s, "cuFuncSetAttribute(%s, max dynamic shared memory %d) failed: CUDA error %d (%s)",
                          df->name, dynamic, rc, tide_cuda_error_text(m->drv, rc));
        return -1;
      }
      atomic_store(&f->shared_opted_in, 1);
    }
  }
  int rc = m->drv->cuLaunchKernel(f->function, launch.grid[0], launch.grid[1], launch.grid[2], launch.block[0],
                                  launch.block[1], launch.block[2], launch.shared_bytes, ((tide_cuda_session_t*)s->device)->stream,
                                  launch.params, NULL);
  if (rc) {
    tide_report_error(s, "cuLaunchKernel(%s, grid %ux%ux%u, block %ux%ux%u, %u shared bytes) failed: CUDA error %d (%s)",
                      df->name, launch.grid[0], launch.grid[1], launch.grid[2], launch.block[0], launch.block[1],
                      launch.block[2], launch.shared_bytes, rc, tide_cuda_error_text(m->drv, rc));
    return -1;
  }
  return 0;
}

typedef int (*tide_handle_init_once_fn_t)(void**, tide_handle_init_fn_t);
typedef int (*tide_env_mod_lookup_fn_t)(void*, const char*, void**);
typedef int (*tide_function_call_fn_t)(void*, const tide_ffi_any_t*, int32_t, tide_ffi_any_t*);

static tide_status_t fill(void* lib, const char* name, const void* value, size_t size) {
  dlerror();
  void* var = dlsym(lib, name);
  if (!var) {
    return tide_make_status(TIDE_STATUS_NOT_FOUND,
                            "the kernel library of this cuda artifact has no %s: it holds no device-launch stubs", name);
  }
  memcpy(var, value, size);
  return NULL;
}

tide_status_t tide_cuda_bind_library(void* dm, void* lib) {
  tide_cuda_model_t* m = dm;
  if (!m->artifact->num_device_functions) return NULL;
  if (!lib) {
    return tide_make_status(TIDE_STATUS_DATA_LOSS,
                            "the artifact has %u device functions but no kernel library to launch them",
                            m->artifact->num_device_functions);
  }
  tide_handle_init_once_fn_t init = handle_init_once;
  tide_env_mod_lookup_fn_t lookup = env_mod_lookup;
  tide_function_call_fn_t call = function_call;
  void* ctx = m;
  tide_status_t st = fill(lib, "__TVMFFIHandleInitOnce", &init, sizeof(init));
  if (!st) st = fill(lib, "__TVMFFIEnvModLookupFromImports", &lookup, sizeof(lookup));
  if (!st) st = fill(lib, "__TVMFFIFunctionCall", &call, sizeof(call));
  if (!st) st = fill(lib, "__tvm_ffi__library_ctx", &ctx, sizeof(ctx));
  return st;
}

/* ---- sessions --------------------------------------------------------------------------------- */


static void cuda_session_release(void* ds) {
  tide_cuda_session_t* cs = ds;
  if (!cs) return;
  tide_cuda_driver_t* drv = cs->model->drv;
  int pushed = cuda_enter(cs->model) == NULL;
  for (uint32_t i = 0; i < cs->num_graphs && cs->graphs; ++i) {
    if (cs->graphs[i]) drv->cuGraphExecDestroy(cs->graphs[i]);
  }
  if (cs->start) drv->cuEventDestroy(cs->start);
  if (cs->stop) drv->cuEventDestroy(cs->stop);
  for (uint32_t i = 0; i < cs->num_profile_events; ++i) drv->cuEventDestroy(cs->profile_events[i]);
  free(cs->profile_events);
  if (cs->stream) drv->cuStreamDestroy(cs->stream);
  for (uint32_t e = 0; cs->workspace && e < cs->num_graphs; ++e) {
    for (uint32_t i = 0; i < cs->workspace[e].count; ++i) cuda_free(cs->model, cs->workspace[e].blocks[i].ptr);
    free(cs->workspace[e].blocks);
  }
  if (pushed) cuda_leave(cs->model);
  free(cs->workspace);
  free(cs->graphs);
  free(cs->eager_runs);
  free(cs);
}

static tide_status_t cuda_session_create(void* dm, uint32_t num_entries, int use_graphs, void** out_ds) {
  tide_cuda_model_t* m = dm;
  *out_ds = NULL;
  tide_cuda_session_t* cs = calloc(1, sizeof(*cs));
  if (!cs) return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  cs->model = m;
  cs->use_graphs = use_graphs;
  cs->num_graphs = num_entries;
  cs->graphs = calloc(num_entries ? num_entries : 1, sizeof(void*));
  cs->eager_runs = calloc(num_entries ? num_entries : 1, sizeof(uint32_t));
  cs->workspace = calloc(num_entries ? num_entries : 1, sizeof(cs->workspace[0]));
  if (!cs->graphs || !cs->eager_runs || !cs->workspace) {
    cuda_session_release(cs);
    return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  tide_status_t st = NULL;
  int rc = m->drv->cuStreamCreate(&cs->stream, TIDE_CU_STREAM_NON_BLOCKING);
  if (rc) {
    cs->stream = NULL;
    st = tide_cuda_error(m->drv, rc, "cuStreamCreate");
  }
  if (!st && (rc = m->drv->cuEventCreate(&cs->start, TIDE_CU_EVENT_DEFAULT)) != 0) {
    cs->start = NULL;
    st = tide_cuda_error(m->drv, rc, "cuEventCreate");
  }
  if (!st && (rc = m->drv->cuEventCreate(&cs->stop, TIDE_CU_EVENT_DEFAULT)) != 0) {
    cs->stop = NULL;
    st = tide_cuda_error(m->drv, rc, "cuEventCreate");
  }
  if (st) {
    cuda_session_release(cs);
    return st;
  }
  *out_ds = cs;
  return NULL;
}

static tide_status_t cuda_copy(void* ds, tide_copy_kind_t kind, void* dst, const void* src, uint64_t nbytes) {
  tide_cuda_session_t* cs = ds;
  if (!nbytes) return NULL;
  tide_cuda_driver_t* drv = cs->model->drv;
  int rc = 0;
  const char* call = "";
  switch (kind) {
    case TIDE_COPY_HOST_TO_DEVICE:
      rc = drv->cuMemcpyHtoDAsync((uint64_t)(uintptr_t)dst, src, (size_t)nbytes, cs->stream);
      call = "cuMemcpyHtoDAsync";
      break;
    case TIDE_COPY_DEVICE_TO_HOST:
      rc = drv->cuMemcpyDtoHAsync(dst, (uint64_t)(uintptr_t)src, (size_t)nbytes, cs->stream);
      call = "cuMemcpyDtoHAsync";
      break;
    case TIDE_COPY_DEVICE_TO_DEVICE:
      rc = drv->cuMemcpyDtoDAsync((uint64_t)(uintptr_t)dst, (uint64_t)(uintptr_t)src, (size_t)nbytes, cs->stream);
      call = "cuMemcpyDtoDAsync";
      break;
  }
  return rc ? tide_cuda_error(drv, rc, call) : NULL;
}

static tide_status_t cuda_zero(void* ds, void* dst, uint64_t nbytes) {
  tide_cuda_session_t* cs = ds;
  if (!nbytes) return NULL;
  int rc = cs->model->drv->cuMemsetD8Async((uint64_t)(uintptr_t)dst, 0, (size_t)nbytes, cs->stream);
  return rc ? tide_cuda_error(cs->model->drv, rc, "cuMemsetD8Async") : NULL;
}

static tide_status_t cuda_sync(void* ds) {
  tide_cuda_session_t* cs = ds;
  int rc = cs->model->drv->cuStreamSynchronize(cs->stream);
  return rc ? tide_cuda_error(cs->model->drv, rc, "cuStreamSynchronize (a kernel or copy failed on the device)")
            : NULL;
}

/* The entry's graph once it exists; the first run of an entry is eager (the stubs resolve their
 * handles and opt into shared memory then, outside any capture). */
static void* cuda_workspace_alloc(void* ds, uint64_t nbytes, tide_status_t* out_status) {
  tide_cuda_session_t* cs = ds;
  struct workspace_s* w = &cs->workspace[cs->running_entry];
  uint32_t at = cs->workspace_next;
  if (at < w->count && w->blocks[at].size >= nbytes) {
    ++cs->workspace_next;
    return (void*)(uintptr_t)w->blocks[at].ptr;
  }
  if (at < w->count) { /* a larger request at this position than in an earlier (failed) run */
    cuda_free(cs->model, w->blocks[at].ptr);
    w->blocks[at].ptr = w->blocks[at].size = 0;
  } else {
    if (w->count == w->cap) {
      uint32_t cap = w->cap ? 2 * w->cap : 8;
      void* grown = realloc(w->blocks, sizeof(w->blocks[0]) * cap);
      if (!grown) {
        *out_status = tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return NULL;
      }
      w->blocks = grown;
      w->cap = cap;
    }
    w->blocks[w->count].ptr = w->blocks[w->count].size = 0;
    at = w->count++;
  }
  *out_status = cuda_alloc(cs->model, nbytes, "a kernel's workspace", &w->blocks[at].ptr);
  if (*out_status) return NULL;
  w->blocks[at].size = nbytes;
  cs->workspace_next = at + 1;
  return (void*)(uintptr_t)w->blocks[at].ptr;
}

/* Blocks are kept for the next run's same request (freed with the session). */
static void cuda_workspace_free(void* ds, void* ptr) {
  (void)ds;
  (void)ptr;
}

static tide_status_t cuda_execute(void* ds, uint32_t entry, tide_ops_fn_t run_ops, void* ctx) {
  tide_cuda_session_t* cs = ds;
  cs->running_entry = entry;
  cs->workspace_next = 0;
  tide_cuda_driver_t* drv = cs->model->drv;
  if (cs->graphs[entry]) {
    int rc = drv->cuGraphLaunch(cs->graphs[entry], cs->stream);
    return rc ? tide_cuda_error(drv, rc, "cuGraphLaunch") : NULL;
  }
  if (!cs->use_graphs || cs->eager_runs[entry] == 0) {
    tide_status_t st = run_ops(ctx);
    if (!st) ++cs->eager_runs[entry];
    return st;
  }
  int rc = drv->cuStreamBeginCapture(cs->stream, TIDE_CU_CAPTURE_THREAD_LOCAL);
  if (rc) return tide_cuda_error(drv, rc, "cuStreamBeginCapture");
  tide_status_t st = run_ops(ctx);
  void* graph = NULL;
  rc = drv->cuStreamEndCapture(cs->stream, &graph);
  if (st) {
    if (!rc && graph) drv->cuGraphDestroy(graph);
    return st;
  }
  if (rc) return tide_cuda_error(drv, rc, "cuStreamEndCapture");
  void* exec = NULL;
  rc = drv->cuGraphInstantiate(&exec, graph, 0);
  drv->cuGraphDestroy(graph);
  if (rc) return tide_cuda_error(drv, rc, "cuGraphInstantiateWithFlags");
  cs->graphs[entry] = exec;
  rc = drv->cuGraphLaunch(exec, cs->stream);
  return rc ? tide_cuda_error(drv, rc, "cuGraphLaunch") : NULL;
}

static tide_status_t cuda_time(void* ds, uint32_t entry, tide_ops_fn_t run_ops, void* ctx, double* out_seconds) {
  tide_cuda_session_t* cs = ds;
  tide_cuda_driver_t* drv = cs->model->drv;
  int rc = drv->cuEventRecord(cs->start, cs->stream);
  if (rc) return tide_cuda_error(drv, rc, "cuEventRecord");
  tide_status_t st = cuda_execute(cs, entry, run_ops, ctx);
  if (st) return st;
  rc = drv->cuEventRecord(cs->stop, cs->stream);
  if (!rc) rc = drv->cuEventSynchronize(cs->stop);
  if (rc) return tide_cuda_error(drv, rc, "cuEventSynchronize (a kernel failed on the device)");
  float ms = 0;
  rc = drv->cuEventElapsedTime(&ms, cs->start, cs->stop);
  if (rc) return tide_cuda_error(drv, rc, "cuEventElapsedTime");
  *out_seconds = (double)ms * 1e-3;
  return NULL;
}

/* Eager launches with an event between consecutive ops (graphs would hide the ops' own times). */
static tide_status_t cuda_profile(void* ds, uint32_t entry, uint32_t num_ops, tide_op_fn_t run_op, void* ctx,
                                  double* out_seconds) {
  tide_cuda_session_t* cs = ds;
  tide_cuda_driver_t* drv = cs->model->drv;
  if (cs->num_profile_events < num_ops + 1) {
    void** grown = realloc(cs->profile_events, sizeof(void*) * (num_ops + 1));
    if (!grown) return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory for %u events", num_ops + 1);
    cs->profile_events = grown;
    for (; cs->num_profile_events < num_ops + 1; ++cs->num_profile_events) {
      int rc = drv->cuEventCreate(&cs->profile_events[cs->num_profile_events], TIDE_CU_EVENT_DEFAULT);
      if (rc) return tide_cuda_error(drv, rc, "cuEventCreate");
    }
  }
  cs->running_entry = entry;
  cs->workspace_next = 0;
  int rc = drv->cuEventRecord(cs->profile_events[0], cs->stream);
  if (rc) return tide_cuda_error(drv, rc, "cuEventRecord");
  for (uint32_t o = 0; o < num_ops; ++o) {
    tide_status_t st = run_op(ctx, o);
    if (st) return st;
    rc = drv->cuEventRecord(cs->profile_events[o + 1], cs->stream);
    if (rc) return tide_cuda_error(drv, rc, "cuEventRecord");
  }
  rc = drv->cuEventSynchronize(cs->profile_events[num_ops]);
  if (rc) return tide_cuda_error(drv, rc, "cuEventSynchronize (a kernel failed on the device)");
  for (uint32_t o = 0; o < num_ops; ++o) {
    float ms = 0;
    rc = drv->cuEventElapsedTime(&ms, cs->profile_events[o], cs->profile_events[o + 1]);
    if (rc) return tide_cuda_error(drv, rc, "cuEventElapsedTime");
    out_seconds[o] = (double)ms * 1e-3;
  }
  return NULL;
}

const tide_device_backend_t tide_cuda_backend = {
    .name = "cuda",
    .dl_device_type = TIDE_DL_CUDA,
    .enter = cuda_enter,
    .leave = cuda_leave,
    .model_release = cuda_model_release,
    .weights = cuda_weights,
    .ordinal = cuda_ordinal,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .session_create = cuda_session_create,
    .session_release = cuda_session_release,
    .copy = cuda_copy,
    .zero = cuda_zero,
    .sync = cuda_sync,
    .execute = cuda_execute,
    .time = cuda_time,
    .profile = cuda_profile,
    .launch = NULL,
    .workspace_alloc = cuda_workspace_alloc,
    .workspace_free = cuda_workspace_free,
};
