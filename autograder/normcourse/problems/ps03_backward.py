"""Problem set 3, backward passes: a gradient-check toolkit, then LayerNorm, BatchNorm and RMSNorm by hand.

Each :class:`Part` backs one hidden-test cell of ``solutions/ps03_backward/ps03_backward.ipynb``. The
backward parts compare with :mod:`normcourse.reference.backward`. The two utility parts compare with
the references below: :func:`numerical_gradient_reference` (central differences, the textbook
gradient check) and :func:`relative_error_reference` (CS231n's relative error with a floor).

The functions a numerical gradient is taken of are module-level functions bound with
:func:`functools.partial`, so cases stay picklable for a grader that calls learner code in another process.
"""

from __future__ import annotations

import functools

import numpy as np

from normcourse import reference as ref
from normcourse.grading.cases import edge_cases, non_contiguous, random_affine, random_eps, random_input, random_shape
from normcourse.grading.parts import Case, Part, register
from normcourse.lab.gradcheck import cubic, upstream_loss

PROBLEM_SET = "ps03_backward"

#: Below this size, |a| + |b| is replaced by the floor in the relative error (CS231n's convention).
RELATIVE_ERROR_FLOOR = 1e-8


# ---------------------------------------------------------------------------------------------------
# The gradient-check toolkit.

def numerical_gradient_reference(f, x, h=1e-5):
    r"""Central-difference gradient of a scalar function, one coordinate at a time.

    .. math::
        \frac{\partial f}{\partial x_i} \approx \frac{f(x + h e_i) - f(x - h e_i)}{2h}

    The error is :math:`O(h^2)` (forward differences: :math:`O(h)`). Works on a float64 copy of ``x``,
    so the caller's array is never modified. A loop over coordinates is inherent: each coordinate
    needs its own two evaluations of ``f``.
    """
    # A C-ordered copy: reshape(-1) of a non-contiguous array would be a copy, and writes to it lost.
    point = np.array(x, dtype=np.float64, order="C")
    grad = np.empty_like(point)
    flat_point, flat_grad = point.reshape(-1), grad.reshape(-1)
    for i in range(flat_point.size):
        original = flat_point[i]
        flat_point[i] = original + h
        f_plus = float(f(point))
        flat_point[i] = original - h
        f_minus = float(f(point))
        flat_point[i] = original
        flat_grad[i] = (f_plus - f_minus) / (2 * h)
    return grad


def relative_error_reference(a, b):
    r"""Largest elementwise relative error :math:`\max_i |a_i - b_i| / \max(|a_i| + |b_i|, 10^{-8})`."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), RELATIVE_ERROR_FLOOR)))


# ---------------------------------------------------------------------------------------------------
# Cases.

def _numerical_gradient_cases(rng):
    cases = []
    for shape, h in (((5,), 1e-5), ((3, 4), 1e-4), ((2, 3, 2), 1e-5)):
        x = random_input(rng, shape)
        f = functools.partial(cubic, coefficients=rng.normal(size=shape))
        cases.append(Case(f"sum(c * x**3 + sin(x)), x of shape {shape}, h={h:g}", (f, x, h), inplace=(1,)))
    x = random_input(rng, (3, 6))
    dy = rng.normal(size=(3, 6))
    f = functools.partial(upstream_loss, forward=np.tanh, dy=dy)  # numpy's own: loads where course code does not
    cases.append(Case("sum(dy * tanh(x)), x of shape (3, 6), h=1e-05", (f, x, 1e-5), inplace=(1,)))
    x = non_contiguous(random_input(rng, (4, 3)))
    f = functools.partial(cubic, coefficients=rng.normal(size=(4, 3)))
    cases.append(Case("non-contiguous x of shape (4, 3), h=1e-05", (f, x, 1e-5), inplace=(1,)))
    x = random_input(rng, (1,))
    f = functools.partial(cubic, coefficients=np.array([2.0]))
    cases.append(Case("a single coordinate, x of shape (1,), h=1e-05", (f, x, 1e-5), inplace=(1,)))
    x = random_input(rng, (2, 5), np.float32)
    f = functools.partial(cubic, coefficients=rng.normal(size=(2, 5)))
    cases.append(Case("float32 x (differentiate in float64), shape (2, 5), h=1e-05", (f, x, 1e-5), inplace=(1,)))
    return cases


def _relative_error_cases(rng):
    cases = []
    for shape in ((7,), (3, 4), (2, 3, 5)):
        a = random_input(rng, shape)
        b = a + 1e-6 * rng.normal(size=shape)
        cases.append(Case(f"nearby arrays of shape {shape}", (a, b)))
    a = random_input(rng, (4, 4))
    cases.append(Case("identical arrays (error 0)", (a, a.copy())))
    cases.append(Case("both all zero (the floor avoids 0/0)", (np.zeros(5), np.zeros(5))))
    a = np.array([1e-12, 2.0, -3.0])
    cases.append(Case("tiny entries (below the floor 1e-8)", (a, np.array([3e-12, 2.0, -3.0]))))
    a = random_input(rng, (6,))
    cases.append(Case("opposite signs (relative error 1)", (a, -a)))
    a = random_input(rng, (3, 5), scale=1e4)
    cases.append(Case("magnitude 1e4", (a, a * (1 + 1e-7))))
    return cases


def _dy_for(rng, x: np.ndarray) -> np.ndarray:
    return random_input(rng, x.shape, x.dtype)


def _describe(x, eps, weight, bias) -> str:
    affine = " and ".join(n for n, p in (("weight", weight), ("bias", bias)) if p is not None) or "no affine"
    eps_text = "eps=None" if eps is None else f"eps={eps:.3g}"
    return f"shape {x.shape}, {x.dtype}, {eps_text}, {affine}"


def _trailing_backward_cases(rng, *, rms: bool) -> list[Case]:
    """Cases for ``layer_norm_backward(dy, x, shape, w, b, eps)`` / ``rms_norm_backward(dy, x, shape, w, eps)``."""
    cases = []
    for layout, n_norm in (("BSD", 1), ("BSD", 1), ("NC", 1), ("NCHW", 3), ("NCL", 2)):
        x = random_input(rng, random_shape(rng, layout))
        normalized_shape = x.shape[x.ndim - n_norm:]
        eps = None if (rms and rng.integers(2)) else random_eps(rng)
        w, b = random_affine(rng, normalized_shape, bias=False if rms else None)
        args = (_dy_for(rng, x), x, normalized_shape, w) + ((eps,) if rms else (b, eps))
        cases.append(Case(f"random {layout}, normalized_shape={normalized_shape}, " + _describe(x, eps, w, b),
                          args))
    shape = random_shape(rng, "BSD")
    for label, x in edge_cases(rng, shape):
        w, b = random_affine(rng, shape[-1:], weight=True, bias=not rms)
        eps = None if rms else 1e-5
        args = (_dy_for(rng, x), x, shape[-1:], w) + ((eps,) if rms else (b, eps))
        cases.append(Case(label + ", weight" + ("" if rms else " and bias"), args))
    return cases


def _layer_norm_backward_cases(rng):
    return _trailing_backward_cases(rng, rms=False)


def _rms_norm_backward_cases(rng):
    cases = _trailing_backward_cases(rng, rms=True)
    x = np.zeros((2, 3, 8))
    x[0, 0, :4] = random_input(rng, (4,))
    cases.append(Case("sparse input with an all-zero token, shape (2, 3, 8), eps=None",
                      (random_input(rng, x.shape), x, (8,), None, None)))
    return cases


def _batch_norm_backward_cases(rng):
    cases = []
    for layout in ("NC", "NCL", "NCHW"):
        for _ in range(2):
            x = random_input(rng, random_shape(rng, layout))
            eps = random_eps(rng)
            w, b = random_affine(rng, x.shape[1])
            cases.append(Case(f"random {layout}, " + _describe(x, eps, w, b), (_dy_for(rng, x), x, w, b, eps)))
    shape = random_shape(rng, "NCHW")
    for label, x in edge_cases(rng, shape):
        w, b = random_affine(rng, shape[1], weight=True, bias=True)
        cases.append(Case(label + ", weight and bias", (_dy_for(rng, x), x, w, b, 1e-5)))
    x = random_input(rng, (2, 4))
    cases.append(Case("batch size 2 of feature vectors, shape (2, 4)", (_dy_for(rng, x), x, None, None, 1e-5)))
    return cases


PARTS = [
    Part(PROBLEM_SET, "numerical_gradient_hidden", "numerical_gradient", numerical_gradient_reference,
         _numerical_gradient_cases, points=2, seed=301, rtol=1e-6, atol=1e-8,
         description="central-difference gradient (x must come back unchanged)"),
    Part(PROBLEM_SET, "relative_error_hidden", "relative_error", relative_error_reference,
         _relative_error_cases, points=1, seed=302, description="relative error with a floor"),
    Part(PROBLEM_SET, "layer_norm_backward_hidden", "layer_norm_backward", ref.layer_norm_backward,
         _layer_norm_backward_cases, points=3, seed=303, description="LayerNorm backward"),
    Part(PROBLEM_SET, "batch_norm_backward_hidden", "batch_norm_backward", ref.batch_norm_backward,
         _batch_norm_backward_cases, points=3, seed=304, description="BatchNorm (training) backward"),
    Part(PROBLEM_SET, "rms_norm_backward_hidden", "rms_norm_backward", ref.rms_norm_backward,
         _rms_norm_backward_cases, points=2, seed=305, description="RMSNorm backward"),
]

register(PARTS, provides=("normcourse.lab.gradcheck",))
