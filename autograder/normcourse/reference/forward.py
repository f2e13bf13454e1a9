r"""Forward passes of the five normalization layers, in numpy, shaped like ``torch.nn.functional``.

Each function takes the same arguments as its ``torch.nn.functional`` namesake, with numpy arrays in
place of tensors. Arithmetic is done in float64 and the result is returned in the input's float dtype,
so the reference is exact to rounding whatever precision the caller works in. The reduction axes come
from :mod:`normcourse.reference.scopes`.

All five share one kernel: subtract a mean (except RMSNorm), divide by
:math:`s = \sqrt{\sigma^2 + \epsilon}` computed over the scope, then apply an optional gain and bias.
"""

from __future__ import annotations

import numpy as np

from . import scopes
from ._checks import (as_input, check_affine, check_channels, check_eps, check_param, default_rms_eps,
                      normalized_shape_tuple, output_dtype)

__all__ = ["batch_norm", "layer_norm", "instance_norm", "group_norm", "rms_norm", "normalize"]


def normalize(x: np.ndarray, axes: tuple[int, ...], eps: float, center: bool = True) -> np.ndarray:
    r"""The shared kernel: :math:`\hat x = (x - \mu) / \sqrt{\sigma^2 + \epsilon}` over ``axes``.

    The variance is the biased one (divide by the number of elements), as in every PyTorch
    normalization layer. With ``center=False`` the mean is not subtracted and :math:`\sigma^2` is the
    mean square (RMSNorm). Works in float64 and returns float64.
    """
    x = np.asarray(x, dtype=np.float64)
    if center:
        x = x - x.mean(axis=axes, keepdims=True)
    second_moment = np.mean(np.square(x), axis=axes, keepdims=True)
    return x / np.sqrt(second_moment + eps)


def _affine(x_hat: np.ndarray, weight, bias, param_shape: tuple[int, ...]) -> np.ndarray:
    """Apply ``x_hat * weight + bias`` with parameters broadcast along ``param_shape``."""
    if weight is not None:
        x_hat = x_hat * weight.reshape(param_shape)
    if bias is not None:
        x_hat = x_hat + bias.reshape(param_shape)
    return x_hat


def _channel_param_shape(ndim: int) -> tuple[int, ...]:
    return (1, -1) + (1,) * (ndim - 2)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    r"""Batch Normalization over the batch and every spatial position, per channel.

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    In training mode the mean and the biased variance are taken over axes ``(0, 2, 3, ...)`` of the
    current batch, and, if running statistics are given, they are updated **in place** with PyTorch's
    convention (``momentum`` weighs the *new* value, and the variance stored is the unbiased one):

    .. math::
        \hat\mu \leftarrow (1 - m)\,\hat\mu + m\,\mu_B, \qquad
        \hat\sigma^2 \leftarrow (1 - m)\,\hat\sigma^2 + m\,\frac{n}{n-1}\sigma_B^2

    where :math:`n` is the number of values per channel. In evaluation mode the running statistics
    are used instead and nothing is updated.

    Args:
        input: array of shape ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
        running_mean: float array of shape ``(C,)`` or None (only allowed when ``training``).
        running_var: float array of shape ``(C,)`` or None (only allowed when ``training``).
        weight: gain :math:`\gamma` of shape ``(C,)`` or None. Default: None.
        bias: bias :math:`\beta` of shape ``(C,)`` or None. Default: None.
        training: use batch statistics (and update the running ones). Default: False.
        momentum: weight of the new batch statistic in the running average. Default: 0.1.
        eps: added to the variance inside the square root. Default: 1e-5.

    Shape:
        - Input: :math:`(N, C, *)`.
        - Output: same shape and float dtype as the input.

    Raises:
        ValueError: rank below 2, channel mismatch, a single value per channel in training (PyTorch's
            "Expected more than 1 value per channel when training"), missing running statistics in
            evaluation, non-positive eps, non-finite input.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(8, 3, 4, 4))
        >>> rm, rv = np.zeros(3), np.ones(3)
        >>> y = batch_norm(x, rm, rv, training=True)
        >>> np.allclose(y.mean(axis=(0, 2, 3)), 0)
        True

    Reference: Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing
    Internal Covariate Shift", ICML 2015.
    """
    x = as_input(input, min_ndim=2)
    eps = check_eps(eps)
    c = x.shape[1]
    running_mean = check_channels(x, c, "running_mean", running_mean)
    running_var = check_channels(x, c, "running_var", running_var)
    w, b = check_affine(weight, bias, (c,))
    axes = scopes.channel_first_axes("batch_norm", x.ndim)
    x64 = x.astype(np.float64)
    n = x.size // c
    if training:
        if n <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                             f"{list(x.shape)}: the batch variance of a single value is 0")
        mean = x64.mean(axis=axes)
        var = x64.var(axis=axes)
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
        if running_var is not None:
            running_var[...] = (1 - momentum) * running_var + momentum * var * n / (n - 1)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are required when training=False "
                             "(evaluation normalizes with the running statistics)")
        mean = np.asarray(running_mean, dtype=np.float64)
        var = np.asarray(running_var, dtype=np.float64)
    shape = _channel_param_shape(x.ndim)
    x_hat = (x64 - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    return _affine(x_hat, w, b, shape).astype(output_dtype(x))


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    r"""Layer Normalization over the trailing ``normalized_shape`` dimensions.

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \odot \gamma + \beta

    The mean and the biased variance are computed over the last ``len(normalized_shape)`` axes,
    separately for every leading index (every sample of an image batch, every token of a sequence).
    Training and evaluation are the same computation.

    Args:
        input: array of shape ``(*, *normalized_shape)``.
        normalized_shape: int or tuple of ints; must equal the trailing dimensions of ``input``.
        weight: elementwise gain :math:`\gamma` of shape ``normalized_shape`` or None. Default: None.
        bias: elementwise bias :math:`\beta` of shape ``normalized_shape`` or None. Default: None.
        eps: added to the variance inside the square root. Default: 1e-5.

    Shape:
        - Input: :math:`(*, \text{normalized\_shape})`; output: same shape and float dtype.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(2, 5, 16))
        >>> y = layer_norm(x, (16,))
        >>> np.allclose(y.mean(axis=-1), 0)
        True

    Reference: Ba, Kiros & Hinton, "Layer Normalization", arXiv:1607.06450, 2016.
    """
    x = as_input(input)
    shape = normalized_shape_tuple(normalized_shape, x)
    eps = check_eps(eps)
    w, b = check_affine(weight, bias, shape)
    x_hat = normalize(x, scopes.trailing_axes(x.ndim, len(shape)), eps)
    return _affine(x_hat, w, b, shape).astype(output_dtype(x))


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5):
    r"""Instance Normalization: per sample and channel, over the spatial positions.

    .. math::
        y_{nc\cdot} = \frac{x_{nc\cdot} - \mathrm{E}[x_{nc\cdot}]}{\sqrt{\mathrm{Var}[x_{nc\cdot}] + \epsilon}}
        \gamma_c + \beta_c

    With ``use_input_stats=True`` (the default) the statistics come from the input itself; if running
    statistics are given they are updated in place with the batch average of the per-instance mean and
    unbiased variance, as PyTorch does. With ``use_input_stats=False`` the running statistics are used.

    Args:
        input: array of shape ``(N, C, *S)`` with at least one spatial axis.
        running_mean, running_var: float arrays of shape ``(C,)`` or None. Default: None.
        weight, bias: per-channel affine parameters of shape ``(C,)`` or None. Default: None
            (``nn.InstanceNorm*`` has ``affine=False`` by default).
        use_input_stats: normalize with the instance statistics. Default: True.
        momentum: weight of the new statistic in the running average. Default: 0.1.
        eps: added to the variance inside the square root. Default: 1e-5.

    Shape:
        - Input: :math:`(N, C, *S)`; output: same shape and float dtype.

    Raises:
        ValueError: no spatial axis, or a single spatial element while using input statistics (PyTorch:
            "Expected more than 1 spatial element when training"); with one element the output would
            collapse to the bias.

    Reference: Ulyanov, Vedaldi & Lempitsky, "Instance Normalization: The Missing Ingredient for Fast
    Stylization", arXiv:1607.08022, 2016.
    """
    x = as_input(input, min_ndim=3)
    eps = check_eps(eps)
    n, c = x.shape[:2]
    running_mean = check_channels(x, c, "running_mean", running_mean)
    running_var = check_channels(x, c, "running_var", running_var)
    w, b = check_affine(weight, bias, (c,))
    axes = scopes.channel_first_axes("instance_norm", x.ndim)
    shape = _channel_param_shape(x.ndim)
    x64 = x.astype(np.float64)
    if use_input_stats:
        m = x.size // (n * c)
        if m <= 1:
            raise ValueError(f"Expected more than 1 spatial element when training, got input size "
                             f"{list(x.shape)}: one value per instance normalizes to 0")
        mean = x64.mean(axis=axes, keepdims=True)
        var = x64.var(axis=axes, keepdims=True)
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean.reshape(n, c).mean(0)
        if running_var is not None:
            unbiased = var.reshape(n, c) * m / (m - 1)
            running_var[...] = (1 - momentum) * running_var + momentum * unbiased.mean(0)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are required when use_input_stats=False")
        mean = np.asarray(running_mean, dtype=np.float64).reshape(shape)
        var = np.asarray(running_var, dtype=np.float64).reshape(shape)
    x_hat = (x64 - mean) / np.sqrt(var + eps)
    return _affine(x_hat, w, b, shape).astype(output_dtype(x))


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    r"""Group Normalization: per sample and group of channels, over the group and all positions.

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma_c + \beta_c

    The ``C`` channels are split into ``num_groups`` contiguous groups of ``C // num_groups``; each
    (sample, group) pair gets its own mean and biased variance. ``num_groups=1`` is LayerNorm over
    ``(C, *S)`` with per-channel affine; ``num_groups=C`` is InstanceNorm. The gain and bias are per
    *channel*, not per group.

    Args:
        input: array of shape ``(N, C, *S)``.
        num_groups: number of groups; must divide ``C``.
        weight, bias: per-channel affine parameters of shape ``(C,)`` or None. Default: None.
        eps: added to the variance inside the square root. Default: 1e-5.

    Shape:
        - Input: :math:`(N, C, *S)`; output: same shape and float dtype.

    Reference: Wu & He, "Group Normalization", ECCV 2018.
    """
    x = as_input(input, min_ndim=2)
    eps = check_eps(eps)
    c = x.shape[1]
    if not isinstance(num_groups, (int, np.integer)) or num_groups < 1:
        raise ValueError(f"num_groups must be a positive integer, got {num_groups!r}")
    if c % num_groups != 0:
        raise ValueError(f"num_channels ({c}) must be divisible by num_groups ({num_groups})")
    w, b = check_affine(weight, bias, (c,))
    grouped = scopes.statistics_view(x, int(num_groups))
    x_hat = normalize(grouped, tuple(range(2, grouped.ndim)), eps).reshape(x.shape)
    return _affine(x_hat, w, b, _channel_param_shape(x.ndim)).astype(output_dtype(x))


def rms_norm(input, normalized_shape, weight=None, eps=None):
    r"""Root Mean Square Layer Normalization over the trailing ``normalized_shape`` dimensions.

    .. math::
        y = \frac{x}{\sqrt{\frac{1}{d}\sum_i x_i^2 + \epsilon}} \odot \gamma

    No mean is subtracted and there is no bias. As in ``torch.nn.functional.rms_norm``, ``eps`` sits
    inside the square root and ``eps=None`` means the machine epsilon of the dtype PyTorch computes in
    (``np.finfo(input.dtype).eps``; float32's for float16 input).

    Args:
        input: array of shape ``(*, *normalized_shape)``.
        normalized_shape: int or tuple of ints; must equal the trailing dimensions of ``input``.
        weight: elementwise gain of shape ``normalized_shape`` or None. Default: None.
        eps: added to the mean square, or None for the machine epsilon of the input dtype.

    Shape:
        - Input: :math:`(*, \text{normalized\_shape})`; output: same shape and float dtype.

    Reference: Zhang & Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019.
    """
    x = as_input(input)
    shape = normalized_shape_tuple(normalized_shape, x)
    eps = default_rms_eps(x.dtype) if eps is None else check_eps(eps)
    w = check_param(weight, shape, "weight")
    y = normalize(x, scopes.trailing_axes(x.ndim, len(shape)), eps, center=False)
    return _affine(y, w, None, shape).astype(output_dtype(x))
