r"""Closed-form Jacobians of LayerNorm, RMSNorm and BatchNorm for one vector, and their spectral norms.

For one vector :math:`x \in \mathbb{R}^d` LayerNorm computes :math:`y = \gamma \odot \hat x + \beta` with
:math:`\hat x = (x - \mu\mathbf 1)/s`, :math:`\mu = \frac1d \mathbf 1^\top x`,
:math:`\sigma^2 = \frac1d\|x - \mu\mathbf 1\|^2` and :math:`s = \sqrt{\sigma^2 + \epsilon}`. Differentiating,

.. math::
    \frac{\partial \mu}{\partial x_j} = \frac1d, \qquad
    \frac{\partial \sigma^2}{\partial x_j} = \frac2d (x_j - \mu), \qquad
    \frac{\partial s}{\partial x_j} = \frac{x_j - \mu}{d\,s} = \frac{\hat x_j}{d},

.. math::
    \frac{\partial \hat x_i}{\partial x_j}
    = \frac{\delta_{ij} - \frac1d}{s} - \frac{x_i - \mu}{s^2}\frac{\hat x_j}{d}
    = \frac1s\Big(\delta_{ij} - \frac1d - \frac{\hat x_i \hat x_j}{d}\Big),

that is :math:`J = \operatorname{diag}(\gamma)\,\frac1s\big(I - \frac1d\mathbf 1\mathbf 1^\top -
\frac1d \hat x\hat x^\top\big)`. Without a gain :math:`J` is symmetric; since :math:`\hat x \perp \mathbf 1`
and :math:`\|\hat x\|^2 = d\sigma^2/s^2`, its eigenvectors and eigenvalues are

* :math:`\mathbf 1`: eigenvalue :math:`0` (adding a constant to :math:`x` changes nothing);
* :math:`\hat x`: eigenvalue :math:`\frac1s\big(1 - \frac{\sigma^2}{\sigma^2+\epsilon}\big) =
  \frac1s\frac{\epsilon}{\sigma^2+\epsilon}` (re-scaling :math:`x` changes almost nothing);
* the :math:`d-2` directions orthogonal to both: eigenvalue :math:`\frac1s`.

Hence :math:`\|J\|_2 = 1/s` exactly whenever :math:`d \ge 3`, and :math:`1/s \le 1/\sqrt\epsilon` whatever
:math:`d`: a dimension-free bound. In terms of the input, :math:`1/s \approx \sqrt d / \|x - \mu\mathbf 1\|`,
so large inputs shrink the gradient. (For :math:`d = 2` only the first two eigenvalues exist and
:math:`\|J\|_2 = \frac1s\frac{\epsilon}{\sigma^2+\epsilon}`, unless :math:`\sigma = 0`; for :math:`d=1`,
:math:`J = 0`.) With a gain, :math:`\|\operatorname{diag}(\gamma) J_0\|_2 \le \max_i|\gamma_i|/s` is an
upper bound, not an equality: the largest gains need not act on the directions where :math:`J_0` is large.

RMSNorm (no centering, :math:`r = \sqrt{\frac1d\|x\|^2 + \epsilon}`, :math:`\hat y = x/r`) gives the same
computation without the :math:`\mathbf 1` term: :math:`J = \operatorname{diag}(\gamma)\frac1r(I -
\frac1d\hat y\hat y^\top)`, eigenvalue :math:`\frac1r\frac{\epsilon}{\langle x^2\rangle+\epsilon}` along
:math:`x` and :math:`\frac1r` on the :math:`d-1` directions orthogonal to it.

BatchNorm in training mode applies the LayerNorm formula to one feature's *batch column*
:math:`x \in \mathbb R^m` (the :math:`m` samples of the batch): :math:`J` is :math:`m\times m` and not
diagonal, so each sample's output depends on every other sample of the batch.

Every function returns float64 matrices (they are analysis tools, not layers).
"""

from __future__ import annotations

import numpy as np

from ._checks import as_input, check_eps, check_param, default_rms_eps

__all__ = ["layer_norm_jacobian", "rms_norm_jacobian", "batch_norm_jacobian", "spectral_norm",
           "layer_norm_jacobian_eigen"]


def _vector(x, name: str = "x") -> np.ndarray:
    """One finite vector as float64; the Jacobians here are per vector, so rank must be exactly 1."""
    arr = as_input(x, name, min_ndim=1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one vector of shape (d,), got shape {arr.shape} (rank "
                         f"{arr.ndim}); take the Jacobian of each row separately")
    return arr.astype(np.float64)


def _centering_jacobian(x: np.ndarray, eps: float) -> np.ndarray:
    r"""``(1/s)(I - 11^T/d - x_hat x_hat^T/d)`` for one vector: LayerNorm's and BatchNorm's kernel."""
    d = x.shape[0]
    centered = x - x.mean()
    s = np.sqrt(np.mean(np.square(centered)) + eps)
    x_hat = centered / s
    return (np.eye(d) - 1.0 / d - np.outer(x_hat, x_hat) / d) / s


def layer_norm_jacobian(x, weight=None, eps=1e-5):
    r"""Jacobian :math:`\partial y/\partial x` of LayerNorm for one vector.

    .. math::
        J = \operatorname{diag}(\gamma)\,\frac1s\Big(I - \frac1d\mathbf 1\mathbf 1^\top
        - \frac1d\hat x\hat x^\top\Big), \qquad s = \sqrt{\sigma^2 + \epsilon}

    (derived in the module docstring). Without a gain, :math:`\|J\|_2 = 1/s` exactly for
    :math:`d \ge 3`, which is at most :math:`1/\sqrt\epsilon` for every :math:`d` (dimension-free);
    with a gain, :math:`\max_i|\gamma_i|/s` is an upper bound on :math:`\|J\|_2`, not an equality.
    The bias does not enter.

    Args:
        x: one vector of shape ``(d,)``.
        weight: gain :math:`\gamma` of shape ``(d,)`` or None. Default: None.
        eps: added to the variance inside the square root. Default: 1e-5.

    Shape:
        - Input: :math:`(d,)`; output: :math:`(d, d)`, float64, ``J[i, j] = dy_i / dx_j``.

    Example:
        >>> x = np.random.default_rng(0).normal(size=16)
        >>> J = layer_norm_jacobian(x)
        >>> bool(np.isclose(spectral_norm(J), 1 / np.sqrt(x.var() + 1e-5)))
        True

    Reference: Ba, Kiros & Hinton, "Layer Normalization", arXiv:1607.06450, 2016; the Jacobian and
    its norm as in Xiong et al., "On Layer Normalization in the Transformer Architecture", ICML 2020.
    """
    x = _vector(x)
    eps = check_eps(eps)
    w = check_param(weight, x.shape, "weight")
    J = _centering_jacobian(x, eps)
    return J * w[:, None] if w is not None else J


def rms_norm_jacobian(x, weight=None, eps=None):
    r"""Jacobian :math:`\partial y/\partial x` of RMSNorm for one vector.

    .. math::
        J = \operatorname{diag}(\gamma)\,\frac1r\Big(I - \frac1d\hat y\hat y^\top\Big), \qquad
        \hat y = \frac xr, \quad r = \sqrt{\tfrac1d\textstyle\sum_i x_i^2 + \epsilon}

    Derivation: :math:`\partial r/\partial x_j = x_j/(d\,r)`, so :math:`\partial\hat y_i/\partial x_j
    = \delta_{ij}/r - x_i x_j/(d\,r^3)`. Eigenvalues without a gain: :math:`\frac1r
    \frac{\epsilon}{\langle x^2\rangle + \epsilon}` along :math:`x`, :math:`\frac1r` on the rest, so
    :math:`\|J\|_2 = 1/r \le 1/\sqrt\epsilon` for :math:`d \ge 2`.

    Args:
        x: one vector of shape ``(d,)``.
        weight: gain of shape ``(d,)`` or None. Default: None.
        eps: added to the mean square; None means the forward's default (machine epsilon of the compute dtype).

    Shape:
        - Input: :math:`(d,)`; output: :math:`(d, d)`, float64.

    Example:
        >>> x = np.random.default_rng(0).normal(size=8)
        >>> J = rms_norm_jacobian(x, eps=1e-6)
        >>> bool(np.allclose(J @ x, 0, atol=1e-5))   # re-scaling x barely moves y
        True

    Reference: Zhang & Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019.
    """
    dtype = np.asarray(x).dtype
    x = _vector(x)
    eps = default_rms_eps(dtype) if eps is None else check_eps(eps)
    w = check_param(weight, x.shape, "weight")
    d = x.shape[0]
    r = np.sqrt(np.mean(np.square(x)) + eps)
    y_hat = x / r
    J = (np.eye(d) - np.outer(y_hat, y_hat) / d) / r
    return J * w[:, None] if w is not None else J


def batch_norm_jacobian(x, weight=None, eps=1e-5):
    r"""Jacobian of training-mode BatchNorm for one feature across the batch.

    .. math::
        J = \gamma\,\frac1s\Big(I - \frac1m\mathbf 1\mathbf 1^\top - \frac1m\hat x\hat x^\top\Big),
        \qquad s = \sqrt{\sigma_B^2 + \epsilon}

    ``x`` holds one feature's values for the :math:`m` samples of a batch (a column of an ``(N, C)``
    input). The formula is LayerNorm's applied along the batch axis; ``J[i, j]`` is how sample
    :math:`i`'s output moves when sample :math:`j`'s input moves, so the off-diagonal entries are the
    coupling between samples that evaluation mode (fixed running statistics, :math:`J = \gamma I /
    \sqrt{\hat\sigma^2 + \epsilon}`) does not have.

    Args:
        x: one feature's batch column, shape ``(m,)`` with :math:`m \ge 2`.
        weight: that feature's scalar gain :math:`\gamma` or None. Default: None.
        eps: added to the batch variance inside the square root. Default: 1e-5.

    Shape:
        - Input: :math:`(m,)`; output: :math:`(m, m)`, float64.

    Raises:
        ValueError: as the forward for a single value per channel in training.

    Reference: Ioffe & Szegedy, "Batch Normalization", ICML 2015.
    """
    x = _vector(x)
    eps = check_eps(eps)
    w = check_param(weight, (), "weight")
    if x.shape[0] <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{list(x.shape)}: the batch variance of a single value is 0")
    J = _centering_jacobian(x, eps)
    return J * float(w) if w is not None else J


def spectral_norm(J) -> float:
    r"""Spectral norm :math:`\|J\|_2 = \max_{\|v\|=1}\|Jv\|`, the largest singular value of ``J``.

    It is the most a Jacobian can stretch a perturbation (forward) or a gradient (backward, since
    :math:`\|J^\top\|_2 = \|J\|_2`).

    Args:
        J: a matrix of shape ``(p, q)``.

    Returns:
        float: the largest singular value.
    """
    J = as_input(J, "J", min_ndim=2)
    if J.ndim != 2:
        raise ValueError(f"J must be a matrix, got shape {J.shape}")
    return float(np.linalg.norm(J.astype(np.float64), 2))


def layer_norm_jacobian_eigen(x, eps=1e-5) -> np.ndarray:
    r"""Eigenvalues of LayerNorm's Jacobian (no gain) in closed form, sorted ascending.

    .. math::
        \lambda = 0 \;(\text{along } \mathbf 1), \qquad
        \frac1s\frac{\epsilon}{\sigma^2 + \epsilon} \;(\text{along } \hat x), \qquad
        \frac1s \;(\text{multiplicity } d - 2)

    derived in the module docstring. For :math:`d = 1` the Jacobian is the zero matrix and the
    result is ``[0.]``. A constant input (:math:`\sigma = 0`) has :math:`\hat x = 0`; the second value
    is then :math:`1/s` too, which the formula already gives.

    Args:
        x: one vector of shape ``(d,)``.
        eps: added to the variance inside the square root. Default: 1e-5.

    Returns:
        float64 array of the ``d`` eigenvalues, ascending; equal to ``np.linalg.eigvalsh`` of
        :func:`layer_norm_jacobian` up to rounding.
    """
    x = _vector(x)
    eps = check_eps(eps)
    d = x.shape[0]
    if d == 1:
        return np.zeros(1)
    var = np.mean(np.square(x - x.mean()))
    inv_s = 1.0 / np.sqrt(var + eps)
    values = np.concatenate([[0.0, inv_s * eps / (var + eps)], np.full(d - 2, inv_s)])
    return np.sort(values)
