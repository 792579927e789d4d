/* Bandwidth ceiling for an Adam-shaped update, used by bench_step.py.
 *
 * One in-place pass over a list of fp32 tensors that reads p, g, m, v and writes p, m, v
 * (7 x 4 = 28 bytes per element) with arithmetic as cheap as Adam's:
 *
 *     m = 0.9 m + 0.1 g;   v = 0.999 v + 0.001 g*g;   p -= 1e-3 m / (sqrt(v) + 1e-8)
 *
 * No optimizer can move these bytes faster than this loop, so its GB/s is the ceiling the
 * benchmark compares every implementation against. The elements of all tensors are split into
 * `nthreads` equal contiguous ranges (one per OpenMP thread), so 300 large tensors and 2000
 * small ones are balanced alike. Built at run time with
 *     gcc -O3 -march=native -fno-math-errno -fopenmp -shared -fPIC
 * (-fno-math-errno lets gcc vectorize sqrtf).
 */
#include <math.h>
#include <stdint.h>
#include <omp.h>

static void adam_like(float *restrict p, const float *restrict g, float *restrict m,
                      float *restrict v, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        const float gi = g[i];
        const float mi = 0.9f * m[i] + 0.1f * gi;
        const float vi = 0.999f * v[i] + 0.001f * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] -= 1e-3f * mi / (sqrtf(vi) + 1e-8f);
    }
}

void ceiling_step(int64_t count, float *const *p, const float *const *g, float *const *m,
                  float *const *v, const int64_t *numel, int nthreads) {
    int64_t total = 0;
    for (int64_t t = 0; t < count; ++t) total += numel[t];

#pragma omp parallel num_threads(nthreads)
    {
        const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
        const int64_t begin = total * tid / nt, end = total * (tid + 1) / nt;
        int64_t offset = 0; /* global index of tensor t's first element */
        for (int64_t t = 0; t < count && offset < end; offset += numel[t++]) {
            const int64_t lo = begin > offset ? begin : offset;
            const int64_t hi = end < offset + numel[t] ? end : offset + numel[t];
            if (lo < hi) {
                const int64_t s = lo - offset;
                adam_like(p[t] + s, g[t] + s, m[t] + s, v[t] + s, hi - lo);
            }
        }
    }
}
