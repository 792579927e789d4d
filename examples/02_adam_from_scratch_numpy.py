"""Seed example 'Adam optimizer PyTorch code': Adam from scratch on f(m) = m^2 - 2m + 1.

The seed's class has three bugs (numpy imported as `num` but called as `np`; the second moment
of b adds db instead of db**2; convergence tested by exact float equality). This version uses
adamkit.reference.adam, the NumPy rule adamkit's optimizers are tested against.
"""

import numpy as np

from adamkit import reference


def gradient(m: np.ndarray) -> np.ndarray:
    return 2 * m - 2  # d/dm (m^2 - 2m + 1)


w, b = np.array(0.0), np.array(0.0)
state_w = state_b = None
for t in range(1, 20001):
    w_old, b_old = w, b
    w, state_w = reference.adam(w, gradient(w), state_w, lr=0.01)
    b, state_b = reference.adam(b, gradient(b), state_b, lr=0.01)
    if abs(w - w_old) < 1e-10 and abs(b - b_old) < 1e-10:
        print(f"converged after {t} iterations: weight = {float(w):.10f}, b = {float(b):.10f}")
        break
    if t % 100 == 0:
        print(f"iteration {t}: weight = {float(w):.10f}")

assert abs(w - 1) < 1e-6 and abs(b - 1) < 1e-6
