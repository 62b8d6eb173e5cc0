/*
 * The CUDA driver, loaded at run time (dlopen; no CUDA header or link), and the device-code image
 * choice of docs/artifact-format.md. Only the driver types used here are declared.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define TIDE_CU_ATTR_CC_MAJOR 75
#define TIDE_CU_ATTR_CC_MINOR 76

void tide_cuda_driver_close(tide_cuda_driver_t* drv) {
  if (drv && drv->handle) dlclose(drv->handle);
  free(drv);
}

tide_status_t tide_cuda_driver_open(const char* path, tide_cuda_driver_t** out) {
  *out = NULL;
  tide_cuda_driver_t* drv = calloc(1, sizeof(*drv));
  if (!drv) return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  drv->handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!drv->handle) {
    const char* err = dlerror();
    free(drv);
    return tide_make_status(TIDE_STATUS_UNAVAILABLE, "%s not found: %s (no CUDA driver on this machine?)", path,
                            err ? err : "dlopen failed");
  }
#define TIDE_CUDA_RESOLVE(name, symbol, params)                                                           \
  {                                                                                                     \
    void* sym = dlsym(drv->handle, symbol);                                                             \
    if (!sym) {                                                                                         \
      tide_cuda_driver_close(drv);                                                                      \
      return tide_make_status(TIDE_STATUS_UNAVAILABLE, "the CUDA driver %s lacks the entry point %s", path, \
                              symbol);                                                                   \
    }                                                                                                   \
    memcpy(&drv->name, &sym, sizeof(sym));                                                              \
  }
  TIDE_CUDA_SYMBOLS(TIDE_CUDA_RESOLVE)
#undef TIDE_CUDA_RESOLVE
  *out = drv;
  return NULL;
}

const char* tide_cuda_error_text(tide_cuda_driver_t* drv, int rc) {
  const char* text = NULL;
  if (drv->cuGetErrorString(rc, &text) != 0 || !text) text = "unknown error";
  return text;
}

tide_status_t tide_cuda_error(tide_cuda_driver_t* drv, int rc, const char* call) {
  return tide_make_status(rc == TIDE_CUDA_ERROR_OUT_OF_MEMORY ? TIDE_STATUS_RESOURCE_EXHAUSTED : TIDE_STATUS_UNAVAILABLE,
                          "%s failed: CUDA error %d (%s)", call, rc, tide_cuda_error_text(drv, rc));
}

tide_status_t tide_cuda_device_capability(tide_cuda_driver_t* drv, int32_t ordinal, int* out_major, int* out_minor) {
  int rc = drv->cuInit(0);
  if (rc) return tide_cuda_error(drv, rc, "cuInit");
  int count = 0;
  rc = drv->cuDeviceGetCount(&count);
  if (rc) return tide_cuda_error(drv, rc, "cuDeviceGetCount");
  if (count == 0) return tide_make_status(TIDE_STATUS_UNAVAILABLE, "no CUDA device: the driver reports 0 devices");
  if (ordinal < 0 || ordinal >= count) {
    return tide_make_status(TIDE_STATUS_UNAVAILABLE, "CUDA device %d does not exist (the driver reports %d device%s)",
                            ordinal, count, count == 1 ? "" : "s");
  }
  int dev = 0;
  rc = drv->cuDeviceGet(&dev, ordinal);
  if (rc) return tide_cuda_error(drv, rc, "cuDeviceGet");
  rc = drv->cuDeviceGetAttribute(out_major, TIDE_CU_ATTR_CC_MAJOR, dev);
  if (!rc) rc = drv->cuDeviceGetAttribute(out_minor, TIDE_CU_ATTR_CC_MINOR, dev);
  if (rc) return tide_cuda_error(drv, rc, "cuDeviceGetAttribute(compute capability)");
  return NULL;
}

static int runnable_binary(const tide_device_image_t* img) { return img->format != TIDE_IMAGE_PTX; }

tide_status_t tide_cuda_select_image(const tide_artifact_t* art, int major, int minor, uint32_t* out_index) {
  uint32_t want = (uint32_t)(major * 10 + minor);
  int best = -1;
  /* 1. a cubin/fatbin for exactly this sm (its 'a' variant preferred: it runs only here). */
  for (uint32_t i = 0; i < art->num_device_images; ++i) {
    const tide_device_image_t* img = &art->device_images[i];
    if (runnable_binary(img) && img->sm == want) best = (int)i;
  }
  /* 2. the highest same-major, lower-minor cubin/fatbin (never an 'a' variant). */
  for (uint32_t i = 0; best < 0 && i < art->num_device_images; ++i) {
    const tide_device_image_t* img = &art->device_images[i];
    if (runnable_binary(img) && !img->arch_specific && img->sm / 10 == (uint32_t)major && img->sm < want) {
      int j = (int)i;
      while (j + 1 < (int)art->num_device_images) {
        const tide_device_image_t* n = &art->device_images[j + 1];
        if (!(runnable_binary(n) && !n->arch_specific && n->sm / 10 == (uint32_t)major && n->sm < want)) break;
        ++j;
      }
      best = j;
    }
  }
  /* 3. ptx of the highest arch <= this sm (an 'a' variant only for exactly this sm), JIT-compiled. */
  for (uint32_t i = 0; best < 0 && i < art->num_device_images; ++i) {
    uint32_t k = art->num_device_images - 1 - i;
    const tide_device_image_t* img = &art->device_images[k];
    if (img->format == TIDE_IMAGE_PTX && img->sm <= want && (!img->arch_specific || img->sm == want)) best = (int)k;
  }
  if (best < 0) {
    char listed[512] = "";
    size_t used = 0;
    static const char* const k_formats[] = {"cubin", "fatbin", "ptx"};
    for (uint32_t i = 0; i < art->num_device_images; ++i) {
      int n = snprintf(listed + used, sizeof(listed) - used, "%s%s (%s)", i ? ", " : "", art->device_images[i].arch,
                       k_formats[art->device_images[i].format]);
      if (n < 0 || (size_t)n >= sizeof(listed) - used) break;
      used += (size_t)n;
    }
    return tide_make_status(TIDE_STATUS_UNIMPLEMENTED,
                            "the artifact has device code for %s; this device is sm_%u (compute capability "
                            "%d.%d) and can run none of it (recompile with --arch sm_%u)",
                            listed, want, major, minor, want);
  }
  *out_index = (uint32_t)best;
  return NULL;
}

/* ---- launch packing: a host stub's FunctionCall arguments -> cuLaunchKernel's ------------------ */

static tide_status_t pack_error(const tide_device_function_t* f, uint32_t i, const char* what) {
  return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "device function '%s' argument %u: %s", f->name, i, what);
}

tide_status_t tide_cuda_pack_launch(const tide_device_function_t* f, const tide_ffi_any_t* args, int32_t num_args,
                                    tide_cuda_launch_t* out) {
  memset(out, 0, sizeof(*out));
  if (num_args < 0 || (uint32_t)num_args != f->num_args + f->num_tags) {
    return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT,
                            "device function '%s' was called with %d arguments; it takes %u parameters and %u "
                            "launch dimensions",
                            f->name, num_args, f->num_args, f->num_tags);
  }
  for (uint32_t i = 0; i < f->num_args; ++i) {
    const tide_ffi_any_t* a = &args[i];
    tide_dtype_t d = f->args[i];
    void* slot = &out->storage[i];
    out->params[i] = slot;
    if (d.code == 3) {
      if (a->type_index != TIDE_FFI_OPAQUE_PTR && a->type_index != TIDE_FFI_NONE) {
        return pack_error(f, i, "expected a pointer");
      }
      void* p = a->type_index == TIDE_FFI_NONE ? NULL : a->v_ptr;
      memcpy(slot, &p, sizeof(p));
    } else if (d.code == 2 && (d.bits == 32 || d.bits == 64)) {
      if (a->type_index != TIDE_FFI_FLOAT && a->type_index != TIDE_FFI_INT) return pack_error(f, i, "expected a float");
      double v = a->type_index == TIDE_FFI_FLOAT ? a->v_float64 : (double)a->v_int64;
      if (d.bits == 32) {
        float x = (float)v;
        memcpy(slot, &x, sizeof(x));
      } else {
        memcpy(slot, &v, sizeof(v));
      }
    } else if ((d.code == 0 || d.code == 1) && (d.bits == 32 || d.bits == 64)) {
      if (a->type_index != TIDE_FFI_INT) return pack_error(f, i, "expected an integer");
      if (d.bits == 64) {
        memcpy(slot, &a->v_int64, sizeof(int64_t));
      } else if (d.code == 0) {
        int32_t x = (int32_t)a->v_int64;
        memcpy(slot, &x, sizeof(x));
      } else {
        uint32_t x = (uint32_t)a->v_int64;
        memcpy(slot, &x, sizeof(x));
      }
    } else {
      const char* name = tide_dtype_name(d);
      char what[96];
      snprintf(what, sizeof(what), "parameter dtype %s is not supported by the launcher", name ? name : "?");
      return pack_error(f, i, what);
    }
  }
  out->num_params = f->num_args;
  for (int k = 0; k < 3; ++k) out->grid[k] = out->block[k] = 1;
  for (uint32_t t = 0; t < f->num_tags; ++t) {
    const tide_ffi_any_t* a = &args[f->num_args + t];
    if (a->type_index != TIDE_FFI_INT) return pack_error(f, f->num_args + t, "a launch dimension must be an integer");
    int64_t v = a->v_int64;
    uint8_t tag = f->tags[t];
    int shared = tag == TIDE_TAG_DYN_SHARED;
    if (v < (shared ? 0 : 1) || v > (int64_t)UINT32_MAX) {
      char what[96];
      snprintf(what, sizeof(what), "launch dimension %lld out of range", (long long)v);
      return pack_error(f, f->num_args + t, what);
    }
    if (shared) {
      out->shared_bytes = (uint32_t)v;
    } else if (tag <= TIDE_TAG_BLOCK_Z) {
      out->grid[tag - TIDE_TAG_BLOCK_X] = (uint32_t)v;
    } else {
      out->block[tag - TIDE_TAG_THREAD_X] = (uint32_t)v;
    }
  }
  return NULL;
}
