r"""Hand-written backward passes of LayerNorm, BatchNorm (training mode) and RMSNorm, in numpy.

Each function pairs with its forward pass in :mod:`normcourse.reference.forward` the way CS231n's
``layers.py`` pairs ``*_forward`` with ``*_backward``: given the upstream gradient
:math:`\partial L / \partial y` (``dy``) and the forward's inputs, it returns the gradients of the loss
with respect to the input and the affine parameters. No autograd: every formula is derived below and
computed in float64; gradients come back in the input's float dtype.

All three share one pattern. Write :math:`g = \gamma \odot dy` (the gradient reaching :math:`\hat x`)
and let :math:`\langle\cdot\rangle` be the mean over the normalized scope of :math:`m` elements.

* Centering norms (LayerNorm, BatchNorm), :math:`\hat x = (x - \mu)/s`, :math:`s = \sqrt{\sigma^2 + \epsilon}`:

  .. math::
      \frac{\partial L}{\partial x} = \frac{1}{s}\Big(g - \langle g\rangle - \hat x\,\langle g \hat x\rangle\Big)
      = \frac{\gamma}{m s}\Big(m\,dy - \textstyle\sum dy - \hat x \sum dy\,\hat x\Big)

  (the second form, with a per-channel :math:`\gamma`, is BatchNorm's compact backward).
* RMSNorm, :math:`\hat y = x / r`, :math:`r = \sqrt{\langle x^2\rangle + \epsilon}`:

  .. math::
      \frac{\partial L}{\partial x} = \frac{1}{r}\Big(g - \hat y\,\langle g \hat y\rangle\Big)

* Parameters: :math:`\partial L/\partial\gamma = \sum dy \odot \hat x` and
  :math:`\partial L/\partial\beta = \sum dy`, summed over every axis the parameter is broadcast along.

These are the vector-Jacobian products of the Jacobians in :mod:`normcourse.reference.jacobians`
(which are symmetric without a gain, so :math:`J^\top g = J g`).
"""

from __future__ import annotations

import numpy as np

from . import scopes
from ._checks import (as_input, check_affine, check_eps, check_param, default_rms_eps, normalized_shape_tuple,
                      output_dtype)

__all__ = ["layer_norm_backward", "batch_norm_backward", "rms_norm_backward"]


def _upstream(dy, x: np.ndarray) -> np.ndarray:
    """Check the upstream gradient: finite, same shape as the forward's input; return it as float64."""
    g = as_input(dy, "dy", min_ndim=0)
    if g.shape != x.shape:
        raise ValueError(f"dy must have the shape of the input {list(x.shape)} (it is dL/dy for the "
                         f"output, which has the input's shape), got {list(g.shape)}")
    return g.astype(np.float64)


def _centered_backward(g: np.ndarray, x_hat: np.ndarray, inv_s: np.ndarray,
                       axes: tuple[int, ...]) -> np.ndarray:
    r"""``(1/s) (g - <g> - x_hat <g x_hat>)`` with means over ``axes``: the centering norms' dx."""
    mean_g = g.mean(axis=axes, keepdims=True)
    mean_gx = (g * x_hat).mean(axis=axes, keepdims=True)
    return inv_s * (g - mean_g - x_hat * mean_gx)


def layer_norm_backward(dy, x, normalized_shape, weight=None, bias=None, eps=1e-5):
    r"""Gradients of :func:`~normcourse.reference.forward.layer_norm` (no autograd).

    .. math::
        \frac{\partial L}{\partial x} = \frac{1}{s}\Big(g - \langle g\rangle - \hat x\,\langle g\hat x\rangle\Big),
        \quad g = \gamma \odot dy, \qquad
        \frac{\partial L}{\partial \gamma} = \sum_{\text{leading}} dy \odot \hat x, \qquad
        \frac{\partial L}{\partial \beta} = \sum_{\text{leading}} dy

    where :math:`\langle\cdot\rangle` is the mean over the ``normalized_shape`` axes of one sample and
    :math:`s = \sqrt{\sigma^2 + \epsilon}`. Derivation: :math:`\partial\hat x_i/\partial x_j =
    \frac{1}{s}(\delta_{ij} - \frac1d - \frac1d\hat x_i\hat x_j)` (see
    :func:`~normcourse.reference.jacobians.layer_norm_jacobian`); contract it with :math:`g`.

    Args:
        dy: upstream gradient :math:`\partial L/\partial y`, same shape as ``x``.
        x: the forward's input, shape ``(*, *normalized_shape)``.
        normalized_shape: int or tuple of ints; the trailing dimensions of ``x``.
        weight: gain :math:`\gamma` of shape ``normalized_shape`` or None. Default: None.
        bias: bias :math:`\beta` of shape ``normalized_shape`` or None (only decides whether
            ``dbias`` is returned). Default: None.
        eps: as in the forward. Default: 1e-5.

    Returns:
        ``(dx, dweight, dbias)``: ``dx`` has the shape of ``x``; ``dweight``/``dbias`` have shape
        ``normalized_shape`` and are None when ``weight``/``bias`` is None. All in ``x``'s float dtype.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x, dy = rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
        >>> dx, dw, db = layer_norm_backward(dy, x, (8,), np.ones(8), np.zeros(8))
        >>> np.allclose(dx.sum(axis=-1), 0)   # dx is orthogonal to the all-ones direction
        True

    Reference: Ba, Kiros & Hinton, "Layer Normalization", arXiv:1607.06450, 2016.
    """
    x = as_input(x)
    shape = normalized_shape_tuple(normalized_shape, x)
    eps = check_eps(eps)
    w, b = check_affine(weight, bias, shape)
    dy64 = _upstream(dy, x)
    axes = scopes.trailing_axes(x.ndim, len(shape))
    leading = tuple(range(x.ndim - len(shape)))
    x64 = x.astype(np.float64)
    centered = x64 - x64.mean(axis=axes, keepdims=True)
    inv_s = 1.0 / np.sqrt(np.mean(np.square(centered), axis=axes, keepdims=True) + eps)
    x_hat = centered * inv_s
    g = dy64 * w if w is not None else dy64
    dx = _centered_backward(g, x_hat, inv_s, axes)
    out = output_dtype(x)
    dweight = (dy64 * x_hat).sum(axis=leading).astype(out) if w is not None else None
    dbias = dy64.sum(axis=leading).astype(out) if b is not None else None
    return dx.astype(out), dweight, dbias


def batch_norm_backward(dy, x, weight=None, bias=None, eps=1e-5):
    r"""Gradients of :func:`~normcourse.reference.forward.batch_norm` in training mode (no autograd).

    .. math::
        \frac{\partial L}{\partial x} = \frac{\gamma}{m\,s}\Big(m\,dy - \sum dy - \hat x \sum dy\,\hat x\Big),
        \qquad \frac{\partial L}{\partial \gamma} = \sum dy\,\hat x, \qquad
        \frac{\partial L}{\partial \beta} = \sum dy

    with sums over the :math:`m = N \cdot \prod S` values of one channel (axes ``(0, 2, 3, ...)``, from
    :mod:`~normcourse.reference.scopes`) and :math:`s = \sqrt{\sigma_B^2 + \epsilon}` the batch statistic.
    In training mode every sample's output depends on every other sample of the batch through
    :math:`\mu_B` and :math:`\sigma_B^2`; the two subtracted sums are exactly that coupling. (In
    evaluation mode the statistics are constants and the gradient would be :math:`\gamma\,dy/s`.)

    Args:
        dy: upstream gradient, same shape as ``x``.
        x: the forward's input, shape ``(N, C, *)``.
        weight: gain :math:`\gamma` of shape ``(C,)`` or None. Default: None.
        bias: bias :math:`\beta` of shape ``(C,)`` or None (only decides whether ``dbias`` is
            returned). Default: None.
        eps: as in the forward. Default: 1e-5.

    Returns:
        ``(dx, dweight, dbias)``: ``dx`` has the shape of ``x``; ``dweight``/``dbias`` have shape
        ``(C,)`` and are None when ``weight``/``bias`` is None. All in ``x``'s float dtype.

    Raises:
        ValueError: as the forward in training mode (including a single value per channel).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x, dy = rng.normal(size=(8, 3, 2, 2)), rng.normal(size=(8, 3, 2, 2))
        >>> dx, dw, db = batch_norm_backward(dy, x, np.ones(3), np.zeros(3))
        >>> dx.shape, dw.shape
        ((8, 3, 2, 2), (3,))

    Reference: Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing
    Internal Covariate Shift", ICML 2015 (Section 3, the chain rule through the batch statistics).
    """
    x = as_input(x, min_ndim=2)
    eps = check_eps(eps)
    c = x.shape[1]
    w, b = check_affine(weight, bias, (c,))
    dy64 = _upstream(dy, x)
    if x.size // c <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{list(x.shape)}: the batch variance of a single value is 0")
    axes = scopes.channel_first_axes("batch_norm", x.ndim)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    x64 = x.astype(np.float64)
    centered = x64 - x64.mean(axis=axes, keepdims=True)
    inv_s = 1.0 / np.sqrt(np.mean(np.square(centered), axis=axes, keepdims=True) + eps)
    x_hat = centered * inv_s
    g = dy64 * w.reshape(shape) if w is not None else dy64
    dx = _centered_backward(g, x_hat, inv_s, axes)
    out = output_dtype(x)
    dweight = (dy64 * x_hat).sum(axis=axes).astype(out) if w is not None else None
    dbias = dy64.sum(axis=axes).astype(out) if b is not None else None
    return dx.astype(out), dweight, dbias


def rms_norm_backward(dy, x, normalized_shape, weight=None, eps=None):
    r"""Gradients of :func:`~normcourse.reference.forward.rms_norm` (no autograd).

    .. math::
        \frac{\partial L}{\partial x} = \frac{1}{r}\Big(g - \hat y\,\langle g\hat y\rangle\Big),
        \quad g = \gamma\odot dy, \quad \hat y = \frac{x}{r}, \quad r = \sqrt{\langle x^2\rangle + \epsilon},
        \qquad \frac{\partial L}{\partial\gamma} = \sum_{\text{leading}} dy\odot\hat y

    Derivation: :math:`\partial r/\partial x_j = x_j/(d\,r)`, so :math:`\partial\hat y_i/\partial x_j =
    \frac{1}{r}(\delta_{ij} - \frac1d\hat y_i\hat y_j)`; contract with :math:`g`. Unlike LayerNorm there
    is no :math:`-\langle g\rangle` term: RMSNorm does not center, so ``dx`` need not sum to zero.

    Args:
        dy: upstream gradient, same shape as ``x``.
        x: the forward's input, shape ``(*, *normalized_shape)``.
        normalized_shape: int or tuple of ints; the trailing dimensions of ``x``.
        weight: gain of shape ``normalized_shape`` or None. Default: None.
        eps: as in the forward; None means :func:`_checks.default_rms_eps` of x's dtype. Default: None.

    Returns:
        ``(dx, dweight)``; ``dweight`` is None when ``weight`` is None. In ``x``'s float dtype.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x, dy = rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
        >>> dx, dw = rms_norm_backward(dy, x, (8,), np.ones(8))
        >>> dx.shape, dw.shape
        ((4, 8), (8,))

    Reference: Zhang & Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019.
    """
    x = as_input(x)
    shape = normalized_shape_tuple(normalized_shape, x)
    eps = default_rms_eps(x.dtype) if eps is None else check_eps(eps)
    w = check_param(weight, shape, "weight")
    dy64 = _upstream(dy, x)
    axes = scopes.trailing_axes(x.ndim, len(shape))
    leading = tuple(range(x.ndim - len(shape)))
    x64 = x.astype(np.float64)
    inv_r = 1.0 / np.sqrt(np.mean(np.square(x64), axis=axes, keepdims=True) + eps)
    y_hat = x64 * inv_r
    g = dy64 * w if w is not None else dy64
    dx = inv_r * (g - y_hat * (g * y_hat).mean(axis=axes, keepdims=True))
    out = output_dtype(x)
    dweight = (dy64 * y_hat).sum(axis=leading).astype(out) if w is not None else None
    return dx.astype(out), dweight
