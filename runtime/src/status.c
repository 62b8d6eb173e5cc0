/* tide_status_t: a heap-allocated code + message; NULL is success. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct tide_status_s {
  tide_status_code_t code;
  char message[];
};

/* Returned when a status itself cannot be allocated; never freed. */
static const struct {
  tide_status_code_t code;
  char message[64];
} k_out_of_memory_status = {TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory (while reporting an error)"};

static tide_status_t out_of_memory_status(void) { return (tide_status_t)(void*)&k_out_of_memory_status; }

static tide_status_t make_status_v(tide_status_code_t code, const char* prefix, const char* fmt,
                                   va_list ap) {
  va_list ap2;
  va_copy(ap2, ap);
  int body = vsnprintf(NULL, 0, fmt, ap2);
  va_end(ap2);
  if (body < 0) body = 0;
  size_t prefix_len = prefix ? strlen(prefix) + 2 : 0;
  struct tide_status_s* s = malloc(sizeof(*s) + prefix_len + (size_t)body + 1);
  if (!s) return out_of_memory_status();
  s->code = code;
  char* p = s->message;
  if (prefix) {
    memcpy(p, prefix, prefix_len - 2);
    memcpy(p + prefix_len - 2, ": ", 2);
    p += prefix_len;
  }
  vsnprintf(p, (size_t)body + 1, fmt, ap);
  return s;
}

tide_status_t tide_make_status(tide_status_code_t code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  tide_status_t s = make_status_v(code, NULL, fmt, ap);
  va_end(ap);
  return s;
}

tide_status_t tide_status_wrap(tide_status_t cause, const char* fmt, ...) {
  if (cause == out_of_memory_status()) return cause;
  va_list ap;
  va_start(ap, fmt);
  char prefix[1024];
  vsnprintf(prefix, sizeof(prefix), fmt, ap);
  va_end(ap);
  tide_status_t s = tide_make_status(cause->code, "%s: %s", prefix, cause->message);
  tide_status_free(cause);
  return s;
}

TIDE_API tide_status_code_t tide_status_code(tide_status_t status) {
  return status ? status->code : TIDE_STATUS_OK;
}

TIDE_API const char* tide_status_message(tide_status_t status) {
  return status ? status->message : "OK";
}

TIDE_API void tide_status_free(tide_status_t status) {
  if (status && status != out_of_memory_status()) free(status);
}
