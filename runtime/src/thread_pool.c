/*
 * The session's thread pool, serving TVMBackendParallelLaunch / TVMBackendParallelBarrier.
 *
 * A launch of n tasks publishes a job (generation g) and runs task 0 on the caller; workers and the
 * caller then claim the remaining task ids from a counter tagged with g, so a worker that wakes late
 * can never take a task of a later job. The caller returns once all n tasks have finished. Waiting
 * spins briefly (kernels come in quick succession) and then sleeps on a condition variable.
 *
 * A launch from inside a task (nested parallelism), or without a pool, runs serially on the calling
 * thread: num_task 0 becomes one task covering the whole range, an explicit count runs its tasks in
 * order. A barrier needs every task of the launch running at once, so it fails with an error when the
 * tasks run serially or outnumber the threads.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define TIDE_SPIN_ITERATIONS 20000
#define TIDE_MAX_THREADS 1024

typedef struct barrier_s {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int arrived;
  unsigned generation;
} barrier_t;

struct tide_thread_pool_s {
  int32_t num_threads; /* workers + the caller */
  int32_t num_workers_started;
  pthread_t* workers;
  tide_session_t* session;

  /* The current job. Written by the launching thread before it bumps `generation`. */
  _Atomic(tide_parallel_lambda_t) flambda;
  _Atomic(void*) cdata;
  atomic_int num_task;
  atomic_uint_least64_t next; /* generation << 32 | next task id */
  atomic_int remaining;       /* tasks not finished */
  atomic_int failed;          /* first nonzero task return */

  atomic_uint generation;
  atomic_int stop;

  pthread_mutex_t mu;
  pthread_cond_t work_cv; /* workers sleep here */
  pthread_cond_t done_cv; /* the caller sleeps here */
  atomic_int sleepers;
  atomic_int caller_sleeping;

  barrier_t barrier;
};

/* 1 while this thread runs a task (workers: always): a launch from here is nested. */
static _Thread_local int tls_in_task;

static void cpu_relax(void) {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

static int run_serial(tide_parallel_lambda_t flambda, void* cdata, int num_task) {
  int n = num_task > 0 ? num_task : 1;
  tide_parallel_env_t env = {NULL, n};
  int saved = tls_in_task;
  tls_in_task = 1;
  int rc = 0;
  for (int t = 0; t < n && rc == 0; ++t) rc = flambda(t, &env, cdata);
  tls_in_task = saved;
  return rc;
}

/* Claims and runs tasks of job `gen` until none are left. */
static void run_tasks(tide_thread_pool_t* pool, unsigned gen) {
  tide_parallel_lambda_t fn = atomic_load_explicit(&pool->flambda, memory_order_acquire);
  void* cdata = atomic_load_explicit(&pool->cdata, memory_order_acquire);
  int n = atomic_load_explicit(&pool->num_task, memory_order_acquire);
  tide_parallel_env_t env = {pool, n};
  for (;;) {
    uint64_t v = atomic_load_explicit(&pool->next, memory_order_acquire);
    if ((unsigned)(v >> 32) != gen || (int)(uint32_t)v >= n) return;
    if (!atomic_compare_exchange_weak_explicit(&pool->next, &v, v + 1, memory_order_acq_rel,
                                               memory_order_relaxed)) {
      continue;
    }
    int rc = fn((int)(uint32_t)v, &env, cdata);
    if (rc != 0) {
      int expected = 0;
      atomic_compare_exchange_strong(&pool->failed, &expected, rc);
    }
    if (atomic_fetch_sub(&pool->remaining, 1) == 1 && atomic_load(&pool->caller_sleeping)) {
      pthread_mutex_lock(&pool->mu);
      pthread_cond_broadcast(&pool->done_cv);
      pthread_mutex_unlock(&pool->mu);
    }
  }
}

static void* worker_main(void* arg) {
  tide_thread_pool_t* pool = arg;
  tide_set_current_session(pool->session);
  tls_in_task = 1;
  /* Generation 0 is "no job yet": a worker that starts after the first launch still runs it. */
  unsigned seen = 0;
  for (;;) {
    unsigned gen = atomic_load(&pool->generation);
    for (int spin = 0; gen == seen && spin < TIDE_SPIN_ITERATIONS && !atomic_load(&pool->stop); ++spin) {
      cpu_relax();
      gen = atomic_load(&pool->generation);
    }
    if (gen == seen) {
      pthread_mutex_lock(&pool->mu);
      atomic_fetch_add(&pool->sleepers, 1);
      while ((gen = atomic_load(&pool->generation)) == seen && !atomic_load(&pool->stop)) {
        pthread_cond_wait(&pool->work_cv, &pool->mu);
      }
      atomic_fetch_sub(&pool->sleepers, 1);
      pthread_mutex_unlock(&pool->mu);
    }
    if (atomic_load(&pool->stop)) return NULL;
    seen = gen;
    run_tasks(pool, gen);
  }
}

tide_status_t tide_thread_pool_create(int32_t num_threads, tide_session_t* session, tide_thread_pool_t** out_pool) {
  *out_pool = NULL;
  if (num_threads < 0 || num_threads > TIDE_MAX_THREADS) {
    return tide_make_status(TIDE_STATUS_INVALID_ARGUMENT, "num_threads %d is outside 0..%d", num_threads,
                            TIDE_MAX_THREADS);
  }
  if (num_threads == 0) {
    cpu_set_t set;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    /* The CPUs this process may run on (a container or taskset can restrict the online ones). */
    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) {
      num_threads = CPU_COUNT(&set);
    } else {
      num_threads = online > 0 ? (int32_t)online : 1;
    }
    if (num_threads > TIDE_MAX_THREADS) num_threads = TIDE_MAX_THREADS;
  }
  tide_thread_pool_t* pool = calloc(1, sizeof(*pool));
  if (!pool) return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory creating the thread pool");
  pool->num_threads = num_threads;
  pool->session = session;
  pthread_mutex_init(&pool->mu, NULL);
  pthread_cond_init(&pool->work_cv, NULL);
  pthread_cond_init(&pool->done_cv, NULL);
  pthread_mutex_init(&pool->barrier.mu, NULL);
  pthread_cond_init(&pool->barrier.cv, NULL);
  if (num_threads > 1) {
    pool->workers = calloc((size_t)num_threads - 1, sizeof(pthread_t));
    if (!pool->workers) {
      tide_thread_pool_destroy(pool);
      return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory creating the thread pool");
    }
    for (int32_t i = 0; i < num_threads - 1; ++i) {
      int rc = pthread_create(&pool->workers[i], NULL, worker_main, pool);
      if (rc != 0) {
        tide_thread_pool_destroy(pool);
        return tide_make_status(TIDE_STATUS_RESOURCE_EXHAUSTED,
                                "could not start worker thread %d of %d: %s", i + 1, num_threads - 1,
                                strerror(rc));
      }
      pool->num_workers_started = i + 1;
    }
  }
  *out_pool = pool;
  return NULL;
}

void tide_thread_pool_destroy(tide_thread_pool_t* pool) {
  if (!pool) return;
  pthread_mutex_lock(&pool->mu);
  atomic_store(&pool->stop, 1);
  pthread_cond_broadcast(&pool->work_cv);
  pthread_mutex_unlock(&pool->mu);
  for (int32_t i = 0; i < pool->num_workers_started; ++i) pthread_join(pool->workers[i], NULL);
  free(pool->workers);
  pthread_cond_destroy(&pool->barrier.cv);
  pthread_mutex_destroy(&pool->barrier.mu);
  pthread_cond_destroy(&pool->done_cv);
  pthread_cond_destroy(&pool->work_cv);
  pthread_mutex_destroy(&pool->mu);
  free(pool);
}

int32_t tide_thread_pool_size(const tide_thread_pool_t* pool) { return pool ? pool->num_threads : 1; }

int tide_thread_pool_launch(tide_thread_pool_t* pool, tide_parallel_lambda_t flambda, void* cdata, int num_task) {
  if (num_task < 0) {
    tide_report_error(tide_current_session(), "TVMBackendParallelLaunch: negative task count %d", num_task);
    return -1;
  }
  if (!pool || pool->num_threads == 1 || tls_in_task) return run_serial(flambda, cdata, num_task);
  int n = num_task > 0 ? num_task : pool->num_threads;

  unsigned gen = atomic_load(&pool->generation) + 1u;
  atomic_store_explicit(&pool->flambda, flambda, memory_order_relaxed);
  atomic_store_explicit(&pool->cdata, cdata, memory_order_relaxed);
  atomic_store_explicit(&pool->num_task, n, memory_order_relaxed);
  atomic_store_explicit(&pool->remaining, n, memory_order_relaxed);
  atomic_store_explicit(&pool->failed, 0, memory_order_relaxed);
  /* Task 0 is the caller's: workers start claiming at 1. */
  atomic_store_explicit(&pool->next, ((uint64_t)gen << 32) | 1u, memory_order_release);
  atomic_store(&pool->generation, gen);
  if (atomic_load(&pool->sleepers) > 0) {
    pthread_mutex_lock(&pool->mu);
    pthread_cond_broadcast(&pool->work_cv);
    pthread_mutex_unlock(&pool->mu);
  }

  tls_in_task = 1;
  tide_parallel_env_t env = {pool, n};
  int rc = flambda(0, &env, cdata);
  if (rc != 0) {
    int expected = 0;
    atomic_compare_exchange_strong(&pool->failed, &expected, rc);
  }
  atomic_fetch_sub(&pool->remaining, 1);
  run_tasks(pool, gen);
  tls_in_task = 0;

  for (int spin = 0; atomic_load(&pool->remaining) > 0 && spin < TIDE_SPIN_ITERATIONS; ++spin) cpu_relax();
  if (atomic_load(&pool->remaining) > 0) {
    pthread_mutex_lock(&pool->mu);
    atomic_store(&pool->caller_sleeping, 1);
    while (atomic_load(&pool->remaining) > 0) pthread_cond_wait(&pool->done_cv, &pool->mu);
    atomic_store(&pool->caller_sleeping, 0);
    pthread_mutex_unlock(&pool->mu);
  }
  int failed = atomic_load(&pool->failed);
  if (failed != 0) {
    tide_report_error(tide_current_session(), "a parallel task failed (return code %d) without a message", failed);
  }
  return failed;
}

int tide_thread_pool_barrier(int task_id, tide_parallel_env_t* penv) {
  tide_thread_pool_t* pool = penv ? penv->sync_handle : NULL;
  int n = penv ? penv->num_task : 0;
  if (n <= 1) return 0;
  if (!pool) {
    tide_report_error(tide_current_session(),
                      "TVMBackendParallelBarrier (task %d of %d): the tasks run serially (nested "
                      "parallel region or a one-thread session), so a barrier would never complete",
                      task_id, n);
    return -1;
  }
  if (n > pool->num_threads) {
    tide_report_error(tide_current_session(),
                      "TVMBackendParallelBarrier (task %d): %d tasks cannot all run at once on %d threads",
                      task_id, n, pool->num_threads);
    return -1;
  }
  barrier_t* b = &pool->barrier;
  pthread_mutex_lock(&b->mu);
  unsigned gen = b->generation;
  if (++b->arrived == n) {
    b->arrived = 0;
    b->generation++;
    pthread_cond_broadcast(&b->cv);
  } else {
    while (gen == b->generation) pthread_cond_wait(&b->cv, &b->mu);
  }
  pthread_mutex_unlock(&b->mu);
  return 0;
}
