r"""Post-LN versus Pre-LN at initialization: per-block gradient norms of tiny Transformers (torch).

* :func:`per_layer_grad_norms`: the per-block gradient norm of the FFN's second weight at
  initialization, the quantity Xiong et al. (2020) use to compare Post-LN and Pre-LN.
* :func:`compare_placements`: that measurement for Post-LN and Pre-LN over a range of depths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .transformer import TinyTransformer

__all__ = ["per_layer_grad_norms", "compare_placements"]


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
        model: a module with ``model.blocks`` (e.g. :class:`normcourse.lab.transformer.TinyTransformer`)
            whose ``model(tokens)`` returns logits of shape :math:`(B, S, V)`.
        tokens: integer tensor :math:`(B, S)`.
        targets: integer tensor :math:`(B, S)` of target classes.
        weight_of: maps a block to the weight to measure. Default: ``block.ffn.fc2.weight``.

    Returns:
        float64 array of shape ``(len(model.blocks),)``, first block first.
    """
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

    For every placement and depth a :class:`~normcourse.lab.transformer.TinyTransformer` is built from
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
