r"""Residual networks with and without normalization layers (torch), and chapter 9's experiments.

Two kinds of objects live here.

**Layers one can drop into any model** (single model, PyTorch layout), each the torch twin of a
function in :mod:`normcourse.reference.normalization_free` and tested against it:

- :class:`WSLinear`, :class:`WSConv2d` -- Weight Standardization (Qiao et al. 2019);
- :class:`ScaledWSLinear`, :class:`ScaledWSConv2d` -- scaled WS with gain (NF-ResNets, NFNets);
- :class:`DynamicTanh` and :func:`replace_layer_norms` -- DyT in place of LayerNorm (Zhu et al. 2025);
- :class:`SkipInit` -- a residual connection whose branch is multiplied by a learnable scalar that
  starts at zero (De & Smith 2020);
- :func:`adaptive_clip_grad_` -- unit-wise adaptive gradient clipping, in place on ``.grad`` (NFNets).

**The chapter's residual MLPs, several seeds at once.** :class:`ResidualMLP` holds one independent
network per seed: every parameter has a leading seed axis, linear maps are batched matrix products,
and a normalization never mixes seeds. Training five seeds costs about as much as training one (the
networks are tiny, so the time goes into per-operation overhead), which is what makes a five-seed
comparison affordable in a chapter that must execute in 30 seconds. :func:`train_seeds` trains one,
:func:`stream_statistics` measures its residual stream at initialization, and
:func:`layer_norm_input_scales` / :func:`norm_output_rms` probe DyT against LayerNorm in a tiny
Transformer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..reference.normalization_free import RELU_GAMMA
from .models import DigitsData, load_digits_tensors

__all__ = ["weight_standardization", "scaled_weight_standardization", "unitwise_norm", "adaptive_clip_grad",
           "WSLinear", "WSConv2d", "ScaledWSLinear", "ScaledWSConv2d", "DynamicTanh", "replace_layer_norms",
           "SkipInit", "adaptive_clip_grad_", "VARIANTS", "ResidualMLP", "SeedRuns", "train_seeds",
           "Sweep", "sweep", "stream_statistics", "norm_output_rms"]


# ------------------------------------------------------------------------------------------------
# Functional pieces (torch twins of the numpy reference)
# ------------------------------------------------------------------------------------------------
def _unit_dims(ndim: int, batch_dims: int) -> tuple[int, ...]:
    """Dimensions of one unit of a tensor with ``batch_dims`` leading seed axes."""
    first = batch_dims + 1 if ndim - batch_dims >= 2 else batch_dims
    return tuple(range(first, ndim))


def weight_standardization(weight: torch.Tensor, eps: float = 1e-5, batch_dims: int = 0) -> torch.Tensor:
    r"""Weight Standardization, :math:`(W_i - \mu_i)/\sqrt{\sigma_i^2 + \epsilon}` per output unit.

    The torch twin of :func:`normcourse.reference.weight_standardization` (differentiable). With
    ``batch_dims = k`` the first ``k`` axes index independent models and unit :math:`i` is
    ``weight[..., i, :]`` after them.

    Args:
        weight: tensor of shape ``(*batch, out, *)`` with at least two non-batch dimensions.
        eps: added to the biased variance inside the square root. Default: 1e-5.
        batch_dims: number of leading axes that index separate models. Default: 0.

    Shape:
        - Output: same shape as ``weight``.

    Reference: Qiao et al., "Micro-Batch Training with Batch-Channel Normalization and Weight
    Standardization", arXiv:1903.10520, 2019.
    """
    dims = _unit_dims(weight.dim(), batch_dims)
    centered = weight - weight.mean(dim=dims, keepdim=True)      # (torch.var_mean is slow on CPU for
    var = (centered * centered).mean(dim=dims, keepdim=True)     # many short rows)
    return centered * torch.rsqrt(var + eps)


def scaled_weight_standardization(weight: torch.Tensor, gain: torch.Tensor | None = None, gamma: float = 1.0,
                                  eps: float = 1e-4, batch_dims: int = 0) -> torch.Tensor:
    r"""Scaled WS, :math:`g_i\gamma(W_i - \mu_i)/\sqrt{\max(N\sigma_i^2, \epsilon)}`, differentiable.

    The torch twin of :func:`normcourse.reference.scaled_weight_standardization`; ``gain`` has shape
    ``(*batch, out)``.

    Reference: Brock, De & Smith, ICLR 2021; Brock, De, Smith & Simonyan, ICML 2021.
    """
    dims = _unit_dims(weight.dim(), batch_dims)
    fan_in = math.prod(weight.shape[d] for d in dims)
    centered = weight - weight.mean(dim=dims, keepdim=True)
    var = (centered * centered).mean(dim=dims, keepdim=True)
    scale = gamma * torch.rsqrt(torch.clamp(fan_in * var, min=eps))
    if gain is not None:
        scale = scale * gain.reshape(gain.shape + (1,) * (weight.dim() - gain.dim()))
    return centered * scale


def unitwise_norm(x: torch.Tensor, batch_dims: int = 0) -> torch.Tensor:
    """Frobenius norm of each output unit (every axis after the first non-batch one), keepdim.

    The torch twin of :func:`normcourse.reference.unitwise_norm`: a vector or a scalar is one unit.
    """
    dims = _unit_dims(x.dim(), batch_dims)
    return torch.linalg.vector_norm(x, dim=dims, keepdim=True) if dims else x.abs()


def adaptive_clip_grad(grad: torch.Tensor, weight: torch.Tensor, clipping: float = 0.01, eps: float = 1e-3,
                       batch_dims: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""AGC of one parameter: units with :math:`\|G_i\|/\max(\|W_i\|, \epsilon) > \lambda` rescaled to ratio :math:`\lambda`.

    The torch twin of :func:`normcourse.reference.adaptive_clip_grad`.

    Returns:
        ``(clipped_grad, clipped)``: the new gradient and a boolean tensor of the unit-norm shape that
        says which units were clipped.
    """
    max_norm = clipping * torch.clamp(unitwise_norm(weight, batch_dims), min=eps)
    g_norm = unitwise_norm(grad, batch_dims)
    clipped = g_norm > max_norm
    scale = torch.where(clipped, max_norm / torch.where(clipped, g_norm, torch.ones_like(g_norm)),
                        torch.ones_like(g_norm))
    return grad * scale, clipped


# ------------------------------------------------------------------------------------------------
# Drop-in layers for single models
# ------------------------------------------------------------------------------------------------
class WSLinear(nn.Linear):
    r"""``nn.Linear`` whose weight is standardized per output unit at every forward pass.

    .. math::
        y = \hat W x + b, \qquad \hat W_{i\cdot} = \frac{W_{i\cdot} - \mu_i}{\sqrt{\sigma_i^2 + \epsilon}}

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        eps: as :func:`weight_standardization`. Default: 1e-5.

    Shape:
        - Input: :math:`(*, H_{in})`. Output: :math:`(*, H_{out})`.

    Example:
        >>> layer = WSLinear(8, 4)
        >>> x = torch.randn(2, 8)
        >>> torch.allclose(layer(x), WSLinear.from_linear(layer)(x))
        True
        >>> with torch.no_grad():                       # a per-unit re-scale and shift changes nothing
        ...     before = layer(x)
        ...     _ = layer.weight.mul_(3.0).add_(1.0)
        >>> torch.allclose(layer(x), before, atol=1e-3)   # up to eps / var
        True

    Reference: Qiao et al., arXiv:1903.10520, 2019.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, eps: float = 1e-5):
        super().__init__(in_features, out_features, bias=bias)
        self.eps = eps

    @classmethod
    def from_linear(cls, layer: nn.Linear, eps: float = 1e-5) -> "WSLinear":
        """A :class:`WSLinear` with ``layer``'s weight and bias (copied)."""
        new = cls(layer.in_features, layer.out_features, bias=layer.bias is not None, eps=eps)
        new.load_state_dict(layer.state_dict())
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight_standardization(self.weight, self.eps), self.bias)


class WSConv2d(nn.Conv2d):
    r"""``nn.Conv2d`` with Weight Standardization: each filter has zero mean and unit variance.

    .. math::
        y = \hat W \star x + b, \qquad \hat W_{i} = \frac{W_i - \mu_i}{\sqrt{\sigma_i^2 + \epsilon}}

    over the :math:`C_{in}/\text{groups}\cdot k_H k_W` weights of filter :math:`i`. Qiao et al. pair it
    with GroupNorm (or BatchNorm) after the convolution.

    Args:
        as ``nn.Conv2d``, plus ``eps`` (default 1e-5).

    Shape:
        - Input: :math:`(N, C_{in}, H, W)`. Output: :math:`(N, C_{out}, H', W')`.

    Example:
        >>> conv = WSConv2d(3, 8, 3, padding=1)
        >>> conv(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 8, 8, 8])

    Reference: Qiao et al., arXiv:1903.10520, 2019.
    """

    def __init__(self, *args, eps: float = 1e-5, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, weight_standardization(self.weight, self.eps), self.bias)


class ScaledWSLinear(nn.Linear):
    r"""``nn.Linear`` with scaled Weight Standardization and a learnable per-unit gain (NF networks).

    .. math::
        y = \hat W x + b, \qquad \hat W_{i\cdot} = g_i\,\gamma\,\frac{W_{i\cdot} - \mu_i}{\sqrt{\max(N\sigma_i^2, \epsilon)}}

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        gamma: the gain of the nonlinearity that *precedes* this layer (``RELU_GAMMA`` after a
            ReLU, 1 for a unit-variance input). Default: 1.0.
        eps: floor on :math:`N\sigma_i^2`. Default: 1e-4.

    Shape:
        - Input: :math:`(*, H_{in})`. Output: :math:`(*, H_{out})`.

    Example:
        >>> layer = ScaledWSLinear(256, 256)
        >>> round(layer(torch.randn(4096, 256)).var().item(), 1)      # variance preserved
        1.0

    Reference: Brock, De & Smith, ICLR 2021; Brock et al., ICML 2021.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, gamma: float = 1.0,
                 eps: float = 1e-4):
        super().__init__(in_features, out_features, bias=bias)
        self.gain = nn.Parameter(torch.ones(out_features))
        self.gamma, self.eps = gamma, eps
        if bias:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = scaled_weight_standardization(self.weight, self.gain, self.gamma, self.eps)
        return F.linear(x, w, self.bias)


class ScaledWSConv2d(nn.Conv2d):
    r"""``nn.Conv2d`` with scaled Weight Standardization and a learnable per-filter gain (NF-ResNets).

    .. math::
        \hat W_i = g_i\,\gamma\,\frac{W_i - \mu_i}{\sqrt{\max(N\sigma_i^2, \epsilon)}}, \qquad
        N = C_{in}/\text{groups}\cdot k_H k_W

    Args:
        as ``nn.Conv2d``, plus ``gamma`` (default 1.0) and ``eps`` (default 1e-4).

    Example:
        >>> ScaledWSConv2d(3, 8, 3, padding=1)(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 8, 8, 8])

    Reference: Brock, De & Smith, ICLR 2021; Brock et al., ICML 2021.
    """

    def __init__(self, *args, gamma: float = 1.0, eps: float = 1e-4, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels))
        self.gamma, self.eps = gamma, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = scaled_weight_standardization(self.weight, self.gain, self.gamma, self.eps)
        return self._conv_forward(x, w, self.bias)


class DynamicTanh(nn.Module):
    r"""Dynamic Tanh, :math:`\mathrm{DyT}(x) = \gamma\odot\tanh(\alpha x) + \beta`, a drop-in for ``nn.LayerNorm``.

    Args:
        normalized_shape: the trailing shape of :math:`\gamma, \beta` (as ``nn.LayerNorm``).
        alpha_init: initial value of the scalar :math:`\alpha`. Default: 0.5 (the paper's default).

    Shape:
        - Input: :math:`(*, \text{normalized\_shape})`. Output: same shape.

    Example:
        >>> dyt = DynamicTanh(4)
        >>> dyt(torch.tensor([[-100.0, 0.0, 1.0, 100.0]]))
        tensor([[-1.0000,  0.0000,  0.4621,  1.0000]], grad_fn=<AddBackward0>)

    Reference: Zhu, Chen, He, LeCun & Liu, "Transformers without Normalization", CVPR 2025.
    """

    def __init__(self, normalized_shape: int | Sequence[int], alpha_init: float = 0.5):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape = shape
        self.alpha = nn.Parameter(torch.full((1,), float(alpha_init)))
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.alpha * x) * self.weight + self.bias

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, alpha={self.alpha.item():.3g}"


def replace_layer_norms(model: nn.Module, alpha_init: float = 0.5) -> nn.Module:
    """Replace every ``nn.LayerNorm`` of ``model`` (in place) by a :class:`DynamicTanh` of the same shape.

    Returns ``model``. The replacement has its own fresh parameters (:math:`\\alpha` = ``alpha_init``,
    :math:`\\gamma = 1`, :math:`\\beta = 0`), as LayerNorm's start at 1 and 0.

    Example:
        >>> net = replace_layer_norms(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)))
        >>> type(net[1]).__name__
        'DynamicTanh'
    """
    for name, child in list(model.named_children()):
        if isinstance(child, nn.LayerNorm):
            setattr(model, name, DynamicTanh(child.normalized_shape, alpha_init))
        else:
            replace_layer_norms(child, alpha_init)
    return model


class SkipInit(nn.Module):
    r"""A residual connection with a learnable scalar on the branch, zero at initialization.

    .. math::
        y = x + \alpha\, f(x), \qquad \alpha \leftarrow \alpha_0 = 0

    At initialization the block is the identity, so a stack of them starts as a shallow network and
    the residual stream's variance does not grow with depth; :math:`\alpha` then learns how much of
    the branch to let in. This is what BatchNorm in the branch does implicitly (De & Smith).

    Args:
        branch: the residual branch :math:`f` (any module mapping the input to its own shape).
        alpha_init: :math:`\alpha_0`. Default: 0.0.

    Shape:
        - Input: whatever ``branch`` accepts. Output: same shape.

    Example:
        >>> block = SkipInit(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)))
        >>> x = torch.randn(3, 4)
        >>> torch.equal(block(x), x)
        True

    Reference: De & Smith, "Batch Normalization Biases Residual Blocks Towards the Identity Function in
    Deep Networks", NeurIPS 2020.
    """

    def __init__(self, branch: nn.Module, alpha_init: float = 0.0):
        super().__init__()
        self.branch = branch
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.alpha * self.branch(x)


@torch.no_grad()
def adaptive_clip_grad_(parameters: Iterable[torch.Tensor], clipping: float = 0.01, eps: float = 1e-3) -> float:
    r"""Apply AGC to every parameter's ``.grad`` in place; return the share of units clipped.

    Each parameter's gradient is clipped unit by unit as in :func:`adaptive_clip_grad` (output units of
    a weight; a bias, a gain or a scalar counts as one unit). Parameters without a gradient are
    skipped. Call it between ``loss.backward()`` and ``optimizer.step()``; leave the final
    classifier out of ``parameters``, as Brock et al. do.

    Args:
        parameters: the parameters to clip.
        clipping: :math:`\lambda`. Default: 0.01.
        eps: floor on the weight norm. Default: 1e-3.

    Returns:
        the fraction of units (over all given parameters) whose gradient was rescaled.

    Example:
        >>> layer = nn.Linear(3, 2)
        >>> layer(torch.randn(5, 3)).pow(2).sum().backward()
        >>> 0.0 <= adaptive_clip_grad_(layer.parameters(), clipping=0.01) <= 1.0
        True

    Reference: Brock, De, Smith & Simonyan, ICML 2021, Section 4.1.
    """
    clipped_units, units = 0, 0
    for p in parameters:
        if p.grad is None:
            continue
        new, clipped = adaptive_clip_grad(p.grad, p.detach(), clipping, eps)
        p.grad.copy_(new)
        clipped_units += int(clipped.sum())
        units += clipped.numel()
    return clipped_units / units if units else 0.0


# ------------------------------------------------------------------------------------------------
# Residual MLPs, one independent network per seed
# ------------------------------------------------------------------------------------------------
#: The residual MLP variants of chapter 9 and what their block computes (``x`` is the residual stream,
#: :math:`W_1, W_2` the two linear maps of the branch).
VARIANTS = {
    "plain": "x + W2 ReLU(W1 x), He initialization, no normalization",
    "batch_norm": "x + BN(W2 ReLU(BN(W1 x)))",
    "group_norm": "x + GN(W2 ReLU(GN(W1 x)))",
    "ws_group_norm": "x + GN(Ws2 ReLU(GN(Ws1 x))), Ws = weight-standardized",
    "layer_norm": "x + LN(W2 ReLU(LN(W1 x)))",
    "dyt": "x + DyT(W2 ReLU(DyT(W1 x)))",
    "skipinit": "x + a W2 ReLU(W1 x), a learnable, starting at 0",
    "fixup": "x + m W2(ReLU(W1(x + b1) + b2) + b3) + b4, Fixup initialization",
    "nf": "x + alpha W2s(gamma ReLU(W1s(x / beta))), scaled WS, beta from the expected variance",
}
_NORMALIZED = {"batch_norm", "group_norm", "ws_group_norm", "layer_norm", "dyt"}


class _SeedParams:
    """Draw every parameter of the seed-batched model from one generator per seed, in a fixed order."""

    def __init__(self, seeds: Sequence[int]):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def normal(self, *shape: int, std: float) -> nn.Parameter:
        return nn.Parameter(torch.stack([torch.randn(shape, generator=g) for g in self.generators]) * std)

    def const(self, *shape: int, value: float) -> nn.Parameter:
        return nn.Parameter(torch.full((len(self.generators),) + shape, float(value)))


def _seed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W^T + b`` for every seed: x (S, N, I), weight (S, O, I), bias (S, O) -> (S, N, O)."""
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


class _SeedNorm(nn.Module):
    """BatchNorm, GroupNorm, LayerNorm or DyT over (S, N, D) input that never mixes seeds.

    Parameters are (S, 1, D) (DyT's alpha (S, 1, 1)): seed axis first, like every parameter of
    :class:`ResidualMLP`, and one unit per seed for AGC, as a gain vector is in a single model.
    """

    def __init__(self, kind: str, n_seeds: int, width: int, groups: int, dyt_alpha: float):
        super().__init__()
        self.kind, self.groups = kind, groups
        self.weight = nn.Parameter(torch.ones(n_seeds, 1, width))
        self.bias = nn.Parameter(torch.zeros(n_seeds, 1, width))
        if kind == "batch_norm":
            self.register_buffer("running_mean", torch.zeros(n_seeds * width))
            self.register_buffer("running_var", torch.ones(n_seeds * width))
        if kind == "dyt":
            self.alpha = nn.Parameter(torch.full((n_seeds, 1, 1), float(dyt_alpha)))
        if kind == "group_norm":
            size = width // groups
            self.register_buffer("group_average", torch.block_diag(*[torch.full((size, size), 1.0 / size)] * groups),
                                 persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, n, d = x.shape
        if self.kind == "batch_norm":
            # One F.batch_norm over S*D channels: channel s*D + d is unit d of seed s, so every
            # statistic (batch and running) belongs to one seed. PyTorch's defaults: momentum 0.1, eps 1e-5.
            y = F.batch_norm(x.transpose(0, 1).reshape(n, s * d), self.running_mean, self.running_var,
                             self.weight.reshape(-1), self.bias.reshape(-1), self.training, 0.1, 1e-5)
            return y.reshape(n, s, d).transpose(0, 1)
        if self.kind == "dyt":
            y = torch.tanh(self.alpha * x)
        elif self.kind == "layer_norm":
            y = F.layer_norm(x, (d,))
        else:
            # GroupNorm: mean and biased variance per sample and group of d/groups units, eps 1e-5.
            # Written as products with the group-averaging matrix because F.group_norm's CPU kernel (and
            # a reduction over a last axis of 4 elements) is slow for thousands of tiny rows.
            mean = x @ self.group_average
            centered = x - mean
            y = centered * torch.rsqrt((centered * centered) @ self.group_average + 1e-5)
        return y * self.weight + self.bias


class ResidualMLP(nn.Module):
    r"""Residual MLPs for the 8x8 digits, one independent network per seed, in one module.

    .. math::
        x_0 = W_0 u, \qquad x_l = x_{l-1} + \text{branch}_l(x_{l-1}) \quad (l = 1..L), \qquad
        \text{logits} = W_{\text{out}}\, x_L + b_{\text{out}}

    with the branch of ``variant`` (see :data:`VARIANTS`). The stream has no nonlinearity of its own
    (identity skip connections, He et al. 2016). Initialization, per seed:

    - stem :math:`W_0` and every :math:`W_1` (which see a zero-mean input):
      :math:`\mathcal N(0, 1/n_{in})`, variance-preserving; every :math:`W_2` (after a ReLU):
      :math:`\mathcal N(0, 2/n_{in})` (He et al. 2015); biases 0; the head :math:`\mathcal N(0, 1/n_{in})`.
      So a plain branch maps an input of variance :math:`v` to an output of variance about :math:`v`;
    - ``"skipinit"``: the plain block times a scalar :math:`a` that starts at 0;
    - ``"fixup"`` (Zhang et al. 2019, with :math:`m = 2` layers per branch): :math:`W_1` as above times
      :math:`L^{-1/(2m-2)} = L^{-1/2}`, :math:`W_2 = 0`, the head 0, scalar biases (0) before each
      linear map and the ReLU, one scalar multiplier per branch (initialized to 1), no other biases;
    - ``"nf"`` (NF-ResNet, Brock et al. 2021): stem and branch layers use scaled WS with learnable
      gains; the branch sees :math:`x/\beta_l` with :math:`\beta_l = \sqrt{v_0 + (l-1)\alpha^2}`, the
      expected standard deviation of :math:`x_{l-1}` (:math:`v_0 = 1`), multiplies by :math:`\alpha`,
      and the ReLU's output by :data:`~normcourse.reference.RELU_GAMMA`;
    - normalized variants: the norm's gain 1 and bias 0 (DyT's :math:`\alpha` = ``dyt_alpha``);
      ``"ws_group_norm"`` standardizes :math:`W_1, W_2` (WS) at every forward pass.

    Seed ``s``'s network depends only on ``s`` (one generator per seed, same draw order), not on the
    other seeds in the module; no computation mixes seeds.

    Args:
        variant: a key of :data:`VARIANTS`.
        seeds: one network per seed. Default: (0, 1, 2, 3, 4).
        depth: number of residual blocks :math:`L`. Default: 8.
        width: stream width. Default: 32.
        in_dim, out_dim: input features and classes. Defaults: 64, 10.
        groups: GroupNorm groups. Default: 8.
        nf_alpha: NF-ResNet's :math:`\alpha`. Default: 0.2.
        dyt_alpha: DyT's initial :math:`\alpha`. Default: 0.5.

    Shape:
        - Input: :math:`(N, \text{in\_dim})` (the same batch for every seed) or
          :math:`(S, N, \text{in\_dim})` (one batch per seed). Output: :math:`(S, N, \text{out\_dim})`.

    Example:
        >>> model = ResidualMLP("skipinit", seeds=(0, 1), depth=3, width=16)
        >>> model(torch.randn(5, 64)).shape
        torch.Size([2, 5, 10])

    Reference: He, Zhang, Ren & Sun, CVPR 2016 (residual networks); De & Smith, NeurIPS 2020
    (SkipInit); Zhang, Dauphin & Ma, ICLR 2019 (Fixup); Qiao et al. 2019 (WS); Brock, De & Smith,
    ICLR 2021 (NF-ResNets).
    """

    def __init__(self, variant: str, seeds: Sequence[int] = (0, 1, 2, 3, 4), depth: int = 8, width: int = 32,
                 in_dim: int = 64, out_dim: int = 10, groups: int = 8, nf_alpha: float = 0.2,
                 dyt_alpha: float = 0.5):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if variant in ("group_norm", "ws_group_norm") and width % groups:
            raise ValueError(f"groups={groups} must divide width={width}")
        self.variant, self.seeds, self.depth, self.width = variant, tuple(int(s) for s in seeds), depth, width
        self.nf_alpha = nf_alpha
        n = len(self.seeds)
        draw = _SeedParams(self.seeds)
        self.stem_weight = draw.normal(width, in_dim, std=in_dim ** -0.5)
        self.stem_bias = draw.const(width, value=0.0)
        branch_scale = depth ** -0.5 if variant == "fixup" else 1.0
        self.w1 = nn.ParameterList(draw.normal(width, width, std=branch_scale * width ** -0.5) for _ in range(depth))
        self.w2 = nn.ParameterList(draw.normal(width, width, std=(2 / width) ** 0.5) for _ in range(depth))
        has_biases = variant != "fixup"
        self.b1 = nn.ParameterList(draw.const(width, value=0.0) for _ in range(depth)) if has_biases else None
        self.b2 = nn.ParameterList(draw.const(width, value=0.0) for _ in range(depth)) if has_biases else None
        self.head_weight = draw.normal(out_dim, width, std=width ** -0.5)
        self.head_bias = draw.const(out_dim, value=0.0)
        if variant == "fixup":
            with torch.no_grad():
                for w in self.w2:
                    w.zero_()
                self.head_weight.zero_()
            # scalar biases before W1, before the ReLU, before W2, after W2; a scalar multiplier per branch
            self.fixup_bias = nn.ParameterList(draw.const(4, 1, 1, value=0.0) for _ in range(depth))
            self.fixup_scale = nn.ParameterList(draw.const(1, 1, value=1.0) for _ in range(depth))
        if variant == "skipinit":
            self.skip_gain = nn.ParameterList(draw.const(1, 1, value=0.0) for _ in range(depth))
        if variant == "nf":
            self.stem_gain = draw.const(width, value=1.0)
            self.gain1 = nn.ParameterList(draw.const(width, value=1.0) for _ in range(depth))
            self.gain2 = nn.ParameterList(draw.const(width, value=1.0) for _ in range(depth))
        if variant in _NORMALIZED:
            kind = "group_norm" if variant == "ws_group_norm" else variant
            self.norm1 = nn.ModuleList(_SeedNorm(kind, n, width, groups, dyt_alpha) for _ in range(depth))
            self.norm2 = nn.ModuleList(_SeedNorm(kind, n, width, groups, dyt_alpha) for _ in range(depth))

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    def head_parameters(self) -> list[nn.Parameter]:
        """The classifier's weight and bias (AGC leaves them out, as Brock et al. do)."""
        return [self.head_weight, self.head_bias]

    def _stem(self, u: torch.Tensor) -> torch.Tensor:
        if u.dim() == 2:
            u = u.unsqueeze(0).expand(self.n_seeds, -1, -1)
        w = self.stem_weight
        if self.variant == "nf":
            w = scaled_weight_standardization(w, self.stem_gain, 1.0, batch_dims=1)
        return _seed_linear(u, w, self.stem_bias)

    def branch(self, l: int, x: torch.Tensor) -> torch.Tensor:
        """The output of block ``l``'s branch (0-based) on stream ``x``, before it is added to ``x``."""
        v = self.variant
        w1, w2 = self.w1[l], self.w2[l]
        if v == "fixup":
            b = self.fixup_bias[l]                                     # (S, 4, 1, 1): four scalars per seed
            h = torch.relu(_seed_linear(x + b[:, 0], w1, None) + b[:, 1])
            return self.fixup_scale[l] * _seed_linear(h + b[:, 2], w2, None) + b[:, 3]
        b1, b2 = self.b1[l], self.b2[l]
        if v == "nf":
            beta = math.sqrt(1.0 + l * self.nf_alpha ** 2)
            w1 = scaled_weight_standardization(w1, self.gain1[l], 1.0, batch_dims=1)
            w2 = scaled_weight_standardization(w2, self.gain2[l], RELU_GAMMA, batch_dims=1)
            return self.nf_alpha * _seed_linear(torch.relu(_seed_linear(x / beta, w1, b1)), w2, b2)
        if v == "ws_group_norm":
            w1 = weight_standardization(w1, batch_dims=1)
            w2 = weight_standardization(w2, batch_dims=1)
        if v in _NORMALIZED:
            h = torch.relu(self.norm1[l](_seed_linear(x, w1, b1)))
            return self.norm2[l](_seed_linear(h, w2, b2))
        h = _seed_linear(torch.relu(_seed_linear(x, w1, b1)), w2, b2)
        return self.skip_gain[l] * h if v == "skipinit" else h

    def forward(self, u: torch.Tensor, return_stream: bool = False):
        x = self._stem(u)
        stream, branches = [x], []
        for l in range(self.depth):
            f = self.branch(l, x)
            x = x + f
            if return_stream:
                stream.append(x)
                branches.append(f)
        logits = _seed_linear(x, self.head_weight, self.head_bias)
        return (logits, stream, branches) if return_stream else logits


@torch.no_grad()
def stream_statistics(model: ResidualMLP, u: torch.Tensor) -> dict[str, np.ndarray]:
    r"""The residual stream of a :class:`ResidualMLP` on one batch, block by block.

    .. math::
        v_l = \mathrm{Var}[x_l], \qquad \text{share}_l = \frac{\mathrm{Var}[f_l(x_{l-1})]}{\mathrm{Var}[x_l]}

    Variances are taken over samples and units together (the second moment about the mean), for each
    seed. The model runs in training mode (BatchNorm with batch statistics, as at the first step) on a
    copy of its state: running statistics are restored afterwards.

    Args:
        model: the networks.
        u: input batch :math:`(N, \text{in\_dim})`, shared by every seed.

    Returns:
        ``{"variance": (S, L + 1) array of v_0..v_L, "branch_share": (S, L) array}``.
    """
    state = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train()
    try:
        _, stream, branches = model(u, return_stream=True)
    finally:
        model.load_state_dict(state)
        model.train(was_training)
    variance = torch.stack([x.var(dim=(1, 2), correction=0) for x in stream], dim=1)
    branch = torch.stack([f.var(dim=(1, 2), correction=0) for f in branches], dim=1)
    return {"variance": variance.double().numpy(), "branch_share": (branch / variance[:, 1:]).double().numpy()}


@dataclass
class SeedRuns:
    """What :func:`train_seeds` records, one column per seed.

    Attributes:
        seeds: the seeds, in column order.
        loss: ``(steps, S)`` training minibatch loss before each update (``nan`` from the step a network's
            loss first became non-finite: it has diverged).
        test_accuracy: ``(S,)`` held-out accuracy after training, in evaluation mode (``nan`` if diverged).
        clipped: ``(steps, S)`` share of each seed's units that AGC clipped at each step (zeros
            without AGC).
    """

    seeds: tuple[int, ...]
    loss: np.ndarray
    test_accuracy: np.ndarray
    clipped: np.ndarray

    def final_loss(self, last: int = 20) -> np.ndarray:
        """Mean training loss over the ``last`` steps, per network (``nan`` if it diverged)."""
        return self.loss[-last:].mean(axis=0)

    @property
    def diverged(self) -> np.ndarray:
        """Per seed: did the loss ever become non-finite?"""
        return ~np.isfinite(self.loss).all(axis=0)


def _seed_units_clipped(model: ResidualMLP, clipping: torch.Tensor, eps: float) -> torch.Tensor:
    """AGC on every parameter but the head, per seed; returns each seed's share of clipped units.

    Every parameter of a :class:`ResidualMLP` is ``(S, *shape)`` with ``shape`` the parameter of one
    network, so AGC with one batch dimension clips exactly the units a single network would have.
    """
    head = {id(p) for p in model.head_parameters()}
    clipped_units, total = torch.zeros(model.n_seeds), 0
    for p in model.parameters():
        if p.grad is None or id(p) in head:
            continue
        threshold = clipping.reshape((-1,) + (1,) * (p.dim() - 1))       # one lambda per network
        new, clipped = adaptive_clip_grad(p.grad, p.detach(), threshold, eps, batch_dims=1)
        p.grad.copy_(new)
        flat = clipped.reshape(model.n_seeds, -1)
        clipped_units += flat.sum(1)
        total += flat.shape[1]
    return clipped_units / max(total, 1)


def _per_network(value, n: int, name: str) -> torch.Tensor:
    """A float or one value per network, as a float32 tensor of shape (n,)."""
    t = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"{name} needs one value or one per network ({n}), got {t.numel()}")
    return t.clone()


def train_seeds(model: ResidualMLP, data: DigitsData | None = None, steps: int = 150,
                lr: float | Sequence[float] = 0.05, batch_size: int = 64, momentum: float = 0.9,
                clipping: float | Sequence[float] | None = None, agc_eps: float = 1e-3,
                order_seed: int = 0) -> SeedRuns:
    r"""SGD with momentum on every network of a :class:`ResidualMLP` at once; optionally AGC.

    .. math::
        G \leftarrow \mathrm{AGC}_\lambda(
abla_	heta L_s), \qquad v \leftarrow 
ho v + G, \qquad
        	heta \leftarrow 	heta - \eta_s v

    for each network :math:`s` and its own loss :math:`L_s` (cross-entropy on its own minibatch:
    every network reshuffles the training split each epoch with its own generator, seeded by its seed
    and ``order_seed``, so two networks with the same seed see the same minibatches). The seeds'
    losses are summed for one backward pass; since no parameter is shared, each network receives
    exactly its own gradient. AGC acts unit by unit and SGD element by element, so the networks train
    independently; that is what lets one call compare learning rates and clipping thresholds, each
    column of the model with its own :math:`\eta_s` and :math:`\lambda_s`. AGC (when ``clipping`` is
    given) covers every parameter but the classifier, as in Brock et al.

    Args:
        model: a :class:`ResidualMLP`, trained in place.
        data: the digits (default :func:`~normcourse.lab.models.load_digits_tensors`).
        steps: number of updates. Default: 150.
        lr: :math:`\eta`, one value or one per network. Default: 0.05.
        batch_size: samples per update and network. Default: 64.
        momentum: :math:`\rho`. Default: 0.9.
        clipping: AGC's :math:`\lambda`, one value or one per network (``inf`` = no clipping for that
            network), or None for no AGC at all. Default: None.
        agc_eps: AGC's floor on weight norms. Default: 1e-3.
        order_seed: offsets the minibatch order of every network. Default: 0.

    Returns:
        a :class:`SeedRuns`, one column per network.

    Example:
        >>> runs = train_seeds(ResidualMLP("batch_norm", seeds=(0, 1), depth=2, width=16), steps=5)
        >>> runs.loss.shape, runs.test_accuracy.shape
        ((5, 2), (2,))
    """
    data = load_digits_tensors() if data is None else data
    x, y = data.x_train, data.y_train
    n = model.n_seeds
    rates = _per_network(lr, n, "lr")
    thresholds = None if clipping is None else _per_network(clipping, n, "clipping")
    orders = [torch.Generator().manual_seed(10_000 * (order_seed + 1) + s) for s in model.seeds]
    # lr = 1 and gradients scaled by each network's rate: v <- rho v + eta_s G, theta <- theta - v is the
    # same update as theta <- theta - eta_s v' with v' <- rho v' + G (both buffers start at 0).
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0, momentum=momentum)
    losses, clipped = np.zeros((steps, n)), np.zeros((steps, n))
    dead = torch.zeros(n, dtype=torch.bool)
    model.train()
    perms, position = None, len(y)
    for step in range(steps):
        if position + batch_size > len(y):
            perms, position = torch.stack([torch.randperm(len(y), generator=g) for g in orders]), 0
        index = perms[:, position:position + batch_size]
        position += batch_size
        logits = model(x[index])
        per_network = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[index].reshape(-1),
                                      reduction="none").view(n, -1).mean(1)
        optimizer.zero_grad(set_to_none=True)
        per_network.sum().backward()
        with torch.no_grad():
            if thresholds is not None:
                clipped[step] = _seed_units_clipped(model, thresholds, agc_eps).numpy()
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.mul_(rates.reshape((-1,) + (1,) * (p.dim() - 1)))
        optimizer.step()
        dead |= ~torch.isfinite(per_network.detach())
        losses[step] = np.where(dead.numpy(), np.nan, per_network.detach().double().numpy())
        if dead.any():
            _reset_networks(model, optimizer, dead)
    model.eval()
    with torch.no_grad():
        test = (model(data.x_test).argmax(-1) == data.y_test).double().mean(1).numpy()
    model.train()
    return SeedRuns(model.seeds, losses, np.where(dead.numpy(), np.nan, test), clipped)


@torch.no_grad()
def _reset_networks(model: ResidualMLP, optimizer: torch.optim.Optimizer, dead: torch.Tensor) -> None:
    """Zero the parameters, momenta and running statistics of diverged networks.

    A diverged network is finished (its losses are recorded as nan from then on); keeping it at zero
    instead of letting inf and nan flow through every later step keeps the remaining steps fast and
    changes nothing for the other networks, which share no computation with it.
    """
    for p in model.parameters():
        p[dead] = 0.0
        buffer = optimizer.state.get(p, {}).get("momentum_buffer")
        if buffer is not None:
            buffer[dead] = 0.0
    for module in model.modules():
        if isinstance(module, _SeedNorm) and module.kind == "batch_norm":
            width = module.weight.shape[-1]
            mask = dead.repeat_interleave(width)
            module.running_mean[mask], module.running_var[mask] = 0.0, 1.0


@dataclass
class Sweep:
    """A grid of :func:`train_seeds` runs of one variant: learning rates x clipping thresholds x seeds.

    Every array is indexed ``[lr, clipping, seed]`` (after the step axis for ``loss`` and ``clipped``).

    Attributes:
        variant: the :class:`ResidualMLP` variant.
        lrs, clippings, seeds: the grid (a clipping of None means no AGC).
        runs: the :class:`SeedRuns` of all networks, columns in grid order.
    """

    variant: str
    lrs: tuple[float, ...]
    clippings: tuple[float | None, ...]
    seeds: tuple[int, ...]
    runs: SeedRuns

    def _grid(self, values: np.ndarray) -> np.ndarray:
        return values.reshape(values.shape[:-1] + (len(self.lrs), len(self.clippings), len(self.seeds)))

    def final_loss(self, last: int = 20) -> np.ndarray:
        """``(lrs, clippings, seeds)``: mean training loss over the last steps (nan: diverged)."""
        return self._grid(self.runs.final_loss(last))

    @property
    def test_accuracy(self) -> np.ndarray:
        """``(lrs, clippings, seeds)``: held-out accuracy (nan: diverged)."""
        return self._grid(self.runs.test_accuracy)

    @property
    def diverged(self) -> np.ndarray:
        """``(lrs, clippings, seeds)``: whether the run's loss became non-finite."""
        return self._grid(self.runs.diverged)

    @property
    def loss(self) -> np.ndarray:
        """``(steps, lrs, clippings, seeds)``: the training loss of every step."""
        return self._grid(self.runs.loss)

    @property
    def clipped(self) -> np.ndarray:
        """``(steps, lrs, clippings, seeds)``: share of units AGC clipped at every step."""
        return self._grid(self.runs.clipped)


def sweep(variant: str, lrs: Sequence[float], seeds: Sequence[int] = (0, 1, 2, 3, 4),
          clippings: Sequence[float | None] = (None,), steps: int = 60, batch_size: int = 64,
          momentum: float = 0.9, data: DigitsData | None = None, **model_kwargs) -> Sweep:
    r"""Train one :class:`ResidualMLP` variant over learning rates, AGC thresholds and seeds, at once.

    All :math:`|	ext{lrs}| 	imes |	ext{clippings}| 	imes |	ext{seeds}|` networks are columns of
    one model and one :func:`train_seeds` call; networks with the same seed start from the same
    weights and see the same minibatches, so a comparison across learning rates or thresholds is
    paired.

    Args:
        variant: a key of :data:`VARIANTS`.
        lrs: learning rates.
        seeds: seeds of weights and minibatch order. Default: (0, 1, 2, 3, 4).
        clippings: AGC thresholds :math:`\lambda`; None trains without AGC. Default: (None,).
        steps, batch_size, momentum: as in :func:`train_seeds`. Defaults: 60, 64, 0.9.
        data: the digits. Default: :func:`~normcourse.lab.models.load_digits_tensors`.
        **model_kwargs: passed to :class:`ResidualMLP` (``depth``, ``width``, ...).

    Returns:
        a :class:`Sweep`.

    Example:
        >>> result = sweep("skipinit", lrs=(0.01, 0.1), seeds=(0, 1), steps=3, depth=2)
        >>> result.final_loss().shape
        (2, 1, 2)
    """
    lrs, clippings, seeds = tuple(float(a) for a in lrs), tuple(clippings), tuple(int(s) for s in seeds)
    grid = [(lr, clip, seed) for lr in lrs for clip in clippings for seed in seeds]
    model = ResidualMLP(variant, seeds=[seed for _, _, seed in grid], **model_kwargs)
    thresholds = None
    if any(clip is not None for clip in clippings):
        thresholds = [math.inf if clip is None else float(clip) for _, clip, _ in grid]
    runs = train_seeds(model, data, steps=steps, lr=[lr for lr, _, _ in grid], batch_size=batch_size,
                       momentum=momentum, clipping=thresholds)
    return Sweep(variant, lrs, clippings, seeds, runs)


# ------------------------------------------------------------------------------------------------
# DyT versus LayerNorm in a Transformer
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def norm_output_rms(model: nn.Module, *inputs, kinds=(nn.LayerNorm, DynamicTanh)) -> dict[str, np.ndarray]:
    r"""Root mean square of the input and the output of every normalization layer, per token.

    .. math::
        \mathrm{rms}(z) = \Big(\tfrac1d \sum_i z_i^2\Big)^{1/2}

    for each position's vector :math:`z`, recorded with forward hooks in module order (a Pre-LN
    :class:`~normcourse.lab.transformer.TinyTransformer` block has two, then the final one).

    Args:
        model: the network (not modified; its hooks are removed afterwards).
        *inputs: the arguments of ``model``.
        kinds: module types to record. Default: ``nn.LayerNorm`` and :class:`DynamicTanh`.

    Returns:
        ``{"names": (K,) module names, "input_rms": (K, *positions) arrays, "output_rms": same}``.
    """
    names, rms_in, rms_out, handles = [], [], [], []

    def record(name):
        def hook(_module, args, output):
            names.append(name)
            rms_in.append(args[0].pow(2).mean(-1).sqrt())
            rms_out.append(output.pow(2).mean(-1).sqrt())
        return hook

    for name, module in model.named_modules():
        if isinstance(module, kinds):
            handles.append(module.register_forward_hook(record(name)))
    try:
        model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {"names": np.array(names), "input_rms": torch.stack(rms_in).double().numpy(),
            "output_rms": torch.stack(rms_out).double().numpy()}
