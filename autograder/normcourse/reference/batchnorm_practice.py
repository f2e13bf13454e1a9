r"""BatchNorm as it is used in practice, in numpy: eval mode as an affine map, folding it into the
layer before it, ghost batches, synchronised statistics, Batch Renormalization and dropout's
variance shift.

Every function works in float64 and returns the input's float dtype (float64 for integer input), as
the forward passes in :mod:`normcourse.reference.forward` do. Where PyTorch has the same operation the
function has its name and argument order (``fuse_linear_bn_weights`` and ``fuse_conv_bn_weights`` from
``torch.nn.utils.fusion``); the tests check each one against PyTorch. Chapter 8 of the book uses them.

Notation: :math:`\hat\mu, \hat\sigma^2` are the running mean and (unbiased) running variance,
:math:`\gamma, \beta` the gain and bias, :math:`s = \sqrt{\hat\sigma^2 + \epsilon}`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import scopes
from ._checks import as_input, check_eps, check_param, output_dtype
from .forward import batch_norm

__all__ = ["batch_norm_affine", "fuse_linear_bn_weights", "fuse_conv_bn_weights", "ghost_batch_norm",
           "sync_batch_statistics", "sync_batch_norm", "batch_renorm_correction", "batch_renorm",
           "dropout_variance_ratio"]


def _stat(vec, name: str, c: int | None = None) -> np.ndarray:
    """A per-channel vector as float64, checked to be 1-d (and of length ``c`` when given)."""
    arr = as_input(vec, name).astype(np.float64)
    if arr.ndim != 1 or (c is not None and arr.shape[0] != c):
        want = f"({c},)" if c is not None else "(C,)"
        raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    return arr


def _channel_shape(ndim: int) -> tuple[int, ...]:
    return (1, -1) + (1,) * (ndim - 2)


def batch_norm_affine(running_mean, running_var, weight=None, bias=None, eps=1e-5):
    r"""Evaluation-mode BatchNorm written as the per-channel affine map it is: ``(scale, shift)``.

    .. math::
        \mathrm{BN}_{\text{eval}}(x) = \gamma\,\frac{x - \hat\mu}{\sqrt{\hat\sigma^2 + \epsilon}} + \beta
        = a \odot x + c, \qquad a = \frac{\gamma}{\sqrt{\hat\sigma^2 + \epsilon}}, \qquad
        c = \beta - a \odot \hat\mu

    In evaluation mode (and in a frozen BatchNorm during fine-tuning) nothing depends on the batch:
    the layer is this fixed map, one scale and one shift per channel, which is what
    ``torchvision.ops.FrozenBatchNorm2d`` stores and what folding (:func:`fuse_linear_bn_weights`)
    merges into the layer before it.

    Args:
        running_mean: :math:`\hat\mu`, shape ``(C,)``.
        running_var: :math:`\hat\sigma^2`, shape ``(C,)``, non-negative.
        weight: gain :math:`\gamma` of shape ``(C,)`` or None (ones). Default: None.
        bias: bias :math:`\beta` of shape ``(C,)`` or None (zeros). Default: None.
        eps: added to the variance inside the square root. Default: 1e-5.

    Shape:
        - Output: ``scale`` and ``shift``, both ``(C,)``, in ``running_mean``'s float dtype.

    Example:
        >>> scale, shift = batch_norm_affine(np.array([1.0]), np.array([4.0]), eps=1e-12)
        >>> np.round(scale, 6), np.round(shift, 6)
        (array([0.5]), array([-0.5]))

    Reference: Ioffe & Szegedy, "Batch Normalization", ICML 2015, Section 3.1 (inference is a linear
    transform per activation).
    """
    mean = _stat(running_mean, "running_mean")
    c = mean.shape[0]
    var = _stat(running_var, "running_var", c)
    if np.any(var < 0):
        raise ValueError(f"running_var must be non-negative, got {var.min()}")
    eps = check_eps(eps)
    w = check_param(weight, (c,), "weight")
    b = check_param(bias, (c,), "bias")
    scale = (np.ones(c) if w is None else w) / np.sqrt(var + eps)
    shift = (np.zeros(c) if b is None else b) - scale * mean
    out = output_dtype(np.asarray(running_mean))
    return scale.astype(out), shift.astype(out)


def fuse_conv_bn_weights(conv_w, conv_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b, transpose=False):
    r"""Fold an evaluation-mode BatchNorm into the convolution before it: new ``(weight, bias)``.

    With :math:`(a, c)` = :func:`batch_norm_affine` of the BatchNorm, for every output channel
    :math:`k`

    .. math::
        W'_k = a_k\, W_k, \qquad b'_k = a_k\,(b_k - \hat\mu_k) + \beta_k ,

    so that ``conv(x, W', b') == BN_eval(conv(x, W, b))`` for every input: a convolution is linear in
    its weight, and BatchNorm scales and shifts each output channel. A missing conv bias counts as
    zero; the fused layer always has a bias (it carries :math:`\beta - a\hat\mu`).

    Args:
        conv_w: convolution weight, ``(C_out, C_in/groups, *k)``; for a transposed convolution
            (``transpose=True``) ``(C_in, C_out/groups, *k)``.
        conv_b: convolution bias ``(C_out,)`` or None.
        bn_rm, bn_rv: BatchNorm running mean and variance, ``(C_out,)``.
        bn_eps: BatchNorm's :math:`\epsilon`.
        bn_w, bn_b: BatchNorm gain and bias ``(C_out,)``, or None (ones, zeros).
        transpose: the weight belongs to a ``ConvTranspose``; its output channels are axis 1 (with
            ``groups > 1`` that axis holds :math:`C_{out}/\text{groups}` channels, as in PyTorch,
            which this function then does not support). Default: False.

    Shape:
        - Output: weight of ``conv_w``'s shape and dtype, bias ``(C_out,)`` in ``conv_b``'s dtype
          (``conv_w``'s when ``conv_b`` is None).

    Example:
        >>> w, b = fuse_conv_bn_weights(np.ones((2, 1, 3, 3)), None, np.zeros(2), np.ones(2), 1e-12,
        ...                             np.array([2.0, 3.0]), np.array([0.5, 0.0]))
        >>> np.round(w[:, 0, 0, 0], 6), b
        (array([2., 3.]), array([0.5, 0. ]))

    Reference: PyTorch, ``torch.nn.utils.fusion.fuse_conv_bn_weights`` (same arguments and result).
    """
    w = as_input(conv_w, "conv_w", min_ndim=3)
    axis = 1 if transpose else 0
    c = w.shape[axis]
    scale, shift = (a.astype(np.float64) for a in batch_norm_affine(bn_rm, bn_rv, bn_w, bn_b, bn_eps))
    if scale.shape[0] != c:
        raise ValueError(f"the BatchNorm has {scale.shape[0]} channels but conv_w has {c} output channels "
                         f"(axis {axis} of shape {list(w.shape)})")
    b = None if conv_b is None else as_input(conv_b, "conv_b")
    b64 = np.zeros(c) if b is None else check_param(b, (c,), "conv_b")
    shape = [1] * w.ndim
    shape[axis] = -1
    fused_w = w.astype(np.float64) * scale.reshape(shape)
    fused_b = scale * b64 + shift
    return fused_w.astype(output_dtype(w)), fused_b.astype(output_dtype(w if b is None else b))


def fuse_linear_bn_weights(linear_w, linear_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b):
    r"""Fold an evaluation-mode BatchNorm into the linear layer before it: new ``(weight, bias)``.

    .. math::
        W' = \operatorname{diag}(a)\, W, \qquad b' = a \odot (b - \hat\mu) + \beta, \qquad
        a = \frac{\gamma}{\sqrt{\hat\sigma^2 + \epsilon}}

    so that :math:`W' x + b' = \mathrm{BN}_{\text{eval}}(W x + b)`: row :math:`k` of the weight
    (output unit :math:`k`) is scaled by :math:`a_k`. A missing linear bias counts as zero. This is
    :func:`fuse_conv_bn_weights` for a :math:`1\times1` "convolution" without spatial axes.

    Args:
        linear_w: weight ``(out_features, in_features)``.
        linear_b: bias ``(out_features,)`` or None.
        bn_rm, bn_rv: BatchNorm running mean and variance, ``(out_features,)``.
        bn_eps: BatchNorm's :math:`\epsilon`.
        bn_w, bn_b: BatchNorm gain and bias ``(out_features,)``, or None (ones, zeros; PyTorch's
            version requires both).

    Shape:
        - Output: weight ``(out_features, in_features)`` in ``linear_w``'s dtype, bias
          ``(out_features,)`` in ``linear_b``'s dtype (``linear_w``'s when it is None).

    Example:
        >>> w, b = fuse_linear_bn_weights(np.eye(2), np.array([1.0, 1.0]), np.array([1.0, 0.0]),
        ...                               np.array([1.0, 4.0]), 1e-12, None, None)
        >>> np.round(w, 6), np.round(b, 6)
        (array([[1. , 0. ],
               [0. , 0.5]]), array([0. , 0.5]))

    Reference: PyTorch, ``torch.nn.utils.fusion.fuse_linear_bn_weights`` (same arguments and result).
    """
    w = as_input(linear_w, "linear_w", min_ndim=2)
    if w.ndim != 2:
        raise ValueError(f"linear_w must have shape (out_features, in_features), got {list(w.shape)}")
    # A linear layer is a convolution with no spatial axes: fold it as one.
    fused_w, fused_b = fuse_conv_bn_weights(w[..., None], linear_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b)
    return fused_w[..., 0], fused_b


def _ghost_groups(x: np.ndarray, ghost_batch_size: int) -> np.ndarray:
    """``(N, C, *S)`` -> ``(k, b, C, *S)``: ``k`` consecutive groups of ``b`` samples."""
    b = int(ghost_batch_size)
    if b < 1 or b != ghost_batch_size:
        raise ValueError(f"ghost_batch_size must be a positive integer, got {ghost_batch_size!r}")
    n = x.shape[0]
    if n % b:
        raise ValueError(f"a batch of {n} samples cannot be split into ghost batches of {b} "
                         f"(ghost_batch_size must divide the batch size)")
    return x.reshape((n // b, b) + x.shape[1:])


def ghost_batch_norm(input, ghost_batch_size, running_mean=None, running_var=None, weight=None, bias=None,
                     training=True, momentum=0.1, eps=1e-5, stats_update="average"):
    r"""Ghost Batch Normalization: BatchNorm whose training statistics come from small groups.

    The batch of :math:`N = k b` samples is split into :math:`k` ghost batches of :math:`b` =
    ``ghost_batch_size`` *consecutive* samples, and in training each is normalized with its own
    per-channel mean and biased variance over :math:`(b, *S)`:

    .. math::
        y = \gamma\,\frac{x - \mu_{g}}{\sqrt{\sigma^2_{g} + \epsilon}} + \beta, \qquad x \in \text{ghost batch } g.

    This is what :math:`k` devices running BatchNorm on :math:`b` samples each, without
    synchronisation, compute. Running statistics, if given, are updated in place with PyTorch's
    convention (``momentum`` weighs the new value; the variance stored is unbiased), in one of two ways:

    - ``"average"``: once per call, with the average over ghost batches of their means and of their
      unbiased variances (as :class:`normcourse.lab.experiments.GhostBatchNorm2d` does);
    - ``"sequential"``: once per ghost batch, in order, exactly as calling
      :func:`~normcourse.reference.forward.batch_norm` on each ghost batch in turn (as
      ``torch.cat([bn(g) for g in x.split(b)])`` does with an ``nn.BatchNorm`` module).

    In evaluation mode it is plain BatchNorm with the running statistics. ``ghost_batch_size = N``
    is plain BatchNorm.

    Args:
        input: array ``(N, C, *S)``.
        ghost_batch_size: samples per statistic, :math:`b`; must divide :math:`N` in training.
        running_mean, running_var: ``(C,)`` float arrays updated in place, or None (training only).
            Default: None.
        weight, bias: ``(C,)`` or None. Default: None.
        training: use ghost-batch statistics. Default: True.
        momentum: weight of the new statistic in the running average. Default: 0.1.
        eps: added to the variance inside the square root. Default: 1e-5.
        stats_update: ``"average"`` or ``"sequential"`` (see above). Default: ``"average"``.

    Shape:
        - Input: :math:`(N, C, *S)`; output: same shape and float dtype.

    Raises:
        ValueError: ``ghost_batch_size`` does not divide :math:`N`; a ghost batch with one value per
            channel (:math:`b \prod S = 1`) in training; the errors of ``batch_norm``.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(8, 3))
        >>> y = ghost_batch_norm(x, 4)
        >>> np.allclose(y[:4].mean(axis=0), 0) and np.allclose(y[4:].mean(axis=0), 0)
        True

    Reference: Hoffer, Hubara & Soudry, "Train longer, generalize better: closing the generalization
    gap in large batch training of neural networks", NeurIPS 2017, Section 4 (Ghost Batch Normalization).
    """
    x = as_input(input, min_ndim=2)
    if not training:
        return batch_norm(x, running_mean, running_var, weight, bias, False, momentum, eps)
    if stats_update not in ("average", "sequential"):
        raise ValueError(f"stats_update must be 'average' or 'sequential', got {stats_update!r}")
    groups = _ghost_groups(x, ghost_batch_size)
    c = x.shape[1]
    if running_mean is not None or running_var is not None:
        for name, vec in (("running_mean", running_mean), ("running_var", running_var)):
            if vec is None or not isinstance(vec, np.ndarray) or vec.shape != (c,):
                raise ValueError(f"{name} must be a numpy array of shape ({c},) updated in place "
                                 f"(or both running statistics None)")
    if stats_update == "sequential":
        outputs = [batch_norm(g, running_mean, running_var, weight, bias, True, momentum, eps) for g in groups]
        return np.concatenate(outputs)
    outputs = np.stack([batch_norm(g, None, None, weight, bias, True, momentum, eps) for g in groups])
    if running_mean is not None:
        axes = tuple(a + 1 for a in scopes.channel_first_axes("batch_norm", x.ndim))
        g64 = groups.astype(np.float64)
        n = g64[0].size // c
        running_mean[...] = (1 - momentum) * running_mean + momentum * g64.mean(axis=axes).mean(axis=0)
        running_var[...] = ((1 - momentum) * running_var
                            + momentum * g64.var(axis=axes).mean(axis=0) * n / (n - 1))
    return outputs.reshape(x.shape)


def sync_batch_statistics(means, variances, counts):
    r"""Combine per-device BatchNorm statistics into the statistics of the whole batch (SyncBN's reduction).

    Device :math:`i` holds :math:`n_i` values of a channel with mean :math:`\mu_i` and biased variance
    :math:`\sigma_i^2`. The union of all devices' values has

    .. math::
        n = \sum_i n_i, \qquad \mu = \frac{1}{n}\sum_i n_i\,\mu_i, \qquad
        \sigma^2 = \frac{1}{n}\sum_i n_i\left(\sigma_i^2 + (\mu_i - \mu)^2\right),

    the within-device variance plus the between-device variance (the parallel form of Chan, Golub &
    LeVeque, which avoids the cancellation of :math:`\mathrm{E}[x^2] - \mu^2`). These are exactly the
    statistics BatchNorm would compute on the concatenated batch, which is what
    ``nn.SyncBatchNorm`` all-gathers and combines across processes.

    Args:
        means: ``(D, C)``, each device's per-channel mean.
        variances: ``(D, C)``, each device's per-channel *biased* variance.
        counts: ``(D,)``, values per channel on each device (:math:`N_i \prod S`); a device with 0
            values contributes nothing.

    Returns:
        ``(mean, var, count)``: mean and biased variance of shape ``(C,)`` (float64), and the total
        count :math:`n` (an int).

    Example:
        >>> a, b = np.array([[1.0], [2.0]]), np.array([[3.0], [5.0], [7.0]])
        >>> stats = [(g.mean(0), g.var(0), len(g)) for g in (a, b)]
        >>> mean, var, n = sync_batch_statistics(*map(np.array, zip(*stats)))
        >>> bool(np.isclose(mean[0], 3.6) and np.isclose(var[0], np.var([1, 2, 3, 5, 7]))), n
        (True, 5)

    Reference: Zhang et al., "Context Encoding for Semantic Segmentation", CVPR 2018 (cross-GPU
    BatchNorm); PyTorch, ``torch.nn.SyncBatchNorm``.
    """
    mu = as_input(means, "means", min_ndim=2).astype(np.float64)
    var = as_input(variances, "variances", min_ndim=2).astype(np.float64)
    n = as_input(counts, "counts").astype(np.float64)
    if mu.ndim != 2 or var.shape != mu.shape or n.shape != (mu.shape[0],):
        raise ValueError(f"means and variances must be (devices, channels) and counts (devices,), got "
                         f"{mu.shape}, {var.shape} and {n.shape}")
    if np.any(n < 0) or np.any(var < 0):
        raise ValueError("counts and variances must be non-negative")
    total = n.sum()
    if total < 1:
        raise ValueError("the devices hold no values at all")
    weights = (n / total)[:, None]
    mean = (weights * mu).sum(axis=0)
    variance = (weights * (var + np.square(mu - mean))).sum(axis=0)
    return mean, variance, int(round(total))


def sync_batch_norm(inputs, running_mean, running_var, weight=None, bias=None, training=True, momentum=0.1,
                    eps=1e-5):
    r"""Synchronised BatchNorm over a batch split across devices: a list of per-device outputs.

    In training each device computes its per-channel mean, biased variance and count, the statistics
    are combined with :func:`sync_batch_statistics`, and every device normalizes with the combined
    ones. The result is the same as :func:`~normcourse.reference.forward.batch_norm` on the
    concatenated batch, and so are the running statistics (updated once, in place, with the unbiased
    variance of the union). In evaluation mode each shard is normalized with the running statistics.

    Args:
        inputs: sequence of arrays ``(N_i, C, *S)``, one per device, equal in every axis but the first.
        running_mean, running_var: ``(C,)`` float arrays updated in place, or None (training only).
        weight, bias: ``(C,)`` or None. Default: None.
        training: use the combined batch statistics. Default: True.
        momentum, eps: as in ``batch_norm``. Defaults: 0.1, 1e-5.

    Shape:
        - Output: a list of arrays with the shapes and float dtypes of ``inputs``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> shards = [rng.normal(size=(2, 3, 4)), rng.normal(size=(5, 3, 4))]
        >>> ys = sync_batch_norm(shards, None, None)
        >>> np.allclose(np.concatenate(ys).mean(axis=(0, 2)), 0)
        True

    Reference: Zhang et al., "Context Encoding for Semantic Segmentation", CVPR 2018; PyTorch,
    ``torch.nn.SyncBatchNorm``.
    """
    if isinstance(inputs, np.ndarray) or not isinstance(inputs, Sequence) or len(inputs) == 0:
        raise TypeError("inputs must be a non-empty list of per-device arrays")
    shards = [as_input(x, f"inputs[{i}]", min_ndim=2) for i, x in enumerate(inputs)]
    if len({s.shape[1:] for s in shards}) != 1:
        raise ValueError(f"every device's input must agree in all axes but the first, got "
                         f"{[list(s.shape) for s in shards]}")
    if not training:
        return [batch_norm(s, running_mean, running_var, weight, bias, False, momentum, eps) for s in shards]
    axes = scopes.channel_first_axes("batch_norm", shards[0].ndim)
    c = shards[0].shape[1]
    stats = [(s.astype(np.float64).mean(axis=axes), s.astype(np.float64).var(axis=axes), s.size // c)
             for s in shards]
    mean, var, n = sync_batch_statistics(*(np.array(v) for v in zip(*stats)))
    if n <= 1:
        raise ValueError("Expected more than 1 value per channel when training, got "
                         f"{n} over all devices")
    eps = check_eps(eps)
    # Normalizing each shard with the union's statistics is eval-mode BatchNorm with those statistics.
    outputs = [batch_norm(s, mean, var, weight, bias, False, momentum, eps) for s in shards]
    if running_mean is not None:
        running_mean[...] = (1 - momentum) * running_mean + momentum * mean
    if running_var is not None:
        running_var[...] = (1 - momentum) * running_var + momentum * var * n / (n - 1)
    return outputs


def batch_renorm_correction(batch_mean, batch_std, running_mean, running_std, r_max=3.0, d_max=5.0):
    r"""Batch Renormalization's per-channel correction ``(r, d)``, clipped.

    .. math::
        r = \operatorname{clip}_{[1/r_{\max},\, r_{\max}]}\!\left(\frac{\sigma_B}{\hat\sigma}\right),
        \qquad
        d = \operatorname{clip}_{[-d_{\max},\, d_{\max}]}\!\left(\frac{\mu_B - \hat\mu}{\hat\sigma}\right)

    Unclipped, :math:`\frac{x - \mu_B}{\sigma_B}\,r + d = \frac{x - \hat\mu}{\hat\sigma}`: the
    batch-normalized value is mapped onto the value the running statistics give, so training computes
    what inference will. In the paper :math:`r` and :math:`d` are treated as constants by the gradient
    (``stop_gradient``). With ``r_max = 1, d_max = 0`` the correction is the identity (BatchNorm).

    Args:
        batch_mean: :math:`\mu_B`, shape ``(C,)``.
        batch_std: :math:`\sigma_B = \sqrt{\sigma_B^2 + \epsilon}`, shape ``(C,)``, positive.
        running_mean: :math:`\hat\mu`, shape ``(C,)``.
        running_std: :math:`\hat\sigma`, shape ``(C,)``, positive.
        r_max: :math:`\ge 1`. Default: 3.0.
        d_max: :math:`\ge 0`. Default: 5.0.

    Returns:
        ``(r, d)``, float64 arrays of shape ``(C,)``.

    Example:
        >>> r, d = batch_renorm_correction(np.array([2.0]), np.array([8.0]), np.array([0.0]), np.array([1.0]))
        >>> r, d
        (array([3.]), array([2.]))

    Reference: Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in
    Batch-Normalized Models", NeurIPS 2017, Algorithm 1.
    """
    mu_b = _stat(batch_mean, "batch_mean")
    c = mu_b.shape[0]
    sd_b = _stat(batch_std, "batch_std", c)
    mu = _stat(running_mean, "running_mean", c)
    sd = _stat(running_std, "running_std", c)
    if np.any(sd_b <= 0) or np.any(sd <= 0):
        raise ValueError("batch_std and running_std must be positive (they include eps)")
    if r_max < 1 or d_max < 0:
        raise ValueError(f"need r_max >= 1 and d_max >= 0, got r_max={r_max}, d_max={d_max}")
    r = np.clip(sd_b / sd, 1.0 / r_max, r_max)
    d = np.clip((mu_b - mu) / sd, -d_max, d_max)
    return r, d


def batch_renorm(input, running_mean, running_std, weight=None, bias=None, training=False, momentum=0.01,
                 eps=1e-5, r_max=3.0, d_max=5.0):
    r"""Batch Renormalization (Ioffe 2017): BatchNorm corrected toward its running statistics.

    Training, per channel, with :math:`\mu_B` and :math:`\sigma_B = \sqrt{\sigma_B^2 + \epsilon}` from
    the batch (biased variance) and :math:`(r, d)` from :func:`batch_renorm_correction`:

    .. math::
        y = \gamma\left(\frac{x - \mu_B}{\sigma_B}\, r + d\right) + \beta, \qquad
        \hat\mu \leftarrow \hat\mu + m\,(\mu_B - \hat\mu), \qquad
        \hat\sigma \leftarrow \hat\sigma + m\,(\sigma_B - \hat\sigma),

    the running values updated in place *after* :math:`r, d` are computed. Evaluation:
    :math:`y = \gamma\,(x - \hat\mu)/\hat\sigma + \beta`. Following the paper, the running state is a
    mean and a *standard deviation* (which already contains :math:`\epsilon`), not PyTorch's running
    variance; start them at 0 and 1. With ``r_max = 1`` and ``d_max = 0`` the training output is
    BatchNorm's.

    Args:
        input: array ``(N, C, *S)``.
        running_mean: :math:`\hat\mu`, float array ``(C,)``, updated in place in training.
        running_std: :math:`\hat\sigma`, float array ``(C,)``, positive, updated in place in training.
        weight, bias: ``(C,)`` or None. Default: None.
        training: use batch statistics corrected by ``(r, d)``. Default: False.
        momentum: the update rate :math:`m` (the paper's :math:`\alpha`). Default: 0.01.
        eps: added to the batch variance inside the square root. Default: 1e-5.
        r_max, d_max: the clipping limits. Defaults: 3.0, 5.0.

    Shape:
        - Input: :math:`(N, C, *S)`; output: same shape and float dtype.

    Example:
        >>> x = np.random.default_rng(0).normal(3.0, 2.0, size=(16, 2))
        >>> rm, rs = np.zeros(2), np.ones(2)
        >>> y = batch_renorm(x, rm, rs, training=True, r_max=1.0, d_max=0.0)   # plain BatchNorm
        >>> np.allclose(y.mean(axis=0), 0)
        True

    Reference: Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in
    Batch-Normalized Models", NeurIPS 2017, Algorithm 1 (training) and Section 3 (inference).
    """
    x = as_input(input, min_ndim=2)
    eps = check_eps(eps)
    c = x.shape[1]
    for name, vec in (("running_mean", running_mean), ("running_std", running_std)):
        if not isinstance(vec, np.ndarray) or vec.shape != (c,):
            raise ValueError(f"{name} must be a numpy array of shape ({c},)")
    w = check_param(weight, (c,), "weight")
    b = check_param(bias, (c,), "bias")
    shape = _channel_shape(x.ndim)
    x64 = x.astype(np.float64)
    if training:
        axes = scopes.channel_first_axes("batch_norm", x.ndim)
        if x.size // c <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                             f"{list(x.shape)}")
        mu_b = x64.mean(axis=axes)
        sd_b = np.sqrt(x64.var(axis=axes) + eps)
        r, d = batch_renorm_correction(mu_b, sd_b, running_mean, running_std, r_max, d_max)
        x_hat = (x64 - mu_b.reshape(shape)) / sd_b.reshape(shape) * r.reshape(shape) + d.reshape(shape)
        running_mean[...] = running_mean + momentum * (mu_b - running_mean)
        running_std[...] = running_std + momentum * (sd_b - running_std)
    else:
        sd = _stat(running_std, "running_std", c)
        if np.any(sd <= 0):
            raise ValueError("running_std must be positive")
        x_hat = (x64 - _stat(running_mean, "running_mean", c).reshape(shape)) / sd.reshape(shape)
    if w is not None:
        x_hat = x_hat * w.reshape(shape)
    if b is not None:
        x_hat = x_hat + b.reshape(shape)
    return x_hat.astype(output_dtype(x))


def dropout_variance_ratio(p, mean=0.0, var=1.0):
    r"""Variance shift of inverted dropout: test-time variance over train-time variance of one unit.

    A unit :math:`x` with mean :math:`c` and variance :math:`v` passes through dropout with drop
    probability :math:`p` (PyTorch's convention: kept with probability :math:`1-p` and scaled by
    :math:`1/(1-p)` in training, the identity at test time). The mean is the same in both modes; the
    variance is not:

    .. math::
        \mathrm{Var}_{\text{train}} = \frac{c^2 + v}{1 - p} - c^2, \qquad
        \mathrm{Var}_{\text{test}} = v, \qquad
        \text{ratio} = \frac{v}{\frac{c^2 + v}{1-p} - c^2} \le 1 .

    A BatchNorm right after dropout stores running variances from training, so at test time it
    divides by a standard deviation that is too large by :math:`1/\sqrt{\text{ratio}}`; for a
    zero-mean unit the ratio is :math:`1 - p`.

    Args:
        p: drop probability in ``[0, 1)`` (scalar or array).
        mean: :math:`c`, the unit's mean. Default: 0.0.
        var: :math:`v > 0`, the unit's variance. Default: 1.0.

    Returns:
        the ratio, float64 (an array if any argument is one).

    Example:
        >>> float(dropout_variance_ratio(0.5))
        0.5

    Reference: Li, Chen, Hu & Yang, "Understanding the Disharmony between Dropout and Batch
    Normalization by Variance Shift", CVPR 2019 (papers differ on whether :math:`p` is the drop
    or the keep probability; here it is the drop probability, as in ``torch.nn.Dropout``).
    """
    p = np.asarray(p, dtype=np.float64)
    c = np.asarray(mean, dtype=np.float64)
    v = np.asarray(var, dtype=np.float64)
    if np.any((p < 0) | (p >= 1)) or not np.all(np.isfinite(p)):
        raise ValueError(f"p must be in [0, 1), got {p}")
    if np.any(v <= 0) or not np.all(np.isfinite(v)) or not np.all(np.isfinite(c)):
        raise ValueError("var must be positive and mean and var finite")
    ratio = v / ((c * c + v) / (1.0 - p) - c * c)
    return ratio if ratio.ndim else np.float64(ratio)
