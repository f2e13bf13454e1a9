"""Problem set 1, scopes: the reduction axes of each norm for each layout, and the five forward passes.

Each :class:`Part` backs one hidden-test cell of ``solutions/ps01_scopes/ps01_scopes.ipynb``; its
``points`` equal that cell's points (the test suite checks this). The learner's ``batch_norm_train``
and ``instance_norm`` drop the running-statistics arguments of their ``torch.nn.functional``
namesakes (running statistics are problem set 2), so they are compared with thin adapters around the
reference; the other functions have the reference's own signatures.
"""

from __future__ import annotations

import numpy as np

from normcourse import reference as ref
from normcourse.grading.cases import edge_cases, random_affine, random_eps, random_input, random_shape
from normcourse.grading.compare import GradingError
from normcourse.grading.parts import Case, Part, register

PROBLEM_SET = "ps01_scopes"


# ---------------------------------------------------------------------------------------------------
# Reduction axes: the table, as data.

def _axes_cases(rng: np.random.Generator) -> list[Case]:
    return [Case(f"norm={norm!r}, layout={layout!r}", (norm, layout))
            for norm in ref.NORMS for layout in ref.LAYOUTS]


def compare_axes(actual, expected, *, name: str, label: str, rtol=None, atol=None) -> None:
    """Axes must be a tuple (or list) of ints naming the same axes; the order does not matter."""
    if not isinstance(actual, (tuple, list)) or not all(isinstance(a, (int, np.integer)) for a in actual):
        raise GradingError(f"{name} for case {label!r}: expected a tuple of ints, got {actual!r}")
    if sorted(int(a) for a in actual) != sorted(expected):
        raise GradingError(f"{name} for case {label!r}: got axes {tuple(actual)}, expected {tuple(expected)}")


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

def _describe(x: np.ndarray, eps: float | None, weight, bias) -> str:
    affine = " and ".join(n for n, p in (("weight", weight), ("bias", bias)) if p is not None) or "no affine"
    eps_text = "eps=None" if eps is None else f"eps={eps:.3g}"
    return f"shape {x.shape}, {x.dtype}, {eps_text}, {affine}"


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
            cases.append(Case(f"random {layout}, " + _describe(x, eps, w, b), (x, *extra_args(x), w, b, eps)))
    shape = random_shape(rng, edge_layout, channels=channels(rng) if channels else None)
    for label, x in edge_cases(rng, shape, batch_one=edge_batch_one):
        w, b = random_affine(rng, shape[1], weight=True, bias=True)
        cases.append(Case(label, (x, *extra_args(x), w, b, 1e-5)))
    return cases


def _batch_norm_cases(rng):
    cases = _channel_first_cases(rng, ("NC", "NCL", "NCHW"), lambda x: (), edge_layout="NCHW")
    # Feature vectors need at least two samples in training; two is the smallest legal batch.
    x = random_input(rng, (2, 5))
    cases.append(Case("batch size 2 of feature vectors, shape (2, 5)", (x, None, None, 1e-5)))
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
    cases.append(Case("num_groups=1 (LayerNorm-like), shape (3, 6, 4, 4)", (x, 1, None, None, 1e-5)))
    cases.append(Case("num_groups=C (InstanceNorm-like), shape (3, 6, 4, 4)", (x, 6, None, None, 1e-5)))
    x = random_input(rng, (2, 8, 3))
    w, b = random_affine(rng, 8, weight=True, bias=True)
    cases.append(Case("num_groups=2, per-channel weight and bias, shape (2, 8, 3)", (x, 2, w, b, 1e-5)))
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
        cases.append(Case(f"random {layout}, normalized_shape={normalized_shape}, " + _describe(x, eps, w, b),
                          args))
    shape = random_shape(rng, "BSD")
    for label, x in edge_cases(rng, shape):
        w, b = random_affine(rng, shape[-1:], weight=True, bias=with_bias)
        eps = None if eps_none else 1e-5
        args = (x, shape[-1:], w, b, eps) if with_bias else (x, shape[-1:], w, eps)
        cases.append(Case(label + f", {'eps=None' if eps is None else 'eps=1e-05'}", args))
    x = random_input(rng, (4, 7))
    cases.append(Case("normalized_shape given as an int, shape (4, 7)",
                      (x, 7, None, None, 1e-5) if with_bias else (x, 7, None, 1e-5)))
    return cases


def _layer_norm_cases(rng):
    return _trailing_cases(rng, with_bias=True, eps_none=False)


def _rms_norm_cases(rng):
    cases = _trailing_cases(rng, with_bias=False, eps_none=True)
    cases.append(Case("all-zero input (only eps keeps the division defined), shape (2, 3, 8), eps=None",
                      (np.zeros((2, 3, 8)), (8,), None, None)))
    return cases


PARTS = [
    Part(PROBLEM_SET, "reduction_axes_hidden", "reduction_axes", ref.reduction_axes, _axes_cases, points=2,
         compare=compare_axes, description="reduction axes of every norm for every layout"),
    Part(PROBLEM_SET, "batch_norm_train_hidden", "batch_norm_train", batch_norm_train_reference,
         _batch_norm_cases, points=2, seed=101, description="training-mode BatchNorm forward"),
    Part(PROBLEM_SET, "layer_norm_forward_hidden", "layer_norm", ref.layer_norm, _layer_norm_cases, points=2,
         seed=102, description="LayerNorm forward"),
    Part(PROBLEM_SET, "instance_norm_forward_hidden", "instance_norm", instance_norm_reference,
         _instance_norm_cases, points=2, seed=103, description="InstanceNorm forward"),
    Part(PROBLEM_SET, "group_norm_forward_hidden", "group_norm", ref.group_norm, _group_norm_cases, points=3,
         seed=104, description="GroupNorm forward"),
    Part(PROBLEM_SET, "rms_norm_forward_hidden", "rms_norm", ref.rms_norm, _rms_norm_cases, points=2,
         seed=105, description="RMSNorm forward"),
]

register(PARTS)
