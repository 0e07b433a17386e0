"""Fits the coefficients of quantsmith's branch-free f32 erfc (arch/bert.rs, used by exact GELU).

For a >= 0 we write erfc(a) = t * exp(-a^2 + P(t)) with t = 1 / (1 + a/2): P is smooth on
t in (0, 1] (it tends to -log(2 sqrt(pi)) as a -> infinity), so one polynomial covers the
whole half line and the evaluation needs no branches, which lets the compiler vectorise it.
The reference is Python's math.erfc (double precision). Prints Rust constants, highest
power first (Horner order), and the worst relative error of erfc over a in [0, 10].
"""
import math

import numpy as np

A_MAX = 10.0
DEGREE = 11

a = np.concatenate([np.linspace(0.0, A_MAX, 20001), np.geomspace(1e-6, A_MAX, 5001)])
t = 1.0 / (1.0 + 0.5 * a)
target = np.array([math.log(math.erfc(x)) for x in a]) + a * a - np.log(t)
# Chebyshev nodes in t would be ideal; dense sampling plus a least-squares fit in a
# Chebyshev basis is close enough to minimax for f32 use.
series = np.polynomial.chebyshev.Chebyshev.fit(t, target, DEGREE)
coef = series.convert(kind=np.polynomial.Polynomial).coef  # lowest power first

fit = np.polynomial.polynomial.polyval(t, coef)
approx = t * np.exp(-a * a + fit)
exact = np.array([math.erfc(x) for x in a])
print(f"// max relative error of erfc on [0, {A_MAX}] in f64: {np.max(np.abs(approx / exact - 1)):.3e}")
print(f"const ERFC_P: [f32; {DEGREE + 1}] = [")
for c in coef[::-1]:
    print(f"    {c:.9e},")
print("];")
