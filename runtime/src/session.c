/*
 * tide_session_t: arena, states, thread pool, and every DLTensor and argument array prebuilt at
 * create time. tide_session_run validates the inputs, patches the input data pointers and calls the
 * kernels: no allocation on that path.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

/* Where a run stores input `input`'s data pointer (+ offset, for views of the input). */
typedef struct input_patch_s {
  tide_dl_tensor_t* tensor;
  uint32_t input;
  uint64_t offset;
} input_patch_t;

struct tide_entry_exec_s {
  uint32_t index;
  const tide_entry_decl_t* decl;
  tide_dl_tensor_t* tensors; /* decl->num_buffers */
  tide_ffi_any_t** op_args;  /* per op */
  tide_call_profile_t* profile; /* per op: its kernel, argument bytes and (when profiling) times */
  uint32_t num_patches;
  input_patch_t* patches;
  uint64_t* input_offsets;  /* device: data input i's copy at staging + input_offsets[i] */
  uint64_t* output_offsets; /* device: output i's host copy at host_out + output_offsets[i] */
};

/* Where a run's data inputs are and where its outputs go: host memory, or device memory of
 * the session's device. */
typedef enum io_memory_e { IO_HOST, IO_DEVICE } io_memory_t;

static void format_desc(char* out, size_t n, tide_dtype_t dtype, int32_t ndim, const int64_t* shape) {
  const char* name = tide_dtype_name(dtype);
  int used = name ? snprintf(out, n, "%s[", name)
                  : snprintf(out, n, "dtype(code %u, bits %u, lanes %u)[", dtype.code, dtype.bits, dtype.lanes);
  for (int32_t i = 0; i < ndim && used > 0 && (size_t)used < n; ++i) {
    used += snprintf(out + used, n - (size_t)used, "%s%lld", i ? ", " : "", (long long)shape[i]);
  }
  if (used > 0 && (size_t)used < n) snprintf(out + used, n - (size_t)used, "]");
}

TIDE_API void tide_session_options_initialize(tide_session_options_t* out_options) {
  if (!out_options) return;
  memset(out_options, 0, sizeof(*out_options));
  out_options->struct_size = sizeof(*out_options);
  out_options->num_threads = 0;
  out_options->use_cuda_graphs = 1;
}

static void session_destroy(tide_session_t* s) {
  tide_thread_pool_destroy(s->pool);
  free(s->profile_scratch);
  tide_workspace_destroy(&s->workspace);
  pthread_mutex_destroy(&s->error_mu);
  const tide_device_backend_t* dev = s->model->device;
  if (dev) {
    void* dm = s->model->device_model;
    if (s->device) dev->session_release(s->device);
    int entered = dev->enter(dm) == NULL;
    dev->free(dm, (uint64_t)(uintptr_t)s->arena);
    dev->free(dm, (uint64_t)(uintptr_t)s->states);
    dev->free(dm, (uint64_t)(uintptr_t)s->staging);
    if (entered) dev->leave(dm);
    free(s->host_out);
  } else {
    free(s->arena);
    free(s->states);
  }
  tide_pool_free(&s->tables);
  tide_model_release(s->model);
  free(s);
}

static tide_status_t build_tables(tide_session_t* s) {
  tide_model_t* m = s->model;
  const tide_artifact_t* a = &m->artifact;
  tide_mem_pool_t* pool = &s->tables;
  uint64_t num_tensors = 0, num_args = 0;
  for (uint32_t e = 0; e < a->num_entries; ++e) {
    num_tensors += a->entries[e].num_buffers;
    for (uint32_t o = 0; o < a->entries[e].num_ops; ++o) {
      num_args += a->entries[e].ops[o].num_args;
    }
  }
  s->entries = tide_pool_alloc_array(pool, a->num_entries, sizeof(tide_entry_exec_t));
  s->tensors = tide_pool_alloc_array(pool, (size_t)num_tensors, sizeof(tide_dl_tensor_t));
  s->args = tide_pool_alloc_array(pool, (size_t)num_args, sizeof(tide_ffi_any_t));
  if (!s->entries || !s->tensors || !s->args) {
    return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory building the session's call tables");
  }
  tide_dl_tensor_t* t = s->tensors;
  tide_ffi_any_t* arg = s->args;
  const tide_device_backend_t* dev = m->device;
  uint8_t* weights = dev ? (uint8_t*)(uintptr_t)dev->weights(m->device_model) : (uint8_t*)m->weights_base;
  tide_dl_device_t device = dev ? (tide_dl_device_t){dev->dl_device_type, dev->ordinal(m->device_model)}
                                : (tide_dl_device_t){TIDE_DL_CPU, 0};
  for (uint32_t e = 0; e < a->num_entries; ++e) {
    const tide_entry_decl_t* d = &a->entries[e];
    tide_entry_exec_t* x = &s->entries[e];
    x->index = e;
    x->decl = d;
    x->tensors = t;
    x->op_args = tide_pool_alloc_array(pool, d->num_ops, sizeof(tide_ffi_any_t*));
    uint32_t patches = 0;
    for (uint32_t b = 0; b < d->num_buffers; ++b) patches += d->buffers[b].kind == TIDE_BUF_INPUT;
    x->patches = tide_pool_alloc_array(pool, patches, sizeof(input_patch_t));
    x->input_offsets = tide_pool_alloc_array(pool, d->num_inputs, sizeof(uint64_t));
    x->output_offsets = tide_pool_alloc_array(pool, d->num_outputs, sizeof(uint64_t));
    if (!x->op_args || !x->patches || !x->input_offsets || !x->output_offsets) {
      return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory building the session's call tables");
    }
    uint64_t in_used = 0, out_used = 0;
    for (uint32_t i = 0; i < d->num_inputs; ++i) {
      x->input_offsets[i] = in_used;
      if (d->inputs[i].role == TIDE_IO_DATA) in_used += tide_round_up64(d->buffers[d->inputs[i].buffer].desc.nbytes);
    }
    for (uint32_t i = 0; i < d->num_outputs; ++i) {
      x->output_offsets[i] = out_used;
      out_used += tide_round_up64(d->buffers[d->outputs[i].buffer].desc.nbytes);
    }
    for (uint32_t b = 0; b < d->num_buffers; ++b) {
      const tide_buffer_decl_t* bd = &d->buffers[b];
      tide_dl_tensor_t* dl = &t[b];
      uint8_t* base = NULL;
      switch (bd->kind) {
        case TIDE_BUF_ARENA: base = s->arena; break;
        case TIDE_BUF_WEIGHT: base = weights + a->weights[bd->index].offset; break;
        case TIDE_BUF_STATE: base = s->states + m->state_offsets[bd->index]; break;
        default:
          if (m->device) {
            base = s->staging + x->input_offsets[bd->index];
          } else {
            x->patches[x->num_patches++] = (input_patch_t){dl, bd->index, bd->offset};
          }
          break;
      }
      dl->data = base ? base + bd->offset : NULL;
      dl->device = device;
      dl->ndim = bd->desc.ndim;
      dl->dtype = (tide_dl_dtype_t){bd->desc.dtype.code, bd->desc.dtype.bits, bd->desc.dtype.lanes};
      dl->shape = (int64_t*)bd->desc.shape;
      dl->strides = NULL;
      dl->byte_offset = 0;
    }
    x->profile = tide_pool_alloc_array(pool, d->num_ops, sizeof(tide_call_profile_t));
    if (!x->profile) return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory building the call tables");
    for (uint32_t o = 0; o < d->num_ops; ++o) {
      const tide_op_decl_t* op = &d->ops[o];
      x->op_args[o] = arg;
      x->profile[o].kernel = (int32_t)op->kernel;
      for (uint32_t k = 0; k < op->num_args; ++k) { /* each buffer once */
        int64_t b = op->args[k].value;
        int seen = op->args[k].kind != TIDE_ARG_BUFFER;
        for (uint32_t j = 0; j < k && !seen; ++j) seen = op->args[j].kind == TIDE_ARG_BUFFER && op->args[j].value == b;
        if (!seen) x->profile[o].bytes += d->buffers[b].desc.nbytes;
      }
      for (uint32_t k = 0; k < op->num_args; ++k, ++arg) {
        memset(arg, 0, sizeof(*arg));
        if (op->args[k].kind == TIDE_ARG_BUFFER) {
          arg->type_index = TIDE_FFI_DLTENSOR_PTR;
          arg->v_ptr = &t[op->args[k].value];
        } else {
          arg->type_index = TIDE_FFI_INT;
          arg->v_int64 = op->args[k].value;
        }
      }
    }
    t += d->num_buffers;
  }
  return NULL;
}

const tide_ffi_any_t* tide_session_op_args(const tide_session_t* session, uint32_t entry, uint32_t op) {
  return session->entries[entry].op_args[op];
}

static tide_status_t allocate_host(tide_session_t* s) {
  const tide_model_t* model = s->model;
  size_t arena = (size_t)(model->max_arena_bytes ? model->max_arena_bytes : 64);
  if (posix_memalign((void**)&s->arena, 64, arena) != 0) {
    s->arena = NULL;
    return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "cannot allocate the %llu-byte arena",
                            (unsigned long long)model->max_arena_bytes);
  }
  size_t states = (size_t)(model->state_bytes ? model->state_bytes : 64);
  if (posix_memalign((void**)&s->states, 64, states) != 0) {
    s->states = NULL;
    return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "cannot allocate %llu bytes of state",
                            (unsigned long long)model->state_bytes);
  }
  memset(s->states, 0, states);
  return NULL;
}

/* Staging bytes over the entries: (data inputs, outputs), each tensor rounded up to 64. */
static void io_bytes(const tide_artifact_t* a, uint64_t* out_inputs, uint64_t* out_outputs) {
  *out_inputs = *out_outputs = 0;
  for (uint32_t e = 0; e < a->num_entries; ++e) {
    const tide_entry_decl_t* d = &a->entries[e];
    uint64_t in = 0, out = 0;
    for (uint32_t i = 0; i < d->num_inputs; ++i) {
      if (d->inputs[i].role == TIDE_IO_DATA) in += tide_round_up64(d->buffers[d->inputs[i].buffer].desc.nbytes);
    }
    for (uint32_t i = 0; i < d->num_outputs; ++i) out += tide_round_up64(d->buffers[d->outputs[i].buffer].desc.nbytes);
    if (in > *out_inputs) *out_inputs = in;
    if (out > *out_outputs) *out_outputs = out;
  }
}

static tide_status_t allocate_device(tide_session_t* s, int use_graphs) {
  tide_model_t* model = s->model;
  const tide_device_backend_t* dev = model->device;
  void* dm = model->device_model;
  uint64_t in_bytes = 0, out_bytes = 0;
  io_bytes(&model->artifact, &in_bytes, &out_bytes);
  s->host_out = aligned_alloc(64, (size_t)tide_round_up64(out_bytes ? out_bytes : 64));
  if (!s->host_out) {
    return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "cannot allocate %llu bytes of host output buffers",
                            (unsigned long long)out_bytes);
  }
  tide_status_t st = dev->enter(dm);
  if (st) return st;
  st = dev->session_create(dm, model->artifact.num_entries, use_graphs, &s->device);
  uint64_t arena = 0, states = 0, staging = 0;
  if (!st) st = dev->alloc(dm, model->max_arena_bytes, "the arena", &arena);
  s->arena = (uint8_t*)(uintptr_t)arena;
  if (!st) st = dev->alloc(dm, model->state_bytes, "the decode state", &states);
  s->states = (uint8_t*)(uintptr_t)states;
  if (!st) st = dev->alloc(dm, in_bytes, "the input buffers", &staging);
  s->staging = (uint8_t*)(uintptr_t)staging;
  if (!st) st = dev->zero(s->device, s->states, model->state_bytes);
  if (!st) st = dev->sync(s->device);
  dev->leave(dm);
  return st;
}

TIDE_API tide_status_t tide_session_create(tide_model_t* model, const tide_session_options_t* options,
                                           tide_session_t** out_session) {
  if (!out_session) return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "out_session is NULL");
  *out_session = NULL;
  if (!model) return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "model is NULL");
  tide_session_options_t opts;
  tide_session_options_initialize(&opts);
  if (options) {
    if (options->struct_size < sizeof(uint32_t) || options->struct_size > sizeof(opts)) {
      return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT,
                              "tide_session_options_t.struct_size is %u; this runtime knows sizes up to "
                              "%zu (call tide_session_options_initialize)",
                              options->struct_size, sizeof(opts));
    }
    if (options->struct_size >= offsetof(tide_session_options_t, num_threads) + sizeof(int32_t)) {
      opts.num_threads = options->num_threads;
    }
    if (options->struct_size >= offsetof(tide_session_options_t, use_cuda_graphs) + sizeof(int32_t)) {
      opts.use_cuda_graphs = options->use_cuda_graphs;
    }
  }
  tide_session_t* s = calloc(1, sizeof(*s));
  if (!s) return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory creating a session");
  tide_model_retain(model);
  s->model = model;
  tide_workspace_init(&s->workspace);
  pthread_mutex_init(&s->error_mu, NULL);

  tide_status_t st = model->device ? allocate_device(s, opts.use_cuda_graphs != 0) : allocate_host(s);
  if (!st) st = build_tables(s);
  if (!st && model->device && model->device->bind) {
    st = model->device->enter(model->device_model);
    if (!st) {
      st = model->device->bind(s->device, s);
      model->device->leave(model->device_model);
    }
  }
  /* A device session's kernels run on the device: its host side needs no worker threads. */
  if (model->device) opts.num_threads = 1;
  if (!st) st = tide_thread_pool_create(opts.num_threads, s, &s->pool);
  if (st) {
    session_destroy(s);
    return tide_status_wrap(st, "creating a session");
  }
  *out_session = s;
  return NULL;
}

TIDE_API void tide_session_release(tide_session_t* session) {
  if (session) session_destroy(session);
}

TIDE_API int32_t tide_session_num_threads(const tide_session_t* session) {
  return tide_thread_pool_size(session->pool);
}

TIDE_API tide_status_t tide_session_reset_state(tide_session_t* session) {
  if (!session) return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "session is NULL");
  const tide_device_backend_t* dev = session->model->device;
  if (!dev) {
    memset(session->states, 0, (size_t)session->model->state_bytes);
    return NULL;
  }
  tide_status_t st = dev->enter(session->model->device_model);
  if (st) return st;
  st = dev->zero(session->device, session->states, session->model->state_bytes);
  if (!st) st = dev->sync(session->device);
  dev->leave(session->model->device_model);
  return st;
}

static tide_status_t state_at(tide_session_t* session, int32_t index, const tide_state_decl_t** out_decl) {
  if (!session) return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "session is NULL");
  const tide_artifact_t* a = &session->model->artifact;
  if (index < 0 || (uint32_t)index >= a->num_states) {
    return tide_make_status(TIDE_STATUS_NOT_FOUND, "state index %d out of range (%u states)", index, a->num_states);
  }
  *out_decl = &a->states[index];
  return NULL;
}

TIDE_API tide_status_t tide_session_state(tide_session_t* session, int32_t index, tide_tensor_t* out_tensor) {
  if (!out_tensor) return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "out_tensor is NULL");
  const tide_state_decl_t* decl = NULL;
  tide_status_t st = state_at(session, index, &decl);
  if (st) return st;
  const tide_tensor_desc_t* d = &decl->desc;
  memset(out_tensor, 0, sizeof(*out_tensor));
  out_tensor->data = session->states + session->model->state_offsets[index];
  out_tensor->dtype = d->dtype;
  out_tensor->ndim = d->ndim;
  memcpy(out_tensor->shape, d->shape, sizeof(int64_t) * (size_t)d->ndim);
  return NULL;
}

TIDE_API tide_status_t tide_session_read_state(tide_session_t* session, int32_t index, void* dst, uint64_t nbytes) {
  const tide_state_decl_t* decl = NULL;
  tide_status_t st = state_at(session, index, &decl);
  if (st) return st;
  if (!dst) return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "dst is NULL");
  if (nbytes != decl->desc.nbytes) {
    return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "state '%s' has %llu bytes; dst has room for %llu",
                            decl->name, (unsigned long long)decl->desc.nbytes, (unsigned long long)nbytes);
  }
  const uint8_t* src = session->states + session->model->state_offsets[index];
  const tide_device_backend_t* dev = session->model->device;
  if (!dev) {
    memcpy(dst, src, (size_t)nbytes);
    return NULL;
  }
  st = dev->enter(session->model->device_model);
  if (st) return st;
  st = dev->copy(session->device, TIDE_COPY_DEVICE_TO_HOST, dst, src, nbytes);
  if (!st) st = dev->sync(session->device);
  dev->leave(session->model->device_model);
  return st;
}

static tide_status_t check_inputs(const tide_entry_exec_t* x, const tide_tensor_t* inputs, int32_t num_inputs,
                                  int aligned_data) {
  const tide_entry_decl_t* d = x->decl;
  if (num_inputs < 0 || (uint32_t)num_inputs != d->num_inputs) {
    return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "entry '%s' takes %u inputs, got %d", d->name,
                            d->num_inputs, num_inputs);
  }
  if (num_inputs > 0 && !inputs) {
    return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "entry '%s': inputs is NULL", d->name);
  }
  for (uint32_t i = 0; i < d->num_inputs; ++i) {
    const tide_io_decl_t* io = &d->inputs[i];
    const tide_tensor_desc_t* want = &d->buffers[io->buffer].desc;
    const tide_tensor_t* got = &inputs[i];
    int same = got->dtype.code == want->dtype.code && got->dtype.bits == want->dtype.bits &&
               got->dtype.lanes == want->dtype.lanes && got->ndim == want->ndim;
    for (int32_t k = 0; same && k < want->ndim; ++k) same = got->shape[k] == want->shape[k];
    if (!same) {
      char a[256], b[256];
      format_desc(a, sizeof(a), want->dtype, want->ndim, want->shape);
      if (got->ndim < 0 || got->ndim > TIDE_MAX_RANK) {
        snprintf(b, sizeof(b), "rank %d", got->ndim);
      } else {
        format_desc(b, sizeof(b), got->dtype, got->ndim, got->shape);
      }
      return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "entry '%s' input '%s': expected %s, got %s", d->name,
                              io->name, a, b);
    }
    if (io->role == TIDE_IO_DATA) {
      if (!got->data) {
        return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "entry '%s' input '%s': data is NULL", d->name,
                                io->name);
      }
      if (aligned_data && (uintptr_t)got->data % TIDE_TENSOR_ALIGNMENT != 0) {
        return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT,
                                "entry '%s' input '%s': data %p is not %d-byte aligned (kernels use aligned "
                                "vector loads)",
                                d->name, io->name, got->data, TIDE_TENSOR_ALIGNMENT);
      }
    }
  }
  return NULL;
}

/* Call op `o` of the entry: the kernel's host function, or the device backend's launch. */
static tide_status_t run_op(tide_session_t* s, const tide_entry_exec_t* x, uint32_t o) {
  const tide_entry_decl_t* d = x->decl;
  const tide_op_decl_t* op = &d->ops[o];
  if (s->device && s->model->device->launch) {
    tide_status_t st = s->model->device->launch(s->device, x->index, o);
    return st ? tide_status_wrap(st, "entry '%s' op %u: kernel '%s'", d->name, o,
                                 s->model->artifact.kernel_names[op->kernel])
              : NULL;
  }
  pthread_mutex_lock(&s->error_mu);
  s->error_set = 0;
  pthread_mutex_unlock(&s->error_mu);
  tide_ffi_any_t ret;
  memset(&ret, 0, sizeof(ret));
  ret.type_index = TIDE_FFI_NONE;
  int rc = s->model->kernels.kernels[op->kernel](NULL, x->op_args[o], (int32_t)op->num_args, &ret);
  if (rc == 0) return NULL;
  const char* name = s->model->artifact.kernel_names[op->kernel];
  pthread_mutex_lock(&s->error_mu);
  tide_status_t st =
      s->error_set
          ? tide_make_status(TIDE_STATUS_INTERNAL, "entry '%s' op %u: kernel '%s' failed: %s", d->name, o, name,
                             s->error)
          : tide_make_status(TIDE_STATUS_INTERNAL,
                             "entry '%s' op %u: kernel '%s' failed (returned %d) without an error message", d->name,
                             o, name, rc);
  pthread_mutex_unlock(&s->error_mu);
  return st;
}

static tide_status_t run_ops(tide_session_t* s, const tide_entry_exec_t* x) {
  for (uint32_t o = 0; o < x->decl->num_ops; ++o) {
    tide_status_t st = run_op(s, x, o);
    if (st) return st;
  }
  return NULL;
}

/* Validates a run's arguments and binds the inputs: on the cpu, data inputs are used in place and
 * state inputs with data copied into the state; on a device, both are copied into the session's device
 * buffers (from host or device memory, per `io`). Cuda: the context is pushed by the caller. */
static tide_status_t bind_inputs(tide_session_t* session, int32_t entry, const tide_tensor_t* inputs,
                                 int32_t num_inputs, io_memory_t io, const tide_entry_exec_t** out_x) {
  const tide_artifact_t* a = &session->model->artifact;
  if (entry < 0 || (uint32_t)entry >= a->num_entries) {
    return tide_make_status(TIDE_STATUS_NOT_FOUND, "entry index %d out of range (%u entries)", entry, a->num_entries);
  }
  const tide_entry_exec_t* x = &session->entries[entry];
  const tide_entry_decl_t* d = x->decl;
  tide_status_t st = check_inputs(x, inputs, num_inputs, session->device == NULL);
  if (st) return st;
  tide_copy_kind_t kind = io == IO_HOST ? TIDE_COPY_HOST_TO_DEVICE : TIDE_COPY_DEVICE_TO_DEVICE;
  for (uint32_t i = 0; i < d->num_inputs; ++i) {
    const tide_io_decl_t* io_decl = &d->inputs[i];
    uint64_t nbytes = d->buffers[io_decl->buffer].desc.nbytes;
    if (io_decl->role == TIDE_IO_STATE && !inputs[i].data) continue;
    void* dst = io_decl->role == TIDE_IO_STATE ? x->tensors[io_decl->buffer].data : session->staging + x->input_offsets[i];
    if (session->device) {
      st = session->model->device->copy(session->device, kind, dst, inputs[i].data, nbytes);
      if (st) return tide_status_wrap(st, "entry '%s' input '%s'", d->name, io_decl->name);
    } else if (io_decl->role == TIDE_IO_STATE && dst != inputs[i].data) {
      memmove(dst, inputs[i].data, (size_t)nbytes);
    }
  }
  for (uint32_t p = 0; p < x->num_patches; ++p) {
    const input_patch_t* patch = &x->patches[p];
    patch->tensor->data = (uint8_t*)inputs[patch->input].data + patch->offset;
  }
  *out_x = x;
  return NULL;
}

typedef struct ops_call_s {
  tide_session_t* session;
  const tide_entry_exec_t* x;
} ops_call_t;

static tide_status_t run_ops_cb(void* ctx) {
  ops_call_t* c = ctx;
  return run_ops(c->session, c->x);
}

static tide_status_t run_op_cb(void* ctx, uint32_t op) {
  ops_call_t* c = ctx;
  return run_op(c->session, c->x, op);
}

static double monotonic_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A profiled run: every call timed (host clock, or device events between eagerly launched calls),
 * the times added to the entry's profile. */
static tide_status_t execute_profiled(tide_session_t* session, const tide_entry_exec_t* x, ops_call_t* call) {
  uint32_t n = x->decl->num_ops;
  double* seconds = session->profile_scratch;
  tide_status_t st = NULL;
  if (session->device) {
    st = session->model->device->profile(session->device, x->index, n, run_op_cb, call, seconds);
  } else {
    for (uint32_t o = 0; o < n && !st; ++o) {
      double t0 = monotonic_seconds();
      st = run_op(session, x, o);
      seconds[o] = monotonic_seconds() - t0;
    }
  }
  if (st) return st;
  for (uint32_t o = 0; o < n; ++o) {
    x->profile[o].calls += 1;
    x->profile[o].seconds += seconds[o];
  }
  return NULL;
}

/* One run of the entry's ops (on a device: enqueued on the session's stream). */
static tide_status_t execute(tide_session_t* session, const tide_entry_exec_t* x, double* out_seconds) {
  tide_session_t* prev = tide_set_current_session(session);
  ops_call_t call = {session, x};
  tide_status_t st;
  const tide_device_backend_t* dev = session->model->device;
  if (session->profiling) {
    double t0 = monotonic_seconds();
    st = execute_profiled(session, x, &call);
    if (!st && out_seconds) out_seconds[0] = monotonic_seconds() - t0;
  } else if (!dev) {
    st = run_ops(session, x);
  } else if (out_seconds) {
    st = dev->time(session->device, x->index, run_ops_cb, &call, out_seconds);
  } else {
    st = dev->execute(session->device, x->index, run_ops_cb, &call);
  }
  tide_set_current_session(prev);
  return st;
}

static tide_status_t check_num_outputs(const tide_entry_decl_t* d, tide_tensor_t* outputs, int32_t num_outputs) {
  if (num_outputs < 0 || (uint32_t)num_outputs != d->num_outputs || (num_outputs > 0 && !outputs)) {
    return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "entry '%s' has %u outputs, got room for %d%s", d->name,
                            d->num_outputs, num_outputs, num_outputs > 0 && !outputs ? " (outputs is NULL)" : "");
  }
  return NULL;
}

/* Cuda host runs copy the outputs back; the views point at host_out. */
static tide_status_t collect_outputs(tide_session_t* s, const tide_entry_exec_t* x, io_memory_t io,
                                     tide_tensor_t* outputs) {
  const tide_entry_decl_t* d = x->decl;
  tide_status_t st = NULL;
  for (uint32_t i = 0; i < d->num_outputs && !st; ++i) {
    const tide_dl_tensor_t* t = &x->tensors[d->outputs[i].buffer];
    tide_tensor_t* out = &outputs[i];
    memset(out, 0, sizeof(*out));
    out->data = t->data;
    if (s->device && io == IO_HOST) {
      out->data = s->host_out + x->output_offsets[i];
      st = s->model->device->copy(s->device, TIDE_COPY_DEVICE_TO_HOST, out->data, t->data,
                          d->buffers[d->outputs[i].buffer].desc.nbytes);
    }
    out->dtype = (tide_dtype_t){t->dtype.code, t->dtype.bits, t->dtype.lanes};
    out->ndim = t->ndim;
    memcpy(out->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
  }
  if (!st && s->device) st = s->model->device->sync(s->device);
  return st;
}

static tide_status_t run(tide_session_t* session, int32_t entry, const tide_tensor_t* inputs, int32_t num_inputs,
                         tide_tensor_t* outputs, int32_t num_outputs, io_memory_t io) {
  if (!session) return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "session is NULL");
  if (entry >= 0 && (uint32_t)entry < session->model->artifact.num_entries) {
    tide_status_t st = check_num_outputs(session->entries[entry].decl, outputs, num_outputs);
    if (st) return st;
  }
  const tide_device_backend_t* dev = session->model->device;
  if (dev) {
    tide_status_t st = dev->enter(session->model->device_model);
    if (st) return st;
  }
  const tide_entry_exec_t* x = NULL;
  tide_status_t st = bind_inputs(session, entry, inputs, num_inputs, io, &x);
  if (!st) st = execute(session, x, NULL);
  if (!st) st = collect_outputs(session, x, io, outputs);
  if (dev) {
    if (st) tide_status_free(dev->sync(session->device)); /* nothing of this run may still be in flight */
    dev->leave(session->model->device_model);
  }
  return st;
}

TIDE_API tide_status_t tide_session_run(tide_session_t* session, int32_t entry, const tide_tensor_t* inputs,
                                        int32_t num_inputs, tide_tensor_t* outputs, int32_t num_outputs) {
  return run(session, entry, inputs, num_inputs, outputs, num_outputs, IO_HOST);
}

TIDE_API tide_status_t tide_session_run_device(tide_session_t* session, int32_t entry, const tide_tensor_t* inputs,
                                               int32_t num_inputs, tide_tensor_t* outputs, int32_t num_outputs) {
  return run(session, entry, inputs, num_inputs, outputs, num_outputs, IO_DEVICE);
}

TIDE_API tide_status_t tide_session_time(tide_session_t* session, int32_t entry, const tide_tensor_t* inputs,
                                         int32_t num_inputs, int32_t iterations, double* out_seconds) {
  if (!session) return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "session is NULL");
  if (iterations < 1) {
    return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "iterations must be >= 1, got %d", iterations);
  }
  if (!out_seconds) return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "out_seconds is NULL");
  const tide_device_backend_t* dev = session->model->device;
  if (dev) {
    tide_status_t st = dev->enter(session->model->device_model);
    if (st) return st;
  }
  const tide_entry_exec_t* x = NULL;
  tide_status_t st = bind_inputs(session, entry, inputs, num_inputs, IO_HOST, &x);
  for (int32_t i = 0; !st && i < iterations; ++i) {
    double t0 = monotonic_seconds();
    st = execute(session, x, dev ? &out_seconds[i] : NULL);
    if (st) {
      st = tide_status_wrap(st, "timing iteration %d of %d", i, iterations);
    } else if (!dev) {
      out_seconds[i] = monotonic_seconds() - t0;
    }
  }
  if (dev) {
    tide_status_t synced = dev->sync(session->device);
    if (!st) {
      st = synced;
    } else {
      tide_status_free(synced);
    }
    dev->leave(session->model->device_model);
  }
  return st;
}

TIDE_API tide_status_t tide_session_set_profiling(tide_session_t* session, int32_t enabled) {
  if (!session) return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "session is NULL");
  if (enabled && !session->profile_scratch) {
    uint32_t most = 1;
    for (uint32_t e = 0; e < session->model->artifact.num_entries; ++e) {
      if (session->entries[e].decl->num_ops > most) most = session->entries[e].decl->num_ops;
    }
    session->profile_scratch = calloc(most, sizeof(double));
    if (!session->profile_scratch) {
      return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory for the profile of %u calls", most);
    }
  }
  if (enabled) {
    for (uint32_t e = 0; e < session->model->artifact.num_entries; ++e) {
      const tide_entry_exec_t* x = &session->entries[e];
      for (uint32_t o = 0; o < x->decl->num_ops; ++o) x->profile[o].calls = 0, x->profile[o].seconds = 0;
    }
  }
  session->profiling = enabled != 0;
  return NULL;
}

TIDE_API tide_status_t tide_session_read_profile(const tide_session_t* session, int32_t entry,
                                                 tide_call_profile_t* out_calls, int32_t capacity,
                                                 int32_t* out_count) {
  if (!session) return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "session is NULL");
  if (!out_count) return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "out_count is NULL");
  if (entry < 0 || (uint32_t)entry >= session->model->artifact.num_entries) {
    return tide_make_status(TIDE_STATUS_NOT_FOUND, "entry index %d out of range (%u entries)", entry,
                            session->model->artifact.num_entries);
  }
  const tide_entry_exec_t* x = &session->entries[entry];
  int32_t n = (int32_t)x->decl->num_ops;
  if (capacity < 0 || (capacity > 0 && !out_calls)) {
    return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "capacity %d with out_calls %p", capacity,
                            (void*)out_calls);
  }
  int32_t copied = capacity < n ? capacity : n;
  if (copied > 0) memcpy(out_calls, x->profile, sizeof(tide_call_profile_t) * (size_t)copied);
  *out_count = n;
  return NULL;
}
