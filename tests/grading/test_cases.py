"""The shared case generators: shapes follow the layout, edge cases are what their labels say, and they
survive the deep copy that Part.call makes of every argument."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from normcourse.grading.cases import (EDGE_LABELS, edge_cases, non_contiguous, random_affine, random_eps,
                                      random_input, random_shape)
from normcourse.reference import LAYOUTS


@pytest.mark.parametrize("layout", LAYOUTS)
def test_random_shape_follows_layout_and_bounds(layout):
    rng = np.random.default_rng(0)
    for _ in range(50):
        shape = random_shape(rng, layout, low=2, high=4)
        assert len(shape) == len(layout) and all(2 <= s <= 4 for s in shape)
    assert random_shape(rng, layout, batch=1, channels=7)[:2] == (1, 7)


def test_random_shape_rejects_unknown_layout():
    with pytest.raises(ValueError, match="unknown layout"):
        random_shape(np.random.default_rng(0), "NHWC")


def test_random_input_dtype_scale_and_nonzero_mean():
    rng = np.random.default_rng(1)
    x = random_input(rng, (200, 50), np.float32, scale=1e4)
    assert x.dtype == np.float32 and x.flags.c_contiguous
    assert 5e3 < x.std() < 2e4
    means = [random_input(rng, (1000,)).mean() for _ in range(20)]
    assert np.abs(means).max() > 0.1, "a random offset keeps means away from zero"


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 5), (2, 3, 4, 5)])
def test_non_contiguous_survives_deepcopy(shape):
    x = random_input(np.random.default_rng(2), shape)
    y = non_contiguous(x)
    np.testing.assert_array_equal(x, y)
    assert y.shape == x.shape and not y.flags.c_contiguous
    assert not copy.deepcopy(y).flags.c_contiguous  # what a learner function actually receives


def test_random_eps_and_affine():
    rng = np.random.default_rng(3)
    eps = [random_eps(rng) for _ in range(200)]
    assert 1e-6 <= min(eps) and max(eps) <= 1e-2
    w, b = random_affine(rng, (4, 5), weight=True, bias=False)
    assert w.shape == (4, 5) and b is None
    kinds = {tuple(p is None for p in random_affine(rng, 3)) for _ in range(100)}
    assert len(kinds) == 4, "weight and bias are each present or absent at random"


def test_edge_cases_are_what_their_labels_say():
    rng = np.random.default_rng(4)
    cases = edge_cases(rng, (3, 4, 5))
    assert [label.split(" ")[0] for label, _ in cases] == [e.split(" ")[0] for e in EDGE_LABELS]
    found = dict((next(e for e in EDGE_LABELS if label.startswith(e)), x) for label, x in cases)
    assert found["batch size 1"].shape == (1, 4, 5)
    assert np.ptp(found["constant input"]) == 0
    assert np.abs(found["magnitude 1e4"]).max() > 1e3
    assert found["float32"].dtype == np.float32
    assert not found["non-contiguous"].flags.c_contiguous
    assert all(x.dtype == np.float64 for label, x in cases if not label.startswith("float32"))
    assert not any(label.startswith("batch size 1") for label, _ in edge_cases(rng, (3, 4), batch_one=False))


def test_describe_and_array_arguments():
    from normcourse.grading.cases import array_arguments, describe

    x = np.zeros((2, 3), np.float32)
    assert describe(x, 1e-5, np.ones(3), None) == "shape (2, 3), float32, eps=1e-05, weight"
    assert describe(x, None) == "shape (2, 3), float32, eps=None, no affine"
    assert array_arguments((x, (3,), None, np.ones(3), 1e-5)) == (0, 3)
