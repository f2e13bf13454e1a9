"""Wrong implementations of problem set 7's functions: the mistakes chapter 8 and the notebook warn about.

Numpy folds that scale the wrong axis, put eps outside the square root or forget a bias; freezes that
switch the whole model or miss nested layers; evaluations that forget ``model.eval()`` or restore the
mode with ``model.train(was)``; ghost batches drawn with a stride or updated the wrong way; Batch
Renormalization that updates before computing r and d or keeps the variance. Keyed by the learner's
names (see ``wrong/__init__.py``).
"""

import numpy as np
import torch
from torch import nn

import normcourse.reference as ref


def _scale(rv, eps, w, *, eps_outside=False):
    rv = np.asarray(rv, dtype=np.float64)
    scale = 1.0 / (np.sqrt(rv) + eps if eps_outside else np.sqrt(rv + eps))
    return scale if w is None else scale * np.asarray(w, dtype=np.float64)


def _fuse_linear(scale_columns=False, eps_outside=False, bias_unscaled=False, ignore_bias=False):
    def fuse(linear_w, linear_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b):
        dtype = np.asarray(linear_w).dtype
        w = np.asarray(linear_w, dtype=np.float64)
        a = _scale(bn_rv, bn_eps, bn_w, eps_outside=eps_outside)
        b = 0.0 if linear_b is None or ignore_bias else np.asarray(linear_b, dtype=np.float64)
        beta = 0.0 if bn_b is None else np.asarray(bn_b, dtype=np.float64)
        rm = np.asarray(bn_rm, dtype=np.float64)
        fused_b = (b + beta - a * rm) if bias_unscaled else a * (b - rm) + beta
        fused_w = w * a[None, :] if scale_columns else a[:, None] * w
        return fused_w.astype(dtype), (fused_b + 0 * rm).astype(dtype)
    fuse.__name__ = ("fuse_linear_scales_columns" if scale_columns else "fuse_linear_eps_outside" if eps_outside
                     else "fuse_linear_bias_unscaled" if bias_unscaled else "fuse_linear_ignores_linear_bias")
    return fuse


def _fuse_linear_float64_out(linear_w, linear_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b):
    """Right values, but float64 whatever the input dtype."""
    w, b = ref.fuse_linear_bn_weights(np.asarray(linear_w, dtype=np.float64),
                                      None if linear_b is None else np.asarray(linear_b, dtype=np.float64),
                                      bn_rm, bn_rv, bn_eps, bn_w, bn_b)
    return w, b


def _fuse_conv(transpose_ignored=False, four_d=False, eps_outside=False, bias_unscaled=False):
    def fuse(conv_w, conv_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b, transpose=False):
        dtype = np.asarray(conv_w).dtype
        w = np.asarray(conv_w, dtype=np.float64)
        a = _scale(bn_rv, bn_eps, bn_w, eps_outside=eps_outside)
        rm = np.asarray(bn_rm, dtype=np.float64)
        b = np.zeros_like(rm) if conv_b is None else np.asarray(conv_b, dtype=np.float64)
        beta = np.zeros_like(rm) if bn_b is None else np.asarray(bn_b, dtype=np.float64)
        if four_d:
            shape = (1, -1, 1, 1) if transpose else (-1, 1, 1, 1)
        else:
            shape = [1] * w.ndim
            shape[1 if transpose and not transpose_ignored else 0] = -1
        fused_b = b + beta - a * rm if bias_unscaled else a * (b - rm) + beta
        return (w * a.reshape(shape)).astype(dtype), fused_b.astype(dtype)
    fuse.__name__ = ("fuse_conv_ignores_transpose" if transpose_ignored else "fuse_conv_assumes_2d_kernels" if four_d
                     else "fuse_conv_eps_outside" if eps_outside else "fuse_conv_bias_unscaled")
    return fuse


def _is_bn(module):
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _freeze_whole_model_eval(model):
    """model.eval() freezes the BatchNorm layers, and every other module's mode with them."""
    model.eval()
    names = []
    for name, module in model.named_modules():
        if _is_bn(module):
            module.requires_grad_(False)
            names.append(name)
    return names


def _freeze_norm_base(model):
    """Every _NormBase: InstanceNorm too."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            module.eval()
            module.requires_grad_(False)
            names.append(name)
    return names


def _freeze_mode_only(model):
    """Evaluation mode, but gamma and beta keep training."""
    names = []
    for name, module in model.named_modules():
        if _is_bn(module):
            module.eval()
            names.append(name)
    return names


def _freeze_children_only(model):
    """model.named_children(): misses BatchNorm layers inside nested blocks."""
    names = []
    for name, module in model.named_children():
        if _is_bn(module):
            module.eval()
            module.requires_grad_(False)
            names.append(name)
    return names


def _freeze_any_norm_by_name(model):
    """'Norm' in the class name: GroupNorm and LayerNorm too."""
    names = []
    for name, module in model.named_modules():
        if "Norm" in type(module).__name__:
            module.eval()
            module.requires_grad_(False)
            names.append(name)
    return names


def _evaluate_no_grad_only(model, x, batch_size=64):
    """The chapter's bug: torch.no_grad() but no model.eval()."""
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()


def _evaluate_restores_model_mode(model, x, batch_size=64):
    """model.train(was): un-freezes frozen BatchNorm layers inside a model in training mode."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()
    model.train(was)
    return out


def _evaluate_never_restores(model, x, batch_size=64):
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()


def _evaluate_batch_norm_only(model, x, batch_size=64):
    """Switches only the BatchNorm layers to evaluation mode: dropout stays on."""
    modes = [(m, m.training) for m in model.modules()]
    for m in model.modules():
        if _is_bn(m):
            m.eval()
    with torch.no_grad():
        out = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()
    for m, mode in modes:
        m.training = mode
    return out


def _ghost_with(*, strided=False, whole=False, biased_running=False, spatial_n=True, always_average=False):
    def ghost(x, ghost_batch_size, running_mean=None, running_var=None, weight=None, bias=None, training=True,
              momentum=0.1, eps=1e-5, stats_update="average"):
        if not training:
            return ref.batch_norm(x, running_mean, running_var, weight, bias, False, momentum, eps)
        x64 = np.asarray(x, dtype=np.float64)
        n, c = x64.shape[:2]
        b = n if whole else ghost_batch_size
        k = n // b
        order = np.arange(n).reshape(b, k).T.reshape(-1) if strided else np.arange(n)
        groups = x64[order].reshape((k, b) + x64.shape[1:])
        axes = (1,) + tuple(range(3, groups.ndim))
        mean, var = groups.mean(axis=axes, keepdims=True), groups.var(axis=axes, keepdims=True)
        y = np.empty_like(x64)
        y[order] = ((groups - mean) / np.sqrt(var + eps)).reshape(x64.shape)
        shape = (1, -1) + (1,) * (x64.ndim - 2)
        if weight is not None:
            y = y * np.reshape(weight, shape)
        if bias is not None:
            y = y + np.reshape(bias, shape)
        if running_mean is not None:
            count = groups[0].size // c if spatial_n else b
            factor = 1.0 if biased_running else count / max(count - 1, 1)
            means, variances = mean.reshape(k, c), var.reshape(k, c) * factor
            if stats_update == "average" or always_average:
                running_mean[...] = (1 - momentum) * running_mean + momentum * means.mean(0)
                running_var[...] = (1 - momentum) * running_var + momentum * variances.mean(0)
            else:
                for i in range(k):
                    running_mean[...] = (1 - momentum) * running_mean + momentum * means[i]
                    running_var[...] = (1 - momentum) * running_var + momentum * variances[i]
        return y.astype(np.asarray(x).dtype)
    ghost.__name__ = ("ghost_strided_groups" if strided else "ghost_whole_batch_statistics" if whole
                      else "ghost_biased_running_var" if biased_running else "ghost_n_without_spatial_axes"
                      if not spatial_n else "ghost_always_average_update")
    return ghost


def _renorm_with(*, clip_r=True, clip_d=True, update_first=False, running_variance=False, unbiased=False,
                 eval_as_variance=False):
    def renorm(x, running_mean, running_std, weight=None, bias=None, training=False, momentum=0.01, eps=1e-5,
               r_max=3.0, d_max=5.0):
        x64 = np.asarray(x, dtype=np.float64)
        shape = (1, -1) + (1,) * (x64.ndim - 2)
        if training:
            axes = (0,) + tuple(range(2, x64.ndim))
            mu = x64.mean(axis=axes)
            sigma = np.sqrt(x64.var(axis=axes, ddof=1 if unbiased else 0) + eps)
            if update_first:
                running_mean[...] += momentum * (mu - running_mean)
                running_std[...] += momentum * (sigma - running_std)
            r = sigma / running_std
            d = (mu - running_mean) / running_std
            r = np.clip(r, 1 / r_max, r_max) if clip_r else r
            d = np.clip(d, -d_max, d_max) if clip_d else d
            y = (x64 - mu.reshape(shape)) / sigma.reshape(shape) * r.reshape(shape) + d.reshape(shape)
            if not update_first:
                running_mean[...] += momentum * (mu - running_mean)
                new = sigma ** 2 if running_variance else sigma
                running_std[...] += momentum * (new - running_std)
        else:
            scale = np.sqrt(running_std + eps) if eval_as_variance else running_std
            y = (x64 - np.reshape(running_mean, shape)) / np.reshape(scale, shape)
        if weight is not None:
            y = y * np.reshape(weight, shape)
        if bias is not None:
            y = y + np.reshape(bias, shape)
        return y.astype(np.asarray(x).dtype)
    renorm.__name__ = ("renorm_r_not_clipped" if not clip_r else "renorm_d_not_clipped" if not clip_d
                       else "renorm_updates_before_r_and_d" if update_first else "renorm_running_variance"
                       if running_variance else "renorm_unbiased_batch_std" if unbiased
                       else "renorm_eval_treats_std_as_variance")
    return renorm


WRONG = {
    "fuse_linear_bn_weights": [_fuse_linear(scale_columns=True), _fuse_linear(eps_outside=True),
                               _fuse_linear(bias_unscaled=True), _fuse_linear(ignore_bias=True), _fuse_linear_float64_out],
    "fuse_conv_bn_weights": [_fuse_conv(transpose_ignored=True), _fuse_conv(eps_outside=True),
                             _fuse_conv(bias_unscaled=True), _fuse_conv(four_d=True)],
    "freeze_batch_norm": [_freeze_whole_model_eval, _freeze_mode_only, _freeze_children_only, _freeze_norm_base,
                          _freeze_any_norm_by_name],
    "evaluate": [_evaluate_no_grad_only, _evaluate_never_restores, _evaluate_batch_norm_only,
                 _evaluate_restores_model_mode],
    "ghost_batch_norm": [_ghost_with(strided=True), _ghost_with(whole=True), _ghost_with(biased_running=True),
                         _ghost_with(always_average=True), _ghost_with(spatial_n=False)],
    "batch_renorm": [_renorm_with(update_first=True), _renorm_with(running_variance=True), _renorm_with(unbiased=True),
                     _renorm_with(eval_as_variance=True), _renorm_with(clip_r=False), _renorm_with(clip_d=False)],
}
