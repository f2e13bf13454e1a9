"""Comparisons that fail with a message a learner can act on.

Every check looks at type, shape, dtype and finiteness *before* values, because "max error nan" or
"operands could not be broadcast" teaches nothing. Messages name what differs and where, for example::

    layer_norm(x) for case 'batch size 1, float32': value mismatch at index (0, 3): got 0.4100, expected 0.0
    (max abs error 0.41 > tolerance 1e-05 + 1e-05 * |expected|; 12 of 48 elements differ)

Tolerances: ``tolerance_for(dtype)`` gives the defaults used by the course. In float64 the reference
and a correct learner implementation differ only by summation order, a few ulps times the number of
summed terms, so 1e-10 absolute/relative is tight yet never flaky for inputs of magnitude up to 1e4.
In float32 the unit roundoff is 6e-8 and the statistics of a few thousand elements accumulate a few
hundred ulps, so 1e-4 is the honest bound.
"""

from __future__ import annotations

import numpy as np

__all__ = ["GradingError", "tolerance_for", "assert_array_matches", "assert_scalar_matches",
           "assert_normalized", "assert_state_matches"]


class GradingError(AssertionError):
    """A learner-facing assertion failure (an AssertionError, so nbgrader scores the cell 0)."""


def tolerance_for(dtype) -> tuple[float, float]:
    """Default ``(rtol, atol)`` for comparing arrays of ``dtype`` with the float64 reference."""
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return 1e-10, 1e-10
    if dtype == np.float32:
        return 1e-4, 1e-4
    if dtype == np.float16:
        return 1e-2, 1e-2
    return 1e-10, 1e-10


def _where(label: str | None) -> str:
    return f" for case {label!r}" if label else ""


def _is_array_like(x) -> bool:
    return isinstance(x, np.ndarray) or type(x).__module__.startswith("torch")


def assert_array_matches(actual, expected, *, name: str = "output", label: str | None = None,
                         rtol: float | None = None, atol: float | None = None,
                         check_dtype: bool = True) -> None:
    """Assert that ``actual`` is an array equal to ``expected`` within tolerance, explaining any gap.

    Args:
        actual: the learner's result.
        expected: the reference result (a numpy array).
        name: what the value is, e.g. ``"layer_norm(x)"`` or ``"dgamma"``.
        label: the test case, e.g. ``"batch size 1, float32"``.
        rtol, atol: tolerances; default :func:`tolerance_for` of the expected dtype.
        check_dtype: require the same dtype as ``expected``.

    Raises:
        GradingError: with a message that says what differs (type, shape, dtype, non-finite values,
            or the first and the worst mismatching element).
    """
    where = _where(label)
    expected = np.asarray(expected)
    if not _is_array_like(actual):
        raise GradingError(f"{name}{where}: expected a numpy array, got {type(actual).__name__}"
                           + (" (did you forget to return the result?)" if actual is None else ""))
    if not isinstance(actual, np.ndarray):
        raise GradingError(f"{name}{where}: expected a numpy array, got {type(actual).__module__}."
                           f"{type(actual).__name__}; convert with .numpy() or compute in numpy")
    if actual.shape != expected.shape:
        raise GradingError(f"{name}{where}: shape {actual.shape}, expected {expected.shape}")
    if check_dtype and actual.dtype != expected.dtype:
        raise GradingError(f"{name}{where}: dtype {actual.dtype}, expected {expected.dtype} "
                           f"(return the input's dtype; compute in float64 and cast back if you like)")
    if actual.dtype.kind not in "fiub":
        raise GradingError(f"{name}{where}: dtype {actual.dtype} is not numeric")
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    bad = ~np.isfinite(a) & np.isfinite(e)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise GradingError(f"{name}{where}: non-finite value {a[idx]} at index {idx} "
                           f"({int(bad.sum())} of {a.size} elements are NaN or inf), expected {e[idx]:.6g}; "
                           f"look for a division by zero or a square root of a negative number")
    default_rtol, default_atol = tolerance_for(expected.dtype)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    err = np.abs(a - e)
    limit = atol + rtol * np.abs(e)
    wrong = err > limit
    if wrong.any():
        first = tuple(int(i) for i in np.argwhere(wrong)[0])
        worst = np.unravel_index(int(np.argmax(err - limit)), err.shape)
        worst = tuple(int(i) for i in worst)
        msg = (f"{name}{where}: value mismatch at index {first}: got {a[first]:.6g}, expected {e[first]:.6g} "
               f"(max abs error {err.max():.3g} at index {worst}; tolerance {atol:g} + {rtol:g} * |expected|; "
               f"{int(wrong.sum())} of {a.size} elements differ)")
        raise GradingError(msg)


def assert_scalar_matches(actual, expected: float, *, name: str = "value", label: str | None = None,
                          rtol: float = 1e-8, atol: float = 1e-10) -> None:
    """Assert that ``actual`` is a finite real number close to ``expected``."""
    where = _where(label)
    try:
        value = float(actual)
    except (TypeError, ValueError):
        raise GradingError(f"{name}{where}: expected a number, got {type(actual).__name__}") from None
    if np.ndim(actual) != 0:
        raise GradingError(f"{name}{where}: expected a scalar, got an array of shape {np.shape(actual)}")
    if not np.isfinite(value):
        raise GradingError(f"{name}{where}: got {value}, expected {expected:.6g}")
    if abs(value - expected) > atol + rtol * abs(expected):
        raise GradingError(f"{name}{where}: got {value:.8g}, expected {expected:.8g} "
                           f"(error {abs(value - expected):.3g}; tolerance {atol:g} + {rtol:g} * |expected|)")


def assert_normalized(y, axes: tuple[int, ...], *, name: str = "output", center: bool = True,
                      atol: float = 1e-4) -> None:
    """Assert zero mean (if ``center``) and unit variance (mean square if not) along ``axes``.

    This is the property a learner can check without any reference. eps shrinks the variance of a
    normalized slice to ``var / (var + eps)``: with eps = 1e-5 and slices of variance near 1 that is
    within the default ``atol`` of 1e-4 of one, so use inputs of unit-order variance.
    """
    y = np.asarray(y, dtype=np.float64)
    mean = y.mean(axis=axes)
    if center and np.abs(mean).max() > atol:
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(np.abs(mean))), mean.shape))
        raise GradingError(f"{name}: the slice at kept index {idx} has mean {mean[idx]:.4g}, expected 0 "
                           f"(statistics must be taken over axes {axes})")
    second = (y - mean.reshape([1 if a in axes else s for a, s in enumerate(y.shape)]) if center
              else y) ** 2
    var = second.mean(axis=axes)
    if np.abs(var - 1).max() > atol:
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(np.abs(var - 1))), var.shape))
        kind = "variance" if center else "mean square"
        raise GradingError(f"{name}: the slice at kept index {idx} has {kind} {var[idx]:.4g}, expected 1 "
                           f"(statistics must be taken over axes {axes}; use the biased variance)")


def _state_hint(key: str) -> str:
    if key.endswith(".grad is set") or key.endswith(" .grad"):
        return ("; leave .grad as you found it (take gradients with torch.autograd.grad, or put back what "
                "you changed)")
    if key.endswith(".training"):
        return "; leave the model in the mode you got it in (or put it back with model.train(mode))"
    if key.startswith("buffer "):
        return "; running statistics are buffers: a forward pass in training mode moves them"
    if key.endswith("requires_grad"):
        return "; do not change requires_grad of the caller's parameters"
    return "; parameters must end as the contract says (unchanged unless it says otherwise)"


def assert_state_matches(actual: dict, expected: dict, *, name: str, label: str | None = None,
                         rtol: float | None = None, atol: float | None = None) -> None:
    """Assert that a torch module's state after a call (see
    :func:`normcourse.grading.recheck_child.module_state`) equals the state the reference leaves.

    Raises:
        GradingError: naming the first parameter, grad, buffer or mode flag that differs.
    """
    where = _where(label)
    for key in expected:
        if key not in actual:
            raise GradingError(f"{name}{where}: {key} is missing (expected {_short(expected[key])})"
                               + _state_hint(key))
    for key in actual:
        if key not in expected:
            raise GradingError(f"{name}{where}: {key} is present, but the reference leaves no such thing"
                               + _state_hint(key))
    for key, want in expected.items():
        got = actual[key]
        if want.dtype == bool or got.dtype == bool:
            if got.shape != want.shape or not np.array_equal(got, want):
                raise GradingError(f"{name}{where}: {key} is {_short(got)}, expected {_short(want)}"
                                   + _state_hint(key))
            continue
        try:
            assert_array_matches(got, want, name=f"{name}: {key}", label=label, rtol=rtol, atol=atol,
                                 check_dtype=False)
        except GradingError as exc:
            raise GradingError(str(exc) + _state_hint(key)) from None


def _short(value) -> str:
    value = np.asarray(value)
    return str(value.item()) if value.size == 1 else f"an array of shape {value.shape}"
