"""Attention entropy of the reference, against independent computations.

Tolerances: entropies are float64 sums of at most a few hundred terms, so 1e-12 is rounding.
"""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from normcourse.reference import attention_entropy


@pytest.mark.parametrize("s", [1, 2, 7, 64])
def test_uniform_rows_have_entropy_log_s(s):
    h = attention_entropy(np.full((3, 2, s), 1.0 / s))
    assert h.shape == (3, 2)
    np.testing.assert_allclose(h, math.log(s), atol=1e-12)


def test_one_hot_rows_have_zero_entropy():
    probs = np.eye(5)[[0, 3, 4, 1]]                     # exact zeros elsewhere: 0 log 0 must be 0
    np.testing.assert_array_equal(attention_entropy(probs), np.zeros(4))


def test_matches_scipy_on_random_softmax_rows():
    logits = np.random.default_rng(0).normal(scale=3.0, size=(4, 3, 9, 9))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = scipy.stats.entropy(probs, axis=-1)      # an outside oracle
    np.testing.assert_allclose(attention_entropy(probs), expected, rtol=1e-12)


def test_accepts_torch_tensors_that_require_grad():
    probs = torch.softmax(torch.randn(2, 6, requires_grad=True), dim=-1)
    h = attention_entropy(probs)
    expected = -(probs * probs.log()).sum(-1).detach().double().numpy()
    np.testing.assert_allclose(h, expected, rtol=1e-6)   # float32 softmax


@pytest.mark.parametrize("bad", [np.array([0.5, 0.7]), np.array([1.2, -0.2]), np.array([np.nan, 1.0])])
def test_rejects_rows_that_are_not_probabilities(bad):
    with pytest.raises(ValueError):
        attention_entropy(bad)
