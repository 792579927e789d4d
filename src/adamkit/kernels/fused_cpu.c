/* adamkit's fused CPU step: every algorithm of the Adam family in one pass over memory.
 *
 * One call updates every tensor of a bucket (a param group's tensors of one dtype): it
 * increments each tensor's step counter, computes that tensor's step-dependent scalars
 * (bias corrections, RAdam's rectification, NAdam's momentum schedule), then streams each
 * element through the update once: read p, g, m, v (and v_max); write p, m, v (and v_max).
 * Nothing is allocated per element, so the step's extra memory is a few pointers per tensor.
 * Work is split into fixed-size chunks across OpenMP threads, so 2000 tiny tensors and one huge
 * tensor both keep every thread busy.
 *
 * The element math runs in the element type (float for fp32, double for fp64), with the
 * operation order of torch's fused Adam CPU kernel (exp_avg by lerp; denom = sqrt(v) /
 * sqrt(bc2) + eps). Step scalars are computed in double, as torch computes them in Python.
 * Compiled at first use by adamkit/kernels/_build.py and cached; see that file.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { ADAM = 0, RADAM = 1, NADAM = 2, ADAMAX = 3 };
enum { MAXIMIZE = 1, DECOUPLED = 2, AMSGRAD = 4, STEP_F64 = 8 };
#define CHUNK 16384
enum { K_ADAM, K_AMSGRAD, K_RADAM, K_RADAM_PLAIN, K_NADAM, K_ADAMAX };

typedef struct {
    double a, b, c; /* per-algorithm step scalars, see step_scalars() */
    double t;       /* the step count, after this step's increment */
    int kind;       /* which element loop: K_ADAM, K_AMSGRAD, K_RADAM, ... */
} scalars_t;

static double bump(void *step, int f64) {
    if (f64) return ++*(double *)step;
    return (double)++*(float *)step;
}

/* NAdam keeps the running product of mu as a 0-d tensor of the step's dtype; torch multiplies
 * it in that dtype, so the product is rounded the same way here. */
static double times_mu(void *product, int f64, double mu) {
    if (f64) return *(double *)product *= mu;
    return (double)(*(float *)product *= (float)mu);
}

/* NAdam: p -= (a * g + c * m) / (sqrt(v) / b + eps), after multiplying the running product of
 * mu by this step's mu. */
static scalars_t nadam_scalars(int flags, double mu, double mu_next, double b, void *mu_product,
                               double lr) {
    scalars_t s = {0.0, b, 0.0, 0.0, K_NADAM};
    double product = times_mu(mu_product, flags & STEP_F64, mu);
    s.a = lr * (1.0 - mu) / (1.0 - product);
    s.c = lr * mu_next / (1.0 - product * mu_next);
    return s;
}

static scalars_t step_scalars(int algo, int flags, double t, void *mu_product, double lr,
                              double beta1, double beta2, double momentum_decay) {
    scalars_t s = {0.0, 0.0, 0.0, 0.0, K_ADAM};
    double bc1 = 1.0 - pow(beta1, t);
    double bc2 = 1.0 - pow(beta2, t);
    switch (algo) {
    case ADAM: /* p -= a * m / (sqrt(v) / b + eps) */
        s.a = lr / bc1;
        s.b = sqrt(bc2);
        s.kind = flags & AMSGRAD ? K_AMSGRAD : K_ADAM;
        break;
    case RADAM: {
        double rho_inf = 2.0 / (1.0 - beta2) - 1.0;
        double beta2_t = pow(beta2, t);
        double rho_t = rho_inf - 2.0 * t * beta2_t / (1.0 - beta2_t);
        if (rho_t > 5.0) { /* p -= a * m / (sqrt(v) + eps) */
            double r = sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                            ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t));
            s.a = lr * r * sqrt(bc2) / bc1;
            s.kind = K_RADAM;
        } else { /* p -= a * m */
            s.a = lr / bc1;
            s.kind = K_RADAM_PLAIN;
        }
        break;
    }
    case NADAM: {
        double mu = beta1 * (1.0 - 0.5 * pow(0.96, t * momentum_decay));
        double mu_next = beta1 * (1.0 - 0.5 * pow(0.96, (t + 1.0) * momentum_decay));
        s = nadam_scalars(flags, mu, mu_next, sqrt(bc2), mu_product, lr);
        break;
    }
    case ADAMAX: /* p -= a * m / u */
        s.a = lr / bc1;
        s.kind = K_ADAMAX;
        break;
    }
    return s;
}

/* The scalars of the last step count seen: the tensors of a bucket nearly always share one,
 * and the pow() calls cost more than the rest of the host's work (2000 tensors: 120 us).
 * NAdam's running product differs per tensor, so only its mu schedule is remembered. */
typedef struct {
    double t;          /* NAN until the first call */
    scalars_t s;       /* step_scalars at t (not NAdam) */
    double mu, mu_next, b;  /* NAdam's schedule at t, and sqrt(1 - beta2^t) */
} memo_t;

static scalars_t scalars_at(memo_t *memo, int algo, int flags, double t, void *mu_product,
                            double lr, double beta1, double beta2, double momentum_decay) {
    if (algo != NADAM) {
        if (memo->t != t) {
            memo->s = step_scalars(algo, flags, t, NULL, lr, beta1, beta2, momentum_decay);
            memo->t = t;
        }
        return memo->s;
    }
    if (memo->t != t) {
        memo->mu = beta1 * (1.0 - 0.5 * pow(0.96, t * momentum_decay));
        memo->mu_next = beta1 * (1.0 - 0.5 * pow(0.96, (t + 1.0) * momentum_decay));
        memo->b = sqrt(1.0 - pow(beta2, t));
        memo->t = t;
    }
    return nadam_scalars(flags, memo->mu, memo->mu_next, memo->b, mu_product, lr);
}

/* Per tensor: increment its step, compute its step scalars, and number its CHUNK-sized chunks
 * (tensor k owns chunks first[k] .. first[k+1]-1). Returns nonzero if memory ran out. */
static int plan(int algo, int flags, double beta1, double beta2, double lr, double momentum_decay,
                int64_t count, const int64_t *numels, void **steps, void **mu_products,
                scalars_t **scalars, int64_t **starts) {
    scalars_t *s = malloc(sizeof(scalars_t) * (size_t)(count ? count : 1));
    int64_t *first = malloc(sizeof(int64_t) * (size_t)(count + 1));
    if (!s || !first) {
        free(s);
        free(first);
        return 1;
    }
    first[0] = 0;
    memo_t memo = {.t = NAN};
    for (int64_t k = 0; k < count; k++) {
        double t = bump(steps[k], flags & STEP_F64);
        s[k] = scalars_at(&memo, algo, flags, t, mu_products ? mu_products[k] : NULL, lr, beta1,
                          beta2, momentum_decay);
        s[k].t = t;
        first[k + 1] = first[k] + (numels[k] + CHUNK - 1) / CHUNK;
    }
    *scalars = s;
    *starts = first;
    return 0;
}

/* The host half of a step whose element loop runs elsewhere (adamkit's Triton kernel on a GPU):
 * increment each tensor's step (and NAdam's mu product) and write its scalars to out, as
 * out[5k .. 5k+4] = a, b, c, kind, t (the step count, which seeds stochastic rounding). The same
 * scalars as the CPU kernel's, so both paths agree. */
void adamkit_step_scalars(int algo, int flags, double lr, double beta1, double beta2,
                          double momentum_decay, int64_t count, void **steps, void **mu_products,
                          double *out) {
    memo_t memo = {.t = NAN};
    for (int64_t k = 0; k < count; k++) {
        double t = bump(steps[k], flags & STEP_F64);
        scalars_t s = scalars_at(&memo, algo, flags, t, mu_products ? mu_products[k] : NULL, lr,
                                 beta1, beta2, momentum_decay);
        out[5 * k] = s.a;
        out[5 * k + 1] = s.b;
        out[5 * k + 2] = s.c;
        out[5 * k + 3] = (double)s.kind;
        out[5 * k + 4] = t;
    }
}

/* Only the increments (torch's fused Adam on a GPU computes its own scalars): one call where
 * torch._foreach_add_ over 2000 CPU scalars takes milliseconds. The new counts also go to
 * counts[k] as float (what torch's fused kernels read), when counts is not NULL. */
void adamkit_count_steps(int64_t count, void **steps, int f64, float *counts) {
    for (int64_t k = 0; k < count; k++) {
        double t = bump(steps[k], f64);
        if (counts) counts[k] = (float)t;
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

/* Element loops: one per (update kind, weight decay mode, dtype), each a straight line the
 * compiler vectorises. `decay` is 0 (none), 1 (coupled L2: g += wd p) or 2 (decoupled:
 * p *= 1 - lr wd); `sign` is -1 for maximize (exact: -1 * g == -g). The maxima are written as
 * `a > b ? a : b` so a NaN second moment propagates as in torch. */
#define HEAD(T, DECAY)                                                                          \
    T grad = sign * g[i], param = p[i];                                                         \
    if (DECAY == 1) grad += wd * param;                                                         \
    if (DECAY == 2) param *= shrink;                                                            \
    T mi = m[i] + one_minus_beta1 * (grad - m[i]);                                              \
    m[i] = mi;
#define SECOND(T) T vi = beta2 * v[i] + one_minus_beta2 * grad * grad; v[i] = vi;

#define BODY_ADAM(T, SQRT, FABS, DIVB) SECOND(T) p[i] = param - a * mi / (SQRT(vi) DIVB b + eps);
#define BODY_AMSGRAD(T, SQRT, FABS, DIVB)                                                             \
    SECOND(T) T old = vmax[i], top = old > vi ? old : vi;                                       \
    vmax[i] = top;                                                                              \
    p[i] = param - a * mi / (SQRT(top) DIVB b + eps);
#define BODY_RADAM(T, SQRT, FABS, DIVB) SECOND(T) p[i] = param - a * mi / (SQRT(vi) + eps);
#define BODY_RADAM_PLAIN(T, SQRT, FABS, DIVB) SECOND(T) p[i] = param - a * mi;
/* One division where torch's two addcdiv_ take two: NAdam would otherwise be compute-bound. */
#define BODY_NADAM(T, SQRT, FABS, DIVB)                                                               \
    SECOND(T) T denom = SQRT(vi) DIVB b + eps;                                                     \
    p[i] = param - (a * grad + c * mi) / denom;
#define BODY_ADAMAX(T, SQRT, FABS, DIVB)                                                              \
    T u = beta2 * v[i], norm = FABS(grad) + eps;                                                \
    u = u > norm ? u : norm;                                                                    \
    v[i] = u;                                                                                   \
    p[i] = param - a * mi / u;

#define DEFINE_LOOP(SUFFIX, T, SQRT, FABS, DIVB, KIND, DECAY)                                         \
    static void loop_##SUFFIX##_##KIND##_##DECAY(                                               \
        T sign, T shrink, T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T wd, T a, T b, \
        T c, int64_t n, T *restrict p, const T *restrict g, T *restrict m, T *restrict v,       \
        T *restrict vmax) {                                                                     \
        (void)shrink, (void)wd, (void)b, (void)c, (void)vmax, (void)one_minus_beta2, (void)eps; \
        for (int64_t i = 0; i < n; i++) {                                                       \
            HEAD(T, DECAY)                                                                      \
            BODY_##KIND(T, SQRT, FABS, DIVB)                                                          \
        }                                                                                       \
    }
#define DEFINE_KIND(SUFFIX, T, SQRT, FABS, DIVB, KIND)                                                \
    DEFINE_LOOP(SUFFIX, T, SQRT, FABS, DIVB, KIND, 0)                                                 \
    DEFINE_LOOP(SUFFIX, T, SQRT, FABS, DIVB, KIND, 1)                                                 \
    DEFINE_LOOP(SUFFIX, T, SQRT, FABS, DIVB, KIND, 2)
/* The arguments every element loop takes, as dispatch_<SUFFIX> names them. */
#define LOOP_ARGS(T)                                                                            \
    (sign, shrink, one_minus_beta1, (T)beta2, one_minus_beta2, (T)eps, (T)wd, (T)s->a, (T)s->b, \
     (T)s->c, n, p, g, m, v, vmax)
#define CASE_KIND(SUFFIX, KIND, DECAY, ARGS)                                                    \
    case K_##KIND:                                                                              \
        if (DECAY == 0) loop_##SUFFIX##_##KIND##_0 ARGS;                                        \
        else if (DECAY == 1) loop_##SUFFIX##_##KIND##_1 ARGS;                                   \
        else loop_##SUFFIX##_##KIND##_2 ARGS;                                                   \
        break;

#define DEFINE_LOOPS(SUFFIX, T, SQRT, FABS, DIVB)                                                \
    DEFINE_KIND(SUFFIX, T, SQRT, FABS, DIVB, ADAM)                                                    \
    DEFINE_KIND(SUFFIX, T, SQRT, FABS, DIVB, AMSGRAD)                                                 \
    DEFINE_KIND(SUFFIX, T, SQRT, FABS, DIVB, RADAM)                                                   \
    DEFINE_KIND(SUFFIX, T, SQRT, FABS, DIVB, RADAM_PLAIN)                                             \
    DEFINE_KIND(SUFFIX, T, SQRT, FABS, DIVB, NADAM)                                                   \
    DEFINE_KIND(SUFFIX, T, SQRT, FABS, DIVB, ADAMAX)                                                  \
                                                                                                \
    /* Scalars derived from the hyperparameters are computed in double and rounded once, as  \
     * torch passes Python floats (1 - beta2 = 0.001 exactly, not 1 - (float)0.999). */       \
    static void dispatch_##SUFFIX(int kind, int flags, double lr, double beta1, double beta2,  \
                                  double eps, double wd, const scalars_t *s, int64_t n, T *p,   \
                                  const T *g, T *m, T *v, T *vmax) {                            \
        const int decay = wd == 0 ? 0 : (flags & DECOUPLED ? 2 : 1);                            \
        const T sign = flags & MAXIMIZE ? (T)-1 : (T)1;                                         \
        const T shrink = (T)(1.0 - lr * wd), one_minus_beta1 = (T)(1.0 - beta1);               \
        const T one_minus_beta2 = (T)(1.0 - beta2);                                             \
        switch (kind) {                                                                         \
            CASE_KIND(SUFFIX, ADAM, decay, LOOP_ARGS(T))                                        \
            CASE_KIND(SUFFIX, AMSGRAD, decay, LOOP_ARGS(T))                                     \
            CASE_KIND(SUFFIX, RADAM, decay, LOOP_ARGS(T))                                       \
            CASE_KIND(SUFFIX, RADAM_PLAIN, decay, LOOP_ARGS(T))                                 \
            CASE_KIND(SUFFIX, NADAM, decay, LOOP_ARGS(T))                                       \
            CASE_KIND(SUFFIX, ADAMAX, decay, LOOP_ARGS(T))                                      \
        }                                                                                       \
    }

/* The exact loops (torch's operation order) and the kernel entry for one element type. */
#define DEFINE_STEP(SUFFIX, T, SQRT, FABS)                                                       \
    DEFINE_LOOPS(SUFFIX, T, SQRT, FABS, /)                                                      \
    int adamkit_fused_step_##SUFFIX(int algo, int flags, double lr, double beta1, double beta2, \
                                    double eps, double wd, double momentum_decay, int64_t count, \
                                    const int64_t *numels, T **params, T **grads,              \
                                    T **exp_avgs, T **seconds, T **maxes, void **steps,         \
                                    void **mu_products, int threads) {                          \
        scalars_t *s;                                                                           \
        int64_t *first;                                                                         \
        if (plan(algo, flags, beta1, beta2, lr, momentum_decay, count, numels, steps,           \
                 mu_products, &s, &first))                                                      \
            return 1;                                                                           \
        const int64_t chunks = first[count];                                                    \
        _Pragma("omp parallel for schedule(static) num_threads(threads) if(chunks > 1)")        \
        for (int64_t j = 0; j < chunks; j++) {                                                  \
            const int64_t k = tensor_of(first, count, j), start = (j - first[k]) * CHUNK;       \
            const int64_t n = numels[k] - start < CHUNK ? numels[k] - start : CHUNK;            \
            dispatch_##SUFFIX(s[k].kind, flags, lr, beta1, beta2, eps, wd, &s[k], n,             \
                           params[k] + start, grads[k] + start, exp_avgs[k] + start,            \
                           seconds[k] + start, maxes ? maxes[k] + start : NULL);                \
        }                                                                                       \
        free(s);                                                                                \
        free(first);                                                                            \
        return 0;                                                                               \
    }

DEFINE_STEP(f32, float, sqrtf, fabsf)
DEFINE_STEP(f64, double, sqrt, fabs)

/* ------------------------------------------------------------------------------------------
 * Low-precision storage: bf16 parameters, bf16 or 8-bit moments (adamkit/optim/_precision.py
 * defines the formats and implements them with torch operations; this is the same, bit for
 * bit). A chunk is processed in tiles of TILE elements: each stored tensor of the tile is
 * decoded into an fp32 buffer on the stack (fp32 tensors are used in place), the fp32 element
 * loop above runs on the buffers, and the results are encoded back. Memory is read and written
 * once; the buffers stay in L1. 8-bit codes carry one scale per BLOCK elements.
 */
/* The element loops of low-precision storage multiply by 1 / sqrt(1 - beta2^t) where the exact
 * loops divide by sqrt(1 - beta2^t): one division fewer per element, a rounding difference
 * (1 ulp of fp32) far below that of the storage. */
DEFINE_LOOPS(wide, float, sqrtf, fabsf, *)

#define BLOCK 256
#define TILE 1024 /* a multiple of BLOCK that divides CHUNK */
enum { F_F32 = 0, F_BF16 = 1, F_BF16_SR = 2, F_Q8 = 3 };
/* Streams of rounding noise: one hash per element serves both moments (exp_avg takes its low
 * 16 bits, the second moment its high 16 bits); max_exp_avg_sq and the parameter have their own. */
enum { SALT_MOMENTS = 0, SALT_MAX = 2, SALT_PARAM = 3 };
#define M_OFFSET (112 << 23) /* float bits of 2**-15, the exp_avg code's smallest binade */
#define V_OFFSET (96 << 23)  /* 2**-31, the second moments' */
#define HALF_ULP (1 << 19)   /* half a unit of the 3-bit mantissa */
/* Codes of non-finite values, decoded as themselves whatever the block's scale: exp_avg's
 * magnitudes 125 (NaN) and 126 (infinity, signed by bit 7), the unsigned code's 253 and 254
 * (_precision.py explains why these: finite values never reach them, and 127 and 255 stay
 * finite for the checkpoints written before). */
#define M_NAN 125u
#define M_INF (M_NAN + 1u) /* encode_q8 counts on each infinity's code following its NaN's */
#define V_NAN 253u
#define V_INF (V_NAN + 1u)
#define INF_BITS 0x7f800000u /* +inf; a magnitude's bits above it are a NaN's */
#define NAN_BITS 0x7fc00000u /* the NaN every path decodes to */

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
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    return x ^ (x >> 16);
}
/* The noise of element i is noise_hash(i ^ seed). Its first half round is enough: for a fixed
 * element, i ^ seed is uniform over the steps because the seed is, and a bijection of a
 * uniform value is uniform, so every rounding is unbiased; the multiply only decorrelates
 * neighbouring elements within a step (it costs half of lowbias32). */
static inline uint32_t noise_hash(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    return x ^ (x >> 15);
}
static uint32_t rounding_seed(double step, uint32_t salt, uint32_t stream) {
    return mix32((uint32_t)(int64_t)step * 0x9e3779b9u + salt * 0x85ebca6bu +
                 stream * 0xc2b2ae35u);
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
/* Element `first + i` takes the high 16 bits of noise_hash(index ^ seed). */
static void store_bf16_stochastic(uint16_t *restrict out, const float *restrict in, int n,
                                  uint32_t seed, int64_t first) {
    const uint32_t base = (uint32_t)first;
    for (int i = 0; i < n; i++)
        out[i] = bf16_stochastic(in[i], noise_hash((base + (uint32_t)i) ^ seed) >> 16);
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
static inline __attribute__((always_inline)) void encode_q8(uint8_t *restrict codes,
                                                            float *restrict scales,
                                                            const float *restrict in, int n,
                                                            int is_unsigned) {
    const int32_t offset = is_unsigned ? V_OFFSET : M_OFFSET, most = is_unsigned ? 255 : 127;
    for (int b = 0; b * BLOCK < n; b++) {
        const int lo = b * BLOCK, hi = n < lo + BLOCK ? n : lo + BLOCK;
        uint32_t most_bits = 0;
        for (int i = lo; i < hi; i++) {
            uint32_t a = bits_of(in[i]) & 0x7fffffffu;
            most_bits = a > most_bits ? a : most_bits;
        }
        const int special = most_bits >= INF_BITS; /* the block holds a NaN or an infinity */
        if (special) most_bits = finite_max_bits(in + lo, hi - lo);
        const float top = float_of(most_bits);
        scales[b] = top;
        const float inverse = 1.0f / (top > 0.0f ? top : 1.0f);
        for (int i = lo; i < hi; i++) {
            int32_t c = ((int32_t)bits_of(fabsf(in[i]) * inverse) - offset + HALF_ULP) >> 20;
            c = c < 0 ? 0 : (c > most ? most : c);
            codes[i] = (uint8_t)(c | (!is_unsigned && in[i] < 0.0f ? 128 : 0));
        }
        if (special) encode_special(codes + lo, in + lo, hi - lo, is_unsigned);
    }
}

/* One stored state tensor's tile as fp32: in place for fp32, else decoded into `buffer`. */
static float *load_state(int fmt, void *base, const float *scales, int64_t e, int n,
                         int is_unsigned, float *buffer) {
    if (fmt == F_F32) return (float *)base + e;
    if (fmt == F_Q8)
        decode_q8(buffer, (const uint8_t *)base + e, scales + e / BLOCK, n, is_unsigned);
    else
        load_bf16(buffer, (const uint16_t *)base + e, n);
    return buffer;
}
static void store_state(int fmt, void *base, float *scales, int64_t e, int n, int is_unsigned,
                        const float *value, uint32_t seed) {
    if (fmt == F_Q8)
        encode_q8((uint8_t *)base + e, scales + e / BLOCK, value, n, is_unsigned);
    else if (fmt == F_BF16_SR)
        store_bf16_stochastic((uint16_t *)base + e, value, n, seed, e);
    else if (fmt == F_BF16)
        store_bf16((uint16_t *)base + e, value, n);
}

/* The fused step for fp32 or bf16 parameters whose state or rounding is not plain fp32.
 * param_fmt: F_F32, F_BF16 (round to nearest) or F_BF16_SR (stochastic); gradients have the
 * parameter's dtype. state_fmts[k]: tensor k's moments are F_F32, F_BF16, F_BF16_SR or F_Q8
 * (then *_scales[k] hold its block scales). salts[k] salts tensor k's stochastic rounding.
 * Adamax's exp_inf, like exp_avg_sq and max_exp_avg_sq, is non-negative: the unsigned code. */
int adamkit_fused_step_wide(int algo, int flags, double lr, double beta1, double beta2,
                            double eps, double wd, double momentum_decay, int64_t count,
                            const int64_t *numels, void **params, void **grads, void **exp_avgs,
                            void **seconds, void **maxes, void **steps, void **mu_products,
                            int threads, int param_fmt, const uint8_t *state_fmts,
                            float **m_scales, float **v_scales, float **max_scales,
                            const uint32_t *salts) {
    scalars_t *s;
    int64_t *first;
    if (plan(algo, flags, beta1, beta2, lr, momentum_decay, count, numels, steps, mu_products, &s,
             &first))
        return 1;
    const int64_t chunks = first[count];
#pragma omp parallel for schedule(static) num_threads(threads) if (chunks > 1)
    for (int64_t j = 0; j < chunks; j++) {
        const int64_t k = tensor_of(first, count, j), start = (j - first[k]) * CHUNK;
        const int64_t end = numels[k] - start < CHUNK ? numels[k] : start + CHUNK;
        const int fmt = state_fmts[k];
        scalars_t sk = s[k];
        sk.b = 1.0 / sk.b; /* dispatch_wide multiplies by it (unused where b is 0) */
        const uint32_t seed_p = rounding_seed(s[k].t, salts[k], SALT_PARAM);
        const uint32_t seed_mv = rounding_seed(s[k].t, salts[k], SALT_MOMENTS);
        const uint32_t seed_x = rounding_seed(s[k].t, salts[k], SALT_MAX);
        float *ms = m_scales ? m_scales[k] : NULL, *vs = v_scales ? v_scales[k] : NULL;
        float *xs = max_scales ? max_scales[k] : NULL;
        _Alignas(64) float pb[TILE], gb[TILE], mb[TILE], vb[TILE], xb[TILE];
        for (int64_t e = start; e < end; e += TILE) {
            const int n = (int)(end - e < TILE ? end - e : TILE);
            float *p = (float *)params[k] + e;
            const float *g = (const float *)grads[k] + e;
            if (param_fmt != F_F32) {
                load_bf16(pb, (const uint16_t *)params[k] + e, n);
                load_bf16(gb, (const uint16_t *)grads[k] + e, n);
                p = pb;
                g = gb;
            }
            float *m = load_state(fmt, exp_avgs[k], ms, e, n, 0, mb);
            float *v = load_state(fmt, seconds[k], vs, e, n, 1, vb);
            float *x = maxes ? load_state(fmt, maxes[k], xs, e, n, 1, xb) : NULL;
            dispatch_wide(sk.kind, flags, lr, beta1, beta2, eps, wd, &sk, n, p, g, m, v, x);
            if (param_fmt == F_BF16_SR)
                store_bf16_stochastic((uint16_t *)params[k] + e, pb, n, seed_p, e);
            else if (param_fmt == F_BF16)
                store_bf16((uint16_t *)params[k] + e, pb, n);
            if (fmt == F_BF16_SR) {
                store_moments_stochastic((uint16_t *)exp_avgs[k] + e, (uint16_t *)seconds[k] + e,
                                         m, v, n, seed_mv, e);
            } else {
                store_state(fmt, exp_avgs[k], ms, e, n, 0, m, 0);
                store_state(fmt, seconds[k], vs, e, n, 1, v, 0);
            }
            if (maxes) store_state(fmt, maxes[k], xs, e, n, 1, x, seed_x);
        }
    }
    free(s);
    free(first);
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
