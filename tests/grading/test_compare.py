"""The comparison helpers: every failure names the value, the case, where it differs, by how much, and
the tolerance; values are printed until they visibly differ; results with several parts are named."""

from __future__ import annotations

import re

import numpy as np
import pytest

from normcourse.grading.compare import (GradingError, assert_array_like, assert_array_matches, assert_gradients_match,
                                        assert_normalized, assert_results_match, assert_scalar_matches,
                                        assert_state_matches, central_difference_gradient, format_pair,
                                        named_results)


def _message(fn, *args, **kwargs) -> str:
    with pytest.raises(GradingError) as info:
        fn(*args, **kwargs)
    return str(info.value)


@pytest.mark.parametrize("got, expected", [(-1.44006123, -1.44006121), (1.0, 1.0 + 2e-16), (1e-300, 2e-300),
                                           (123456.7, 123456.8), (0.1 + 0.2, 0.3)])
def test_format_pair_prints_until_the_values_differ(got, expected):
    a, b = format_pair(got, expected)
    assert a != b and float(a) == pytest.approx(got, rel=1e-15) and float(b) == pytest.approx(expected, rel=1e-15)


def test_format_pair_keeps_short_numbers_short():
    assert format_pair(0.41, 0.0) == ("0.41", "0")


def test_array_mismatch_names_first_and_worst_element_and_tolerance():
    expected = np.array([[0.1, -1.4400612], [0.5, 0.2]])
    actual = expected.copy()
    actual[0, 1], actual[1, 0] = -1.4400623, 0.9
    message = _message(assert_array_matches, actual, expected, name="layer_norm(...)", label="batch size 1")
    assert message.startswith("layer_norm(...) for case 'batch size 1': 2 of 4 elements differ.")
    assert "First at index (0, 1): got -1.440062, expected -1.440061 (error 1.1e-06)" in message
    assert "Worst at index (1, 0): got 0.9, expected 0.5 (error 0.4)" in message
    assert message.endswith("Tolerance: |got - expected| <= 1e-10 + 1e-10 * |expected|.")


def test_array_checks_type_shape_dtype_and_finiteness_before_values():
    e = np.zeros((2, 3))
    assert "did you forget to return" in _message(assert_array_matches, None, e, name="f(x)")
    assert "shape (3, 2), expected (2, 3)" in _message(assert_array_matches, np.zeros((3, 2)), e, name="f(x)")
    assert "dtype float32, expected float64" in _message(assert_array_matches, e.astype(np.float32), e, name="f(x)")
    bad = e.copy()
    bad[1, 2] = np.nan
    assert "non-finite value nan at index (1, 2)" in _message(assert_array_matches, bad, e, name="f(x)")


def test_array_like_checks_the_container_only():
    assert_array_like(np.ones((2, 3)), np.zeros((2, 3)), name="f(x)")
    assert "dtype float32, expected float64" in _message(assert_array_like, np.ones(3, np.float32), np.ones(3),
                                                          name="f(x)", label="c")


def test_scalar_mismatch_prints_distinguishable_values():
    message = _message(assert_scalar_matches, 2.000000001, 2.0, name="relative_error(a, b)", label="tiny", rtol=1e-12,
                       atol=0.0)
    assert re.search(r"got 2\.000000001, expected 2 \(error 1e-09\)", message), message
    assert "for case 'tiny'" in message and "Tolerance" in message


def test_named_results_name_each_part_and_expected_none():
    compare = named_results("dx", "dweight", "dbias")
    e = (np.zeros(2), np.ones(2), None)
    compare((np.zeros(2), np.ones(2), None), e, name="f(...)", label="c")
    assert "f(...) -> dweight for case 'c'" in _message(compare, (np.zeros(2), np.zeros(2), None), e, name="f(...)",
                                                         label="c")
    assert "f(...) -> dbias for case 'c': expected None" in _message(compare, (np.zeros(2), np.ones(2), np.ones(2)),
                                                                      e, name="f(...)", label="c")
    assert "expected a tuple of 3 results (dx, dweight, dbias), got a tuple of length 2" in _message(
        compare, (np.zeros(2), np.ones(2)), e, name="f(...)", label="c")


def test_dict_results_are_compared_by_key():
    expected = {"step 1 (train) output": np.zeros(2), "running_mean": np.ones(2)}
    message = _message(assert_results_match, {"step 1 (train) output": np.zeros(2), "running_mean": np.zeros(2)},
                       expected, name="run(...)", label="c")
    assert message.startswith("run(...) -> running_mean for case 'c'")
    assert "missing ['running_mean']" in _message(assert_results_match, {"step 1 (train) output": np.zeros(2)},
                                                  expected, name="run(...)", label="c")


def test_normalized_names_the_slice_and_the_tolerance():
    y = np.random.default_rng(0).normal(size=(4, 3, 5))
    message = _message(assert_normalized, y, (0, 2), name="bn(x)", label="x of shape (4, 3, 5)")
    assert message.startswith("bn(x) for case 'x of shape (4, 3, 5)': the slice at kept index")
    assert "tolerance 0.0001" in message


def test_state_mismatch_gives_the_functions_own_hint_or_the_default():
    """A function whose contract changes the model (freeze some layers) says so in its hint; without one, or
    where the hint has nothing to say, the advice is the default for functions that leave the model alone."""
    expected = {"parameter w": np.array([1.0, 2.0]), "module 1 .training": np.array(False)}
    actual = {"parameter w": np.array([1.0, 2.0]), "module 1 .training": np.array(True)}
    default = _message(assert_state_matches, actual, expected, name="the model", label="c")
    assert default == ("the model for case 'c': module 1 .training is True, expected False; leave the model in the "
                       "mode you got it in (or put it back with model.train(mode))")
    seen = []

    def freeze_hint(key, want):
        seen.append(key)
        return f"a BatchNorm layer goes to training={bool(want)}" if key.endswith(".training") else None
    own = _message(assert_state_matches, actual, expected, name="the model", label="c", hint=freeze_hint)
    assert own.endswith("module 1 .training is True, expected False; a BatchNorm layer goes to training=False")
    assert seen == ["module 1 .training"]
    assert _message(assert_state_matches, actual, expected, name="the model", label="c",
                    hint=lambda key, want: None) == default
    actual["parameter w"] = np.array([1.0, 2.5])
    assert _message(assert_state_matches, actual, expected, name="the model", label="c", hint=freeze_hint).endswith(
        "; parameters must end as the contract says (unchanged unless it says otherwise)")


def test_central_differences_are_second_order_and_leave_x_alone():
    x = np.array([[0.3, -1.2], [2.0, 0.7]])
    before = x.copy()
    g = central_difference_gradient(lambda v: float(np.sum(np.sin(v))), x, h=1e-4)
    np.testing.assert_allclose(g, np.cos(x), atol=1e-8)  # truncation h^2 / 6 * |sin'''| ~ 2e-9
    np.testing.assert_array_equal(x, before)


def test_gradients_match_finite_differences_or_say_which_one_differs():
    x, w = np.array([1.0, -2.0, 0.5]), np.array([0.5, 2.0, -1.0])
    dy = np.array([1.0, 1.0, 2.0])
    forward = lambda x, weight: x ** 2 * weight  # noqa: E731
    assert_gradients_match({"dx": 2 * x * w * dy, "dweight": x ** 2 * dy}, forward, {"x": x, "weight": w}, dy,
                           name="f_backward(...)", label="c")
    message = _message(assert_gradients_match, {"dx": 2 * x * w * dy, "dweight": x * dy}, forward,
                       {"x": x, "weight": w}, dy, name="f_backward(...)", label="c")
    assert message.startswith("f_backward(...) -> dweight (compared with central differences) for case 'c'")
    assert "expected None (weight is None)" in _message(assert_gradients_match, {"dx": 2 * x * dy, "dweight": x},
                                                         lambda x, weight: x ** 2, {"x": x, "weight": None}, dy,
                                                         name="f", label="c")


# ---------------------------------------------------------------------------------------------------
# A contract that promises an exception: assert_raises, and Case(raises=...) in Part.check and the re-check.

def _reject_negative(x):
    if x < 0:
        raise ValueError("x must be >= 0")
    return x


def test_assert_raises_passes_the_promised_exception_and_names_what_went_wrong():
    from normcourse.grading.compare import assert_raises

    assert_raises(ValueError, _reject_negative, -1, name="f(-1)")
    assert_raises(ArithmeticError, lambda: 1 / 0, name="1 / 0")                 # a subclass counts
    with pytest.raises(GradingError, match=r"f\(1\) for case 'positive': returned, but it must raise ValueError"):
        assert_raises(ValueError, _reject_negative, 1, name="f(1)", label="positive")
    with pytest.raises(GradingError, match=r"raised KeyError \('k'\), expected ValueError"):
        assert_raises(ValueError, {}.__getitem__, "k", name="d['k']")
    with pytest.raises(GradingError, match="not implemented yet"):
        assert_raises(ValueError, _not_implemented, name="stub()")


def _not_implemented(*_):
    raise NotImplementedError


def _raising_part(function_name="f"):
    from normcourse.grading.parts import Case, Part

    def cases(_rng):
        return [Case("zero", (0.0,)), Case("negative number", (-2.0,), raises=ValueError)]
    return Part("test_set", "raises_part", function_name, _reject_negative, cases, points=1)


def test_part_check_requires_the_promised_exception():
    part = _raising_part()
    assert part.check(_reject_negative) == 2
    assert part.expected(part.make_cases()[1]) is None        # nothing to compare: the call must raise
    with pytest.raises(GradingError, match=r"for case 'negative number': returned, but it must raise ValueError"):
        part.check(lambda x: x)
    with pytest.raises(GradingError, match=r"for case 'negative number': raised TypeError"):
        part.check(lambda x: x if x >= 0 else None + 1)


def test_case_raises_takes_builtin_exception_types_only_and_nothing_else_to_compare():
    from normcourse.grading.parts import Case

    class Custom(ValueError):
        pass
    with pytest.raises(TypeError, match="built-in exception type"):
        Case("custom", raises=Custom)
    with pytest.raises(TypeError, match="built-in exception type"):
        Case("not a type", raises="ValueError")
    with pytest.raises(ValueError, match="compares nothing else"):
        Case("twice", (1,), raises=ValueError, repeat=2)


def test_recheck_verdict_for_a_case_that_must_raise():
    from normcourse.grading.recheck import _verdict

    part = _raising_part()
    case = part.make_cases()[1]
    assert _verdict(part, case, {"raised": "ValueError"}, {}) is None
    returned = _verdict(part, case, {"value": {}}, {})
    assert "returned for case 'negative number', but it must raise ValueError" in returned
    other = _verdict(part, case, {"error": "f raised TypeError: bad"}, {})
    assert other == "f raised TypeError: bad, expected ValueError (case 'negative number')"
    assert _verdict(part, case, {"raised": "TypeError"}, {}) is not None   # only the promised type counts
