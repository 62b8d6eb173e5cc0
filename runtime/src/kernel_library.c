/*
 * Loads the KERNELS_HOST shared object from memory: memfd_create + write + dlopen of
 * /proc/self/fd/N (RTLD_NOW | RTLD_LOCAL, so two models never share symbols), then resolves the
 * kernels and fills the library's backend-service variables and error hook.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#define TIDE_ELF_MACHINE_X86_64 62
#define TIDE_ELF_MACHINE_AARCH64 183

static tide_status_t check_elf(const uint8_t* p, uint64_t n) {
  if (n < 64 || memcmp(p, "\177ELF", 4) != 0) {
    return tide_make_status(TIDE_STATUS_DATA_LOSS, "KERNELS_HOST section: not an ELF file");
  }
  if (p[4] != 2 || p[5] != 1) {
    return tide_make_status(TIDE_STATUS_UNIMPLEMENTED,
                            "KERNELS_HOST section: not a 64-bit little-endian ELF file");
  }
  uint16_t type = (uint16_t)(p[16] | (p[17] << 8));
  uint16_t machine = (uint16_t)(p[18] | (p[19] << 8));
  if (type != 3) {
    return tide_make_status(TIDE_STATUS_DATA_LOSS, "KERNELS_HOST section: ELF type %u is not a shared object", type);
  }
#if defined(__x86_64__)
  const uint16_t host_machine = TIDE_ELF_MACHINE_X86_64;
#elif defined(__aarch64__)
  const uint16_t host_machine = TIDE_ELF_MACHINE_AARCH64;
#else
  const uint16_t host_machine = 0;
#endif
  if (machine != host_machine) {
    return tide_make_status(TIDE_STATUS_UNIMPLEMENTED,
                            "KERNELS_HOST section: ELF machine %u does not match this %s host", machine,
                            tide_host_arch());
  }
  return NULL;
}

/*
 * glibc identifies loaded objects by path name first, and "/proc/self/fd/N" is reused once fd N is
 * closed, so a library still loaded under that name would be returned instead of ours. Pick a
 * spelling of the path ("/proc/self/fd/N", "/proc/self/fd/./N", ...) that no loaded object uses.
 */
static tide_status_t open_memfd_library(int fd, void** out_handle) {
  char path[128];
  for (int dots = 0; dots < 32; ++dots) {
    int len = snprintf(path, sizeof(path), "/proc/self/fd/");
    for (int k = 0; k < dots; ++k) len += snprintf(path + len, sizeof(path) - (size_t)len, "./");
    snprintf(path + len, sizeof(path) - (size_t)len, "%d", fd);
    void* existing = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
    if (existing) {
      dlclose(existing);
      continue;
    }
    void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* err = dlerror();
      return tide_make_status(TIDE_STATUS_UNAVAILABLE, "the kernel library could not be loaded: %s",
                              err ? err : "unknown dlopen error");
    }
    *out_handle = h;
    return NULL;
  }
  return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED,
                          "the kernel library could not be loaded: no unused /proc/self/fd path name "
                          "for descriptor %d",
                          fd);
}

/* Stores value into the library's variable `name` if the library defines it. */
static void fill_variable(void* handle, const char* name, const void* value, size_t size) {
  dlerror();
  void* var = dlsym(handle, name);
  if (var) memcpy(var, value, size);
}

tide_status_t tide_kernel_library_load(const uint8_t* image, uint64_t size,
                                       const tide_artifact_t* artifact, tide_mem_pool_t* pool,
                                       tide_kernel_library_t* out) {
  memset(out, 0, sizeof(*out));
  if (artifact->num_kernels == 0) return NULL;
  tide_status_t st = check_elf(image, size);
  if (st) return st;

  int fd = memfd_create("tide-kernels", MFD_CLOEXEC);
  if (fd < 0) {
    return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "memfd_create for the kernel library failed: %s",
                            strerror(errno));
  }
  for (uint64_t done = 0; done < size;) {
    ssize_t w = write(fd, image + done, (size_t)(size - done));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      int e = w < 0 ? errno : ENOSPC;
      close(fd);
      return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED,
                              "writing the kernel library to its memfd failed: %s", strerror(e));
    }
    done += (uint64_t)w;
  }
  void* handle = NULL;
  st = open_memfd_library(fd, &handle);
  close(fd); /* the mapping made by dlopen keeps the memory alive */
  if (st) return st;

  out->handle = handle;
  out->kernels = tide_pool_alloc_array(pool, artifact->num_kernels, sizeof(tide_kernel_fn_t));
  if (!out->kernels) {
    tide_kernel_library_unload(out);
    return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  char symbol[TIDE_MAX_STRING + 16];
  for (uint32_t i = 0; i < artifact->num_kernels; ++i) {
    snprintf(symbol, sizeof(symbol), "__tvm_ffi_%s", artifact->kernel_names[i]);
    dlerror();
    void* fn = dlsym(handle, symbol);
    if (!fn) {
      tide_kernel_library_unload(out);
      return tide_make_status(TIDE_STATUS_NOT_FOUND,
                              "kernel '%s' (index %u): symbol %s is missing from the kernel library",
                              artifact->kernel_names[i], i, symbol);
    }
    memcpy(&out->kernels[i], &fn, sizeof(fn));
  }
  dlerror();
  void* hook = dlsym(handle, "__tide_error_hook");
  if (!hook) {
    tide_kernel_library_unload(out);
    return tide_make_status(TIDE_STATUS_NOT_FOUND,
                            "the kernel library has no __tide_error_hook: it was not linked with "
                            "runtime/src/kernel_shim.c, so kernel errors could not be reported");
  }
  tide_error_hook_fn_t hook_fn = tide_backend_error_hook;
  memcpy(hook, &hook_fn, sizeof(hook_fn));
  tide_alloc_workspace_fn_t alloc_fn = tide_backend_alloc_workspace;
  tide_free_workspace_fn_t free_fn = tide_backend_free_workspace;
  tide_parallel_launch_fn_t launch_fn = tide_backend_parallel_launch;
  tide_parallel_barrier_fn_t barrier_fn = tide_backend_parallel_barrier;
  fill_variable(handle, "__TVMBackendAllocWorkspace", &alloc_fn, sizeof(alloc_fn));
  fill_variable(handle, "__TVMBackendFreeWorkspace", &free_fn, sizeof(free_fn));
  fill_variable(handle, "__TVMBackendParallelLaunch", &launch_fn, sizeof(launch_fn));
  fill_variable(handle, "__TVMBackendParallelBarrier", &barrier_fn, sizeof(barrier_fn));
  return NULL;
}

void tide_kernel_library_unload(tide_kernel_library_t* lib) {
  if (lib->handle) dlclose(lib->handle);
  lib->handle = NULL;
  lib->kernels = NULL;
}
