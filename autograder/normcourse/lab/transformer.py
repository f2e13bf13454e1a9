r"""A tiny Transformer whose normalization can be moved around: Post-LN, Pre-LN (LayerNorm or RMSNorm),
and the variants built on them (DeepNorm, Admin, sandwich-LN, QK-norm).

The model exists to *measure* things (per-layer gradient norms, attention entropies, the output
change after one optimizer step), so everything that matters for those measurements is explicit:
attention computes its softmax by hand and can return the probabilities, each residual placement is
one small function (:func:`residual`, :func:`scaled_residual`, :func:`sandwich_residual`), and the
initialization is a named choice.

Each block has two sublayers, multi-head self-attention and a two-layer ReLU feed-forward network
(FFN), each wrapped by a residual connection with a normalization :math:`N` (LayerNorm or RMSNorm):

.. math::
    \text{Post-LN:}\quad y = N(x + F(x)) \qquad \text{Pre-LN:}\quad y = x + F(N(x)) \qquad
    \text{sandwich:}\quad y = x + N'(F(N(x))) \qquad \text{DeepNorm, Admin:}\quad y = N(\alpha x + F(x))

Pre-LN (and sandwich-LN) add one final normalization after the last block (the residual stream is
otherwise never normalized before the output head), as in Xiong et al. (2020), "On Layer
Normalization in the Transformer Architecture", ICML, and in GPT-2 and LLaMA. The variants:

- ``"deepnorm"``: Wang et al. (2022), "DeepNet: Scaling Transformers to 1,000 Layers":
  :math:`\alpha = (2L)^{1/4}` for an encoder of :math:`L` blocks, and the FFN, value and output
  projections initialized with Xavier gain :math:`\beta = (8L)^{-1/4}`;
- ``"admin"``: Liu et al. (2020), "Understanding the Difficulty of Training Transformers", EMNLP:
  :math:`\alpha_i` set by a profiling forward pass (:meth:`TinyTransformer.admin_profile`);
- ``"sandwich"``: Ding et al. (2021), CogView (NeurIPS); Kim et al. (2025) call it Peri-LN;
- ``qk_norm=True``: LayerNorm on each head's queries and keys before the dot product (Dehghani et
  al. 2023, ViT-22B; Henry et al. 2020 normalize to unit length instead).

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

__all__ = ["PLACEMENTS", "VARIANTS", "NORMS", "INITS", "residual", "scaled_residual", "sandwich_residual",
           "deepnorm_constants", "make_norm", "MultiHeadSelfAttention", "FeedForward", "TransformerBlock",
           "TinyTransformer"]

#: The two placements :func:`residual` implements.
PLACEMENTS = ("pre", "post")
#: Every block layout :class:`TransformerBlock` and :class:`TinyTransformer` accept.
VARIANTS = ("pre", "post", "sandwich", "deepnorm", "admin")
#: Variants of the form y = N(alpha x + F(x)) (Post-LN is alpha = 1); they share one parameter layout.
_SCALED_POST = ("post", "deepnorm", "admin")
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


def scaled_residual(x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor],
                    norm: Callable[[torch.Tensor], torch.Tensor], alpha) -> torch.Tensor:
    r"""A Post-LN residual sublayer whose skip connection is scaled up: DeepNorm and Admin.

    .. math::
        y = N(\alpha\, x + F(x))

    With :math:`\alpha = 1` this is Post-LN. DeepNorm (Wang et al. 2022) uses a constant
    :math:`\alpha > 1` (:func:`deepnorm_constants`); Admin (Liu et al. 2020) one :math:`\alpha` per
    sublayer, set from the variances a profiling pass measures.

    Args:
        x: the residual stream.
        sublayer: :math:`F` (attention or FFN).
        norm: :math:`N`.
        alpha: a number or a tensor that broadcasts against ``x``.

    Shape:
        - x: :math:`(B, S, D)`; output: same shape.
    """
    return norm(alpha * x + sublayer(x))


def sandwich_residual(x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor],
                      norm_in: Callable[[torch.Tensor], torch.Tensor],
                      norm_out: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    r"""Pre-LN with a second normalization on the branch output: sandwich-LN (CogView), Peri-LN.

    .. math::
        y = x + N_{\text{out}}\big(F(N_{\text{in}}(x))\big)

    Ding et al. (2021), "CogView: Mastering Text-to-Image Generation via Transformers" (NeurIPS);
    Kim et al. (2025), "Peri-LN" (ICML). Every block adds a normalized vector to the stream, so the
    stream's growth no longer depends on the size of the branch weights.

    Shape:
        - x: :math:`(B, S, D)`; output: same shape.
    """
    return x + norm_out(sublayer(norm_in(x)))


def deepnorm_constants(depth: int) -> tuple[float, float]:
    r"""DeepNorm's :math:`(\alpha, \beta)` for an encoder of ``depth`` blocks: :math:`((2L)^{1/4}, (8L)^{-1/4})`.

    Wang et al. (2022), "DeepNet: Scaling Transformers to 1,000 Layers", encoder-only setting:
    :math:`\alpha` scales the skip connection of every sublayer, :math:`\beta` is the Xavier gain of
    the FFN weights and of the value and output projections (queries and keys keep gain 1).

    Example::

        >>> alpha, beta = deepnorm_constants(8)
        >>> round(alpha, 4), round(beta, 4)
        (2.0, 0.3536)
    """
    if depth < 1:
        raise ValueError(f"depth must be positive, got {depth}")
    return (2.0 * depth) ** 0.25, (8.0 * depth) ** -0.25


def make_norm(norm: str, d_model: int, eps: float | None) -> nn.Module:
    """``nn.LayerNorm`` or ``nn.RMSNorm`` over the last dimension.

    eps=None means 1e-5 for LayerNorm and, for ``nn.RMSNorm``, PyTorch's default: the machine
    epsilon of the type the computation runs in (float32's for float16 and bfloat16 input).
    """
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

    With ``qk_norm=True`` each head's queries and keys pass through their own ``nn.LayerNorm(d_h)``
    before the dot product (QK-norm as in Dehghani et al. 2023, "Scaling Vision Transformers to 22
    Billion Parameters", ICML), so :math:`|z_{ij}| \le \sqrt{d_h}` at unit gains, whatever the weights.

    Args:
        d_model: width :math:`D`.
        n_heads: number of heads :math:`H` (must divide :math:`D`).
        causal: if True, position :math:`i` attends only to positions :math:`j \le i`. Default: False.
        qk_norm: normalize queries and keys per head. Default: False.

    Shape:
        - Input: :math:`(B, S, D)`. Output: :math:`(B, S, D)` and the probabilities :math:`(B, H, S, S)`.
    """

    def __init__(self, d_model: int, n_heads: int, causal: bool = False, qk_norm: bool = False):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide d_model={d_model}")
        self.n_heads, self.head_dim, self.causal = n_heads, d_model // n_heads, causal
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        # LayerNorm's initialization draws no random numbers, so QK-norm leaves the weights unchanged.
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, s, _ = t.shape
        return t.view(b, s, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, S, d_h)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The scaled scores :math:`Q_h K_h^T / \\sqrt{d_h}` before the mask and softmax, shape (B, H, S, S)."""
        q, k = self.q_norm(self._heads(self.q_proj(x))), self.k_norm(self._heads(self.k_proj(x)))
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
    r"""Attention sublayer then FFN sublayer, each inside the same residual placement.

    ``"pre"`` uses :func:`residual`; ``"sandwich"`` uses :func:`sandwich_residual` with a second pair of
    norms (``norm_attn_out``, ``norm_ffn_out``); ``"post"``, ``"deepnorm"`` and ``"admin"`` use
    :func:`scaled_residual` with the skip scales in the buffer ``residual_scale`` (one per sublayer,
    ones for Post-LN, where :math:`1\cdot x = x` exactly), so that the three share one parameter and
    buffer layout and can be stacked into one batched model.

    Args:
        d_model, n_heads, d_ff: widths (see :class:`TinyTransformer`).
        placement: one of :data:`VARIANTS`. Default: "pre".
        norm: ``"layer_norm"`` or ``"rms_norm"``. Default: "layer_norm".
        eps: eps of every normalization (see :func:`make_norm`). Default: None.
        causal: causal attention mask. Default: False.
        qk_norm: normalize queries and keys per head (:class:`MultiHeadSelfAttention`). Default: False.

    Shape:
        - Input: :math:`(B, S, D)`. Output: :math:`(B, S, D)` and the attention probabilities
          :math:`(B, H, S, S)`.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, placement: str = "pre",
                 norm: str = "layer_norm", eps: float | None = None, causal: bool = False,
                 qk_norm: bool = False):
        super().__init__()
        if placement not in VARIANTS:
            raise ValueError(f"placement must be one of {VARIANTS}, got {placement!r}")
        self.placement = placement
        self.attn = MultiHeadSelfAttention(d_model, n_heads, causal=causal, qk_norm=qk_norm)
        self.ffn = FeedForward(d_model, d_ff)
        self.norm_attn = make_norm(norm, d_model, eps)
        self.norm_ffn = make_norm(norm, d_model, eps)
        if placement == "sandwich":
            self.norm_attn_out = make_norm(norm, d_model, eps)
            self.norm_ffn_out = make_norm(norm, d_model, eps)
        if placement in _SCALED_POST:
            self.register_buffer("residual_scale", torch.ones(2))

    def sublayers(self) -> tuple[list, list]:
        """``(kept, [(F, N_in, N_out), ...])`` for the attention and FFN sublayers, in order.

        ``F`` of the attention sublayer appends its probabilities to ``kept``; ``N_out`` is None except
        for sandwich-LN.
        """
        kept: list[torch.Tensor] = []

        def attend(h):
            out, probs = self.attn(h)
            kept.append(probs)
            return out

        return kept, [(attend, self.norm_attn, getattr(self, "norm_attn_out", None)),
                      (self.ffn, self.norm_ffn, getattr(self, "norm_ffn_out", None))]

    def apply_sublayer(self, x: torch.Tensor, index: int, sublayer, norm, norm_out) -> torch.Tensor:
        """Sublayer ``index`` (0 attention, 1 FFN) with this block's residual placement."""
        if self.placement == "pre":
            return residual(x, sublayer, norm, "pre")
        if self.placement == "sandwich":
            return sandwich_residual(x, sublayer, norm, norm_out)
        return scaled_residual(x, sublayer, norm, self.residual_scale[index])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept, sublayers = self.sublayers()
        for index, (sublayer, norm, norm_out) in enumerate(sublayers):
            x = self.apply_sublayer(x, index, sublayer, norm, norm_out)
        return x, kept[0]


class TinyTransformer(nn.Module):
    r"""Token and position embeddings, ``depth`` blocks, (a final norm for Pre-LN), a linear head.

    Args:
        vocab: vocabulary size. Default: 64.
        d_model: width :math:`D`. Default: 128.
        n_heads: attention heads. Default: 4.
        depth: number of blocks. Default: 6.
        seq_len: the longest sequence (learned position embeddings). Default: 32.
        placement: ``"pre"`` (:math:`x + F(N(x))`), ``"post"`` (:math:`N(x + F(x))`), or one of the
            variants ``"sandwich"``, ``"deepnorm"``, ``"admin"`` (see the module docstring). Default: "pre".
        init: ``"xavier"`` (Xavier-uniform weights for every linear map and embedding, zero biases,
            unit gains: the setting of Xiong et al. 2020) or ``"default"`` (PyTorch's own
            initialization). ``"deepnorm"`` then multiplies the FFN, value and output projection
            weights by :math:`\beta` (:func:`deepnorm_constants`). Default: "xavier".
        norm: ``"layer_norm"`` or ``"rms_norm"``; RMSNorm is only offered with Pre-placement, as in
            current LLMs. Default: "layer_norm".
        d_ff: hidden width of the FFN. Default: ``4 * d_model``.
        eps: eps of every normalization; None means 1e-5 for LayerNorm and PyTorch's default for
            ``nn.RMSNorm`` (see :func:`make_norm`). Default: None.
        causal: causal attention mask. Default: False.
        qk_norm: LayerNorm on each head's queries and keys. Default: False.

    With ``placement="admin"`` the skip scales are 1 (Post-LN) until :meth:`admin_profile` sets them.
    Construction draws the same random numbers for every placement and ``qk_norm``, so one seed gives
    the same weights (up to DeepNorm's :math:`\beta`) in every variant.

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
                 causal: bool = False, qk_norm: bool = False):
        super().__init__()
        if placement not in VARIANTS:
            raise ValueError(f"placement must be one of {VARIANTS}, got {placement!r}")
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
            TransformerBlock(d_model, n_heads, d_ff or 4 * d_model, placement, norm, eps, causal, qk_norm)
            for _ in range(depth))
        # Post-LN already ends in a norm; Pre-LN (and sandwich-LN) need one before the head.
        self.final_norm = make_norm(norm, d_model, eps) if placement in ("pre", "sandwich") else nn.Identity()
        self.head = nn.Linear(d_model, vocab)
        if init == "xavier":
            self._xavier_init()
        if placement == "deepnorm":
            self._deepnorm_init(depth)

    def _xavier_init(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.xavier_uniform_(module.weight)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    @torch.no_grad()
    def _deepnorm_init(self, depth: int) -> None:
        alpha, beta = deepnorm_constants(depth)
        for block in self.blocks:
            block.residual_scale.fill_(alpha)
            for linear in (block.ffn.fc1, block.ffn.fc2, block.attn.v_proj, block.attn.out_proj):
                linear.weight.mul_(beta)

    @torch.no_grad()
    def admin_profile(self, tokens: torch.Tensor) -> torch.Tensor:
        r"""Admin's profiling pass (Liu et al. 2020): set every sublayer's skip scale :math:`\omega_i`.

        .. math::
            \omega_1 = 1, \qquad \omega_{i+1} = \sqrt{\operatorname{Var}[\omega_i x_{i-1}] +
            \operatorname{Var}[F_i(x_{i-1})]}, \qquad x_i = N(\omega_i x_{i-1} + F_i(x_{i-1}))

        with variances over all entries, as in the authors' released code (Transformer-Clinic): the
        skip connection of sublayer :math:`i` carries as much variance as a Pre-LN residual stream
        would have accumulated from the embedding and the :math:`i - 1` branches before it.

        Args:
            tokens: integer tensor :math:`(B, S)`, the profiling batch.

        Returns:
            the scales :math:`\omega`, shape ``(2 * depth,)`` (also stored in each block's ``residual_scale``).
        """
        if self.placement != "admin":
            raise ValueError(f"admin_profile needs placement='admin', not {self.placement!r}")
        x, omega, scales = self.embed(tokens), torch.ones((), dtype=self.head.weight.dtype), []
        for block in self.blocks:
            _, sublayers = block.sublayers()
            for index, (sublayer, norm, _) in enumerate(sublayers):
                branch = sublayer(x)
                block.residual_scale[index] = omega
                scales.append(omega.clone())
                next_omega = torch.sqrt((omega * x).var(unbiased=False) + branch.var(unbiased=False))
                x = norm(omega * x + branch)
                omega = next_omega
        return torch.stack(scales)

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
