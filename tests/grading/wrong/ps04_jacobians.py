"""Wrong implementations of problem set 4's functions: the mistakes the set warns about (a missing term,
the gain on the wrong axis, the float64 epsilon for float32 input, the evaluation-mode BatchNorm answer,
the Frobenius norm for the spectral norm, eigenvalues in the wrong order). Keyed by the learner's names
(see ``wrong/__init__.py``)."""

import numpy as np

from normcourse.reference import jacobians


def _ln_jacobian_no_xhat_term(x, weight=None, eps=1e-5):
    x = np.asarray(x, dtype=np.float64)
    d = x.size
    J = (np.eye(d) - 1.0 / d) / np.sqrt(x.var() + eps)
    return J * np.asarray(weight, dtype=np.float64)[:, None] if weight is not None else J


def _ln_jacobian_gain_on_columns(x, weight=None, eps=1e-5):
    J = jacobians.layer_norm_jacobian(x, None, eps)
    return J * np.asarray(weight, dtype=np.float64)[None, :] if weight is not None else J


def _rms_jacobian_float64_eps(x, weight=None, eps=None):
    """The contract trap: convert to float64 first, then ask for the epsilon of (what is now) float64."""
    x = np.asarray(x, dtype=np.float64)
    eps = float(np.finfo(x.dtype).eps) if eps is None else eps
    return jacobians.rms_norm_jacobian(x, weight, eps)


def _rms_jacobian_centered(x, weight=None, eps=None):
    eps = np.finfo(np.asarray(x).dtype).eps if eps is None else eps
    return jacobians.layer_norm_jacobian(x, weight, eps)


def _bn_jacobian_uncoupled(x, weight=None, eps=1e-5):
    """The evaluation-mode answer: no coupling between samples."""
    x = np.asarray(x, dtype=np.float64)
    return (1.0 if weight is None else float(weight)) * np.eye(x.size) / np.sqrt(x.var() + eps)


def _bn_jacobian_unbiased(x, weight=None, eps=1e-5):
    x = np.asarray(x, dtype=np.float64)
    m = x.size
    s = np.sqrt(x.var(ddof=1) + eps)
    x_hat = (x - x.mean()) / s
    return (1.0 if weight is None else float(weight)) * (np.eye(m) - 1.0 / m - np.outer(x_hat, x_hat) / m) / s


def _spectral_norm_frobenius(J):
    return float(np.linalg.norm(np.asarray(J, dtype=np.float64)))


def _spectral_norm_largest_eigenvalue(J):
    return float(np.abs(np.linalg.eigvals(np.asarray(J, dtype=np.float64))).max())


def _eigen_without_xhat_direction(x, eps=1e-5):
    x = np.asarray(x, dtype=np.float64)
    return np.sort(np.concatenate([[0.0], np.full(x.size - 1, 1 / np.sqrt(x.var() + eps))]))


def _eigen_descending(x, eps=1e-5):
    return jacobians.layer_norm_jacobian_eigen(x, eps)[::-1].copy()


WRONG = {
    "layer_norm_jacobian": [_ln_jacobian_no_xhat_term, _ln_jacobian_gain_on_columns],
    "rms_norm_jacobian": [_rms_jacobian_float64_eps, _rms_jacobian_centered],
    "batch_norm_jacobian": [_bn_jacobian_uncoupled, _bn_jacobian_unbiased],
    "spectral_norm": [_spectral_norm_frobenius, _spectral_norm_largest_eigenvalue],
    "layer_norm_jacobian_eigenvalues": [_eigen_without_xhat_direction, _eigen_descending],
}
