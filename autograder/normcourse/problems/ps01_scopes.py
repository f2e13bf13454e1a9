"""Problem set 1, scopes: the reduction axes of each norm for each layout, and the five forward passes.

Each :class:`Part` backs one autograded cell of ``solutions/ps01_scopes/ps01_scopes.ipynb``, with that
cell's ``grade_id`` and ``points`` (the test suite checks both):

- a *visible* cell's Part replays exactly the calls the cell makes (fixed inputs, no use of ``rng``;
  the suite records the cell's calls and compares them with the Part's cases), so the grader's
  out-of-kernel re-check compares those same calls with the reference;
- a *hidden* cell's Part draws random shapes, eps values and affine settings from ``rng`` and adds
  the edge cases. Every hidden case also checks that the arguments come back unchanged.

Every part is numpy only (:data:`~normcourse.grading.rules.NO_TORCH`). The learner's
``batch_norm_train`` and ``instance_norm`` drop the running-statistics arguments of their
``torch.nn.functional`` namesakes (running statistics are problem set 2), so they are compared with
thin adapters around the reference; the other functions have the reference's own signatures.
"""

from __future__ import annotations

import numpy as np

from normcourse import reference as ref
from normcourse.grading.cases import (array_arguments, describe, edge_cases, random_affine, random_eps,
                                      random_input, random_shape)
from normcourse.grading.compare import GradingError
from normcourse.grading.parts import Case, Part, register
from normcourse.grading.rules import NO_TORCH

PROBLEM_SET = "ps01_scopes"


# ---------------------------------------------------------------------------------------------------
# Reduction axes: the table, as data.

def _axes_cases(rng: np.random.Generator) -> list[Case]:
    """The whole table, in an order drawn from ``rng`` (so no answer can follow the order of the cases)."""
    pairs = [(norm, layout) for norm in ref.NORMS for layout in ref.LAYOUTS]
    return [Case(f"norm={norm!r}, layout={layout!r}", (norm, layout))
            for norm, layout in (pairs[i] for i in rng.permutation(len(pairs)))]


def compare_axes(actual, expected, *, name: str, label: str, rtol=None, atol=None) -> None:
    """Axes must be a tuple (or list) of ints naming the same axes; the order does not matter."""
    if not isinstance(actual, (tuple, list)) or not all(isinstance(a, (int, np.integer)) for a in actual):
        raise GradingError(f"{name} for case {label!r}: expected a tuple of ints, got {actual!r}")
    if sorted(int(a) for a in actual) != sorted(expected):
        missing = sorted(set(expected) - {int(a) for a in actual})
        extra = sorted({int(a) for a in actual} - set(expected))
        raise GradingError(f"{name} for case {label!r}: got axes {tuple(int(a) for a in actual)}, expected "
                           f"{tuple(expected)} in any order (missing {missing}, not reduced by this norm {extra})")


# ---------------------------------------------------------------------------------------------------
# Adapters: the learner's training-mode signatures, computed by the reference.

def batch_norm_train_reference(input, weight=None, bias=None, eps=1e-5):
    """Training-mode BatchNorm with batch statistics and no running statistics."""
    return ref.batch_norm(input, None, None, weight, bias, training=True, eps=eps)


def instance_norm_reference(input, weight=None, bias=None, eps=1e-5):
    """InstanceNorm with the instance's own statistics and no running statistics."""
    return ref.instance_norm(input, None, None, weight, bias, use_input_stats=True, eps=eps)


# ---------------------------------------------------------------------------------------------------
# Cases. Every part: random shapes in several layouts, random eps and affine settings, edge cases.

def _untouched(label: str, args: tuple) -> Case:
    """A case whose array arguments must come back unchanged (the reference leaves them as they were)."""
    return Case(label, args, inplace=array_arguments(args))


def _channel_first_cases(rng, layouts, extra_args, *, edge_layout: str, edge_batch_one: bool = True,
                         channels=None) -> list[Case]:
    """Cases for ``f(x, *extra, weight, bias, eps)`` with per-channel affine parameters.

    ``extra_args(x)`` returns the positional arguments between the input and the weight (the number of
    groups for GroupNorm), ``channels(rng)`` optionally fixes the channel count.
    """
    cases = []
    for layout in layouts:
        for _ in range(2):
            shape = random_shape(rng, layout, channels=channels(rng) if channels else None)
            x = random_input(rng, shape)
            eps = random_eps(rng)
            w, b = random_affine(rng, shape[1])
            cases.append(_untouched(f"random {layout}, " + describe(x, eps, w, b), (x, *extra_args(x), w, b, eps)))
    shape = random_shape(rng, edge_layout, channels=channels(rng) if channels else None)
    for label, x in edge_cases(rng, shape, batch_one=edge_batch_one):
        w, b = random_affine(rng, shape[1], weight=True, bias=True)
        cases.append(_untouched(label, (x, *extra_args(x), w, b, 1e-5)))
    return cases


def _batch_norm_cases(rng):
    cases = _channel_first_cases(rng, ("NC", "NCL", "NCHW"), lambda x: (), edge_layout="NCHW")
    # Feature vectors need at least two samples in training; two is the smallest legal batch.
    x = random_input(rng, (2, 5))
    cases.append(_untouched("batch size 2 of feature vectors, shape (2, 5)", (x, None, None, 1e-5)))
    return cases


def _instance_norm_cases(rng):
    return _channel_first_cases(rng, ("NCL", "NCHW"), lambda x: (), edge_layout="NCHW")


def _pick_channels(rng) -> int:
    return int(rng.choice([4, 6, 8]))


def _num_groups(x: np.ndarray) -> tuple[int]:
    c = x.shape[1]
    divisors = [g for g in range(1, c + 1) if c % g == 0]
    # Deterministic given the shape, so the case stays reproducible; varies across cases.
    return (divisors[(x.size * 7) % len(divisors)],)


def _group_norm_cases(rng):
    cases = _channel_first_cases(rng, ("NCL", "NCHW"), _num_groups, edge_layout="NCHW", channels=_pick_channels)
    x = random_input(rng, (3, 6, 4, 4))
    cases.append(_untouched("num_groups=1 (LayerNorm-like), shape (3, 6, 4, 4)", (x, 1, None, None, 1e-5)))
    cases.append(_untouched("num_groups=C (InstanceNorm-like), shape (3, 6, 4, 4)", (x, 6, None, None, 1e-5)))
    x = random_input(rng, (2, 8, 3))
    w, b = random_affine(rng, 8, weight=True, bias=True)
    cases.append(_untouched("num_groups=2, per-channel weight and bias, shape (2, 8, 3)", (x, 2, w, b, 1e-5)))
    return cases


def _trailing_cases(rng, *, with_bias: bool, eps_none: bool) -> list[Case]:
    """Cases for LayerNorm / RMSNorm: ``f(x, normalized_shape, weight[, bias], eps)``."""
    cases = []
    for layout, n_norm in (("BSD", 1), ("BSD", 1), ("NC", 1), ("NCHW", 3), ("NCHW", 2)):
        x = random_input(rng, random_shape(rng, layout))
        normalized_shape = x.shape[x.ndim - n_norm:]
        eps = None if (eps_none and rng.integers(2)) else random_eps(rng)
        w, b = random_affine(rng, normalized_shape, bias=None if with_bias else False)
        args = (x, normalized_shape, w, b, eps) if with_bias else (x, normalized_shape, w, eps)
        cases.append(_untouched(f"random {layout}, normalized_shape={normalized_shape}, " + describe(x, eps, w, b),
                                args))
    shape = random_shape(rng, "BSD")
    for label, x in edge_cases(rng, shape):
        w, b = random_affine(rng, shape[-1:], weight=True, bias=with_bias)
        eps = None if eps_none else 1e-5
        args = (x, shape[-1:], w, b, eps) if with_bias else (x, shape[-1:], w, eps)
        cases.append(_untouched(label + f", {'eps=None' if eps is None else 'eps=1e-05'}", args))
    x = random_input(rng, (4, 7))
    cases.append(_untouched("normalized_shape given as an int, shape (4, 7)",
                            (x, 7, None, None, 1e-5) if with_bias else (x, 7, None, 1e-5)))
    return cases


def _layer_norm_cases(rng):
    return _trailing_cases(rng, with_bias=True, eps_none=False)


def _rms_norm_cases(rng):
    cases = _trailing_cases(rng, with_bias=False, eps_none=True)
    cases.append(_untouched("all-zero input (only eps keeps the division defined), shape (2, 3, 8), eps=None",
                            (np.zeros((2, 3, 8)), (8,), None, None)))
    return cases


# ---------------------------------------------------------------------------------------------------
# Visible cells: exactly the calls each visible test cell makes (fixed data; ``rng`` is not used).

VISIBLE = "visible test: "


def _visible_axes_cases(rng):
    pairs = [("batch_norm", "NCHW"), ("layer_norm", "BSD"), ("instance_norm", "NCHW"), ("instance_norm", "NC"),
             ("group_norm", "NCL")]
    return [Case(f"{VISIBLE}norm={norm!r}, layout={layout!r}", (norm, layout)) for norm, layout in pairs]


def _visible_batch_norm_cases(rng):
    x = 3.0 + 2.0 * np.random.default_rng(1).normal(size=(8, 3, 4, 5))
    x_hand = np.array([[[0.0, 2.0]], [[4.0, 6.0]]])
    return [Case(VISIBLE + "x of shape (8, 3, 4, 5)", (x,)),
            Case(VISIBLE + "x of shape (8, 3, 4, 5), float32", (x.astype(np.float32),)),
            Case(VISIBLE + "by hand: values 0, 2, 4, 6 in one channel", (x_hand,)),
            Case(VISIBLE + "by hand, with gain and bias", (x_hand,),
                 {"weight": np.array([2.0]), "bias": np.array([5.0])}),
            Case(VISIBLE + "by hand, eps inside the square root", (x_hand,), {"eps": 4.0})]


def _visible_layer_norm_cases(rng):
    gen = np.random.default_rng(2)
    x = -1.0 + 3.0 * gen.normal(size=(2, 5, 16))
    w, b = gen.normal(size=16), gen.normal(size=16)
    return [Case(VISIBLE + "x of shape (2, 5, 16), normalized_shape (16,)", (x, (16,))),
            Case(VISIBLE + "every sequence of x as a whole, normalized_shape (5, 16)", (x, (5, 16))),
            Case(VISIBLE + "an int normalized_shape means one axis, as (16,)", (x, 16)),
            Case(VISIBLE + "the first sequence alone", (x[:1], (16,))),
            Case(VISIBLE + "elementwise gain and bias", (x, (16,), w, b)),
            Case(VISIBLE + "by hand, eps inside the square root", (np.array([1.0, 3.0]), (2,)), {"eps": 1.0}),
            Case(VISIBLE + "by hand, the biased variance 2.25", (np.array([0.0, 0.0, 3.0, 3.0]), 4),
                 {"eps": 1e-12})]


def _visible_instance_norm_cases(rng):
    x = 2.0 + np.random.default_rng(3).normal(size=(4, 3, 6, 5)) * np.array([1.0, 5.0, 0.5]).reshape(1, 3, 1, 1)
    w, b = np.array([1.0, 2.0, 3.0]), np.array([0.0, -1.0, 1.0])
    return [Case(VISIBLE + "x of shape (4, 3, 6, 5)", (x,)),
            Case(VISIBLE + "(N, C, L) input x[:, :, 0, :]", (x[:, :, 0, :],)),
            Case(VISIBLE + "per-channel gain and bias", (x, w, b)),
            Case(VISIBLE + "by hand, eps inside the square root", (np.array([[[1.0, 3.0]]]),), {"eps": 1.0})]


def _visible_group_norm_cases(rng):
    x = 1.0 + np.random.default_rng(4).normal(size=(3, 6, 4, 5)) * np.arange(1, 7).reshape(1, 6, 1, 1)
    w, b = np.linspace(0.5, 2.0, 6), np.linspace(-1.0, 1.0, 6)
    return [Case(VISIBLE + "x of shape (3, 6, 4, 5), 2 groups", (x, 2)),
            Case(VISIBLE + "one group: LayerNorm-like", (x, 1)),
            Case(VISIBLE + "C groups: InstanceNorm-like", (x, 6)),
            Case(VISIBLE + "2 groups, per-channel gain and bias", (x, 2, w, b))]


def _visible_rms_norm_cases(rng):
    x = 2.0 + np.random.default_rng(5).normal(size=(2, 5, 32))
    x[0, 0, :16] = 0.0
    x[0, 1] = 0.0
    return [Case(VISIBLE + "x of shape (2, 5, 32) with exact zeros and an all-zero token", (x, (32,))),
            Case(VISIBLE + "the gain multiplies the output", (x, (32,), 2.0 * np.ones(32))),
            Case(VISIBLE + "by hand, eps inside the square root", (np.array([3.0, 4.0]), (2,)), {"eps": 1.0}),
            Case(VISIBLE + "float32 input, eps=None: np.finfo(np.float32).eps",
                 (np.array([[1e-4, 0.0, 0.0, 0.0]], dtype=np.float32), (4,)))]


def _part(grade_id, function, reference, cases, points, seed=0, **kwargs) -> Part:
    return Part(PROBLEM_SET, grade_id, function, reference, cases, points=points, seed=seed, forbid=(NO_TORCH,),
                **kwargs)


PARTS = [
    _part("reduction_axes", "reduction_axes", ref.reduction_axes, _visible_axes_cases, 1, compare=compare_axes,
          description="visible: five entries of the scope table"),
    _part("reduction_axes_hidden", "reduction_axes", ref.reduction_axes, _axes_cases, 1, compare=compare_axes,
          description="reduction axes of every norm for every layout"),
    _part("batch_norm_train", "batch_norm_train", batch_norm_train_reference, _visible_batch_norm_cases, 1,
          description="visible: training-mode BatchNorm on the visible inputs"),
    _part("batch_norm_train_hidden", "batch_norm_train", batch_norm_train_reference, _batch_norm_cases, 2,
          seed=101, description="training-mode BatchNorm forward"),
    _part("layer_norm_forward", "layer_norm", ref.layer_norm, _visible_layer_norm_cases, 1,
          description="visible: LayerNorm on the visible inputs"),
    _part("layer_norm_forward_hidden", "layer_norm", ref.layer_norm, _layer_norm_cases, 2, seed=102,
          description="LayerNorm forward"),
    _part("instance_norm_forward", "instance_norm", instance_norm_reference, _visible_instance_norm_cases, 1,
          description="visible: InstanceNorm on the visible inputs"),
    _part("instance_norm_forward_hidden", "instance_norm", instance_norm_reference, _instance_norm_cases, 1,
          seed=103, description="InstanceNorm forward"),
    _part("group_norm_forward", "group_norm", ref.group_norm, _visible_group_norm_cases, 1,
          description="visible: GroupNorm on the visible inputs"),
    _part("group_norm_forward_hidden", "group_norm", ref.group_norm, _group_norm_cases, 3, seed=104,
          description="GroupNorm forward"),
    _part("rms_norm_forward", "rms_norm", ref.rms_norm, _visible_rms_norm_cases, 1,
          description="visible: RMSNorm on the visible inputs"),
    _part("rms_norm_forward_hidden", "rms_norm", ref.rms_norm, _rms_norm_cases, 2, seed=105,
          description="RMSNorm forward"),
]

register(PARTS)
