"""Wrong implementations of problem set 3's functions: the mistakes the course warns about."""

import numpy as np

import normcourse.reference as ref
from normcourse.problems import ps03_backward as ps03


def _forward_difference(f, x, h=1e-5):
    point = np.array(x, dtype=np.float64, order="C")
    base = f(point)
    grad = np.empty_like(point)
    for i in np.ndindex(point.shape):
        original = point[i]
        point[i] = original + h
        grad[i] = (f(point) - base) / h
        point[i] = original
    return grad


def _gradient_that_forgets_to_restore(f, x, h=1e-5):
    """Right values, but perturbs the caller's array and leaves it shifted."""
    grad = ps03.numerical_gradient_reference(f, x, h)
    x[...] = x + h if x.dtype.kind == "f" else x
    return grad


def _gradient_in_the_input_dtype(f, x, h=1e-5):
    """Differentiates a copy in x's own dtype: float32 cannot resolve steps of 1e-5."""
    point = np.array(x, order="C")
    grad = np.zeros(point.shape)
    for i in np.ndindex(point.shape):
        original = point[i]
        point[i] = original + h
        f_plus = f(point)
        point[i] = original - h
        f_minus = f(point)
        point[i] = original
        grad[i] = (f_plus - f_minus) / (2 * h)
    return grad


def _relative_error_no_floor(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.max(np.abs(a - b) / (np.abs(a) + np.abs(b))))


def _relative_error_mean(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.mean(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-8)))


def _ln_backward_no_mean_term(dy, x, normalized_shape, weight=None, bias=None, eps=1e-5):
    dx, dw, db = ref.layer_norm_backward(dy, x, normalized_shape, weight, bias, eps)
    n = 1 if np.isscalar(normalized_shape) else len(normalized_shape)
    axes = tuple(range(x.ndim - n, x.ndim))
    x64 = np.asarray(x, float)
    s = np.sqrt(x64.var(axes, keepdims=True) + eps)
    g = dy * weight if weight is not None else dy
    return (dx + (g.mean(axes, keepdims=True) / s)).astype(dx.dtype), dw, db


def _ln_backward_dweight_not_summed(dy, x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """dweight summed over the first axis only (leading axes beyond the first are forgotten)."""
    dx, dw, db = ref.layer_norm_backward(dy, x, normalized_shape, weight, bias, eps)
    if dw is not None and np.asarray(x).ndim > 2 and not np.isscalar(normalized_shape) and len(normalized_shape) == 1:
        x64 = np.asarray(x, float)
        x_hat = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + eps)
        dw = (np.asarray(dy, float) * x_hat)[0].sum(axis=tuple(range(x64.ndim - 2))).astype(dw.dtype)
    return dx, dw, db


def _bn_backward_constant_stats(dy, x, weight=None, bias=None, eps=1e-5):
    """The evaluation-mode gradient gamma * dy / s: treats the batch statistics as constants."""
    _, dw, db = ref.batch_norm_backward(dy, x, weight, bias, eps)
    x64 = np.asarray(x, float)
    axes = (0,) + tuple(range(2, x64.ndim))
    shape = (1, -1) + (1,) * (x64.ndim - 2)
    s = np.sqrt(x64.var(axes, keepdims=True) + eps)
    gamma = np.reshape(weight, shape) if weight is not None else 1.0
    return (gamma * dy / s).astype(np.asarray(x).dtype), dw, db


def _rms_backward_as_layer_norm(dy, x, normalized_shape, weight=None, eps=None):
    eps = np.finfo(np.asarray(x).dtype).eps if eps is None else eps
    dx, dw, _ = ref.layer_norm_backward(dy, x, normalized_shape, weight, None, eps)
    return dx, dw


WRONG = {
    "numerical_gradient": [_forward_difference, _gradient_that_forgets_to_restore, _gradient_in_the_input_dtype],
    "relative_error": [_relative_error_no_floor, _relative_error_mean],
    "layer_norm_backward": [_ln_backward_no_mean_term, _ln_backward_dweight_not_summed],
    "batch_norm_backward": [_bn_backward_constant_stats],
    "rms_norm_backward": [_rms_backward_as_layer_norm],
}
