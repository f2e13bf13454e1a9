"""Problem set 4, Jacobians: the autograded parts (visible and hidden).

Every learner function here is numpy only (``forbid=(NO_TORCH,)``) and returns float64 (the Jacobians
are analysis tools, computed in float64 whatever the input dtype, like
:mod:`normcourse.reference.jacobians`).

- *Visible parts* (``layer_norm_jacobian``, ...) back the visible test cells: their cases are exactly
  the calls the cell makes (fixed inputs built from the same fixed seeds as the cell, no use of the
  part's ``rng``), so the grader's re-check confirms the visible verdict against the reference.
- *Hidden parts* (``..._hidden``) mix random widths, eps and gains with the edge cases of the set: width
  1 and 2 (where the LayerNorm spectrum degenerates), a constant input (zero variance, where the bound
  1/sqrt(eps) is attained), magnitude 1e4 and float32 input (with ``eps=None`` for RMSNorm: the input
  dtype's epsilon).

Tolerances: float64 inputs use the course default 1e-10 (a correct closed form differs from the
reference by rounding only). For float32 inputs we allow 1e-6 relative: the reference widens the input
to float64 exactly, but a learner may compute the statistics in float32 before widening, which costs a
few float32 ulps (6e-8 each) in s; 1e-6 still catches every wrong formula (missing terms are O(1/d))
and the float64 epsilon used for float32 input (the float32 case is built so that it changes r by 1e-3).
"""

from __future__ import annotations

import numpy as np

from normcourse.grading.compare import GradingError, assert_array_matches
from normcourse.grading.parts import Case, Part, register
from normcourse.grading.rules import NO_TORCH
from normcourse.reference import jacobians as ref

PROBLEM_SET = "ps04_jacobians"
FLOAT32_TOL = {"rtol": 1e-6, "atol": 1e-6}


def float64_compare(actual, expected, *, name, label, rtol, atol) -> None:
    """Compare arrays, after a check of this set's own dtype rule (float64 whatever the input dtype)."""
    if isinstance(actual, np.ndarray) and actual.dtype != np.float64:
        raise GradingError(f"{name} for case {label!r}: dtype {actual.dtype}, expected float64 (these are "
                           f"analysis tools: return float64 whatever the input dtype)")
    assert_array_matches(actual, expected, name=name, label=label, rtol=rtol, atol=atol)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


# ---------------------------------------------------------------- visible tests: the cells' own calls
# Each function rebuilds the inputs of its visible test cell from the cell's fixed seed, in the
# cell's order of draws (tests/grading/test_problems_ps04_06.py records the cell's calls and checks
# that they are exactly these cases). The part's rng is not used: visible cases never change.

def visible_layer_norm_jacobian_cases(_rng=None) -> list[Case]:
    rng = np.random.default_rng(4)
    x = rng.normal(size=7)
    gamma = rng.normal(size=7)
    return [Case("visible test: x of width 7, no gain, eps=1e-5", (x,)),
            Case("visible test: x of width 7, gain gamma, eps=0.1", (x,), {"weight": gamma, "eps": 0.1}),
            Case("visible test: x of width 7 as float32", (x.astype(np.float32),), **FLOAT32_TOL)]


def visible_rms_norm_jacobian_cases(_rng=None) -> list[Case]:
    rng = np.random.default_rng(5)
    x = rng.normal(size=6)
    gamma = rng.normal(size=6)
    small32 = (0.01 * x).astype(np.float32)
    return [Case("visible test: x of width 6, eps=1e-6", (x,), {"eps": 1e-6}),
            Case("visible test: x of width 6, gain gamma, eps=None (float64 epsilon)", (x,), {"weight": gamma}),
            Case("visible test: 0.01 * x as float32, eps=None (float32 epsilon)", (small32,), **FLOAT32_TOL)]


def visible_batch_norm_jacobian_cases(_rng=None) -> list[Case]:
    batch = np.random.default_rng(6).normal(loc=2.0, scale=3.0, size=(8, 3))
    return [Case("visible test: column 1 of an 8x3 batch, weight 1.5", (batch[:, 1],), {"weight": 1.5}),
            Case("visible test: column 2 of an 8x3 batch, no weight, eps=0.01", (batch[:, 2],), {"eps": 0.01})]


def _visible_layer_norm_jacobian_matrix(x, eps=1e-5):
    """The closed-form LayerNorm Jacobian, written out in the spectral_norm cell (fixed data)."""
    d = x.size
    s = np.sqrt(x.var() + eps)
    x_hat = (x - x.mean()) / s
    return (np.eye(d) - 1.0 / d - np.outer(x_hat, x_hat) / d) / s


def visible_spectral_norm_cases(_rng=None) -> list[Case]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=10)
    rectangular = rng.normal(size=(3, 5))
    u = rng.normal(size=(4, 1))
    rotation = np.array([[0.6, -0.8], [0.8, 0.6]])
    return [Case("visible test: diag(3, -5, 1)", (np.diag([3.0, -5.0, 1.0]),)),
            Case("visible test: 2 * a rotation", (2.0 * rotation,)),
            Case("visible test: the all-ones 2x3 matrix", (np.ones((2, 3)),)),
            Case("visible test: a 3x5 Gaussian matrix", (rectangular,)),
            Case("visible test: the rank-one matrix u u^T", (u @ u.T,)),
            Case("visible test: the zero matrix", (np.zeros((4, 4)),)),
            Case("visible test: the 1x1 matrix [[-3.5]]", (np.array([[-3.5]]),)),
            Case("visible test: the LayerNorm Jacobian of x of width 10",
                 (_visible_layer_norm_jacobian_matrix(x),)),
            Case("visible test: diag(3, -5, 1) as float32", (np.diag([3.0, -5.0, 1.0]).astype(np.float32),))]


def visible_eigenvalue_cases(_rng=None) -> list[Case]:
    rng = np.random.default_rng(8)
    return [Case(f"visible test: x of width {d}, eps=0.01", (rng.normal(size=d),), {"eps": 0.01})
            for d in (3, 9)]


# ---------------------------------------------------------------- hidden tests: random + edge cases
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


def _part(grade_id, function, reference, cases, points, seed, description, *, matrix=True):
    """A numpy-only part; ``matrix`` parts return float64 arrays (checked by :func:`float64_compare`),
    the others a number (the default comparison)."""
    extra = {"compare": float64_compare} if matrix else {}
    return Part(PROBLEM_SET, grade_id, function, reference, cases, points=points, seed=seed,
                description=description, forbid=(NO_TORCH,), **extra)


PARTS = [
    _part("layer_norm_jacobian", "layer_norm_jacobian", ref.layer_norm_jacobian,
          visible_layer_norm_jacobian_cases, 1, 414, "visible test: the cell's three calls against the reference"),
    _part("layer_norm_jacobian_hidden", "layer_norm_jacobian", ref.layer_norm_jacobian,
          layer_norm_jacobian_cases, 3, 404, "closed-form LayerNorm Jacobian of one vector, with and without a gain"),
    _part("rms_norm_jacobian", "rms_norm_jacobian", ref.rms_norm_jacobian,
          visible_rms_norm_jacobian_cases, 1, 415, "visible test: the cell's three calls against the reference"),
    _part("rms_norm_jacobian_hidden", "rms_norm_jacobian", ref.rms_norm_jacobian, rms_norm_jacobian_cases, 2,
          405, "closed-form RMSNorm Jacobian of one vector; eps=None is the input dtype's epsilon"),
    _part("batch_norm_jacobian", "batch_norm_jacobian", ref.batch_norm_jacobian,
          visible_batch_norm_jacobian_cases, 1, 416, "visible test: the cell's two calls against the reference"),
    _part("batch_norm_jacobian_hidden", "batch_norm_jacobian", ref.batch_norm_jacobian,
          batch_norm_jacobian_cases, 1, 406, "training-mode BatchNorm Jacobian across the batch for one feature"),
    _part("spectral_norm", "spectral_norm", ref.spectral_norm, visible_spectral_norm_cases, 1, 417,
          "largest singular value: the visible cell's matrices, edge cases included", matrix=False),
    _part("layer_norm_jacobian_eigenvalues", "layer_norm_jacobian_eigenvalues", ref.layer_norm_jacobian_eigen,
          visible_eigenvalue_cases, 1, 418, "visible test: the cell's two calls against the reference"),
    _part("layer_norm_jacobian_eigenvalues_hidden", "layer_norm_jacobian_eigenvalues", ref.layer_norm_jacobian_eigen,
          layer_norm_jacobian_eigen_cases, 2, 408, "closed-form eigenvalues of the LayerNorm Jacobian, ascending"),
]

register(PARTS)
