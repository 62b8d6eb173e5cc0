/* A bump allocator for the parsed plan: many small objects, one free. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define TIDE_CHUNK_BYTES ((size_t)64 * 1024)

struct tide_pool_chunk_s {
  tide_pool_chunk_t* next;
  size_t used;
  size_t capacity;
  _Alignas(16) unsigned char data[];
};

void* tide_pool_alloc(tide_mem_pool_t* pool, size_t size) {
  size_t need = (size + 15u) & ~(size_t)15u;
  if (need < size) return NULL;
  tide_pool_chunk_t* c = pool->head;
  if (!c || c->capacity - c->used < need) {
    size_t cap = need > TIDE_CHUNK_BYTES ? need : TIDE_CHUNK_BYTES;
    if (cap > SIZE_MAX - sizeof(tide_pool_chunk_t)) return NULL;
    c = malloc(sizeof(tide_pool_chunk_t) + cap);
    if (!c) return NULL;
    c->used = 0;
    c->capacity = cap;
    c->next = pool->head;
    pool->head = c;
  }
  void* p = c->data + c->used;
  c->used += need;
  memset(p, 0, size);
  return p;
}

void* tide_pool_alloc_array(tide_mem_pool_t* pool, size_t count, size_t elem_size) {
  size_t total;
  if (__builtin_mul_overflow(count, elem_size, &total)) return NULL;
  return tide_pool_alloc(pool, total ? total : 1);
}

void tide_pool_free(tide_mem_pool_t* pool) {
  tide_pool_chunk_t* c = pool->head;
  while (c) {
    tide_pool_chunk_t* next = c->next;
    free(c);
    c = next;
  }
  pool->head = NULL;
}
