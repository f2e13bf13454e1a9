"""Tests of normcourse.lab.timing: alternation, warm-up and the median."""

import time

import pytest

from normcourse.lab.timing import median_times


def test_functions_alternate_within_every_repetition_after_the_warmup():
    calls = []
    median_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3


def test_median_ignores_a_slow_outlier_and_orders_like_the_input():
    # one call in five sleeps 50 ms, the others return at once: the median must stay far below 50 ms
    state = {"n": 0}

    def sometimes_slow():
        state["n"] += 1
        if state["n"] == 3:
            time.sleep(0.05)

    times = median_times({"fast": lambda: None, "sometimes slow": sometimes_slow}, reps=5, warmup=0)
    assert list(times) == ["fast", "sometimes slow"]
    assert times["sometimes slow"] < 10.0          # milliseconds; the outlier alone is 50
    slow = median_times({"sleep": lambda: time.sleep(0.005)}, reps=3, warmup=0)["sleep"]
    assert slow >= 5.0                               # sleep never returns early


def test_needs_a_repetition():
    with pytest.raises(ValueError):
        median_times({"a": lambda: None}, reps=0)
