"""Problem set 4, Jacobians: the hidden-test parts.

Every learner function here returns float64 (the Jacobians are analysis tools, computed in float64
whatever the input dtype, like :mod:`normcourse.reference.jacobians`). Cases mix random widths, eps and
gains with the edge cases of the set: width 1 and 2 (where the LayerNorm spectrum degenerates), a
constant input (zero variance, where the bound 1/sqrt(eps) is attained), magnitude 1e4 and float32 input.

Tolerances: float64 inputs use the course default 1e-10 (a correct closed form differs from the
reference by rounding only). For float32 inputs we allow 1e-6 relative: the reference widens the input
to float64 exactly, but a learner may compute the statistics in float32 before widening, which costs a
few float32 ulps (6e-8 each) in s; 1e-6 still catches every wrong formula (missing terms are O(1/d)).
"""

from __future__ import annotations

import numpy as np

from normcourse.reference import jacobians as ref
from normcourse.grading.parts import Case, Part, register

PROBLEM_SET = "ps04_jacobians"
FLOAT32_TOL = {"rtol": 1e-6, "atol": 1e-6}


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _vector_cases(rng: np.random.Generator, *, min_width: int, gain: str, eps_none: bool = False,
                  n_random: int = 6) -> list[Case]:
    """Random vectors plus the edge cases, as ``Case(args=(x,), kwargs={weight, eps})``.

    Args:
        min_width: smallest meaningful width (1 for LN/RMSNorm, 2 for a BatchNorm column).
        gain: ``"vector"`` (per-element gain), ``"scalar"`` (one gain, BatchNorm) or ``"none"``.
        eps_none: also try ``eps=None`` (RMSNorm's machine epsilon of the input dtype).
    """
    def weight_for(d: int, dtype=np.float64):
        if gain == "vector":
            return rng.normal(size=d).astype(dtype)
        if gain == "scalar":
            return float(rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 3.0))
        return None

    def kwargs(d: int, with_gain: bool, eps) -> dict:
        kw = {"eps": eps}
        if with_gain and gain != "none":
            kw["weight"] = weight_for(d)
        return kw

    cases = []
    for i in range(n_random):
        d = int(rng.integers(3, 40))
        eps = None if (eps_none and i % 3 == 2) else _log_uniform(rng, 1e-6, 1e-1)
        x = rng.normal(loc=rng.normal(), scale=_log_uniform(rng, 0.1, 10.0), size=d)
        with_gain = i % 2 == 1
        label = f"random x of width {d}, eps={eps if eps is None else f'{eps:.3g}'}" + \
            (", with gain" if with_gain and gain != "none" else "")
        cases.append(Case(label, (x,), kwargs(d, with_gain, eps)))
    if min_width <= 1:
        cases.append(Case("width d=1", (np.array([rng.normal()]),), {"eps": 1e-5}))
    cases.append(Case("width 2", (rng.normal(size=2),), kwargs(2, True, 1e-5)))
    cases.append(Case("width 2, without gain", (rng.normal(size=2),), {"eps": 1e-3}))
    cases.append(Case("constant input (zero variance)", (np.full(6, 2.5),), {"eps": 1e-5}))
    cases.append(Case("constant input (zero variance), with gain", (np.full(5, -1.0),),
                      kwargs(5, True, 1e-4)))
    cases.append(Case("magnitude 1e4", (1e4 * rng.normal(size=12),), kwargs(12, True, 1e-5)))
    cases.append(Case("magnitude 1e4, offset 1e4", (1e4 + 50.0 * rng.normal(size=8),), {"eps": 1e-5}))
    # small values for eps=None, so float32's epsilon (1.2e-7) visibly differs from float64's
    x32 = (rng.normal(size=9) * (0.01 if eps_none else 1.0)).astype(np.float32)
    kw32 = kwargs(9, True, None if eps_none else 1e-5)
    if isinstance(kw32.get("weight"), np.ndarray):
        kw32["weight"] = kw32["weight"].astype(np.float32)
    cases.append(Case("float32 input" + (", eps=None (float32 epsilon)" if eps_none else ""),
                      (x32,), kw32, **FLOAT32_TOL))
    return cases


def layer_norm_jacobian_cases(rng: np.random.Generator) -> list[Case]:
    return _vector_cases(rng, min_width=1, gain="vector")


def rms_norm_jacobian_cases(rng: np.random.Generator) -> list[Case]:
    return _vector_cases(rng, min_width=1, gain="vector", eps_none=True)


def batch_norm_jacobian_cases(rng: np.random.Generator) -> list[Case]:
    return _vector_cases(rng, min_width=2, gain="scalar")


def layer_norm_jacobian_eigen_cases(rng: np.random.Generator) -> list[Case]:
    return [Case(c.label, c.args, {"eps": c.kwargs["eps"]}, rtol=c.rtol, atol=c.atol)
            for c in _vector_cases(rng, min_width=1, gain="none")]


def spectral_norm_cases(rng: np.random.Generator) -> list[Case]:
    """Jacobians of random and edge-case vectors, plus generic matrices."""
    cases = []
    for c in layer_norm_jacobian_cases(rng):
        J = ref.layer_norm_jacobian(*c.args, **c.kwargs)
        cases.append(Case(f"the LayerNorm Jacobian of: {c.label}", (J,)))
    x32 = rng.normal(size=7).astype(np.float32)
    cases.append(Case("a float32 Jacobian", (ref.layer_norm_jacobian(x32).astype(np.float32),), rtol=1e-5))
    p, q = int(rng.integers(2, 8)), int(rng.integers(2, 8))
    cases.append(Case(f"a rectangular {p}x{q} Gaussian matrix", (rng.normal(size=(p, q)),)))
    u = rng.normal(size=(5, 1))
    cases.append(Case("a rank-one 5x5 matrix", (u @ u.T,)))
    cases.append(Case("a single row", (rng.normal(size=(1, 6)),)))
    cases.append(Case("the zero matrix", (np.zeros((4, 4)),)))
    cases.append(Case("a 1x1 matrix holding a negative number", (np.array([[-3.5]]),)))
    return cases


PARTS = [
    Part(PROBLEM_SET, "layer_norm_jacobian_hidden", "layer_norm_jacobian", ref.layer_norm_jacobian,
         layer_norm_jacobian_cases, points=3, seed=404,
         description="closed-form LayerNorm Jacobian of one vector, with and without a gain"),
    Part(PROBLEM_SET, "rms_norm_jacobian_hidden", "rms_norm_jacobian", ref.rms_norm_jacobian,
         rms_norm_jacobian_cases, points=2, seed=405,
         description="closed-form RMSNorm Jacobian of one vector; eps=None is the input dtype's epsilon"),
    Part(PROBLEM_SET, "batch_norm_jacobian_hidden", "batch_norm_jacobian", ref.batch_norm_jacobian,
         batch_norm_jacobian_cases, points=2, seed=406,
         description="training-mode BatchNorm Jacobian across the batch for one feature"),
    Part(PROBLEM_SET, "spectral_norm_hidden", "spectral_norm", ref.spectral_norm,
         spectral_norm_cases, points=1, seed=407,
         description="largest singular value of a matrix"),
    Part(PROBLEM_SET, "layer_norm_jacobian_eigenvalues_hidden", "layer_norm_jacobian_eigenvalues",
         ref.layer_norm_jacobian_eigen, layer_norm_jacobian_eigen_cases, points=2, seed=408,
         description="closed-form eigenvalues of the LayerNorm Jacobian, ascending"),
]

register(PARTS)
