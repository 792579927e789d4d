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

enum { ADAM = 0, RADAM = 1, NADAM = 2, ADAMAX = 3 };
enum { MAXIMIZE = 1, DECOUPLED = 2, AMSGRAD = 4, STEP_F64 = 8 };
#define CHUNK 16384
enum { K_ADAM, K_AMSGRAD, K_RADAM, K_RADAM_PLAIN, K_NADAM, K_ADAMAX };

typedef struct {
    double a, b, c; /* per-algorithm step scalars, see step_scalars() */
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

static scalars_t step_scalars(int algo, int flags, double t, void *mu_product, double lr,
                              double beta1, double beta2, double momentum_decay) {
    scalars_t s = {0.0, 0.0, 0.0, K_ADAM};
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
    case NADAM: { /* p -= (a * g + c * m) / (sqrt(v) / b + eps) */
        double mu = beta1 * (1.0 - 0.5 * pow(0.96, t * momentum_decay));
        double mu_next = beta1 * (1.0 - 0.5 * pow(0.96, (t + 1.0) * momentum_decay));
        double product = times_mu(mu_product, flags & STEP_F64, mu);
        s.a = lr * (1.0 - mu) / (1.0 - product);
        s.c = lr * mu_next / (1.0 - product * mu_next);
        s.b = sqrt(bc2);
        s.kind = K_NADAM;
        break;
    }
    case ADAMAX: /* p -= a * m / u */
        s.a = lr / bc1;
        s.kind = K_ADAMAX;
        break;
    }
    return s;
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

#define BODY_ADAM(T, SQRT, FABS) SECOND(T) p[i] = param - a * mi / (SQRT(vi) / b + eps);
#define BODY_AMSGRAD(T, SQRT, FABS)                                                             \
    SECOND(T) T old = vmax[i], top = old > vi ? old : vi;                                       \
    vmax[i] = top;                                                                              \
    p[i] = param - a * mi / (SQRT(top) / b + eps);
#define BODY_RADAM(T, SQRT, FABS) SECOND(T) p[i] = param - a * mi / (SQRT(vi) + eps);
#define BODY_RADAM_PLAIN(T, SQRT, FABS) SECOND(T) p[i] = param - a * mi;
/* One division where torch's two addcdiv_ take two: NAdam would otherwise be compute-bound. */
#define BODY_NADAM(T, SQRT, FABS)                                                               \
    SECOND(T) T denom = SQRT(vi) / b + eps;                                                     \
    p[i] = param - (a * grad + c * mi) / denom;
#define BODY_ADAMAX(T, SQRT, FABS)                                                              \
    T u = beta2 * v[i], norm = FABS(grad) + eps;                                                \
    u = u > norm ? u : norm;                                                                    \
    v[i] = u;                                                                                   \
    p[i] = param - a * mi / u;

#define DEFINE_LOOP(SUFFIX, T, SQRT, FABS, KIND, DECAY)                                         \
    static void loop_##SUFFIX##_##KIND##_##DECAY(                                               \
        T sign, T shrink, T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T wd, T a, T b, \
        T c, int64_t n, T *restrict p, const T *restrict g, T *restrict m, T *restrict v,       \
        T *restrict vmax) {                                                                     \
        (void)shrink, (void)wd, (void)b, (void)c, (void)vmax, (void)one_minus_beta2, (void)eps; \
        for (int64_t i = 0; i < n; i++) {                                                       \
            HEAD(T, DECAY)                                                                      \
            BODY_##KIND(T, SQRT, FABS)                                                          \
        }                                                                                       \
    }
#define DEFINE_KIND(SUFFIX, T, SQRT, FABS, KIND)                                                \
    DEFINE_LOOP(SUFFIX, T, SQRT, FABS, KIND, 0)                                                 \
    DEFINE_LOOP(SUFFIX, T, SQRT, FABS, KIND, 1)                                                 \
    DEFINE_LOOP(SUFFIX, T, SQRT, FABS, KIND, 2)
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

#define DEFINE_STEP(SUFFIX, T, SQRT, FABS)                                                       \
    DEFINE_KIND(SUFFIX, T, SQRT, FABS, ADAM)                                                    \
    DEFINE_KIND(SUFFIX, T, SQRT, FABS, AMSGRAD)                                                 \
    DEFINE_KIND(SUFFIX, T, SQRT, FABS, RADAM)                                                   \
    DEFINE_KIND(SUFFIX, T, SQRT, FABS, RADAM_PLAIN)                                             \
    DEFINE_KIND(SUFFIX, T, SQRT, FABS, NADAM)                                                   \
    DEFINE_KIND(SUFFIX, T, SQRT, FABS, ADAMAX)                                                  \
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
    }                                                                                           \
                                                                                                \
    int adamkit_fused_step_##SUFFIX(int algo, int flags, double lr, double beta1, double beta2, \
                                    double eps, double wd, double momentum_decay, int64_t count, \
                                    const int64_t *numels, T **params, T **grads,              \
                                    T **exp_avgs, T **seconds, T **maxes, void **steps,         \
                                    void **mu_products, int threads) {                          \
        scalars_t *s = malloc(sizeof(scalars_t) * (size_t)(count ? count : 1));                 \
        int64_t *first = malloc(sizeof(int64_t) * (size_t)(count + 1));                         \
        if (!s || !first) {                                                                     \
            free(s);                                                                            \
            free(first);                                                                        \
            return 1;                                                                           \
        }                                                                                       \
        first[0] = 0;                                                                           \
        for (int64_t k = 0; k < count; k++) {                                                   \
            double t = bump(steps[k], flags & STEP_F64);                                        \
            s[k] = step_scalars(algo, flags, t, mu_products ? mu_products[k] : NULL, lr, beta1, \
                                beta2, momentum_decay);                                         \
            first[k + 1] = first[k] + (numels[k] + CHUNK - 1) / CHUNK;                          \
        }                                                                                       \
        const int64_t chunks = first[count];                                                    \
        _Pragma("omp parallel for schedule(static) num_threads(threads) if(chunks > 1)")        \
        for (int64_t j = 0; j < chunks; j++) {                                                  \
            int64_t lo = 0, hi = count; /* the tensor holding chunk j: first[k] <= j < first[k+1] */ \
            while (hi - lo > 1) {                                                               \
                int64_t mid = (lo + hi) / 2;                                                    \
                if (first[mid] <= j) lo = mid; else hi = mid;                                   \
            }                                                                                   \
            const int64_t k = lo, start = (j - first[k]) * CHUNK;                               \
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
