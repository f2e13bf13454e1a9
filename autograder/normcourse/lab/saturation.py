r"""Attention saturation: how attention logits, entropies and the softmax's gradient respond to scale (torch).

A head computes logits :math:`z_{ij} = q_i^\top k_j/\sqrt{d_h}` with :math:`q = W_Q x + b_Q` and
:math:`k = W_K x + b_K`. With zero biases, multiplying the input (or both :math:`W_Q` and :math:`W_K`) by
:math:`c` multiplies every logit by exactly :math:`c^2`; with non-zero biases only approximately, and only
for large :math:`c`. Large logits make the softmax nearly one-hot, and a nearly one-hot softmax passes
almost no gradient.

* :func:`softmax_jacobian_norm`: the Frobenius norm of the softmax Jacobian
  :math:`\operatorname{diag}(p) - pp^\top` of every row, in closed form;
* :func:`attention_saturation`: logits, entropies and Jacobian norms of one attention layer as the input
  or the query/key weights are scaled, with or without a LayerNorm before the projections and with or
  without QK-norm, over several seeds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..reference.attention import attention_entropy
from .transformer import MultiHeadSelfAttention

__all__ = ["softmax_jacobian_norm", "attention_saturation"]


def softmax_jacobian_norm(p: torch.Tensor) -> torch.Tensor:
    r"""Frobenius norm of :math:`J = \operatorname{diag}(p) - pp^\top` for every probability row.

    .. math::
        \|J\|_F^2 = \sum_i p_i^2 - 2\sum_i p_i^3 + \Big(\sum_i p_i^2\Big)^2

    (expand :math:`\sum_{ij}(\delta_{ij}p_i - p_ip_j)^2`). It is largest for uniform rows and 0 at a
    vertex of the simplex (one-hot rows).

    Shape:
        - p: :math:`(*, S)`, rows summing to 1. Output: :math:`(*)`.

    Example::

        >>> softmax_jacobian_norm(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
        tensor([0.0000, 0.5000])
    """
    p2, p3 = (p ** 2).sum(-1), (p ** 3).sum(-1)
    return torch.sqrt((p2 - 2 * p3 + p2 ** 2).clamp_min(0))


def attention_saturation(scales: Sequence[float], seeds: Sequence[int] = (0, 1, 2, 3, 4),
                         scale_of: str = "input", pre_norm: bool = False, qk_norm: bool = False,
                         d_model: int = 128, n_heads: int = 4, seq_len: int = 32,
                         batch: int = 8) -> dict[str, np.ndarray]:
    r"""Mean attention entropy, softmax Jacobian norm and largest logit as a scale :math:`c` grows.

    For each seed: one :class:`~normcourse.lab.transformer.MultiHeadSelfAttention` with Xavier-uniform
    weights and **zero biases** (so logits scale exactly like :math:`c^2`), and a batch of standard
    normal token vectors :math:`x` (unit variance per entry). For each :math:`c`:

    - ``scale_of="input"``: the layer sees :math:`c\,x`, or :math:`\mathrm{LN}(c\,x)` with ``pre_norm``;
    - ``scale_of="weights"``: :math:`W_Q` and :math:`W_K` are multiplied by :math:`c`; the layer sees
      :math:`x`, or :math:`\mathrm{LN}(x)` with ``pre_norm``.

    ``qk_norm`` adds a LayerNorm on each head's queries and keys.

    Args:
        scales: the values of :math:`c`.
        seeds: weights and inputs per seed. Default: (0, 1, 2, 3, 4).
        scale_of: ``"input"`` or ``"weights"``. Default: "input".
        pre_norm: LayerNorm (no affine, eps 1e-5) before the projections. Default: False.
        qk_norm: QK-norm. Default: False.
        d_model, n_heads, seq_len, batch: sizes (defaults 128, 4, 32, 8).

    Returns:
        ``{"entropy", "softmax_jacobian", "max_logit"}``, each an array ``(len(seeds), len(scales))``:
        the mean row entropy in nats (:func:`normcourse.reference.attention_entropy`), the mean
        Frobenius norm of the softmax Jacobian, and the largest :math:`|z_{ij}|`.

    Example::

        >>> out = attention_saturation([1.0, 10.0], seeds=(0,), d_model=16, n_heads=2, seq_len=4, batch=2)
        >>> bool(out["entropy"][0, 1] < out["entropy"][0, 0])
        True
    """
    if scale_of not in ("input", "weights"):
        raise ValueError(f"scale_of must be 'input' or 'weights', got {scale_of!r}")
    shape = (len(seeds), len(scales))
    out = {key: np.empty(shape) for key in ("entropy", "softmax_jacobian", "max_logit")}
    for i, seed in enumerate(seeds):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            attention = MultiHeadSelfAttention(d_model, n_heads, qk_norm=qk_norm)
            for linear in (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj):
                torch.nn.init.xavier_uniform_(linear.weight)
                torch.nn.init.zeros_(linear.bias)
            tokens = torch.randn(batch, seq_len, d_model)
        with torch.no_grad():
            query_key = [attention.q_proj.weight.clone(), attention.k_proj.weight.clone()]
            for j, c in enumerate(scales):
                x = c * tokens if scale_of == "input" else tokens
                if scale_of == "weights":
                    attention.q_proj.weight.copy_(c * query_key[0])
                    attention.k_proj.weight.copy_(c * query_key[1])
                x = F.layer_norm(x, (d_model,)) if pre_norm else x
                logits = attention.logits(x)
                probs = torch.softmax(logits, dim=-1)
                out["entropy"][i, j] = attention_entropy(probs.double().numpy()).mean()
                out["softmax_jacobian"][i, j] = softmax_jacobian_norm(probs.double()).mean().item()
                out["max_logit"][i, j] = logits.abs().max().item()
    return out
