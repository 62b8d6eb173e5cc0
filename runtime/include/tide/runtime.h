/*
 * tide runtime: the public C API.
 *
 * Executes a compiled tide artifact (see docs/artifact-format.md) with no TVM library at run time.
 *
 * Objects and ownership
 *   tide_model_t    a loaded, validated artifact: plan, kernel library, memory-mapped weights.
 *                   Immutable after load. Reference counted: tide_model_retain/tide_model_release.
 *   tide_session_t  what one caller needs to run a model: the arena, the decode state and a thread
 *                   pool (cuda: a stream, device arena/state/input buffers, host output buffers
 *                   and one CUDA graph per entry). Created from a model (which it retains),
 *                   released with tide_session_release.
 *   tide_status_t   NULL means success. A non-NULL status is owned by the caller and must be freed
 *                   with tide_status_free; it carries a code and a message.
 *
 * Devices
 *   A cpu artifact runs on the host. A cuda artifact is loaded with device_kind TIDE_DEVICE_CUDA:
 *   the CUDA driver is dlopened at load (no CUDA library is linked), the device's primary context
 *   is retained, the device code image for the device's compute capability is loaded and the
 *   weights are copied to the device once. Sessions keep everything else on the device; a run
 *   copies only the inputs in and the outputs out (tide_session_run: host memory;
 *   tide_session_run_device: device memory, no host copies). Each entry's second run is captured
 *   into a CUDA graph that later runs replay.
 *
 * Thread safety
 *   A tide_model_t may be shared by any number of threads and sessions. A tide_session_t must be
 *   used by one thread at a time; different sessions may run concurrently. There is no global
 *   mutable state; while a session runs, its kernels find their thread pool and error slot through
 *   a thread-local pointer that the session sets on the calling thread and on its own workers.
 */
#ifndef TIDE_RUNTIME_H_
#define TIDE_RUNTIME_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TIDE_API __attribute__((visibility("default")))

typedef enum tide_status_code_e {
  TIDE_STATUS_OK = 0,
  TIDE_STATUS_INVALID_ARGUMENT = 1, /* a caller's argument is wrong (name, dtype, shape, NULL) */
  TIDE_STATUS_NOT_FOUND = 2,        /* no such file, entry, input */
  TIDE_STATUS_DATA_LOSS = 3,        /* artifact truncated, corrupt, checksum mismatch */
  TIDE_STATUS_UNIMPLEMENTED = 4,    /* format version, target or feature this runtime lacks */
  TIDE_STATUS_RESOURCE_EXHAUSTED = 5, /* out of memory, threads */
  TIDE_STATUS_INTERNAL = 6,         /* a kernel reported an error */
  TIDE_STATUS_UNAVAILABLE = 7,      /* a device driver or device is missing */
} tide_status_code_t;

typedef struct tide_status_s* tide_status_t;

/* TIDE_STATUS_OK for NULL. */
TIDE_API tide_status_code_t tide_status_code(tide_status_t status);
/* The message; valid until tide_status_free. "OK" for NULL. */
TIDE_API const char* tide_status_message(tide_status_t status);
TIDE_API void tide_status_free(tide_status_t status);

/* Element types, DLPack codes: (code, bits). */
typedef struct tide_dtype_s {
  uint8_t code; /* 0 int, 1 uint, 2 float, 4 bfloat, 6 bool */
  uint8_t bits;
  uint16_t lanes; /* always 1 */
} tide_dtype_t;

#define TIDE_MAX_RANK 8

/* Kernels may use aligned vector loads: input data must be aligned to this many bytes. */
#define TIDE_TENSOR_ALIGNMENT 64

/* A tensor passed in or out of tide_session_run. `data` is host memory on the CPU target. */
typedef struct tide_tensor_s {
  void* data;
  tide_dtype_t dtype;
  int32_t ndim;
  int64_t shape[TIDE_MAX_RANK];
} tide_tensor_t;

typedef enum tide_io_role_e {
  TIDE_IO_DATA = 0,  /* supplied by the caller on every run / a fresh result */
  TIDE_IO_STATE = 1, /* bound to a session state tensor, updated in place */
} tide_io_role_t;

/* Describes one input, output or state of a model (strings owned by the model). */
typedef struct tide_tensor_info_s {
  const char* name;
  tide_dtype_t dtype;
  int32_t ndim;
  int64_t shape[TIDE_MAX_RANK];
  tide_io_role_t role;
  int32_t state_index; /* for role STATE: which state; -1 otherwise */
} tide_tensor_info_t;

/* ---- model ---------------------------------------------------------------------------------- */

typedef struct tide_model_s tide_model_t;

/*
 * Load options. Always initialize with tide_model_options_initialize, then change fields: a struct
 * from an older caller (smaller struct_size) gets defaults for the fields it lacks; a struct_size
 * larger than this runtime knows is rejected.
 */
typedef struct tide_model_options_s {
  uint32_t struct_size;      /* sizeof(tide_model_options_t), set by _initialize */
  /* 1 (default): check every section's CRC at load. 0: skip the CRCs of the bulk sections
   * (WEIGHTS, DEVICE_CODE), which are never parsed; the header, TARGET, PLAN, METADATA and
   * KERNELS_HOST checksums are always verified, because the loader parses or dlopens them. */
  int32_t verify_checksums;
  /* Required-CPU-feature bits (docs/artifact-format.md, TARGET) the loader may treat as present,
   * ANDed with what the CPU reports. Default all ones. Clear bits to check whether an artifact would
   * load on a machine without those features. */
  uint64_t allowed_cpu_features;
  /* The device to load onto: TIDE_DEVICE_CPU (default), TIDE_DEVICE_CUDA or TIDE_DEVICE_ASCEND
   * with device_ordinal (default 0). The artifact's target kind must match the device. */
  int32_t device_kind;
  int32_t device_ordinal;
  /* The CUDA driver library dlopened for TIDE_DEVICE_CUDA; NULL (default): "libcuda.so.1". Read
   * during tide_model_load_file only. */
  const char* cuda_driver_path;
  /* The AscendCL library dlopened for TIDE_DEVICE_ASCEND; NULL (default): "libascendcl.so". Read
   * during tide_model_load_file only. */
  const char* ascend_acl_path;
  /* 0 (default): the weights are read in place from the file mapping (page cache, shared with other
   * processes, nothing copied at load). 1: the WEIGHTS section is copied into memory of the model's
   * own at load (private anonymous pages; costs the weights' size in memory and one copy), which a
   * weight-streaming decode reads faster on some machines (README, "The C runtime"). CPU artifacts only:
   * device artifacts upload their weights at load either way, and 1 is an error for them. */
  int32_t copy_weights;
} tide_model_options_t;

enum { TIDE_DEVICE_CPU = 1, TIDE_DEVICE_CUDA = 2, TIDE_DEVICE_ASCEND = 3 };

TIDE_API void tide_model_options_initialize(tide_model_options_t* out_options);

/*
 * Loads and validates an artifact. options may be NULL (defaults). The file is memory-mapped
 * read-only for the model's lifetime (weights are used in place unless copy_weights): it must not
 * be truncated or rewritten in place while loaded (replace it by rename instead).
 */
TIDE_API tide_status_t tide_model_load_file(const char* path, const tide_model_options_t* options,
                                            tide_model_t** out_model);
TIDE_API void tide_model_retain(tide_model_t* model);
TIDE_API void tide_model_release(tide_model_t* model);

/* "cpu", "cuda" or "ascend". */
TIDE_API const char* tide_model_target(const tide_model_t* model);
/* The METADATA section as a NUL-terminated JSON string ("{}" when absent). */
TIDE_API const char* tide_model_metadata(const tide_model_t* model);

/* Counts return -1 and names NULL for an out-of-range entry. */
TIDE_API int32_t tide_model_entry_count(const tide_model_t* model);
TIDE_API const char* tide_model_entry_name(const tide_model_t* model, int32_t entry);
TIDE_API tide_status_t tide_model_find_entry(const tide_model_t* model, const char* name,
                                             int32_t* out_entry);
TIDE_API int32_t tide_model_input_count(const tide_model_t* model, int32_t entry);
TIDE_API int32_t tide_model_output_count(const tide_model_t* model, int32_t entry);
TIDE_API tide_status_t tide_model_input_info(const tide_model_t* model, int32_t entry, int32_t index,
                                             tide_tensor_info_t* out_info);
TIDE_API tide_status_t tide_model_output_info(const tide_model_t* model, int32_t entry,
                                              int32_t index, tide_tensor_info_t* out_info);
TIDE_API int32_t tide_model_state_count(const tide_model_t* model);
TIDE_API tide_status_t tide_model_state_info(const tide_model_t* model, int32_t index,
                                             tide_tensor_info_t* out_info);
/* The kernels the plan calls, by index (tide_call_profile_t.kernel); NULL out of range. */
TIDE_API int32_t tide_model_kernel_count(const tide_model_t* model);
TIDE_API const char* tide_model_kernel_name(const tide_model_t* model, int32_t index);
/* Memory plan figures: largest arena over entries, total state bytes, weight bytes. */
TIDE_API void tide_model_memory(const tide_model_t* model, uint64_t* out_arena_bytes,
                                uint64_t* out_state_bytes, uint64_t* out_weight_bytes);

/* ---- session -------------------------------------------------------------------------------- */

typedef struct tide_session_s tide_session_t;

typedef struct tide_session_options_s {
  uint32_t struct_size; /* sizeof(tide_session_options_t), set by _initialize */
  int32_t num_threads;  /* 0 (default): one per CPU this process may run on (its affinity mask,
                         * else the online CPUs); 1: no worker threads; at most 1024. Cuda
                         * sessions use none. */
  int32_t use_cuda_graphs; /* cuda: 1 (default) capture each entry into a CUDA graph on its second
                            * run and replay it after; 0: launch every kernel on every run */
} tide_session_options_t;

TIDE_API void tide_session_options_initialize(tide_session_options_t* out_options);

TIDE_API tide_status_t tide_session_create(tide_model_t* model, const tide_session_options_t* options,
                                           tide_session_t** out_session);
TIDE_API void tide_session_release(tide_session_t* session);

/* The number of threads that run kernels (the caller's thread included). */
TIDE_API int32_t tide_session_num_threads(const tide_session_t* session);

/* Zero-fills every state tensor (the empty decode state). Also the way back to a defined state
 * after a kernel error. */
TIDE_API tide_status_t tide_session_reset_state(tide_session_t* session);

/* A view of state tensor `index` (data points into the session; valid until release). On a cuda
 * session `data` is device memory (use tide_session_read_state for a host copy). */
TIDE_API tide_status_t tide_session_state(tide_session_t* session, int32_t index,
                                          tide_tensor_t* out_tensor);
/* Copies state tensor `index` into host memory `dst` (nbytes must equal the state's byte size). */
TIDE_API tide_status_t tide_session_read_state(tide_session_t* session, int32_t index, void* dst,
                                               uint64_t nbytes);

/*
 * Runs entry `entry`. `inputs` are in the entry's input order and must match each input's dtype and
 * shape exactly; data inputs are used in place (no copy) and must be TIDE_TENSOR_ALIGNMENT-aligned,
 * non-NULL, compact row-major host memory that stays unchanged during the call. An input with role
 * STATE may have data == NULL (keep the session's state) or data (copied into the state before the
 * run; any alignment). On success `outputs[i]` (num_outputs must equal the
 * entry's output count) is filled with a view of the result: valid until the session's next run,
 * reset or release. On failure the session's state is unchanged when the error is found before any
 * kernel ran (argument errors); a kernel error leaves the state undefined (reset it).
 * Cuda sessions: inputs are host memory of any alignment, copied to the device (state inputs with
 * data too); outputs are host copies made after the run (valid as above); the call returns when
 * the device has finished. A device fault is reported with the CUDA error (reset the state).
 */
TIDE_API tide_status_t tide_session_run(tide_session_t* session, int32_t entry,
                                        const tide_tensor_t* inputs, int32_t num_inputs,
                                        tide_tensor_t* outputs, int32_t num_outputs);

/*
 * As tide_session_run, with inputs and outputs in the session's device memory: on a cuda session
 * the data of every input (states with data included) is device memory of the session's device,
 * copied on the device into the session's buffers, and the outputs are views of device memory
 * (valid until the next run, reset or release); nothing is copied through the host. On a cpu
 * session the device is the host and this is tide_session_run.
 */
TIDE_API tide_status_t tide_session_run_device(tide_session_t* session, int32_t entry,
                                               const tide_tensor_t* inputs, int32_t num_inputs,
                                               tide_tensor_t* outputs, int32_t num_outputs);

/*
 * Device-side timing for benchmarks: binds `inputs` as tide_session_run does (same checks; state
 * inputs with data are copied into the state once, before the first iteration), then runs entry
 * `entry` `iterations` times back to back and stores each run's duration in seconds in
 * out_seconds[0 .. iterations-1]. No outputs are returned (they stay in the session as after a run).
 * The cpu backend measures each synchronous run with the host monotonic clock; the cuda backend
 * records a CUDA event before and after each run (a graph replay from the entry's third run on) on
 * the session's stream and reports the device time between them. Warm-up is the caller's business.
 * States advance on every iteration like on every run.
 */
TIDE_API tide_status_t tide_session_time(tide_session_t* session, int32_t entry,
                                         const tide_tensor_t* inputs, int32_t num_inputs,
                                         int32_t iterations, double* out_seconds);

/* ---- profiling ------------------------------------------------------------------------------- */

/* One kernel call of an entry (plan order) as the profiler saw it. */
typedef struct tide_call_profile_s {
  int32_t kernel;  /* the called kernel's index (tide_model_kernel_name) */
  uint64_t calls;  /* profiled runs of the entry since profiling was last enabled */
  double seconds;  /* this call's total time over those runs */
  uint64_t bytes;  /* bytes of the call's buffer arguments (each buffer once): what it reads and writes */
} tide_call_profile_t;

/*
 * enabled != 0: from the next run on, times every kernel call (counters cleared): on the cpu with the
 * monotonic clock around each call; on a device with an event after each call, the run's calls
 * launched eagerly (never from a CUDA graph) and the run waiting for the device. enabled == 0 stops
 * it (the counters stay readable); a run then costs what it costs without profiling. Not thread safe
 * against runs of the same session (like every session call).
 */
TIDE_API tide_status_t tide_session_set_profiling(tide_session_t* session, int32_t enabled);
/* Copies the profile of entry `entry`'s calls (one record per call, plan order) into out_calls (at
 * most `capacity` records); *out_count is the entry's number of calls. */
TIDE_API tide_status_t tide_session_read_profile(const tide_session_t* session, int32_t entry,
                                                 tide_call_profile_t* out_calls, int32_t capacity,
                                                 int32_t* out_count);

#ifdef __cplusplus
}
#endif

#endif /* TIDE_RUNTIME_H_ */
