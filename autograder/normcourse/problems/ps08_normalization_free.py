"""Problem set 8, training without normalization: the autograded parts (visible, hidden and the experiment).

The learner writes the pieces of chapter 9 that replace normalization layers and the grader compares
them with the course's own implementations:

- ``run_skip_init`` (torch; grades the learner's ``SkipInit`` class through the notebook's locked
  driver): :class:`normcourse.lab.normalization_free.SkipInit` driven the same way
  (:func:`run_skip_init_reference`). Every case checks the branch module after the call: the block
  must wrap the caller's branch itself (its ``.grad`` fields are filled by the driver's backward pass),
  leave its parameters and modes alone, and register :math:`\\alpha` as a parameter.
- ``weight_standardization`` and ``scaled_weight_standardization`` (numpy):
  :func:`normcourse.reference.weight_standardization` and
  :func:`~normcourse.reference.scaled_weight_standardization`.
- ``unitwise_norm`` and ``adaptive_clip_grad`` (numpy): :func:`normcourse.reference.unitwise_norm` and
  :func:`~normcourse.reference.adaptive_clip_grad`.
- ``agc_backward`` (torch): fill ``.grad`` with one backward pass, then AGC in place
  (:func:`agc_backward_reference`, built on :func:`normcourse.lab.normalization_free.adaptive_clip_grad_`).
  Every case checks the model's state after the call (parameters unchanged, ``.grad`` clipped,
  modes kept); some call it twice on the same model, which catches gradients accumulated instead of
  replaced.
- ``dynamic_tanh_backward`` (numpy): :func:`normcourse.reference.dynamic_tanh_backward`.
- ``residual_training`` (the experiment, torch): no reference; :func:`training_properties` checks
  the learner's losses for what chapter 9 measures (see there).

Weights follow PyTorch's layout, output units first: ``(out, in)`` for a linear layer, ``(out, in, k)``
and ``(out, in, kH, kW)`` for convolutions. Hidden cases draw shapes, scales, eps, gains and
thresholds from ``rng``, with the edge cases the course promises (a zero unit where the formula has an
eps, a unit exactly at the clipping threshold, magnitude 1e4, float32, non-contiguous arrays, linear
and convolution shapes). Numpy parts also check that the arguments are left unchanged
(``Case(inplace=...)`` on every array argument: the reference leaves them as they were).

Case arguments hold only numpy arrays, torch objects (modules of ``torch.nn``, tensors, torch's own
loss functions) and plain Python values: the re-check process that calls learner code cannot import
the course package. The notebook hands the learner :mod:`normcourse.lab.models` (the digits) and
nothing else of the course; :mod:`normcourse.lab.normalization_free` holds the answers.

Tolerances: numpy parts use the course defaults (1e-10 in float64, 1e-4 in float32; see
:func:`normcourse.grading.compare.tolerance_for`). Torch parts run float64 modules whose results differ
from the reference only by the order of operations (norms computed another way, ``x + a f`` versus
``a f + x``): 1e-8 relative, 1e-10 absolute; float32 cases 1e-4 relative and 1e-5 absolute.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from normcourse import reference as ref
from normcourse.grading.cases import non_contiguous, random_affine, random_eps, random_input
from normcourse.grading.compare import GradingError, assert_array_matches, assert_scalar_matches
from normcourse.grading.parts import Case, Part, register
from normcourse.grading.rules import NO_TORCH
from normcourse.lab import normalization_free as nf
from normcourse.lab.models import load_digits_tensors

PROBLEM_SET = "ps08_normalization_free"
TORCH_RTOL, TORCH_ATOL = 1e-8, 1e-10
FLOAT32_TORCH_TOL = {"rtol": 1e-4, "atol": 1e-5}
RELU_GAMMA = ref.RELU_GAMMA


# ---------------------------------------------------------------------------------------------------
# Comparisons that name what they compare.

def _as_array(value):
    """A numpy scalar (``np.sqrt(np.sum(...))`` of a 0-d array) counts as the 0-d array it stands for."""
    return np.asarray(value) if isinstance(value, np.generic) else value


def compare_array(actual, expected, *, name, label, rtol, atol) -> None:
    """One array result (numpy scalars accepted for 0-d results)."""
    assert_array_matches(_as_array(actual), expected, name=name, label=label, rtol=rtol, atol=atol)


def named_tuple_compare(names: tuple[str, ...]):
    """Compare a tuple of results element by element, each under its own name (``dx``, ``dalpha``, ...);
    None where the reference returns None."""
    def compare(actual, expected, *, name, label, rtol, atol) -> None:
        if not isinstance(actual, (tuple, list)) or len(actual) != len(expected):
            got = f"a {type(actual).__name__}" + (f" of length {len(actual)}" if isinstance(actual, (tuple, list))
                                                   else "")
            raise GradingError(f"{name} for case {label!r}: expected a tuple ({', '.join(names)}), got {got}")
        for result, (a, e) in zip(names, zip(actual, expected)):
            if e is None:
                if a is not None:
                    raise GradingError(f"{name} for case {label!r}: {result} should be None (no such parameter in "
                                       f"this case), got {type(a).__name__}")
                continue
            assert_array_matches(_as_array(a), e, name=f"{result} returned by {name}", label=label, rtol=rtol,
                                 atol=atol)
    return compare


def compare_dict(actual, expected, *, name, label, rtol, atol) -> None:
    """A dict of named array results (the drivers' reports)."""
    if not isinstance(actual, dict) or set(actual) != set(expected):
        got = sorted(actual) if isinstance(actual, dict) else type(actual).__name__
        raise GradingError(f"{name} for case {label!r}: expected a dict with the keys {sorted(expected)}, got {got}")
    for key, want in expected.items():
        assert_array_matches(_as_array(actual[key]), want, name=f"{name}[{key!r}]", label=label, rtol=rtol,
                             atol=atol)


def compare_share(actual, expected, *, name, label, rtol, atol) -> None:
    """The share of clipped units: a Python float (a tensor cannot leave the learner's process)."""
    if not isinstance(actual, (float, int, np.floating, np.integer)) or isinstance(actual, bool):
        raise GradingError(f"{name} for case {label!r}: expected the share of clipped units as a Python float, "
                           f"got {type(actual).__module__}.{type(actual).__name__}"
                           + (" (use .item() to turn a one-element tensor into a float)"
                              if type(actual).__module__.startswith("torch") else ""))
    assert_scalar_matches(actual, float(expected), name=f"{name} (the share of clipped units)", label=label,
                          rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# Weights: PyTorch layout, output units first.

KINDS = ("linear", "conv1d", "conv2d")


def _shape(rng: np.random.Generator, kind: str) -> tuple[int, ...]:
    out, channels = int(rng.integers(2, 7)), int(rng.integers(1, 5))
    if kind == "linear":
        return (out, int(rng.integers(2, 10)))
    if kind == "conv1d":
        return (out, channels, int(rng.integers(2, 6)))
    if kind == "conv2d":
        return (out, channels, 3, 3)
    raise ValueError(kind)


def _weight(rng: np.random.Generator, shape: tuple[int, ...], dtype=np.float64, scale: float = 1.0) -> np.ndarray:
    """Random weights whose units differ in mean and scale (so a statistic over the wrong axes shows)."""
    unit = (shape[0],) + (1,) * (len(shape) - 1)
    unit_scale = scale * np.exp(rng.uniform(-1.0, 1.0, size=unit))
    unit_mean = 0.5 * scale * rng.normal(size=unit)
    return np.ascontiguousarray((unit_mean + unit_scale * random_input(rng, shape)).astype(dtype))


def _all_arrays(args) -> tuple[int, ...]:
    """Every numpy array argument is checked after the call: the reference leaves them unchanged."""
    return tuple(i for i, a in enumerate(args) if isinstance(a, np.ndarray))


def _case(label: str, args: tuple, **options) -> Case:
    return Case(label, args, inplace=_all_arrays(args), **options)


# ---------------------------------------------------------------------------------------------------
# Weight Standardization.

def visible_weight_standardization_cases(_rng=None) -> list[Case]:
    """The visible cell's calls."""
    rng = np.random.default_rng(2)
    conv = 0.1 + 0.3 * rng.normal(size=(8, 3, 3, 3))
    linear = rng.normal(loc=2.0, scale=3.0, size=(4, 6))
    constant = np.array([[1.5, 1.5, 1.5], [1.0, 2.0, 6.0]])
    return [Case("visible test: conv weight (8, 3, 3, 3)", (conv,), inplace=(0,)),
            Case("visible test: linear weight (4, 6), eps=1e-3", (linear, 1e-3), inplace=(0,)),
            Case("visible test: unit 0 constant (zero variance)", (constant,), inplace=(0,)),
            Case("visible test: conv weight as float32", (conv.astype(np.float32),), inplace=(0,))]


def weight_standardization_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    for kind in ("linear", "linear", "conv1d", "conv2d", "conv2d"):
        w = _weight(rng, _shape(rng, kind))
        if rng.integers(2):
            eps = random_eps(rng)
            cases.append(_case(f"random {kind} weight {w.shape}, eps={eps:.3g}", (w, eps)))
        else:
            cases.append(_case(f"random {kind} weight {w.shape}, default eps", (w,)))
    w = _weight(rng, (1, int(rng.integers(3, 9))))
    cases.append(_case(f"a single output unit, linear weight {w.shape}", (w,)))
    w = _weight(rng, (int(rng.integers(2, 6)), int(rng.integers(2, 5)), 1, 1))
    cases.append(_case(f"a 1x1 convolution weight {w.shape}", (w,)))
    w = _weight(rng, (int(rng.integers(2, 6)), 1))
    cases.append(_case(f"fan-in 1: every unit is one weight (zero variance, output 0), weight {w.shape}", (w,)))
    w = _weight(rng, _shape(rng, "conv2d"))
    w[0] = np.round(rng.uniform(-2, 2), 3)
    cases.append(_case(f"constant input: unit 0 of conv weight {w.shape} has all weights equal (zero variance: "
                       f"only eps keeps the division defined)", (w,)))
    cases.append(_case("all-zero linear weight (4, 5) (a zero-initialized layer), eps=1e-5", (np.zeros((4, 5)), 1e-5)))
    w = _weight(rng, _shape(rng, "conv2d"), scale=1e4)
    cases.append(_case(f"magnitude 1e4, conv weight {w.shape}", (w,)))
    w = _weight(rng, _shape(rng, "conv2d"), dtype=np.float32)
    cases.append(_case(f"float32 input, conv weight {w.shape} (return float32)", (w,)))
    w = non_contiguous(_weight(rng, _shape(rng, "conv2d")))
    cases.append(_case(f"non-contiguous input (axes stored in reverse order), conv weight {w.shape}", (w,)))
    return cases


def visible_scaled_weight_standardization_cases(_rng=None) -> list[Case]:
    """The visible cell's calls."""
    rng = np.random.default_rng(3)
    w = rng.normal(loc=0.5, size=(16, 32))
    conv = rng.normal(size=(4, 2, 3, 3))
    gain = np.array([1.0, -0.5, 2.0, 0.25])
    nearly = np.array([[1.0, 1.0 + 1e-4, 1.0 - 1e-4], [0.0, 1.0, -1.0]])
    return [Case("visible test: linear weight (16, 32), gamma = RELU_GAMMA", (w, None, RELU_GAMMA), inplace=(0,)),
            Case("visible test: conv weight (4, 2, 3, 3), gain [1, -0.5, 2, 0.25]", (conv, gain), inplace=(0, 1)),
            Case("visible test: unit 0 nearly constant (N sigma^2 = 2e-8 < eps)", (nearly,), inplace=(0,))]


def _gamma(rng: np.random.Generator) -> tuple[float, str]:
    choice = int(rng.integers(3))
    if choice == 0:
        return 1.0, "gamma=1"
    if choice == 1:
        return RELU_GAMMA, "gamma=RELU_GAMMA"
    gamma = float(np.round(rng.uniform(0.5, 2.5), 3))
    return gamma, f"gamma={gamma}"


def _gain(rng: np.random.Generator, out: int, dtype=np.float64):
    gain, _ = random_affine(rng, (out,), bias=False)
    return None if gain is None else gain.astype(dtype)


def scaled_weight_standardization_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    for kind in ("linear", "linear", "conv1d", "conv2d", "conv2d"):
        w = _weight(rng, _shape(rng, kind))
        gain = _gain(rng, w.shape[0])
        gamma, gamma_text = _gamma(rng)
        gain_text = "a gain" if gain is not None else "no gain"
        if rng.integers(2):
            eps = random_eps(rng)
            cases.append(_case(f"random {kind} weight {w.shape}, {gain_text}, {gamma_text}, eps={eps:.3g}",
                               (w, gain, gamma, eps)))
        else:
            cases.append(_case(f"random {kind} weight {w.shape}, {gain_text}, {gamma_text}, default eps",
                               (w, gain, gamma)))
    w = _weight(rng, (1, int(rng.integers(3, 9))))
    cases.append(_case(f"a single output unit, linear weight {w.shape}, gain [1.7]", (w, np.array([1.7]), RELU_GAMMA)))
    w = _weight(rng, _shape(rng, "linear"))
    gain = -np.abs(1.0 + 0.5 * rng.normal(size=w.shape[0]))
    cases.append(_case(f"negative gains, linear weight {w.shape}", (w, gain, 1.0)))
    w = _weight(rng, _shape(rng, "conv2d"))
    w[1] = w[1, 0, 0, 0] + 1e-5 * rng.normal(size=w.shape[1:])
    cases.append(_case(f"nearly constant unit: unit 1 of conv weight {w.shape} has N sigma^2 below eps (the max "
                       f"takes eps)", (w, None, RELU_GAMMA)))
    w = _weight(rng, _shape(rng, "linear"))
    w[0] = np.round(rng.uniform(-2, 2), 3)
    cases.append(_case(f"constant input: unit 0 of linear weight {w.shape} has all weights equal (zero variance)",
                       (w, _gain(rng, w.shape[0]), 1.0)))
    cases.append(_case("all-zero conv weight (3, 2, 3, 3) (a zero-initialized layer)",
                       (np.zeros((3, 2, 3, 3)), None, RELU_GAMMA)))
    w = _weight(rng, _shape(rng, "conv2d"), scale=1e4)
    cases.append(_case(f"magnitude 1e4, conv weight {w.shape}, a gain", (w, np.linspace(0.5, 2.0, w.shape[0]),
                                                                          RELU_GAMMA)))
    w = _weight(rng, _shape(rng, "conv2d"), dtype=np.float32)
    cases.append(_case(f"float32 input, conv weight {w.shape} and float32 gain (return float32)",
                       (w, np.linspace(0.5, 2.0, w.shape[0]).astype(np.float32), RELU_GAMMA)))
    w = non_contiguous(_weight(rng, _shape(rng, "conv2d")))
    cases.append(_case(f"non-contiguous input (axes stored in reverse order), conv weight {w.shape}",
                       (w, None, 1.0)))
    return cases


# ---------------------------------------------------------------------------------------------------
# Unit-wise norms and adaptive gradient clipping.

def visible_unitwise_norm_cases(_rng=None) -> list[Case]:
    """The visible cell's calls."""
    conv = np.arange(2 * 3 * 2 * 2, dtype=np.float64).reshape(2, 3, 2, 2) - 10.0
    return [Case("visible test: [[3, 4], [0, 1]]", (np.array([[3.0, 4.0], [0.0, 1.0]]),), inplace=(0,)),
            Case("visible test: conv weight (2, 3, 2, 2)", (conv,), inplace=(0,)),
            Case("visible test: a bias vector [1, 2, 2]", (np.array([1.0, 2.0, 2.0]),), inplace=(0,)),
            Case("visible test: a scalar -3.0 (shape ())", (np.array(-3.0),), inplace=(0,)),
            Case("visible test: [[3, 4], [0, 1]] as float32", (np.array([[3.0, 4.0], [0.0, 1.0]], np.float32),),
                 inplace=(0,))]


def unitwise_norm_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    for kind in ("linear", "conv1d", "conv2d"):
        x = _weight(rng, _shape(rng, kind))
        cases.append(_case(f"random {kind} weight {x.shape}", (x,)))
    x = _weight(rng, (int(rng.integers(2, 5)), int(rng.integers(1, 4)), 2, 3, 3))
    cases.append(_case(f"conv3d weight {x.shape}", (x,)))
    x = random_input(rng, (int(rng.integers(2, 9)),))
    cases.append(_case(f"a bias vector {x.shape} (one unit: result shape (1,))", (x,)))
    x = np.array(float(np.round(rng.normal(), 4)))
    cases.append(_case(f"a scalar {float(x)} (SkipInit's alpha; one unit: result shape ())", (x,)))
    x = _weight(rng, (1, int(rng.integers(2, 9))))
    cases.append(_case(f"a single output unit, linear weight {x.shape}", (x,)))
    x = _weight(rng, _shape(rng, "linear"))
    x[1] = 0.0
    cases.append(_case(f"zero unit: unit 1 of linear weight {x.shape} is all zero", (x,)))
    x = _weight(rng, _shape(rng, "conv2d"), scale=1e4)
    cases.append(_case(f"magnitude 1e4, conv weight {x.shape}", (x,)))
    x = _weight(rng, _shape(rng, "conv2d"), dtype=np.float32)
    cases.append(_case(f"float32 input, conv weight {x.shape} (return float32)", (x,)))
    x = non_contiguous(_weight(rng, _shape(rng, "conv2d")))
    cases.append(_case(f"non-contiguous input (axes stored in reverse order), conv weight {x.shape}", (x,)))
    return cases


def _unit_norms(x: np.ndarray) -> np.ndarray:
    return ref.unitwise_norm(np.asarray(x, dtype=np.float64))


def gradient_with_ratios(rng: np.random.Generator, weight: np.ndarray, clipping: float, eps: float,
                         spread: float = 2.0) -> np.ndarray:
    """A gradient for ``weight`` whose unit-wise ratios are ``clipping * exp(U(-spread, spread))``: about
    half of the units are clipped, and the others are not, so both branches of the rule are exercised."""
    z = rng.normal(size=weight.shape)
    z_norm = np.maximum(_unit_norms(z), 1e-300)
    ratio = clipping * np.exp(rng.uniform(-spread, spread, size=z_norm.shape))
    return z / z_norm * ratio * np.maximum(_unit_norms(weight), eps)


def visible_adaptive_clip_grad_cases(_rng=None) -> list[Case]:
    """The visible cell's calls (exercise 9.2 of the chapter, and a few more)."""
    w = np.array([[3.0, 4.0], [0.0, 0.0]])
    g = np.array([[0.3, 0.4], [0.002, 0.0]])
    conv_w = np.stack([np.full((2, 2, 2), 0.5), np.full((2, 2, 2), -0.25)])
    conv_g = np.stack([np.full((2, 2, 2), 0.25), np.full((2, 2, 2), 0.001)])
    return [Case("visible test: exercise 9.2, clipping=0.05, eps=1e-3", (g, w, 0.05, 1e-3), inplace=(0, 1)),
            Case("visible test: conv weight (2, 2, 2, 2), clipping=0.1", (conv_g, conv_w, 0.1), inplace=(0, 1)),
            Case("visible test: a zero gradient is never clipped", (np.zeros((2, 2)), w, 0.05), inplace=(0, 1)),
            Case("visible test: a bias vector, zero-initialized (one unit, the floor eps)",
                 (np.array([0.003, -0.004]), np.zeros(2), 0.01), inplace=(0, 1))]


def _clip_args(rng: np.random.Generator, weight: np.ndarray, text: str) -> tuple[tuple, str]:
    clipping = float(10.0 ** rng.uniform(-3, -0.5))
    if rng.integers(2):
        eps = random_eps(rng)
        args = (gradient_with_ratios(rng, weight, clipping, eps).astype(weight.dtype), weight, clipping, eps)
        return args, f"{text}, clipping={clipping:.3g}, eps={eps:.3g}"
    args = (gradient_with_ratios(rng, weight, clipping, 1e-3).astype(weight.dtype), weight, clipping)
    return args, f"{text}, clipping={clipping:.3g}, default eps"


def adaptive_clip_grad_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    for kind in ("linear", "linear", "conv1d", "conv2d", "conv2d"):
        w = _weight(rng, _shape(rng, kind))
        args, label = _clip_args(rng, w, f"random {kind} weight {w.shape}, about half of the units clipped")
        cases.append(_case(label, args))
    # Zero units where the formula has an eps.
    w = _weight(rng, (5, int(rng.integers(3, 8))))
    w[0] = 0.0
    w[3] = 0.0
    clipping = 0.05
    g = gradient_with_ratios(rng, w, clipping, 1e-3)
    g[0] *= 20 * clipping * 1e-3 / np.linalg.norm(g[0])   # ratio 20 * clipping over the floor: clipped
    g[3] *= 0.5 * clipping * 1e-3 / np.linalg.norm(g[3])  # ratio half the threshold over the floor: kept
    cases.append(_case(f"zero weights: units 0 and 3 of linear weight {w.shape} are all zero (the floor eps "
                       f"applies; unit 0 is clipped, unit 3 is not), clipping=0.05", (g, w, clipping)))
    w = _weight(rng, _shape(rng, "conv2d"))
    g = gradient_with_ratios(rng, w, 0.02, 1e-3)
    g[1] = 0.0
    cases.append(_case(f"zero gradient: unit 1 of conv weight {w.shape} has a zero gradient (never clipped; no "
                       f"division by zero), clipping=0.02", (g, w, 0.02)))
    cases.append(_case("all-zero gradient and weight (3, 4) (a zero-initialized layer before training), "
                       "clipping=0.01", (np.zeros((3, 4)), np.zeros((3, 4)), 0.01)))
    # Exactly at the threshold: powers of two, so every norm and ratio below is exact in float64.
    w = np.array([[3.0, 4.0], [3.0, 4.0], [0.0, 0.0], [6.0, 8.0]]) * rng.choice([0.5, 1.0, 2.0])
    g = np.array([[0.75, 1.0], [1.5, 2.0], [0.0, 0.0], [-1.5, -2.0]]) * w[0, 0] / 3.0
    cases.append(_case(f"a unit exactly at the threshold: unit 0's ratio is exactly clipping=0.25 (kept: clip only "
                       f"above), unit 1's is twice that (halved), weight scale {w[0, 0] / 3.0:g}", (g, w, 0.25)))
    w = _weight(rng, (4, int(rng.integers(3, 8))))
    factors = np.array([1 + 1e-6, 1 - 1e-6, 1 + 1e-3, 1 - 1e-3]).reshape(4, 1)
    clipping = 0.1
    z = rng.normal(size=w.shape)
    g = z / np.linalg.norm(z, axis=1, keepdims=True) * clipping * factors * np.linalg.norm(w, axis=1, keepdims=True)
    cases.append(_case(f"units just above and just below the threshold (ratios clipping * (1 +- 1e-6) and "
                       f"(1 +- 1e-3)), linear weight {w.shape}, clipping=0.1", (g, w, clipping)))
    n = int(rng.integers(3, 9))
    cases.append(_case(f"a bias vector ({n},), zero-initialized (one unit; the floor eps applies), clipping=0.01",
                       (0.01 * rng.normal(size=n), np.zeros(n), 0.01)))
    b = random_input(rng, (n,))
    cases.append(_case(f"a bias vector ({n},), nonzero (one unit), clipping=0.1",
                       (gradient_with_ratios(rng, b, 0.1, 1e-3), b, 0.1)))
    cases.append(_case("a scalar parameter (shape (): SkipInit's alpha at 0, one unit; the floor eps applies), "
                       "clipping=0.02", (np.array(float(np.round(rng.normal(), 3))), np.array(0.0), 0.02)))
    w = _weight(rng, _shape(rng, "linear"))
    cases.append(_case(f"no unit clipped (clipping=1e3), linear weight {w.shape}",
                       (gradient_with_ratios(rng, w, 1.0, 1e-3), w, 1e3)))
    w = _weight(rng, _shape(rng, "linear"))
    cases.append(_case(f"every unit clipped (clipping=1e-4), linear weight {w.shape}",
                       (gradient_with_ratios(rng, w, 1.0, 1e-3), w, 1e-4)))
    w = _weight(rng, _shape(rng, "conv2d"), scale=1e4)
    args, label = _clip_args(rng, w, f"magnitude 1e4, conv weight {w.shape} and its gradient")
    cases.append(_case(label, args))
    w = _weight(rng, _shape(rng, "conv2d"), dtype=np.float32)
    args, label = _clip_args(rng, w, f"float32 input, conv weight {w.shape} and a float32 gradient (return float32)")
    cases.append(_case(label, args))
    w = _weight(rng, _shape(rng, "conv2d"))
    args, label = _clip_args(rng, w, f"non-contiguous input (axes stored in reverse order), conv weight {w.shape}")
    cases.append(_case(label, (non_contiguous(args[0]), non_contiguous(args[1])) + args[2:]))
    return cases


# ---------------------------------------------------------------------------------------------------
# Dynamic Tanh backward.

def visible_dynamic_tanh_backward_cases(_rng=None) -> list[Case]:
    """The visible cell's calls."""
    rng = np.random.default_rng(5)
    x, dy = 2.0 * rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    weight, bias = rng.normal(size=4), rng.normal(size=4)
    return [Case("visible test: x (2, 3, 4), alpha [0.7], weight and bias", (dy, x, np.array([0.7]), weight, bias),
                 inplace=(0, 1, 2, 3, 4)),
            Case("visible test: x (2, 3, 4), alpha [0.7], no weight, no bias", (dy, x, np.array([0.7])),
                 inplace=(0, 1, 2)),
            Case("visible test: x [[-100, 0, 1]] (saturated, linear and in between), alpha [0.5], weight and bias",
                 (np.ones((1, 3)), np.array([[-100.0, 0.0, 1.0]]), np.array([0.5]), np.ones(3), np.zeros(3)),
                 inplace=(0, 1, 2, 3, 4))]


def _alpha(rng: np.random.Generator, dtype=np.float64) -> np.ndarray:
    return np.array([float(np.round(rng.uniform(0.1, 2.0), 3))], dtype=dtype)


def dynamic_tanh_backward_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    for shape, trailing in ((tuple(int(v) for v in rng.integers(2, 6, size=3)), 1),
                            (tuple(int(v) for v in rng.integers(2, 6, size=2)), 1),
                            (tuple(int(v) for v in rng.integers(2, 5, size=3)), 2),
                            (tuple(int(v) for v in rng.integers(2, 6, size=3)), 1)):
        x = 2.0 * random_input(rng, shape)
        weight, bias = random_affine(rng, shape[len(shape) - trailing:])
        alpha = _alpha(rng)
        affine = " and ".join(n for n, p in (("weight", weight), ("bias", bias)) if p is not None) or "no affine"
        cases.append(_case(f"random x {shape}, weight over the last {trailing} axes, alpha {alpha}, {affine}",
                           (random_input(rng, shape), x, alpha, weight, bias)))
    shape = tuple(int(v) for v in rng.integers(2, 6, size=3))
    weight, bias = random_affine(rng, shape[-1:], weight=True, bias=True)
    cases.append(_case(f"alpha [0.] (dx = 0; dalpha does not vanish), x {shape}",
                       (random_input(rng, shape), random_input(rng, shape), np.array([0.0]), weight, bias)))
    cases.append(_case(f"a negative alpha [-0.8], x {shape}",
                       (random_input(rng, shape), random_input(rng, shape), np.array([-0.8]), weight, None)))
    one = (1,) + shape[1:]
    cases.append(_case(f"batch size 1, shape {one}", (random_input(rng, one), random_input(rng, one), _alpha(rng),
                                                       weight, bias)))
    value = float(np.round(rng.uniform(-3, 3), 3))
    cases.append(_case(f"constant input (every element {value}), shape {shape}",
                       (random_input(rng, shape), np.full(shape, value), _alpha(rng), weight, bias)))
    cases.append(_case(f"magnitude 1e4, shape {shape} (saturated: tanh' = 0 in float64)",
                       (random_input(rng, shape), random_input(rng, shape, scale=1e4), _alpha(rng), weight, bias)))
    f32 = (random_input(rng, shape, np.float32), random_input(rng, shape, np.float32), _alpha(rng, np.float32),
           weight.astype(np.float32), bias.astype(np.float32))
    cases.append(_case(f"float32 input, shape {shape} (return float32)", f32))
    cases.append(_case(f"non-contiguous input (axes stored in reverse order), shape {shape}",
                       (non_contiguous(random_input(rng, shape)), non_contiguous(random_input(rng, shape)),
                        _alpha(rng), weight, bias)))
    return cases


# ---------------------------------------------------------------------------------------------------
# SkipInit, through the notebook's driver.

def skip_init_driver(skip_init_class, branch, alpha_init, x, dy) -> dict:
    """The notebook's ``run_skip_init`` with the class as an argument (the reference passes the lab's).

    Wrap ``branch`` (the caller's module itself) in ``skip_init_class(branch, alpha_init)``, convert the
    block to ``x``'s dtype, run ``x`` forward, backpropagate ``L = sum(dy * y)`` and report by name.
    """
    block = skip_init_class(branch, alpha_init).to(x.dtype)
    x = x.detach().clone().requires_grad_(True)
    y = block(x)
    (y * dy).sum().backward()
    alpha = block.alpha
    return {"output": y.detach().numpy(),
            "input gradient": x.grad.numpy(),
            "alpha": alpha.detach().reshape(()).numpy(),
            "alpha gradient": alpha.grad.reshape(()).numpy(),
            "number of parameter tensors (the branch's and alpha)": np.asarray(len(list(block.parameters())))}


def run_skip_init_reference(branch, alpha_init, x, dy) -> dict:
    return skip_init_driver(nf.SkipInit, branch, alpha_init, x, dy)


def _seeded(rng: np.random.Generator, build, dtype=torch.float64) -> nn.Module:
    """A module built under a torch seed drawn from ``rng`` (the global torch generator is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(2 ** 31)))
        module = build()
    return module.to(dtype)


def _tensor(rng: np.random.Generator, shape, dtype=torch.float64, scale: float = 1.0) -> torch.Tensor:
    return torch.from_numpy(scale * rng.normal(size=shape)).to(dtype)


def visible_skip_init_cases(_rng=None) -> list[Case]:
    """The visible cell's calls (the setup cell's ``demo_branch()`` and inputs)."""
    return [Case(f"visible test: the demo branch, alpha_init={a}", (demo_branch(), a, *demo_inputs()), state_of=(0,))
            for a in (0.0, 0.5)]


def demo_branch() -> nn.Module:
    """The setup cell's ``demo_branch()``: Linear(4, 4), ReLU, Linear(4, 4) in float64, from seed 0."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)).double()


def demo_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """The setup cell's ``demo_inputs()``: x and dy of shape (3, 4), float64, from seed 1."""
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(3, 4, generator=generator, dtype=torch.float64),
            torch.randn(3, 4, generator=generator, dtype=torch.float64))


def _mlp_branch(d: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))


def skip_init_cases(rng: np.random.Generator) -> list[Case]:
    cases = []

    def add(label, branch, alpha_init, shape, *, dtype=torch.float64, scale=1.0, **options):
        x, dy = _tensor(rng, shape, dtype, scale), _tensor(rng, shape, dtype)
        cases.append(Case(label, (branch, alpha_init, x, dy), state_of=(0,), **options))

    def exact_alpha(low, high):
        # A multiple of 1/64: exact in float32, so a float32 alpha (torch's default dtype) and a float64
        # one hold the same number after the driver's .to(x.dtype).
        return float(rng.integers(int(low * 64), int(high * 64) + 1)) / 64

    d, n = int(rng.integers(2, 7)), int(rng.integers(2, 6))
    add(f"Linear({d}, {d}) branch, alpha_init=0 (the identity at initialization), batch {n}",
        _seeded(rng, lambda: nn.Linear(d, d)), 0.0, (n, d))
    alpha = exact_alpha(-1.5, 1.5)
    add(f"Linear-ReLU-Linear branch of width {d}, alpha_init={alpha}, batch {n}",
        _seeded(rng, lambda: _mlp_branch(d)), alpha, (n, d))
    c, h = int(rng.integers(1, 4)), int(rng.integers(2, 5))
    alpha = exact_alpha(0.1, 1.0)
    add(f"convolutional branch Conv2d({c}, {c}, 3, padding=1), ReLU, Conv2d on (2, {c}, {h}, {h}) input, "
        f"alpha_init={alpha}",
        _seeded(rng, lambda: nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))),
        alpha, (2, c, h, h))

    def bn_branch():
        branch = nn.Sequential(nn.Linear(d, d), nn.BatchNorm1d(d), nn.ReLU(), nn.Linear(d, d))
        with torch.no_grad():
            branch[1].running_mean.normal_()
            branch[1].running_var.uniform_(0.5, 2.0)
        return branch.eval()
    add(f"branch with BatchNorm1d in evaluation mode (keep the branch's mode), alpha_init=0.25, batch {n}",
        _seeded(rng, bn_branch), 0.25, (n, d))
    add(f"called twice on the same branch (gradients accumulate in the caller's branch: wrap it, do not copy "
        f"it), alpha_init=0.5, batch {n}", _seeded(rng, lambda: _mlp_branch(d)), 0.5, (n, d), repeat=2)
    add(f"batch size 1, Linear-ReLU-Linear branch of width {d}, alpha_init=0",
        _seeded(rng, lambda: _mlp_branch(d)), 0.0, (1, d))
    add(f"magnitude 1e4 input, Linear-ReLU-Linear branch of width {d}, alpha_init=0.125",
        _seeded(rng, lambda: _mlp_branch(d)), 0.125, (n, d), scale=1e4)
    add(f"float32 branch and input, width {d}, alpha_init=0.375", _seeded(rng, lambda: _mlp_branch(d), torch.float32),
        0.375, (n, d), dtype=torch.float32, **FLOAT32_TORCH_TOL)
    return cases


# ---------------------------------------------------------------------------------------------------
# AGC on a model: one backward pass, then clip .grad in place.

def agc_backward_reference(model, loss_fn, batch, clipping=0.01, eps=1e-3, exclude=()) -> float:
    """Gradients of ``loss_fn(model(inputs), targets)`` in ``.grad`` (replacing old ones), then AGC in place
    on every parameter not named in ``exclude``; the share of clipped units (0.0 if none were eligible)."""
    inputs, targets = batch
    for p in model.parameters():
        p.grad = None
    loss_fn(model(inputs), targets).backward()
    chosen = [p for name, p in model.named_parameters() if name not in exclude]
    return float(nf.adaptive_clip_grad_(chosen, clipping, eps))


cross_entropy = nn.functional.cross_entropy
mse_loss = nn.functional.mse_loss


def demo_mlp() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """The setup cell's ``demo_mlp()``: a float64 MLP (fc1, act, head) from seed 0 and a batch of 16."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(OrderedDict(fc1=nn.Linear(6, 8), act=nn.ReLU(), head=nn.Linear(8, 3))).double()
    generator = torch.Generator().manual_seed(0)
    batch = (torch.randn(16, 6, generator=generator, dtype=torch.float64),
             torch.randint(0, 3, (16,), generator=generator))
    return model, batch


#: The visible cell's threshold: between the smallest and the largest unit-wise ratio of the demo model.
DEMO_CLIPPING = 0.1


def visible_agc_backward_cases(_rng=None) -> list[Case]:
    """The visible cell's call: the demo MLP, twice on the same model, the head excluded."""
    model, batch = demo_mlp()
    return [Case(f"visible test: the demo MLP, clipping={DEMO_CLIPPING}, head excluded, called twice on the "
                 "same model", (model, cross_entropy, batch, DEMO_CLIPPING), {"exclude": ("head.weight", "head.bias")},
                 state_of=(0,), repeat=2)]


def _raw_ratios(model, loss_fn, batch, eps, exclude) -> np.ndarray:
    """Unit-wise ratios of the unclipped gradient (on a copy), to place a threshold among them."""
    twin = copy.deepcopy(model)
    inputs, targets = batch
    loss_fn(twin(inputs), targets).backward()
    ratios = [ref.agc_ratio(p.grad.double().numpy(), p.detach().double().numpy(), eps).ravel()
              for name, p in twin.named_parameters() if p.grad is not None and name not in exclude]
    return np.concatenate(ratios)


def _threshold_among(rng, model, loss_fn, batch, eps=1e-3, exclude=()) -> float:
    """A threshold between the nonzero unit-wise ratios (a random quantile in [0.3, 0.7], to 3 significant
    digits, so no unit sits within rounding of it): some units are clipped, some are not."""
    ratios = _raw_ratios(model, loss_fn, batch, eps, exclude)
    value = float(np.quantile(ratios[ratios > 0], rng.uniform(0.3, 0.7)))
    return float(f"{value:.3g}")


def _named(*layers) -> nn.Sequential:
    return nn.Sequential(OrderedDict(layers))


def _classification(rng, n, d_in, classes, *, dtype=torch.float64, scale=1.0):
    return (_tensor(rng, (n, d_in), dtype, scale), torch.from_numpy(rng.integers(0, classes, size=n)))


def agc_backward_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    head = ("head.weight", "head.bias")

    def add(label, model, loss_fn, batch, *, clipping=None, eps=None, exclude=(), **options):
        kwargs = {"exclude": exclude} if exclude else {}
        args = (model, loss_fn, batch)
        if clipping is None:
            clipping = _threshold_among(rng, model, loss_fn, batch, 1e-3 if eps is None else eps, exclude)
        args += (clipping,) if eps is None else (clipping, eps)
        text = f", clipping={clipping:g}" + ("" if eps is None else f", eps={eps:.3g}")
        text += f", exclude={list(exclude)}" if exclude else ", nothing excluded"
        cases.append(Case(label + text, args, kwargs, state_of=(0,), **options))

    d_in, width, classes, n = (int(v) for v in rng.integers(3, 8, size=4))

    def mlp():
        return _named(("fc1", nn.Linear(d_in, width)), ("act1", nn.ReLU()), ("fc2", nn.Linear(width, width)),
                      ("act2", nn.ReLU()), ("head", nn.Linear(width, classes)))
    add(f"random MLP ({d_in}, {width}, {width}, {classes}), cross-entropy, batch {n}, called twice on the same "
        "model (.grad replaced, not accumulated)", _seeded(rng, mlp), cross_entropy,
        _classification(rng, n, d_in, classes), exclude=head, repeat=2)
    eps = random_eps(rng)
    add(f"random MLP ({d_in}, {width}, {width}, {classes}), cross-entropy, batch {n}", _seeded(rng, mlp),
        cross_entropy, _classification(rng, n, d_in, classes), eps=eps, exclude=("head.weight",))
    c, h = int(rng.integers(1, 4)), int(rng.integers(3, 6))

    def cnn():
        return _named(("conv1", nn.Conv2d(c, 4, 3, padding=1)), ("act", nn.ReLU()), ("conv2", nn.Conv2d(4, 2, 3)),
                      ("flat", nn.Flatten()), ("head", nn.Linear(2 * (h - 2) ** 2, classes)))
    images = (_tensor(rng, (n, c, h, h)), torch.from_numpy(rng.integers(0, classes, size=n)))
    add(f"convolutional network (conv weights (4, {c}, 3, 3) and (2, 4, 3, 3)) on ({n}, {c}, {h}, {h}) images",
        _seeded(rng, cnn), cross_entropy, images, exclude=head)

    def fixup_like():
        model = mlp()
        with torch.no_grad():
            model.head.weight.zero_()
            for layer in (model.fc1, model.fc2, model.head):
                layer.bias.zero_()
        return model
    add("zero-initialized head and zero biases (Fixup-style: the floor eps applies to the head's units; every "
        "other layer gets a zero gradient, never clipped)",
        _seeded(rng, fixup_like), cross_entropy, _classification(rng, n, d_in, classes))

    def frozen():
        model = mlp()
        model.fc1.requires_grad_(False)
        return model
    add("frozen first layer (requires_grad=False: no gradient, nothing to clip)", _seeded(rng, frozen), cross_entropy,
        _classification(rng, n, d_in, classes), exclude=head)

    def with_norm():
        return _named(("fc1", nn.Linear(d_in, width)), ("norm", nn.BatchNorm1d(width)), ("act", nn.PReLU()),
                      ("head", nn.Linear(width, classes))).eval()
    add("model in evaluation mode with BatchNorm1d and a PReLU slope (keep the mode; a bias, a gain and a "
        "one-element slope are one unit each)", _seeded(rng, with_norm), cross_entropy,
        _classification(rng, n, d_in, classes), exclude=head, repeat=2)
    add("magnitude 1e4 inputs (large gradients)", _seeded(rng, mlp), cross_entropy,
        _classification(rng, n, d_in, classes, scale=1e4), exclude=head)
    add("batch size 1", _seeded(rng, mlp), cross_entropy, _classification(rng, 1, d_in, classes), exclude=head)
    regression = (_tensor(rng, (n, d_in)), _tensor(rng, (n, classes)))
    add("squared-error loss (mse_loss)", _seeded(rng, mlp), mse_loss, regression)
    add("no unit clipped", _seeded(rng, mlp), cross_entropy, _classification(rng, n, d_in, classes), clipping=1e3)
    add("every unit clipped", _seeded(rng, mlp), cross_entropy, _classification(rng, n, d_in, classes), clipping=1e-6,
        exclude=head)
    add("float32 model and inputs", _seeded(rng, mlp, torch.float32), cross_entropy,
        _classification(rng, n, d_in, classes, dtype=torch.float32), exclude=head, **FLOAT32_TORCH_TOL)
    return cases


# ---------------------------------------------------------------------------------------------------
# The experiment: a deep residual MLP, plain, with SkipInit, and plain with AGC.

#: The experiment's fixed call (chapter 9's residual MLP: 8 blocks of width 32, He initialization, SGD
#: with momentum 0.9 on batches of 64 digits; every plain network of the chapter diverged at lr >= 0.04).
EXPERIMENT_SEEDS = (0, 1, 2)
EXPERIMENT_LR = 0.05
EXPERIMENT_STEPS = 40
EXPERIMENT_CLIPPING = 0.02
EXPERIMENT_KEYS = ("plain", "skipinit", "agc", "agc_clipped")
#: How much the trained networks must improve: mean loss over the last 10 steps below this fraction of
#: the first loss (measured: about 0.06 with SkipInit and 0.1 to 0.2 with AGC; see the tests).
IMPROVEMENT = 0.5
#: How much larger the plain network's first loss is than SkipInit's (measured: about 8 times; the
#: identity start keeps the stream at the stem's scale, the plain one has grown 2^8-fold).
START_RATIO = 3.0


def training_cases(_rng=None) -> list[Case]:
    data = load_digits_tensors()
    return [Case(f"residual_training(digits.x_train, digits.y_train, seeds={EXPERIMENT_SEEDS}, lr={EXPERIMENT_LR}, "
                 f"steps={EXPERIMENT_STEPS}, clipping={EXPERIMENT_CLIPPING})",
                 (data.x_train, data.y_train, EXPERIMENT_SEEDS),
                 {"lr": EXPERIMENT_LR, "steps": EXPERIMENT_STEPS, "clipping": EXPERIMENT_CLIPPING})]


def _curves(actual, key, name, label) -> np.ndarray:
    where = f"{name}[{key!r}] for case {label!r}"
    value = actual[key]
    shape = (len(EXPERIMENT_SEEDS), EXPERIMENT_STEPS)
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.shape != shape:
        raise GradingError(f"{where}: expected a float numpy array of shape {shape} (seeds x steps), got "
                           f"{type(value).__name__}" + (f" of shape {value.shape} and dtype {value.dtype}"
                                                        if isinstance(value, np.ndarray) else ""))
    value = value.astype(np.float64)
    if np.isinf(value).any():
        index = tuple(int(i) for i in np.argwhere(np.isinf(value))[0])
        raise GradingError(f"{where}: inf at index {index} (seed, step); record nan from the step whose loss is not "
                           f"finite on")
    for i, seed in enumerate(EXPERIMENT_SEEDS):
        missing = np.isnan(value[i])
        if missing.any() and not missing[int(np.argmax(missing)):].all():
            first = int(np.argmax(missing))
            raise GradingError(f"{where}: for seed {seed} the entry of step {first} is nan but a later one is not; a "
                               f"network whose loss was not finite stops training (nan for every later step)")
    if np.nanmin(np.where(np.isnan(value), 0.0, value)) < 0:
        index = tuple(int(i) for i in np.argwhere(value < 0)[0])
        raise GradingError(f"{where}: negative value {value[index]:.6g} at index {index} (seed, step)")
    return value


def training_properties(actual, expected, *, name, label, rtol=None, atol=None) -> None:
    """What chapter 9 measures for a deep residual MLP at a large learning rate, on the learner's numbers.

    1. The result is ``{"plain", "skipinit", "agc", "agc_clipped"}`` of float arrays (seeds x steps),
       with nan only from a diverged network's first non-finite step on, never inf, never negative.
    2. The plain network diverges for every seed (chapter 9: every plain network diverged at learning
       rates of 0.04 and more).
    3. SkipInit and AGC never diverge, and both learn: for every seed the mean loss over the last 10
       steps is below half the first loss.
    4. The starts: SkipInit's first loss is at least 3 times below the plain network's (its blocks are
       the identity at initialization), and AGC's first loss equals the plain network's (the same
       network, the same first batch: the clipping acts only from the first update on).
    5. ``agc_clipped`` (the share of clipped units at every step) lies in [0, 1].
    """
    del expected, rtol, atol  # no reference: properties only
    if not isinstance(actual, dict) or set(actual) != set(EXPERIMENT_KEYS):
        got = sorted(actual) if isinstance(actual, dict) else type(actual).__name__
        raise GradingError(f"{name} for case {label!r}: expected a dict with the keys {list(EXPERIMENT_KEYS)}, got {got}")
    curves = {key: _curves(actual, key, name, label) for key in EXPERIMENT_KEYS}
    plain, skip, agc, share = (curves[k] for k in EXPERIMENT_KEYS)
    for i, seed in enumerate(EXPERIMENT_SEEDS):
        if not np.isnan(plain[i]).any():
            raise GradingError(
                f"{name}['plain'] for case {label!r}: for seed {seed} the plain network never diverged (last loss "
                f"{plain[i, -1]:.4g}); chapter 9 finds every plain network diverging at this learning rate. Check "
                f"that it is residual_mlp(seed, skipinit=False) trained with SGD(lr={EXPERIMENT_LR}, momentum=0.9) "
                f"on batches of 64, and that 'plain' and 'skipinit' are not swapped")
        if np.isnan(plain[i, 0]):
            raise GradingError(f"{name}['plain'] for case {label!r}: for seed {seed} the first loss is nan; the loss "
                               f"at initialization is finite (record it before the first update)")
        for key, values in (("skipinit", skip), ("agc", agc)):
            if np.isnan(values[i]).any():
                step = int(np.argmax(np.isnan(values[i])))
                raise GradingError(f"{name}[{key!r}] for case {label!r}: for seed {seed} the loss is not finite from "
                                   f"step {step} on; chapter 9 trains these networks without divergence")
            first, last = values[i, 0], float(values[i, -10:].mean())
            if not last < IMPROVEMENT * first:
                raise GradingError(f"{name}[{key!r}] for case {label!r}: for seed {seed} the mean loss over the last "
                                   f"10 steps is {last:.4g}, not below {IMPROVEMENT} times the first loss "
                                   f"{first:.4g}; the network should learn (is the update applied, with the "
                                   f"gradients of the current batch?)")
        if not plain[i, 0] >= START_RATIO * skip[i, 0]:
            raise GradingError(f"{name} for case {label!r}: for seed {seed} the first loss is {plain[i, 0]:.4g} for the "
                               f"plain network and {skip[i, 0]:.4g} with SkipInit; a SkipInit network starts as its "
                               f"stem and head alone (every block the identity), far below the plain network's "
                               f"(at least {START_RATIO:g} times)")
        if not math.isclose(agc[i, 0], plain[i, 0], rel_tol=1e-5):
            raise GradingError(f"{name} for case {label!r}: for seed {seed} the first loss is {agc[i, 0]:.8g} with "
                               f"AGC and {plain[i, 0]:.8g} without; both runs start from residual_mlp(seed, "
                               f"skipinit=False) on the same first batch, so the first losses are equal (the "
                               f"clipping acts from the first update on)")
    if np.isnan(share).any() or share.min() < 0 or share.max() > 1:
        index = tuple(int(i) for i in np.argwhere(np.isnan(share) | (share < 0) | (share > 1))[0])
        raise GradingError(f"{name}['agc_clipped'] for case {label!r}: {share[index]:.6g} at index {index} (seed, "
                           f"step); the share of clipped units lies between 0 and 1")


# ---------------------------------------------------------------------------------------------------
# The parts.

def _numpy_part(grade_id, function, reference, cases, points, seed, description, compare=compare_array):
    return Part(PROBLEM_SET, grade_id, function, reference, cases, points=points, seed=seed, compare=compare,
                description=description, forbid=(NO_TORCH,))


def _torch_part(grade_id, function, reference, cases, points, seed, description, **extra):
    return Part(PROBLEM_SET, grade_id, function, reference, cases, points=points, seed=seed, rtol=TORCH_RTOL,
                atol=TORCH_ATOL, description=description, **extra)


DYT_RESULTS = ("dx", "dalpha", "dweight", "dbias")

PARTS = [
    _torch_part("skip_init", "run_skip_init", run_skip_init_reference, visible_skip_init_cases, 1, 811,
                "visible test: the demo branch at alpha_init 0 and 0.5", compare=compare_dict),
    _torch_part("skip_init_hidden", "run_skip_init", run_skip_init_reference, skip_init_cases, 2, 801,
                "SkipInit y = x + alpha f(x): output, gradients, alpha a registered parameter; the caller's branch "
                "wrapped, not copied", compare=compare_dict),
    _numpy_part("weight_standardization", "weight_standardization", ref.weight_standardization,
                visible_weight_standardization_cases, 1, 812, "visible test: the cell's four calls"),
    _numpy_part("weight_standardization_hidden", "weight_standardization", ref.weight_standardization,
                weight_standardization_cases, 2, 802, "Weight Standardization per output unit"),
    _numpy_part("scaled_weight_standardization", "scaled_weight_standardization", ref.scaled_weight_standardization,
                visible_scaled_weight_standardization_cases, 1, 813, "visible test: the cell's three calls"),
    _numpy_part("scaled_weight_standardization_hidden", "scaled_weight_standardization",
                ref.scaled_weight_standardization, scaled_weight_standardization_cases, 2, 803,
                "scaled Weight Standardization with gain, gamma and the max(N sigma^2, eps) floor"),
    _numpy_part("unitwise_norm", "unitwise_norm", ref.unitwise_norm, visible_unitwise_norm_cases, 1, 814,
                "visible test: the cell's five calls"),
    _numpy_part("unitwise_norm_hidden", "unitwise_norm", ref.unitwise_norm, unitwise_norm_cases, 1, 804,
                "Frobenius norm of every output unit (a vector or a scalar is one unit)"),
    _numpy_part("adaptive_clip_grad", "adaptive_clip_grad", ref.adaptive_clip_grad, visible_adaptive_clip_grad_cases,
                1, 815, "visible test: the cell's four calls"),
    _numpy_part("adaptive_clip_grad_hidden", "adaptive_clip_grad", ref.adaptive_clip_grad, adaptive_clip_grad_cases,
                3, 805, "unit-wise adaptive gradient clipping with the floor eps"),
    _torch_part("agc_backward", "agc_backward", agc_backward_reference, visible_agc_backward_cases, 1, 816,
                "visible test: the demo MLP, called twice, head excluded", compare=compare_share),
    _torch_part("agc_backward_hidden", "agc_backward", agc_backward_reference, agc_backward_cases, 2, 806,
                "gradients of one backward pass clipped in place by AGC; the model's state checked",
                compare=compare_share),
    _numpy_part("dynamic_tanh_backward", "dynamic_tanh_backward", ref.dynamic_tanh_backward,
                visible_dynamic_tanh_backward_cases, 1, 817, "visible test: the cell's three calls",
                compare=named_tuple_compare(DYT_RESULTS)),
    _numpy_part("dynamic_tanh_backward_hidden", "dynamic_tanh_backward", ref.dynamic_tanh_backward,
                dynamic_tanh_backward_cases, 2, 807, "Dynamic Tanh backward: dx, dalpha, dweight, dbias",
                compare=named_tuple_compare(DYT_RESULTS)),
    _torch_part("residual_training", "residual_training", None, training_cases, 2, 818,
                "experiment: a deep residual MLP at a large learning rate, plain, with SkipInit and with AGC, "
                "three seeds (properties chapter 9 predicts; no reference)", compare=training_properties),
]

register(PARTS, provides=("normcourse.lab.models",))
