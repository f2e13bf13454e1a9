"""Problem set 3, backward passes: a gradient-check toolkit, then LayerNorm, BatchNorm and RMSNorm by hand.

Each :class:`Part` backs one autograded cell of ``solutions/ps03_backward/ps03_backward.ipynb`` with that
cell's ``grade_id`` and ``points``. A visible cell's Part replays exactly the calls the cell makes; a
hidden cell's Part draws random cases from ``rng`` and adds the edge cases, and checks that the
arguments come back unchanged. Every part is numpy only (:data:`~normcourse.grading.rules.NO_TORCH`).

The backward parts compare with :mod:`normcourse.reference.backward`, result by result under its name
(``dx``, ``dweight``, ``dbias``). The two utility parts compare with the references below:
:func:`numerical_gradient_reference` (central differences, the textbook gradient check, shared with the
visible tests through :func:`normcourse.grading.compare.central_difference_gradient`) and
:func:`relative_error_reference` (CS231n's relative error with a floor).

The functions a numerical gradient is taken of are numpy's own (``np.linalg.norm``, ``np.var``,
``np.std``, possibly bound with :func:`functools.partial`): they are picklable and exist wherever the
learner's code runs, including a re-check process without the course package.
"""

from __future__ import annotations

import functools

import numpy as np

from normcourse import reference as ref
from normcourse.grading.cases import (array_arguments, describe, edge_cases, non_contiguous, random_affine, random_eps,
                                      random_input, random_shape)
from normcourse.grading.compare import central_difference_gradient, named_results
from normcourse.grading.parts import Case, Part, register
from normcourse.grading.rules import NO_TORCH

PROBLEM_SET = "ps03_backward"

#: Below this size, |a| + |b| is replaced by the floor in the relative error (CS231n's convention).
RELATIVE_ERROR_FLOOR = 1e-8


# ---------------------------------------------------------------------------------------------------
# The gradient-check toolkit.

#: Central differences, one coordinate at a time, on a float64 copy of ``x`` (the caller's array is
#: never modified); see :func:`normcourse.grading.compare.central_difference_gradient`.
numerical_gradient_reference = central_difference_gradient


def relative_error_reference(a, b):
    r"""Largest elementwise relative error :math:`\max_i |a_i - b_i| / \max(|a_i| + |b_i|, 10^{-8})`."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), RELATIVE_ERROR_FLOOR)))


# ---------------------------------------------------------------------------------------------------
# Cases.

def _gradient_case(label: str, f, x, h, repeat: int = 1) -> Case:
    return Case(f"{label}, x of shape {x.shape}, {x.dtype}, h={h:g}", (f, x, h), inplace=(1,), repeat=repeat)


def _numerical_gradient_cases(rng):
    """Curved functions (so that one-sided differences are visibly off) that numpy itself provides."""
    cases = [_gradient_case("np.linalg.norm (Frobenius)", np.linalg.norm, random_input(rng, (5,)), 1e-5),
             _gradient_case("np.linalg.norm(x, ord=3)", functools.partial(np.linalg.norm, ord=3),
                            random_input(rng, (6,)), 1e-4),
             _gradient_case("np.std", np.std, random_input(rng, (3, 4)), 1e-5),
             _gradient_case("np.var", np.var, random_input(rng, (2, 3, 2)), 1e-3),
             _gradient_case("np.linalg.norm, non-contiguous", np.linalg.norm, non_contiguous(random_input(rng, (4, 3))),
                            1e-5),
             _gradient_case("a single coordinate, np.linalg.norm", np.linalg.norm, 1.0 + np.abs(random_input(rng, (1,))),
                            1e-5),
             _gradient_case("float32 x (differentiate in float64), np.std", np.std,
                            random_input(rng, (2, 5), np.float32), 1e-5),
             _gradient_case("called twice on the same x, np.std", np.std, random_input(rng, (3, 3)), 1e-5, repeat=2)]
    return cases


def _pair(label: str, a: np.ndarray, b: np.ndarray) -> Case:
    return Case(label, (a, b), inplace=(0, 1))  # both arrays must come back unchanged


def _relative_error_cases(rng):
    cases = []
    for shape in ((7,), (3, 4), (2, 3, 5)):
        a = random_input(rng, shape)
        cases.append(_pair(f"nearby arrays of shape {shape}", a, a + 1e-6 * rng.normal(size=shape)))
    a = random_input(rng, (4, 4))
    cases.append(_pair("identical arrays (error 0)", a, a.copy()))
    cases.append(_pair("both all zero (the floor avoids 0/0)", np.zeros(5), np.zeros(5)))
    tiny = rng.uniform(1e-13, 1e-11)
    cases.append(_pair("tiny entries (below the floor 1e-8)", np.array([tiny, 2.0, -3.0]),
                       np.array([3 * tiny, 2.0, -3.0])))
    a = random_input(rng, (6,))
    cases.append(_pair("opposite signs (relative error 1)", a, -a))
    a = random_input(rng, (3, 5), scale=1e4)
    cases.append(_pair("magnitude 1e4", a, a * (1 + 1e-7)))
    return cases


def _dy_for(rng, x: np.ndarray) -> np.ndarray:
    return random_input(rng, x.shape, x.dtype)


def _backward_case(label: str, args: tuple) -> Case:
    """dy, x and the parameters must come back unchanged (the reference leaves them as they were)."""
    return Case(label, args, inplace=array_arguments(args))


def _trailing_backward_cases(rng, *, rms: bool) -> list[Case]:
    """Cases for ``layer_norm_backward(dy, x, shape, w, b, eps)`` / ``rms_norm_backward(dy, x, shape, w, eps)``."""
    cases = []
    for layout, n_norm in (("BSD", 1), ("BSD", 1), ("NC", 1), ("NCHW", 3), ("NCL", 2)):
        x = random_input(rng, random_shape(rng, layout))
        normalized_shape = x.shape[x.ndim - n_norm:]
        eps = None if (rms and rng.integers(2)) else random_eps(rng)
        w, b = random_affine(rng, normalized_shape, bias=False if rms else None)
        args = (_dy_for(rng, x), x, normalized_shape, w) + ((eps,) if rms else (b, eps))
        cases.append(_backward_case(f"random {layout}, normalized_shape={normalized_shape}, "
                                    + describe(x, eps, w, b), args))
    shape = random_shape(rng, "BSD")
    for label, x in edge_cases(rng, shape):
        w, b = random_affine(rng, shape[-1:], weight=True, bias=not rms)
        eps = None if rms else 1e-5
        args = (_dy_for(rng, x), x, shape[-1:], w) + ((eps,) if rms else (b, eps))
        cases.append(_backward_case(label + ", weight" + ("" if rms else " and bias"), args))
    return cases


def _layer_norm_backward_cases(rng):
    return _trailing_backward_cases(rng, rms=False)


def _rms_norm_backward_cases(rng):
    cases = _trailing_backward_cases(rng, rms=True)
    x = np.zeros((2, 3, 8))
    x[0, 0, :4] = random_input(rng, (4,))
    cases.append(_backward_case("sparse input with an all-zero token, shape (2, 3, 8), eps=None",
                                (random_input(rng, x.shape), x, (8,), None, None)))
    return cases


def _batch_norm_backward_cases(rng):
    cases = []
    for layout in ("NC", "NCL", "NCHW"):
        for _ in range(2):
            x = random_input(rng, random_shape(rng, layout))
            eps = random_eps(rng)
            w, b = random_affine(rng, x.shape[1])
            cases.append(_backward_case(f"random {layout}, " + describe(x, eps, w, b), (_dy_for(rng, x), x, w, b, eps)))
    shape = random_shape(rng, "NCHW")
    for label, x in edge_cases(rng, shape):
        w, b = random_affine(rng, shape[1], weight=True, bias=True)
        cases.append(_backward_case(label + ", weight and bias", (_dy_for(rng, x), x, w, b, 1e-5)))
    x = random_input(rng, (2, 4))
    cases.append(_backward_case("batch size 2 of feature vectors, shape (2, 4)", (_dy_for(rng, x), x, None, None, 1e-5)))
    return cases


# ---------------------------------------------------------------------------------------------------
# Visible cells: exactly the calls each visible test cell makes (fixed data; ``rng`` is not used).

VISIBLE = "visible test: "


def _visible_numerical_gradient_cases(rng):
    x = np.random.default_rng(0).normal(size=(3, 4))
    return [Case(VISIBLE + "np.var, x of shape (3, 4)", (np.var, x), inplace=(1,)),
            Case(VISIBLE + "np.linalg.norm, x of shape (3, 4)", (np.linalg.norm, x), inplace=(1,)),
            Case(VISIBLE + "np.linalg.norm, float32 x", (np.linalg.norm, x.astype(np.float32)), inplace=(1,))]


def _visible_relative_error_cases(rng):
    pairs = [([1.0, 2.0], [1.0, 2.0], "identical arrays"), ([1.0, 2.0], [1.0, 2.2], "the largest of 0 and 0.2 / 4.2"),
             ([1.0], [-1.0], "opposite signs: 2 / 2"),
             ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], "all zero: the floor 1e-8 avoids 0 / 0"),
             ([1e-12, 5.0], [3e-12, 5.0], "tiny entries: |a| + |b| below the floor 1e-8")]
    return [Case(VISIBLE + why, (np.array(a), np.array(b))) for a, b, why in pairs]


def _visible_layer_norm_backward_cases(rng):
    gen = np.random.default_rng(1)
    x, dy = gen.normal(size=(3, 2, 6)), gen.normal(size=(3, 2, 6))
    w, b = gen.normal(size=6), gen.normal(size=6)
    return [Case(VISIBLE + "x and dy of shape (3, 2, 6), weight and bias, eps=1e-3", (dy, x, (6,), w, b), {"eps": 1e-3}),
            Case(VISIBLE + "no weight and no bias", (dy, x, (6,)))]


def _visible_batch_norm_backward_cases(rng):
    gen = np.random.default_rng(2)
    x, dy = 1.0 + gen.normal(size=(4, 3, 2, 2)), gen.normal(size=(4, 3, 2, 2))
    w, b = gen.normal(size=3), gen.normal(size=3)
    dy2 = dy.copy()
    dy2[0] += 1.0
    return [Case(VISIBLE + "x and dy of shape (4, 3, 2, 2), weight and bias, eps=1e-3", (dy, x, w, b), {"eps": 1e-3}),
            Case(VISIBLE + "dy of sample 0 changed by 1", (dy2, x, w, b), {"eps": 1e-3})]


def _visible_rms_norm_backward_cases(rng):
    gen = np.random.default_rng(3)
    x, dy = gen.normal(size=(2, 3, 8)), gen.normal(size=(2, 3, 8))
    w = gen.normal(size=8)
    return [Case(VISIBLE + "x and dy of shape (2, 3, 8), weight, eps=1e-3", (dy, x, (8,), w), {"eps": 1e-3}),
            Case(VISIBLE + "no weight, eps=1e-12", (dy, x, (8,)), {"eps": 1e-12})]


def _part(grade_id, function, reference, cases, points, seed=0, **kwargs) -> Part:
    return Part(PROBLEM_SET, grade_id, function, reference, cases, points=points, seed=seed, forbid=(NO_TORCH,),
                **kwargs)


LAYER_NORM_GRADIENTS = named_results("dx", "dweight", "dbias")
RMS_NORM_GRADIENTS = named_results("dx", "dweight")

PARTS = [
    _part("numerical_gradient", "numerical_gradient", numerical_gradient_reference, _visible_numerical_gradient_cases,
          1, rtol=1e-6, atol=1e-8, description="visible: gradients of np.var and np.linalg.norm"),
    _part("numerical_gradient_hidden", "numerical_gradient", numerical_gradient_reference, _numerical_gradient_cases,
          2, seed=301, rtol=1e-6, atol=1e-8, description="central-difference gradient (x must come back unchanged)"),
    _part("relative_error", "relative_error", relative_error_reference, _visible_relative_error_cases, 1,
          description="visible: relative errors by hand"),
    _part("relative_error_hidden", "relative_error", relative_error_reference, _relative_error_cases, 1, seed=302,
          description="relative error with a floor"),
    _part("layer_norm_backward", "layer_norm_backward", ref.layer_norm_backward, _visible_layer_norm_backward_cases, 1,
          compare=LAYER_NORM_GRADIENTS, description="visible: LayerNorm backward on the visible inputs"),
    _part("layer_norm_backward_hidden", "layer_norm_backward", ref.layer_norm_backward, _layer_norm_backward_cases, 3,
          seed=303, compare=LAYER_NORM_GRADIENTS, description="LayerNorm backward"),
    _part("batch_norm_backward", "batch_norm_backward", ref.batch_norm_backward, _visible_batch_norm_backward_cases, 1,
          compare=LAYER_NORM_GRADIENTS, description="visible: BatchNorm backward on the visible inputs"),
    _part("batch_norm_backward_hidden", "batch_norm_backward", ref.batch_norm_backward, _batch_norm_backward_cases, 3,
          seed=304, compare=LAYER_NORM_GRADIENTS, description="BatchNorm (training) backward"),
    _part("rms_norm_backward", "rms_norm_backward", ref.rms_norm_backward, _visible_rms_norm_backward_cases, 1,
          compare=RMS_NORM_GRADIENTS, description="visible: RMSNorm backward on the visible inputs"),
    _part("rms_norm_backward_hidden", "rms_norm_backward", ref.rms_norm_backward, _rms_norm_backward_cases, 2,
          seed=305, compare=RMS_NORM_GRADIENTS, description="RMSNorm backward"),
]

register(PARTS)
