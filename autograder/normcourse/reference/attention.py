r"""Measurements on attention and on Transformers at initialization.

* :func:`attention_entropy`: how spread out each row of an attention matrix is (numpy).
* :func:`per_layer_grad_norms`: the per-block gradient norm of the FFN's second weight at
  initialization, the quantity Xiong et al. (2020) use to compare Post-LN and Pre-LN (torch).
* :func:`compare_placements`: that measurement for Post-LN and Pre-LN over a range of depths.

torch is imported inside the two torch functions only: :func:`attention_entropy` is plain numpy
and accepts torch tensors as well as arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["attention_entropy", "per_layer_grad_norms", "compare_placements"]


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
        probs = probs.detach().cpu().numpy()
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


def _ffn_second_weight(block):
    return block.ffn.fc2.weight


def per_layer_grad_norms(model, tokens, targets,
                         weight_of: Callable | None = None) -> np.ndarray:
    r"""Frobenius norm of :math:`\partial L / \partial W_2^{(l)}` for every block :math:`l`.

    .. math::
        g_l = \Big\| \frac{\partial L}{\partial W_2^{(l)}} \Big\|_F, \qquad
        L = \frac{1}{BS} \sum_{b,s} -\log \mathrm{softmax}(\mathrm{logits}_{b,s})_{\mathrm{target}_{b,s}}

    where :math:`W_2^{(l)}` is the second weight of block :math:`l`'s feed-forward network. Measured
    on a freshly initialized model this is the quantity Xiong et al. (2020), "On Layer Normalization
    in the Transformer Architecture" (ICML), compare between Post-LN and Pre-LN. Gradients are taken
    with ``torch.autograd.grad``, so the model's ``.grad`` fields are left untouched.

    Args:
        model: a module with ``model.blocks`` (e.g. :class:`normcourse.transformer.TinyTransformer`)
            whose ``model(tokens)`` returns logits of shape :math:`(B, S, V)`.
        tokens: integer tensor :math:`(B, S)`.
        targets: integer tensor :math:`(B, S)` of target classes.
        weight_of: maps a block to the weight to measure. Default: ``block.ffn.fc2.weight``.

    Returns:
        float64 array of shape ``(len(model.blocks),)``, first block first.
    """
    import torch
    import torch.nn.functional as F

    weight_of = weight_of or _ffn_second_weight
    weights = [weight_of(block) for block in model.blocks]
    logits = model(tokens)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    grads = torch.autograd.grad(loss, weights)
    return np.array([torch.linalg.matrix_norm(g).item() for g in grads], dtype=np.float64)


def compare_placements(depths: Sequence[int] = (2, 4, 6, 8, 12, 16, 20, 24), d_model: int = 128,
                       n_heads: int = 4, vocab: int = 100, seq_len: int = 32, batch: int = 16,
                       init: str = "xavier", placements: Sequence[str] = ("post", "pre"),
                       norm: str = "layer_norm", seed: int = 0) -> dict[str, dict[int, np.ndarray]]:
    r"""Per-block FFN gradient norms at initialization, Post-LN versus Pre-LN, for several depths.

    For every placement and depth a :class:`~normcourse.transformer.TinyTransformer` is built from
    ``seed``, fed the same batch of uniformly random tokens with uniformly random targets (so no
    structure in the data favours either model), and measured with :func:`per_layer_grad_norms`.
    The global torch RNG is left as it was.

    Args:
        depths: numbers of blocks to try. Default: 2 to 24.
        d_model, n_heads, vocab, seq_len, batch: model and batch sizes (defaults: 128, 4, 100, 32, 16).
        init: ``"xavier"`` (Xiong et al.'s setting) or ``"default"``.
        placements: which of ``"post"``, ``"pre"`` to measure.
        norm: ``"layer_norm"`` (or ``"rms_norm"`` for Pre only).
        seed: seeds the data and every model.

    Returns:
        ``{placement: {depth: array of shape (depth,)}}``.

    Example::

        >>> out = compare_placements(depths=(2, 4), d_model=32, n_heads=2)
        >>> out["post"][4].shape
        (4,)
    """
    import torch

    from ..transformer import TinyTransformer

    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch, seq_len), generator=generator)
    targets = torch.randint(0, vocab, (batch, seq_len), generator=generator)
    results: dict[str, dict[int, np.ndarray]] = {}
    for placement in placements:
        results[placement] = {}
        for depth in depths:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = TinyTransformer(vocab=vocab, d_model=d_model, n_heads=n_heads, depth=depth,
                                        seq_len=seq_len, placement=placement, init=init, norm=norm)
            results[placement][depth] = per_layer_grad_norms(model, tokens, targets)
    return results
