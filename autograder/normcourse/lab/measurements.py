r"""Measurements of a torch model's optimization, as Santurkar et al. (2018) define them.

- :func:`internal_covariate_shift` -- Definition 2.1: how much layer :math:`i`'s gradient changes when
  the layers before it take their SGD step first.
- :func:`landscape_probe` -- Section 3: move along the gradient and record how much the loss and the
  gradient change (loss range, gradient predictiveness, effective :math:`\beta`-smoothness).

Both measurements are pure: they use ``torch.autograd.grad`` (so no ``.grad`` is touched), replay the
same randomness in every forward pass (noise generators, dropout), and put back every parameter,
buffer (BatchNorm running statistics), random state and the train/eval mode bit-exactly. The model's
mode is the caller's choice: in training mode BatchNorm uses the batch statistics, as during training.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .models import _preserved, layer_groups

__all__ = ["internal_covariate_shift", "landscape_probe"]


def _gradient(model, loss_fn, batch, params) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The loss (a scalar, or one value per replica) and the gradient of its sum with respect to ``params``."""
    x, y = batch
    loss = loss_fn(model(x), y)
    if loss.dim() > 1:
        raise ValueError(f"loss_fn must return a scalar or one loss per replica, got shape {tuple(loss.shape)}")
    grads = torch.autograd.grad(loss.sum(), params, allow_unused=True)
    return loss.detach().to(torch.float64), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _flat64(tensors: Sequence[torch.Tensor], rows: int) -> torch.Tensor:
    """Concatenate flattened tensors in float64 as ``(rows, -1)``: one row per replica (``rows = 1``
    for an ordinary model)."""
    return torch.cat([t.detach().reshape(rows, -1).to(torch.float64) for t in tensors], dim=1)


def _norm(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(t, dim=1)


def internal_covariate_shift(model: nn.Module, loss_fn: Callable, batch, lr: float,
                             layers: list[tuple[str, list[nn.Parameter]]] | None = None) -> dict:
    r"""Internal covariate shift of every layer, Santurkar et al.'s Definition 2.1.

    .. math::
        G_i = \nabla_{W_i} \mathcal L(W_1, \dots, W_k; x, y), \qquad
        G_i' = \nabla_{W_i} \mathcal L(W_1', \dots, W_{i-1}', W_i, \dots, W_k; x, y),
        \qquad W_j' = W_j - \eta\, G_j,

    and the shift of layer :math:`i` is reported as :math:`\lVert G_i - G_i' \rVert_2` and
    :math:`\cos(G_i, G_i') = \langle G_i, G_i' \rangle / (\lVert G_i\rVert \lVert G_i' \rVert)`.
    :math:`G_i'` is the gradient layer :math:`i` would get if the layers before it had already taken
    this step's SGD update, i.e. it measures how much the update of the earlier layers changes the
    optimization problem layer :math:`i` faces. Layer 1 has no earlier layers: its shift is exactly 0
    and its cosine 1. All passes use the same batch and the same randomness.

    Args:
        model: the network; left exactly as found (parameters, buffers, random states, mode).
        loss_fn: called as ``loss_fn(model(x), y)``, returns a scalar, or a vector of :math:`S` losses
            for a model of :math:`S` replicas (:mod:`~normcourse.lab.replicas`), whose parameters are
            replica-major; each replica is then measured on its own.
        batch: a pair ``(x, y)``.
        lr: the SGD step size :math:`\eta` of the earlier layers.
        layers: ``(name, parameters)`` per layer; default :func:`~normcourse.lab.models.layer_groups` (a linear or
            convolutional layer together with the normalization parameters after it).

    Returns:
        dict of numpy arrays of length :math:`k` (shape :math:`(S, k)` for :math:`S` replicas) and the names:

        - ``"layers"``: the layer names;
        - ``"l2"``: :math:`\lVert G_i - G_i'\rVert_2`;
        - ``"cosine"``: :math:`\cos(G_i, G_i')` (``nan`` if a gradient is exactly zero);
        - ``"grad_norm"``: :math:`\lVert G_i \rVert_2`, to put ``l2`` on a relative scale.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        >>> ics = internal_covariate_shift(net, nn.functional.cross_entropy, (x, y), lr=0.1)
        >>> float(ics["l2"][0])
        0.0

    Reference: Santurkar, Tsipras, Ilyas & Madry, "How Does Batch Normalization Help Optimization?",
    NeurIPS 2018, Definition 2.1 and Figure 3.
    """
    groups = layer_groups(model) if layers is None else layers
    sizes = [len(ps) for _, ps in groups]
    params = [p for _, ps in groups for p in ps]
    l2, cosine, grad_norm = [], [], []
    with _preserved(model) as replay:
        replay()
        loss, flat_grads = _gradient(model, loss_fn, batch, params)
        rows = 1 if loss.dim() == 0 else loss.shape[0]
        grads = []
        start = 0
        for size in sizes:
            grads.append(flat_grads[start:start + size])
            start += size
        for i, (_, layer_params) in enumerate(groups):
            if i > 0:  # layers 1..i-1 have stepped: add the step of layer i-1 to the earlier ones
                with torch.no_grad():
                    for p, g in zip(groups[i - 1][1], grads[i - 1]):
                        p.sub_(lr * g)
            replay()
            _, shifted = _gradient(model, loss_fn, batch, layer_params)
            g, g_shifted = _flat64(grads[i], rows), _flat64(shifted, rows)
            norm, norm_shifted = _norm(g), _norm(g_shifted)
            l2.append(_norm(g - g_shifted))
            grad_norm.append(norm)
            denominator = norm * norm_shifted
            safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
            cosine.append(torch.where(denominator > 0, (g * g_shifted).sum(1) / safe, torch.nan))
    arrays = {key: torch.stack(values, dim=1).numpy() for key, values in
              (("l2", l2), ("cosine", cosine), ("grad_norm", grad_norm))}
    if loss.dim() == 0:
        arrays = {key: value[0] for key, value in arrays.items()}
    return {"layers": [name for name, _ in groups], **arrays}


def landscape_probe(model: nn.Module, loss_fn: Callable, batch, step_sizes: Sequence[float]) -> dict:
    r"""Loss and gradient along the gradient direction, Santurkar et al.'s Section 3 probes.

    With :math:`\theta` the current parameters and :math:`g = \nabla \mathcal L(\theta)` on ``batch``,
    for each step size :math:`\eta` in ``step_sizes``:

    .. math::
        \mathcal L_\eta = \mathcal L(\theta - \eta g), \qquad
        \Delta_\eta = \lVert \nabla \mathcal L(\theta) - \nabla \mathcal L(\theta - \eta g) \rVert_2,

    and the three summaries are

    .. math::
        \text{loss range} = \max_\eta \mathcal L_\eta - \min_\eta \mathcal L_\eta, \quad
        \text{gradient predictiveness} = \max_\eta \Delta_\eta, \quad
        \beta_{\text{eff}} = \max_{\eta > 0} \frac{\Delta_\eta}{\lVert \eta g \rVert_2}.

    A small loss range means the loss is close to Lipschitz along the step; a small
    :math:`\Delta` means the gradient at the current point predicts the gradient after the step;
    :math:`\beta_{\text{eff}}` is the smallest :math:`\beta` for which
    :math:`\lVert \nabla\mathcal L(a) - \nabla\mathcal L(b)\rVert \le \beta \lVert a - b\rVert` holds
    on the probed points (for a quadratic :math:`\tfrac12 \theta^\top A \theta` it is
    :math:`\lVert A g\rVert / \lVert g \rVert \le \lambda_{\max}(A)`). The range is taken over the
    given step sizes only: include 0 to count the starting point.

    Args:
        model: the network; left exactly as found (parameters, buffers, random states, mode).
        loss_fn: called as ``loss_fn(model(x), y)``, returns a scalar, or a vector of :math:`S` losses
            for a model of :math:`S` replicas (:mod:`~normcourse.lab.replicas`); each replica is then
            probed along its own gradient.
        batch: a pair ``(x, y)``; every probe uses it (and the same randomness).
        step_sizes: the :math:`\eta` values, e.g. ``np.linspace(0.05, 0.4, 8)``.

    Returns:
        dict with ``"step_sizes"``, ``"losses"`` (:math:`\mathcal L_\eta`), ``"grad_changes"``
        (:math:`\Delta_\eta`) as numpy arrays of length ``len(step_sizes)``, and the floats
        ``"loss"`` (at :math:`\theta`), ``"grad_norm"`` (:math:`\lVert g\rVert`), ``"loss_range"``,
        ``"gradient_predictiveness"``, ``"beta_smoothness"`` (``nan`` if no :math:`\eta > 0` or
        :math:`g = 0`). For :math:`S` replicas every entry gains a leading axis of length :math:`S`:
        ``"losses"`` has shape :math:`(S, \text{len(step\_sizes)})`, ``"loss_range"`` shape :math:`(S,)`.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        >>> probe = landscape_probe(net, nn.functional.cross_entropy, (x, y), [0.1, 0.2])
        >>> probe["losses"].shape
        (2,)

    Reference: Santurkar, Tsipras, Ilyas & Madry, "How Does Batch Normalization Help Optimization?",
    NeurIPS 2018, Section 3.1 and Figure 4.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    step_sizes = np.asarray(step_sizes, dtype=np.float64).reshape(-1)
    losses, changes = [], []
    with _preserved(model) as replay:
        start = [p.detach().clone() for p in params]
        replay()
        loss0, grads = _gradient(model, loss_fn, batch, params)
        rows = 1 if loss0.dim() == 0 else loss0.shape[0]
        g = _flat64(grads, rows)
        g_norm = _norm(g).numpy()
        for eta in step_sizes:
            with torch.no_grad():
                for p, p0, grad in zip(params, start, grads):
                    p.copy_(p0 - float(eta) * grad)
            replay()
            loss, moved = _gradient(model, loss_fn, batch, params)
            losses.append(loss.reshape(rows).numpy())
            changes.append(_norm(g - _flat64(moved, rows)).numpy())
    # (rows, len(step_sizes)); the ratio is skipped where the distance moved is 0
    losses_arr = np.stack(losses, axis=1) if losses else np.empty((rows, 0))
    changes_arr = np.stack(changes, axis=1) if changes else np.empty((rows, 0))
    distance = np.abs(step_sizes)[None, :] * g_norm[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(distance > 0, changes_arr / np.where(distance > 0, distance, 1.0), np.nan)
    empty = len(step_sizes) == 0
    finite = np.isfinite(ratios)
    result = {
        "step_sizes": step_sizes,
        "losses": losses_arr,
        "grad_changes": changes_arr,
        "loss": loss0.reshape(rows).numpy(),
        "grad_norm": g_norm,
        "loss_range": np.full(rows, np.nan) if empty else losses_arr.max(1) - losses_arr.min(1),
        "gradient_predictiveness": np.full(rows, np.nan) if empty else changes_arr.max(1),
        "beta_smoothness": np.where(finite.any(1), np.where(finite, ratios, -np.inf).max(1, initial=-np.inf),
                                    np.nan),
    }
    if loss0.dim() == 0:   # an ordinary model: floats and arrays of length len(step_sizes)
        result.update({key: result[key][0] for key in ("losses", "grad_changes")})
        result.update({key: float(result[key][0]) for key in ("loss", "grad_norm", "loss_range",
                                                               "gradient_predictiveness", "beta_smoothness")})
    return result
