"""Comparisons that fail with a message a learner can act on.

Every check looks at type, shape, dtype and finiteness *before* values, because "max error nan" or
"operands could not be broadcast" teaches nothing. A value mismatch names the result (by name, never
by position), the case, the first and the worst differing element with got and expected printed to
as many digits as it takes for them to differ visibly, and the tolerance, for example::

    layer_norm(...) for case 'batch size 1, float32': 12 of 48 elements differ. First at index (0, 3):
    got 0.41, expected 0 (error 0.41). Worst at index (1, 2): got -1.4400623, expected -1.4400612
    (error 1.1e-06). Tolerance: |got - expected| <= 1e-10 + 1e-10 * |expected|.

Results with several parts are compared part by part, each under its own name:
:func:`named_results` (a tuple such as ``(dx, dweight, dbias)``) and :func:`assert_results_match`
(a dict such as ``{"step 4 (eval) output": ..., "running_mean": ...}``). Gradients are checked
against central differences of a forward pass with :func:`assert_gradients_match`, which problem-set
test cells use so that a test of a backward pass needs nothing but the function it grades.

Tolerances: ``tolerance_for(dtype)`` gives the defaults used by the course. In float64 the reference
and a correct learner implementation differ only by summation order, a few ulps times the number of
summed terms, so 1e-10 absolute/relative is tight yet never flaky for inputs of magnitude up to 1e4.
In float32 the unit roundoff is 6e-8 and the statistics of a few thousand elements accumulate a few
hundred ulps, so 1e-4 is the honest bound.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

__all__ = ["GradingError", "tolerance_for", "format_pair", "assert_array_like", "assert_array_matches", "assert_raises", "assert_scalar_matches",
           "assert_results_match", "named_results", "assert_normalized", "assert_state_matches",
           "central_difference_gradient", "assert_gradients_match"]


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


def format_pair(got: float, expected: float) -> tuple[str, str]:
    """``got`` and ``expected`` as text, with the fewest significant digits (at least 6, at most 17)
    at which the two texts differ, so a message never reads "got -1.44006, expected -1.44006"."""
    got, expected = float(got), float(expected)
    for digits in range(6, 18):
        a, b = f"{got:.{digits}g}", f"{expected:.{digits}g}"
        if a != b:
            return a, b
    return repr(got), repr(expected)


def _where(label: str | None) -> str:
    return f" for case {label!r}" if label else ""


def _tolerance(rtol: float, atol: float) -> str:
    return f"Tolerance: |got - expected| <= {atol:g} + {rtol:g} * |expected|."


def _is_array_like(x) -> bool:
    return isinstance(x, np.ndarray) or type(x).__module__.startswith("torch")


def assert_array_like(actual, like, *, name: str = "output", label: str | None = None) -> None:
    """Assert that ``actual`` is a numpy array of ``like``'s shape and dtype (before any value is looked at).

    Example:
        >>> assert_array_like(np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32), name="f(x)")
    """
    where = _where(label)
    like = np.asarray(like)
    if not isinstance(actual, np.ndarray):
        raise GradingError(f"{name}{where}: expected a numpy array of shape {like.shape} and dtype {like.dtype}, "
                           f"got {type(actual).__name__}"
                           + (" (did you forget to return the result?)" if actual is None else ""))
    if actual.shape != like.shape:
        raise GradingError(f"{name}{where}: shape {actual.shape}, expected {like.shape}")
    if actual.dtype != like.dtype:
        raise GradingError(f"{name}{where}: dtype {actual.dtype}, expected {like.dtype} "
                           f"(return the input's dtype; compute in float64 and cast back if you like)")


def assert_array_matches(actual, expected, *, name: str = "output", label: str | None = None,
                         rtol: float | None = None, atol: float | None = None,
                         check_dtype: bool = True) -> None:
    """Assert that ``actual`` is an array equal to ``expected`` within tolerance, explaining any gap.

    Args:
        actual: the learner's result.
        expected: the reference result (a numpy array).
        name: what the value is, e.g. ``"layer_norm(x)"`` or ``"dweight"``.
        label: the test case, e.g. ``"batch size 1, float32"``.
        rtol, atol: tolerances; default :func:`tolerance_for` of the expected dtype.
        check_dtype: require the same dtype as ``expected``.

    Raises:
        GradingError: with a message that says what differs (type, shape, dtype, non-finite values,
            or the first and the worst mismatching element, and the tolerance).

    Example:
        >>> assert_array_matches(np.array([1.0, 2.0]), np.array([1.0, 2.0]), name="y", label="by hand")
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
        at = f"index {idx}" if idx else "the value"
        raise GradingError(f"{name}{where}: non-finite value {a[idx]} at {at} "
                           f"({int(bad.sum())} of {a.size} elements are NaN or inf), expected "
                           f"{format_pair(a[idx], e[idx])[1]}; look for a division by zero or a square "
                           f"root of a negative number")
    default_rtol, default_atol = tolerance_for(expected.dtype)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    err = np.abs(a - e)
    wrong = err > atol + rtol * np.abs(e)
    if not wrong.any():
        return
    first = tuple(int(i) for i in np.argwhere(wrong)[0])
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(np.where(wrong, err, -1.0))), err.shape))

    def element(idx):
        got, want = format_pair(a[idx], e[idx])
        return f"got {got}, expected {want} (error {err[idx]:.3g})"
    if a.ndim == 0:
        detail = f"{element(())}."
    elif first == worst:
        detail = f"{int(wrong.sum())} of {a.size} elements differ. At index {first}: {element(first)}."
    else:
        detail = (f"{int(wrong.sum())} of {a.size} elements differ. First at index {first}: {element(first)}. "
                  f"Worst at index {worst}: {element(worst)}.")
    raise GradingError(f"{name}{where}: {detail} {_tolerance(rtol, atol)}")


def assert_raises(exception: type[BaseException], fn: Callable, *args, name: str, label: str | None = None,
                  **kwargs) -> None:
    """Assert that ``fn(*args, **kwargs)`` raises ``exception`` (or a subclass); its message is free.

    Args:
        exception: the exception type the contract promises, e.g. ``ValueError`` for a bad argument.
        fn: the function under test.
        *args, **kwargs: the call.
        name: what the call is, e.g. ``"residual_block(x, F, N, 'middle')"``.
        label: the test case, if any.

    Raises:
        GradingError: if the call returns, or raises another exception (named in the message).

    Example:
        >>> assert_raises(ValueError, int, "seven", name="int('seven')")
    """
    where = _where(label)
    try:
        fn(*args, **kwargs)
    except exception:
        return
    except NotImplementedError:
        raise GradingError(f"{name}{where}: not implemented yet (it raised NotImplementedError)") from None
    except Exception as exc:
        raise GradingError(f"{name}{where}: raised {type(exc).__name__} ({exc}), expected "
                           f"{exception.__name__}") from exc
    raise GradingError(f"{name}{where}: returned, but it must raise {exception.__name__} there")


def assert_scalar_matches(actual, expected: float, *, name: str = "value", label: str | None = None,
                          rtol: float = 1e-8, atol: float = 1e-10) -> None:
    """Assert that ``actual`` is a finite real number close to ``expected``."""
    where = _where(label)
    if isinstance(actual, (str, bytes)) or actual is None:
        raise GradingError(f"{name}{where}: expected a number, got {type(actual).__name__}"
                           + (" (did you forget to return the result?)" if actual is None else ""))
    if np.ndim(actual) != 0:
        raise GradingError(f"{name}{where}: expected a scalar, got an array of shape {np.shape(actual)}")
    try:
        value = float(actual)
    except (TypeError, ValueError):
        raise GradingError(f"{name}{where}: expected a number, got {type(actual).__name__}") from None
    if not np.isfinite(value):
        raise GradingError(f"{name}{where}: got {value}, expected {format_pair(value, expected)[1]}")
    if abs(value - expected) > atol + rtol * abs(expected):
        got, want = format_pair(value, expected)
        raise GradingError(f"{name}{where}: got {got}, expected {want} (error {abs(value - expected):.3g}). "
                           f"{_tolerance(rtol, atol)}")


def _compare_value(actual, expected, *, name: str, label: str | None, rtol, atol) -> None:
    """One result: None, a number, an array, or (recursively) a tuple/list/dict of them."""
    where = _where(label)
    if expected is None:
        if actual is not None:
            raise GradingError(f"{name}{where}: expected None (nothing to return in this case), "
                               f"got {type(actual).__name__}")
        return
    if isinstance(expected, Mapping):
        assert_results_match(actual, expected, name=name, label=label, rtol=rtol, atol=atol)
        return
    if isinstance(expected, (tuple, list)):
        assert_results_match(actual, expected, name=name, label=label, rtol=rtol, atol=atol)
        return
    if np.ndim(expected) == 0 and not isinstance(expected, np.ndarray):
        assert_scalar_matches(actual, float(expected), name=name, label=label,
                              rtol=1e-8 if rtol is None else rtol, atol=1e-10 if atol is None else atol)
        return
    assert_array_matches(actual, expected, name=name, label=label, rtol=rtol, atol=atol)


def assert_results_match(actual, expected, *, name: str, label: str | None = None, rtol=None, atol=None,
                         names: Sequence[str] | None = None) -> None:
    """Compare a result with several parts, each under its own name.

    Args:
        actual: the learner's result.
        expected: the reference result: a dict (each entry compared under its key, e.g.
            ``"running_mean"``), a tuple or list (each entry under ``names[i]``, e.g. ``"dweight"``,
            else "result i"), or a single value.
        name: the call, e.g. ``"layer_norm_backward(...)"``; each part is named ``"<name> -> <part>"``.
        label, rtol, atol: as in :func:`assert_array_matches`.
        names: the names of a tuple's entries, in order.

    Raises:
        GradingError: naming the part that is missing, extra or different.
    """
    where = _where(label)
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            raise GradingError(f"{name}{where}: expected a dict with keys {list(expected)}, "
                               f"got {type(actual).__name__}")
        missing = [k for k in expected if k not in actual]
        extra = [k for k in actual if k not in expected]
        if missing or extra:
            raise GradingError(f"{name}{where}: keys differ: missing {missing}, unexpected {extra}")
        for key, want in expected.items():
            _compare_value(actual[key], want, name=f"{name} -> {key}", label=label, rtol=rtol, atol=atol)
        return
    if isinstance(expected, (tuple, list)):
        kind = "tuple" if isinstance(expected, tuple) else "list"
        described = f" ({', '.join(names)})" if names else ""
        if not isinstance(actual, (tuple, list)) or len(actual) != len(expected):
            got = f"a {type(actual).__name__}" + (f" of length {len(actual)}"
                                                   if isinstance(actual, (tuple, list)) else "")
            raise GradingError(f"{name}{where}: expected a {kind} of {len(expected)} results{described}, got {got}")
        for i, (a, e) in enumerate(zip(actual, expected)):
            part = names[i] if names and i < len(names) else f"result {i + 1} of {len(expected)}"
            _compare_value(a, e, name=f"{name} -> {part}", label=label, rtol=rtol, atol=atol)
        return
    _compare_value(actual, expected, name=name, label=label, rtol=rtol, atol=atol)


def named_results(*names: str) -> Callable:
    """A ``Part.compare`` for a function that returns a tuple of named results.

    Example:
        ``Part(..., compare=named_results("dx", "dweight", "dbias"))`` reports
        "layer_norm_backward(...) -> dweight for case ...: ..." instead of "layer_norm_backward(...)[1]".
    """
    def compare(actual, expected, *, name: str, label: str, rtol=None, atol=None) -> None:
        assert_results_match(actual, expected, name=name, label=label, rtol=rtol, atol=atol, names=names)
    compare.__doc__ = f"Compare a tuple ({', '.join(names)}) entry by entry, each under its name."
    return compare


def assert_normalized(y, axes: tuple[int, ...], *, name: str = "output", label: str | None = None,
                      center: bool = True, atol: float = 1e-4) -> None:
    """Assert zero mean (if ``center``) and unit variance (mean square if not) along ``axes``.

    This is the property a learner can check without any reference. eps shrinks the variance of a
    normalized slice to ``var / (var + eps)``: with eps = 1e-5 and slices of variance near 1 that is
    within the default ``atol`` of 1e-4 of one, so use inputs of unit-order variance.
    """
    where = _where(label)
    if not isinstance(y, np.ndarray):
        raise GradingError(f"{name}{where}: expected a numpy array, got {type(y).__name__}")
    y = np.asarray(y, dtype=np.float64)
    mean = y.mean(axis=axes)
    if center and np.abs(mean).max() > atol:
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(np.abs(mean))), mean.shape))
        raise GradingError(f"{name}{where}: the slice at kept index {idx} has mean {mean[idx]:.6g}, expected 0 "
                           f"(tolerance {atol:g}; statistics must be taken over axes {axes})")
    second = (y - mean.reshape([1 if a in axes else s for a, s in enumerate(y.shape)]) if center
              else y) ** 2
    var = second.mean(axis=axes)
    if np.abs(var - 1).max() > atol:
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(np.abs(var - 1))), var.shape))
        kind = "variance" if center else "mean square"
        raise GradingError(f"{name}{where}: the slice at kept index {idx} has {kind} "
                           f"{format_pair(var[idx], 1.0)[0]}, expected 1 (tolerance {atol:g}; statistics must "
                           f"be taken over axes {axes}; use the biased variance)")


#: ``hint(key, expected) -> str | None``: a function's own advice for a state entry that differs from
#: the reference's (``key`` as :func:`~normcourse.grading.recheck_child.module_state` names it,
#: ``expected`` the reference's value or None); None falls back on the default advice.
StateHint = Callable[[str, object], "str | None"]


def _state_hint(key: str, expected=None, hint: StateHint | None = None) -> str:
    """The advice appended to a state mismatch. The defaults fit a function that must leave the model
    alone; a function whose contract changes the model on purpose (freeze some layers, put every mode
    back one by one) gives its own ``hint``, since "put it back with model.train(mode)" would then be
    wrong advice."""
    advice = hint(key, expected) if hint is not None else None
    if advice:
        return "; " + advice
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
                         rtol: float | None = None, atol: float | None = None,
                         hint: StateHint | None = None) -> None:
    """Assert that a torch module's state after a call (see
    :func:`normcourse.grading.recheck_child.module_state`) equals the state the reference leaves.

    Args:
        actual, expected: the learner's and the reference's state, by key (``"module 1 .training"``).
        name, label, rtol, atol: as in :func:`assert_array_matches`.
        hint: the function's own advice for an entry that differs (see :data:`StateHint`); by default
            the advice for a function that must leave the model alone.

    Raises:
        GradingError: naming the first parameter, grad, buffer or mode flag that differs.
    """
    where = _where(label)
    for key in expected:
        if key not in actual:
            raise GradingError(f"{name}{where}: {key} is missing (expected {_short(expected[key])})"
                               + _state_hint(key, expected[key], hint))
    for key in actual:
        if key not in expected:
            raise GradingError(f"{name}{where}: {key} is present, but the reference leaves no such thing"
                               + _state_hint(key, None, hint))
    for key, want in expected.items():
        got = actual[key]
        if want.dtype == bool or got.dtype == bool:
            if got.shape != want.shape or not np.array_equal(got, want):
                raise GradingError(f"{name}{where}: {key} is {_short(got)}, expected {_short(want)}"
                                   + _state_hint(key, want, hint))
            continue
        try:
            assert_array_matches(got, want, name=f"{name}: {key}", label=label, rtol=rtol, atol=atol,
                                 check_dtype=False)
        except GradingError as exc:
            raise GradingError(str(exc) + _state_hint(key, want, hint)) from None


def _short(value) -> str:
    value = np.asarray(value)
    return str(value.item()) if value.size == 1 else f"an array of shape {value.shape}"


# ---------------------------------------------------------------------------------------------------
# Gradients against central differences.

def central_difference_gradient(f: Callable, x, h: float = 1e-5) -> np.ndarray:
    r"""Central-difference gradient of a scalar function, one coordinate at a time.

    .. math::
        \frac{\partial f}{\partial x_i} \approx \frac{f(x + h e_i) - f(x - h e_i)}{2h}

    The error is :math:`O(h^2)` (forward differences: :math:`O(h)`). Works on a float64 copy of ``x``,
    so the caller's array is never modified. A loop over coordinates is inherent: each coordinate
    needs its own two evaluations of ``f``.

    Args:
        f: maps an array of ``x``'s shape to a scalar.
        x: the point, any shape and float dtype. Not modified.
        h: the step. Default: 1e-5.

    Returns:
        a float64 array of ``x``'s shape.

    Example:
        >>> central_difference_gradient(lambda v: float(np.sum(v ** 2)), np.array([1.0, -2.0]))
        array([ 2., -4.])
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


def assert_gradients_match(gradients: Mapping[str, object], forward: Callable, inputs: Mapping[str, object],
                           dy, *, name: str, label: str | None = None, h: float = 1e-6,
                           rtol: float = 1e-5, atol: float = 1e-7) -> None:
    r"""Assert that hand-written gradients equal central differences of ``forward``.

    The loss is :math:`L = \sum dy \odot \text{forward}(**\text{inputs})`; for every input ``k`` (skipping
    None ones) ``gradients["d" + k]`` must equal :math:`\partial L / \partial k` by
    :func:`central_difference_gradient`. An input that is None must have a None gradient.

    Args:
        gradients: the learner's results by name, e.g. ``{"dx": dx, "dweight": dw, "dbias": db}``.
        forward: the forward pass as a function of the inputs by keyword (the course's, so that the test
            depends on nothing the learner wrote but the gradients).
        inputs: the forward's inputs by name, e.g. ``{"x": x, "weight": w, "bias": b}``.
        dy: the upstream gradient, of the forward's output shape.
        name: the call that produced the gradients, e.g. ``"layer_norm_backward(dy, x, (6,), w, b)"``.
        label: the test case.
        h: the finite-difference step (float64 throughout; 1e-6 balances truncation and rounding for
            unit-scale inputs).
        rtol, atol: tolerance of the comparison (central differences are accurate to about 1e-9 here,
            so 1e-5 / 1e-7 never flags a correct gradient and always flags a missing term).

    Raises:
        GradingError: naming the gradient that differs, with its first and worst elements.
    """
    dy = np.asarray(dy, dtype=np.float64)
    for key, value in inputs.items():
        grad_name = "d" + key
        if grad_name not in gradients:
            continue
        got = gradients[grad_name]
        if value is None:
            if got is not None:
                raise GradingError(f"{name} -> {grad_name}{_where(label)}: expected None ({key} is None), "
                                   f"got {type(got).__name__}")
            continue

        def loss(v, key=key):
            return float(np.sum(dy * np.asarray(forward(**{**inputs, key: v}), dtype=np.float64)))
        numeric = central_difference_gradient(loss, value, h=h)
        if isinstance(got, np.ndarray):
            got = got.astype(np.float64)
        assert_array_matches(got, numeric, name=f"{name} -> {grad_name} (compared with central differences)",
                             label=label, rtol=rtol, atol=atol, check_dtype=False)
