r"""Attention entropy: how spread out each row of an attention matrix is (numpy).

The torch measurements on Transformers (per-block gradient norms, Post-LN versus Pre-LN) are in
:mod:`normcourse.lab.placements`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["attention_entropy"]


def attention_entropy(probs) -> np.ndarray:
    r"""Shannon entropy, in nats, of every row of an attention matrix.

    .. math::
        H(p) = -\sum_{j=1}^{S} p_j \log p_j, \qquad 0 \log 0 := 0

    :math:`H` ranges from 0 (all mass on one key: a saturated softmax) to :math:`\log S` (uniform
    attention over :math:`S` keys).

    Args:
        probs: attention probabilities (numpy array or torch tensor), non-negative, each row along
            the last axis summing to 1.

    Shape:
        - Input: :math:`(*, S)`, e.g. :math:`(B, H, S, S)`.
        - Output: :math:`(*)`, float64.

    Example::

        >>> attention_entropy(np.full((2, 4), 0.25))    # uniform rows: log 4
        array([1.38629436, 1.38629436])
        >>> attention_entropy(np.eye(3))                 # one-hot rows
        array([0., 0., 0.])
    """
    if hasattr(probs, "detach"):                         # a torch tensor, possibly requiring grad
        probs = probs.detach().cpu().numpy()             # (duck-typed: this module never imports torch)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim < 1 or p.shape[-1] == 0:
        raise ValueError(f"probs must have a non-empty last axis, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probs must be finite and non-negative (softmax outputs)")
    row_sums = p.sum(axis=-1)
    worst = np.max(np.abs(row_sums - 1.0))
    if worst > 1e-3:   # float32 softmax rows sum to 1 within ~1e-6 * S; 1e-3 flags logits passed by mistake
        raise ValueError(f"every row of probs must sum to 1 (the output of a softmax); the worst row sums "
                         f"to {1.0 + worst if np.any(row_sums > 1) else 1.0 - worst:.6g}")
    safe = np.where(p > 0, p, 1.0)                       # log(1) = 0 implements 0 log 0 = 0
    return 0.0 - np.sum(p * np.log(safe), axis=-1)      # 0.0 - x, not -x: no negative zeros
