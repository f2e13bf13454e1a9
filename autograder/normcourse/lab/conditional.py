r"""Conditional normalization: the affine parameters come from a condition, not from training alone (torch).

Every normalization ends with :math:`y = \gamma\odot\hat x + \beta`. Conditional normalization computes
:math:`\gamma` and :math:`\beta` from something else: another image's statistics (AdaIN), a question or
a class (FiLM), a diffusion time step and a class label (adaLN-Zero, which also predicts a gate).

* :func:`adain`: Huang & Belongie (2017), "Arbitrary Style Transfer in Real-time with Adaptive Instance
  Normalization", ICCV: :math:`\sigma(y)\,\frac{x - \mu(x)}{\sigma(x)} + \mu(y)`;
* :class:`FiLM`: Perez et al. (2018), "FiLM: Visual Reasoning with a General Conditioning Layer", AAAI:
  :math:`\gamma(z)\odot x + \beta(z)`;
* :class:`AdaLNZeroBlock`: Peebles & Xie (2023), "Scalable Diffusion Models with Transformers", ICCV:
  a Transformer block whose LayerNorms take shift, scale and gate from the condition, with the
  layer that predicts them initialized to zero so that the block starts as the identity;
* :func:`adaln_zero_probe`: what that zero initialization does to the first gradient step.
"""

from __future__ import annotations

import torch
from torch import nn

from .transformer import FeedForward, MultiHeadSelfAttention

__all__ = ["adain", "FiLM", "AdaLNZeroBlock", "adaln_zero_probe"]


def _spatial_stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample and channel mean and sqrt(biased variance + eps) over the spatial axes of (N, C, *)."""
    axes = tuple(range(2, x.dim()))
    mean = x.mean(axes, keepdim=True)
    return mean, torch.sqrt(x.var(axes, unbiased=False, keepdim=True) + eps)


def adain(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    r"""Adaptive instance normalization: the content's normalized features with the style's statistics.

    .. math::
        \mathrm{AdaIN}(x, y) = \sigma(y)\,\frac{x - \mu(x)}{\sigma(x)} + \mu(y)

    with :math:`\mu` and :math:`\sigma = \sqrt{\operatorname{Var} + \epsilon}` (biased variance) taken per
    sample and channel over the spatial positions, as in InstanceNorm. It is InstanceNorm whose
    :math:`\gamma, \beta` are the style's :math:`\sigma(y), \mu(y)`; nothing is learned (Huang & Belongie
    2017).

    Args:
        content: :math:`x`, shape :math:`(N, C, *)` with at least one spatial position.
        style: :math:`y`, shape :math:`(N, C, *)` (its spatial size may differ).
        eps: Default: 1e-5.

    Shape:
        - Output: the shape of ``content``.

    Example::

        >>> x, y = torch.randn(1, 3, 4, 4), 5 + 2 * torch.randn(1, 3, 8, 8)
        >>> out = adain(x, y)
        >>> torch.allclose(out.mean((2, 3)), y.mean((2, 3)), atol=1e-5)
        True
    """
    if content.dim() < 3 or style.dim() < 3:
        raise ValueError("adain needs (N, C, *) inputs with at least one spatial axis")
    content_mean, content_std = _spatial_stats(content, eps)
    style_mean, style_std = _spatial_stats(style, eps)
    return style_std * (content - content_mean) / content_std + style_mean


class FiLM(nn.Module):
    r"""Feature-wise linear modulation: a per-channel gain and bias predicted from a condition.

    .. math::
        \mathrm{FiLM}(x \mid z) = \gamma(z)\odot x + \beta(z), \qquad (\gamma, \beta) = W z + b

    Perez et al. (2018) predict :math:`\gamma, \beta` from a question and apply them to the output of
    a BatchNorm inside each residual block of the image network.

    Args:
        cond_dim: size of the condition :math:`z`.
        num_features: number of channels :math:`C` modulated.
        channel_dim: the axis of ``x`` holding the channels: 1 for :math:`(N, C, H, W)`, -1 for
            :math:`(B, S, D)`. Default: -1.

    Shape:
        - x: :math:`(N, \dots)` with ``num_features`` entries along ``channel_dim``; z: :math:`(N, \text{cond\_dim})`.
        - Output: the shape of ``x``.
    """

    def __init__(self, cond_dim: int, num_features: int, channel_dim: int = -1):
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * num_features)
        self.channel_dim = channel_dim

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(z).chunk(2, dim=-1)                    # (N, C) each
        shape = [x.shape[0]] + [1] * (x.dim() - 1)
        shape[self.channel_dim] = x.shape[self.channel_dim]
        return gamma.view(shape) * x + beta.view(shape)


class AdaLNZeroBlock(nn.Module):
    r"""A Transformer block conditioned through its LayerNorms (DiT's adaLN-Zero, Peebles & Xie 2023).

    .. math::
        (\beta_1, s_1, \alpha_1, \beta_2, s_2, \alpha_2) = W\,\mathrm{SiLU}(c) + b

    .. math::
        h = x + \alpha_1 \odot \mathrm{Attn}\big(\mathrm{LN}(x)\odot(1 + s_1) + \beta_1\big), \qquad
        y = h + \alpha_2 \odot \mathrm{FFN}\big(\mathrm{LN}(h)\odot(1 + s_2) + \beta_2\big)

    where LN has no affine of its own (:math:`\gamma = 1 + s` and :math:`\beta` come from the
    condition :math:`c`, for example the sum of a time-step and a class embedding) and :math:`\alpha` is
    a per-channel gate on each residual branch. With ``zero_init=True`` (adaLN-Zero), :math:`W = 0` and
    :math:`b = 0`, so :math:`\alpha = 0` and the block is the identity for every input and condition.

    Args:
        d_model: width :math:`D`.
        n_heads: attention heads.
        cond_dim: size of the condition :math:`c`.
        zero_init: zero the modulation layer (adaLN-Zero). Default: True.

    Shape:
        - x: :math:`(B, S, D)`; c: :math:`(B, \text{cond\_dim})`. Output: :math:`(B, S, D)`.

    Example::

        >>> block = AdaLNZeroBlock(16, 2, cond_dim=8)
        >>> x = torch.randn(2, 5, 16)
        >>> torch.equal(block(x, torch.randn(2, 8)), x)
        True
    """

    def __init__(self, d_model: int, n_heads: int, cond_dim: int, zero_init: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.attn = MultiHeadSelfAttention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.ffn = FeedForward(d_model, 4 * d_model)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * d_model))
        if zero_init:
            nn.init.zeros_(self.modulation[1].weight)
            nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).unsqueeze(1).chunk(6, dim=-1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1)[0]
        return x + gate2 * self.ffn(self.norm2(x) * (1 + scale2) + shift2)


def adaln_zero_probe(seed: int, d_model: int = 32, n_heads: int = 2, cond_dim: int = 16, batch: int = 4,
                     seq_len: int = 10, lr: float = 0.1) -> dict[str, float]:
    r"""An :class:`AdaLNZeroBlock` at initialization and after one SGD step on a random regression target.

    With the modulation layer at zero every gate :math:`\alpha` is 0, so the block is the identity, and
    the loss :math:`\operatorname{mean}((\text{block}(x, c) - t)^2)` has zero gradient with respect to
    the attention and FFN weights and to the shift and scale outputs (they act only through
    :math:`\alpha\odot F`); only the gate rows of the modulation layer receive gradient. After one
    step the gates are non-zero and the output depends on the condition.

    Args:
        seed: seeds the block, the inputs :math:`x`, two conditions :math:`c, c'` and the target.
        d_model, n_heads, cond_dim, batch, seq_len: sizes (defaults 32, 2, 16, 4, 10).
        lr: the SGD step. Default: 0.1.

    Returns:
        ``identity_gap`` (:math:`\max|\text{block}(x, c) - x|` at initialization), ``default_gap`` (the
        same for a block whose modulation layer keeps PyTorch's default initialization),
        ``branch_grad`` (largest :math:`|\partial L/\partial\theta|` over the attention and FFN
        parameters), ``shift_scale_grad`` (largest norm of the gradient of a shift or scale block of
        the modulation weight), ``gate_grad`` (smallest norm for a gate block), ``condition_effect``
        (after one step, :math:`\max|\text{block}(x, c) - \text{block}(x, c')|`).

    Example::

        >>> out = adaln_zero_probe(0)
        >>> out["identity_gap"], out["branch_grad"], out["gate_grad"] > 0
        (0.0, 0.0, True)
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        block = AdaLNZeroBlock(d_model, n_heads, cond_dim)
        default = AdaLNZeroBlock(d_model, n_heads, cond_dim, zero_init=False)
        x, target = torch.randn(batch, seq_len, d_model), torch.randn(batch, seq_len, d_model)
        c, c_other = torch.randn(batch, cond_dim), torch.randn(batch, cond_dim)
    out = block(x, c)
    (out - target).pow(2).mean().backward()
    chunks = block.modulation[1].weight.grad.view(6, d_model, cond_dim).norm(dim=(1, 2))  # shift, scale, gate, x2
    branch = max(p.grad.abs().max().item() for m in (block.attn, block.ffn) for p in m.parameters())
    with torch.no_grad():
        result = {"identity_gap": (out - x).abs().max().item(),
                  "default_gap": (default(x, c) - x).abs().max().item(),
                  "branch_grad": branch,
                  "shift_scale_grad": chunks[[0, 1, 3, 4]].max().item(),
                  "gate_grad": chunks[[2, 5]].min().item()}
        for p in block.parameters():
            p -= lr * p.grad
        result["condition_effect"] = (block(x, c) - block(x, c_other)).abs().max().item()
    return result
