/*
 * The Ascend backend, written against AscendCL (libascendcl.so, CANN) loaded at run time with
 * dlopen, so the runtime builds and loads where CANN is absent. Structured like the CUDA backend:
 *
 * Model: aclInit once per process (repeat calls report "already initialized", which is accepted),
 * the device (aclrtSetDevice) and its SoC checked against the artifact's, an explicit context, one
 * binary per kernel (aclrtBinaryLoadFromData + aclrtBinaryGetFunction by the kernel's name) and the
 * weights copied to the device once.
 * Session: a stream, the device arena / states / input buffers (session.c) and one device buffer
 * with every call's argument slots, packed once at bind (docs/artifact-format.md: one 8-byte slot
 * per argument, a buffer's device address or an int64). A call op is one aclrtLaunchKernel.
 *
 * Not verified against a real CANN install (there is none here): the entry points and their
 * signatures follow the AscendCL reference (CANN 8.x); tests run a recording stand-in
 * (runtime/tests/acl_standin.c).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define TIDE_ACL_MEMCPY_HOST_TO_DEVICE 1
#define TIDE_ACL_MEMCPY_DEVICE_TO_HOST 2
#define TIDE_ACL_MEMCPY_DEVICE_TO_DEVICE 3
#define TIDE_ACL_MALLOC_HUGE_FIRST 0
#define TIDE_ACL_HBM_MEM 1
#define TIDE_ACL_ERROR_REPEAT_INITIALIZE 100002
#define TIDE_DL_EXT_DEV 12 /* DLPack has no Ascend device type: its extension type */

/* field, exported symbol, params (every entry point returns aclError, an int) */
#define TIDE_ACL_SYMBOLS(X)                                                                  \
  X(aclInit, "aclInit", (const char*))                                                       \
  X(aclrtGetDeviceCount, "aclrtGetDeviceCount", (uint32_t*))                                 \
  X(aclrtSetDevice, "aclrtSetDevice", (int32_t))                                             \
  X(aclrtResetDevice, "aclrtResetDevice", (int32_t))                                         \
  X(aclrtCreateContext, "aclrtCreateContext", (void**, int32_t))                             \
  X(aclrtDestroyContext, "aclrtDestroyContext", (void*))                                     \
  X(aclrtSetCurrentContext, "aclrtSetCurrentContext", (void*))                               \
  X(aclrtCreateStream, "aclrtCreateStream", (void**))                                        \
  X(aclrtDestroyStream, "aclrtDestroyStream", (void*))                                       \
  X(aclrtSynchronizeStream, "aclrtSynchronizeStream", (void*))                               \
  X(aclrtMalloc, "aclrtMalloc", (void**, size_t, int))                                       \
  X(aclrtFree, "aclrtFree", (void*))                                                         \
  X(aclrtGetMemInfo, "aclrtGetMemInfo", (int, size_t*, size_t*))                            \
  X(aclrtMemcpy, "aclrtMemcpy", (void*, size_t, const void*, size_t, int))                   \
  X(aclrtMemcpyAsync, "aclrtMemcpyAsync", (void*, size_t, const void*, size_t, int, void*))  \
  X(aclrtMemsetAsync, "aclrtMemsetAsync", (void*, size_t, int32_t, size_t, void*))           \
  X(aclrtBinaryLoadFromData, "aclrtBinaryLoadFromData", (const void*, size_t, const void*, void**)) \
  X(aclrtBinaryGetFunction, "aclrtBinaryGetFunction", (void*, const char*, void**))          \
  X(aclrtBinaryUnLoad, "aclrtBinaryUnLoad", (void*))                                         \
  X(aclrtLaunchKernel, "aclrtLaunchKernel", (void*, uint32_t, const void*, size_t, void*))   \
  X(aclrtCreateEvent, "aclrtCreateEvent", (void**))                                          \
  X(aclrtRecordEvent, "aclrtRecordEvent", (void*, void*))                                    \
  X(aclrtSynchronizeEvent, "aclrtSynchronizeEvent", (void*))                                 \
  X(aclrtEventElapsedTime, "aclrtEventElapsedTime", (float*, void*, void*))                  \
  X(aclrtDestroyEvent, "aclrtDestroyEvent", (void*))

typedef struct acl_s {
  void* handle;
#define TIDE_ACL_FIELD(name, symbol, params) int(*name) params;
  TIDE_ACL_SYMBOLS(TIDE_ACL_FIELD)
#undef TIDE_ACL_FIELD
  const char* (*aclrtGetSocName)(void);
  const char* (*aclGetRecentErrMsg)(void);
} acl_t;

typedef struct ascend_model_s {
  acl_t acl;
  const tide_artifact_t* artifact;
  const uint8_t* device_code; /* the mapped DEVICE_CODE section */
  int32_t ordinal;
  int device_set;
  void* ctx;
  void** binaries;  /* per kernel */
  void** functions; /* per kernel */
  uint64_t weights;
} ascend_model_t;

typedef struct ascend_session_s {
  ascend_model_t* model;
  void* stream;
  void* start;
  void* stop;
  uint64_t args;          /* device memory: every call's argument slots */
  uint64_t* op_offsets;   /* per (entry, op) in plan order: byte offset of its slots in args */
  uint32_t* entry_base;   /* per entry: index of its first op in op_offsets */
  void** profile_events;  /* profiling: an event before the first op and after each */
  uint32_t num_profile_events;
} ascend_session_t;

static tide_status_t acl_error(const acl_t* acl, int rc, const char* call) {
  const char* detail = acl->aclGetRecentErrMsg ? acl->aclGetRecentErrMsg() : NULL;
  return tide_make_status(TIDE_STATUS_UNAVAILABLE, "%s failed: ACL error %d%s%s", call, rc, detail ? ": " : "",
                          detail ? detail : "");
}

static tide_status_t acl_open(const char* path, acl_t* acl) {
  memset(acl, 0, sizeof(*acl));
  acl->handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!acl->handle) {
    const char* err = dlerror();
    return tide_make_status(TIDE_STATUS_UNAVAILABLE, "%s not found: %s (no CANN / AscendCL on this machine?)", path,
                            err ? err : "dlopen failed");
  }
#define TIDE_ACL_RESOLVE(name, symbol, params)                                                      \
  {                                                                                                 \
    void* sym = dlsym(acl->handle, symbol);                                                         \
    if (!sym) {                                                                                     \
      dlclose(acl->handle);                                                                         \
      acl->handle = NULL;                                                                           \
      return tide_make_status(TIDE_STATUS_UNAVAILABLE, "AscendCL %s lacks the entry point %s", path, symbol); \
    }                                                                                               \
    memcpy(&acl->name, &sym, sizeof(sym));                                                          \
  }
  TIDE_ACL_SYMBOLS(TIDE_ACL_RESOLVE)
#undef TIDE_ACL_RESOLVE
  void* soc = dlsym(acl->handle, "aclrtGetSocName");
  void* msg = dlsym(acl->handle, "aclGetRecentErrMsg");
  memcpy(&acl->aclrtGetSocName, &soc, sizeof(soc));
  memcpy(&acl->aclGetRecentErrMsg, &msg, sizeof(msg));
  return NULL;
}

static tide_status_t ascend_enter(void* dm) {
  ascend_model_t* m = dm;
  int rc = m->acl.aclrtSetCurrentContext(m->ctx);
  return rc ? acl_error(&m->acl, rc, "aclrtSetCurrentContext") : NULL;
}

/* AscendCL has no context stack: the model's context stays current on the thread. */
static void ascend_leave(void* dm) { (void)dm; }

static tide_status_t ascend_alloc(void* dm, uint64_t nbytes, const char* what, uint64_t* out_ptr) {
  ascend_model_t* m = dm;
  void* p = NULL;
  *out_ptr = 0;
  int rc = m->acl.aclrtMalloc(&p, (size_t)(nbytes ? nbytes : 64), TIDE_ACL_MALLOC_HUGE_FIRST);
  if (!rc) {
    *out_ptr = (uint64_t)(uintptr_t)p;
    return NULL;
  }
  size_t free_bytes = 0, total = 0;
  if (m->acl.aclrtGetMemInfo(TIDE_ACL_HBM_MEM, &free_bytes, &total) == 0 && free_bytes < nbytes) {
    return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED,
                            "out of device memory on ascend:%d allocating %llu bytes for %s (%llu of %llu bytes free)",
                            m->ordinal, (unsigned long long)nbytes, what, (unsigned long long)free_bytes,
                            (unsigned long long)total);
  }
  return tide_status_wrap(acl_error(&m->acl, rc, "aclrtMalloc"), "allocating %llu bytes for %s",
                          (unsigned long long)nbytes, what);
}

static void ascend_free(void* dm, uint64_t ptr) {
  ascend_model_t* m = dm;
  if (ptr) m->acl.aclrtFree((void*)(uintptr_t)ptr);
}

static uint64_t ascend_weights(const void* dm) { return ((const ascend_model_t*)dm)->weights; }
static int32_t ascend_ordinal(const void* dm) { return ((const ascend_model_t*)dm)->ordinal; }

static void ascend_model_release(void* dm) {
  ascend_model_t* m = dm;
  if (!m) return;
  if (m->ctx) {
    m->acl.aclrtSetCurrentContext(m->ctx);
    ascend_free(m, m->weights);
    for (uint32_t i = 0; m->binaries && i < m->artifact->num_kernels; ++i) {
      if (m->binaries[i]) m->acl.aclrtBinaryUnLoad(m->binaries[i]);
    }
    m->acl.aclrtDestroyContext(m->ctx);
  }
  if (m->device_set) m->acl.aclrtResetDevice(m->ordinal);
  if (m->acl.handle) dlclose(m->acl.handle);
  free(m->binaries);
  free(m->functions);
  free(m);
}

static tide_status_t check_device(ascend_model_t* m) {
  int rc = m->acl.aclInit(NULL);
  if (rc && rc != TIDE_ACL_ERROR_REPEAT_INITIALIZE) return acl_error(&m->acl, rc, "aclInit");
  uint32_t count = 0;
  rc = m->acl.aclrtGetDeviceCount(&count);
  if (rc) return acl_error(&m->acl, rc, "aclrtGetDeviceCount");
  if (count == 0) return tide_make_status(TIDE_STATUS_UNAVAILABLE, "no Ascend device: AscendCL reports 0 devices");
  if (m->ordinal < 0 || (uint32_t)m->ordinal >= count) {
    return tide_make_status(TIDE_STATUS_UNAVAILABLE, "Ascend device %d does not exist (AscendCL reports %u device%s)",
                            m->ordinal, count, count == 1 ? "" : "s");
  }
  rc = m->acl.aclrtSetDevice(m->ordinal);
  if (rc) return acl_error(&m->acl, rc, "aclrtSetDevice");
  m->device_set = 1;
  const char* soc = m->acl.aclrtGetSocName ? m->acl.aclrtGetSocName() : NULL;
  if (!soc) return tide_make_status(TIDE_STATUS_UNAVAILABLE, "AscendCL does not name ascend:%d's SoC", m->ordinal);
  if (strcmp(soc, m->artifact->device_arch) != 0) {
    return tide_make_status(TIDE_STATUS_UNIMPLEMENTED,
                            "the artifact was compiled for %s; ascend:%d is %s (recompile with --soc %s)",
                            m->artifact->device_arch, m->ordinal, soc, soc);
  }
  return NULL;
}

static tide_status_t load_kernels(ascend_model_t* m) {
  const tide_artifact_t* a = m->artifact;
  char missing[512] = "";
  size_t used = 0;
  for (uint32_t i = 0; i < a->num_kernels; ++i) {
    if (a->ascend_kernels[i].binary_size) continue;
    int n = snprintf(missing + used, sizeof(missing) - used, "%s'%s'", used ? ", " : "", a->ascend_kernels[i].name);
    used = n < 0 || (size_t)n >= sizeof(missing) - used ? sizeof(missing) - 1 : used + (size_t)n;
  }
  if (used) {
    return tide_make_status(TIDE_STATUS_UNIMPLEMENTED,
                            "kernel(s) %s have HIVM but no device binary: the artifact was compiled without hivmc "
                            "(CANN); compile it where CANN is installed to run it",
                            missing);
  }
  m->binaries = calloc(a->num_kernels ? a->num_kernels : 1, sizeof(void*));
  m->functions = calloc(a->num_kernels ? a->num_kernels : 1, sizeof(void*));
  if (!m->binaries || !m->functions) return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  for (uint32_t i = 0; i < a->num_kernels; ++i) {
    const tide_ascend_kernel_t* k = &a->ascend_kernels[i];
    int rc = m->acl.aclrtBinaryLoadFromData(m->device_code + k->binary_offset, (size_t)k->binary_size, NULL,
                                            &m->binaries[i]);
    if (rc) {
      m->binaries[i] = NULL;
      return tide_status_wrap(acl_error(&m->acl, rc, "aclrtBinaryLoadFromData"), "kernel '%s' (%llu bytes)", k->name,
                              (unsigned long long)k->binary_size);
    }
    rc = m->acl.aclrtBinaryGetFunction(m->binaries[i], k->name, &m->functions[i]);
    if (rc) return tide_status_wrap(acl_error(&m->acl, rc, "aclrtBinaryGetFunction"), "kernel '%s'", k->name);
  }
  return NULL;
}

tide_status_t tide_ascend_model_create(const tide_artifact_t* art, const uint8_t* file, const tide_model_options_t* o,
                                       void** out_dm) {
  *out_dm = NULL;
  ascend_model_t* m = calloc(1, sizeof(*m));
  if (!m) return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  m->artifact = art;
  m->ordinal = o->device_ordinal;
  m->device_code = file + art->sections[TIDE_SECTION_DEVICE_CODE].offset;
  tide_status_t st = acl_open(o->ascend_acl_path ? o->ascend_acl_path : "libascendcl.so", &m->acl);
  if (!st) st = check_device(m);
  if (!st) {
    int rc = m->acl.aclrtCreateContext(&m->ctx, m->ordinal);
    if (rc) {
      m->ctx = NULL;
      st = acl_error(&m->acl, rc, "aclrtCreateContext");
    }
  }
  if (!st) st = ascend_enter(m);
  if (!st) st = load_kernels(m);
  const tide_section_ref_t* w = &art->sections[TIDE_SECTION_WEIGHTS];
  if (!st) st = ascend_alloc(m, w->size, "the weights", &m->weights);
  if (!st && w->size) {
    int rc = m->acl.aclrtMemcpy((void*)(uintptr_t)m->weights, (size_t)w->size, file + w->offset, (size_t)w->size,
                                TIDE_ACL_MEMCPY_HOST_TO_DEVICE);
    if (rc) st = acl_error(&m->acl, rc, "copying the weights to the device (aclrtMemcpy)");
  }
  if (st) {
    ascend_model_release(m);
    return st;
  }
  *out_dm = m;
  return NULL;
}

/* ---- sessions --------------------------------------------------------------------------------- */

static void ascend_session_release(void* ds) {
  ascend_session_t* s = ds;
  if (!s) return;
  const acl_t* acl = &s->model->acl;
  acl->aclrtSetCurrentContext(s->model->ctx);
  ascend_free(s->model, s->args);
  if (s->start) acl->aclrtDestroyEvent(s->start);
  if (s->stop) acl->aclrtDestroyEvent(s->stop);
  for (uint32_t i = 0; i < s->num_profile_events; ++i) acl->aclrtDestroyEvent(s->profile_events[i]);
  free(s->profile_events);
  if (s->stream) acl->aclrtDestroyStream(s->stream);
  free(s->op_offsets);
  free(s->entry_base);
  free(s);
}

static tide_status_t ascend_session_create(void* dm, uint32_t num_entries, int use_graphs, void** out_ds) {
  (void)num_entries;
  (void)use_graphs; /* no graph capture on this backend yet: every run launches its kernels */
  ascend_model_t* m = dm;
  *out_ds = NULL;
  ascend_session_t* s = calloc(1, sizeof(*s));
  if (!s) return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  s->model = m;
  tide_status_t st = NULL;
  int rc = m->acl.aclrtCreateStream(&s->stream);
  if (rc) {
    s->stream = NULL;
    st = acl_error(&m->acl, rc, "aclrtCreateStream");
  }
  if (!st && (rc = m->acl.aclrtCreateEvent(&s->start)) != 0) {
    s->start = NULL;
    st = acl_error(&m->acl, rc, "aclrtCreateEvent");
  }
  if (!st && (rc = m->acl.aclrtCreateEvent(&s->stop)) != 0) {
    s->stop = NULL;
    st = acl_error(&m->acl, rc, "aclrtCreateEvent");
  }
  if (st) {
    ascend_session_release(s);
    return st;
  }
  *out_ds = s;
  return NULL;
}

/* Packs every call's argument slots (the session's buffer addresses are final) into device memory. */
static tide_status_t ascend_bind(void* ds, const tide_session_t* session) {
  ascend_session_t* s = ds;
  const tide_artifact_t* a = s->model->artifact;
  uint32_t num_ops = 0;
  for (uint32_t e = 0; e < a->num_entries; ++e) num_ops += a->entries[e].num_ops;
  s->op_offsets = calloc(num_ops ? num_ops : 1, sizeof(uint64_t));
  s->entry_base = calloc(a->num_entries ? a->num_entries : 1, sizeof(uint32_t));
  if (!s->op_offsets || !s->entry_base) return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  uint64_t bytes = 0;
  for (uint32_t e = 0, i = 0; e < a->num_entries; ++e) {
    s->entry_base[e] = i;
    for (uint32_t o = 0; o < a->entries[e].num_ops; ++o, ++i) {
      s->op_offsets[i] = bytes;
      bytes += 8u * a->entries[e].ops[o].num_args;
    }
  }
  uint64_t* host = calloc(bytes ? (size_t)bytes / 8 : 1, sizeof(uint64_t));
  if (!host) return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory packing kernel arguments");
  for (uint32_t e = 0; e < a->num_entries; ++e) {
    for (uint32_t o = 0; o < a->entries[e].num_ops; ++o) {
      const tide_op_decl_t* op = &a->entries[e].ops[o];
      const tide_ffi_any_t* args = tide_session_op_args(session, e, o);
      uint64_t* slot = host + s->op_offsets[s->entry_base[e] + o] / 8;
      for (uint32_t k = 0; k < op->num_args; ++k) {
        slot[k] = args[k].type_index == TIDE_FFI_DLTENSOR_PTR
                      ? (uint64_t)(uintptr_t)((const tide_dl_tensor_t*)args[k].v_ptr)->data
                      : (uint64_t)args[k].v_int64;
      }
    }
  }
  tide_status_t st = ascend_alloc(s->model, bytes, "the kernel arguments", &s->args);
  if (!st && bytes) {
    int rc = s->model->acl.aclrtMemcpy((void*)(uintptr_t)s->args, (size_t)bytes, host, (size_t)bytes,
                                       TIDE_ACL_MEMCPY_HOST_TO_DEVICE);
    if (rc) st = acl_error(&s->model->acl, rc, "copying the kernel arguments (aclrtMemcpy)");
  }
  free(host);
  return st;
}

static tide_status_t ascend_launch(void* ds, uint32_t entry, uint32_t op) {
  ascend_session_t* s = ds;
  const tide_artifact_t* a = s->model->artifact;
  const tide_op_decl_t* d = &a->entries[entry].ops[op];
  const tide_ascend_kernel_t* k = &a->ascend_kernels[d->kernel];
  uint64_t slots = s->args + s->op_offsets[s->entry_base[entry] + op];
  int rc = s->model->acl.aclrtLaunchKernel(s->model->functions[d->kernel], k->block_dim, (const void*)(uintptr_t)slots,
                                           8u * (size_t)k->num_args, s->stream);
  return rc ? acl_error(&s->model->acl, rc, "aclrtLaunchKernel") : NULL;
}

static tide_status_t ascend_copy(void* ds, tide_copy_kind_t kind, void* dst, const void* src, uint64_t nbytes) {
  ascend_session_t* s = ds;
  if (!nbytes) return NULL;
  int acl_kind = kind == TIDE_COPY_HOST_TO_DEVICE   ? TIDE_ACL_MEMCPY_HOST_TO_DEVICE
                 : kind == TIDE_COPY_DEVICE_TO_HOST ? TIDE_ACL_MEMCPY_DEVICE_TO_HOST
                                                    : TIDE_ACL_MEMCPY_DEVICE_TO_DEVICE;
  int rc = s->model->acl.aclrtMemcpyAsync(dst, (size_t)nbytes, src, (size_t)nbytes, acl_kind, s->stream);
  return rc ? acl_error(&s->model->acl, rc, "aclrtMemcpyAsync") : NULL;
}

static tide_status_t ascend_zero(void* ds, void* dst, uint64_t nbytes) {
  ascend_session_t* s = ds;
  if (!nbytes) return NULL;
  int rc = s->model->acl.aclrtMemsetAsync(dst, (size_t)nbytes, 0, (size_t)nbytes, s->stream);
  return rc ? acl_error(&s->model->acl, rc, "aclrtMemsetAsync") : NULL;
}

static tide_status_t ascend_sync(void* ds) {
  ascend_session_t* s = ds;
  int rc = s->model->acl.aclrtSynchronizeStream(s->stream);
  return rc ? acl_error(&s->model->acl, rc, "aclrtSynchronizeStream (a kernel or copy failed on the device)") : NULL;
}

static tide_status_t ascend_execute(void* ds, uint32_t entry, tide_ops_fn_t run_ops, void* ctx) {
  (void)ds;
  (void)entry;
  return run_ops(ctx);
}

static tide_status_t ascend_time(void* ds, uint32_t entry, tide_ops_fn_t run_ops, void* ctx, double* out_seconds) {
  ascend_session_t* s = ds;
  const acl_t* acl = &s->model->acl;
  int rc = acl->aclrtRecordEvent(s->start, s->stream);
  if (rc) return acl_error(acl, rc, "aclrtRecordEvent");
  tide_status_t st = ascend_execute(s, entry, run_ops, ctx);
  if (st) return st;
  rc = acl->aclrtRecordEvent(s->stop, s->stream);
  if (!rc) rc = acl->aclrtSynchronizeEvent(s->stop);
  if (rc) return acl_error(acl, rc, "aclrtSynchronizeEvent (a kernel failed on the device)");
  float ms = 0;
  rc = acl->aclrtEventElapsedTime(&ms, s->start, s->stop);
  if (rc) return acl_error(acl, rc, "aclrtEventElapsedTime");
  *out_seconds = (double)ms * 1e-3;
  return NULL;
}

/* Launches with an event between consecutive ops. */
static tide_status_t ascend_profile(void* ds, uint32_t entry, uint32_t num_ops, tide_op_fn_t run_op, void* ctx,
                                    double* out_seconds) {
  ascend_session_t* s = ds;
  const acl_t* acl = &s->model->acl;
  (void)entry;
  if (s->num_profile_events < num_ops + 1) {
    void** grown = realloc(s->profile_events, sizeof(void*) * (num_ops + 1));
    if (!grown) return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory for %u events", num_ops + 1);
    s->profile_events = grown;
    for (; s->num_profile_events < num_ops + 1; ++s->num_profile_events) {
      int rc = acl->aclrtCreateEvent(&s->profile_events[s->num_profile_events]);
      if (rc) return acl_error(acl, rc, "aclrtCreateEvent");
    }
  }
  int rc = acl->aclrtRecordEvent(s->profile_events[0], s->stream);
  if (rc) return acl_error(acl, rc, "aclrtRecordEvent");
  for (uint32_t o = 0; o < num_ops; ++o) {
    tide_status_t st = run_op(ctx, o);
    if (st) return st;
    rc = acl->aclrtRecordEvent(s->profile_events[o + 1], s->stream);
    if (rc) return acl_error(acl, rc, "aclrtRecordEvent");
  }
  rc = acl->aclrtSynchronizeEvent(s->profile_events[num_ops]);
  if (rc) return acl_error(acl, rc, "aclrtSynchronizeEvent (a kernel failed on the device)");
  for (uint32_t o = 0; o < num_ops; ++o) {
    float ms = 0;
    rc = acl->aclrtEventElapsedTime(&ms, s->profile_events[o], s->profile_events[o + 1]);
    if (rc) return acl_error(acl, rc, "aclrtEventElapsedTime");
    out_seconds[o] = (double)ms * 1e-3;
  }
  return NULL;
}

const tide_device_backend_t tide_ascend_backend = {
    .name = "ascend",
    .dl_device_type = TIDE_DL_EXT_DEV,
    .enter = ascend_enter,
    .leave = ascend_leave,
    .model_release = ascend_model_release,
    .weights = ascend_weights,
    .ordinal = ascend_ordinal,
    .alloc = ascend_alloc,
    .free = ascend_free,
    .session_create = ascend_session_create,
    .session_release = ascend_session_release,
    .bind = ascend_bind,
    .copy = ascend_copy,
    .zero = ascend_zero,
    .sync = ascend_sync,
    .execute = ascend_execute,
    .time = ascend_time,
    .profile = ascend_profile,
    .launch = ascend_launch,
};
