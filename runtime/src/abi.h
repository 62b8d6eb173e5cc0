/*
 * The binary interface between the runtime and a compiled kernel library (TVM's C ABI for
 * llvm-built PrimFuncs), declared here from its documented layout so that the runtime needs no TVM
 * or DLPack header. Private to the runtime.
 */
#ifndef TIDE_SRC_ABI_H_
#define TIDE_SRC_ABI_H_

#include <stdint.h>

/* Type indexes of a tide_ffi_any_t that the runtime produces or inspects. */
enum {
  TIDE_FFI_NONE = 0,
  TIDE_FFI_INT = 1,
  TIDE_FFI_FLOAT = 3,
  TIDE_FFI_OPAQUE_PTR = 4,
  TIDE_FFI_DLTENSOR_PTR = 7,
};

/* DLPack device types used by the runtime. */
enum { TIDE_DL_CPU = 1, TIDE_DL_CUDA = 2 };

typedef struct tide_dl_device_s {
  int32_t device_type;
  int32_t device_id;
} tide_dl_device_t;

typedef struct tide_dl_dtype_s {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
} tide_dl_dtype_t;

typedef struct tide_dl_tensor_s {
  void* data;
  tide_dl_device_t device;
  int32_t ndim;
  tide_dl_dtype_t dtype;
  int64_t* shape;
  int64_t* strides; /* NULL: compact row-major */
  uint64_t byte_offset;
} tide_dl_tensor_t;

/* A 16-byte tagged value: how arguments reach a kernel. */
typedef struct tide_ffi_any_s {
  int32_t type_index;
  uint32_t zero_padding;
  union {
    int64_t v_int64;
    double v_float64;
    void* v_ptr;
    char v_bytes[8];
  };
} tide_ffi_any_t;

/* __tvm_ffi_<name>: returns 0, or -1 after reporting an error through the error hook. */
typedef int (*tide_kernel_fn_t)(void* self, const tide_ffi_any_t* args, int32_t num_args,
                                tide_ffi_any_t* result);

typedef struct tide_parallel_env_s {
  void* sync_handle;
  int32_t num_task;
} tide_parallel_env_t;

typedef int (*tide_parallel_lambda_t)(int task_id, tide_parallel_env_t* penv, void* cdata);

/* The backend-service variables a kernel library may define (the loader fills them). */
typedef void* (*tide_alloc_workspace_fn_t)(int device_type, int device_id, uint64_t nbytes,
                                           int dtype_code_hint, int dtype_bits_hint);
typedef int (*tide_free_workspace_fn_t)(int device_type, int device_id, void* ptr);
typedef int (*tide_parallel_launch_fn_t)(tide_parallel_lambda_t flambda, void* cdata, int num_task);
typedef int (*tide_parallel_barrier_fn_t)(int task_id, tide_parallel_env_t* penv);
/* __tide_error_hook, defined by runtime/src/kernel_shim.c inside the kernel library. */
typedef void (*tide_error_hook_fn_t)(const char* kind, const char** parts, int32_t num_parts);

_Static_assert(sizeof(tide_ffi_any_t) == 16, "TVMFFIAny is 16 bytes");
_Static_assert(sizeof(tide_dl_tensor_t) == 48, "DLTensor is 48 bytes on LP64");
_Static_assert(sizeof(tide_parallel_env_t) == 16, "TVMParallelGroupEnv is 16 bytes on LP64");

#endif /* TIDE_SRC_ABI_H_ */
