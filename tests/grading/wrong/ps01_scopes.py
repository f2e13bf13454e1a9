"""Wrong implementations of problem set 1's functions: the mistakes the course warns about."""

import numpy as np

import normcourse.reference as ref


def _affine_channels(y, weight, bias):
    shape = (1, -1) + (1,) * (y.ndim - 2)
    if weight is not None:
        y = y * np.reshape(weight, shape)
    if bias is not None:
        y = y + np.reshape(bias, shape)
    return y


def _axes_ln_per_sequence(norm, layout):
    """LayerNorm on (B, S, D) over the whole sequence instead of each token."""
    return (1, 2) if (norm, layout) == ("layer_norm", "BSD") else ref.reduction_axes(norm, layout)


def _axes_bsd_batch_only(norm, layout):
    """BatchNorm on (B, S, D) over the batch only, forgetting the tokens."""
    return (0,) if (norm, layout) == ("batch_norm", "BSD") else ref.reduction_axes(norm, layout)


def _bn_unbiased(input, weight=None, bias=None, eps=1e-5):
    x = np.asarray(input, dtype=np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    y = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, ddof=1, keepdims=True) + eps)
    return _affine_channels(y, weight, bias).astype(input.dtype)


def _bn_batch_axis_only(input, weight=None, bias=None, eps=1e-5):
    x = np.asarray(input, dtype=np.float64)
    y = (x - x.mean(0, keepdims=True)) / np.sqrt(x.var(0, keepdims=True) + eps)
    return _affine_channels(y, weight, bias).astype(input.dtype)


def _bn_in_place(input, weight=None, bias=None, eps=1e-5):
    """Right values, but normalizes the caller's array in place (x -= mean)."""
    y = ref.batch_norm(input, None, None, weight, bias, training=True, eps=eps)
    if input.dtype.kind == "f":
        input -= input.mean(axis=(0,) + tuple(range(2, input.ndim)), keepdims=True)
    return y


def _ln_eps_outside(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    x = np.asarray(input, dtype=np.float64)
    n = 1 if np.isscalar(normalized_shape) else len(normalized_shape)
    axes = tuple(range(x.ndim - n, x.ndim))
    y = (x - x.mean(axes, keepdims=True)) / (x.std(axes, keepdims=True) + eps)
    y = y * weight if weight is not None else y
    y = y + bias if bias is not None else y
    return y.astype(input.dtype)


def _ln_unbiased_std(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Seed 001's LayerNorm: unbiased std, eps added to the std."""
    x = np.asarray(input, dtype=np.float64)
    n = 1 if np.isscalar(normalized_shape) else len(normalized_shape)
    axes = tuple(range(x.ndim - n, x.ndim))
    y = (x - x.mean(axes, keepdims=True)) / (x.std(axes, ddof=1, keepdims=True) + eps)
    y = y * weight if weight is not None else y
    y = y + bias if bias is not None else y
    return y.astype(input.dtype)


def _ln_float64_out(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Right formula, but returns float64 for float32 input."""
    return ref.layer_norm(np.asarray(input, dtype=np.float64), normalized_shape, weight, bias, eps)


def _in_as_layer_norm(input, weight=None, bias=None, eps=1e-5):
    x = np.asarray(input, dtype=np.float64)
    y = ref.normalize(x, tuple(range(1, x.ndim)), eps)
    return _affine_channels(y, weight, bias).astype(input.dtype)


def _gn_interleaved(input, num_groups, weight=None, bias=None, eps=1e-5):
    """Channel c in group c % G instead of contiguous groups."""
    x = np.asarray(input, dtype=np.float64)
    n, c = x.shape[:2]
    view = x.reshape((n, c // num_groups, num_groups) + x.shape[2:])
    axes = (1,) + tuple(range(3, view.ndim))
    y = ref.normalize(view, axes, eps).reshape(x.shape)
    return _affine_channels(y, weight, bias).astype(input.dtype)


def _rms_centered(input, normalized_shape, weight=None, eps=None):
    eps = np.finfo(np.asarray(input).dtype).eps if eps is None else eps
    return ref.layer_norm(input, normalized_shape, weight, None, eps)


def _rms_fixed_eps(input, normalized_shape, weight=None, eps=None):
    return ref.rms_norm(input, normalized_shape, weight, 1e-5 if eps is None else eps)


def _rms_float64_eps(input, normalized_shape, weight=None, eps=None):
    """Converts to float64 first, then takes eps=None as float64's machine epsilon (the ps04 trap)."""
    x = np.asarray(input, dtype=np.float64)
    return ref.rms_norm(x, normalized_shape, weight, eps).astype(np.asarray(input).dtype)


WRONG = {
    "reduction_axes": [_axes_ln_per_sequence, _axes_bsd_batch_only],
    "batch_norm_train": [_bn_unbiased, _bn_batch_axis_only, _bn_in_place],
    "layer_norm": [_ln_eps_outside, _ln_unbiased_std, _ln_float64_out],
    "instance_norm": [_in_as_layer_norm],
    "group_norm": [_gn_interleaved],
    "rms_norm": [_rms_centered, _rms_fixed_eps, _rms_float64_eps],
}
