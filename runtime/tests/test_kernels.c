/*
 * Hand-written kernels implementing the TVM kernel ABI, for the runtime's tests (C and Python).
 * Like TVM-generated kernels they check their arguments and report errors through
 * TVMFFIErrorSetRaisedFromCStrParts; they use the backend services through the same
 * function-pointer variables TVM emits. Built with runtime/src/kernel_shim.c into a shared object.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
  int32_t device_type, device_id;
} Device;
typedef struct {
  uint8_t code, bits;
  uint16_t lanes;
} DType;
typedef struct {
  void* data;
  Device device;
  int32_t ndim;
  DType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
} Tensor;
typedef struct {
  int32_t type_index;
  uint32_t zero_padding;
  union {
    int64_t v_int64;
    double v_float64;
    void* v_ptr;
  };
} Any;
typedef struct {
  void* sync_handle;
  int32_t num_task;
} ParallelEnv;
typedef int (*ParallelLambda)(int task_id, ParallelEnv* penv, void* cdata);

void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t num_parts);

/* The backend-service variables, filled by the loader (weak + default visibility, as TVM emits). */
__attribute__((weak)) void* (*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int) = 0;
__attribute__((weak)) int (*__TVMBackendFreeWorkspace)(int, int, void*) = 0;
__attribute__((weak)) int (*__TVMBackendParallelLaunch)(ParallelLambda, void*, int) = 0;
__attribute__((weak)) int (*__TVMBackendParallelBarrier)(int, ParallelEnv*) = 0;

static int report(const char* kind, const char* a, const char* b) {
  const char* parts[2] = {a, b};
  TVMFFIErrorSetRaisedFromCStrParts(kind, parts, 2);
  return -1;
}

static int64_t numel(const Tensor* t) {
  int64_t n = 1;
  for (int32_t i = 0; i < t->ndim; ++i) n *= t->shape[i];
  return n;
}

/* Argument i must be a compact tensor of dtype (code, bits); returns it or NULL after raising. */
static Tensor* tensor_arg(const Any* args, int32_t num_args, int32_t i, uint8_t code, uint8_t bits, const char* name) {
  if (i >= num_args) {
    report("TypeError", name, ": missing argument");
    return NULL;
  }
  if (args[i].type_index != 7) {
    report("TypeError", name, ": expected a tensor argument");
    return NULL;
  }
  Tensor* t = args[i].v_ptr;
  if (t->dtype.code != code || t->dtype.bits != bits || t->dtype.lanes != 1) {
    report("TypeError", name, ": wrong dtype");
    return NULL;
  }
  if (t->device.device_type != 1 || t->strides != NULL || t->byte_offset != 0 || (t->data == NULL && numel(t) > 0)) {
    report("ValueError", name, ": expected a compact CPU tensor with data");
    return NULL;
  }
  return t;
}

static int same_shape(const Tensor* a, const Tensor* b) {
  if (a->ndim != b->ndim) return 0;
  for (int32_t i = 0; i < a->ndim; ++i) {
    if (a->shape[i] != b->shape[i]) return 0;
  }
  return 1;
}

/* add(a, b, c): c = a + b, float32, equal shapes. */
int __tvm_ffi_add(void* self, const Any* args, int32_t num_args, Any* result) {
  (void)self;
  (void)result;
  if (num_args != 3) return report("TypeError", "add", ": expects 3 arguments");
  Tensor* a = tensor_arg(args, num_args, 0, 2, 32, "add.a");
  Tensor* b = a ? tensor_arg(args, num_args, 1, 2, 32, "add.b") : NULL;
  Tensor* c = b ? tensor_arg(args, num_args, 2, 2, 32, "add.c") : NULL;
  if (!c) return -1;
  if (!same_shape(a, b) || !same_shape(a, c)) return report("ValueError", "add", ": shape mismatch");
  const float* x = a->data;
  const float* y = b->data;
  float* z = c->data;
  for (int64_t i = 0, n = numel(a); i < n; ++i) z[i] = x[i] + y[i];
  return 0;
}

/* scale(x, y, k): y = x * k, float32, k an int64 immediate. */
int __tvm_ffi_scale(void* self, const Any* args, int32_t num_args, Any* result) {
  (void)self;
  (void)result;
  if (num_args != 3) return report("TypeError", "scale", ": expects 3 arguments");
  Tensor* x = tensor_arg(args, num_args, 0, 2, 32, "scale.x");
  Tensor* y = x ? tensor_arg(args, num_args, 1, 2, 32, "scale.y") : NULL;
  if (!y) return -1;
  if (args[2].type_index != 1) return report("TypeError", "scale.k", ": expected an integer");
  if (!same_shape(x, y)) return report("ValueError", "scale", ": shape mismatch");
  float k = (float)args[2].v_int64;
  const float* in = x->data;
  float* out = y->data;
  for (int64_t i = 0, n = numel(x); i < n; ++i) out[i] = in[i] * k;
  return 0;
}

/* fail(...): always reports an error. */
int __tvm_ffi_fail(void* self, const Any* args, int32_t num_args, Any* result) {
  (void)self;
  (void)args;
  (void)num_args;
  (void)result;
  return report("ValueError", "intentional failure ", "from the fail kernel");
}

/* accumulate(state, x): state += x, float32, equal shapes (a state update in place). */
int __tvm_ffi_accumulate(void* self, const Any* args, int32_t num_args, Any* result) {
  (void)self;
  (void)result;
  if (num_args != 2) return report("TypeError", "accumulate", ": expects 2 arguments");
  Tensor* s = tensor_arg(args, num_args, 0, 2, 32, "accumulate.state");
  Tensor* x = s ? tensor_arg(args, num_args, 1, 2, 32, "accumulate.x") : NULL;
  if (!x) return -1;
  if (!same_shape(s, x)) return report("ValueError", "accumulate", ": shape mismatch");
  float* acc = s->data;
  const float* in = x->data;
  for (int64_t i = 0, n = numel(s); i < n; ++i) acc[i] += in[i];
  return 0;
}

/*
 * par_reverse(x, y): y = reverse(x) * 2 over a float32 vector, through a workspace and a parallel
 * launch whose tasks meet at a barrier: phase 1 doubles each task's chunk into the workspace, phase
 * 2 reads the mirrored chunk (written by another task) - correct only if the barrier holds.
 */
typedef struct {
  const float* x;
  float* tmp;
  float* y;
  int64_t n;
} ReverseJob;

static int reverse_task(int task_id, ParallelEnv* penv, void* cdata) {
  ReverseJob* job = cdata;
  int64_t per = (job->n + penv->num_task - 1) / penv->num_task;
  int64_t lo = per * task_id, hi = lo + per < job->n ? lo + per : job->n;
  for (int64_t i = lo; i < hi; ++i) job->tmp[i] = job->x[i] * 2.0f;
  if (__TVMBackendParallelBarrier(task_id, penv) != 0) return -1;
  for (int64_t i = lo; i < hi; ++i) job->y[i] = job->tmp[job->n - 1 - i];
  return 0;
}

int __tvm_ffi_par_reverse(void* self, const Any* args, int32_t num_args, Any* result) {
  (void)self;
  (void)result;
  if (num_args != 2) return report("TypeError", "par_reverse", ": expects 2 arguments");
  Tensor* x = tensor_arg(args, num_args, 0, 2, 32, "par_reverse.x");
  Tensor* y = x ? tensor_arg(args, num_args, 1, 2, 32, "par_reverse.y") : NULL;
  if (!y) return -1;
  if (x->ndim != 1 || !same_shape(x, y)) return report("ValueError", "par_reverse", ": expects equal 1-d shapes");
  ReverseJob job = {x->data, NULL, y->data, x->shape[0]};
  job.tmp = __TVMBackendAllocWorkspace(1, 0, (uint64_t)(job.n > 0 ? job.n : 1) * sizeof(float), 2, 32);
  if (!job.tmp) return -1;
  if (((uintptr_t)job.tmp & 63u) != 0) return report("RuntimeError", "par_reverse", ": workspace not 64-byte aligned");
  int rc = __TVMBackendParallelLaunch(reverse_task, &job, 0);
  if (__TVMBackendFreeWorkspace(1, 0, job.tmp) != 0) return -1;
  return rc;
}

/* nested_par(x, y): y = x * 2 from a parallel launch inside each task of a parallel launch. */
typedef struct {
  const float* x;
  float* y;
  int64_t n;
  int64_t lo, hi;
} NestedJob;

static int inner_task(int task_id, ParallelEnv* penv, void* cdata) {
  NestedJob* job = cdata;
  int64_t len = job->hi - job->lo;
  int64_t per = (len + penv->num_task - 1) / penv->num_task;
  int64_t lo = job->lo + per * task_id, hi = lo + per < job->hi ? lo + per : job->hi;
  for (int64_t i = lo; i < hi; ++i) job->y[i] = job->x[i] * 2.0f;
  return 0;
}

static int outer_task(int task_id, ParallelEnv* penv, void* cdata) {
  NestedJob* job = cdata;
  int64_t per = (job->n + penv->num_task - 1) / penv->num_task;
  NestedJob inner = *job;
  inner.lo = per * task_id;
  inner.hi = inner.lo + per < job->n ? inner.lo + per : job->n;
  if (inner.lo >= inner.hi) return 0;
  return __TVMBackendParallelLaunch(inner_task, &inner, 0);
}

int __tvm_ffi_nested_par(void* self, const Any* args, int32_t num_args, Any* result) {
  (void)self;
  (void)result;
  if (num_args != 2) return report("TypeError", "nested_par", ": expects 2 arguments");
  Tensor* x = tensor_arg(args, num_args, 0, 2, 32, "nested_par.x");
  Tensor* y = x ? tensor_arg(args, num_args, 1, 2, 32, "nested_par.y") : NULL;
  if (!y) return -1;
  if (x->ndim != 1 || !same_shape(x, y)) return report("ValueError", "nested_par", ": expects equal 1-d shapes");
  NestedJob job = {x->data, y->data, x->shape[0], 0, 0};
  return __TVMBackendParallelLaunch(outer_task, &job, 0);
}

/* many_tasks(x, y): y = x + 1 with an explicit task count larger than any thread count. */
typedef struct {
  const float* x;
  float* y;
  int64_t n;
} ManyJob;

static int many_task(int task_id, ParallelEnv* penv, void* cdata) {
  ManyJob* job = cdata;
  for (int64_t i = task_id; i < job->n; i += penv->num_task) job->y[i] = job->x[i] + 1.0f;
  return 0;
}

int __tvm_ffi_many_tasks(void* self, const Any* args, int32_t num_args, Any* result) {
  (void)self;
  (void)result;
  if (num_args != 2) return report("TypeError", "many_tasks", ": expects 2 arguments");
  Tensor* x = tensor_arg(args, num_args, 0, 2, 32, "many_tasks.x");
  Tensor* y = x ? tensor_arg(args, num_args, 1, 2, 32, "many_tasks.y") : NULL;
  if (!y) return -1;
  if (!same_shape(x, y)) return report("ValueError", "many_tasks", ": shape mismatch");
  ManyJob job = {x->data, y->data, numel(x)};
  return __TVMBackendParallelLaunch(many_task, &job, 37);
}

/* barrier_many(x): a barrier in a launch of more tasks than threads must fail, not hang. */
static int barrier_task(int task_id, ParallelEnv* penv, void* cdata) {
  (void)cdata;
  return __TVMBackendParallelBarrier(task_id, penv);
}

int __tvm_ffi_barrier_many(void* self, const Any* args, int32_t num_args, Any* result) {
  (void)self;
  (void)args;
  (void)num_args;
  (void)result;
  return __TVMBackendParallelLaunch(barrier_task, NULL, 4096);
}

/*
 * toy_lm(input_ids[B,S] i64, start_pos[B] i64, history[B,T] i64, logits[B,S,V] f32): a stand-in
 * decoder for the decode-session tests. It records each token at its position in the history state
 * and scores vocabulary entry v at position p of row b as
 *     logits[b,s,v] = (v == (sum(history[b, 0..p]) + p) % V) ? 1 : 0     (p = start_pos[b] + s)
 * so greedy decoding follows a sequence that depends on every earlier token.
 */
int __tvm_ffi_toy_lm(void* self, const Any* args, int32_t num_args, Any* result) {
  (void)self;
  (void)result;
  if (num_args != 4) return report("TypeError", "toy_lm", ": expects 4 arguments");
  Tensor* ids = tensor_arg(args, num_args, 0, 0, 64, "toy_lm.input_ids");
  Tensor* pos = ids ? tensor_arg(args, num_args, 1, 0, 64, "toy_lm.start_pos") : NULL;
  Tensor* hist = pos ? tensor_arg(args, num_args, 2, 0, 64, "toy_lm.history") : NULL;
  Tensor* logits = hist ? tensor_arg(args, num_args, 3, 2, 32, "toy_lm.logits") : NULL;
  if (!logits) return -1;
  if (ids->ndim != 2 || pos->ndim != 1 || hist->ndim != 2 || logits->ndim != 3) {
    return report("ValueError", "toy_lm", ": wrong ranks");
  }
  int64_t B = ids->shape[0], S = ids->shape[1], T = hist->shape[1], V = logits->shape[2];
  if (pos->shape[0] != B || hist->shape[0] != B || logits->shape[0] != B || logits->shape[1] != S || V <= 0) {
    return report("ValueError", "toy_lm", ": inconsistent shapes");
  }
  const int64_t* tok = ids->data;
  const int64_t* start = pos->data;
  int64_t* h = hist->data;
  float* out = logits->data;
  for (int64_t b = 0; b < B; ++b) {
    if (start[b] < 0 || start[b] + S > T) return report("ValueError", "toy_lm", ": position past the history capacity");
    int64_t sum = 0;
    for (int64_t p = 0; p < start[b]; ++p) sum += h[b * T + p];
    for (int64_t s = 0; s < S; ++s) {
      int64_t p = start[b] + s;
      h[b * T + p] = tok[b * S + s];
      sum += tok[b * S + s];
      float* row = out + (b * S + s) * V;
      memset(row, 0, sizeof(float) * (size_t)V);
      row[((sum + p) % V + V) % V] = 1.0f;
    }
  }
  return 0;
}

/*
 * CUDA host stubs written the way TVM emits them for device kernels: the library defines the
 * service variables the runtime's cuda backend fills, resolves each device function once through
 * __TVMFFIHandleInitOnce + __TVMFFIEnvModLookupFromImports(__tvm_ffi__library_ctx, name), calls
 * __tvm_set_device, then __TVMFFIFunctionCall with the kernel's pointers and launch dimensions.
 *   cuda_add(a, b, c):      add_w_kernel(a, b, c; grid 1, block numel)       c = a + b
 *   cuda_accumulate(s, x):  accum_kernel(s, x, 1; grid 1, block numel)        s += x
 */
typedef int (*HandleInit)(void** out);
__attribute__((visibility("default"))) void* __tvm_ffi__library_ctx = NULL;
__attribute__((visibility("default"))) int (*__TVMFFIHandleInitOnce)(void** handle, HandleInit init) = NULL;
__attribute__((visibility("default"))) int (*__TVMFFIEnvModLookupFromImports)(void* ctx, const char* name,
                                                                            void** out) = NULL;
__attribute__((visibility("default"))) int (*__TVMFFIFunctionCall)(void* handle, const Any* args, int32_t n,
                                                                 Any* result) = NULL;

static void* g_set_device;
static void* g_add_w;
static void* g_accum;

static int init_set_device(void** out) {
  return __TVMFFIEnvModLookupFromImports(__tvm_ffi__library_ctx, "__tvm_set_device", out);
}
static int init_add_w(void** out) { return __TVMFFIEnvModLookupFromImports(__tvm_ffi__library_ctx, "add_w_kernel", out); }
static int init_accum(void** out) { return __TVMFFIEnvModLookupFromImports(__tvm_ffi__library_ctx, "accum_kernel", out); }

static Any ptr_arg(void* p) {
  Any a = {4, 0, {0}};
  a.v_ptr = p;
  return a;
}

static Any int_arg(int64_t v) {
  Any a = {1, 0, {0}};
  a.v_int64 = v;
  return a;
}

/* A float32 tensor on a CUDA device (device type 2), as the stubs check. */
static Tensor* device_tensor(const Any* args, int32_t num_args, int32_t i, const char* name) {
  if (i >= num_args || args[i].type_index != 7) {
    report("TypeError", name, ": expected a tensor argument");
    return NULL;
  }
  Tensor* t = args[i].v_ptr;
  if (t->device.device_type != 2 || t->dtype.code != 2 || t->dtype.bits != 32 || t->data == NULL) {
    report("ValueError", name, ": expected a float32 CUDA tensor");
    return NULL;
  }
  return t;
}

static int launch(void** slot, HandleInit init, int32_t device_id, const Any* kernel_args, int32_t n) {
  Any ret;
  Any dev[2] = {int_arg(2), int_arg(device_id)};
  if (__TVMFFIHandleInitOnce(&g_set_device, init_set_device) != 0) return -1;
  if (__TVMFFIFunctionCall(g_set_device, dev, 2, &ret) != 0) return -1;
  if (__TVMFFIHandleInitOnce(slot, init) != 0) return -1;
  return __TVMFFIFunctionCall(*slot, kernel_args, n, &ret);
}

int __tvm_ffi_cuda_add(void* self, const Any* args, int32_t num_args, Any* result) {
  (void)self;
  (void)result;
  Tensor* a = device_tensor(args, num_args, 0, "cuda_add.a");
  Tensor* b = a ? device_tensor(args, num_args, 1, "cuda_add.b") : NULL;
  Tensor* c = b ? device_tensor(args, num_args, 2, "cuda_add.c") : NULL;
  if (!c) return -1;
  Any k[5] = {ptr_arg(a->data), ptr_arg(b->data), ptr_arg(c->data), int_arg(1), int_arg(numel(a))};
  return launch(&g_add_w, init_add_w, a->device.device_id, k, 5);
}

int __tvm_ffi_cuda_accumulate(void* self, const Any* args, int32_t num_args, Any* result) {
  (void)self;
  (void)result;
  Tensor* s = device_tensor(args, num_args, 0, "cuda_accumulate.state");
  Tensor* x = s ? device_tensor(args, num_args, 1, "cuda_accumulate.x") : NULL;
  if (!x) return -1;
  Any k[5] = {ptr_arg(s->data), ptr_arg(x->data), int_arg(1), int_arg(1), int_arg(numel(s))};
  return launch(&g_accum, init_accum, s->device.device_id, k, 5);
}
