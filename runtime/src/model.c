/* tide_model_t: a memory-mapped, validated artifact with its kernel library loaded. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

static const char* const k_target_names[] = {"?", "cpu", "cuda", "ascend"};

TIDE_API void tide_model_options_initialize(tide_model_options_t* out_options) {
  if (!out_options) return;
  memset(out_options, 0, sizeof(*out_options));
  out_options->struct_size = sizeof(*out_options);
  out_options->verify_checksums = 1;
  out_options->allowed_cpu_features = ~(uint64_t)0;
  out_options->device_kind = TIDE_DEVICE_CPU;
  out_options->device_ordinal = 0;
  out_options->cuda_driver_path = NULL;
  out_options->ascend_acl_path = NULL;
  out_options->copy_weights = 0;
}

/* Copies the caller's options over the defaults, field by field as far as struct_size reaches. */
static tide_status_t read_options(const tide_model_options_t* in, tide_model_options_t* out) {
  tide_model_options_initialize(out);
  if (!in) return NULL;
  if (in->struct_size < sizeof(uint32_t) || in->struct_size > sizeof(*out)) {
    return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT,
                            "tide_model_options_t.struct_size is %u; this runtime knows sizes up to %zu "
                            "(call tide_model_options_initialize)",
                            in->struct_size, sizeof(*out));
  }
  if (in->struct_size >= offsetof(tide_model_options_t, verify_checksums) + sizeof(int32_t)) {
    out->verify_checksums = in->verify_checksums;
  }
  if (in->struct_size >= offsetof(tide_model_options_t, allowed_cpu_features) + sizeof(uint64_t)) {
    out->allowed_cpu_features = in->allowed_cpu_features;
  }
  if (in->struct_size >= offsetof(tide_model_options_t, device_ordinal) + sizeof(int32_t)) {
    out->device_kind = in->device_kind;
    out->device_ordinal = in->device_ordinal;
  }
  if (in->struct_size >= offsetof(tide_model_options_t, cuda_driver_path) + sizeof(const char*)) {
    out->cuda_driver_path = in->cuda_driver_path;
  }
  if (in->struct_size >= offsetof(tide_model_options_t, ascend_acl_path) + sizeof(const char*)) {
    out->ascend_acl_path = in->ascend_acl_path;
  }
  if (in->struct_size >= offsetof(tide_model_options_t, copy_weights) + sizeof(int32_t)) {
    out->copy_weights = in->copy_weights;
  }
  if (out->copy_weights != 0 && out->copy_weights != 1) {
    return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "tide_model_options_t.copy_weights is %d (0 or 1)",
                            out->copy_weights);
  }
  if (out->device_kind < TIDE_DEVICE_CPU || out->device_kind > TIDE_DEVICE_ASCEND) {
    return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT,
                            "tide_model_options_t.device_kind is %d (TIDE_DEVICE_CPU 1, TIDE_DEVICE_CUDA 2 or "
                            "TIDE_DEVICE_ASCEND 3)",
                            out->device_kind);
  }
  return NULL;
}

static const char* const k_device_names[] = {"?", "cpu", "cuda", "ascend"};

static tide_status_t check_target(const tide_artifact_t* art, const tide_model_options_t* o) {
  uint64_t allowed_features = o->allowed_cpu_features;
  /* target kinds and device kinds share their numbering: cpu 1, cuda 2, ascend 3 */
  if (art->target_kind != (uint32_t)o->device_kind) {
    if (art->target_kind == TIDE_TARGET_CPU) {
      return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT,
                              "the artifact targets cpu; it cannot be loaded onto %s:%d (compile it with --target %s)",
                              k_device_names[o->device_kind], o->device_ordinal, k_device_names[o->device_kind]);
    }
    return tide_make_status(TIDE_STATUS_UNIMPLEMENTED,
                            "the artifact targets %s (device '%s'); it cannot run on the %s (load it with device %s)",
                            k_target_names[art->target_kind], art->device_arch, k_device_names[o->device_kind],
                            k_target_names[art->target_kind]);
  }
  if (art->target_kind != TIDE_TARGET_CPU) return NULL; /* the driver and device: the backend's model_create */
  const char* host = tide_host_arch();
  if (strcmp(art->host_arch, host) != 0) {
    return tide_make_status(TIDE_STATUS_UNIMPLEMENTED,
                            "the artifact was compiled for host architecture '%s'; this machine is %s",
                            art->host_arch, host);
  }
  uint64_t have = tide_host_cpu_features() & allowed_features;
  uint64_t missing = art->cpu_features & ~have;
  if (missing) {
    char names[256] = "";
    size_t used = 0;
    for (int bit = 0; bit < TIDE_CPU_FEATURE_COUNT; ++bit) {
      if (!(missing & ((uint64_t)1 << bit))) continue;
      int n = snprintf(names + used, sizeof(names) - used, "%s%s", used ? ", " : "", tide_cpu_feature_name(bit));
      if (n < 0 || (size_t)n >= sizeof(names) - used) break;
      used += (size_t)n;
    }
    return tide_make_status(TIDE_STATUS_UNIMPLEMENTED,
                            "the artifact needs CPU features this machine lacks: %s", names);
  }
  return NULL;
}

static void model_destroy(tide_model_t* m) {
  tide_kernel_library_unload(&m->kernels);
  if (m->device) m->device->model_release(m->device_model);
  tide_artifact_free(&m->artifact);
  if (m->map) munmap(m->map, (size_t)m->map_size);
  if (m->weights_copy) munmap(m->weights_copy, m->weights_copy_size);
  free(m);
}

static tide_status_t map_file(const char* path, tide_model_t* m) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    return tide_make_status(e == ENOENT ? TIDE_STATUS_NOT_FOUND : TIDE_STATUS_INVALID_ARGUMENT,
                            "cannot open '%s': %s", path, strerror(e));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "cannot stat '%s': %s", path, strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "'%s' is not a regular file", path);
  }
  if (st.st_size == 0) {
    close(fd);
    return tide_make_status(TIDE_STATUS_DATA_LOSS, "'%s' is empty (truncated artifact)", path);
  }
  m->map_size = (uint64_t)st.st_size;
  void* p = mmap(NULL, (size_t)m->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int e = errno;
  close(fd);
  if (p == MAP_FAILED) {
    return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "cannot map '%s' (%llu bytes): %s", path,
                            (unsigned long long)m->map_size, strerror(e));
  }
  m->map = p;
  return NULL;
}

/* The WEIGHTS section copied into private anonymous pages, read-only once filled; weights_base
 * points there instead of into the file mapping. */
static tide_status_t copy_weights(tide_model_t* m) {
  if (m->artifact.target_kind != TIDE_TARGET_CPU) {
    return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT,
                            "copy_weights: the artifact targets %s, whose weights are uploaded to the device at "
                            "load; the option is for CPU artifacts",
                            k_target_names[m->artifact.target_kind]);
  }
  const tide_section_ref_t* w = &m->artifact.sections[TIDE_SECTION_WEIGHTS];
  if (!w->present || w->size == 0) return NULL;
  size_t size = (size_t)w->size;
  void* p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    int e = errno;
    return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "copy_weights: cannot allocate %llu bytes: %s",
                            (unsigned long long)w->size, strerror(e));
  }
  m->weights_copy = p; /* released by model_destroy whatever happens next */
  m->weights_copy_size = size;
  memcpy(p, m->weights_base, size);
  if (mprotect(p, size, PROT_READ) != 0) {
    int e = errno;
    return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "copy_weights: cannot make the copy read-only: %s",
                            strerror(e));
  }
  m->weights_base = p;
  return NULL;
}

static tide_status_t prepare(tide_model_t* m) {
  tide_artifact_t* a = &m->artifact;
  const uint8_t* base = m->map;
  m->weights_base = base + a->sections[TIDE_SECTION_WEIGHTS].offset;
  const tide_section_ref_t* meta = &a->sections[TIDE_SECTION_METADATA];
  uint64_t meta_len = meta->present ? meta->size : 2;
  m->metadata = tide_pool_alloc(&a->pool, (size_t)meta_len + 1);
  if (!m->metadata) return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  memcpy(m->metadata, meta->present ? (const char*)base + meta->offset : "{}", (size_t)meta_len);
  for (uint32_t i = 0; i < a->num_entries; ++i) {
    if (a->entries[i].arena_bytes > m->max_arena_bytes) m->max_arena_bytes = a->entries[i].arena_bytes;
  }
  m->state_offsets = tide_pool_alloc_array(&a->pool, a->num_states, sizeof(uint64_t));
  if (!m->state_offsets) return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  uint64_t total = 0;
  for (uint32_t i = 0; i < a->num_states; ++i) {
    m->state_offsets[i] = total;
    uint64_t rounded = tide_round_up64(a->states[i].desc.nbytes);
    if (rounded < a->states[i].desc.nbytes || tide_add_overflows(total, rounded, &total)) {
      return tide_make_status(TIDE_STATUS_DATA_LOSS, "PLAN section: total state bytes overflow 64 bits");
    }
  }
  m->state_bytes = total;
  return NULL;
}

TIDE_API tide_status_t tide_model_load_file(const char* path, const tide_model_options_t* options,
                                            tide_model_t** out_model) {
  if (!out_model) return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "out_model is NULL");
  *out_model = NULL;
  if (!path) return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "path is NULL");
  tide_model_options_t opts;
  tide_status_t st = read_options(options, &opts);
  if (st) return st;
  tide_model_t* m = calloc(1, sizeof(*m));
  if (!m) return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  atomic_init(&m->refcount, 1);
  st = map_file(path, m);
  if (!st) st = tide_artifact_parse(m->map, m->map_size, opts.verify_checksums != 0, &m->artifact);
  if (!st) st = check_target(&m->artifact, &opts);
  if (!st) st = prepare(m);
  if (!st && opts.copy_weights) st = copy_weights(m);
  if (!st && m->artifact.target_kind == TIDE_TARGET_CUDA) {
    st = tide_cuda_model_create(&m->artifact, m->map, &opts, &m->device_model);
    if (!st) m->device = &tide_cuda_backend;
  }
  if (!st && m->artifact.target_kind == TIDE_TARGET_ASCEND) {
    st = tide_ascend_model_create(&m->artifact, m->map, &opts, &m->device_model);
    if (!st) m->device = &tide_ascend_backend;
  }
  if (!st && m->artifact.target_kind != TIDE_TARGET_ASCEND) {
    const tide_section_ref_t* k = &m->artifact.sections[TIDE_SECTION_KERNELS_HOST];
    st = tide_kernel_library_load((const uint8_t*)m->map + k->offset, k->size, &m->artifact, &m->artifact.pool,
                                  &m->kernels);
  }
  if (!st && m->device == &tide_cuda_backend) st = tide_cuda_bind_library(m->device_model, m->kernels.handle);
  if (st) {
    model_destroy(m);
    return tide_status_wrap(st, "loading '%s'", path);
  }
  *out_model = m;
  return NULL;
}

TIDE_API void tide_model_retain(tide_model_t* model) {
  if (model) atomic_fetch_add(&model->refcount, 1);
}

TIDE_API void tide_model_release(tide_model_t* model) {
  if (model && atomic_fetch_sub(&model->refcount, 1) == 1) model_destroy(model);
}

TIDE_API const char* tide_model_target(const tide_model_t* model) {
  return k_target_names[model->artifact.target_kind];
}

TIDE_API const char* tide_model_metadata(const tide_model_t* model) { return model->metadata; }

TIDE_API int32_t tide_model_entry_count(const tide_model_t* model) { return (int32_t)model->artifact.num_entries; }

TIDE_API int32_t tide_model_kernel_count(const tide_model_t* model) { return (int32_t)model->artifact.num_kernels; }

TIDE_API const char* tide_model_kernel_name(const tide_model_t* model, int32_t index) {
  if (index < 0 || (uint32_t)index >= model->artifact.num_kernels) return NULL;
  return model->artifact.kernel_names[index];
}

static const tide_entry_decl_t* entry_at(const tide_model_t* model, int32_t entry) {
  if (entry < 0 || (uint32_t)entry >= model->artifact.num_entries) return NULL;
  return &model->artifact.entries[entry];
}

TIDE_API const char* tide_model_entry_name(const tide_model_t* model, int32_t entry) {
  const tide_entry_decl_t* e = entry_at(model, entry);
  return e ? e->name : NULL;
}

TIDE_API tide_status_t tide_model_find_entry(const tide_model_t* model, const char* name, int32_t* out_entry) {
  if (!name || !out_entry) return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "name or out_entry is NULL");
  for (uint32_t i = 0; i < model->artifact.num_entries; ++i) {
    if (strcmp(model->artifact.entries[i].name, name) == 0) {
      *out_entry = (int32_t)i;
      return NULL;
    }
  }
  char names[512] = "";
  size_t used = 0;
  for (uint32_t i = 0; i < model->artifact.num_entries && used < sizeof(names); ++i) {
    int n = snprintf(names + used, sizeof(names) - used, "%s'%s'", i ? ", " : "", model->artifact.entries[i].name);
    if (n < 0 || (size_t)n >= sizeof(names) - used) break;
    used += (size_t)n;
  }
  return tide_make_status(TIDE_STATUS_NOT_FOUND, "no entry '%s' (the model has %s)", name, names);
}

TIDE_API int32_t tide_model_input_count(const tide_model_t* model, int32_t entry) {
  const tide_entry_decl_t* e = entry_at(model, entry);
  return e ? (int32_t)e->num_inputs : -1;
}

TIDE_API int32_t tide_model_output_count(const tide_model_t* model, int32_t entry) {
  const tide_entry_decl_t* e = entry_at(model, entry);
  return e ? (int32_t)e->num_outputs : -1;
}

static void fill_info(const char* name, const tide_tensor_desc_t* d, tide_io_role_t role, int32_t state_index,
                      tide_tensor_info_t* out) {
  memset(out, 0, sizeof(*out));
  out->name = name;
  out->dtype = d->dtype;
  out->ndim = d->ndim;
  memcpy(out->shape, d->shape, sizeof(int64_t) * (size_t)d->ndim);
  out->role = role;
  out->state_index = state_index;
}

static tide_status_t io_info(const tide_model_t* model, int32_t entry, int32_t index, int is_output,
                             tide_tensor_info_t* out_info) {
  const char* what = is_output ? "output" : "input";
  if (!out_info) return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "out_info is NULL");
  const tide_entry_decl_t* e = entry_at(model, entry);
  if (!e) {
    return tide_make_status(TIDE_STATUS_NOT_FOUND, "entry index %d out of range (%u entries)", entry,
                            model->artifact.num_entries);
  }
  uint32_t count = is_output ? e->num_outputs : e->num_inputs;
  if (index < 0 || (uint32_t)index >= count) {
    return tide_make_status(TIDE_STATUS_NOT_FOUND, "entry '%s': %s index %d out of range (%u %ss)", e->name,
                            what, index, count, what);
  }
  const tide_io_decl_t* io = is_output ? &e->outputs[index] : &e->inputs[index];
  const tide_buffer_decl_t* b = &e->buffers[io->buffer];
  int32_t state = io->role == TIDE_IO_STATE ? (int32_t)b->index : -1;
  fill_info(io->name, &b->desc, (tide_io_role_t)io->role, state, out_info);
  return NULL;
}

TIDE_API tide_status_t tide_model_input_info(const tide_model_t* model, int32_t entry, int32_t index,
                                             tide_tensor_info_t* out_info) {
  return io_info(model, entry, index, 0, out_info);
}

TIDE_API tide_status_t tide_model_output_info(const tide_model_t* model, int32_t entry, int32_t index,
                                              tide_tensor_info_t* out_info) {
  return io_info(model, entry, index, 1, out_info);
}

TIDE_API int32_t tide_model_state_count(const tide_model_t* model) { return (int32_t)model->artifact.num_states; }

TIDE_API tide_status_t tide_model_state_info(const tide_model_t* model, int32_t index, tide_tensor_info_t* out_info) {
  if (!out_info) return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "out_info is NULL");
  if (index < 0 || (uint32_t)index >= model->artifact.num_states) {
    return tide_make_status(TIDE_STATUS_NOT_FOUND, "state index %d out of range (%u states)", index,
                            model->artifact.num_states);
  }
  const tide_state_decl_t* s = &model->artifact.states[index];
  fill_info(s->name, &s->desc, TIDE_IO_STATE, index, out_info);
  return NULL;
}

TIDE_API void tide_model_memory(const tide_model_t* model, uint64_t* out_arena_bytes, uint64_t* out_state_bytes,
                                uint64_t* out_weight_bytes) {
  if (out_arena_bytes) *out_arena_bytes = model->max_arena_bytes;
  if (out_state_bytes) *out_state_bytes = model->state_bytes;
  if (out_weight_bytes) *out_weight_bytes = model->artifact.sections[TIDE_SECTION_WEIGHTS].size;
}
