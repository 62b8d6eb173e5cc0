/* Private declarations shared by the runtime's translation units. */
#ifndef TIDE_SRC_INTERNAL_H_
#define TIDE_SRC_INTERNAL_H_

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "abi.h"
#include "tide/runtime.h"

/* ---- status ---------------------------------------------------------------------------------- */

tide_status_t tide_make_status(tide_status_code_t code, const char* fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* A new status: "<prefix>: <message of cause>" with cause's code; frees cause. */
tide_status_t tide_status_wrap(tide_status_t cause, const char* fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- CRC-32 (IEEE 802.3, as zlib.crc32) ------------------------------------------------------ */

/* Continues a CRC: crc = tide_crc32(0, a, n); crc = tide_crc32(crc, b, m); */
uint32_t tide_crc32(uint32_t crc, const void* data, size_t size);

/* ---- bump allocator: everything a parsed plan owns, freed at once ----------------------------- */

typedef struct tide_pool_chunk_s tide_pool_chunk_t;
typedef struct tide_mem_pool_s {
  tide_pool_chunk_t* head;
} tide_mem_pool_t;

/* Zero-filled, 16-byte aligned; NULL when out of memory. */
void* tide_pool_alloc(tide_mem_pool_t* pool, size_t size);
void* tide_pool_alloc_array(tide_mem_pool_t* pool, size_t count, size_t elem_size);
void tide_pool_free(tide_mem_pool_t* pool);

/* ---- the parsed artifact ---------------------------------------------------------------------- */

enum {
  TIDE_SECTION_TARGET = 1,
  TIDE_SECTION_PLAN = 2,
  TIDE_SECTION_KERNELS_HOST = 3,
  TIDE_SECTION_WEIGHTS = 4,
  TIDE_SECTION_METADATA = 5,
  TIDE_SECTION_DEVICE_CODE = 6,
  TIDE_SECTION_KIND_MAX = 6,
};

enum { TIDE_TARGET_CPU = 1, TIDE_TARGET_CUDA = 2, TIDE_TARGET_ASCEND = 3 };
enum { TIDE_BUF_ARENA = 0, TIDE_BUF_INPUT = 1, TIDE_BUF_WEIGHT = 2, TIDE_BUF_STATE = 3 };
enum { TIDE_OP_CALL = 0 }; /* the one op kind: a kernel call */
enum { TIDE_ARG_BUFFER = 0, TIDE_ARG_INT = 1 };

#define TIDE_MAX_KERNEL_ARGS 64
#define TIDE_MAX_STRING 4096
#define TIDE_CPU_FEATURE_COUNT 10

typedef struct tide_tensor_desc_s {
  tide_dtype_t dtype;
  int32_t ndim;
  int64_t shape[TIDE_MAX_RANK];
  uint64_t nbytes;
} tide_tensor_desc_t;

typedef struct tide_weight_decl_s {
  const char* name;
  tide_tensor_desc_t desc;
  uint64_t offset; /* inside the WEIGHTS section */
} tide_weight_decl_t;

typedef struct tide_state_decl_s {
  const char* name;
  tide_tensor_desc_t desc;
} tide_state_decl_t;

typedef struct tide_buffer_decl_s {
  uint8_t kind;
  uint32_t index;
  uint64_t offset;
  tide_tensor_desc_t desc;
} tide_buffer_decl_t;

typedef struct tide_io_decl_s {
  const char* name;
  uint32_t buffer;
  uint32_t role;
} tide_io_decl_t;

typedef struct tide_arg_decl_s {
  uint8_t kind;
  int64_t value;
} tide_arg_decl_t;

typedef struct tide_op_decl_s {
  uint8_t op;
  uint32_t kernel;
  uint32_t num_args;
  tide_arg_decl_t* args;
} tide_op_decl_t;

typedef struct tide_entry_decl_s {
  const char* name;
  uint64_t arena_bytes;
  uint32_t num_buffers;
  tide_buffer_decl_t* buffers;
  uint32_t num_inputs;
  tide_io_decl_t* inputs;
  uint32_t num_outputs;
  tide_io_decl_t* outputs;
  uint32_t num_ops;
  tide_op_decl_t* ops;
} tide_entry_decl_t;

typedef struct tide_section_ref_s {
  int present;
  uint64_t offset;
  uint64_t size;
} tide_section_ref_t;

/* DEVICE_CODE (cuda): launch tags, in the order the host stubs pass them. */
enum {
  TIDE_TAG_BLOCK_X = 0, TIDE_TAG_BLOCK_Y, TIDE_TAG_BLOCK_Z,
  TIDE_TAG_THREAD_X, TIDE_TAG_THREAD_Y, TIDE_TAG_THREAD_Z,
  TIDE_TAG_DYN_SHARED,
};
enum { TIDE_IMAGE_CUBIN = 0, TIDE_IMAGE_FATBIN = 1, TIDE_IMAGE_PTX = 2 };

typedef struct tide_device_image_s {
  const char* arch;     /* "sm_90a" */
  uint32_t sm;          /* 90 */
  int arch_specific;    /* the 'a' suffix */
  uint8_t format;
  uint64_t offset;      /* of the bytes, inside the DEVICE_CODE section */
  uint64_t size;
} tide_device_image_t;

typedef struct tide_device_function_s {
  const char* name;
  uint32_t num_args;
  tide_dtype_t* args;   /* code 3 bits 64: a pointer */
  uint32_t num_tags;
  uint8_t* tags;        /* TIDE_TAG_* */
} tide_device_function_t;

/* DEVICE_CODE (ascend): one kernel per plan kernel. */
enum { TIDE_ASCEND_ARG_PTR = 0, TIDE_ASCEND_ARG_I64 = 1 };

typedef struct tide_ascend_kernel_s {
  const char* name;
  uint32_t block_dim;
  uint32_t num_args;
  const uint8_t* kinds;  /* TIDE_ASCEND_ARG_*, inside the section */
  uint64_t hivm_offset;  /* inside the DEVICE_CODE section */
  uint64_t hivm_size;
  uint64_t binary_offset;
  uint64_t binary_size;  /* 0: compiled without hivmc (cannot run) */
} tide_ascend_kernel_t;

typedef struct tide_artifact_s {
  tide_mem_pool_t pool; /* owns every pointer below except section bytes */
  tide_section_ref_t sections[TIDE_SECTION_KIND_MAX + 1];
  /* TARGET */
  uint32_t target_kind;
  const char* host_arch;
  uint64_t cpu_features;
  const char* device_arch;
  /* PLAN */
  uint32_t num_kernels;
  const char** kernel_names;
  uint32_t num_weights;
  tide_weight_decl_t* weights;
  uint32_t num_states;
  tide_state_decl_t* states;
  uint32_t num_entries;
  tide_entry_decl_t* entries;
  /* DEVICE_CODE (parsed for cuda targets) */
  uint32_t num_device_images;
  tide_device_image_t* device_images;
  uint32_t num_device_functions;
  tide_device_function_t* device_functions;
  /* DEVICE_CODE (parsed for ascend targets): ascend_kernels[i] serves plan kernel i */
  tide_ascend_kernel_t* ascend_kernels;
} tide_artifact_t;

/*
 * Parses and validates an artifact image of `size` bytes. verify_bulk_checksums: also check the
 * WEIGHTS and DEVICE_CODE CRCs. On success *out owns a pool (tide_artifact_free); on failure
 * nothing is left allocated.
 */
tide_status_t tide_artifact_parse(const uint8_t* data, uint64_t size, int verify_bulk_checksums,
                                  tide_artifact_t* out);
void tide_artifact_free(tide_artifact_t* artifact);

/* "float32", ...; NULL for a dtype the format does not support. */
const char* tide_dtype_name(tide_dtype_t dtype);

/* ---- the CUDA driver (cuda.c) ------------------------------------------------------------------- */

/* field, exported symbol (the driver keeps old-ABI versions under the unsuffixed names), params */
#define TIDE_CUDA_SYMBOLS(X)                                                                     \
  X(cuInit, "cuInit", (unsigned))                                                                \
  X(cuDeviceGetCount, "cuDeviceGetCount", (int*))                                                \
  X(cuDeviceGet, "cuDeviceGet", (int*, int))                                                     \
  X(cuDeviceGetAttribute, "cuDeviceGetAttribute", (int*, int, int))                              \
  X(cuGetErrorString, "cuGetErrorString", (int, const char**))                                   \
  X(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", (void**, int))                         \
  X(cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2", (int))                            \
  X(cuCtxPushCurrent, "cuCtxPushCurrent_v2", (void*))                                            \
  X(cuCtxPopCurrent, "cuCtxPopCurrent_v2", (void**))                                             \
  X(cuModuleLoadData, "cuModuleLoadData", (void**, const void*))                                 \
  X(cuModuleUnload, "cuModuleUnload", (void*))                                                   \
  X(cuModuleGetFunction, "cuModuleGetFunction", (void**, void*, const char*))                    \
  X(cuFuncSetAttribute, "cuFuncSetAttribute", (void*, int, int))                                 \
  X(cuFuncGetAttribute, "cuFuncGetAttribute", (int*, int, void*))                                \
  X(cuMemAlloc, "cuMemAlloc_v2", (uint64_t*, size_t))                                            \
  X(cuMemFree, "cuMemFree_v2", (uint64_t))                                                       \
  X(cuMemGetInfo, "cuMemGetInfo_v2", (size_t*, size_t*))                                         \
  X(cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2", (uint64_t, const void*, size_t, void*))           \
  X(cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2", (void*, uint64_t, size_t, void*))                 \
  X(cuMemcpyDtoDAsync, "cuMemcpyDtoDAsync_v2", (uint64_t, uint64_t, size_t, void*))              \
  X(cuMemsetD8Async, "cuMemsetD8Async", (uint64_t, unsigned char, size_t, void*))                \
  X(cuStreamCreate, "cuStreamCreate", (void**, unsigned))                                        \
  X(cuStreamDestroy, "cuStreamDestroy_v2", (void*))                                              \
  X(cuStreamSynchronize, "cuStreamSynchronize", (void*))                                         \
  X(cuLaunchKernel, "cuLaunchKernel",                                                            \
    (void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void*, void**, void**)) \
  X(cuStreamBeginCapture, "cuStreamBeginCapture_v2", (void*, int))                               \
  X(cuStreamEndCapture, "cuStreamEndCapture", (void*, void**))                                   \
  X(cuGraphInstantiate, "cuGraphInstantiateWithFlags", (void**, void*, unsigned long long))      \
  X(cuGraphLaunch, "cuGraphLaunch", (void*, void*))                                              \
  X(cuGraphExecDestroy, "cuGraphExecDestroy", (void*))                                           \
  X(cuGraphDestroy, "cuGraphDestroy", (void*))                                                   \
  X(cuEventCreate, "cuEventCreate", (void**, unsigned))                                          \
  X(cuEventRecord, "cuEventRecord", (void*, void*))                                              \
  X(cuEventSynchronize, "cuEventSynchronize", (void*))                                           \
  X(cuEventElapsedTime, "cuEventElapsedTime", (float*, void*, void*))                            \
  X(cuEventDestroy, "cuEventDestroy_v2", (void*))

typedef struct tide_cuda_driver_s {
  void* handle;
#define TIDE_CUDA_FIELD(name, symbol, params) int(*name) params;
  TIDE_CUDA_SYMBOLS(TIDE_CUDA_FIELD)
#undef TIDE_CUDA_FIELD
} tide_cuda_driver_t;

#define TIDE_CUDA_ERROR_OUT_OF_MEMORY 2

/* dlopens the driver at `path` and resolves its entry points; UNAVAILABLE naming what is missing. */
tide_status_t tide_cuda_driver_open(const char* path, tide_cuda_driver_t** out);
void tide_cuda_driver_close(tide_cuda_driver_t* drv);
/* The driver's text for a CUresult; a status "<call> failed: CUDA error N (text)" (out of memory:
 * RESOURCE_EXHAUSTED, else UNAVAILABLE). */
const char* tide_cuda_error_text(tide_cuda_driver_t* drv, int rc);
tide_status_t tide_cuda_error(tide_cuda_driver_t* drv, int rc, const char* call);
/* cuInit, device count and ordinal checks, then the device's compute capability. */
tide_status_t tide_cuda_device_capability(tide_cuda_driver_t* drv, int32_t ordinal, int* out_major, int* out_minor);
/* The DEVICE_CODE image for a device of compute capability major.minor (docs/artifact-format.md). */
tide_status_t tide_cuda_select_image(const tide_artifact_t* art, int major, int minor, uint32_t* out_index);

/* cuLaunchKernel's arguments for one device call. */
typedef struct tide_cuda_launch_s {
  uint32_t grid[3], block[3], shared_bytes;
  uint32_t num_params;
  void* params[TIDE_MAX_KERNEL_ARGS];     /* kernelParams: each points into storage */
  uint64_t storage[TIDE_MAX_KERNEL_ARGS]; /* the parameter values, converted to their dtypes */
} tide_cuda_launch_t;

/* Packs a host stub's FunctionCall arguments (the function's parameters, then one integer per
 * launch tag) as TVM's packer does: int32/uint32 narrowed, float32 from a double, 64-bit values and
 * pointers as is; other parameter dtypes are refused. */
tide_status_t tide_cuda_pack_launch(const tide_device_function_t* f, const tide_ffi_any_t* args, int32_t num_args,
                                    tide_cuda_launch_t* out);

/* ---- device backends (cuda_backend.c, ascend_backend.c) ------------------------------------ */

typedef enum tide_copy_kind_e {
  TIDE_COPY_HOST_TO_DEVICE,
  TIDE_COPY_DEVICE_TO_HOST,
  TIDE_COPY_DEVICE_TO_DEVICE,
} tide_copy_kind_t;

/* Enqueues one run of an entry's ops (session.c's plan executor). */
typedef tide_status_t (*tide_ops_fn_t)(void* ctx);
/* Enqueues op `op` of an entry alone. */
typedef tide_status_t (*tide_op_fn_t)(void* ctx, uint32_t op);

/*
 * What session.c needs of a device: memory, copies and a stream per session. `dm` is the backend's
 * model object (tide_model_t.device_model), `ds` its session object. Every call but the releases is
 * made between enter and leave on the calling thread. Copies, zero fills and launches are
 * asynchronous on the session's stream; sync waits and reports device faults.
 */
typedef struct tide_device_backend_s {
  const char* name;         /* "cuda" */
  int32_t dl_device_type;   /* DLPack device type of its memory */
  tide_status_t (*enter)(void* dm);
  void (*leave)(void* dm);
  void (*model_release)(void* dm);
  uint64_t (*weights)(const void* dm); /* device copy of the WEIGHTS section */
  int32_t (*ordinal)(const void* dm);
  /* Out of memory names `what`, the bytes asked and the bytes free. */
  tide_status_t (*alloc)(void* dm, uint64_t nbytes, const char* what, uint64_t* out_ptr);
  void (*free)(void* dm, uint64_t ptr);
  tide_status_t (*session_create)(void* dm, uint32_t num_entries, int use_graphs, void** out_ds);
  void (*session_release)(void* ds);
  /* Optional: called once the session's buffers and call tables exist (session.c). */
  tide_status_t (*bind)(void* ds, const tide_session_t* session);
  tide_status_t (*copy)(void* ds, tide_copy_kind_t kind, void* dst, const void* src, uint64_t nbytes);
  tide_status_t (*zero)(void* ds, void* dst, uint64_t nbytes);
  tide_status_t (*sync)(void* ds);
  /* One run of entry `entry`: run_ops(ctx) enqueues its ops (a backend may capture and replay them). */
  tide_status_t (*execute)(void* ds, uint32_t entry, tide_ops_fn_t run_ops, void* ctx);
  /* execute between two device events; waits and returns the elapsed device time. */
  tide_status_t (*time)(void* ds, uint32_t entry, tide_ops_fn_t run_ops, void* ctx, double* out_seconds);
  /* Profiling: one run of entry `entry` with its `num_ops` ops enqueued eagerly (never captured or
   * replayed) by run_op(ctx, op), a device event before the first and after each; waits and stores
   * each op's elapsed device time in out_seconds[op]. */
  tide_status_t (*profile)(void* ds, uint32_t entry, uint32_t num_ops, tide_op_fn_t run_op, void* ctx,
                           double* out_seconds);
  /* NULL when kernels are the kernel library's host stubs (which launch through the backend's
   * services); else launches the kernel of op `op` of entry `entry` directly. */
  tide_status_t (*launch)(void* ds, uint32_t entry, uint32_t op);
  /* Device workspace for TVMBackendAllocWorkspace with this device's type (NULL: none). Blocks
   * stay valid for the session's life, so captured launches may keep their addresses. */
  void* (*workspace_alloc)(void* ds, uint64_t nbytes, tide_status_t* out_status);
  void (*workspace_free)(void* ds, void* ptr);
} tide_device_backend_t;

/* The CUDA backend: dlopens the driver (o->cuda_driver_path), checks the device and picks the image,
 * retains the primary context, loads the image and its functions, copies the WEIGHTS section
 * (`file` is the mapped artifact) to the device. */
extern const tide_device_backend_t tide_cuda_backend;
tide_status_t tide_cuda_model_create(const tide_artifact_t* art, const uint8_t* file, const tide_model_options_t* o,
                                     void** out_dm);
/* Fills the host stubs' service variables of the loaded kernel library (dlopen handle `lib`). */
tide_status_t tide_cuda_bind_library(void* dm, void* lib);

/* The Ascend backend: dlopens AscendCL (o->ascend_acl_path), checks the device and its SoC, loads
 * every kernel's binary, copies the weights. Kernels are launched directly (no kernel library). */
extern const tide_device_backend_t tide_ascend_backend;
tide_status_t tide_ascend_model_create(const tide_artifact_t* art, const uint8_t* file, const tide_model_options_t* o,
                                       void** out_dm);

/* ---- host CPU --------------------------------------------------------------------------------- */

const char* tide_host_arch(void);                /* "x86_64", "aarch64" or "unknown" */
uint64_t tide_host_cpu_features(void);           /* TARGET feature bits this CPU has */
const char* tide_cpu_feature_name(int bit);      /* "avx2", ... */

/* ---- the kernel library ------------------------------------------------------------------------ */

typedef struct tide_kernel_library_s {
  void* handle; /* dlopen handle; NULL when the artifact has no kernels */
  tide_kernel_fn_t* kernels;
} tide_kernel_library_t;

/* Loads the KERNELS_HOST image, resolves __tvm_ffi_<name> for every kernel, fills the backend
 * service variables and the error hook. */
tide_status_t tide_kernel_library_load(const uint8_t* image, uint64_t size,
                                       const tide_artifact_t* artifact, tide_mem_pool_t* pool,
                                       tide_kernel_library_t* out);
void tide_kernel_library_unload(tide_kernel_library_t* lib);

/* ---- model ------------------------------------------------------------------------------------ */

struct tide_model_s {
  atomic_int refcount;
  void* map; /* the whole file, PROT_READ */
  uint64_t map_size;
  tide_artifact_t artifact;
  tide_kernel_library_t kernels;
  const uint8_t* weights_base; /* into the mapping, or weights_copy */
  void* weights_copy;          /* copy_weights: the WEIGHTS section in anonymous pages, else NULL */
  size_t weights_copy_size;
  char* metadata; /* NUL-terminated copy */
  uint64_t max_arena_bytes;
  uint64_t state_bytes; /* sum over states, each rounded up to 64 */
  uint64_t* state_offsets;
  const tide_device_backend_t* device; /* NULL on the cpu */
  void* device_model;
};

/* ---- thread pool -------------------------------------------------------------------------------- */

typedef struct tide_thread_pool_s tide_thread_pool_t;

tide_status_t tide_thread_pool_create(int32_t num_threads, tide_session_t* session,
                                      tide_thread_pool_t** out_pool);
void tide_thread_pool_destroy(tide_thread_pool_t* pool);
int32_t tide_thread_pool_size(const tide_thread_pool_t* pool);
/* TVMBackendParallelLaunch semantics; runs serially when nested or pool is NULL. */
int tide_thread_pool_launch(tide_thread_pool_t* pool, tide_parallel_lambda_t flambda, void* cdata,
                            int num_task);
int tide_thread_pool_barrier(int task_id, tide_parallel_env_t* penv);

/* ---- workspace allocator -------------------------------------------------------------------- */

#define TIDE_WORKSPACE_CACHE 16

typedef struct tide_workspace_s {
  pthread_mutex_t mu;
  int num_cached;
  void* cached[TIDE_WORKSPACE_CACHE];
} tide_workspace_t;

void tide_workspace_init(tide_workspace_t* ws);
void tide_workspace_destroy(tide_workspace_t* ws);
/* 64-byte aligned; ws may be NULL (no caching). NULL when out of memory. */
void* tide_workspace_alloc(tide_workspace_t* ws, uint64_t nbytes);
void tide_workspace_free(tide_workspace_t* ws, void* ptr);

/* ---- session & backend services ------------------------------------------------------------- */

#define TIDE_ERROR_SLOT_BYTES 2048

typedef struct tide_entry_exec_s tide_entry_exec_t;

struct tide_session_s {
  tide_model_t* model;
  tide_thread_pool_t* pool;
  tide_workspace_t workspace;
  void* device; /* the backend's session (NULL on the cpu); then arena, states and staging are device memory */
  uint8_t* arena;
  uint8_t* states; /* one allocation; state i at model->state_offsets[i] */
  uint8_t* staging;  /* cuda: device copies of the data inputs (fixed addresses, so graphs replay) */
  uint8_t* host_out; /* cuda: host copies of the outputs of the last host-memory run */
  tide_dl_tensor_t* tensors; /* every buffer of every entry */
  tide_ffi_any_t* args;      /* every kernel call's argument array */
  tide_entry_exec_t* entries;
  tide_mem_pool_t tables;    /* owns tensors, args, entries and their call profiles */
  int profiling;             /* tide_session_set_profiling */
  double* profile_scratch;   /* one run's per-call seconds (the longest entry's calls) */
  /* Error slot: the first message a kernel reports during one kernel call. */
  pthread_mutex_t error_mu;
  int error_set;
  char error[TIDE_ERROR_SLOT_BYTES];
};

/* The argument array session.c built for call op `op` of entry `entry` (buffers as DLTensors). */
const tide_ffi_any_t* tide_session_op_args(const tide_session_t* session, uint32_t entry, uint32_t op);

/* The session whose kernels run on this thread (set around a run and on pool workers). */
tide_session_t* tide_current_session(void);
tide_session_t* tide_set_current_session(tide_session_t* session); /* returns the previous one */
/* Records a message in the current session's error slot (first one wins). */
void tide_report_error(tide_session_t* session, const char* fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The functions the loader stores into a kernel library's service variables. */
void* tide_backend_alloc_workspace(int device_type, int device_id, uint64_t nbytes,
                                   int dtype_code_hint, int dtype_bits_hint);
int tide_backend_free_workspace(int device_type, int device_id, void* ptr);
int tide_backend_parallel_launch(tide_parallel_lambda_t flambda, void* cdata, int num_task);
int tide_backend_parallel_barrier(int task_id, tide_parallel_env_t* penv);
void tide_backend_error_hook(const char* kind, const char** parts, int32_t num_parts);

/* ---- checked arithmetic ----------------------------------------------------------------------- */

static inline int tide_add_overflows(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_add_overflow(a, b, out);
}
static inline int tide_mul_overflows(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}
static inline uint64_t tide_round_up64(uint64_t x) { return (x + 63u) & ~(uint64_t)63u; }

#endif /* TIDE_SRC_INTERNAL_H_ */
