r"""Training tiny Transformers on a toy task, several seeds and settings at once (torch).

The warm-up experiment of chapter 6 trains a :class:`~normcourse.lab.transformer.TinyTransformer` to
output the previous token of a random sequence, with Adam, with and without a learning-rate warm-up,
for several placements and seeds. Models of the same layout (Post-LN, DeepNorm and Admin share one;
Pre-LN and sandwich-LN have their own) are stacked (:func:`torch.func.stack_module_state`) and run
as one batched model (:func:`stacked_logits`, batched matrix products over the models), so a handful
of tiny models costs little more than one: at this size the time goes into per-operation overhead,
not arithmetic.

* :func:`adam_step`: Adam on stacked parameters with one learning rate per model (the same update as
  ``torch.optim.Adam``, which takes one learning rate per parameter group, not per slice of a tensor);
* :func:`previous_token_batch`: the task's data;
* :func:`train_previous_token`: the experiment driver.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import stack_module_state

from .transformer import TinyTransformer

__all__ = ["AdamState", "adam_step", "previous_token_batch", "Run", "stacked_logits", "train_previous_token"]


class AdamState(NamedTuple):
    """Adam's running moments for a stacked parameter tensor, and the number of steps taken."""

    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    step: int = 0


def adam_step(param: torch.Tensor, grad: torch.Tensor, state: AdamState, lr: torch.Tensor,
              betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> AdamState:
    r"""One Adam update in place, with a learning rate per model (per row of ``param``).

    .. math::
        m \leftarrow \beta_1 m + (1 - \beta_1) g, \quad v \leftarrow \beta_2 v + (1 - \beta_2) g^2, \quad
        \theta \leftarrow \theta - \frac{\eta_k}{1 - \beta_1^t}\,
        \frac{m}{\sqrt{v}/\sqrt{1 - \beta_2^t} + \epsilon}

    in the order of operations of ``torch.optim.Adam`` (Kingma & Ba 2015), where :math:`\eta_k` is the
    learning rate of model :math:`k`.

    Args:
        param: stacked parameters :math:`(K, P)`, updated in place (outside autograd).
        grad: their gradients, same shape.
        state: the moments from the previous step (zeros and step 0 at the start).
        lr: learning rates, shape :math:`(K,)`.
        betas: :math:`(\beta_1, \beta_2)`. Default: (0.9, 0.999).
        eps: Default: 1e-8.

    Returns:
        the new :class:`AdamState`.

    Example::

        >>> p, g = torch.zeros(2, 3), torch.ones(2, 3)
        >>> state = adam_step(p, g, AdamState(torch.zeros(2, 3), torch.zeros(2, 3)), torch.tensor([0.1, 0.2]))
        >>> p[:, 0]                              # the first step moves by lr * sign(g)
        tensor([-0.1000, -0.2000])
    """
    beta1, beta2 = betas
    step = state.step + 1
    with torch.no_grad():
        exp_avg = state.exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq = state.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / np.sqrt(1 - beta2 ** step)).add_(eps)
        step_size = (lr / (1 - beta1 ** step)).reshape(-1, *[1] * (param.dim() - 1))
        param.sub_(step_size * exp_avg / denom)
    return AdamState(exp_avg, exp_avg_sq, step)


def previous_token_batch(generator: torch.Generator, batch: int = 16, seq_len: int = 8,
                         vocab: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniformly random tokens :math:`(B, S)` and, as targets, each position's previous token (cyclically).

    Position 0's target is the last token, so every target is a token of the same sequence: the task
    needs attention (a position must look one step back) and nothing else.
    """
    tokens = torch.randint(0, vocab, (batch, seq_len), generator=generator)
    return tokens, tokens.roll(1, dims=1)


class Run(NamedTuple):
    """One training run: a placement (see :data:`~normcourse.lab.transformer.VARIANTS`), a number of
    warm-up steps (0: none) and a seed (model weights from ``seed``, data from ``seed + 100``)."""

    placement: str
    warmup_steps: int
    seed: int


def _layout(placement: str) -> str:
    """Runs with the same layout have the same parameters and buffers, so they can be stacked."""
    return "scaled_post" if placement in ("post", "deepnorm", "admin") else placement


def _build(run: Run, model_kwargs: dict, profile_batch: dict) -> TinyTransformer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed)
        model = TinyTransformer(placement=run.placement, **model_kwargs)
    if run.placement == "admin":
        generator = torch.Generator().manual_seed(run.seed + 200)   # a profiling batch of its own
        model.admin_profile(previous_token_batch(generator, **profile_batch)[0])
    return model


def train_previous_token(runs: Sequence[Run], steps: int = 150, lr: float = 3e-3,
                         betas: tuple[float, float] = (0.9, 0.98), batch: int = 16, seq_len: int = 8,
                         vocab: int = 16, d_model: int = 32, n_heads: int = 2, depth: int = 6,
                         d_ff: int | None = None) -> np.ndarray:
    r"""Train one TinyTransformer per run on "output the previous token" with Adam; return the loss curves.

    Every run draws its own batches (``previous_token_batch`` with generator seed ``seed + 100``),
    starts from weights seeded by ``seed`` (Xavier initialization), and uses the learning rate
    :math:`\eta_t = \eta \min(1, t / T_{\text{warm-up}})` at step :math:`t = 1, 2, \dots` (constant
    :math:`\eta` without warm-up). Runs with the same parameter layout are trained as one batched
    model (:func:`torch.func.stack_module_state`, :func:`stacked_logits`); a run's curve does not depend
    on which other runs share its batch, up to float32 rounding.

    Args:
        runs: the runs, e.g. ``[Run("post", 0, s) for s in range(5)]``.
        steps: Adam steps. Default: 150.
        lr: peak learning rate :math:`\eta`. Default: 3e-3.
        betas: Adam's betas. Default: (0.9, 0.98), as in Vaswani et al. (2017).
        batch, seq_len, vocab: the task's sizes (defaults 16, 8, 16).
        d_model, n_heads, depth, d_ff: the model's sizes (defaults 32, 2, 6 and 4 * d_model).

    Returns:
        training losses (mean cross-entropy of each step's batch, before the update), float64 array of
        shape ``(len(runs), steps)`` in the order of ``runs``.

    Example::

        >>> curves = train_previous_token([Run("pre", 0, 0), Run("post", 10, 0)], steps=3, depth=2)
        >>> curves.shape
        (2, 3)
    """
    model_kwargs = dict(vocab=vocab, d_model=d_model, n_heads=n_heads, depth=depth, seq_len=seq_len, d_ff=d_ff)
    profile_batch = dict(batch=batch, seq_len=seq_len, vocab=vocab)
    curves = np.empty((len(runs), steps))
    groups: dict[str, list[int]] = {}
    for index, run in enumerate(runs):
        groups.setdefault(_layout(run.placement), []).append(index)
    for members in groups.values():
        group = [runs[i] for i in members]
        curves[members] = _train_group(group, [_build(r, model_kwargs, profile_batch) for r in group],
                                       steps, lr, betas, profile_batch)
    return curves


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Every model's ``nn.Linear``: x (K, N, in), weight (K, out, in), bias (K, out) -> (K, N, out)."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Every model's ``nn.LayerNorm`` over the last axis, with its own gain and bias (K, D)."""
    return torch.addcmul(bias.unsqueeze(1), F.layer_norm(x, x.shape[-1:], eps=eps), weight.unsqueeze(1))


def stacked_logits(base: TinyTransformer, weights: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    r"""The logits of :math:`K` models with ``base``'s layout, each with its own weights and tokens.

    ``weights`` maps every name of ``base.state_dict()`` (parameters and the ``residual_scale``
    buffers) to a tensor of shape :math:`(K, \ldots)` whose slice :math:`k` is model :math:`k`'s.
    The forward pass is :class:`~normcourse.lab.transformer.TinyTransformer`'s, written with batched
    matrix products over the models: the same arithmetic as :math:`K` separate calls (up to float32
    rounding), at about the cost of one call on :math:`K` times the tokens. ``torch.vmap`` over
    ``functional_call`` computes the same thing about 1.5 times slower at these sizes: its
    per-operation overhead is what a tiny model's time goes into.

    Supports LayerNorm, non-causal attention without QK-norm (what :func:`train_previous_token` builds).

    Args:
        base: a model of the layout (its own weights are not used; it may live on the meta device).
        weights: stacked state, as :func:`torch.func.stack_module_state` gives for parameters and buffers.
        tokens: integer tensor :math:`(K, B, S)`.

    Returns:
        logits :math:`(K, B, S, \text{vocab})`.
    """
    first = base.blocks[0]
    if base.norm_kind != "layer_norm" or first.attn.causal or not isinstance(first.attn.q_norm, torch.nn.Identity):
        raise ValueError("stacked_logits supports LayerNorm, non-causal attention without QK-norm")
    k, b, s = tokens.shape
    table = weights["token_embedding.weight"]
    d = table.shape[-1]
    heads, head_dim = first.attn.n_heads, first.attn.head_dim
    x = torch.gather(table, 1, tokens.reshape(k, b * s, 1).expand(-1, -1, d))
    x = x + weights["position_embedding.weight"][:, :s].repeat(1, b, 1)                 # (K, B*S, D)

    def norm(h, name):
        eps = base.get_submodule(name).eps
        return _layer_norm(h, weights[name + ".weight"], weights[name + ".bias"], eps)

    def linear(h, name):
        return _linear(h, weights[name + ".weight"], weights[name + ".bias"])

    def attention(h, prefix):
        def split(t):                                      # (K, B*S, D) -> (K*B, H, S, d_h)
            return t.reshape(k * b, s, heads, head_dim).transpose(1, 2)
        q, key, v = (split(linear(h, f"{prefix}attn.{n}_proj")) for n in "qkv")
        probs = torch.softmax(q @ key.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)
        return linear((probs @ v).transpose(1, 2).reshape(k, b * s, d), prefix + "attn.out_proj")

    def ffn(h, prefix):
        return linear(torch.relu(linear(h, prefix + "ffn.fc1")), prefix + "ffn.fc2")

    for i, block in enumerate(base.blocks):
        prefix = f"blocks.{i}."
        for index, (sublayer, name) in enumerate(((attention, "attn"), (ffn, "ffn"))):
            norm_in = f"{prefix}norm_{name}"
            if block.placement == "pre":
                x = x + sublayer(norm(x, norm_in), prefix)
            elif block.placement == "sandwich":
                x = x + norm(sublayer(norm(x, norm_in), prefix), norm_in + "_out")
            else:                                          # y = N(alpha x + F(x)); alpha = 1 is Post-LN
                alpha = weights[prefix + "residual_scale"][:, index].reshape(k, 1, 1)
                x = norm(alpha * x + sublayer(x, prefix), norm_in)
    if isinstance(base.final_norm, torch.nn.LayerNorm):
        x = norm(x, "final_norm")
    return _linear(x, weights["head.weight"], weights["head.bias"]).reshape(k, b, s, -1)


def _train_group(group: list[Run], models: list[TinyTransformer], steps: int, lr: float,
                 betas: tuple[float, float], batch_kwargs: dict) -> np.ndarray:
    params, buffers = stack_module_state(models)
    names = list(params)
    shapes = [params[name].shape[1:] for name in names]
    sizes = [int(np.prod(shape)) for shape in shapes]
    flat = torch.cat([params[name].detach().reshape(len(models), -1) for name in names], 1).requires_grad_()
    base = copy.deepcopy(models[0]).to("meta")      # the layout only; weights come from `flat`
    generators = [torch.Generator().manual_seed(run.seed + 100) for run in group]
    state = AdamState(torch.zeros_like(flat), torch.zeros_like(flat))
    losses = torch.empty(len(group), steps)
    for step in range(steps):
        tokens, targets = (torch.stack(t) for t in zip(*(previous_token_batch(g, **batch_kwargs)
                                                        for g in generators)))
        weights = {n: t.reshape(len(group), *shape) for n, t, shape in zip(names, flat.split(sizes, 1), shapes)}
        logits = stacked_logits(base, weights | buffers, tokens)
        loss = F.cross_entropy(logits.flatten(0, 2), targets.flatten(), reduction="none")
        per_model = loss.view(len(group), -1).mean(1)
        (grad,) = torch.autograd.grad(per_model.sum(), flat)
        ramp = torch.tensor([min(1.0, (step + 1) / run.warmup_steps) if run.warmup_steps else 1.0
                             for run in group])
        state = adam_step(flat, grad, state, lr * ramp, betas)
        losses[:, step] = per_model.detach()
    return losses.double().numpy()
