r"""Several seeds of one small network, trained at once as one batched model.

Every comparison the chapters draw a conclusion from runs over several seeds. Training :math:`S`
copies of a small network one after another costs :math:`S` times its Python and dispatch overhead,
which dominates on a CPU; stacking the copies ("replicas") into one model pays it once. The replicas
stay independent:

- replica :math:`s` has its own parameters, buffers and noise generators, copied from the :math:`s`-th
  model given to :func:`replicate` (build them with :func:`~normcourse.lab.models.mlp` or
  :func:`~normcourse.lab.models.small_cnn` and their ``seed``);
- :func:`train_replicas` draws replica :math:`s`'s minibatches from a generator seeded with
  ``seeds[s]``, exactly as :func:`~normcourse.lab.models.train` does for one model;
- the training loss is the *sum* of the per-replica mean losses, so the gradient with respect to
  replica :math:`s`'s parameters is the gradient of replica :math:`s`'s own loss.

So a replicated run is the same computation as :math:`S` separate runs (``tests/lab/test_replicas.py``
checks it step by step in float64), only faster.

**Layouts.** Every parameter and buffer of a replicated model is *replica-major*: it reshapes to
:math:`(S, -1)` and row :math:`s` is replica :math:`s`'s tensor, flattened. Feature activations have
shape :math:`(S, N, F)`; image activations :math:`(N, S\cdot C, H, W)`, the replicas' channels side by
side, so that a grouped convolution (``groups=S``) and any per-channel or per-group normalization act
on each replica separately.

Contents:

- :func:`replicate` -- :math:`S` models of the same architecture to one :class:`Replicas` model;
- :class:`ReplicaLinear`, :class:`ReplicaBatchNorm1d`, :class:`ReplicaLayerNorm`,
  :class:`ReplicaNoise` -- the feature layers it is built from;
- :func:`replica_cross_entropy`, :func:`train_replicas`, :class:`ReplicaHistory`,
  :func:`replica_accuracy` -- loss, training loop and evaluation with one value per replica.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .models import CovariateShiftNoise, DigitsData, _AsImage

__all__ = ["Replicas", "replicate", "ReplicaLinear", "ReplicaBatchNorm1d", "ReplicaLayerNorm", "ReplicaNoise",
           "replica_cross_entropy", "ReplicaHistory", "train_replicas", "replica_accuracy", "replica_rows"]


class Replicas(nn.Sequential):
    """An ``nn.Sequential`` of replicated layers; ``replicas`` is the number :math:`S` of copies.

    Input: :math:`(S, N, F)` (each replica its own batch) or :math:`(N, F)` (the same batch for every
    replica, expanded). Output: :math:`(S, N, \\text{classes})`.
    """

    def __init__(self, replicas: int, *layers: nn.Module):
        super().__init__(*layers)
        self.replicas = int(replicas)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.expand(self.replicas, *x.shape)
        if x.shape[0] != self.replicas:
            raise ValueError(f"expected {self.replicas} replicas on the first axis, got shape {tuple(x.shape)}")
        return super().forward(x)


class ReplicaLinear(nn.Module):
    r""":math:`S` independent linear maps, one per replica: :math:`y_s = x_s W_s^\top + b_s`.

    Args:
        weight: :math:`(S, \text{out}, \text{in})`. bias: :math:`(S, \text{out})`.

    Shape:
        - Input: :math:`(S, N, \text{in})`. Output: :math:`(S, N, \text{out})`.

    Example:
        >>> layer = ReplicaLinear(torch.randn(3, 4, 5), torch.zeros(3, 4))
        >>> layer(torch.randn(3, 2, 5)).shape
        torch.Size([3, 2, 4])
    """

    #: :func:`~normcourse.lab.models.layer_groups` starts a new layer here, as at an ``nn.Linear``.
    starts_layer = True

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class ReplicaBatchNorm1d(nn.BatchNorm1d):
    r"""``nn.BatchNorm1d`` applied to each replica's batch separately.

    The :math:`S` replicas' :math:`C` features are laid side by side as :math:`S\cdot C` channels of one
    ``nn.BatchNorm1d``, so statistics, running averages (PyTorch's convention) and the affine map are
    exactly those of :math:`S` separate layers.

    Shape:
        - Input: :math:`(S, N, C)`. Output: same shape.
    """

    def __init__(self, replicas: int, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__(replicas * num_features, eps=eps, momentum=momentum)
        self.replicas = int(replicas)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, n, c = x.shape
        y = super().forward(x.transpose(0, 1).reshape(n, s * c))
        return y.reshape(n, s, c).transpose(0, 1)


class ReplicaLayerNorm(nn.Module):
    r"""LayerNorm over the last axis with one gain and bias per replica and feature.

    Shape:
        - Input: :math:`(S, N, C)`. Output: same shape.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        return y * self.weight.unsqueeze(1) + self.bias.unsqueeze(1)


class ReplicaNoise(nn.Module):
    r"""Santurkar's noise (:class:`~normcourse.lab.models.CovariateShiftNoise`) with one generator per replica.

    Replica :math:`s` draws its scale and shift from its own copy of the :math:`s`-th noise module, so
    it sees the same noise as the separate model would.

    Shape:
        - Input: :math:`(S, N, C)`. Output: same shape (the identity in evaluation mode).
    """

    def __init__(self, noises: Sequence[CovariateShiftNoise]):
        super().__init__()
        self.noises = nn.ModuleList(copy.deepcopy(list(noises)))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return a
        draws = [noise.draw(a.shape[1:], a.dtype) for noise in self.noises]
        scale, shift = CovariateShiftNoise.transform(torch.stack([u for u, _ in draws]),
                                                     torch.stack([n for _, n in draws]))
        return scale * a + shift


class _ReplicaImages(nn.Module):
    """Flat digits of every replica ``(S, N, 64)`` to images ``(N, S, 8, 8)``: one channel per replica."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, n = x.shape[:2]
        return x.transpose(0, 1).reshape(n, s, 8, 8)


class _ReplicaFlatten(nn.Module):
    """Image layout ``(N, S*C, 1, 1)`` back to the feature layout ``(S, N, C)``."""

    def __init__(self, replicas: int):
        super().__init__()
        self.replicas = replicas

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return x.reshape(n, self.replicas, -1).transpose(0, 1)


def _stack(tensors, dim=0):
    return torch.stack([t.detach() for t in tensors], dim=dim)


def _side_by_side(layers: Sequence[nn.Module]) -> nn.Module:
    """A copy of the first layer whose per-channel parameters and buffers hold every replica's, concatenated."""
    merged = copy.deepcopy(layers[0])
    with torch.no_grad():
        for name, _ in list(layers[0].named_parameters(recurse=False)):
            setattr(merged, name, nn.Parameter(torch.cat([getattr(l, name).detach() for l in layers])))
        for name, buffer in list(layers[0].named_buffers(recurse=False)):
            if buffer is not None and buffer.dim() > 0:
                merged.register_buffer(name, torch.cat([getattr(l, name) for l in layers]).clone())
    return merged


def _replicate_layer(layers: Sequence[nn.Module], layout: str) -> tuple[nn.Module, str]:
    """One replicated layer from the same layer of every model, and the layout after it."""
    first, s = layers[0], len(layers)
    kind = type(first)
    if any(type(l) is not kind for l in layers):
        raise TypeError("the models to replicate must have the same architecture")
    if isinstance(first, (nn.ReLU, nn.Identity, nn.MaxPool2d, nn.AdaptiveAvgPool2d)):
        return copy.deepcopy(first), layout
    if layout == "features":
        if kind is nn.Linear:
            return ReplicaLinear(_stack([l.weight for l in layers]), _stack([l.bias for l in layers])), layout
        if kind is nn.BatchNorm1d:
            bn = ReplicaBatchNorm1d(s, first.num_features, first.eps, first.momentum).to(first.weight.dtype)
            with torch.no_grad():
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(bn, name).copy_(torch.cat([getattr(l, name).detach() for l in layers]))
                bn.num_batches_tracked.copy_(first.num_batches_tracked)
            return bn, layout
        if kind is nn.LayerNorm and len(first.normalized_shape) == 1:
            return ReplicaLayerNorm(_stack([l.weight for l in layers]), _stack([l.bias for l in layers]),
                                    first.eps), layout
        if kind is CovariateShiftNoise:
            return ReplicaNoise(layers), layout
        if kind is _AsImage:
            return _ReplicaImages(), "images"
    else:
        if isinstance(first, nn.Conv2d):
            if first.in_channels != first.groups and first.groups != 1:
                raise TypeError("grouped convolutions are not supported")
            conv = nn.Conv2d(s * first.in_channels, s * first.out_channels, first.kernel_size, first.stride,
                             first.padding, first.dilation, groups=s * first.groups,
                             bias=first.bias is not None, dtype=first.weight.dtype)
            with torch.no_grad():
                conv.weight.copy_(torch.cat([l.weight.detach() for l in layers]))
                if first.bias is not None:
                    conv.bias.copy_(torch.cat([l.bias.detach() for l in layers]))
            return conv, layout
        if isinstance(first, nn.modules.batchnorm._BatchNorm):       # BatchNorm2d and its subclasses
            merged = _side_by_side(layers)
            merged.num_features = s * first.num_features
            return merged, layout
        if kind is nn.GroupNorm:
            merged = _side_by_side(layers)
            merged.num_groups, merged.num_channels = s * first.num_groups, s * first.num_channels
            return merged, layout
        if kind is nn.Flatten:
            return _ReplicaFlatten(s), "features"
    raise TypeError(f"cannot replicate a {kind.__name__} in the {layout} layout")


def replicate(models: Sequence[nn.Module]) -> Replicas:
    r"""Stack :math:`S` models of the same architecture into one batched model.

    .. math::
        \text{Replicas}(x)_s = \text{model}_s(x_s), \qquad s = 1..S

    The models must be flat ``nn.Sequential`` networks of the kinds
    :func:`~normcourse.lab.models.mlp` (Linear, BatchNorm1d, LayerNorm, noise, ReLU) and
    :func:`~normcourse.lab.models.small_cnn` (Conv2d, BatchNorm2d or a subclass such as ghost
    BatchNorm, GroupNorm, pooling) build. Parameters, buffers (running statistics) and noise generators
    are copied; the models themselves are not changed. Parameters are registered in the same order
    as in each model, so ``list(replicated.parameters())[j].reshape(S, -1)[s]`` is
    ``list(models[s].parameters())[j]``, flattened.

    Args:
        models: :math:`S \ge 1` models with identical architecture (e.g. the same builder, different seeds).

    Returns:
        a :class:`Replicas` model, in the training mode of ``models[0]``.

    Shape:
        - Input: :math:`(S, N, 64)` or :math:`(N, 64)`. Output: :math:`(S, N, \text{out})`.

    Example:
        >>> from normcourse.lab.models import mlp
        >>> net = replicate([mlp(depth=2, width=16, seed=s) for s in range(3)])
        >>> net(torch.randn(3, 5, 64)).shape
        torch.Size([3, 5, 10])
    """
    models = list(models)
    if not models:
        raise ValueError("replicate needs at least one model")
    children = [list(m.children()) if isinstance(m, nn.Sequential) else None for m in models]
    if any(c is None for c in children) or len({len(c) for c in children}) != 1:
        raise TypeError("the models to replicate must be nn.Sequential networks of the same length")
    layers, layout = [], "features"
    for same_layer in zip(*children):
        layer, layout = _replicate_layer(same_layer, layout)
        layers.append(layer)
    replicated = Replicas(len(models), *layers)
    replicated.train(models[0].training)
    return replicated


def replica_rows(tensor: torch.Tensor, replicas: int) -> torch.Tensor:
    """A replica-major tensor as :math:`(S, -1)`: row :math:`s` is replica :math:`s`'s values, flattened."""
    return tensor.reshape(replicas, -1)


def replica_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Cross-entropy of every replica, averaged over its own batch: a vector of :math:`S` losses.

    .. math::
        \mathcal L_s = \frac1N \sum_{n} -\log \operatorname{softmax}(z_{sn})_{y_{sn}}

    Args:
        logits: :math:`(S, N, K)`.
        y: :math:`(S, N)` labels, or :math:`(N,)` shared by every replica.

    Returns:
        :math:`(S,)` tensor. Sum it to train (each replica's gradient is then its own loss's).

    Example:
        >>> replica_cross_entropy(torch.zeros(2, 4, 10), torch.zeros(4, dtype=torch.long))
        tensor([2.3026, 2.3026])
    """
    s, n, k = logits.shape
    y = y.expand(s, n)
    return F.cross_entropy(logits.reshape(s * n, k), y.reshape(s * n), reduction="none").reshape(s, n).mean(1)


@dataclass
class ReplicaHistory:
    """Per-step record of :func:`train_replicas`: arrays of shape ``(steps, S)``, the minibatch loss and
    accuracy of every replica *before* each update."""

    loss: np.ndarray
    accuracy: np.ndarray

    def final(self, last: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """Mean loss and accuracy of each replica over the ``last`` steps: two arrays of shape ``(S,)``."""
        return self.loss[-last:].mean(0), self.accuracy[-last:].mean(0)


def train_replicas(model: Replicas, data, steps: int, lr: float | Sequence[float], seeds: Sequence[int],
                   batch_size: int = 64, momentum: float = 0.0,
                   on_step: Callable[[int, Replicas], None] | None = None) -> ReplicaHistory:
    r"""Minibatch SGD of every replica at once, in place: :func:`~normcourse.lab.models.train` :math:`S` times.

    .. math::
        v_s \leftarrow \rho\, v_s + \nabla_{\theta_s} \mathcal L_s(\theta_s; B_s), \qquad
        \theta_s \leftarrow \theta_s - \eta_s\, v_s

    (``torch.optim.SGD``'s convention, :math:`v_s` starting at the first gradient), where replica
    :math:`s`'s minibatches :math:`B_s` come from reshuffling the training set at every epoch with a
    generator seeded with ``seeds[s]``, as :func:`~normcourse.lab.models.train` draws them.

    Args:
        model: a :class:`Replicas` model; modified in place and put in training mode.
        data: a :class:`~normcourse.lab.models.DigitsData` (its training split) or a pair ``(x, y)``.
        steps: number of updates.
        lr: :math:`\eta`, one value for all replicas or one per replica (e.g. a learning-rate sweep).
        seeds: one minibatch-order seed per replica.
        batch_size: minibatch size. Default: 64.
        momentum: :math:`\rho`. Default: 0.
        on_step: called as ``on_step(step, model)`` before the first update (step 0) and after every
            update. Default: None.

    Returns:
        :class:`ReplicaHistory` with arrays of shape ``(steps, S)``. A replica that diverges records
        ``nan`` and carries on without disturbing the others.

    Example:
        >>> from normcourse.lab.models import load_digits_tensors, mlp
        >>> net = replicate([mlp(depth=2, width=32, seed=s) for s in range(2)])
        >>> train_replicas(net, load_digits_tensors(), steps=5, lr=0.1, seeds=[0, 1]).loss.shape
        (5, 2)
    """
    x, y = (data.x_train, data.y_train) if isinstance(data, DigitsData) else data
    s = model.replicas
    if len(seeds) != s:
        raise ValueError(f"need one seed per replica: {s} replicas, {len(seeds)} seeds")
    params = [p for p in model.parameters() if p.requires_grad]
    if np.ndim(lr) == 0:
        rates = None
    else:
        rates = torch.as_tensor(np.asarray(lr, dtype=np.float64), dtype=params[0].dtype).reshape(s, 1)
        if rates.shape[0] != s:
            raise ValueError("need one learning rate per replica")
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    velocity: list[torch.Tensor | None] = [None] * len(params)
    losses, accuracies = np.empty((steps, s)), np.empty((steps, s))
    model.train()
    if on_step is not None:
        on_step(0, model)
    order, position = None, len(y)
    for step in range(1, steps + 1):
        if position + batch_size > len(y):
            order = torch.stack([torch.randperm(len(y), generator=g) for g in generators])
            position = 0
        index = order[:, position:position + batch_size]
        position += batch_size
        logits = model(x[index])
        loss = replica_cross_entropy(logits, y[index])
        grads = torch.autograd.grad(loss.sum(), params)
        with torch.no_grad():
            for j, (p, g) in enumerate(zip(params, grads)):
                if momentum:
                    velocity[j] = g.clone() if velocity[j] is None else velocity[j].mul_(momentum).add_(g)
                    g = velocity[j]
                if rates is None:
                    p.add_(g, alpha=-float(lr))
                else:
                    replica_rows(p, s).addcmul_(rates, replica_rows(g, s), value=-1.0)
        losses[step - 1] = loss.detach().numpy()
        accuracies[step - 1] = (logits.argmax(-1) == y[index]).float().mean(1).numpy()
        if on_step is not None:
            on_step(step, model)
    return ReplicaHistory(losses, accuracies)


@torch.no_grad()
def replica_accuracy(model: Replicas, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Accuracy of every replica on the same samples, in evaluation mode (the mode is restored).

    Returns an array of shape ``(S,)``.
    """
    was_training = model.training
    model.eval()
    try:
        return (model(x).argmax(-1) == y).float().mean(1).numpy()
    finally:
        model.train(was_training)
