r"""Training without normalization layers: the pieces that replace them, in numpy.

* :func:`weight_standardization` -- Qiao et al.'s Weight Standardization: normalize each output
  unit's weights, not the activations;
* :func:`scaled_weight_standardization` and :data:`RELU_GAMMA` -- the NF-ResNet/NFNet variant with the
  fan-in scaling, a learnable gain and the nonlinearity's gain :math:`\gamma`;
* :func:`unitwise_norm`, :func:`agc_ratio` and :func:`adaptive_clip_grad` -- NFNets' adaptive gradient
  clipping (AGC), unit by unit;
* :func:`dynamic_tanh` and :func:`dynamic_tanh_backward` -- Dynamic Tanh, the elementwise stand-in for
  LayerNorm of "Transformers without normalization";
* :func:`residual_stream_variance` -- the variance of a residual stream at initialization, block by
  block, for a normalized or an unnormalized branch (De & Smith's argument).

Layout: weights follow PyTorch, output units first: ``(out_features, in_features)`` for a linear
layer and ``(out_channels, in_channels/groups, kH, kW)`` for a convolution. "Unit :math:`i`" is the
slice ``W[i]``; its fan-in :math:`N` is the number of elements of that slice. Arithmetic is done in
float64 and results come back in the input's float dtype, as in :mod:`normcourse.reference.forward`.
"""

from __future__ import annotations

import numpy as np

from ._checks import as_input, check_eps, output_dtype

__all__ = ["RELU_GAMMA", "weight_standardization", "scaled_weight_standardization", "unitwise_norm", "agc_ratio",
           "adaptive_clip_grad", "dynamic_tanh", "dynamic_tanh_backward", "residual_stream_variance"]

#: :math:`\gamma` for ReLU in scaled Weight Standardization: :math:`\sqrt{2/(1 - 1/\pi)} \approx 1.7139`.
#: For :math:`z \sim \mathcal N(0, 1)`, :math:`\mathrm{Var}[\mathrm{ReLU}(z)] = \frac12(1 - \frac1\pi)`, so
#: :math:`\gamma\,\mathrm{ReLU}(z)` has unit variance (Brock, De & Smith 2021, NF-ResNets).
RELU_GAMMA = float(np.sqrt(2.0 / (1.0 - 1.0 / np.pi)))


def _weight(weight, name: str = "weight") -> np.ndarray:
    w = as_input(weight, name, min_ndim=2)
    if w.shape[0] == 0 or w[0].size == 0:
        raise ValueError(f"{name} must have at least one output unit and one input per unit, got shape "
                         f"{list(w.shape)}")
    return w


def _unit_axes(ndim: int) -> tuple[int, ...]:
    """Axes one output unit spans: every axis but the first (all axes for a scalar or a vector)."""
    return tuple(range(1, ndim)) if ndim >= 2 else tuple(range(ndim))


def weight_standardization(weight, eps: float = 1e-5) -> np.ndarray:
    r"""Weight Standardization: zero mean and unit variance over each output unit's weights.

    .. math::
        \hat W_{i,\cdot} = \frac{W_{i,\cdot} - \mu_i}{\sqrt{\sigma_i^2 + \epsilon}}, \qquad
        \mu_i = \frac1N\sum_j W_{ij}, \quad \sigma_i^2 = \frac1N\sum_j (W_{ij} - \mu_i)^2

    where :math:`j` runs over the :math:`N` weights of unit :math:`i` (``in_features``, or
    ``in_channels/groups * kH * kW``). This is LayerNorm applied to each row of the weight
    reshaped to ``(out, N)``: the layer computes :math:`\hat W x`, and the standardized weight, not
    the raw one, meets the data. The variance is the biased one and :math:`\epsilon` sits inside the
    square root, as in the paper's equation; the code the authors released divides by the *unbiased*
    standard deviation plus ``1e-5`` (the same pitfall as a LayerNorm with ``std() + eps``).

    Args:
        weight: array of shape ``(out, *)`` with at least two dimensions.
        eps: added to the variance inside the square root. Default: 1e-5.

    Shape:
        - Input: :math:`(O, *)`. Output: same shape and float dtype.

    Example:
        >>> w = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 3, 3, 3))
        >>> w_hat = weight_standardization(w)
        >>> np.allclose(w_hat.mean(axis=(1, 2, 3)), 0), np.allclose(w_hat.var(axis=(1, 2, 3)), 1, atol=1e-5)
        (True, True)

    Reference: Qiao, Wang, Liu, Shen & Yuille, "Micro-Batch Training with Batch-Channel Normalization
    and Weight Standardization", arXiv:1903.10520, 2019 (Weight Standardization, their Eq. 5-7).
    """
    w = _weight(weight)
    eps = check_eps(eps)
    axes = _unit_axes(w.ndim)
    w64 = w.astype(np.float64)
    centered = w64 - w64.mean(axis=axes, keepdims=True)
    var = np.mean(np.square(centered), axis=axes, keepdims=True)
    return (centered / np.sqrt(var + eps)).astype(output_dtype(w))


def scaled_weight_standardization(weight, gain=None, gamma: float = 1.0, eps: float = 1e-4) -> np.ndarray:
    r"""Scaled Weight Standardization (NF-ResNets, NFNets): WS divided by :math:`\sqrt N`, times gains.

    .. math::
        \hat W_{i,\cdot} = g_i\,\gamma\,\frac{W_{i,\cdot} - \mu_i}{\sqrt{\max(N\sigma_i^2,\ \epsilon)}}

    with :math:`\mu_i, \sigma_i^2` the mean and biased variance of unit :math:`i`'s :math:`N` weights
    (its fan-in), :math:`g_i` a learnable gain (initialized to 1) and :math:`\gamma` a fixed constant
    chosen for the nonlinearity that follows (:data:`RELU_GAMMA` for ReLU). Away from the clamp,
    :math:`\sum_j \hat W_{ij}^2 = (g_i\gamma)^2` and :math:`\sum_j \hat W_{ij} = 0`: a unit maps
    inputs with independent entries of variance :math:`v` to an output of variance
    :math:`(g_i\gamma)^2 v`, and a mean shared by the inputs cancels. The :math:`\max(\cdot,\epsilon)`
    follows the authors' code (``rsqrt(maximum(var * fan_in, eps))``, ``eps = 1e-4``); it only
    matters for a nearly constant unit.

    Args:
        weight: array of shape ``(out, *)`` with at least two dimensions.
        gain: per-unit gain :math:`g` of shape ``(out,)`` or None (all ones). Default: None.
        gamma: the nonlinearity's gain :math:`\gamma`. Default: 1.0.
        eps: lower bound on :math:`N\sigma_i^2`. Default: 1e-4.

    Shape:
        - Input: :math:`(O, *)`; gain :math:`(O,)`. Output: same shape and float dtype as ``weight``.

    Example:
        >>> w = np.random.default_rng(0).normal(size=(8, 16))
        >>> w_hat = scaled_weight_standardization(w, gamma=RELU_GAMMA)
        >>> np.allclose((w_hat**2).sum(axis=1), RELU_GAMMA**2)
        True

    Reference: Brock, De & Smith, "Characterizing signal propagation to close the performance gap in
    unnormalized ResNets", ICLR 2021; Brock, De, Smith & Simonyan, "High-Performance Large-Scale
    Image Recognition Without Normalization", ICML 2021.
    """
    w = _weight(weight)
    eps = check_eps(eps)
    axes = _unit_axes(w.ndim)
    w64 = w.astype(np.float64)
    fan_in = w[0].size
    centered = w64 - w64.mean(axis=axes, keepdims=True)
    var = np.mean(np.square(centered), axis=axes, keepdims=True)
    scale = float(gamma) / np.sqrt(np.maximum(fan_in * var, eps))
    if gain is not None:
        g = as_input(gain, "gain").astype(np.float64)
        if g.shape != (w.shape[0],):
            raise ValueError(f"gain must have shape ({w.shape[0]},), one entry per output unit of weight "
                             f"shape {list(w.shape)}, got {g.shape}")
        scale = scale * g.reshape((-1,) + (1,) * (w.ndim - 1))
    return (centered * scale).astype(output_dtype(w))


def unitwise_norm(x) -> np.ndarray:
    r"""The Frobenius norm of each output unit: :math:`\|X_i\|_F` over every axis but the first.

    .. math::
        \|X_i\|_F = \Big(\sum_{j} X_{ij\ldots}^2\Big)^{1/2}

    For a weight (or its gradient) of shape ``(out, *)`` the result has shape ``(out, 1, ..., 1)``,
    ready to broadcast against ``x``. A vector (a bias, a gain) or a scalar counts as a single unit:
    its norm comes back with shape ``(1,)`` or ``()``. This is the unit AGC clips (in PyTorch's
    layout; the NFNets code, in JAX's ``(..., in, out)`` layout, reduces over every axis but the last).

    Args:
        x: array of any shape.

    Shape:
        - Input: :math:`(O, *)` with at least 2 dims -> :math:`(O, 1, \ldots, 1)`; :math:`(C,)` ->
          :math:`(1,)`; :math:`()` -> :math:`()`. In the input's float dtype (float64 for integers).

    Example:
        >>> unitwise_norm(np.array([[3.0, 4.0], [0.0, 1.0]]))
        array([[5.],
               [1.]])

    Reference: Brock, De, Smith & Simonyan, "High-Performance Large-Scale Image Recognition Without
    Normalization", ICML 2021, Section 4.1.
    """
    a = as_input(x, "x", min_ndim=0)
    norms = np.sqrt(np.sum(np.square(a.astype(np.float64)), axis=_unit_axes(a.ndim), keepdims=True))
    return norms.astype(output_dtype(a))


def _grad_and_weight(grad, weight) -> tuple[np.ndarray, np.ndarray]:
    g = as_input(grad, "grad", min_ndim=0)
    w = as_input(weight, "weight", min_ndim=0)
    if g.shape != w.shape:
        raise ValueError(f"grad must have the shape of weight {list(w.shape)} (it is dL/dW), got {list(g.shape)}")
    return g, w


def agc_ratio(grad, weight, eps: float = 1e-3) -> np.ndarray:
    r"""AGC's unit-wise ratio of gradient norm to weight norm.

    .. math::
        r_i = \frac{\|G_i\|_F}{\max(\|W_i\|_F,\ \epsilon)}

    One SGD step changes unit :math:`i` by :math:`\eta G_i`, so :math:`\eta r_i` is the relative size
    of that change (for :math:`\|W_i\| \ge \epsilon`). The floor :math:`\epsilon` keeps the ratio
    finite for zero-initialized units (a zero-initialized gain or last layer), which would otherwise
    never be allowed to move. Units are those of :func:`unitwise_norm`.

    Args:
        grad: gradient :math:`G = \partial L/\partial W`, same shape as ``weight``.
        weight: the parameter :math:`W`.
        eps: floor on the weight norm. Default: 1e-3.

    Shape:
        - Output: the shape :func:`unitwise_norm` gives for ``weight``, in ``grad``'s float dtype.

    Example:
        >>> agc_ratio(np.array([[0.3, 0.4], [0.0, 0.0]]), np.array([[3.0, 4.0], [0.0, 0.0]]))
        array([[0.1],
               [0. ]])

    Reference: Brock, De, Smith & Simonyan, ICML 2021, Section 4.1.
    """
    g, w = _grad_and_weight(grad, weight)
    eps = check_eps(eps)
    ratio = unitwise_norm(g.astype(np.float64)) / np.maximum(unitwise_norm(w.astype(np.float64)), eps)
    return ratio.astype(output_dtype(g))


def adaptive_clip_grad(grad, weight, clipping: float = 0.01, eps: float = 1e-3) -> np.ndarray:
    r"""Unit-wise adaptive gradient clipping (AGC) of NFNets.

    .. math::
        G_i \leftarrow \begin{cases}
            \lambda\,\dfrac{\max(\|W_i\|_F, \epsilon)}{\|G_i\|_F}\,G_i & \text{if } \dfrac{\|G_i\|_F}{\max(\|W_i\|_F, \epsilon)} > \lambda \\[1ex]
            G_i & \text{otherwise}
        \end{cases}

    A unit whose ratio (:func:`agc_ratio`) exceeds the clipping threshold :math:`\lambda` has its
    gradient rescaled to norm exactly :math:`\lambda\max(\|W_i\|, \epsilon)`, keeping its direction;
    the other units are untouched. Unlike clipping the global gradient norm, the threshold adapts to
    each unit's own weight norm. A zero gradient is never clipped (no division by zero happens: a
    clipped unit has :math:`\|G_i\| > \lambda\epsilon > 0`). The paper does not clip the final
    linear layer; which parameters to clip is the caller's choice.

    Args:
        grad: gradient :math:`G`, same shape as ``weight``.
        weight: the parameter :math:`W` (read only).
        clipping: the threshold :math:`\lambda > 0`. Default: 0.01 (the paper's value at batch size 4096;
            smaller batches tolerate larger values).
        eps: floor on the weight norm. Default: 1e-3.

    Shape:
        - Input: any shape (units as in :func:`unitwise_norm`). Output: shape and float dtype of ``grad``.

    Example:
        >>> w, g = np.array([[3.0, 4.0], [1.0, 0.0]]), np.array([[0.3, 0.4], [0.001, 0.0]])
        >>> adaptive_clip_grad(g, w, clipping=0.05)       # unit 0: ratio 0.1 > 0.05, halved
        array([[0.15 , 0.2  ],
               [0.001, 0.   ]])

    Reference: Brock, De, Smith & Simonyan, "High-Performance Large-Scale Image Recognition Without
    Normalization", ICML 2021, Section 4.1, Eq. (3).
    """
    g, w = _grad_and_weight(grad, weight)
    eps = check_eps(eps)
    clipping = float(clipping)
    if not np.isfinite(clipping) or clipping <= 0:
        raise ValueError(f"clipping must be a positive finite number, got {clipping!r}")
    g64 = g.astype(np.float64)
    max_norm = clipping * np.maximum(unitwise_norm(w.astype(np.float64)), eps)
    g_norm = unitwise_norm(g64)
    clip = g_norm > max_norm
    scale = np.where(clip, max_norm / np.where(clip, g_norm, 1.0), 1.0)
    return (g64 * scale).astype(output_dtype(g))


def _dyt_params(x: np.ndarray, alpha, weight, bias):
    a = as_input(alpha, "alpha", min_ndim=0)
    if a.size != 1:
        raise ValueError(f"alpha is one learnable scalar, got shape {list(a.shape)}")
    params = []
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            params.append(None)
            continue
        arr = as_input(p, name).astype(np.float64)
        if arr.ndim > x.ndim or x.shape[x.ndim - arr.ndim:] != arr.shape:
            raise ValueError(f"{name} of shape {list(arr.shape)} must match the trailing dimensions of the "
                             f"input, which has shape {list(x.shape)}")
        params.append(arr)
    if params[0] is not None and params[1] is not None and params[0].shape != params[1].shape:
        raise ValueError(f"weight and bias must have the same shape, got {list(params[0].shape)} and "
                         f"{list(params[1].shape)}")
    return float(a.reshape(())), params[0], params[1]


def dynamic_tanh(input, alpha, weight=None, bias=None) -> np.ndarray:
    r"""Dynamic Tanh (DyT), an elementwise replacement for LayerNorm.

    .. math::
        \mathrm{DyT}(x) = \gamma \odot \tanh(\alpha x) + \beta

    with one learnable scalar :math:`\alpha` (initialized to 0.5 by default in the paper) and
    per-channel :math:`\gamma, \beta` (initialized to 1 and 0) over the trailing dimensions, as
    LayerNorm's gain and bias. No statistic is computed: each element is squashed on its own, so
    outliers are bounded by :math:`|\gamma|` as LayerNorm bounds them, but the output depends on the
    input's scale, which LayerNorm divides out.

    Args:
        input: array of shape ``(*, *normalized_shape)``.
        alpha: the scalar :math:`\alpha` (a float or an array with one element).
        weight: :math:`\gamma`, shape ``normalized_shape`` (the trailing dimensions), or None. Default: None.
        bias: :math:`\beta`, same shape as ``weight``, or None. Default: None.

    Shape:
        - Input: :math:`(*, \text{normalized\_shape})`. Output: same shape and float dtype.

    Example:
        >>> x = np.array([[-100.0, 0.0, 1.0]])
        >>> np.round(dynamic_tanh(x, 0.5, np.ones(3), np.zeros(3)), 4)
        array([[-1.    ,  0.    ,  0.4621]])

    Reference: Zhu, Chen, He, LeCun & Liu, "Transformers without Normalization", CVPR 2025.
    """
    x = as_input(input)
    a, w, b = _dyt_params(x, alpha, weight, bias)
    y = np.tanh(a * x.astype(np.float64))
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y.astype(output_dtype(x))


def dynamic_tanh_backward(dy, input, alpha, weight=None, bias=None):
    r"""Gradients of :func:`dynamic_tanh` (no autograd).

    With :math:`t = \tanh(\alpha x)` and :math:`\frac{d}{du}\tanh u = 1 - \tanh^2 u`:

    .. math::
        \frac{\partial L}{\partial x} = dy \odot \gamma \odot \alpha(1 - t^2), \qquad
        \frac{\partial L}{\partial \alpha} = \sum dy \odot \gamma \odot x(1 - t^2), \qquad
        \frac{\partial L}{\partial \gamma} = \sum_{\text{leading}} dy \odot t, \qquad
        \frac{\partial L}{\partial \beta} = \sum_{\text{leading}} dy

    The Jacobian with respect to :math:`x` is diagonal: no element's gradient depends on another's,
    unlike LayerNorm's (chapter 5).

    Args:
        dy: upstream gradient, same shape as ``input``.
        input, alpha, weight, bias: as in the forward (``bias`` only decides whether ``dbias`` is returned).

    Returns:
        ``(dx, dalpha, dweight, dbias)``: ``dx`` has the input's shape; ``dalpha`` has ``alpha``'s shape;
        ``dweight``/``dbias`` have the shape of ``weight``/``bias`` and are None when those are None.
        All in the input's float dtype.

    Example:
        >>> x, dy = np.array([[0.0, 2.0]]), np.ones((1, 2))
        >>> dx, da, dw, db = dynamic_tanh_backward(dy, x, 0.5, np.ones(2), np.zeros(2))
        >>> np.round(dx, 3), np.round(da, 3), db
        (array([[0.5 , 0.21]]), np.float64(0.84), array([1., 1.]))

    Reference: Zhu, Chen, He, LeCun & Liu, "Transformers without Normalization", CVPR 2025.
    """
    x = as_input(input)
    a, w, b = _dyt_params(x, alpha, weight, bias)
    g = as_input(dy, "dy", min_ndim=0)
    if g.shape != x.shape:
        raise ValueError(f"dy must have the shape of the input {list(x.shape)}, got {list(g.shape)}")
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    t = np.tanh(a * x64)
    slope = 1.0 - t * t
    g_gamma = g64 * w if w is not None else g64
    out = output_dtype(x)
    dx = (g_gamma * a * slope).astype(out)
    dalpha = np.asarray(np.sum(g_gamma * x64 * slope), dtype=out).reshape(np.shape(alpha))
    leading = tuple(range(x.ndim - (w.ndim if w is not None else 0)))
    dweight = (g64 * t).sum(axis=leading).astype(out) if w is not None else None
    leading_b = tuple(range(x.ndim - (b.ndim if b is not None else 0)))
    dbias = g64.sum(axis=leading_b).astype(out) if b is not None else None
    return dx, dalpha, dweight, dbias


def residual_stream_variance(depth: int, branch: str = "plain", alpha: float = 1.0,
                             input_variance: float = 1.0) -> np.ndarray:
    r"""Variance of the residual stream :math:`x_l = x_{l-1} + \alpha f_l(x_{l-1})` at initialization.

    Assume each branch output is uncorrelated with its input (true in expectation over random weights)
    and either

    - ``"plain"``: variance-preserving and positively homogeneous, :math:`\mathrm{Var} f(x) = \mathrm{Var}\,x`
      (ReLU branches with He initialization, no normalization), so

      .. math:: v_l = (1 + \alpha^2)\,v_{l-1} = (1+\alpha^2)^l v_0 \quad\text{(exponential growth)};

    - ``"normalized"``: of unit variance whatever its input's scale (a normalization in the branch, or
      an NF-ResNet branch that sees :math:`x/\beta` with :math:`\beta = \sqrt{v_{l-1}}`), so

      .. math:: v_l = v_{l-1} + \alpha^2 = v_0 + l\,\alpha^2 \quad\text{(linear growth)}.

    In the normalized case branch :math:`l` contributes a share :math:`\alpha^2/v_l` of
    :math:`x_l`'s variance, about :math:`1/l` for :math:`\alpha = 1`: deep blocks start close to
    the identity (De & Smith 2020). ``alpha = 0`` (SkipInit) keeps :math:`v_l = v_0`.

    Args:
        depth: number of residual blocks :math:`L \ge 0`.
        branch: ``"plain"`` or ``"normalized"``. Default: ``"plain"``.
        alpha: the branch multiplier :math:`\alpha`. Default: 1.0.
        input_variance: :math:`v_0`. Default: 1.0.

    Returns:
        float64 array of shape ``(depth + 1,)``: :math:`v_0, v_1, \dots, v_L`.

    Example:
        >>> residual_stream_variance(3, "plain"), residual_stream_variance(3, "normalized")
        (array([1., 2., 4., 8.]), array([1., 2., 3., 4.]))

    Reference: De & Smith, "Batch Normalization Biases Residual Blocks Towards the Identity Function in
    Deep Networks", NeurIPS 2020; Brock, De & Smith, ICLR 2021 (NF-ResNets).
    """
    depth = int(depth)
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    if branch not in ("plain", "normalized"):
        raise ValueError(f"branch must be 'plain' or 'normalized', got {branch!r}")
    if not input_variance >= 0:
        raise ValueError(f"input_variance must be >= 0, got {input_variance!r}")
    blocks = np.arange(depth + 1, dtype=np.float64)
    a2 = float(alpha) ** 2
    if branch == "plain":
        return input_variance * (1.0 + a2) ** blocks
    return input_variance + a2 * blocks
