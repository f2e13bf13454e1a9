r"""A tiny Transformer whose normalization can be moved around: Post-LN, Pre-LN, or Pre-RMSNorm.

The model exists to *measure* things at initialization (per-layer gradient norms, attention
entropies), so everything that matters for those measurements is explicit: attention computes its
softmax by hand and can return the probabilities, the two residual placements are one small
function (:func:`residual`), and the initialization is a named choice.

Each block has two sublayers, multi-head self-attention and a two-layer ReLU feed-forward network
(FFN), each wrapped by a residual connection with a normalization :math:`N` (LayerNorm or RMSNorm):

.. math::
    \text{Post-LN:}\quad y = N(x + F(x)) \qquad\qquad \text{Pre-LN:}\quad y = x + F(N(x))

Pre-LN adds one final normalization after the last block (the residual stream is otherwise never
normalized before the output head), as in Xiong et al. (2020), "On Layer Normalization in the
Transformer Architecture", ICML, and in GPT-2 and LLaMA.

Example::

    >>> import torch
    >>> from normcourse.lab.transformer import TinyTransformer
    >>> _ = torch.manual_seed(0)
    >>> model = TinyTransformer(vocab=64, d_model=32, n_heads=4, depth=2, seq_len=8, placement="pre")
    >>> tokens = torch.randint(0, 64, (3, 8))
    >>> logits, probs = model(tokens, return_attention=True)
    >>> logits.shape, len(probs), probs[0].shape
    (torch.Size([3, 8, 64]), 2, torch.Size([3, 4, 8, 8]))
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["PLACEMENTS", "NORMS", "INITS", "residual", "make_norm", "MultiHeadSelfAttention",
           "FeedForward", "TransformerBlock", "TinyTransformer"]

PLACEMENTS = ("pre", "post")
NORMS = ("layer_norm", "rms_norm")
INITS = ("xavier", "default")


def residual(x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor],
             norm: Callable[[torch.Tensor], torch.Tensor], placement: str) -> torch.Tensor:
    r"""One residual sublayer with its normalization placed before or after the sum.

    .. math::
        \text{"post"}:\; y = N(x + F(x)) \qquad \text{"pre"}:\; y = x + F(N(x))

    Args:
        x: the residual stream.
        sublayer: :math:`F` (attention or FFN).
        norm: :math:`N` (LayerNorm or RMSNorm).
        placement: ``"pre"`` or ``"post"``.

    Shape:
        - x: :math:`(B, S, D)` (any shape ``sublayer`` and ``norm`` accept); output: same shape.
    """
    if placement == "pre":
        return x + sublayer(norm(x))
    if placement == "post":
        return norm(x + sublayer(x))
    raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")


def make_norm(norm: str, d_model: int, eps: float | None) -> nn.Module:
    """``nn.LayerNorm`` or ``nn.RMSNorm`` over the last dimension (eps=None: 1e-5 for LN, finfo eps for RMS)."""
    if norm == "layer_norm":
        return nn.LayerNorm(d_model, eps=1e-5 if eps is None else eps)
    if norm == "rms_norm":
        return nn.RMSNorm(d_model, eps=eps)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


class MultiHeadSelfAttention(nn.Module):
    r"""Multi-head self-attention with the softmax written out, so its probabilities can be returned.

    .. math::
        P_h = \mathrm{softmax}\!\left(\frac{Q_h K_h^\top}{\sqrt{d_h}}\right), \qquad
        \mathrm{out} = \big[P_1 V_1, \dots, P_H V_H\big] W_O

    with :math:`Q = x W_Q`, :math:`K = x W_K`, :math:`V = x W_V` split into :math:`H` heads of width
    :math:`d_h = D / H` (Vaswani et al. 2017). Q, K and V have separate ``D x D`` projections so that
    Xavier initialization sees the fan-in and fan-out of each.

    Args:
        d_model: width :math:`D`.
        n_heads: number of heads :math:`H` (must divide :math:`D`).
        causal: if True, position :math:`i` attends only to positions :math:`j \le i`. Default: False.

    Shape:
        - Input: :math:`(B, S, D)`. Output: :math:`(B, S, D)` and the probabilities :math:`(B, H, S, S)`.
    """

    def __init__(self, d_model: int, n_heads: int, causal: bool = False):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide d_model={d_model}")
        self.n_heads, self.head_dim, self.causal = n_heads, d_model // n_heads, causal
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, s, _ = t.shape
        return t.view(b, s, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, S, d_h)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The scaled scores :math:`Q_h K_h^T / \\sqrt{d_h}` before the mask and softmax, shape (B, H, S, S)."""
        q, k = self._heads(self.q_proj(x)), self._heads(self.k_proj(x))
        return q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.logits(x)
        if self.causal:
            s = x.shape[1]
            future = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        mixed = probs @ self._heads(self.v_proj(x))                  # (B, H, S, d_h)
        b, _, s, _ = mixed.shape
        return self.out_proj(mixed.transpose(1, 2).reshape(b, s, -1)), probs


class FeedForward(nn.Module):
    r"""The position-wise two-layer network :math:`F(x) = W_2\,\mathrm{ReLU}(W_1 x + b_1) + b_2`.

    ``fc2.weight`` is :math:`W_2`, the weight whose gradient Xiong et al. (2020) track per layer.

    Shape:
        - Input: :math:`(*, D)`. Output: :math:`(*, D)`; the hidden width is ``d_ff``.
    """

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Attention sublayer then FFN sublayer, each inside :func:`residual` with its own normalization."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, placement: str = "pre",
                 norm: str = "layer_norm", eps: float | None = None, causal: bool = False):
        super().__init__()
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        self.placement = placement
        self.attn = MultiHeadSelfAttention(d_model, n_heads, causal=causal)
        self.ffn = FeedForward(d_model, d_ff)
        self.norm_attn = make_norm(norm, d_model, eps)
        self.norm_ffn = make_norm(norm, d_model, eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept = []

        def attend(h):
            out, probs = self.attn(h)
            kept.append(probs)
            return out

        x = residual(x, attend, self.norm_attn, self.placement)
        x = residual(x, self.ffn, self.norm_ffn, self.placement)
        return x, kept[0]


class TinyTransformer(nn.Module):
    r"""Token and position embeddings, ``depth`` blocks, (a final norm for Pre-LN), a linear head.

    Args:
        vocab: vocabulary size. Default: 64.
        d_model: width :math:`D`. Default: 128.
        n_heads: attention heads. Default: 4.
        depth: number of blocks. Default: 6.
        seq_len: the longest sequence (learned position embeddings). Default: 32.
        placement: ``"pre"`` (:math:`x + F(N(x))`) or ``"post"`` (:math:`N(x + F(x))`). Default: "pre".
        init: ``"xavier"`` (Xavier-uniform weights for every linear map and embedding, zero biases,
            unit gains: the setting of Xiong et al. 2020) or ``"default"`` (PyTorch's own
            initialization). Default: "xavier".
        norm: ``"layer_norm"`` or ``"rms_norm"``; RMSNorm is only offered with Pre-placement, as in
            current LLMs. Default: "layer_norm".
        d_ff: hidden width of the FFN. Default: ``4 * d_model``.
        eps: eps of every normalization; None means 1e-5 for LayerNorm and ``finfo(dtype).eps`` for
            ``nn.RMSNorm``. Default: None.
        causal: causal attention mask. Default: False.

    Shape:
        - Input: integer tokens :math:`(B, S)` with :math:`S \le` ``seq_len``.
        - Output: logits :math:`(B, S, \text{vocab})`; with ``return_attention=True`` also a list of
          ``depth`` tensors of attention probabilities, each :math:`(B, H, S, S)`.

    Example::

        >>> model = TinyTransformer(vocab=16, d_model=32, n_heads=2, depth=3, seq_len=8, placement="post")
        >>> model(torch.randint(0, 16, (2, 8))).shape
        torch.Size([2, 8, 16])
    """

    def __init__(self, vocab: int = 64, d_model: int = 128, n_heads: int = 4, depth: int = 6,
                 seq_len: int = 32, placement: str = "pre", init: str = "xavier",
                 norm: str = "layer_norm", d_ff: int | None = None, eps: float | None = None,
                 causal: bool = False):
        super().__init__()
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if norm == "rms_norm" and placement != "pre":
            raise ValueError("norm='rms_norm' is offered with placement='pre' only (the LLM recipe)")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.placement, self.norm_kind, self.seq_len = placement, norm, seq_len
        self.token_embedding = nn.Embedding(vocab, d_model)
        self.position_embedding = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, d_ff or 4 * d_model, placement, norm, eps, causal)
            for _ in range(depth))
        # Post-LN already ends in a norm; Pre-LN needs one before the head.
        self.final_norm = make_norm(norm, d_model, eps) if placement == "pre" else nn.Identity()
        self.head = nn.Linear(d_model, vocab)
        if init == "xavier":
            self._xavier_init()

    def _xavier_init(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.xavier_uniform_(module.weight)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token plus position embeddings, shape (B, S, D): the input of the first block."""
        if tokens.shape[-1] > self.seq_len:
            raise ValueError(f"sequence length {tokens.shape[-1]} exceeds seq_len={self.seq_len}")
        positions = torch.arange(tokens.shape[-1], device=tokens.device)
        return self.token_embedding(tokens) + self.position_embedding(positions)

    def forward(self, tokens: torch.Tensor, return_attention: bool = False):
        x = self.embed(tokens)
        attention = []
        for block in self.blocks:
            x, probs = block(x)
            attention.append(probs)
        logits = self.head(self.final_norm(x))
        return (logits, attention) if return_attention else logits
