/*
 * Kernel workspace: 64-byte aligned blocks with a small per-session cache, so that a kernel that
 * allocates the same scratch on every call does not reach malloc after the first run. Each block has
 * a 64-byte header recording its capacity. Thread-safe (parallel tasks may allocate).
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define TIDE_WS_HEADER 64u

static uint64_t block_capacity(void* ptr) {
  uint64_t cap;
  memcpy(&cap, (uint8_t*)ptr - TIDE_WS_HEADER, sizeof(cap));
  return cap;
}

void tide_workspace_init(tide_workspace_t* ws) {
  memset(ws, 0, sizeof(*ws));
  pthread_mutex_init(&ws->mu, NULL);
}

void tide_workspace_destroy(tide_workspace_t* ws) {
  for (int i = 0; i < ws->num_cached; ++i) free((uint8_t*)ws->cached[i] - TIDE_WS_HEADER);
  ws->num_cached = 0;
  pthread_mutex_destroy(&ws->mu);
}

void* tide_workspace_alloc(tide_workspace_t* ws, uint64_t nbytes) {
  uint64_t cap = tide_round_up64(nbytes ? nbytes : 1);
  if (cap < nbytes || cap > SIZE_MAX - TIDE_WS_HEADER) return NULL;
  if (ws) {
    pthread_mutex_lock(&ws->mu);
    int best = -1;
    for (int i = 0; i < ws->num_cached; ++i) {
      uint64_t c = block_capacity(ws->cached[i]);
      if (c >= cap && (best < 0 || c < block_capacity(ws->cached[best]))) best = i;
    }
    if (best >= 0) {
      void* p = ws->cached[best];
      ws->cached[best] = ws->cached[--ws->num_cached];
      pthread_mutex_unlock(&ws->mu);
      return p;
    }
    pthread_mutex_unlock(&ws->mu);
  }
  void* block = NULL;
  if (posix_memalign(&block, 64, (size_t)(cap + TIDE_WS_HEADER)) != 0) return NULL;
  memcpy(block, &cap, sizeof(cap));
  return (uint8_t*)block + TIDE_WS_HEADER;
}

void tide_workspace_free(tide_workspace_t* ws, void* ptr) {
  if (!ptr) return;
  if (ws) {
    pthread_mutex_lock(&ws->mu);
    if (ws->num_cached < TIDE_WORKSPACE_CACHE) {
      ws->cached[ws->num_cached++] = ptr;
      pthread_mutex_unlock(&ws->mu);
      return;
    }
    /* Cache full: keep the larger block, free the smaller. */
    int smallest = 0;
    for (int i = 1; i < ws->num_cached; ++i) {
      if (block_capacity(ws->cached[i]) < block_capacity(ws->cached[smallest])) smallest = i;
    }
    if (block_capacity(ws->cached[smallest]) < block_capacity(ptr)) {
      void* evicted = ws->cached[smallest];
      ws->cached[smallest] = ptr;
      ptr = evicted;
    }
    pthread_mutex_unlock(&ws->mu);
  }
  free((uint8_t*)ptr - TIDE_WS_HEADER);
}
