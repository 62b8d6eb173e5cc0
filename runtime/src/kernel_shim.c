/*
 * Linked into every tide kernel library (by the compiler, next to TVM's object file); NOT part of
 * libtide_runtime.
 *
 * TVM-generated kernels report errors through TVMFFIErrorSetRaisedFromCStrParts, normally defined by
 * libtvm_ffi. Here it is defined with hidden visibility, so the static link binds the kernels' calls
 * to this definition no matter what other libraries the process has loaded, and it forwards to the
 * function-pointer variable __tide_error_hook, which the tide loader fills after dlopen. Loaded by
 * anything else (hook still NULL), errors are dropped and the kernel still returns -1.
 */
#include <stdint.h>

typedef void (*tide_error_hook_fn_t)(const char* kind, const char** parts, int32_t num_parts);

__attribute__((visibility("default"))) tide_error_hook_fn_t __tide_error_hook = 0;

__attribute__((visibility("hidden"))) void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts,
                                                                             int32_t num_parts) {
  tide_error_hook_fn_t hook = __tide_error_hook;
  if (hook) hook(kind, parts, num_parts);
}
