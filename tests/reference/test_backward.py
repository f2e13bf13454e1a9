"""Hand-written backward passes against torch.autograd and against central differences.

Two independent oracles:

- torch.autograd in float64: |ours - torch| <= 1e-10 * max(1, max|torch|). Both evaluate the same
  closed-form derivative in float64 and differ by summation order only; gradients are scaled by 1/s
  (up to about 30 for the inputs drawn here), hence the relative form.
- central differences, (L(x + h e_i) - L(x - h e_i)) / 2h with L = sum(dy * f(x)): the truncation
  error is h^2 |L'''| / 6 and the rounding error about u |L| / h (u = 1.1e-16). With inputs of unit
  scale (s >= 0.3, so the third derivative is O(1/s^3) ~ 40) the step h = 1e-5 balances the two at
  about 1e-9; we allow 1e-6 * max(1, max|g|), which a wrong formula (a missing mean term, an unbiased
  variance) exceeds by orders of magnitude (see test_finite_differences_catch_a_wrong_formula).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import normcourse.reference as ref

SEEDS = range(25)
FD_SEEDS = range(8)
AUTOGRAD_TOL = 1e-10
FD_STEP = 1e-5
FD_TOL = 1e-6


def tensor(a, grad=False):
    if a is None:
        return None
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def close(ours, expected, tol):
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert ours.shape == expected.shape and ours.dtype == np.float64
    scale = max(1.0, float(np.abs(expected).max(initial=0)))
    err = float(np.abs(ours - expected).max(initial=0))
    assert err <= tol * scale, f"max abs error {err:.3g} > {tol:g} * {scale:.3g}"


def close_param_grads(ours, params, tensors):
    """Each hand-written parameter gradient is None exactly when its parameter is, else equals autograd's."""
    for grad, param, leaf in zip(ours, params, tensors, strict=True):
        assert (grad is None) == (param is None)
        if param is not None:
            close(grad, leaf.grad, AUTOGRAD_TOL)


def numerical_gradient(loss, arr, h=FD_STEP):
    """Central differences of the scalar ``loss()`` with respect to every element of ``arr`` (in place)."""
    grad = np.zeros_like(arr)
    for index in np.ndindex(arr.shape):
        saved = arr[index]
        arr[index] = saved + h
        plus = loss()
        arr[index] = saved - h
        minus = loss()
        arr[index] = saved
        grad[index] = (plus - minus) / (2 * h)
    return grad


# ---------------------------------------------------------------- seeded cases
def case_layer_norm(seed, unit_scale=False):
    rng = np.random.default_rng([21, seed])
    leading = (1,) if seed % 5 == 0 else tuple(int(s) for s in rng.integers(1, 4, size=int(rng.integers(0, 3))))
    normalized = tuple(int(s) for s in rng.integers(2, 5, size=int(rng.integers(1, 4))))
    scale = 1.0 if unit_scale else float(rng.choice([0.1, 1, 10]))
    x = rng.normal(size=leading + normalized) * scale + rng.normal()
    affine = seed % 3
    weight = rng.normal(size=normalized) if affine else None
    bias = rng.normal(size=normalized) if affine == 2 else None
    eps = 1e-5 if unit_scale else float(rng.choice([1e-5, 1e-3, 0.1]))
    return x, rng.normal(size=x.shape), normalized, weight, bias, eps


def case_batch_norm(seed, unit_scale=False):
    rng = np.random.default_rng([22, seed])
    rank = int(rng.integers(2, 5))
    n, c = int(rng.integers(2, 5)), int(rng.integers(1, 4))
    spatial = tuple(int(s) for s in rng.integers(1, 4, size=rank - 2))
    scale = 1.0 if unit_scale else float(rng.choice([0.1, 1, 10]))
    x = rng.normal(size=(n, c) + spatial) * scale + rng.normal()
    affine = seed % 3
    weight = rng.normal(size=c) if affine else None
    bias = rng.normal(size=c) if affine == 2 else None
    eps = 1e-5 if unit_scale else float(rng.choice([1e-5, 1e-3, 0.1]))
    return x, rng.normal(size=x.shape), weight, bias, eps


def case_rms_norm(seed, unit_scale=False):
    rng = np.random.default_rng([23, seed])
    leading = (1,) if seed % 5 == 0 else tuple(int(s) for s in rng.integers(1, 4, size=int(rng.integers(0, 3))))
    normalized = tuple(int(s) for s in rng.integers(2, 5, size=int(rng.integers(1, 4))))
    scale = 1.0 if unit_scale else float(rng.choice([0.1, 1, 10]))
    x = rng.normal(size=leading + normalized) * scale
    weight = rng.normal(size=normalized) if seed % 2 else None
    eps = None if seed % 4 == 3 else (1e-6 if unit_scale else float(rng.choice([1e-6, 1e-3, 0.1])))
    return x, rng.normal(size=x.shape), normalized, weight, eps


# ---------------------------------------------------------------- against torch.autograd
@pytest.mark.parametrize("seed", SEEDS)
def test_layer_norm_backward_matches_autograd(seed):
    x, dy, shape, weight, bias, eps = case_layer_norm(seed)
    tx, tw, tb = tensor(x, True), tensor(weight, True), tensor(bias, True)
    F.layer_norm(tx, shape, tw, tb, eps).backward(tensor(dy))
    dx, dw, db = ref.layer_norm_backward(dy, x, shape, weight, bias, eps)
    close(dx, tx.grad, AUTOGRAD_TOL)
    close_param_grads((dw, db), (weight, bias), (tw, tb))


@pytest.mark.parametrize("seed", SEEDS)
def test_batch_norm_backward_matches_autograd(seed):
    x, dy, weight, bias, eps = case_batch_norm(seed)
    tx, tw, tb = tensor(x, True), tensor(weight, True), tensor(bias, True)
    F.batch_norm(tx, None, None, tw, tb, training=True, eps=eps).backward(tensor(dy))
    dx, dw, db = ref.batch_norm_backward(dy, x, weight, bias, eps)
    close(dx, tx.grad, AUTOGRAD_TOL)
    close_param_grads((dw, db), (weight, bias), (tw, tb))


@pytest.mark.parametrize("seed", SEEDS)
def test_rms_norm_backward_matches_autograd(seed):
    x, dy, shape, weight, eps = case_rms_norm(seed)
    tx, tw = tensor(x, True), tensor(weight, True)
    F.rms_norm(tx, list(shape), tw, eps).backward(tensor(dy))
    dx, dw = ref.rms_norm_backward(dy, x, shape, weight, eps)
    close(dx, tx.grad, AUTOGRAD_TOL)
    close_param_grads((dw,), (weight,), (tw,))


def test_cases_cover_batch_one_and_affine_on_off():
    ln = [case_layer_norm(s) for s in SEEDS]
    assert any(c[0].shape[0] == 1 for c in ln)
    assert {(c[3] is None, c[4] is None) for c in ln} == {(True, True), (False, True), (False, False)}
    assert any(c[0].shape[0] == 1 for c in (case_rms_norm(s) for s in SEEDS))
    assert any(c[4] is None for c in (case_rms_norm(s) for s in SEEDS))


# ---------------------------------------------------------------- against central differences
@pytest.mark.parametrize("seed", FD_SEEDS)
def test_layer_norm_backward_matches_central_differences(seed):
    x, dy, shape, weight, bias, eps = case_layer_norm(seed, unit_scale=True)
    weight = np.random.default_rng(seed).normal(size=shape) if weight is None else weight
    bias = np.zeros(shape) if bias is None else bias

    def loss():
        return float(np.sum(dy * ref.layer_norm(x, shape, weight, bias, eps)))

    dx, dw, db = ref.layer_norm_backward(dy, x, shape, weight, bias, eps)
    close(dx, numerical_gradient(loss, x), FD_TOL)
    close(dw, numerical_gradient(loss, weight), FD_TOL)
    close(db, numerical_gradient(loss, bias), FD_TOL)


@pytest.mark.parametrize("seed", FD_SEEDS)
def test_batch_norm_backward_matches_central_differences(seed):
    x, dy, weight, bias, eps = case_batch_norm(seed, unit_scale=True)
    c = x.shape[1]
    weight = np.random.default_rng(seed).normal(size=c) if weight is None else weight
    bias = np.zeros(c) if bias is None else bias

    def loss():
        return float(np.sum(dy * ref.batch_norm(x, None, None, weight, bias, training=True, eps=eps)))

    dx, dw, db = ref.batch_norm_backward(dy, x, weight, bias, eps)
    close(dx, numerical_gradient(loss, x), FD_TOL)
    close(dw, numerical_gradient(loss, weight), FD_TOL)
    close(db, numerical_gradient(loss, bias), FD_TOL)


@pytest.mark.parametrize("seed", FD_SEEDS)
def test_rms_norm_backward_matches_central_differences(seed):
    x, dy, shape, weight, eps = case_rms_norm(seed, unit_scale=True)
    weight = np.random.default_rng(seed).normal(size=shape) if weight is None else weight

    def loss():
        return float(np.sum(dy * ref.rms_norm(x, shape, weight, eps)))

    dx, dw = ref.rms_norm_backward(dy, x, shape, weight, eps)
    close(dx, numerical_gradient(loss, x), FD_TOL)
    close(dw, numerical_gradient(loss, weight), FD_TOL)


def test_finite_differences_catch_a_wrong_formula():
    """The FD tolerance has teeth: dropping the x-hat term of the LN backward is caught."""
    x, dy, shape, _, _, eps = case_layer_norm(1, unit_scale=True)
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    inv_s = 1 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    wrong = inv_s * (dy - dy.mean(axis=axes, keepdims=True))
    numerical = numerical_gradient(lambda: float(np.sum(dy * ref.layer_norm(x, shape, eps=eps))), x)
    assert np.abs(wrong - numerical).max() > 1e3 * FD_TOL


# ---------------------------------------------------------------- structure of the gradients
def test_compact_batch_norm_formula():
    """dx = gamma / (m s) * (m dy - sum(dy) - x_hat * sum(dy * x_hat)), written out for (N, C)."""
    rng = np.random.default_rng(24)
    x, dy, gamma = rng.normal(size=(7, 3)), rng.normal(size=(7, 3)), rng.normal(size=3)
    m, eps = 7, 1e-5
    s = np.sqrt(x.var(axis=0) + eps)
    x_hat = (x - x.mean(axis=0)) / s
    compact = gamma / (m * s) * (m * dy - dy.sum(axis=0) - x_hat * (dy * x_hat).sum(axis=0))
    assert np.abs(ref.batch_norm_backward(dy, x, gamma, eps=eps)[0] - compact).max() <= 1e-12


def test_centering_norms_give_gradients_orthogonal_to_shifts():
    rng = np.random.default_rng(25)
    x, dy = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 4, 5))
    dx_ln = ref.layer_norm_backward(dy, x, (4, 5))[0]
    assert np.abs(dx_ln.sum(axis=(1, 2))).max() < 1e-12
    dx_bn = ref.batch_norm_backward(dy, x)[0]
    assert np.abs(dx_bn.sum(axis=(0, 2))).max() < 1e-12
    dx_rms = ref.rms_norm_backward(dy, x, (5,))[0]
    assert np.abs(dx_rms.sum(axis=-1)).max() > 1e-3   # RMSNorm does not center


def test_backward_is_the_jacobian_transpose_times_dy():
    rng = np.random.default_rng(26)
    x, dy, gamma = rng.normal(size=6), rng.normal(size=6), rng.normal(size=6)
    dx = ref.layer_norm_backward(dy[None], x[None], (6,), gamma)[0][0]
    assert np.abs(dx - ref.layer_norm_jacobian(x, gamma).T @ dy).max() < 1e-12
    dx = ref.rms_norm_backward(dy[None], x[None], (6,), gamma, eps=1e-6)[0][0]
    assert np.abs(dx - ref.rms_norm_jacobian(x, gamma, eps=1e-6).T @ dy).max() < 1e-12
    column = rng.normal(size=(6, 1))
    dx = ref.batch_norm_backward(dy[:, None], column, np.array([2.0]))[0][:, 0]
    assert np.abs(dx - ref.batch_norm_jacobian(column[:, 0], 2.0).T @ dy).max() < 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_come_back_in_the_input_dtype(dtype):
    rng = np.random.default_rng(27)
    x, dy = rng.normal(size=(4, 3, 2)).astype(dtype), rng.normal(size=(4, 3, 2)).astype(dtype)
    w3, w2 = np.ones(3, dtype), np.ones(2, dtype)
    for grads in (ref.layer_norm_backward(dy, x, (2,), w2, w2), ref.batch_norm_backward(dy, x, w3, w3),
                  ref.rms_norm_backward(dy, x, (2,), w2)):
        assert all(g.dtype == dtype for g in grads)
    dx32 = ref.layer_norm_backward(dy, x, (2,))[0]
    dx64 = ref.layer_norm_backward(dy.astype(np.float64), x.astype(np.float64), (2,))[0]
    assert np.array_equal(dx32, dx64.astype(dtype))    # computed in float64, rounded once


def test_float32_backward_matches_torch_float32():
    """Same 1e-5 relative allowance as the float32 forwards (inputs of unit scale, mean ~ std)."""
    rng = np.random.default_rng(28)
    x, dy = rng.normal(size=(5, 16)).astype(np.float32), rng.normal(size=(5, 16)).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    F.layer_norm(tx, (16,)).backward(torch.tensor(dy))
    dx = ref.layer_norm_backward(dy, x, (16,))[0]
    assert np.all(np.abs(dx - tx.grad.numpy()) <= 1e-5 * (1 + np.abs(dx)))


def test_non_contiguous_input_and_upstream_gradient():
    rng = np.random.default_rng(29)
    x = rng.normal(size=(5, 4, 3)).transpose(2, 1, 0)
    dy = rng.normal(size=(3, 8, 5))[:, ::2]
    assert not x.flags.c_contiguous and not dy.flags.c_contiguous
    tx = tensor(x, True)
    F.layer_norm(tx, (5,)).backward(tensor(dy))
    close(ref.layer_norm_backward(dy, x, (5,))[0], tx.grad, AUTOGRAD_TOL)
    tx = tensor(x, True)
    F.batch_norm(tx, None, None, training=True).backward(tensor(dy))
    close(ref.batch_norm_backward(dy, x)[0], tx.grad, AUTOGRAD_TOL)


def test_constant_input_backward():
    """Zero variance: s = sqrt(eps), x_hat = 0, so dx = gamma * (dy - mean(dy)) / sqrt(eps)."""
    x, dy = np.full((2, 4), 3.0), np.random.default_rng(30).normal(size=(2, 4))
    tx = tensor(x, True)
    F.layer_norm(tx, (4,)).backward(tensor(dy))
    dx = ref.layer_norm_backward(dy, x, (4,))[0]
    close(dx, tx.grad, AUTOGRAD_TOL)
    close(dx, (dy - dy.mean(axis=1, keepdims=True)) / np.sqrt(1e-5), AUTOGRAD_TOL)
