"""Closed-form Jacobians against torch.autograd.functional.jacobian, and their spectral facts.

Tolerances (float64): entries of J are O(1/s); autograd and the closed form differ by rounding only,
so 1e-10 * max(1, max|J|). Spectral norms and eigenvalues come from LAPACK (SVD / symmetric
eigensolver), backward stable: their error is about d * u * ||J|| (u = 1.1e-16), so for d <= 512 a
relative 1e-10 is tight yet safe.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian

import normcourse.reference as ref

TOL = 1e-10


def close(ours, expected, tol=TOL):
    expected = np.asarray(expected)
    assert ours.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(ours - expected).max()) <= tol * scale


def torch_jacobian(f, x):
    return jacobian(f, torch.tensor(x, dtype=torch.float64)).numpy()


# ---------------------------------------------------------------- against autograd
@pytest.mark.parametrize("seed", range(20))
def test_layer_norm_jacobian_matches_autograd(seed):
    rng = np.random.default_rng([31, seed])
    d = int(rng.integers(1, 40))
    x = rng.normal(size=d) * rng.choice([0.1, 1, 10]) + rng.normal()
    eps = float(rng.choice([1e-5, 1e-3, 0.1]))
    gain = rng.normal(size=d) if seed % 2 else None
    tw = None if gain is None else torch.tensor(gain)
    expected = torch_jacobian(lambda t: F.layer_norm(t, (d,), tw, None, eps), x)
    close(ref.layer_norm_jacobian(x, gain, eps), expected)


@pytest.mark.parametrize("seed", range(20))
def test_rms_norm_jacobian_matches_autograd(seed):
    rng = np.random.default_rng([32, seed])
    d = int(rng.integers(1, 40))
    x = rng.normal(size=d) * rng.choice([0.1, 1, 10])
    eps = None if seed % 4 == 0 else float(rng.choice([1e-6, 1e-3, 0.1]))
    gain = rng.normal(size=d) if seed % 2 else None
    tw = None if gain is None else torch.tensor(gain)
    expected = torch_jacobian(lambda t: F.rms_norm(t, [d], tw, eps), x)
    close(ref.rms_norm_jacobian(x, gain, eps), expected)


@pytest.mark.parametrize("seed", range(20))
def test_batch_norm_jacobian_matches_autograd(seed):
    rng = np.random.default_rng([33, seed])
    m = int(rng.integers(2, 40))
    x = rng.normal(size=m) * rng.choice([0.1, 1, 10]) + rng.normal()
    eps = float(rng.choice([1e-5, 1e-3, 0.1]))
    gain = float(rng.normal()) if seed % 2 else None
    tw = None if gain is None else torch.tensor([gain], dtype=torch.float64)

    def column_bn(t):   # one feature: the column is (m, 1) for F.batch_norm
        return F.batch_norm(t[:, None], None, None, tw, None, training=True, eps=eps)[:, 0]

    J = ref.batch_norm_jacobian(x, gain, eps)
    close(J, torch_jacobian(column_bn, x))
    assert np.abs(J - np.diag(np.diag(J))).max() > 1e-3     # samples are coupled


def test_batch_norm_jacobian_is_layer_norms_along_the_batch():
    x = np.random.default_rng(34).normal(size=9)
    close(ref.batch_norm_jacobian(x, 1.5), 1.5 * ref.layer_norm_jacobian(x))


# ---------------------------------------------------------------- spectral norm and eigenvalues
DIMS = [2, 3, 4, 5, 8, 16, 33, 64, 128, 256, 512]
SCALES = [1e-3, 1e-1, 1.0, 10.0, 1e3]


@pytest.mark.parametrize("d", DIMS)
def test_layer_norm_spectral_norm_is_one_over_s(d):
    """||J||_2 = 1/sqrt(var + eps) for d >= 3; for d = 2 it is the x-hat eigenvalue (1/s) eps/(var+eps)."""
    rng = np.random.default_rng([35, d])
    settings = [(scale, eps) for scale in SCALES for eps in (1e-5, 1e-2)]
    if d >= 256:    # a 512 x 512 SVD costs ~0.5 s on this shared machine: three settings suffice
        settings = [(1e-3, 1e-5), (1.0, 1e-2), (1e3, 1e-5)]
    for scale, eps in settings:
        x = rng.normal(size=d) * scale + rng.normal() * scale
        var = x.var()
        inv_s = 1 / np.sqrt(var + eps)
        norm = ref.spectral_norm(ref.layer_norm_jacobian(x, eps=eps))
        expected = inv_s if d >= 3 else inv_s * eps / (var + eps)
        assert abs(norm - expected) <= TOL * max(1.0, expected), (d, scale, eps)
        assert norm <= 1 / np.sqrt(eps) * (1 + TOL)          # dimension-free bound


def test_spectral_norm_is_sqrt_d_over_centered_norm_for_large_inputs():
    """In terms of the input, 1/s ~ sqrt(d) / ||x - mu||: large inputs shrink the Jacobian."""
    x = 1e3 * np.random.default_rng(36).normal(size=100)
    norm = ref.spectral_norm(ref.layer_norm_jacobian(x))
    assert abs(norm - np.sqrt(100) / np.linalg.norm(x - x.mean())) <= 1e-9 * norm
    assert norm < 1e-2


@pytest.mark.parametrize("d", [1, 2, 3, 7, 64, 512])
def test_closed_form_eigenvalues_match_eigvalsh(d):
    rng = np.random.default_rng([37, d])
    for x in (rng.normal(size=d), 0.01 * rng.normal(size=d) + 5, np.full(d, 2.0)):
        for eps in (1e-5, 0.1):
            J = ref.layer_norm_jacobian(x, eps=eps)
            assert np.abs(J - J.T).max() == 0                     # symmetric without a gain
            closed = ref.layer_norm_jacobian_eigen(x, eps)
            numeric = np.linalg.eigvalsh(J)
            assert closed.shape == (d,) and np.all(np.diff(closed) >= 0)
            assert np.abs(closed - numeric).max() <= TOL * max(1.0, np.abs(numeric).max())


def test_eigenvectors_are_ones_and_x_hat():
    x = np.random.default_rng(38).normal(size=10)
    eps = 1e-2
    J = ref.layer_norm_jacobian(x, eps=eps)
    s = np.sqrt(x.var() + eps)
    x_hat = (x - x.mean()) / s
    assert np.abs(J @ np.ones(10)).max() < 1e-12
    close(J @ x_hat, x_hat * eps / (x.var() + eps) / s)


@pytest.mark.parametrize("seed", range(10))
def test_gain_bound_holds(seed):
    rng = np.random.default_rng([39, seed])
    d = int(rng.integers(3, 64))
    x, gain = rng.normal(size=d) * rng.choice([0.1, 1, 10]), rng.normal(size=d) * rng.choice([0.5, 3])
    bound = np.abs(gain).max() / np.sqrt(x.var() + 1e-5)
    assert ref.spectral_norm(ref.layer_norm_jacobian(x, gain)) <= bound * (1 + TOL)


def test_gain_bound_is_not_always_an_equality():
    """With one large gain on the coordinate where x-hat is largest, ||J||_2 is well below max|gamma|/s."""
    d, eps = 4, 1e-5
    x = np.array([3.0, -1.0, -1.0, -1.0])         # x_hat concentrated on coordinate 0
    gain = np.array([10.0, 1.0, 1.0, 1.0])
    bound = 10.0 / np.sqrt(x.var() + eps)
    norm = ref.spectral_norm(ref.layer_norm_jacobian(x, gain, eps))
    assert norm < 0.9 * bound
    # ... while a constant gain attains it exactly
    assert abs(ref.spectral_norm(ref.layer_norm_jacobian(x, np.full(d, -10.0), eps)) - bound) <= TOL * bound


def test_random_gains_rarely_attain_the_bound():
    rng = np.random.default_rng(40)
    ratios = []
    for _ in range(20):
        x, gain = rng.normal(size=16), rng.normal(size=16)
        bound = np.abs(gain).max() / np.sqrt(x.var() + 1e-5)
        ratios.append(ref.spectral_norm(ref.layer_norm_jacobian(x, gain)) / bound)
    assert max(ratios) <= 1 + TOL and min(ratios) < 0.99


def test_dimension_free_bound_approached_by_tiny_variance():
    """1/s <= 1/sqrt(eps) for every d; a constant input attains it (d >= 2)."""
    for d in (2, 10, 100):
        for eps in (1e-5, 1e-3):
            norm = ref.spectral_norm(ref.layer_norm_jacobian(np.full(d, 7.0), eps=eps))
            assert abs(norm - 1 / np.sqrt(eps)) <= TOL / np.sqrt(eps)


@pytest.mark.parametrize("d", [2, 8, 128])
def test_rms_norm_jacobian_spectrum(d):
    rng = np.random.default_rng([41, d])
    x, eps = rng.normal(size=d), 1e-3
    ms = np.mean(x ** 2)
    r = np.sqrt(ms + eps)
    J = ref.rms_norm_jacobian(x, eps=eps)
    expected = np.sort(np.concatenate([[eps / (ms + eps) / r], np.full(d - 1, 1 / r)]))
    close(np.linalg.eigvalsh(J), expected)
    assert abs(ref.spectral_norm(J) - 1 / r) <= TOL / r


def test_spectral_norm_is_the_largest_singular_value():
    A = np.random.default_rng(42).normal(size=(5, 3))
    assert abs(ref.spectral_norm(A) - np.linalg.svd(A, compute_uv=False)[0]) <= 1e-12
    assert isinstance(ref.spectral_norm(A), float)
