"""cffi (ABI mode) declarations: the public C API (runtime/include/tide/runtime.h) and the DLPack
structs the Python binding exchanges with other frameworks.

CDEF repeats the header's declarations (without its macros and comments); tests/test_runtime_py.py
checks that the two agree, so a change to the header must be made here too.
"""

from __future__ import annotations

import cffi

CDEF = """
typedef enum tide_status_code_e {
  TIDE_STATUS_OK = 0,
  TIDE_STATUS_INVALID_ARGUMENT = 1,
  TIDE_STATUS_NOT_FOUND = 2,
  TIDE_STATUS_DATA_LOSS = 3,
  TIDE_STATUS_UNIMPLEMENTED = 4,
  TIDE_STATUS_RESOURCE_EXHAUSTED = 5,
  TIDE_STATUS_INTERNAL = 6,
  TIDE_STATUS_UNAVAILABLE = 7,
} tide_status_code_t;
typedef struct tide_status_s* tide_status_t;
tide_status_code_t tide_status_code(tide_status_t status);
const char* tide_status_message(tide_status_t status);
void tide_status_free(tide_status_t status);
typedef struct tide_dtype_s {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
} tide_dtype_t;
#define TIDE_MAX_RANK 8
#define TIDE_TENSOR_ALIGNMENT 64
typedef struct tide_tensor_s {
  void* data;
  tide_dtype_t dtype;
  int32_t ndim;
  int64_t shape[TIDE_MAX_RANK];
} tide_tensor_t;
typedef enum tide_io_role_e {
  TIDE_IO_DATA = 0,
  TIDE_IO_STATE = 1,
} tide_io_role_t;
typedef struct tide_tensor_info_s {
  const char* name;
  tide_dtype_t dtype;
  int32_t ndim;
  int64_t shape[TIDE_MAX_RANK];
  tide_io_role_t role;
  int32_t state_index;
} tide_tensor_info_t;
typedef struct tide_model_s tide_model_t;
typedef struct tide_model_options_s {
  uint32_t struct_size;
  int32_t verify_checksums;
  uint64_t allowed_cpu_features;
  int32_t device_kind;
  int32_t device_ordinal;
  const char* cuda_driver_path;
  const char* ascend_acl_path;
  int32_t copy_weights;
} tide_model_options_t;
enum { TIDE_DEVICE_CPU = 1, TIDE_DEVICE_CUDA = 2, TIDE_DEVICE_ASCEND = 3 };
void tide_model_options_initialize(tide_model_options_t* out_options);
tide_status_t tide_model_load_file(const char* path, const tide_model_options_t* options,
                                            tide_model_t** out_model);
void tide_model_retain(tide_model_t* model);
void tide_model_release(tide_model_t* model);
const char* tide_model_target(const tide_model_t* model);
const char* tide_model_metadata(const tide_model_t* model);
int32_t tide_model_entry_count(const tide_model_t* model);
const char* tide_model_entry_name(const tide_model_t* model, int32_t entry);
tide_status_t tide_model_find_entry(const tide_model_t* model, const char* name,
                                             int32_t* out_entry);
int32_t tide_model_input_count(const tide_model_t* model, int32_t entry);
int32_t tide_model_output_count(const tide_model_t* model, int32_t entry);
tide_status_t tide_model_input_info(const tide_model_t* model, int32_t entry, int32_t index,
                                             tide_tensor_info_t* out_info);
tide_status_t tide_model_output_info(const tide_model_t* model, int32_t entry,
                                              int32_t index, tide_tensor_info_t* out_info);
int32_t tide_model_state_count(const tide_model_t* model);
tide_status_t tide_model_state_info(const tide_model_t* model, int32_t index,
                                             tide_tensor_info_t* out_info);
int32_t tide_model_kernel_count(const tide_model_t* model);
const char* tide_model_kernel_name(const tide_model_t* model, int32_t index);
void tide_model_memory(const tide_model_t* model, uint64_t* out_arena_bytes,
                                uint64_t* out_state_bytes, uint64_t* out_weight_bytes);
typedef struct tide_session_s tide_session_t;
typedef struct tide_session_options_s {
  uint32_t struct_size;
  int32_t num_threads;
  int32_t use_cuda_graphs;
} tide_session_options_t;
void tide_session_options_initialize(tide_session_options_t* out_options);
tide_status_t tide_session_create(tide_model_t* model, const tide_session_options_t* options,
                                           tide_session_t** out_session);
void tide_session_release(tide_session_t* session);
int32_t tide_session_num_threads(const tide_session_t* session);
tide_status_t tide_session_reset_state(tide_session_t* session);
tide_status_t tide_session_state(tide_session_t* session, int32_t index,
                                          tide_tensor_t* out_tensor);
tide_status_t tide_session_read_state(tide_session_t* session, int32_t index, void* dst,
                                               uint64_t nbytes);
tide_status_t tide_session_run(tide_session_t* session, int32_t entry,
                                        const tide_tensor_t* inputs, int32_t num_inputs,
                                        tide_tensor_t* outputs, int32_t num_outputs);
tide_status_t tide_session_run_device(tide_session_t* session, int32_t entry,
                                      const tide_tensor_t* inputs, int32_t num_inputs,
                                      tide_tensor_t* outputs, int32_t num_outputs);
tide_status_t tide_session_time(tide_session_t* session, int32_t entry,
                                         const tide_tensor_t* inputs, int32_t num_inputs,
                                         int32_t iterations, double* out_seconds);
typedef struct tide_call_profile_s {
  int32_t kernel;
  uint64_t calls;
  double seconds;
  uint64_t bytes;
} tide_call_profile_t;
tide_status_t tide_session_set_profiling(tide_session_t* session, int32_t enabled);
tide_status_t tide_session_read_profile(const tide_session_t* session, int32_t entry,
                                        tide_call_profile_t* out_calls, int32_t capacity, int32_t* out_count);
"""

# DLPack (https://dmlc.github.io/dlpack/latest/c_api.html), legacy and versioned managed tensors.
DLPACK_CDEF = """
typedef struct { int32_t device_type; int32_t device_id; } DLDevice;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } DLDataType;
typedef struct {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
} DLTensor;
typedef struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(struct DLManagedTensor* self);
} DLManagedTensor;
typedef struct { uint32_t major; uint32_t minor; } DLPackVersion;
typedef struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(struct DLManagedTensorVersioned* self);
  uint64_t flags;
  DLTensor dl_tensor;
} DLManagedTensorVersioned;
"""

ffi = cffi.FFI()
ffi.cdef(CDEF)
ffi.cdef(DLPACK_CDEF)
