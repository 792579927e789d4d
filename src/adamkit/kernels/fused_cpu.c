/* adamkit's fused CPU step: every algorithm of the Adam family in one pass over memory.
 *
 * One call updates every tensor of a bucket (a param group's tensors of one dtype): each
 * element streams through the update once: read p, g and the state tensors; write p and the
 * states. The step-dependent scalars of each tensor (bias corrections, RAdam's rectification,
 * NAdam's momentum schedule) come computed, with the element loop (`kind`) they select: Python
 * computes them once for the C and the Triton kernels (adamkit/optim/_scalars.py), after
 * adamkit_advance has incremented the step counters. Nothing is allocated per element or per
 * tensor, so the step's extra memory is a few pointers per tensor.
 * Work is split into fixed-size chunks that threads claim one at a time, so 2000 tiny tensors
 * and one huge tensor both keep every thread busy. Worker threads are woken for a call only
 * when it has enough work to pay for them (see run_chunks), and never spin: a busy machine or
 * a tiny model gets a plain single-threaded loop.
 *
 * The caller (adamkit/optim/_fused.py) hands over addresses it has just read from the tensors,
 * with their sizes and element types checked, at every call; nothing here is cached between
 * calls, and no tensors may overlap (the loops use restrict pointers). One entry takes every
 * bucket (adamkit_step): the addresses come as a table with a row per role, so the number of
 * state tensors a parameter has (2 to MAX_STATES, in its algorithm's order) is an argument,
 * not a signature; hyperparameters and sizes come in two arrays whose slots _abi.py names.
 *
 * The element math runs in the element type (float for fp32, double for fp64), with the
 * operation order of torch's fused Adam CPU kernel (exp_avg by lerp; denom = sqrt(v) /
 * sqrt(bc2) + eps). Compiled at first use by adamkit/kernels/_build.py and cached; see that
 * file.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The numbers shared with Python and Triton come from adamkit/kernels/_abi.py, and the element
 * loops' kinds (AK_K_<KIND>) from the algorithm table (adamkit/optim/_algorithms.py), as -D
 * flags (AK_<name>); the build adds them. */
#ifndef AK_MAX_STATES
#error "build fused_cpu.c with the -D flags of adamkit.kernels._abi.c_defines()"
#endif
enum { MAXIMIZE = AK_MAXIMIZE, DECOUPLED = AK_DECOUPLED, DECAY_IN_BODY = AK_DECAY_IN_BODY,
       CAUTIOUS = AK_CAUTIOUS };
#define CHUNK AK_CHUNK /* elements a thread claims at a time */
/* The slots of adamkit_step's hyper[] and shape[], of a tensor's step-scalar row, the element
 * types, the most states a tensor has, and the bits of a state's codec word (_abi.py). */
enum { H_LR = AK_H_LR, H_BETA1 = AK_H_BETA1, H_BETA2 = AK_H_BETA2, H_EPS = AK_H_EPS, H_WD = AK_H_WD };
enum { S_FLAGS = AK_S_FLAGS, S_COUNT = AK_S_COUNT, S_STATES = AK_S_STATES,
       S_SKIP = AK_S_SKIP, S_THREADS = AK_S_THREADS, S_PARAM_FMT = AK_S_PARAM_FMT,
       S_SCALES = AK_S_SCALES, S_ELEMENT = AK_S_ELEMENT };
enum { R_A = AK_R_A, R_B = AK_R_B, R_C = AK_R_C, R_D = AK_R_D, R_KIND = AK_R_KIND, R_T = AK_R_T };
#define ROW AK_ROW
enum { E_F32 = AK_E_F32, E_F64 = AK_E_F64, E_WIDE = AK_E_WIDE, E_BF16 = AK_E_BF16,
       E_F16 = AK_E_F16 };
enum { AF_RHO = AK_AF_RHO, AF_DECAY = AK_AF_DECAY, AF_EPS1 = AK_AF_EPS1, AF_EPS2 = AK_AF_EPS2,
       AF_D = AK_AF_D, AF_SHRINK = AK_AF_SHRINK, AF_SIGN = AK_AF_SIGN };
enum { AF_BATCH = AK_AF_BATCH, AF_ROWS = AK_AF_ROWS, AF_COLS = AK_AF_COLS,
       AF_ELEMENT = AK_AF_ELEMENT, AF_THREADS = AK_AF_THREADS };
#define MAX_STATES AK_MAX_STATES
enum { CODEC_UNSIGNED = AK_CODEC_UNSIGNED, CODEC_HIGH = AK_CODEC_HIGH, CODEC_STREAM = AK_CODEC_STREAM };

typedef struct {
    double a, b, c, d; /* the kind's step scalars (adamkit/optim/_scalars.py) */
    double t;       /* the step count, after this step's increment */
    int kind;       /* which element loop: AK_K_ADAM, AK_K_AMSGRAD, AK_K_RADAM, ... */
} scalars_t;

static scalars_t scalars_of(const double *row) {
    return (scalars_t){row[R_A], row[R_B], row[R_C], row[R_D], row[R_T], (int)row[R_KIND]};
}

/* 0-d state counters (the step, NAdam's mu_product) of one dtype: each becomes itself plus one
 * (factors NULL) or times factors[k], rounded in its own dtype as torch's `step += 1` and
 * `mu_product *= mu` are; its new value goes to out[k]. One call where torch._foreach_add_
 * over 2000 CPU scalars takes milliseconds. */
void adamkit_advance(int64_t count, void **values, int f64, const double *factors, double *out) {
    for (int64_t k = 0; k < count; k++) {
        if (f64) {
            double *x = values[k];
            *x = factors ? *x * factors[k] : *x + 1.0;
            out[k] = *x;
        } else {
            float *x = values[k];
            *x = factors ? *x * (float)factors[k] : *x + 1.0f;
            out[k] = (double)*x;
        }
    }
}

/* The tensor holding chunk j: the k with first[k] <= j < first[k+1]. */
static int64_t tensor_of(const int64_t *first, int64_t count, int64_t j) {
    int64_t lo = 0, hi = count;
    while (hi - lo > 1) {
        int64_t mid = (lo + hi) / 2;
        if (first[mid] <= j) lo = mid; else hi = mid;
    }
    return lo;
}

/* ------------------------------------------------------------------------------------------
 * Threads. A call's chunks are claimed one at a time from a shared counter by the calling
 * thread and by the workers of a small pool, started at the first call that has work for them
 * and then parked on a condition variable between calls (blocked, never spinning). The caller
 * waits (blocked) for chunks that workers are still running. A worker that wakes late finds
 * nothing left, so a busy machine costs at most the chunk a descheduled worker holds. A worker
 * that cannot be started, or cannot allocate its scratch, leaves its share to the others.
 *
 * Threads started for each call instead (as before) begin on the caller's core and leave it
 * only when the scheduler balances them: with 2 threads, 1M elements ran 1.14x faster than
 * with 1; parked workers already run on a core of their own.
 */
#define GRAIN (1 << 17) /* elements a thread must have to be worth waking (~0.1 ms of work) */
#define WORKER_STACK (256 << 10)
#define MAX_WORKERS 255

typedef void (*chunk_body)(const void *ctx, int64_t j, float *scratch);

typedef struct {
    atomic_llong next, done;
    atomic_int refs; /* the caller and each worker that joined; the last one frees the job */
    int64_t total;
    chunk_body body;
    const void *ctx;
    size_t scratch_floats;
    pthread_mutex_t lock;
    pthread_cond_t finished;
} job_t;

/* The workers, and the one job they may join (a second call made while a job is out, from
 * another thread, runs on its caller alone). */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    job_t *job;   /* the job open to workers, or NULL */
    int wanted;   /* how many more workers it takes */
    int started;  /* workers running in this process */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, 0, 0};
static pthread_once_t fork_handlers_once = PTHREAD_ONCE_INIT;

/* fork() copies only the calling thread: the child starts with no workers and a free pool. */
static void pool_before_fork(void) { pthread_mutex_lock(&pool.lock); }
static void pool_after_fork_parent(void) { pthread_mutex_unlock(&pool.lock); }
static void pool_after_fork_child(void) {
    pool.job = NULL;
    pool.wanted = 0;
    pool.started = 0;
    pthread_cond_init(&pool.wake, NULL);
    pthread_mutex_unlock(&pool.lock);
}
static void register_fork_handlers(void) {
    pthread_atfork(pool_before_fork, pool_after_fork_parent, pool_after_fork_child);
}

static void release(job_t *job) {
    if (atomic_fetch_sub(&job->refs, 1) == 1) {
        pthread_mutex_destroy(&job->lock);
        pthread_cond_destroy(&job->finished);
        free(job);
    }
}

/* Run chunks until none is left. job->ctx is only read for a claimed chunk, and the caller
 * does not return before every claimed chunk is done, so the context outlives every use. */
static void claim_chunks(job_t *job, float *scratch) {
    for (;;) {
        const int64_t j = atomic_fetch_add(&job->next, 1);
        if (j >= job->total) return;
        job->body(job->ctx, j, scratch);
        if (atomic_fetch_add(&job->done, 1) + 1 == job->total) {
            pthread_mutex_lock(&job->lock);
            pthread_cond_signal(&job->finished);
            pthread_mutex_unlock(&job->lock);
        }
    }
}

static void *worker(void *arg) {
    (void)arg;
    float *scratch = NULL;
    size_t scratch_floats = 0;
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        while (pool.job == NULL || pool.wanted == 0) pthread_cond_wait(&pool.wake, &pool.lock);
        job_t *job = pool.job;
        pool.wanted--;
        atomic_fetch_add(&job->refs, 1); /* under the pool's lock: the job is still open */
        pthread_mutex_unlock(&pool.lock);
        if (job->scratch_floats > scratch_floats) {
            free(scratch);
            scratch = malloc(job->scratch_floats * sizeof(float));
            scratch_floats = scratch ? job->scratch_floats : 0;
        }
        if (scratch || !job->scratch_floats) claim_chunks(job, scratch);
        release(job);
        if (scratch_floats > AK_SCRATCH_FLOATS) { /* (a larger one, Adafactor's: not kept) */
            free(scratch);
            scratch = NULL;
            scratch_floats = 0;
        }
        pthread_mutex_lock(&pool.lock);
    }
    return NULL;
}

/* Open `job` to up to `helpers` workers, starting workers the pool lacks. Returns 0 if the
 * pool is taken by another call (the caller then runs the job alone). */
static int open_job(job_t *job, int helpers) {
    pthread_once(&fork_handlers_once, register_fork_handlers);
    pthread_mutex_lock(&pool.lock);
    if (pool.job != NULL) {
        pthread_mutex_unlock(&pool.lock);
        return 0;
    }
    if (helpers > MAX_WORKERS) helpers = MAX_WORKERS;
    if (pool.started < helpers) {
        pthread_attr_t attr;
        int have_attr = pthread_attr_init(&attr) == 0;
        if (have_attr) {
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            pthread_attr_setstacksize(&attr, WORKER_STACK);
        }
        while (pool.started < helpers) {
            pthread_t thread;
            if (pthread_create(&thread, have_attr ? &attr : NULL, worker, NULL) != 0) break;
            if (!have_attr) pthread_detach(thread);
            pool.started++;
        }
        if (have_attr) pthread_attr_destroy(&attr);
    }
    pool.job = job;
    pool.wanted = helpers < pool.started ? helpers : pool.started;
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    return 1;
}

static void close_job(void) {
    pthread_mutex_lock(&pool.lock);
    pool.job = NULL;
    pool.wanted = 0;
    pthread_mutex_unlock(&pool.lock);
}

/* body(ctx, j, scratch) for every j < total, on up to `threads` threads (the caller included):
 * one per GRAIN elements of work. `scratch` is the caller's (scratch_floats floats, allocated
 * by the caller before it changed anything); each worker keeps its own. */
static void run_chunks(int64_t total, int64_t elements, int threads, chunk_body body,
                       const void *ctx, float *scratch, size_t scratch_floats) {
    int64_t useful = elements / GRAIN;
    if (useful < threads) threads = (int)(useful > 1 ? useful : 1);
    if (total < threads) threads = (int)(total > 1 ? total : 1);
    job_t *job = threads > 1 ? malloc(sizeof(job_t)) : NULL;
    if (job) {
        atomic_init(&job->next, 0);
        atomic_init(&job->done, 0);
        atomic_init(&job->refs, 1);
        job->total = total;
        job->body = body;
        job->ctx = ctx;
        job->scratch_floats = scratch_floats;
        pthread_mutex_init(&job->lock, NULL);
        pthread_cond_init(&job->finished, NULL);
        if (!open_job(job, threads - 1)) {
            release(job);
            job = NULL;
        }
    }
    if (!job) {
        for (int64_t j = 0; j < total; j++) body(ctx, j, scratch);
        return;
    }
    claim_chunks(job, scratch);
    close_job(); /* no chunk is left to claim: workers that wake now would find nothing */
    pthread_mutex_lock(&job->lock);
    while (atomic_load(&job->done) < total) pthread_cond_wait(&job->finished, &job->lock);
    pthread_mutex_unlock(&job->lock);
    release(job);
}

/* Whether any two of n byte ranges [start, start + size) overlap where at least one of the two
 * is written (read-only ranges may share memory: two parameters with one gradient). Returns the
 * index of one range of such a pair, or -1. Empty ranges overlap nothing. */
typedef struct {
    uint64_t start, end;
    int64_t index;
    int written;
} range_t;

static int by_start(const void *x, const void *y) {
    const range_t *a = x, *b = y;
    return a->start < b->start ? -1 : a->start > b->start;
}

int64_t adamkit_overlap(int64_t n, const uint64_t *starts, const uint64_t *sizes,
                        const uint8_t *written) {
    range_t *ranges = malloc(sizeof(range_t) * (size_t)(n ? n : 1));
    if (!ranges) return -2;
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++)
        if (sizes[i]) ranges[m++] = (range_t){starts[i], starts[i] + sizes[i], i, written[i]};
    qsort(ranges, (size_t)m, sizeof(range_t), by_start);
    /* Sweep in start order, keeping the furthest end so far of written and of read ranges. */
    uint64_t written_end = 0, read_end = 0;
    int64_t found = -1;
    for (int64_t i = 0; i < m && found < 0; i++) {
        const range_t *r = &ranges[i];
        if (r->start < written_end || (r->written && r->start < read_end)) found = r->index;
        if (r->written) written_end = r->end > written_end ? r->end : written_end;
        else read_end = r->end > read_end ? r->end : read_end;
    }
    free(ranges);
    return found;
}

/* Element loops: one per (update kind, weight decay mode, dtype), each a straight line the
 * compiler vectorises. `decay` is 0 (none), 1 (coupled L2: g += wd p) or 2 (decoupled:
 * p *= 1 - lr wd); `sign` is -1 for maximize (exact: -1 * g == -g). The maxima are written as
 * `a > b ? a : b` so a NaN second moment propagates as in torch. The step scalars a, b, c are
 * the kind's (adamkit/optim/_scalars.py), and B_OP is how b = sqrt(1 - beta2^t) is applied: `/` in the
 * exact loops, `*` by its inverse in the low-precision ones. HEAD takes the gradient's sign and
 * the weight decay; each BODY its moments and the step. */
/* The head's weight decay: 0 (none, or the body's own), 1 (coupled) or 2 (decoupled). */
static inline int decay_mode(int64_t flags, double wd) {
    return wd == 0 || flags & DECAY_IN_BODY ? 0 : (flags & DECOUPLED ? 2 : 1);
}
#define HEAD(T, DECAY)                                                                          \
    T grad = sign * g[i], param = p[i];                                                         \
    if (DECAY == 1) grad += wd * param;                                                         \
    if (DECAY == 2) param *= shrink;
/* A body's step: the parameter takes param - X (the options' first pass writes X instead). */
#define STORE(X) p[i] = param - (X);
/* The first moment as the EMA of the gradient (every body but ADOPT's starts with it). */
#define MOMENTUM(T)                                                                             \
    T mi = m[i] + one_minus_beta1 * (grad - m[i]);                                              \
    m[i] = mi;
#define SECOND(T) T vi = beta2 * v[i] + one_minus_beta2 * grad * grad; v[i] = vi;

#define BODY_ADAM(T, SQRT, FABS, B_OP)                                                          \
    MOMENTUM(T) SECOND(T) STORE(a * mi / (SQRT(vi) B_OP b + eps))
#define BODY_AMSGRAD(T, SQRT, FABS, B_OP)                                                             \
    MOMENTUM(T) SECOND(T) T old = vmax[i], top = old > vi ? old : vi;                           \
    vmax[i] = top;                                                                              \
    STORE(a * mi / (SQRT(top) B_OP b + eps))
#define BODY_RADAM(T, SQRT, FABS, B_OP)                                                         \
    MOMENTUM(T) SECOND(T) STORE(a * mi / (SQRT(vi) + eps))
#define BODY_RADAM_PLAIN(T, SQRT, FABS, B_OP) MOMENTUM(T) SECOND(T) STORE(a * mi)
/* One division where torch's two addcdiv_ take two: NAdam would otherwise be compute-bound. */
#define BODY_NADAM(T, SQRT, FABS, B_OP)                                                               \
    MOMENTUM(T) SECOND(T) T denom = SQRT(vi) B_OP b + eps;                                       \
    STORE((a * grad + c * mi) / denom)
/* AdEMAMix: state 2 is the slow EMA (d = 1 - beta3_t); p -= (a m + c slow) / (sqrt(v) / b + eps). */
#define BODY_ADEMAMIX(T, SQRT, FABS, B_OP)                                                      \
    MOMENTUM(T) SECOND(T) T slow = vmax[i] + d * (grad - vmax[i]);                              \
    vmax[i] = slow;                                                                             \
    STORE((a * mi + c * slow) / (SQRT(vi) B_OP b + eps))
/* ADOPT: the gradient normalised by the previous second moment, clipped to +-c, then the
 * momentum, a step of a = lr, and only then the second moment; max and clip written so a NaN
 * propagates, as torch's clamp does. Its first step (ADOPT_FIRST) only adds g^2 to v. */
#define BODY_ADOPT(T, SQRT, FABS, B_OP)                                                         \
    T root = SQRT(v[i]), denom = root < eps ? eps : root, normed = grad / denom;                \
    normed = normed < -c ? -c : (normed > c ? c : normed);                                      \
    T mi = m[i] + one_minus_beta1 * (normed - m[i]);                                            \
    m[i] = mi;                                                                                  \
    STORE(a * mi)                                                                               \
    SECOND(T)
#define BODY_ADOPT_FIRST(T, SQRT, FABS, B_OP) v[i] = v[i] + grad * grad; STORE((T)0)
/* Schedule-free AdamW: the parameter is y and state 0 is z. u = g / (sqrt(v) / b + eps) + wd y
 * (its own weight decay, at y: DECAY_IN_BODY), then y <- lerp(y, z, d) + a u and z <- z - c u,
 * with d = c_{t+1}, the averaging weight, a = lr (beta1 (1 - d) - 1), c = lr,
 * b = sqrt(1 - beta2^t).
 * The lerp is torch's, in its two halves. */
#define BODY_SCHEDULEFREE(T, SQRT, FABS, B_OP)                                                  \
    SECOND(T) T u = grad / (SQRT(vi) B_OP b + eps) + wd * param, zi = m[i];                     \
    T y = d < (T)0.5 ? param + d * (zi - param) : zi - (zi - param) * ((T)1 - d);               \
    p[i] = y + a * u;                                                                           \
    m[i] = zi - c * u;
#define BODY_ADAMAX(T, SQRT, FABS, B_OP)                                                              \
    MOMENTUM(T) T u = beta2 * v[i], norm = FABS(grad) + eps;                                    \
    u = u > norm ? u : norm;                                                                    \
    v[i] = u;                                                                                   \
    STORE(a * mi / u)

#define DEFINE_LOOP(SUFFIX, T, SQRT, FABS, B_OP, KIND, DECAY)                                         \
    static void loop_##SUFFIX##_##KIND##_##DECAY(                                               \
        T sign, T shrink, T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T wd, T a, T b, \
        T c, T d, int64_t n, T *restrict p, const T *restrict g, T *const *states) {            \
        T *restrict m = states[0], *restrict v = states[1], *restrict vmax = states[2];         \
        (void)shrink, (void)wd, (void)b, (void)c, (void)d, (void)vmax, (void)one_minus_beta2;   \
        (void)eps, (void)m, (void)one_minus_beta1, (void)a, (void)beta2;                        \
        for (int64_t i = 0; i < n; i++) {                                                       \
            HEAD(T, DECAY)                                                                      \
            BODY_##KIND(T, SQRT, FABS, B_OP)                                                          \
        }                                                                                       \
    }
/* Every element loop, by kind: a kind of the algorithm table (AK_K_<KIND>), its BODY_<KIND>, and
 * how many state tensors it reads (the third: AMSGrad's maximum, AdEMAMix's slow EMA). A new kind
 * is one BODY macro and one entry here. */
#define FOR_EACH_KIND(X)                                                                        \
    X(ADAM, 2) X(AMSGRAD, 3) X(RADAM, 2) X(RADAM_PLAIN, 2) X(NADAM, 2) X(ADAMAX, 2)            \
    X(ADEMAMIX, 3) X(ADOPT, 2) X(ADOPT_FIRST, 2) X(SCHEDULEFREE, 2)

/* The states each element loop reads; 0 for a kind of the table with no loop here. */
#define STATES_OF(KIND, STATES) [AK_K_##KIND] = STATES,
static const int8_t states_of_kind[AK_KINDS] = {FOR_EACH_KIND(STATES_OF)};

/* The arguments every element loop takes, as dispatch_<SUFFIX> names them. */
#define LOOP_ARGS(T)                                                                            \
    (sign, shrink, one_minus_beta1, (T)beta2, one_minus_beta2, (T)eps, (T)wd, (T)s->a, (T)s->b, \
     (T)s->c, (T)s->d, n, p, g, states)

#define DEFINE_LOOPS(SUFFIX, T, SQRT, FABS, B_OP)                                                \
    DEFINE_LOOPS_OF(SUFFIX, T, SQRT, FABS, B_OP)                                                \
                                                                                                \
    /* Scalars derived from the hyperparameters are computed in double and rounded once, as  \
     * torch passes Python floats (1 - beta2 = 0.001 exactly, not 1 - (float)0.999). */       \
    static void dispatch_##SUFFIX(int kind, int flags, double lr, double beta1, double beta2,  \
                                  double eps, double wd, const scalars_t *s, int64_t n, T *p,   \
                                  const T *g, T *const *states) {                               \
        const int decay = decay_mode(flags, wd);                                                \
        const T sign = flags & MAXIMIZE ? (T)-1 : (T)1;                                         \
        const T shrink = (T)(1.0 - lr * wd), one_minus_beta1 = (T)(1.0 - beta1);               \
        const T one_minus_beta2 = (T)(1.0 - beta2);                                             \
        typedef void (*loop_t)(T, T, T, T, T, T, T, T, T, T, T, int64_t, T *restrict,           \
                               const T *restrict, T *const *);                                  \
        static const loop_t loops[AK_KINDS][3] = {FOR_EACH_KIND(LOOP_ENTRY_##SUFFIX)};          \
        loops[kind][decay] LOOP_ARGS(T);                                                        \
    }
#define DEFINE_LOOPS_OF(SUFFIX, T, SQRT, FABS, B_OP) FOR_EACH_KIND(DEFINE_KIND_##SUFFIX)
#define DEFINE_KIND_OF(SUFFIX, T, SQRT, FABS, B_OP, KIND)                                         \
    DEFINE_LOOP(SUFFIX, T, SQRT, FABS, B_OP, KIND, 0)                                           \
    DEFINE_LOOP(SUFFIX, T, SQRT, FABS, B_OP, KIND, 1)                                           \
    DEFINE_LOOP(SUFFIX, T, SQRT, FABS, B_OP, KIND, 2)
#define LOOP_ENTRY(SUFFIX, KIND)                                                                \
    [AK_K_##KIND] = {loop_##SUFFIX##_##KIND##_0, loop_##SUFFIX##_##KIND##_1,                   \
                     loop_##SUFFIX##_##KIND##_2},
/* FOR_EACH_KIND passes the kind alone: these bind the element type of each set of loops. */
#define DEFINE_KIND_f32(KIND, STATES) DEFINE_KIND_OF(f32, float, sqrtf, fabsf, /, KIND)
#define DEFINE_KIND_f64(KIND, STATES) DEFINE_KIND_OF(f64, double, sqrt, fabs, /, KIND)
#define DEFINE_KIND_wide(KIND, STATES) DEFINE_KIND_OF(wide, float, sqrtf, fabsf, *, KIND)
#define LOOP_ENTRY_f32(KIND, STATES) LOOP_ENTRY(f32, KIND)
#define LOOP_ENTRY_f64(KIND, STATES) LOOP_ENTRY(f64, KIND)
#define LOOP_ENTRY_wide(KIND, STATES) LOOP_ENTRY(wide, KIND)

/* One call's arguments, shared by the threads that run its chunks. The state tensors are a
 * table: states[q * count + k] is tensor k's state q (q < nstates <= MAX_STATES), in the order
 * of the algorithm's row (exp_avg, its second state, AMSGrad's maximum). */
typedef struct {
    int flags;
    double lr, beta1, beta2, eps, wd;
    int64_t count;
    const int64_t *numels, *first;
    const double *scalars; /* ROW per tensor: a, b, c, kind, t (R_*) */
    void **params, **grads, **states;
    int nstates;
    /* low-precision storage only (element type AK_E_WIDE) */
    int param_fmt;
    const uint8_t *state_fmts;
    void **scales; /* scales[q * count + k]: the 8-bit scales of state q of tensor k, or NULL */
    const int32_t *codecs; /* per state q: CODEC_UNSIGNED, CODEC_HIGH, stream << CODEC_STREAM */
    const uint32_t *salts;
} call_t;

/* Chunk j of call c: its tensor k, the chunk's first element in it, and its element count n;
 * and (CHUNK_STATES) the chunk's view of each state tensor of k. */
#define CHUNK_OF(c, j)                                                                          \
    const int64_t k = tensor_of((c)->first, (c)->count, j);                                    \
    const int64_t start = (j - (c)->first[k]) * CHUNK;                                         \
    const int64_t n = (c)->numels[k] - start < CHUNK ? (c)->numels[k] - start : CHUNK;
#define CHUNK_STATES(T, c)                                                                      \
    T *states[MAX_STATES] = {NULL};                                                             \
    for (int q = 0; q < (c)->nstates; q++) states[q] = (T *)(c)->states[q * (c)->count + k] + start;

/* The exact loops (torch's operation order) and the chunk body for one element type. */
#define DEFINE_STEP(SUFFIX, T, SQRT, FABS)                                                       \
    DEFINE_LOOPS(SUFFIX, T, SQRT, FABS, /)                                                      \
    static void chunk_##SUFFIX(const void *context, int64_t j, float *scratch) {               \
        const call_t *c = context;                                                              \
        (void)scratch;                                                                          \
        CHUNK_OF(c, j)                                                                          \
        CHUNK_STATES(T, c)                                                                      \
        const scalars_t sk = scalars_of(c->scalars + ROW * k);                                  \
        dispatch_##SUFFIX(sk.kind, c->flags, c->lr, c->beta1, c->beta2, c->eps, c->wd, &sk, n,  \
                          (T *)c->params[k] + start, (const T *)c->grads[k] + start, states);   \
    }

DEFINE_STEP(f32, float, sqrtf, fabsf)
DEFINE_STEP(f64, double, sqrt, fabs)

/* ------------------------------------------------------------------------------------------
 * cautious masking and update clipping (adamkit/optim/_modifiers.py) on full-precision
 * tensors, in two passes. Pass 1 runs a kind's body with its step X (the parameter would take
 * param - X) written to upd[] instead, and per chunk two sums: how many elements descend
 * (X * g > 0, g the gradient after the sign and the coupled decay) and
 * sum(g^2 / max(v, floor)) (v the new second moment, floor = (1 - beta2^t) eps^2: Python
 * multiplies the mean by 1 - beta2^t, as the eager path, so v is never scaled up to overflow).
 * Python turns each tensor's
 * sums into its scale and shrink; pass 2 writes p = p * shrink - scale * [X g > 0] X (the
 * mask only with cautious). The decoupled decay's shrink waits for pass 2 (pass 1 runs with no
 * decay for it). Every kind but the schedule-free one, whose body moves p itself. */
#undef STORE
#define STORE(X) upd[i] = (X);
#define LANES 16 /* independent partial sums: a vector loop without reassociation */
/* One element of pass 1: the body, then its share of the sums (grad is HEAD's: after the sign
 * and the coupled decay; v[i] the new second moment). */
#define OPTION_ELEMENT(T, SQRT, FABS, KIND, DECAY, KEPT, RATIO)                                 \
    HEAD(T, DECAY)                                                                              \
    BODY_##KIND(T, SQRT, FABS, /)                                                               \
    {                                                                                           \
        const T x = upd[i], vh = v[i];                                                          \
        KEPT += x * grad > 0 ? (T)1 : (T)0;                                                     \
        RATIO += grad * grad / (vh > floor ? vh : floor);                                       \
    }
#define DEFINE_OPTION_LOOP(SUFFIX, T, SQRT, FABS, KIND, DECAY)                                  \
    static void options_##SUFFIX##_##KIND##_##DECAY(                                            \
        T sign, T shrink, T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T wd, T a, T b, \
        T c, T d, int64_t n, T *restrict p, const T *restrict g, T *const *states,              \
        T *restrict upd, T floor, double *sums) {                                               \
        T *restrict m = states[0], *restrict v = states[1], *restrict vmax = states[2];         \
        (void)shrink, (void)wd, (void)b, (void)c, (void)d, (void)vmax, (void)one_minus_beta2;   \
        (void)eps, (void)m, (void)one_minus_beta1, (void)a, (void)beta2;                        \
        T kept[LANES] = {0}, ratio[LANES] = {0};                                                \
        int64_t start = 0;                                                                      \
        for (; start + LANES <= n; start += LANES)                                              \
            for (int l = 0; l < LANES; l++) {                                                   \
                const int64_t i = start + l;                                                    \
                OPTION_ELEMENT(T, SQRT, FABS, KIND, DECAY, kept[l], ratio[l])                   \
            }                                                                                   \
        T kept_tail = 0, ratio_tail = 0;                                                        \
        for (int64_t i = start; i < n; i++) {                                                   \
            OPTION_ELEMENT(T, SQRT, FABS, KIND, DECAY, kept_tail, ratio_tail)                   \
        }                                                                                       \
        double kept_sum = (double)kept_tail, ratio_sum = (double)ratio_tail;                    \
        for (int l = 0; l < LANES; l++) kept_sum += (double)kept[l], ratio_sum += (double)ratio[l]; \
        sums[0] = kept_sum;                                                                     \
        sums[1] = ratio_sum;                                                                    \
    }
/* The kinds whose body ends in STORE (all but SCHEDULEFREE). */
#define FOR_EACH_STORED_KIND(X)                                                                 \
    X(ADAM, 2) X(AMSGRAD, 3) X(RADAM, 2) X(RADAM_PLAIN, 2) X(NADAM, 2) X(ADAMAX, 2)            \
    X(ADEMAMIX, 3) X(ADOPT, 2) X(ADOPT_FIRST, 2)
#define DEFINE_OPTIONS_f32(KIND, STATES)                                                        \
    DEFINE_OPTION_LOOP(f32, float, sqrtf, fabsf, KIND, 0)                                       \
    DEFINE_OPTION_LOOP(f32, float, sqrtf, fabsf, KIND, 1)
#define DEFINE_OPTIONS_f64(KIND, STATES)                                                        \
    DEFINE_OPTION_LOOP(f64, double, sqrt, fabs, KIND, 0)                                        \
    DEFINE_OPTION_LOOP(f64, double, sqrt, fabs, KIND, 1)
FOR_EACH_STORED_KIND(DEFINE_OPTIONS_f32)
FOR_EACH_STORED_KIND(DEFINE_OPTIONS_f64)
#undef STORE
#define STORE(X) p[i] = param - (X);

/* Pass 2: the tensor's shrink (decoupled decay, by the clipped lr) and scale, the mask. */
#define DEFINE_APPLY(SUFFIX, T, DECAY, CAUTIOUS)                                                \
    static void apply_##SUFFIX##_##DECAY##_##CAUTIOUS(T sign, T wd, T shrink, T scale,          \
                                                      int64_t n, T *restrict p,                 \
                                                      const T *restrict g,                      \
                                                      const T *restrict upd) {                  \
        (void)sign, (void)wd, (void)shrink;                                                     \
        for (int64_t i = 0; i < n; i++) {                                                       \
            T param = p[i], x = upd[i], grad = sign * g[i];                                     \
            if (DECAY == 1) grad += wd * param;                                                 \
            const T keep = CAUTIOUS ? (x * grad > 0 ? scale : (T)0) : scale;                    \
            if (DECAY == 2) param *= shrink;                                                    \
            p[i] = param - keep * x;                                                            \
        }                                                                                       \
    }
#define DEFINE_APPLIES(SUFFIX, T)                                                               \
    DEFINE_APPLY(SUFFIX, T, 0, 0) DEFINE_APPLY(SUFFIX, T, 1, 0) DEFINE_APPLY(SUFFIX, T, 2, 0)   \
    DEFINE_APPLY(SUFFIX, T, 0, 1) DEFINE_APPLY(SUFFIX, T, 1, 1) DEFINE_APPLY(SUFFIX, T, 2, 1)
DEFINE_APPLIES(f32, float)
DEFINE_APPLIES(f64, double)

/* One pass's arguments (call_t's, and the options'). */
typedef struct {
    call_t call;
    void **updates;       /* updates[k]: tensor k's X, numels[k] elements of the tensors' type */
    const double *extra;  /* pass 1: (1 - beta2^t) eps^2 per tensor; pass 2: shrink, scale */
    double *sums;         /* pass 1: two per chunk */
} options_t;

#define DEFINE_OPTION_CHUNKS(SUFFIX, T)                                                         \
    typedef void (*options_loop_##SUFFIX)(T, T, T, T, T, T, T, T, T, T, T, int64_t,             \
                                          T *restrict, const T *restrict, T *const *,           \
                                          T *restrict, T, double *);                            \
    static const options_loop_##SUFFIX options_loops_##SUFFIX[AK_KINDS][2] = {                 \
        FOR_EACH_STORED_KIND(OPTIONS_ENTRY_##SUFFIX)};                                          \
    static void options_chunk_##SUFFIX(const void *context, int64_t j, float *scratch) {        \
        const options_t *o = context;                                                           \
        const call_t *c = &o->call;                                                             \
        (void)scratch;                                                                          \
        CHUNK_OF(c, j)                                                                          \
        CHUNK_STATES(T, c)                                                                      \
        const scalars_t sk = scalars_of(c->scalars + ROW * k);                                  \
        const int decay = decay_mode(c->flags, c->wd) == 1; /* pass 2 shrinks (decoupled) */   \
        options_loops_##SUFFIX[sk.kind][decay](                                                 \
            c->flags & MAXIMIZE ? (T)-1 : (T)1, (T)(1.0 - c->lr * c->wd), (T)(1.0 - c->beta1),  \
            (T)c->beta2, (T)(1.0 - c->beta2), (T)c->eps, (T)c->wd, (T)sk.a, (T)sk.b, (T)sk.c,   \
            (T)sk.d, n, (T *)c->params[k] + start, (const T *)c->grads[k] + start, states,      \
            (T *)o->updates[k] + start, (T)o->extra[k], o->sums + 2 * j);                       \
    }                                                                                           \
    static void apply_chunk_##SUFFIX(const void *context, int64_t j, float *scratch) {          \
        const options_t *o = context;                                                           \
        const call_t *c = &o->call;                                                             \
        (void)scratch;                                                                          \
        CHUNK_OF(c, j)                                                                          \
        const int decay = decay_mode(c->flags, c->wd), cautious = (c->flags & CAUTIOUS) != 0;   \
        typedef void (*apply_t)(T, T, T, T, int64_t, T *restrict, const T *restrict,            \
                                const T *restrict);                                             \
        static const apply_t applies[3][2] = {                                                  \
            {apply_##SUFFIX##_0_0, apply_##SUFFIX##_0_1},                                       \
            {apply_##SUFFIX##_1_0, apply_##SUFFIX##_1_1},                                       \
            {apply_##SUFFIX##_2_0, apply_##SUFFIX##_2_1}};                                      \
        applies[decay][cautious](c->flags & MAXIMIZE ? (T)-1 : (T)1, (T)c->wd,                  \
                                 (T)o->extra[2 * k], (T)o->extra[2 * k + 1], n,                 \
                                 (T *)c->params[k] + start, (const T *)c->grads[k] + start,     \
                                 (const T *)o->updates[k] + start);                             \
    }
#define OPTIONS_ENTRY(SUFFIX, KIND) [AK_K_##KIND] = {options_##SUFFIX##_##KIND##_0, options_##SUFFIX##_##KIND##_1},
#define OPTIONS_ENTRY_f32(KIND, STATES) OPTIONS_ENTRY(f32, KIND)
#define OPTIONS_ENTRY_f64(KIND, STATES) OPTIONS_ENTRY(f64, KIND)
DEFINE_OPTION_CHUNKS(f32, float)
DEFINE_OPTION_CHUNKS(f64, double)

/* ------------------------------------------------------------------------------------------
 * Low-precision storage: bf16 parameters, bf16 or 8-bit moments (adamkit/optim/_precision.py
 * defines the formats and implements them with torch operations; this is the same, bit for
 * bit). A chunk is processed in tiles of TILE elements: each stored tensor of the tile is
 * decoded into an fp32 buffer on the stack (fp32 tensors are used in place), the fp32 element
 * loop above runs on the buffers, and the results are encoded back. Memory is read and written
 * once; the buffers stay in L1. 8-bit codes carry one scale per BLOCK elements.
 */
/* With AVX-512, gcc vectorises with 256-bit registers unless told otherwise. The codecs'
 * integer work (8-bit codes, bf16 rounding) runs faster with 512-bit ones on the Xeon measured
 * (BENCHMARKS.md, issue 19: bf16 parameters and state 9% faster, 8-bit state 18%); the exact
 * fp32 loops gained nothing, so only this section asks for them. The same operations on each
 * element: only the width changes. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__AVX512F__)
#define WIDE_VECTORS_BEGIN _Pragma("GCC push_options") _Pragma("GCC target(\"prefer-vector-width=512\")")
#define WIDE_VECTORS_END _Pragma("GCC pop_options")
#else
#define WIDE_VECTORS_BEGIN
#define WIDE_VECTORS_END
#endif
WIDE_VECTORS_BEGIN

/* The element loops of low-precision storage multiply by 1 / sqrt(1 - beta2^t) where the exact
 * loops divide by sqrt(1 - beta2^t): one division fewer per element, a rounding difference
 * (1 ulp of fp32) far below that of the storage. */
DEFINE_LOOPS(wide, float, sqrtf, fabsf, *)

#define BLOCK AK_Q8_BLOCK
#define TILE AK_TILE
#if AK_TILE % AK_Q8_BLOCK || AK_CHUNK % AK_TILE
#error "a tile is a multiple of the 8-bit block and divides a chunk"
#endif
enum { F_F32 = AK_F_F32, F_BF16 = AK_F_BF16, F_BF16_SR = AK_F_BF16_SR, F_Q8 = AK_F_Q8, F_F16 = AK_F_F16 };
#define SCRATCH_FLOATS AK_SCRATCH_FLOATS /* a tile each of p, g and every state */
/* Streams of rounding noise: each state's codec word names its stream and half (_algorithms.py's
 * noise()): one hash per element serves both moments (exp_avg takes its low 16 bits, the second
 * moment its high 16 bits); max_exp_avg_sq and the parameter have their own streams. */
enum { SALT_MOMENTS = AK_SALT_MOMENTS, SALT_MAX = AK_SALT_MAX, SALT_PARAM = AK_SALT_PARAM };
#define M_OFFSET AK_M_OFFSET /* float bits of 2**-15, the exp_avg code's smallest binade */
#define V_OFFSET AK_V_OFFSET /* 2**-31, the second moments' */
#define HALF_ULP AK_HALF_ULP /* half a unit of the 3-bit mantissa */
/* Codes of non-finite values, decoded as themselves whatever the block's scale: exp_avg's
 * magnitudes 125 (NaN) and 126 (infinity, signed by bit 7), the unsigned code's 253 and 254
 * (_precision.py explains why these: finite values never reach them, and 127 and 255 stay
 * finite for the checkpoints written before). */
#define M_NAN AK_M_NAN
#define M_INF AK_M_INF /* encode_q8 counts on each infinity's code following its NaN's */
#define V_NAN AK_V_NAN
#define V_INF AK_V_INF
#if AK_M_INF != AK_M_NAN + 1 || AK_V_INF != AK_V_NAN + 1
#error "each infinity's code must follow its NaN's"
#endif
#define INF_BITS AK_INF_BITS /* +inf; a magnitude's bits above it are a NaN's */
#define NAN_BITS AK_NAN_BITS /* the NaN every path decodes to */

static inline uint32_t bits_of(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}
static inline float float_of(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* lowbias32, a 32-bit integer hash: each tensor's rounding seed per step. */
static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= AK_HASH_MUL1;
    x ^= x >> 15;
    x *= AK_HASH_MUL2;
    return x ^ (x >> 16);
}
/* The noise of element i is noise_hash(i ^ seed). Its first half round is enough: for a fixed
 * element, i ^ seed is uniform over the steps because the seed is, and a bijection of a
 * uniform value is uniform, so every rounding is unbiased; the multiply only decorrelates
 * neighbouring elements within a step (it costs half of lowbias32). */
static inline uint32_t noise_hash(uint32_t x) {
    x ^= x >> 16;
    x *= AK_HASH_MUL1;
    return x ^ (x >> 15);
}
static uint32_t rounding_seed(double step, uint32_t salt, uint32_t stream) {
    /* A count outside int64 (NaN, inf; refused by the Python side) must not reach the
     * conversion, which would be undefined behaviour. */
    const int64_t count = step >= 0.0 && step < 9.2e18 ? (int64_t)step : 0;
    return mix32((uint32_t)count * AK_SEED_COUNT + salt * AK_SEED_SALT + stream * AK_SEED_STREAM);
}

static void load_bf16(float *restrict out, const uint16_t *restrict in, int n) {
    for (int i = 0; i < n; i++) out[i] = float_of((uint32_t)in[i] << 16);
}
/* Round to nearest, ties to even; NaN stays NaN. */
static inline uint16_t bf16_nearest(float x) {
    uint32_t u = bits_of(x);
    return (uint16_t)(x != x ? 0x7fc0u : (u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
/* Up with probability equal to the discarded fraction (`noise` is uniform on 0..0xffff):
 * unbiased. The sum cannot carry out of 32 bits: only NaNs have bits above 0xffff0000, and
 * they are replaced. */
static inline uint16_t bf16_stochastic(float x, uint32_t noise) {
    return (uint16_t)(x != x ? 0x7fc0u : (bits_of(x) + noise) >> 16);
}
static void store_bf16(uint16_t *restrict out, const float *restrict in, int n) {
    for (int i = 0; i < n; i++) out[i] = bf16_nearest(in[i]);
}
/* Element `first + i` takes the high (or low) 16 bits of noise_hash(index ^ seed). */
static void store_bf16_stochastic(uint16_t *restrict out, const float *restrict in, int n,
                                  uint32_t seed, int64_t first, int high) {
    const uint32_t base = (uint32_t)first, shift = high ? 16 : 0;
    for (int i = 0; i < n; i++)
        out[i] = bf16_stochastic(in[i], (noise_hash((base + (uint32_t)i) ^ seed) >> shift) & 0xffffu);
}
/* Both moments from one hash per element: exp_avg the low 16 bits, the second the high. */
static void store_moments_stochastic(uint16_t *restrict m_out, uint16_t *restrict v_out,
                                     const float *restrict m, const float *restrict v, int n,
                                     uint32_t seed, int64_t first) {
    const uint32_t base = (uint32_t)first;
    for (int i = 0; i < n; i++) {
        uint32_t r = noise_hash((base + (uint32_t)i) ^ seed);
        m_out[i] = bf16_stochastic(m[i], r & 0xffffu);
        v_out[i] = bf16_stochastic(v[i], r >> 16);
    }
}

/* bf16 state with stochastic rounding (the default of state_precision="bf16"), with fp32
 * parameters or stochastically rounded bf16 ones: one pass per element, each value decoded,
 * updated by the kind's body and rounded as it goes, where the general path below decodes a
 * tile, updates it and encodes it in three passes. Same operations, same bits (the tests hold
 * both paths and torch's operations equal); the body sees one-element arrays, which the
 * compiler keeps in registers. PARAM_SR: bf16 parameters and gradients, else fp32. */
/* Each block of PF_BLOCK elements first asks for the lines PF_AHEAD elements on (into L2; with
 * the intent to write but for the gradients), within the tensor only: one core alone does not
 * keep enough loads in flight for these streams. Measured in one process, alternating builds
 * (BENCHMARKS.md, issue 19): bf16 parameters and state 31% faster, 8-bit state 7.5%, bf16 state
 * 4%; the same in the exact fp32 loops made them 5% slower, and in the tile path did nothing. */
#define PF_BLOCK 256
#define PF_AHEAD 1024
static inline void prefetch_range(const void *base, int64_t from, int64_t to) {
    for (int64_t at = from & ~(int64_t)63; at < to; at += 64)
        __builtin_prefetch((const char *)base + at, 1, 2);
}
static inline void prefetch_read(const void *base, int64_t from, int64_t to) {
    for (int64_t at = from & ~(int64_t)63; at < to; at += 64)
        __builtin_prefetch((const char *)base + at, 0, 2);
}
/* COUNT elements from `block`. */
#define BF16_BLOCK(KIND, DECAY, PARAM_SR, COUNT)                                                \
    for (int64_t j = 0; j < COUNT; j++) {                                                      \
        const int64_t i = 0, e = block + j;                                                    \
        float p[1], g[1], m[1], v[1], vmax[1];                                                 \
        const uint32_t index = first + (uint32_t)e;                                            \
        p[0] = PARAM_SR ? float_of((uint32_t)p16[e] << 16) : p32[e];                           \
        g[0] = PARAM_SR ? float_of((uint32_t)g16[e] << 16) : g32[e];                           \
        m[0] = float_of((uint32_t)m16[e] << 16);                                               \
        v[0] = float_of((uint32_t)v16[e] << 16);                                               \
        vmax[0] = has_max ? float_of((uint32_t)x16[e] << 16) : 0.0f;                           \
        HEAD(float, DECAY)                                                                     \
        BODY_##KIND(float, sqrtf, fabsf, *)                                                    \
        const uint32_t r = noise_hash(index ^ seed);                                           \
        m16[e] = bf16_stochastic(m[0], r & 0xffffu);                                           \
        v16[e] = bf16_stochastic(v[0], r >> 16);                                               \
        if (has_max)                                                                           \
            x16[e] = bf16_stochastic(vmax[0], (noise_hash(index ^ seed_max) >> max_shift) & 0xffffu); \
        if (PARAM_SR) p16[e] = bf16_stochastic(p[0], noise_hash(index ^ seed_p) >> 16);        \
        else p32[e] = p[0];                                                                    \
    }

#define DEFINE_BF16_LOOP(KIND, DECAY, PARAM_SR)                                                 \
    static void bf16_##KIND##_##DECAY##_##PARAM_SR(                                            \
        float sign, float shrink, float one_minus_beta1, float beta2, float one_minus_beta2,   \
        float eps, float wd, float a, float b, float c, float d, int64_t n,                    \
        void *restrict params,                                                                 \
        const void *restrict grads, uint16_t *const *states, const uint32_t *seeds,          \
        uint32_t max_shift, uint32_t first) {                                                  \
        float *restrict p32 = params;                                                          \
        uint16_t *restrict p16 = params;                                                       \
        const float *restrict g32 = grads;                                                     \
        const uint16_t *restrict g16 = grads;                                                  \
        uint16_t *restrict m16 = states[0], *restrict v16 = states[1], *restrict x16 = states[2]; \
        const uint32_t seed = seeds[0], seed_max = seeds[2], seed_p = seeds[MAX_STATES];       \
        const int has_max = states_of_kind[AK_K_##KIND] > 2;                                   \
        (void)shrink, (void)wd, (void)b, (void)c, (void)d, (void)one_minus_beta2, (void)eps;   \
        (void)one_minus_beta1, (void)a, (void)beta2;                                           \
        (void)p32, (void)p16, (void)g32, (void)g16, (void)x16, (void)seed_max, (void)seed_p;   \
        (void)max_shift;                                                                       \
        const int64_t param_size = PARAM_SR ? 2 : 4;                                           \
        for (int64_t block = 0; block < n; block += PF_BLOCK) {                                \
            const int64_t count = n - block < PF_BLOCK ? n - block : PF_BLOCK;                 \
            const int64_t ahead = block + PF_AHEAD;                                            \
            const int64_t until = ahead + count < n ? ahead + count : n;                       \
            prefetch_range(params, ahead * param_size, until * param_size);                    \
            prefetch_read(grads, ahead * param_size, until * param_size);                     \
            prefetch_range(m16, ahead * 2, until * 2);                                         \
            prefetch_range(v16, ahead * 2, until * 2);                                         \
            if (has_max) prefetch_range(x16, ahead * 2, until * 2);                            \
            BF16_BLOCK(KIND, DECAY, PARAM_SR, count)                                           \
        }                                                                                      \
    }
#define DEFINE_BF16_KIND_FP32_PARAMS(KIND, STATES)                                                     \
    DEFINE_BF16_LOOP(KIND, 0, 0) DEFINE_BF16_LOOP(KIND, 1, 0) DEFINE_BF16_LOOP(KIND, 2, 0)
#define DEFINE_BF16_KIND_BF16_PARAMS(KIND, STATES)                                                     \
    DEFINE_BF16_LOOP(KIND, 0, 1) DEFINE_BF16_LOOP(KIND, 1, 1) DEFINE_BF16_LOOP(KIND, 2, 1)
FOR_EACH_KIND(DEFINE_BF16_KIND_FP32_PARAMS)
FOR_EACH_KIND(DEFINE_BF16_KIND_BF16_PARAMS)
typedef void (*bf16_loop_t)(float, float, float, float, float, float, float, float, float,
                            float, float, int64_t, void *restrict, const void *restrict,
                            uint16_t *const *, const uint32_t *, uint32_t, uint32_t);
#define BF16_ENTRY(KIND, STATES)                                                                       \
    [AK_K_##KIND] = {{bf16_##KIND##_0_0, bf16_##KIND##_0_1}, {bf16_##KIND##_1_0, bf16_##KIND##_1_1}, \
                     {bf16_##KIND##_2_0, bf16_##KIND##_2_1}},
static const bf16_loop_t bf16_loops[AK_KINDS][3][2] = {FOR_EACH_KIND(BF16_ENTRY)};

/* NaN and infinities are rare: a run of blocks is coded as if it held none, and then those
 * elements are given their own codes (or values) by these functions, out of line. */
static __attribute__((noinline)) void decode_special(float *restrict out,
                                                     const uint8_t *restrict codes, int n,
                                                     int is_unsigned) {
    const uint32_t mask = is_unsigned ? 255u : 127u, nan_code = is_unsigned ? V_NAN : M_NAN;
    for (int i = 0; i < n; i++) {
        uint32_t c = codes[i], mag = c & mask;
        if (mag - nan_code < 2u) /* a NaN ignores exp_avg's sign bit, an infinity takes it */
            out[i] = float_of(mag == nan_code ? NAN_BITS : INF_BITS | (c & ~mask) << 24);
    }
}
static __attribute__((noinline)) void encode_special(uint8_t *restrict codes,
                                                     const float *restrict in, int n,
                                                     int is_unsigned) {
    const uint32_t nan_code = is_unsigned ? V_NAN : M_NAN; /* the infinities': nan_code + 1 */
    for (int i = 0; i < n; i++) {
        uint32_t a = bits_of(in[i]) & 0x7fffffffu;
        if (a >= INF_BITS) /* NaN < 0 is false: a NaN's code has no sign */
            codes[i] = (uint8_t)((nan_code + (a == INF_BITS)) |
                                 (!is_unsigned && in[i] < 0.0f ? 128u : 0u));
    }
}
/* The largest finite magnitude's bits of n elements. */
static __attribute__((noinline)) uint32_t finite_max_bits(const float *restrict in, int n) {
    uint32_t most_bits = 0;
    for (int i = 0; i < n; i++) {
        uint32_t a = bits_of(in[i]) & 0x7fffffffu;
        most_bits = a < INF_BITS && a > most_bits ? a : most_bits;
    }
    return most_bits;
}

/* n elements from the start of a block run; scales[b] is the scale of the b-th block. The
 * codes of NaN and infinities decode to them without the scale (which may be 0). Both codecs
 * are inlined into their callers, so is_unsigned is a constant in each copy (the fused step
 * with 8-bit state is compute-bound: it runs about 10% slower when they are not). */
static inline __attribute__((always_inline)) void decode_q8(float *restrict out,
                                                            const uint8_t *restrict codes,
                                                            const float *restrict scales, int n,
                                                            int is_unsigned) {
    for (int b = 0; b * BLOCK < n; b++) {
        const int lo = b * BLOCK, hi = n < lo + BLOCK ? n : lo + BLOCK;
        const float scale = scales[b];
        if (is_unsigned) {
            for (int i = lo; i < hi; i++)
                out[i] = float_of(((uint32_t)codes[i] << 20) + V_OFFSET) * scale;
        } else {
            for (int i = lo; i < hi; i++) {
                uint32_t c = codes[i], mag = c & 127u;
                float x = mag ? float_of((mag << 20) + M_OFFSET) : 0.0f;
                out[i] = (c & 128u ? -x : x) * scale;
            }
        }
    }
    const uint8_t mask = is_unsigned ? 255 : 127, nan_code = is_unsigned ? V_NAN : M_NAN;
    uint8_t special = 0; /* one pass over the bytes */
    for (int i = 0; i < n; i++) special |= (uint8_t)((codes[i] & mask) - nan_code) < 2;
    if (special) decode_special(out, codes, n, is_unsigned);
}
/* Each block's scale is its largest finite magnitude (0 if it has none): the bits of
 * non-negative floats are ordered as the floats, and those of infinity and NaN are the highest,
 * at or above INF_BITS. Finite magnitudes are normalized by multiplying with the scale's
 * reciprocal (one division per block, as _precision.encode_8bit does). NaN and infinities get
 * their own codes, so they leave the block's other elements as they would be without them. */
static inline __attribute__((always_inline)) void encode_q8_block(uint8_t *restrict codes,
                                                                  float *restrict scale,
                                                                  const float *restrict in,
                                                                  int n, int is_unsigned,
                                                                  uint32_t most_bits) {
    const int32_t offset = is_unsigned ? V_OFFSET : M_OFFSET, most = is_unsigned ? 255 : 127;
    const int special = most_bits >= INF_BITS; /* the block holds a NaN or an infinity */
    if (special) most_bits = finite_max_bits(in, n);
    const float top = float_of(most_bits);
    *scale = top;
    const float inverse = 1.0f / (top > 0.0f ? top : 1.0f);
    for (int i = 0; i < n; i++) {
        int32_t c = ((int32_t)bits_of(fabsf(in[i]) * inverse) - offset + HALF_ULP) >> 20;
        c = c < 0 ? 0 : (c > most ? most : c);
        codes[i] = (uint8_t)(c | (!is_unsigned && in[i] < 0.0f ? 128 : 0));
    }
    if (special) encode_special(codes, in, n, is_unsigned);
}
/* The largest magnitude's bits of a block (NaN and infinities included: at or above INF_BITS). */
static inline uint32_t most_bits_of(const float *restrict in, int n) {
    uint32_t most_bits = 0;
    for (int i = 0; i < n; i++) {
        uint32_t a = bits_of(in[i]) & 0x7fffffffu;
        most_bits = a > most_bits ? a : most_bits;
    }
    return most_bits;
}
static inline __attribute__((always_inline)) void encode_q8(uint8_t *restrict codes,
                                                            float *restrict scales,
                                                            const float *restrict in, int n,
                                                            int is_unsigned) {
    for (int b = 0; b * BLOCK < n; b++) {
        const int lo = b * BLOCK, hi = n < lo + BLOCK ? n : lo + BLOCK;
        encode_q8_block(codes + lo, scales + b, in + lo, hi - lo, is_unsigned,
                        most_bits_of(in + lo, hi - lo));
    }
}

/* One 8-bit code as fp32, as decode_q8 and decode_special give it. The choices are written as
 * masks: gcc if-converts ternaries here with AVX-512's mask registers, but not for AVX2 or SSE2,
 * where the loops they are in would then run one element at a time. */
static inline uint32_t mask_if(int condition) { return 0u - (uint32_t)(condition != 0); }
static inline float q8_signed(uint32_t c, float scale) {
    const uint32_t mag = c & 127u, sign = (c & 128u) << 24;
    const uint32_t x = ((mag << 20) + M_OFFSET) & mask_if(mag != 0);
    const uint32_t bits = bits_of(float_of(x | sign) * scale);
    const uint32_t nan = mask_if(mag == M_NAN), inf = mask_if(mag == M_INF);
    return float_of((bits & ~(nan | inf)) | (nan & NAN_BITS) | (inf & (INF_BITS | sign)));
}
static inline float q8_unsigned(uint32_t c, float scale) {
    const uint32_t bits = bits_of(float_of((c << 20) + V_OFFSET) * scale);
    const uint32_t nan = mask_if(c == V_NAN), inf = mask_if(c == V_INF);
    return float_of((bits & ~(nan | inf)) | (nan & NAN_BITS) | (inf & INF_BITS));
}

/* 8-bit state (exp_avg signed, the second moment and AMSGrad's maximum unsigned) with fp32 or
 * stochastically rounded bf16 parameters: per block of BLOCK elements, one pass decodes each
 * code, updates the element and keeps the new moments (and their largest magnitude) in L1, then
 * each moment's block is encoded; the tile path decodes, updates, and scans for the maximum in
 * separate passes. Same bits. `buffers`: BLOCK floats for each state. */
/* One block of COUNT elements from `lo` (always BLOCK, a constant: the compiler then drops the
 * loops' remainders and masks; a tensor's last, partial block takes the tile path). */
#define Q8_BLOCK(KIND, DECAY, PARAM_SR, COUNT)                                                  \
    uint32_t m_most = 0, v_most = 0, x_most = 0;                                               \
    for (int e = 0; e < COUNT; e++) {                                                          \
        const int64_t i = 0, at_e = lo + e;                                                    \
        float p[1], g[1], m[1], v[1], vmax[1];                                                 \
        p[0] = PARAM_SR ? float_of((uint32_t)p16[at_e] << 16) : p32[at_e];                     \
        g[0] = PARAM_SR ? float_of((uint32_t)g16[at_e] << 16) : g32[at_e];                     \
        m[0] = q8_signed(m_codes[e], m_scale);                                                 \
        v[0] = q8_unsigned(v_codes[e], v_scale);                                               \
        vmax[0] = has_max ? q8_unsigned(x_codes[e], x_scale) : 0.0f;                           \
        HEAD(float, DECAY)                                                                     \
        BODY_##KIND(float, sqrtf, fabsf, *)                                                    \
        if (PARAM_SR)                                                                          \
            p16[at_e] = bf16_stochastic(p[0], noise_hash((first + (uint32_t)at_e) ^ seed_p) >> 16); \
        else p32[at_e] = p[0];                                                                 \
        const uint32_t mb = bits_of(m[0]) & 0x7fffffffu, vb = bits_of(v[0]) & 0x7fffffffu;     \
        m_out[e] = m[0];                                                                       \
        v_out[e] = v[0];                                                                       \
        m_most = mb > m_most ? mb : m_most;                                                    \
        v_most = vb > v_most ? vb : v_most;                                                    \
        if (has_max) {                                                                         \
            const uint32_t xb = bits_of(vmax[0]) & 0x7fffffffu;                                \
            x_out[e] = vmax[0];                                                                \
            x_most = xb > x_most ? xb : x_most;                                                \
        }                                                                                      \
    }                                                                                          \
    encode_q8_block(codes[0] + lo, scales[0] + at, m_out, COUNT, 0, m_most);                   \
    encode_q8_block(codes[1] + lo, scales[1] + at, v_out, COUNT, 1, v_most);                   \
    if (has_max) encode_q8_block(codes[2] + lo, scales[2] + at, x_out, COUNT, 1, x_most);

#define DEFINE_Q8_LOOP(KIND, DECAY, PARAM_SR)                                                   \
    static void q8_##KIND##_##DECAY##_##PARAM_SR(                                              \
        float sign, float shrink, float one_minus_beta1, float beta2, float one_minus_beta2,   \
        float eps, float wd, float a, float b, float c, float d, int64_t n,                    \
        void *restrict params,                                                                 \
        const void *restrict grads, uint8_t *const *codes, float *const *scales,              \
        float *restrict buffers, uint32_t seed_p, uint32_t first) {                            \
        float *restrict p32 = params;                                                          \
        uint16_t *restrict p16 = params;                                                       \
        const float *restrict g32 = grads;                                                     \
        const uint16_t *restrict g16 = grads;                                                  \
        float *restrict m_out = buffers, *restrict v_out = buffers + BLOCK;                    \
        float *restrict x_out = buffers + 2 * BLOCK;                                           \
        const int has_max = states_of_kind[AK_K_##KIND] > 2;                                   \
        const int64_t param_size = PARAM_SR ? 2 : 4;                                           \
        (void)shrink, (void)wd, (void)b, (void)c, (void)d, (void)one_minus_beta2, (void)eps;   \
        (void)one_minus_beta1, (void)a, (void)beta2;                                           \
        (void)p32, (void)p16, (void)g32, (void)g16, (void)seed_p, (void)x_out;                 \
        for (int64_t lo = 0; lo + BLOCK <= n; lo += BLOCK) {                                   \
            const int64_t at = lo / BLOCK;                                                     \
            const float m_scale = scales[0][at], v_scale = scales[1][at];                      \
            const float x_scale = has_max ? scales[2][at] : 0.0f;                              \
            const uint8_t *restrict m_codes = codes[0] + lo, *restrict v_codes = codes[1] + lo; \
            const uint8_t *restrict x_codes = has_max ? codes[2] + lo : NULL;                  \
            const int64_t ahead = lo + PF_AHEAD, until = ahead + BLOCK < n ? ahead + BLOCK : n; \
            prefetch_range(params, ahead * param_size, until * param_size);                    \
            prefetch_read(grads, ahead * param_size, until * param_size);                     \
            for (int q = 0; q < 2 + has_max; q++) prefetch_range(codes[q], ahead, until);      \
            Q8_BLOCK(KIND, DECAY, PARAM_SR, BLOCK)                                             \
        }                                                                                      \
    }
#define DEFINE_Q8_KIND(KIND, STATES)                                                                   \
    DEFINE_Q8_LOOP(KIND, 0, 0) DEFINE_Q8_LOOP(KIND, 1, 0) DEFINE_Q8_LOOP(KIND, 2, 0)           \
    DEFINE_Q8_LOOP(KIND, 0, 1) DEFINE_Q8_LOOP(KIND, 1, 1) DEFINE_Q8_LOOP(KIND, 2, 1)
FOR_EACH_KIND(DEFINE_Q8_KIND)
typedef void (*q8_loop_t)(float, float, float, float, float, float, float, float, float, float,
                          float, int64_t, void *restrict, const void *restrict, uint8_t *const *,
                          float *const *, float *restrict, uint32_t, uint32_t);
#define Q8_ENTRY(KIND, STATES)                                                                         \
    [AK_K_##KIND] = {{q8_##KIND##_0_0, q8_##KIND##_0_1}, {q8_##KIND##_1_0, q8_##KIND##_1_1},   \
                     {q8_##KIND##_2_0, q8_##KIND##_2_1}},
static const q8_loop_t q8_loops[AK_KINDS][3][2] = {FOR_EACH_KIND(Q8_ENTRY)};

/* One stored state tensor's tile as fp32: in place for fp32, else decoded into `buffer`. */
static float *load_state(int fmt, void *base, const float *scales, int64_t e, int n,
                         int is_unsigned, float *buffer) {
    if (fmt == F_F32) return (float *)base + e;
    if (fmt == F_Q8) { /* a copy of the codec for each sign: is_unsigned a constant in each */
        if (is_unsigned)
            decode_q8(buffer, (const uint8_t *)base + e, scales + e / BLOCK, n, 1);
        else
            decode_q8(buffer, (const uint8_t *)base + e, scales + e / BLOCK, n, 0);
    } else
        load_bf16(buffer, (const uint16_t *)base + e, n);
    return buffer;
}
static void store_state(int fmt, void *base, float *scales, int64_t e, int n, int32_t codec,
                        const float *value, uint32_t seed) {
    if (fmt == F_Q8 && codec & CODEC_UNSIGNED)
        encode_q8((uint8_t *)base + e, scales + e / BLOCK, value, n, 1);
    else if (fmt == F_Q8)
        encode_q8((uint8_t *)base + e, scales + e / BLOCK, value, n, 0);
    else if (fmt == F_BF16_SR)
        store_bf16_stochastic((uint16_t *)base + e, value, n, seed, e, codec & CODEC_HIGH);
    else if (fmt == F_BF16)
        store_bf16((uint16_t *)base + e, value, n);
}

/* IEEE half precision, rounded to nearest even as torch's c10::Half (NaN -> 0x7e00 | sign). */
static inline float f16_value(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return float_of(sign | INF_BITS | (m << 13));
    if (e == 0) { /* zero or subnormal: m * 2**-24, exact in fp32 */
        const float x = (float)m * 5.9604644775390625e-8f;
        return sign ? -x : x;
    }
    return float_of(sign | ((e + 112u) << 23) | (m << 13));
}
static inline uint16_t f16_nearest(float x) {
    uint32_t u = bits_of(x);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    u &= 0x7fffffffu;
    if (u >= (143u << 23)) /* >= 65536, inf or NaN (65520..65536 carry into inf below) */
        return sign | (u > INF_BITS ? 0x7e00u : 0x7c00u);
    if (u < (113u << 23)) { /* below 2**-14: a subnormal half; fp32 addition rounds it */
        const float rounded = float_of(u) + 0.5f;
        return sign | (uint16_t)(bits_of(rounded) - 0x3f000000u);
    }
    const uint32_t odd = (u >> 13) & 1u;
    u = u - (112u << 23) + 0xfffu + odd; /* rebias; round half to even */
    return sign | (uint16_t)(u >> 13);
}
static void load_f16(float *restrict out, const uint16_t *restrict in, int n) {
    for (int i = 0; i < n; i++) out[i] = f16_value(in[i]);
}
static void store_f16(uint16_t *restrict out, const float *restrict in, int n) {
    for (int i = 0; i < n; i++) out[i] = f16_nearest(in[i]);
}

/* One tile of one parameter's stored values as fp32, into `buffer` (fp32 is used in place). */
static float *load_values(int fmt, void *base, int64_t e, int n, float *buffer) {
    if (fmt == F_F32) return (float *)base + e;
    if (fmt == F_F16) load_f16(buffer, (const uint16_t *)base + e, n);
    else load_bf16(buffer, (const uint16_t *)base + e, n);
    return buffer;
}

/* The one-pass loops' scalars, each rounded once from double as dispatch_<SUFFIX> rounds them
 * (`c`, `sk` and `decay` of chunk_wide). */
#define ONE_PASS_SCALARS                                                                        \
    c->flags & MAXIMIZE ? -1.0f : 1.0f, (float)(1.0 - c->lr * c->wd), (float)(1.0 - c->beta1),  \
        (float)c->beta2, (float)(1.0 - c->beta2), (float)c->eps, (float)c->wd, (float)sk.a,     \
        (float)sk.b, (float)sk.c, (float)sk.d

static void chunk_wide(const void *context, int64_t j, float *scratch) {
    const call_t *c = context;
    const int64_t k = tensor_of(c->first, c->count, j), start = (j - c->first[k]) * CHUNK;
    const int64_t end = c->numels[k] - start < CHUNK ? c->numels[k] : start + CHUNK;
    const int fmt = c->state_fmts[k], param_fmt = c->param_fmt, nstates = c->nstates;
    scalars_t sk = scalars_of(c->scalars + ROW * k);
    const uint32_t seed_p = rounding_seed(sk.t, c->salts[k], SALT_PARAM);
    sk.b = 1.0 / sk.b; /* dispatch_wide multiplies by it (unused where b is 0) */
    void *bases[MAX_STATES];
    float *scales[MAX_STATES];
    uint32_t seeds[MAX_STATES];
    for (int q = 0; q < nstates; q++) {
        bases[q] = c->states[q * c->count + k];
        scales[q] = c->scales ? (float *)c->scales[q * c->count + k] : NULL;
        seeds[q] = rounding_seed(sk.t, c->salts[k], (uint32_t)c->codecs[q] >> CODEC_STREAM);
    }
    /* States 0 and 1 of one stream, low and high half: one hash per element rounds both. */
    const int decay = decay_mode(c->flags, c->wd);
    const int paired = nstates >= 2 && c->codecs[0] >> CODEC_STREAM == c->codecs[1] >> CODEC_STREAM &&
                       !(c->codecs[0] & CODEC_HIGH) && c->codecs[1] & CODEC_HIGH;
    if (fmt == F_BF16_SR && paired && (param_fmt == F_F32 || param_fmt == F_BF16_SR) &&
        nstates == states_of_kind[sk.kind]) { /* one pass (DEFINE_BF16_LOOP) */
        const size_t param_size = param_fmt == F_F32 ? sizeof(float) : sizeof(uint16_t);
        uint16_t *moments[MAX_STATES] = {NULL};
        uint32_t all_seeds[MAX_STATES + 1] = {0};
        for (int q = 0; q < nstates; q++) {
            moments[q] = (uint16_t *)bases[q] + start;
            all_seeds[q] = seeds[q];
        }
        all_seeds[MAX_STATES] = seed_p;
        const uint32_t max_shift = nstates > 2 && c->codecs[2] & CODEC_HIGH ? 16 : 0;
        bf16_loops[sk.kind][decay][param_fmt == F_BF16_SR](
            ONE_PASS_SCALARS, end - start, (char *)c->params[k] + start * param_size,
            (const char *)c->grads[k] + start * param_size, moments, all_seeds, max_shift,
            (uint32_t)start);
        return;
    }
    const int signs_fit = nstates >= 2 && !(c->codecs[0] & CODEC_UNSIGNED) &&
                          c->codecs[1] & CODEC_UNSIGNED &&
                          (nstates < 3 || c->codecs[2] & CODEC_UNSIGNED);
    int64_t tiles_from = start; /* where the tile path below takes over */
    const int64_t full_blocks = (end - start) / BLOCK * BLOCK;
    if (fmt == F_Q8 && signs_fit && (param_fmt == F_F32 || param_fmt == F_BF16_SR) &&
        nstates == states_of_kind[sk.kind] && full_blocks > 0) {
        /* one pass a block (DEFINE_Q8_LOOP) over the whole blocks; a partial last block below */
        const size_t param_size = param_fmt == F_F32 ? sizeof(float) : sizeof(uint16_t);
        uint8_t *codes[MAX_STATES] = {NULL};
        float *block_scales[MAX_STATES] = {NULL};
        for (int q = 0; q < nstates; q++) {
            codes[q] = (uint8_t *)bases[q] + start;
            block_scales[q] = scales[q] + start / BLOCK;
        }
        q8_loops[sk.kind][decay][param_fmt == F_BF16_SR](
            ONE_PASS_SCALARS, full_blocks, (char *)c->params[k] + start * param_size,
            (const char *)c->grads[k] + start * param_size, codes, block_scales, scratch, seed_p,
            (uint32_t)start);
        tiles_from = start + full_blocks;
    }
    /* Tiles on the heap (the caller's scratch), not the stack: no stack-size assumption. */
    float *param_tile = scratch, *grad_tile = scratch + TILE;
    void *params = c->params[k], *grads = c->grads[k];
    for (int64_t e = tiles_from; e < end; e += TILE) {
        const int n = (int)(end - e < TILE ? end - e : TILE);
        const int grad_fmt = param_fmt == F_BF16_SR ? F_BF16 : param_fmt;
        float *p = load_values(grad_fmt, params, e, n, param_tile);
        const float *g = load_values(grad_fmt, grads, e, n, grad_tile);
        float *tiles[MAX_STATES] = {NULL};
        for (int q = 0; q < nstates; q++) {
            float *buffer = scratch + (2 + q) * TILE;
            tiles[q] = fmt == F_F16 ? load_values(F_F16, bases[q], e, n, buffer)
                                    : load_state(fmt, bases[q], scales[q], e, n,
                                                 c->codecs[q] & CODEC_UNSIGNED, buffer);
        }
        dispatch_wide(sk.kind, c->flags, c->lr, c->beta1, c->beta2, c->eps, c->wd, &sk, n, p, g,
                      tiles);
        if (param_fmt == F_BF16_SR)
            store_bf16_stochastic((uint16_t *)params + e, p, n, seed_p, e, 1);
        else if (param_fmt == F_BF16)
            store_bf16((uint16_t *)params + e, p, n);
        else if (param_fmt == F_F16)
            store_f16((uint16_t *)params + e, p, n);
        int q = 0;
        if (fmt == F_F16) {
            for (; q < nstates; q++) store_f16((uint16_t *)bases[q] + e, tiles[q], n);
        } else if (fmt == F_BF16_SR && paired) {
            store_moments_stochastic((uint16_t *)bases[0] + e, (uint16_t *)bases[1] + e, tiles[0],
                                     tiles[1], n, seeds[0], e);
            q = 2;
        }
        for (; q < nstates; q++)
            store_state(fmt, bases[q], scales[q], e, n, c->codecs[q], tiles[q], seeds[q]);
    }
}

WIDE_VECTORS_END

/* One fused step of a bucket (see the head of this file). hyper[H_*]: lr, betas, eps, weight
 * decay; shape[S_*]: flags, tensor count, number of states, rows to skip after them (the step
 * counter and scalar states, which adamkit_advance has updated), threads, the parameters'
 * format, whether 8-bit scales follow, and the element loop (E_F32, E_F64 or E_WIDE for
 * low-precision storage). sizes: each tensor's element count, then (count + 1 entries) the
 * first CHUNK-sized chunk of each tensor and the total. scalars: ROW doubles per tensor (R_*).
 * table: `count` addresses per role: params, grads, each state, the skipped rows, then
 * (shape[S_SCALES]) the 8-bit scales of each state (NULL where a tensor has none).
 * E_WIDE only: state_fmts[k] (tensor k's states are F_F32, F_BF16, F_BF16_SR, F_F16 or F_Q8),
 * salts[k] (its rounding's salt), codecs[q] (state q's sign and noise), and `scratch`
 * (SCRATCH_FLOATS floats for the calling thread's tiles). Returns 0; 2, having changed
 * nothing, for a call that does not describe the rows it passes (a state count outside 2 ..
 * MAX_STATES, a kind that is unknown or needs more states, wide storage without its arrays). */
int adamkit_step(const double *hyper, const int64_t *shape, const int64_t *sizes,
                 const double *scalars, void **table, const uint8_t *state_fmts,
                 const uint32_t *salts, const int32_t *codecs, float *scratch) {
    const int64_t count = shape[S_COUNT];
    if (count < 0 || shape[S_STATES] < 2 || shape[S_STATES] > MAX_STATES) return 2;
    if (shape[S_SKIP] < 0) return 2;
    const int nstates = (int)shape[S_STATES], element = (int)shape[S_ELEMENT];
    if (element != E_F32 && element != E_F64 && element != E_WIDE) return 2;
    for (int64_t k = 0; k < count; k++) {
        const double kind = scalars[ROW * k + R_KIND];
        if (!(kind >= 0 && kind < AK_KINDS) || kind != (int)kind) return 2;
        const int needs = states_of_kind[(int)kind];
        if (needs == 0 || needs > nstates) return 2; /* no loop, or AMSGrad without its maximum */
        if (sizes[k] < 0) return 2;
    }
    if (element == E_WIDE) {
        if (!state_fmts || !salts || !codecs || !scratch) return 2;
        for (int64_t k = 0; k < count && !shape[S_SCALES]; k++)
            if (state_fmts[k] == F_Q8) return 2; /* 8-bit state without its scales' rows */
    }
    const int64_t *first = sizes + count;
    void **scales = table + (2 + nstates + shape[S_SKIP]) * count;
    const call_t c = {.flags = (int)shape[S_FLAGS], .lr = hyper[H_LR], .beta1 = hyper[H_BETA1],
                      .beta2 = hyper[H_BETA2], .eps = hyper[H_EPS], .wd = hyper[H_WD],
                      .count = count, .numels = sizes, .first = first, .scalars = scalars,
                      .params = table, .grads = table + count, .states = table + 2 * count,
                      .nstates = nstates, .param_fmt = (int)shape[S_PARAM_FMT],
                      .state_fmts = state_fmts, .scales = shape[S_SCALES] ? scales : NULL,
                      .codecs = codecs, .salts = salts};
    int64_t elements = 0;
    for (int64_t k = 0; k < count; k++) elements += sizes[k];
    const chunk_body body = element == E_WIDE ? chunk_wide : element == E_F64 ? chunk_f64 : chunk_f32;
    run_chunks(first[count], elements, (int)shape[S_THREADS], body, &c, scratch,
               element == E_WIDE ? SCRATCH_FLOATS : 0);
    return 0;
}

/* The two passes of cautious masking and update clipping (see their loops above), for
 * full-precision tensors (E_F32, E_F64; no scales). The arguments are adamkit_step's, with one
 * more row of `table` after the skipped ones: each tensor's update buffer (numels[k] elements of
 * its type). adamkit_step_options: floors[k] = (1 - beta2^t) eps^2 of tensor k; writes
 * sums[2 j], sums[2 j + 1] for each chunk j. adamkit_apply_options: shrink_scale[2 k],
 * [2 k + 1]: tensor k's shrink and scale (flags: CAUTIOUS masks). Return 0; 2, having changed
 * nothing, for a call that does not describe its rows (as adamkit_step, and a kind with no
 * options loop). */
static int options_call(const double *hyper, const int64_t *shape, const int64_t *sizes,
                        const double *scalars, void **table, options_t *o) {
    const int64_t count = shape[S_COUNT];
    if (count < 0 || shape[S_STATES] < 2 || shape[S_STATES] > MAX_STATES) return 2;
    if (shape[S_SKIP] < 0 || shape[S_SCALES]) return 2;
    const int element = (int)shape[S_ELEMENT];
    if (element != E_F32 && element != E_F64) return 2;
    const int nstates = (int)shape[S_STATES];
    for (int64_t k = 0; k < count && scalars; k++) {
        const double kind = scalars[ROW * k + R_KIND];
        if (!(kind >= 0 && kind < AK_KINDS) || kind != (int)kind) return 2;
        const int needs = states_of_kind[(int)kind];
        if (needs == 0 || needs > nstates || !options_loops_f32[(int)kind][0]) return 2;
        if (sizes[k] < 0) return 2;
    }
    o->call = (call_t){.flags = (int)shape[S_FLAGS], .lr = hyper[H_LR], .beta1 = hyper[H_BETA1],
                       .beta2 = hyper[H_BETA2], .eps = hyper[H_EPS], .wd = hyper[H_WD],
                       .count = count, .numels = sizes, .first = sizes + count,
                       .scalars = scalars, .params = table, .grads = table + count,
                       .states = table + 2 * count, .nstates = nstates};
    o->updates = table + (2 + nstates + shape[S_SKIP]) * count;
    return 0;
}

int adamkit_step_options(const double *hyper, const int64_t *shape, const int64_t *sizes,
                         const double *scalars, void **table, const double *floors,
                         double *sums) {
    options_t o;
    if (!scalars || !floors || !sums) return 2;
    const int status = options_call(hyper, shape, sizes, scalars, table, &o);
    if (status) return status;
    o.extra = floors;
    o.sums = sums;
    int64_t elements = 0;
    for (int64_t k = 0; k < o.call.count; k++) elements += sizes[k];
    run_chunks(o.call.first[o.call.count], elements, (int)shape[S_THREADS],
               shape[S_ELEMENT] == E_F64 ? options_chunk_f64 : options_chunk_f32, &o, NULL, 0);
    return 0;
}

int adamkit_apply_options(const double *hyper, const int64_t *shape, const int64_t *sizes,
                          void **table, const double *shrink_scale) {
    options_t o;
    if (!shrink_scale) return 2;
    const int status = options_call(hyper, shape, sizes, NULL, table, &o);
    if (status) return status;
    o.extra = shrink_scale;
    o.sums = NULL;
    int64_t elements = 0;
    for (int64_t k = 0; k < o.call.count; k++) {
        if (sizes[k] < 0) return 2;
        elements += sizes[k];
    }
    run_chunks(o.call.first[o.call.count], elements, (int)shape[S_THREADS],
               shape[S_ELEMENT] == E_F64 ? apply_chunk_f64 : apply_chunk_f32, &o, NULL, 0);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Adafactor's step of one tensor (adamkit/optim/adafactor.py; torch.optim.Adafactor's update),
 * where the multi-tensor ops take about ten passes over memory, in three:
 *   A  read p and g: sum(p^2), and each row's and each column's sum of g^2; then, O(n + m),
 *      the statistics' EMA (torch's lerp) and each row's and column's factor;
 *   B  read g: sum(U^2), with U = G min(a_i b_j, 1 / eps1), a_i = rsqrt(R_i / max(mean R,
 *      eps1)), b_j = rsqrt(C_j): torch's G rsqrt(max(R_i C_j / max(mean R, eps1), eps1^2)),
 *      factored (the estimate is never formed, and its floor is the minimum);
 *   C  read g and p, write p (1 - lr wd) - alpha / max(1, RMS(U) / d) U.
 * The tensor is `batch` matrices of n rows and m columns (its last two dimensions); row_var
 * holds batch x n numbers, col_var batch x m. Squares are taken in the compute type (fp32 for
 * fp32, bf16 and fp16 tensors, as torch's), their sums in double, the factors computed
 * in double and rounded once. The work is split into tiles of whole rows (contiguous memory:
 * tiles of row segments measured up to 1.7x slower), at least FT_ROWS of them, whose partial
 * sums are kept apart and added in tile order, so the result does not depend on the number of
 * threads. A matrix of one tile (n <= FT_ROWS rows, or narrow enough) is its own: its sums and
 * factors stay in its thread's scratch (recomputed from its statistics in passes B and C), so
 * a batch of small matrices (a convolution's 3 x 3 kernels) allocates nothing per matrix.
 * Larger matrices keep each tile's column sums (a double per FT_ROWS elements, at most a
 * sixteenth of an fp32 tensor's size) and their factors. The call's temporaries are allocated
 * before anything is written; a one-tile matrix whose scratch would be larger than an eighth of
 * the tensor (and than AF_SCRATCH_FLOATS: a few rows of a great many columns) is not taken.
 */
#define FT_ROWS 64 /* rows of a tile, at least (more for narrow matrices: CHUNK elements) */

typedef struct {
    void *p, *row, *col;
    const void *g;
    int64_t batch, n, m, rows, tiles; /* rows a tile takes; tiles of a matrix */
    int64_t per;                      /* one-tile matrices: how many a tile takes */
    double *colpart;                  /* tiles > 1: [batch][tiles][m], each tile's column sums */
    double *rowsum;                   /* tiles > 1: [batch][n] */
    double *psq, *usq;                /* [tile]: sum(p^2), sum(U^2) */
    void *row_factor, *col_factor;    /* tiles > 1: [batch][n], [batch][m] of the compute type */
    double decay, eps1, inv_eps1, shrink, scale;
} factored_t;

/* The sum of a row's partial sums; a row narrower than LANES has only the first (adding the
 * others, zeros, would give the same bits, at the cost of a chain of LANES additions a row:
 * most of the time of a batch of 3 x 3 matrices). */
static inline double lane_sum(const double *acc, int64_t m) {
    if (m < LANES) return acc[0];
    double s = 0;
    for (int k = 0; k < LANES; k++) s += acc[k];
    return s;
}

/* Tile j's matrices [b0, b1) and their rows [r0, r1): rows of one matrix of several tiles, or
 * (`own`) whole matrices of one tile each, whose sums and factors live in the scratch (m + n
 * doubles, then n + m factors) one matrix at a time. */
#define FACTORED_TILE(f, j)                                                                     \
    const int own = (f)->tiles == 1;                                                            \
    const int64_t m = (f)->m;                                                                   \
    const int64_t b0 = own ? (j) * (f)->per : (j) / (f)->tiles;                                 \
    const int64_t b1 = own ? (b0 + (f)->per < (f)->batch ? b0 + (f)->per : (f)->batch) : b0 + 1; \
    const int64_t r0 = own ? 0 : (j) % (f)->tiles * (f)->rows;                                  \
    const int64_t r1 = r0 + (f)->rows < (f)->n ? r0 + (f)->rows : (f)->n;
/* The factors of matrix b a tile uses: its own (computed into the scratch), or the call's. */
#define FACTORED_FACTORS(SUFFIX, T)                                                             \
    T *A, *Bc;                                                                                  \
    if (own) {                                                                                  \
        A = (T *)((double *)scratch + f->n + m), Bc = A + f->n;                                 \
        factors_##SUFFIX(f, b, A, Bc);                                                          \
    } else {                                                                                    \
        A = (T *)f->row_factor + b * f->n, Bc = (T *)f->col_factor + b * m;                     \
    }
/* Row i of matrix b: its gradient and its factor. */
#define FACTORED_ROW(S, T)                                                                      \
    const S *gi = (const S *)f->g + (b * f->n + i) * m;                                         \
    const T ai = A[i];
/* Element c of the row's U. */
#define FACTORED_U(T, LOAD, c)                                                                  \
    const T ab = ai * Bc[c], cap = (T)f->inv_eps1, u = LOAD(gi[c]) * (ab > cap ? cap : ab);
/* BODY(T, LOAD, c, lane) for each column c of a row, in LANES independent lanes of partial
 * sums (a vector loop without reassociation), the tail in lane 0. */
#define FACTORED_LANES(m, BODY, T, LOAD)                                                        \
    {                                                                                           \
        int64_t c_ = 0;                                                                         \
        for (; c_ + LANES <= (m); c_ += LANES)                                                  \
            for (int k_ = 0; k_ < LANES; k_++) {                                                \
                BODY(T, LOAD, c_ + k_, k_)                                                      \
            }                                                                                   \
        for (; c_ < (m); c_++) {                                                                \
            BODY(T, LOAD, c_, 0)                                                                \
        }                                                                                       \
    }
/* Pass A's element: g^2 into its column's, its row's lane's sums, p^2 into its lane's. */
#define FACTORED_SQUARES(T, LOAD, c, lane)                                                      \
    const T gv = LOAD(gi[c]), pv = LOAD(pi[c]);                                                 \
    const double s = gv * gv;                                                                   \
    cp[c] += s;                                                                                 \
    racc[lane] += s;                                                                            \
    pacc[lane] += pv * pv;
/* Pass B's: U^2 into its lane's sum. */
#define FACTORED_U_SQUARE(T, LOAD, c, lane)                                                     \
    FACTORED_U(T, LOAD, c)                                                                      \
    acc[lane] += u * u;

#define DEFINE_FACTORED(SUFFIX, S, T, LOAD, STORE)                                              \
    /* torch's lerp: self + w (end - self) for w < 0.5, else end - (end - self) (1 - w). */     \
    static inline T lerp_##SUFFIX(T self, T end, T w) {                                         \
        return w < (T)0.5 ? self + w * (end - self) : end - (end - self) * ((T)1 - w);          \
    }                                                                                           \
                                                                                                \
    /* Matrix b's statistics take their EMA of the mean squares (its sums of g^2). */           \
    static void update_##SUFFIX(const factored_t *f, int64_t b, const double *rowsum,           \
                                const double *colsum) {                                         \
        const T weight = (T)f->decay;                                                           \
        S *R = (S *)f->row + b * f->n, *C = (S *)f->col + b * f->m;                             \
        for (int64_t i = 0; i < f->n; i++)                                                      \
            R[i] = STORE(lerp_##SUFFIX(LOAD(R[i]), (T)(rowsum[i] / (double)f->m), weight));     \
        for (int64_t c = 0; c < f->m; c++)                                                      \
            C[c] = STORE(lerp_##SUFFIX(LOAD(C[c]), (T)(colsum[c] / (double)f->n), weight));     \
    }                                                                                           \
                                                                                                \
    /* Matrix b's row and column factors, from its statistics. */                               \
    static void factors_##SUFFIX(const factored_t *f, int64_t b, T *a, T *bc) {                 \
        const S *R = (const S *)f->row + b * f->n, *C = (const S *)f->col + b * f->m;           \
        double total = 0;                                                                       \
        for (int64_t i = 0; i < f->n; i++) total += LOAD(R[i]);                                 \
        double mean = total / (double)f->n;                                                     \
        mean = mean < f->eps1 ? f->eps1 : mean; /* torch's clamp: a NaN stays */                \
        for (int64_t i = 0; i < f->n; i++) a[i] = (T)(1.0 / sqrt((double)LOAD(R[i]) / mean));   \
        for (int64_t c = 0; c < f->m; c++) bc[c] = (T)(1.0 / sqrt((double)LOAD(C[c])));         \
    }                                                                                           \
                                                                                                \
    static void factored_sums_##SUFFIX(const void *ctx, int64_t j, float *scratch) {            \
        const factored_t *f = ctx;                                                              \
        FACTORED_TILE(f, j)                                                                     \
        double ptotal = 0;                                                                      \
        for (int64_t b = b0; b < b1; b++) {                                                     \
            double *cp = own ? (double *)scratch : f->colpart + j * m;                          \
            double *rs = own ? (double *)scratch + m : f->rowsum + b * f->n;                    \
            for (int64_t c = 0; c < m; c++) cp[c] = 0;                                          \
            for (int64_t i = r0; i < r1; i++) {                                                 \
                const S *gi = (const S *)f->g + (b * f->n + i) * m;                             \
                const S *pi = (const S *)f->p + (b * f->n + i) * m;                             \
                double racc[LANES] = {0}, pacc[LANES] = {0};                                    \
                FACTORED_LANES(m, FACTORED_SQUARES, T, LOAD)                                    \
                rs[i] = lane_sum(racc, m);                                                      \
                ptotal += lane_sum(pacc, m);                                                    \
            }                                                                                   \
            if (own) update_##SUFFIX(f, b, rs, cp);                                             \
        }                                                                                       \
        f->psq[j] = ptotal;                                                                     \
    }                                                                                           \
                                                                                                \
    static void factored_norm_##SUFFIX(const void *ctx, int64_t j, float *scratch) {            \
        const factored_t *f = ctx;                                                              \
        FACTORED_TILE(f, j)                                                                     \
        double total = 0;                                                                       \
        for (int64_t b = b0; b < b1; b++) {                                                     \
            FACTORED_FACTORS(SUFFIX, T)                                                         \
            for (int64_t i = r0; i < r1; i++) {                                                 \
                FACTORED_ROW(S, T)                                                              \
                double acc[LANES] = {0};                                                        \
                FACTORED_LANES(m, FACTORED_U_SQUARE, T, LOAD)                                   \
                total += lane_sum(acc, m);                                                      \
            }                                                                                   \
        }                                                                                       \
        f->usq[j] = total;                                                                      \
    }                                                                                           \
                                                                                                \
    static void factored_apply_##SUFFIX(const void *ctx, int64_t j, float *scratch) {           \
        const factored_t *f = ctx;                                                              \
        FACTORED_TILE(f, j)                                                                     \
        const T shrink = (T)f->shrink, scale = (T)f->scale;                                     \
        for (int64_t b = b0; b < b1; b++) {                                                     \
            FACTORED_FACTORS(SUFFIX, T)                                                         \
            for (int64_t i = r0; i < r1; i++) {                                                 \
                FACTORED_ROW(S, T)                                                              \
                S *restrict pi = (S *)f->p + (b * f->n + i) * m;                                \
                for (int64_t c = 0; c < m; c++) {                                               \
                    FACTORED_U(T, LOAD, c)                                                      \
                    pi[c] = STORE(LOAD(pi[c]) * shrink + scale * u);                            \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
                                                                                                \
    /* Between passes A and B, for matrices of several tiles: the column sums (added tile by    \
     * tile into the first tile's), the statistics' EMA and the factors. */                     \
    static void factored_factors_##SUFFIX(factored_t *f) {                                      \
        for (int64_t b = 0; b < f->batch; b++) {                                                \
            double *sums = f->colpart + b * f->tiles * f->m;                                    \
            for (int64_t k = 1; k < f->tiles; k++)                                              \
                for (int64_t c = 0; c < f->m; c++) sums[c] += sums[k * f->m + c];               \
            update_##SUFFIX(f, b, f->rowsum + b * f->n, sums);                                  \
            factors_##SUFFIX(f, b, (T *)f->row_factor + b * f->n, (T *)f->col_factor + b * f->m); \
        }                                                                                       \
    }

/* fp32 and fp64 tensors in place; bf16 and fp16 ones read into fp32 and rounded to nearest
 * once an element (the statistics at their EMA, the parameter at its update). */
#define AS_IS(x) (x)
#define BF16_VALUE(x) float_of((uint32_t)(x) << 16)
DEFINE_FACTORED(f32, float, float, AS_IS, AS_IS)
DEFINE_FACTORED(f64, double, double, AS_IS, AS_IS)
DEFINE_FACTORED(bf16, uint16_t, float, BF16_VALUE, bf16_nearest)
DEFINE_FACTORED(f16, uint16_t, float, f16_value, f16_nearest)

/* Each element type's passes, the step between them, and the size of its factors. */
static const struct {
    chunk_body sums, norm, apply;
    void (*factors)(factored_t *);
    size_t factor_size;
} factored_kinds[] = {
    [E_F32] = {factored_sums_f32, factored_norm_f32, factored_apply_f32, factored_factors_f32, 4},
    [E_F64] = {factored_sums_f64, factored_norm_f64, factored_apply_f64, factored_factors_f64, 8},
    [E_BF16] = {factored_sums_bf16, factored_norm_bf16, factored_apply_bf16, factored_factors_bf16,
                4},
    [E_F16] = {factored_sums_f16, factored_norm_f16, factored_apply_f16, factored_factors_f16, 4},
};

/* Whether the kernel takes a tensor of this shape (shape[AF_BATCH], [AF_ROWS], [AF_COLS],
 * [AF_ELEMENT]): a one-tile matrix's scratch (its column sums and factors, a thread) may not
 * be larger than an eighth of the tensor, nor than AF_SCRATCH_FLOATS. 1 or 0. */
int adamkit_adafactor_takes(const int64_t *shape) {
    const int64_t batch = shape[AF_BATCH], n = shape[AF_ROWS], m = shape[AF_COLS];
    const int element = shape[AF_ELEMENT] == E_F64 ? 8 : shape[AF_ELEMENT] == E_F32 ? 4 : 2;
    if (batch < 1 || n < 1 || m < 1 || n > INT64_MAX / m || n * m > INT64_MAX / batch / 8)
        return 0;
    const int64_t rows = CHUNK / m > FT_ROWS ? CHUNK / m : FT_ROWS, floats = 4 * (n + m);
    if (n > rows) return 1; /* several tiles: no scratch */
    return floats <= AK_AF_SCRATCH_FLOATS || 4 * floats <= batch * n * m * element / 8;
}

/* One Adafactor step of a tensor of batch x n x m elements (shape[AF_BATCH], [AF_ROWS],
 * [AF_COLS]); shape[AF_ELEMENT]: E_F32, E_F64, E_BF16 or E_F16, the type of the parameter,
 * its gradient and statistics; shape[AF_THREADS]. table: its parameter, gradient, row_var
 * (batch x n) and col_var (batch x m). hyper[AF_*]: rho (the relative step's cap),
 * 1 - beta2_t, eps1, eps2, d, 1 - lr wd, and the update's sign (-1: maximize). Returns 0; 2,
 * having changed nothing, for sizes or an element type it does not take (a matrix whose
 * scratch would not fit, too); 3, having changed nothing, when the call's temporaries cannot
 * be allocated (a worker that cannot allocate its scratch leaves its tiles to the others). */
int adamkit_adafactor(const double *hyper, const int64_t *shape, void **table) {
    const int64_t batch = shape[AF_BATCH], n = shape[AF_ROWS], m = shape[AF_COLS];
    const int element = (int)shape[AF_ELEMENT];
    if (batch < 1 || n < 1 || m < 1) return 2;
    if (element != E_F32 && element != E_F64 && element != E_BF16 && element != E_F16) return 2;
    if (n > INT64_MAX / m || n * m > INT64_MAX / batch / 8 || n + m > INT64_MAX / 16) return 2;
    const int64_t rows = CHUNK / m > FT_ROWS ? CHUNK / m : FT_ROWS, elements = batch * n * m;
    const size_t size = factored_kinds[element].factor_size;
    factored_t f = {.p = table[0], .g = table[1], .row = table[2], .col = table[3],
                    .batch = batch, .n = n, .m = m, .rows = rows, .tiles = (n + rows - 1) / rows,
                    .decay = hyper[AF_DECAY], .eps1 = hyper[AF_EPS1],
                    .inv_eps1 = 1.0 / hyper[AF_EPS1]};
    const int own = f.tiles == 1;
    if (!adamkit_adafactor_takes(shape)) return 2;
    /* One-tile matrices: as many a tile as make CHUNK elements. */
    f.per = own ? (CHUNK / (n * m) > 1 ? CHUNK / (n * m) : 1) : 1;
    const int64_t total = own ? (batch + f.per - 1) / f.per : batch * f.tiles; /* tiles */
    /* Per tile: its two sums; matrices of several tiles: each tile's column sums, the rows'
     * sums and the factors; one-tile matrices: a scratch of their sums and factors a thread. */
    const size_t doubles = (size_t)(2 * total + (own ? 0 : total * m + batch * n));
    const size_t factors = own ? 0 : (size_t)(batch * (n + m)) * size;
    const size_t scratch_floats = own ? (size_t)(4 * (n + m)) : 0;
    double *work = malloc(doubles * sizeof(double) + factors);
    float *scratch = own ? malloc(scratch_floats * sizeof(float)) : NULL;
    if (!work || (own && !scratch)) {
        free(work);
        free(scratch);
        return 3;
    }
    f.psq = work;
    f.usq = f.psq + total;
    if (!own) {
        f.colpart = f.usq + total;
        f.rowsum = f.colpart + total * m;
        f.row_factor = f.rowsum + batch * n;
        f.col_factor = (char *)f.row_factor + (size_t)(batch * n) * size;
    }
    const int threads = (int)shape[AF_THREADS];
    run_chunks(total, elements, threads, factored_kinds[element].sums, &f, scratch, scratch_floats);
    if (!own) factored_kinds[element].factors(&f);
    run_chunks(total, elements, threads, factored_kinds[element].norm, &f, scratch, scratch_floats);
    double psq = 0, usq = 0;
    for (int64_t j = 0; j < total; j++) psq += f.psq[j], usq += f.usq[j];
    /* As torch's Python: max(eps2, RMS(p)) rho and max(1, RMS(U) / d) (a NaN RMS is passed
     * over, as Python's max passes it). */
    const double root = sqrt((double)elements), rms = sqrt(psq) / root;
    const double alpha = (rms > hyper[AF_EPS2] ? rms : hyper[AF_EPS2]) * hyper[AF_RHO];
    const double ratio = sqrt(usq) / (root * hyper[AF_D]), clip = ratio > 1.0 ? ratio : 1.0;
    f.shrink = hyper[AF_SHRINK];
    f.scale = -hyper[AF_SIGN] * alpha / clip;
    run_chunks(total, elements, threads, factored_kinds[element].apply, &f, scratch, scratch_floats);
    free(work);
    free(scratch);
    return 0;
}

/* The codecs on their own, for the tests that hold them equal to adamkit/optim/_precision.py. */
void adamkit_encode_q8(const float *in, int64_t n, uint8_t *codes, float *scales, int is_unsigned) {
    for (int64_t e = 0; e < n; e += TILE)
        encode_q8(codes + e, scales + e / BLOCK, in + e, (int)(n - e < TILE ? n - e : TILE),
                  is_unsigned);
}
void adamkit_decode_q8(const uint8_t *codes, const float *scales, int64_t n, float *out,
                       int is_unsigned) {
    for (int64_t e = 0; e < n; e += TILE)
        decode_q8(out + e, codes + e, scales + e / BLOCK, (int)(n - e < TILE ? n - e : TILE),
                  is_unsigned);
}
/* stochastic: 0 nearest; 1 the high 16 bits of the hash (a second moment, max, parameter);
 * 2 the low 16 bits (exp_avg). */
void adamkit_round_bf16(const float *in, int64_t n, uint16_t *out, int stochastic,
                        uint32_t seed) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t r = noise_hash((uint32_t)i ^ seed);
        out[i] = stochastic == 0   ? bf16_nearest(in[i])
                 : stochastic == 1 ? bf16_stochastic(in[i], r >> 16)
                                   : bf16_stochastic(in[i], r & 0xffffu);
    }
}
/* fp16 <-> fp32, for the test that holds them equal to torch's conversions. */
void adamkit_round_f16(const float *in, int64_t n, uint16_t *out) {
    for (int64_t i = 0; i < n; i++) out[i] = f16_nearest(in[i]);
}
void adamkit_f16_values(const uint16_t *in, int64_t n, float *out) {
    for (int64_t i = 0; i < n; i++) out[i] = f16_value(in[i]);
}
