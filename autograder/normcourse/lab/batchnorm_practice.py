r"""BatchNorm in practice: the experiment drivers of chapter 8, in torch.

Every comparison the chapter draws runs over several seeds. To keep the chapter cheap, the seeds are
trained *side by side as one model*: :func:`stacked_mlp` holds :math:`S` independent ReLU MLPs, one per
seed, whose linear layers are batched matrix products over a leading seed axis and whose BatchNorm
is one ordinary ``nn.BatchNorm1d`` over :math:`S \cdot C` features (each seed's channels get their own
statistics, so nothing is shared between seeds). Seed :math:`s` starts from exactly the weights of
``normcourse.lab.models.mlp(..., init="kaiming", seed=s)`` and draws its own minibatches, and
:func:`member` takes it out again as a plain ``nn.Sequential``; the tests check that training the stack
is training the members.

Contents:

- model: :class:`StackedLinear`, :class:`PerSeed`, :class:`BatchRenorm1d`, :func:`stacked_mlp`,
  :func:`member`, :func:`freeze_batch_norm`, :func:`fold_batch_norm`;
- training: :class:`EpochSampler`, :class:`ClassSampler`, :func:`train_stacked`, :func:`stacked_accuracy`,
  :func:`recompute_batch_norm_statistics`;
- experiments: :func:`train_eval_bugs`, :func:`frozen_bn_finetune`, :func:`batch_renorm_experiment`,
  :func:`dropout_variance_shift`, :func:`weight_decay_effective_lr`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..reference.batchnorm_practice import fuse_linear_bn_weights
from .experiments import GhostBatchNorm2d
from .models import DigitsData, mlp

__all__ = ["StackedLinear", "PerSeed", "BatchRenorm1d", "stacked_mlp", "member", "freeze_batch_norm",
           "fold_batch_norm", "EpochSampler", "ClassSampler", "StackedHistory", "train_stacked",
           "stacked_accuracy", "recompute_batch_norm_statistics", "batch_norm_layers", "Run", "train_digits",
           "EvalRow", "evaluation_modes", "running_mean_shift", "few_shot_pools", "FinetuneRow", "frozen_bn_finetune", "VarianceShift",
           "variance_shift", "ScaleInvariance", "scale_invariance", "NormTrajectory", "weight_norm_trajectory"]


# ------------------------------------------------------------------------------------------ model
class StackedLinear(nn.Module):
    r"""``S`` independent linear layers applied to ``S`` batches at once.

    .. math::
        y_s = x_s W_s^\top + b_s, \qquad s = 1..S

    Args:
        weight: ``(S, out_features, in_features)`` initial weights (copied).
        bias: ``(S, out_features)`` initial biases (copied), or None for no bias.

    Shape:
        - Input: :math:`(S, B, \text{in})`. Output: :math:`(S, B, \text{out})`.

    Example:
        >>> layer = StackedLinear(torch.randn(3, 4, 5), torch.zeros(3, 4))
        >>> layer(torch.randn(3, 2, 5)).shape
        torch.Size([3, 2, 4])
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight.transpose(1, 2))
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class PerSeed(nn.Module):
    r"""Apply a channel normalization over :math:`S \cdot C` features to a seed-stacked ``(S, B, C)``.

    The input is laid out as ``(B, S*C)`` (``(B, S*C, 1, 1)`` for a 2-d module such as
    :class:`~normcourse.lab.experiments.GhostBatchNorm2d`), so every seed's channel is a channel of
    its own: a ``BatchNorm1d(S*C)`` inside computes exactly the statistics of :math:`S` separate
    ``BatchNorm1d(C)`` layers, one per seed, each over that seed's batch.

    Args:
        norm: the module, with ``S*C`` channels.

    Shape:
        - Input: :math:`(S, B, C)`. Output: same.
    """

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, b, c = x.shape
        flat = x.transpose(0, 1).reshape(b, s * c)
        if isinstance(self.norm, nn.BatchNorm2d):
            y = self.norm(flat[:, :, None, None])[:, :, 0, 0]
        else:
            y = self.norm(flat)
        return y.reshape(b, s, c).transpose(0, 1)


class BatchRenorm1d(nn.Module):
    r"""Batch Renormalization (Ioffe 2017) for ``(N, C)`` input; the torch twin of
    :func:`normcourse.reference.batch_renorm`.

    .. math::
        y = \gamma\left(\frac{x - \mu_B}{\sigma_B}\, r + d\right) + \beta, \quad
        r = \operatorname{clip}_{[1/r_{\max}, r_{\max}]}\frac{\sigma_B}{\hat\sigma}, \quad
        d = \operatorname{clip}_{[-d_{\max}, d_{\max}]}\frac{\mu_B - \hat\mu}{\hat\sigma}

    in training, with :math:`r, d` treated as constants by autograd and the running mean and standard
    deviation updated afterwards (:math:`\hat\mu \mathrel{+}= m(\mu_B - \hat\mu)`, likewise
    :math:`\hat\sigma`); :math:`y = \gamma (x - \hat\mu)/\hat\sigma + \beta` in evaluation. ``r_max``
    and ``d_max`` are plain attributes, so a schedule can relax them during training (the paper starts
    from BatchNorm, :math:`r_{\max} = 1, d_{\max} = 0`).

    Args:
        num_features: :math:`C`.
        momentum: update rate of the running statistics. Default: 0.01.
        eps: added to the batch variance. Default: 1e-5.
        r_max, d_max: clipping limits. Defaults: 3.0, 5.0.

    Shape:
        - Input: :math:`(N, C)`. Output: same.

    Example:
        >>> layer = BatchRenorm1d(4)
        >>> layer(torch.randn(8, 4)).shape
        torch.Size([8, 4])

    Reference: Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized
    Models", NeurIPS 2017, Algorithm 1.
    """

    def __init__(self, num_features: int, momentum: float = 0.01, eps: float = 1e-5, r_max: float = 3.0,
                 d_max: float = 5.0):
        super().__init__()
        self.num_features, self.momentum, self.eps = num_features, momentum, eps
        self.r_max, self.d_max = r_max, d_max
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_std", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return (x - self.running_mean) / self.running_std * self.weight + self.bias
        if x.shape[0] < 2:
            raise ValueError("Expected more than 1 value per channel when training")
        mean = x.mean(0)
        std = torch.sqrt(x.var(0, unbiased=False) + self.eps)
        with torch.no_grad():
            r = (std / self.running_std).clamp(1 / self.r_max, self.r_max)
            d = ((mean - self.running_mean) / self.running_std).clamp(-self.d_max, self.d_max)
            self.running_mean += self.momentum * (mean - self.running_mean)
            self.running_std += self.momentum * (std - self.running_std)
        return ((x - mean) / std * r + d) * self.weight + self.bias


def _make_norm(norm: str | None, features: int, ghost_batch_size: int | None, renorm: dict | None):
    if norm is None:
        return None
    if norm == "batch_norm":
        return nn.BatchNorm1d(features)
    if norm == "ghost_batch_norm":
        if not ghost_batch_size:
            raise ValueError("norm='ghost_batch_norm' needs ghost_batch_size")
        return GhostBatchNorm2d(features, ghost_batch_size)
    if norm == "batch_renorm":
        return BatchRenorm1d(features, **(renorm or {}))
    raise ValueError(f"norm must be None, 'batch_norm', 'ghost_batch_norm' or 'batch_renorm', got {norm!r}")


def stacked_mlp(seeds: Sequence[int], *, in_dim: int = 64, width: int = 64, depth: int = 2, out_dim: int = 10,
                norm: str | None = "batch_norm", linear_bias: bool = True, dropout: float = 0.0,
                dropout_layers: str = "all", ghost_batch_size: int | None = None,
                renorm: dict | None = None) -> nn.Sequential:
    r"""``len(seeds)`` ReLU MLPs with BatchNorm (or a variant), stacked along a leading seed axis.

    .. math::
        h_\ell = \mathrm{Drop}\big(\mathrm{ReLU}(\mathrm{Norm}(W_\ell h_{\ell-1} + b_\ell))\big), \qquad
        \text{logits} = W_{\text{out}} h_{\text{depth}} + b_{\text{out}}

    per seed. Seed :math:`s`'s linear layers start as those of
    ``mlp(in_dim=..., width=..., depth=..., out_dim=..., init="kaiming", seed=s)`` (He-normal weights,
    zero biases).

    Args (keyword-only after ``seeds``):
        seeds: one network per seed.
        in_dim, width, depth, out_dim: as in :func:`normcourse.lab.models.mlp`. Defaults: 64, 64, 2, 10.
        norm: ``"batch_norm"``, ``"ghost_batch_norm"`` (needs ``ghost_batch_size``), ``"batch_renorm"``
            (options in ``renorm``, e.g. ``{"r_max": 3.0, "d_max": 5.0}``) or None. Default: ``"batch_norm"``.
        linear_bias: hidden linear layers have a bias (redundant before BatchNorm). Default: True.
        dropout: drop probability of ``nn.Dropout`` after hidden ReLUs (0: none). Default: 0.0.
        dropout_layers: ``"all"`` hidden layers (every BatchNorm but the first then sees dropout's
            variance shift) or only the ``"last"`` (after the last BatchNorm). Default: ``"all"``.

    Shape:
        - Input: :math:`(S, B, \text{in\_dim})`. Output: :math:`(S, B, \text{out\_dim})`.

    Example:
        >>> net = stacked_mlp((0, 1, 2), width=16)
        >>> net(torch.randn(3, 5, 64)).shape
        torch.Size([3, 5, 10])
    """
    if dropout_layers not in ("all", "last"):
        raise ValueError(f"dropout_layers must be 'all' or 'last', got {dropout_layers!r}")
    members = [mlp(in_dim=in_dim, width=width, depth=depth, out_dim=out_dim, init="kaiming", seed=s)
               for s in seeds]
    linears = [[m for m in net if isinstance(m, nn.Linear)] for net in members]
    s = len(seeds)
    layers: list[nn.Module] = []
    for index in range(depth + 1):
        weight = torch.stack([lin[index].weight for lin in linears])
        hidden = index < depth
        bias = torch.stack([lin[index].bias for lin in linears]) if (linear_bias or not hidden) else None
        layers.append(StackedLinear(weight, bias))
        if hidden:
            made = _make_norm(norm, s * width, ghost_batch_size, renorm)
            if made is not None:
                layers.append(PerSeed(made))
            layers.append(nn.ReLU())
            if dropout > 0 and (dropout_layers == "all" or index == depth - 1):
                layers.append(nn.Dropout(dropout))
    model = nn.Sequential(*layers)
    model.seeds = tuple(seeds)
    return model


def batch_norm_layers(model: nn.Module) -> list[nn.Module]:
    """Every BatchNorm-like layer of ``model`` (``nn.BatchNorm*``, ghost, renorm), in order."""
    return [m for m in model.modules()
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, BatchRenorm1d))]


def member(model: nn.Sequential, index: int) -> nn.Sequential:
    r"""Network number ``index`` of a :func:`stacked_mlp` as a plain ``nn.Sequential`` (a copy).

    ``nn.Linear``, ``nn.BatchNorm1d`` (with its slice of the gains, biases and running statistics),
    ``nn.ReLU`` and ``nn.Dropout`` in the same order; input ``(B, in_dim)``. Supports
    ``norm="batch_norm"`` and None.
    """
    s = len(model.seeds)
    layers: list[nn.Module] = []
    for module in model:
        if isinstance(module, StackedLinear):
            w = module.weight[index].detach()
            lin = nn.Linear(w.shape[1], w.shape[0], bias=module.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(w)
                if module.bias is not None:
                    lin.bias.copy_(module.bias[index])
            layers.append(lin)
        elif isinstance(module, PerSeed):
            if type(module.norm) is not nn.BatchNorm1d:
                raise TypeError(f"member() supports plain BatchNorm, not {type(module.norm).__name__}")
            c = module.norm.num_features // s
            part = slice(index * c, (index + 1) * c)
            bn = nn.BatchNorm1d(c, eps=module.norm.eps, momentum=module.norm.momentum)
            with torch.no_grad():
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(bn, name).copy_(getattr(module.norm, name)[part])
                bn.num_batches_tracked.copy_(module.norm.num_batches_tracked)
            layers.append(bn)
        else:
            layers.append(copy.deepcopy(module))
    net = nn.Sequential(*layers)
    net.train(model.training)
    return net


def freeze_batch_norm(model: nn.Module) -> nn.Module:
    r"""Freeze every BatchNorm layer for fine-tuning, in place: evaluation mode, no gradient for
    :math:`\gamma, \beta`, running statistics kept.

    A frozen BatchNorm is the fixed affine map of :func:`normcourse.reference.batch_norm_affine`.
    Note that a later ``model.train()`` puts the layers back in training mode: call this after it (the
    training loops here call ``model.train()`` only at their start, then the ``on_start`` hook).

    Returns ``model``.
    """
    for layer in batch_norm_layers(model):
        layer.eval()
        for p in layer.parameters():
            p.requires_grad_(False)
    return model


def fold_batch_norm(model: nn.Sequential) -> nn.Sequential:
    r"""Fold every ``nn.Linear -> nn.BatchNorm1d`` pair of a plain ``nn.Sequential`` into one
    ``nn.Linear`` (a copy), for inference.

    Uses :func:`normcourse.reference.fuse_linear_bn_weights` (computed in float64, stored in the
    model's dtype). The result equals ``model.eval()`` on every input up to rounding.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU()).eval()
        >>> [type(m).__name__ for m in fold_batch_norm(net)]
        ['Linear', 'ReLU']
    """
    layers = list(model)
    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layer, nn.Linear) and type(nxt) is nn.BatchNorm1d and nxt.track_running_stats:
            w, b = fuse_linear_bn_weights(
                layer.weight.detach().double().numpy(),
                None if layer.bias is None else layer.bias.detach().double().numpy(),
                nxt.running_mean.double().numpy(), nxt.running_var.double().numpy(), nxt.eps,
                None if nxt.weight is None else nxt.weight.detach().double().numpy(),
                None if nxt.bias is None else nxt.bias.detach().double().numpy())
            fused = nn.Linear(layer.in_features, layer.out_features, dtype=layer.weight.dtype)
            with torch.no_grad():
                fused.weight.copy_(torch.from_numpy(w))
                fused.bias.copy_(torch.from_numpy(b))
            out.append(fused)
            i += 2
        else:
            out.append(copy.deepcopy(layer))
            i += 1
    return nn.Sequential(*out).eval()


# ------------------------------------------------------------------------------------------ training
class EpochSampler:
    r"""Minibatch indices for every seed: reshuffle at each epoch, take consecutive slices.

    Seed :math:`s` uses ``torch.Generator().manual_seed(s)`` exactly as
    :func:`normcourse.lab.models.train` does, so a stacked run sees the same minibatches as
    ``train(..., seed=s)``.

    Args:
        n: number of training samples.
        batch_size: samples per step.
        seeds: one order per seed.
        pools: optional per-seed index tensors, all of one length: seed :math:`s` then draws only from
            ``pools[s]`` (e.g. its own small fine-tuning set). Default: None (all ``n`` samples).

    Returns (when called with the step number): ``(S, batch_size)`` int64 indices.
    """

    def __init__(self, n: int, batch_size: int, seeds: Sequence[int], pools: Sequence[torch.Tensor] | None = None):
        self.pools = None if pools is None else torch.stack([torch.as_tensor(p) for p in pools])
        self.n = n if pools is None else self.pools.shape[1]
        if not 1 <= batch_size <= self.n:
            raise ValueError(f"batch_size must be in 1..{self.n}, got {batch_size}")
        self.batch_size = batch_size
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.orders = [torch.randperm(self.n, generator=g) for g in self.generators]
        self.position = 0

    def __call__(self, step: int) -> torch.Tensor:
        if self.position + self.batch_size > self.n:
            self.orders = [torch.randperm(self.n, generator=g) for g in self.generators]
            self.position = 0
        index = torch.stack([o[self.position:self.position + self.batch_size] for o in self.orders])
        self.position += self.batch_size
        return index if self.pools is None else torch.gather(self.pools, 1, index)


class ClassSampler:
    r"""Non-i.i.d. minibatches: every batch holds ``batch_size / classes_per_batch`` samples of each of
    ``classes_per_batch`` randomly chosen classes (different choices for every seed and step).

    Such batches have statistics that differ systematically from the population's (a batch of two
    digit classes is not a fair sample of ten), which is the setting where Batch Renormalization
    helps (Ioffe 2017, Section 4.3).

    Args:
        y: labels of the training samples, int64 ``(n,)``.
        batch_size: samples per step; a multiple of ``classes_per_batch``.
        classes_per_batch: distinct classes in one batch.
        seeds: one stream per seed.

    Returns (when called): ``(S, batch_size)`` int64 indices.
    """

    def __init__(self, y: torch.Tensor, batch_size: int, classes_per_batch: int, seeds: Sequence[int]):
        if batch_size % classes_per_batch:
            raise ValueError(f"batch_size={batch_size} must be a multiple of classes_per_batch={classes_per_batch}")
        self.by_class = [torch.nonzero(y == k).flatten() for k in range(int(y.max()) + 1)]
        self.per_class = batch_size // classes_per_batch
        if any(len(idx) < self.per_class for idx in self.by_class):
            raise ValueError("a class has fewer samples than one batch needs")
        self.k = classes_per_batch
        self.generators = [torch.Generator().manual_seed(10_000 + int(s)) for s in seeds]

    def __call__(self, step: int) -> torch.Tensor:
        rows = []
        for g in self.generators:
            classes = torch.randperm(len(self.by_class), generator=g)[:self.k]
            rows.append(torch.cat([self.by_class[c][torch.randperm(len(self.by_class[c]), generator=g)[:self.per_class]]
                                   for c in classes.tolist()]))
        return torch.stack(rows)


@dataclass
class StackedHistory:
    """Per-step, per-seed minibatch loss and accuracy of :func:`train_stacked` (before each update)."""

    loss: list[np.ndarray] = field(default_factory=list)
    accuracy: list[np.ndarray] = field(default_factory=list)

    def final(self, last: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """Per-seed mean loss and accuracy over the ``last`` steps, each of shape ``(S,)``."""
        return np.mean(self.loss[-last:], axis=0), np.mean(self.accuracy[-last:], axis=0)


def train_stacked(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float,
                  batch_size: int = 32, momentum: float = 0.0, weight_decay: float = 0.0,
                  sampler: Callable[[int], torch.Tensor] | None = None,
                  on_start: Callable[[nn.Module], None] | None = None,
                  on_step: Callable[[int, nn.Module], None] | None = None) -> StackedHistory:
    r"""Minibatch SGD for every seed of a :func:`stacked_mlp` at once, in place.

    The loss is the *sum* over seeds of each seed's mean cross-entropy, so every seed's parameters get
    exactly the gradient of their own loss, and ``torch.optim.SGD`` (elementwise ``momentum`` and
    ``weight_decay``) updates each seed as a separate run would:

    .. math::
        v \leftarrow \rho v + \nabla L_B(\theta) + \lambda\theta, \qquad \theta \leftarrow \theta - \eta v

    Args:
        model: a :func:`stacked_mlp`; put in training mode, then ``on_start(model)`` is called (e.g.
            :func:`freeze_batch_norm`).
        x, y: training inputs ``(n, in_dim)`` and labels ``(n,)``, shared by the seeds.
        steps: updates. lr: :math:`\eta`. batch_size: samples per seed and step. Default: 32.
        momentum: :math:`\rho`. Default: 0. weight_decay: :math:`\lambda`. Default: 0.
        sampler: ``sampler(step) -> (S, batch_size)`` indices. Default: :class:`EpochSampler` with the
            model's seeds.
        on_step: called as ``on_step(step, model)`` after every update (1..steps). Default: None.

    Returns:
        :class:`StackedHistory`.

    Example:
        >>> data = load_digits_tensors()
        >>> net = stacked_mlp((0, 1), width=16)
        >>> h = train_stacked(net, data.x_train, data.y_train, steps=5, lr=0.1)
        >>> h.final(5)[0].shape
        (2,)
    """
    s = len(model.seeds)
    sampler = sampler or EpochSampler(len(y), batch_size, model.seeds)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    history = StackedHistory()
    model.train()
    if on_start is not None:
        on_start(model)
    for step in range(1, steps + 1):
        index = sampler(step)
        logits = model(x[index])
        per_sample = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[index].reshape(-1),
                                     reduction="none").reshape(s, -1)
        loss = per_sample.mean(1).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.loss.append(per_sample.detach().mean(1).numpy())
        history.accuracy.append((logits.argmax(-1) == y[index]).float().mean(1).numpy())
        if on_step is not None:
            on_step(step, model)
    return history


@torch.no_grad()
def stacked_accuracy(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor,
                     batch_size: int | None = None) -> np.ndarray:
    r"""Per-seed accuracy of a :func:`stacked_mlp` on ``(x, y)``, **in the model's current mode**.

    Nothing is copied: in training mode BatchNorm normalizes each chunk of ``batch_size`` samples (all
    of them if None) with that chunk's statistics *and updates its running statistics*, exactly as an
    evaluation loop that forgot ``model.eval()`` does (``torch.no_grad()`` does not prevent it).
    Chunks are taken in the given order; a last chunk smaller than ``batch_size`` is used as it is.

    Returns:
        ``(S,)`` float array.
    """
    n = len(y)
    step = batch_size or n
    correct = torch.zeros(len(model.seeds))
    for start in range(0, n, step):
        xb, yb = x[start:start + step], y[start:start + step]
        logits = model(xb.expand(len(model.seeds), *xb.shape))
        correct += (logits.argmax(-1) == yb).float().sum(1)
    return (correct / n).numpy()


@torch.no_grad()
def recompute_batch_norm_statistics(model: nn.Sequential, x: torch.Tensor, batch_size: int = 256) -> nn.Sequential:
    r"""Re-estimate every BatchNorm's running statistics on ``x``, in place (a cumulative average).

    Runs the model in training mode with ``momentum=None`` (PyTorch's cumulative moving average) over
    chunks of ``x``, with dropout switched *off* (evaluation mode) so the statistics describe the
    network as it runs at test time; then restores every module's mode and momentum. A remedy for
    dropout's variance shift and for statistics that drifted. As in ``torch.optim.swa_utils.update_bn``
    all BatchNorm layers collect at once, so a later layer's statistics are gathered while the earlier
    ones normalize with batch statistics (biased variance), not with the running ones they will use:
    a difference of order 1/batch_size.

    Returns ``model``.
    """
    layers = [m for m in batch_norm_layers(model) if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d)]
    if len(layers) != len(batch_norm_layers(model)):
        raise TypeError("recompute_batch_norm_statistics supports plain nn.BatchNorm1d/2d layers only")
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers}
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        model(xb.expand(len(model.seeds), *xb.shape))
    for m, mode in modes.items():
        m.train(mode)
    for m, momentum in momenta.items():
        m.momentum = momentum
    return model


# ------------------------------------------------------------------------------------------ experiments
@dataclass
class Run:
    """One :func:`train_digits` run: the trained stack, its history and per-seed held-out accuracy."""

    model: nn.Sequential
    history: StackedHistory
    test_accuracy: np.ndarray


def train_digits(data: DigitsData, seeds: Sequence[int] = (0, 1, 2, 3, 4), *, steps: int = 300,
                 lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 0.0, batch_size: int = 32,
                 classes: Sequence[int] | None = None, classes_per_batch: int | None = None,
                 on_step: Callable[[int, nn.Module], None] | None = None, **model_kwargs) -> Run:
    r"""Train a :func:`stacked_mlp` (one network per seed) on the digits and test it in evaluation mode.

    Args:
        data: a :class:`~normcourse.lab.models.DigitsData`.
        seeds: one network per seed (weights and minibatch order). Default: (0, 1, 2, 3, 4).
        steps, lr, momentum, weight_decay, batch_size: SGD settings. Defaults: 300, 0.05, 0.9, 0, 32.
        classes: train (and test) on these digit classes only. Default: None (all ten).
        classes_per_batch: draw non-i.i.d. batches with :class:`ClassSampler`. Default: None (i.i.d.).
        on_step: passed to :func:`train_stacked`.
        **model_kwargs: passed to :func:`stacked_mlp` (``norm``, ``renorm``, ``dropout``, ...).

    Returns:
        :class:`Run`; ``test_accuracy`` is per seed, on the held-out images of ``classes``.

    Example:
        >>> run = train_digits(load_digits_tensors(), (0, 1), steps=5, width=16)
        >>> run.test_accuracy.shape
        (2,)
    """
    x, y, x_test, y_test = data
    if classes is not None:
        keep, keep_test = torch.isin(y, torch.as_tensor(list(classes))), torch.isin(y_test, torch.as_tensor(list(classes)))
        x, y, x_test, y_test = x[keep], y[keep], x_test[keep_test], y_test[keep_test]
    model = stacked_mlp(seeds, **model_kwargs)
    sampler = ClassSampler(y, batch_size, classes_per_batch, seeds) if classes_per_batch else None
    history = train_stacked(model, x, y, steps=steps, lr=lr, batch_size=batch_size, momentum=momentum,
                            weight_decay=weight_decay, sampler=sampler, on_step=on_step)
    model.eval()
    return Run(model, history, stacked_accuracy(model, x_test, y_test))


@dataclass
class EvalRow:
    """One way of evaluating a trained stack: a label and the per-seed accuracies."""

    label: str
    accuracy: np.ndarray


def evaluation_modes(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, batch_sizes=(64, 16, 4),
                     sorted_batch_sizes=(64, 16)) -> tuple[list[EvalRow], np.ndarray]:
    r"""The same trained BatchNorm networks evaluated the right way and in the usual wrong ways.

    Every evaluation runs on a copy, so ``model`` is untouched. Rows, in order:

    - ``eval mode``: running statistics (correct);
    - ``train mode, one batch of all n``: statistics of the whole test set;
    - ``train mode, batches of b``: statistics of every ``b`` consecutive test images (the test split's
      own random order), for each ``b`` in ``batch_sizes``;
    - ``train mode, batches of b, sorted by label``: as a test loader over a class-sorted data set with
      ``shuffle=False`` delivers them, for each ``b`` in ``sorted_batch_sizes``;
    - ``eval mode after a train-mode pass``: after one pass in training mode over sorted batches of the
      last sorted size (under ``torch.no_grad()``, which does not stop the running statistics from moving).

    Returns:
        ``(rows, running_mean_shift)``: the :class:`EvalRow` list and, per seed, how far that pass moved
        the first BatchNorm's running mean, in running standard deviations (:func:`running_mean_shift`).
    """
    s = len(model.seeds)

    def accuracy(training: bool, order=None, batch_size=None, probe=None):
        probe = copy.deepcopy(model) if probe is None else probe
        probe.train(training)
        xs, ys = (x, y) if order is None else (x[order], y[order])
        return stacked_accuracy(probe, xs, ys, batch_size)

    order = torch.argsort(y, stable=True)
    rows = [EvalRow("eval mode", accuracy(False)),
            EvalRow(f"train mode, one batch of all {len(y)}", accuracy(True))]
    rows += [EvalRow(f"train mode, batches of {b}", accuracy(True, batch_size=b)) for b in batch_sizes]
    rows += [EvalRow(f"train mode, batches of {b}, sorted by label", accuracy(True, order, b))
             for b in sorted_batch_sizes]
    polluted = copy.deepcopy(model)
    accuracy(True, order, sorted_batch_sizes[-1], probe=polluted)
    rows.append(EvalRow(f"eval mode after a train-mode pass (sorted, batches of {sorted_batch_sizes[-1]})",
                        accuracy(False, probe=polluted)))
    return rows, running_mean_shift(batch_norm_layers(model)[0], batch_norm_layers(polluted)[0], s)


def running_mean_shift(before: nn.Module, after: nn.Module, seeds: int) -> np.ndarray:
    r"""How far a BatchNorm's running mean moved, per seed, in units of its earlier running standard
    deviation: the mean over channels :math:`k` of :math:`|\hat\mu^{after}_k - \hat\mu^{before}_k| /
    \sqrt{\hat\sigma^{2,before}_k + \epsilon}` (1 = shifted by one standard deviation on average).

    ``before`` and ``after`` are the same BatchNorm layer of a stack of ``seeds`` networks at two times.
    """
    scale = (before.running_var + before.eps).sqrt()
    shift = ((after.running_mean - before.running_mean).abs() / scale).reshape(seeds, -1)
    return shift.mean(1).numpy()


def few_shot_pools(y: torch.Tensor, classes: Sequence[int], shots: int, seeds: Sequence[int]) -> list[torch.Tensor]:
    """For every seed, ``shots`` random training indices of each class in ``classes`` (a small new data set)."""
    pools = []
    for s in seeds:
        g = torch.Generator().manual_seed(20_000 + int(s))
        picks = []
        for k in classes:
            idx = torch.nonzero(y == k).flatten()
            if len(idx) < shots:
                raise ValueError(f"class {k} has only {len(idx)} training samples, fewer than shots={shots}")
            picks.append(idx[torch.randperm(len(idx), generator=g)[:shots]])
        pools.append(torch.cat(picks))
    return pools


@dataclass
class FinetuneRow:
    """One fine-tuning run of :func:`frozen_bn_finetune` (per-seed arrays of shape ``(S,)``).

    Attributes:
        batch_size: fine-tuning batch size.
        variant: ``"train-mode BN"``, ``"frozen BN"`` or ``"train-mode BN, statistics restored"`` (the
            first run's weights with the pre-trained running statistics put back: separates drifted
            statistics from weights that adapted to them).
        accuracy: held-out accuracy in evaluation mode.
        drift: how far the first BatchNorm's running mean moved (:func:`running_mean_shift`).
    """

    batch_size: int
    variant: str
    accuracy: np.ndarray
    drift: np.ndarray


def frozen_bn_finetune(model: nn.Sequential, data: DigitsData, *, classes: Sequence[int], shots: int,
                       batch_sizes: Sequence[int] = (4,), steps: int = 100, lr: float = 0.02,
                       momentum: float = 0.9, eval_classes: Sequence[int] | None = None) -> list[FinetuneRow]:
    r"""Fine-tune a pre-trained stack on a small new data set with BatchNorm in training mode or frozen.

    Each seed gets its own ``shots`` images per class of ``classes`` (:func:`few_shot_pools`). Every run
    starts from a copy of ``model`` and fine-tunes all weights with SGD. "train-mode BN" leaves
    BatchNorm as it is in training (batch statistics, running statistics updated, :math:`\gamma,
    \beta` trained); "frozen BN" applies :func:`freeze_batch_norm` (evaluation mode, :math:`\gamma,
    \beta` fixed, running statistics kept). Accuracy is measured in evaluation mode on the held-out
    images of ``eval_classes`` (all classes if None).

    Returns:
        list of :class:`FinetuneRow`, for each batch size: train-mode BN, the same with the statistics
        restored, frozen BN.
    """
    pools = few_shot_pools(data.y_train, classes, shots, model.seeds)
    s = len(model.seeds)
    if eval_classes is None:
        x_test, y_test = data.x_test, data.y_test
    else:
        keep = torch.isin(data.y_test, torch.as_tensor(list(eval_classes)))
        x_test, y_test = data.x_test[keep], data.y_test[keep]
    start_stats = [(m.running_mean.clone(), m.running_var.clone()) for m in batch_norm_layers(model)]

    def drift(net):
        return running_mean_shift(batch_norm_layers(model)[0], batch_norm_layers(net)[0], s)

    rows = []
    for b in batch_sizes:
        for frozen in (False, True):
            net = copy.deepcopy(model)
            train_stacked(net, data.x_train, data.y_train, steps=steps, lr=lr, momentum=momentum, batch_size=b,
                          sampler=EpochSampler(len(data.y_train), b, model.seeds, pools),
                          on_start=freeze_batch_norm if frozen else None)
            net.eval()
            rows.append(FinetuneRow(b, "frozen BN" if frozen else "train-mode BN",
                                    stacked_accuracy(net, x_test, y_test), drift(net)))
            if not frozen:
                with torch.no_grad():
                    for m, (mean, var) in zip(batch_norm_layers(net), start_stats):
                        m.running_mean.copy_(mean), m.running_var.copy_(var)
                rows.append(FinetuneRow(b, "train-mode BN, statistics restored",
                                        stacked_accuracy(net, x_test, y_test), drift(net)))
    return rows


@dataclass
class VarianceShift:
    r"""Dropout's variance shift at one BatchNorm layer, per seed (median over the layer's units).

    Attributes:
        layer: index of the BatchNorm layer (0 = first).
        measured: evaluation-mode (unbiased) variance of the layer's input on the data, divided by the
            running variance BatchNorm collected in training (1 = no shift).
        predicted: the same ratio predicted from the weights, :math:`V_k / (V_k + \frac{p}{1-p}\sum_j
            W_{kj}^2\,\mathrm{E}[h_j^2])`, when a dropout layer feeds this BatchNorm through a linear
            layer; None otherwise.
    """

    layer: int
    measured: np.ndarray
    predicted: np.ndarray | None


@torch.no_grad()
def variance_shift(model: nn.Sequential, x: torch.Tensor) -> list[VarianceShift]:
    r"""Measure, for every BatchNorm of a trained :func:`stacked_mlp`, how far the variance of its input
    at test time (dropout off) is from the running variance it normalizes with.

    Inverted dropout with drop probability :math:`p` keeps the mean of a unit and adds independent
    noise; a linear unit :math:`z_k = \sum_j W_{kj} h_j` after it gains variance
    :math:`\frac{p}{1-p}\sum_j W_{kj}^2 \mathrm{E}[h_j^2]` in training only (Li et al. 2019), so BatchNorm
    stores too large a variance and shrinks its test-time output by :math:`\sqrt{\text{ratio}}`. The
    model is run once in evaluation mode on ``x`` (a copy; the model is untouched).

    Returns:
        one :class:`VarianceShift` per BatchNorm layer.
    """
    probe = copy.deepcopy(model).eval()
    modules = list(probe)
    captured: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, i[0]))
             for k, m in enumerate(modules) if isinstance(m, (PerSeed, nn.Dropout))]
    probe(x.expand(len(probe.seeds), *x.shape))
    for h in hooks:
        h.remove()
    results = []
    for layer, k in enumerate(k for k, m in enumerate(modules) if isinstance(m, PerSeed)):
        z = captured[k]                                          # (S, B, C): the BatchNorm's input
        s, _, c = z.shape
        running_var = modules[k].norm.running_var.reshape(s, c)
        var = z.var(1)
        predicted = None
        if k >= 2 and isinstance(modules[k - 2], nn.Dropout) and isinstance(modules[k - 1], StackedLinear):
            p, h = modules[k - 2].p, captured[k - 2]
            noise = p / (1 - p) * (modules[k - 1].weight ** 2 * h.pow(2).mean(1).unsqueeze(1)).sum(-1)
            predicted = (var / (var + noise)).median(1).values.numpy()
        results.append(VarianceShift(layer, (var / running_var).median(1).values.numpy(), predicted))
    return results


class ScaleInvariance(NamedTuple):
    """What :func:`scale_invariance` measures for one weight matrix and one factor ``c``."""

    loss_change: float      # |L(cW) - L(W)|
    gradient_ratio: float   # ||grad L(cW)|| * c / ||grad L(W)||, 1 if the gradient scales as 1/c
    cosine: float           # cos(W, grad L(W)): 0 if the gradient is orthogonal to W


def scale_invariance(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor, layer: int, c: float) -> ScaleInvariance:
    r"""Check scale invariance of a training-mode loss in the weight of ``net[layer]`` (a BatchNorm follows).

    If BatchNorm (batch statistics) follows a layer without bias, :math:`L(cW) = L(W)` for every
    :math:`c > 0`; differentiating gives :math:`\nabla L(cW) = \nabla L(W)/c` and
    :math:`\langle W, \nabla L(W)\rangle = 0` (Euler's theorem for a function homogeneous of degree 0).
    All of this is exact for :math:`\epsilon = 0`; BatchNorm's :math:`\epsilon` breaks it slightly when
    :math:`c` shrinks the variance toward :math:`\epsilon`. Computed in float64 on a copy of ``net`` (a
    plain ``nn.Sequential``, e.g. :func:`member`), which is never modified.
    """
    def loss_and_grad(scale):
        probe = copy.deepcopy(net).double().train()
        weight = probe[layer].weight
        with torch.no_grad():
            weight.mul_(scale)
        loss = F.cross_entropy(probe(x.double()), y)
        (grad,) = torch.autograd.grad(loss, weight)
        return float(loss.detach()), grad, weight.detach()

    l1, g1, w1 = loss_and_grad(1.0)
    lc, gc, _ = loss_and_grad(c)
    return ScaleInvariance(abs(lc - l1), float(gc.norm() * c / g1.norm()),
                           float((w1 * g1).sum() / (w1.norm() * g1.norm())))


@dataclass
class NormTrajectory:
    r"""The squared norm of a scale-invariant weight matrix during training, per step and seed.

    Attributes:
        lr, weight_decay: the SGD settings.
        sq_norm: :math:`\|W_t\|^2`, shape ``(steps + 1, S)`` (row 0 at initialization).
        angle: angle in radians between :math:`W_{t-1}` and :math:`W_t`, shape ``(steps, S)``.
        test_accuracy: per seed, evaluation mode.
    """

    lr: float
    weight_decay: float
    sq_norm: np.ndarray
    angle: np.ndarray
    test_accuracy: np.ndarray

    @property
    def effective_lr(self) -> np.ndarray:
        r""":math:`\eta / \|W_t\|^2`, the step size on the sphere of unit-norm weights, ``(steps + 1, S)``."""
        return self.lr / self.sq_norm


def weight_norm_trajectory(data: DigitsData, seeds: Sequence[int] = (0, 1, 2, 3, 4), *, lr: float = 0.2,
                           weight_decay: float = 0.0, steps: int = 600, layer: int = 0,
                           batch_size: int = 32) -> NormTrajectory:
    r"""Train BatchNorm MLPs without the redundant hidden biases by plain SGD and record
    :math:`\|W\|^2` of one hidden weight matrix (scale invariant) at every step.

    Without weight decay every step *grows* the norm: the gradient is orthogonal to :math:`W`, so
    :math:`\|W_{t+1}\|^2 = \|W_t\|^2 + \eta^2\|g_t\|^2`. With weight decay :math:`\lambda`,
    :math:`\|W_{t+1}\|^2 = (1-\eta\lambda)^2\|W_t\|^2 + \eta^2\|g_t\|^2`, and the norm settles where the two
    balance; there the angle turned per step is about :math:`\sqrt{2\eta\lambda}`.

    Args:
        data, seeds: as in :func:`train_digits`.
        lr, weight_decay: plain SGD (no momentum). Defaults: 0.2, 0.
        steps: updates. Default: 600.
        layer: index in the :func:`stacked_mlp` of the :class:`StackedLinear` to watch. Default: 0.
        batch_size: Default: 32.

    Returns:
        :class:`NormTrajectory`.
    """
    weights: list[torch.Tensor] = []

    def record(step, model):
        weights.append(model[layer].weight.detach().clone())

    model = stacked_mlp(seeds, linear_bias=False)
    if not isinstance(model[layer], StackedLinear):
        raise ValueError(f"model[{layer}] is {type(model[layer]).__name__}, not a StackedLinear")
    record(0, model)
    train_stacked(model, data.x_train, data.y_train, steps=steps, lr=lr, momentum=0.0,
                  weight_decay=weight_decay, batch_size=batch_size, on_step=record)
    w = torch.stack(weights).flatten(2).double()                 # (steps + 1, S, n)
    sq = w.pow(2).sum(-1)
    cos = (w[1:] * w[:-1]).sum(-1) / (sq[1:] * sq[:-1]).sqrt()
    model.eval()
    return NormTrajectory(lr, weight_decay, sq.numpy(), torch.arccos(cos.clamp(-1, 1)).numpy(),
                          stacked_accuracy(model, data.x_test, data.y_test))
