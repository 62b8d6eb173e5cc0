/*
 * The services a kernel library calls back into (workspace, parallel launch, barrier, error hook).
 * They find their session through a thread-local pointer that tide_session_run sets on the calling
 * thread and the session's pool workers set on themselves.
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

static _Thread_local tide_session_t* tls_session;

tide_session_t* tide_current_session(void) { return tls_session; }

tide_session_t* tide_set_current_session(tide_session_t* session) {
  tide_session_t* prev = tls_session;
  tls_session = session;
  return prev;
}

void tide_report_error(tide_session_t* session, const char* fmt, ...) {
  if (!session) return;
  pthread_mutex_lock(&session->error_mu);
  if (!session->error_set) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(session->error, sizeof(session->error), fmt, ap);
    va_end(ap);
    session->error_set = 1;
  }
  pthread_mutex_unlock(&session->error_mu);
}

void tide_backend_error_hook(const char* kind, const char** parts, int32_t num_parts) {
  tide_session_t* s = tls_session;
  if (!s) return;
  char msg[TIDE_ERROR_SLOT_BYTES];
  size_t used = 0;
  msg[0] = 0;
  for (int32_t i = 0; parts && i < num_parts && used + 1 < sizeof(msg); ++i) {
    if (!parts[i]) continue;
    size_t n = strnlen(parts[i], sizeof(msg) - 1 - used);
    memcpy(msg + used, parts[i], n);
    used += n;
    msg[used] = 0;
  }
  tide_report_error(s, "%s: %s", kind ? kind : "Error", msg);
}

void* tide_backend_alloc_workspace(int device_type, int device_id, uint64_t nbytes, int dtype_code_hint,
                                   int dtype_bits_hint) {
  (void)dtype_code_hint;
  (void)dtype_bits_hint;
  tide_session_t* s = tls_session;
  const tide_device_backend_t* dev = s ? s->model->device : NULL;
  if (dev && dev->workspace_alloc && device_type == dev->dl_device_type) {
    tide_status_t st = NULL;
    void* p = dev->workspace_alloc(s->device, nbytes, &st);
    if (!p) {
      tide_report_error(s, "TVMBackendAllocWorkspace: %s", st ? tide_status_message(st) : "failed");
      tide_status_free(st);
    }
    return p;
  }
  if (device_type != TIDE_DL_CPU) {
    tide_report_error(s, "TVMBackendAllocWorkspace: device type %d (id %d) is not supported by this session (%s)",
                      device_type, device_id, dev ? dev->name : "cpu");
    return NULL;
  }
  void* p = tide_workspace_alloc(s ? &s->workspace : NULL, nbytes);
  if (!p) {
    tide_report_error(s, "TVMBackendAllocWorkspace: out of memory allocating %llu bytes",
                      (unsigned long long)nbytes);
  }
  return p;
}

int tide_backend_free_workspace(int device_type, int device_id, void* ptr) {
  tide_session_t* s = tls_session;
  const tide_device_backend_t* dev = s ? s->model->device : NULL;
  if (dev && dev->workspace_free && device_type == dev->dl_device_type) {
    dev->workspace_free(s->device, ptr);
    return 0;
  }
  if (device_type != TIDE_DL_CPU) {
    tide_report_error(s, "TVMBackendFreeWorkspace: device type %d (id %d) is not supported by this session (%s)",
                      device_type, device_id, dev ? dev->name : "cpu");
    return -1;
  }
  tide_workspace_free(s ? &s->workspace : NULL, ptr);
  return 0;
}

int tide_backend_parallel_launch(tide_parallel_lambda_t flambda, void* cdata, int num_task) {
  tide_session_t* s = tls_session;
  return tide_thread_pool_launch(s ? s->pool : NULL, flambda, cdata, num_task);
}

int tide_backend_parallel_barrier(int task_id, tide_parallel_env_t* penv) {
  return tide_thread_pool_barrier(task_id, penv);
}
