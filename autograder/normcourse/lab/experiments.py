r"""The experiment drivers of chapters 1-3: every arm of an experiment over several seeds at once.

An *arm* is one architecture and training recipe; its seeds are trained together as replicas
(:mod:`normcourse.lab.replicas`), which is the same computation as separate runs, only faster.
:func:`run_arm` trains one arm and calls *recorders* along the way; :class:`Every` makes a recorder
out of a measurement and a set of steps. The measurements the chapters record are here too
(:func:`relu_moments`, :func:`unit_inputs`, :func:`shift`, :func:`landscape`), and so are the two
larger drivers, :func:`learning_rate_sweep` (chapter 2) and :func:`batch_size_sweep` (chapter 3).

Chapter 3's sweep follows Wu & He (2018, Table 2), who report that BatchNorm's ImageNet error grows as
fewer images are normalized together on each GPU, while GroupNorm, whose statistics never look across
images, stays flat. Three things change at once when one simply trains with smaller batches: the
statistics get noisier, the gradient gets noisier (so the learning rate must change), and for a fixed
number of epochs the number of updates changes. :func:`batch_size_sweep` keeps the *optimization*
fixed (same batches of 32, same learning rate, same number of updates, same seeds) and changes only how
many images BatchNorm pools its statistics over, by splitting each batch into groups the way
unsynchronised multi-GPU BatchNorm does (:class:`GhostBatchNorm2d`). GroupNorm is unaffected by
construction; BatchNorm is then evaluated three ways, which separates the ways small batches act on it:

- with its running statistics (``model.eval()``, as deployed): noisy statistics in training *and* the
  mismatch between those and the running averages used at test time;
- with population statistics recomputed over the whole training set with the final weights: no
  staleness of the running averages, and no noise at test time;
- with statistics of groups of :math:`b` test images (train-mode statistics): exactly what the
  network saw in training, noise included, with no train/eval mismatch.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .measurements import internal_covariate_shift, landscape_probe
from .models import DigitsData, load_digits_tensors, relu_inputs, small_cnn
from .replicas import (Replicas, ReplicaHistory, replica_accuracy, replica_cross_entropy, replicate,
                       train_replicas)

__all__ = ["Spread", "Every", "ArmResult", "run_arm", "relu_moments", "unit_inputs", "shift", "landscape",
           "learning_rate_sweep", "gradient_through_steps", "GhostBatchNorm2d", "with_ghost_batch_norm", "batch_statistics_accuracy",
           "population_statistics_accuracy", "SweepRow", "batch_size_sweep"]


# ---------------------------------------------------------------- arms and recorders
@dataclass(frozen=True)
class Spread:
    r"""Median, minimum and maximum of one quantity over seeds: how a multi-seed result is reported.

    ``format(spread, ".1f")`` (or ``f"{spread:.1f}"``) gives ``"97.5 [94.2, 97.8]"``: the median, then
    the smallest and largest value in brackets. NaN values (a diverged run) are ignored; if every value
    is NaN, all three are NaN.

    Example:
        >>> f"{Spread.of([3.0, 1.0, 2.0]):.1f}"
        '2.0 [1.0, 3.0]'
        >>> Spread.of(np.array([[1.0, 4.0], [3.0, 8.0]]), axis=1).median
        array([2.5, 5.5])
    """

    median: Any
    low: Any
    high: Any

    @classmethod
    def of(cls, values, axis: int | None = None) -> "Spread":
        """Summarize ``values`` over ``axis`` (all of them by default)."""
        values = np.asarray(values, dtype=np.float64)
        if np.isnan(values).all():
            nan = np.full(np.delete(values.shape, axis) if axis is not None else (), np.nan)
            return cls(nan[()], nan[()], nan[()])
        with warnings.catch_warnings():     # an all-NaN column gives NaN, and no warning in a chapter
            warnings.simplefilter("ignore", RuntimeWarning)
            return cls(np.nanmedian(values, axis=axis), np.nanmin(values, axis=axis), np.nanmax(values, axis=axis))

    def __format__(self, spec: str) -> str:
        return f"{format(self.median, spec)} [{format(self.low, spec)}, {format(self.high, spec)}]"


class Every:
    """A recorder: ``measure(model)`` at each of ``steps``, kept in ``values`` by step.

    Args:
        steps: the training steps to measure at (0 is before the first update).
        measure: called as ``measure(model)``; it must leave the model as it found it.

    Example:
        >>> recorder = Every(range(0, 101, 50), lambda model: 1.0)
        >>> recorder(50, None); recorder(51, None); recorder.values
        {50: 1.0}
    """

    def __init__(self, steps: Iterable[int], measure: Callable[[nn.Module], Any]):
        self.steps = set(int(s) for s in steps)
        self.measure = measure
        self.values: dict[int, Any] = {}

    def __call__(self, step: int, model: nn.Module) -> None:
        if step in self.steps:
            self.values[step] = self.measure(model)


@dataclass
class ArmResult:
    """What :func:`run_arm` returns for one arm.

    Attributes:
        seeds: the seeds of the replicas (weights and minibatch order).
        model: the trained :class:`~normcourse.lab.replicas.Replicas` model.
        history: per-step minibatch loss and accuracy, arrays of shape ``(steps, S)``.
        test_accuracy: held-out accuracy of every replica in evaluation mode, shape ``(S,)``.
        records: the recorders' values, ``records[name][step]``.
    """

    seeds: tuple[int, ...]
    model: Replicas
    history: ReplicaHistory
    test_accuracy: np.ndarray
    records: dict[str, dict[int, Any]] = field(default_factory=dict)


def run_arm(build: Callable[[int], nn.Module], seeds: Sequence[int], data: DigitsData, *, steps: int,
            lr: float, batch_size: int = 64, momentum: float = 0.0,
            recorders: dict[str, Every] | None = None) -> ArmResult:
    r"""Train one arm over several seeds at once and record what the recorders measure.

    Replica :math:`s` is ``build(seeds[s])`` and draws its minibatches with seed ``seeds[s]``, so the
    result is that of :func:`~normcourse.lab.models.train` run once per seed.

    Args:
        build: ``seed -> model``, e.g. ``lambda s: mlp(init="kaiming", seed=s)``.
        seeds: the seeds, at least 1.
        data: the digits (training split for training, test split for ``test_accuracy``).
        steps, lr, batch_size, momentum: the SGD recipe, as in :func:`~normcourse.lab.replicas.train_replicas`.
        recorders: name -> :class:`Every`, called after every step (and before the first).

    Returns:
        :class:`ArmResult`.

    Example:
        >>> from normcourse.lab.models import mlp
        >>> arm = run_arm(lambda s: mlp(depth=2, width=16, seed=s), [0, 1], load_digits_tensors(), steps=5, lr=0.1)
        >>> arm.test_accuracy.shape
        (2,)
    """
    seeds = tuple(int(s) for s in seeds)
    recorders = dict(recorders or {})
    model = replicate([build(seed) for seed in seeds])

    def on_step(step, replicas):
        for recorder in recorders.values():
            recorder(step, replicas)

    history = train_replicas(model, data, steps=steps, lr=lr, seeds=seeds, batch_size=batch_size,
                             momentum=momentum, on_step=on_step if recorders else None)
    return ArmResult(seeds, model, history, replica_accuracy(model, data.x_test, data.y_test),
                     {name: recorder.values for name, recorder in recorders.items()})


def relu_moments(x: torch.Tensor) -> Callable[[Replicas], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Measure: per hidden layer, the mean and (biased) standard deviation of every unit's ReLU input
    over the probe batch ``x``; a list of pairs of ``(S, units)`` tensors."""
    def measure(model):
        return [(a.mean(1), a.std(1, unbiased=False)) for a in relu_inputs(model, x)]
    return measure


def unit_inputs(x: torch.Tensor, layer: int, unit: int, replica: int = 0) -> Callable[[Replicas], torch.Tensor]:
    """Measure: the ReLU input of one unit (hidden ``layer``, ``unit``, 0-based) of one replica on the
    probe batch ``x``, shape ``(N,)``."""
    def measure(model):
        return relu_inputs(model, x)[layer][replica, :, unit].clone()
    return measure


def shift(batch, lr: float) -> Callable[[Replicas], dict]:
    """Measure: :func:`~normcourse.lab.measurements.internal_covariate_shift` of every replica on
    ``batch`` (shared by all replicas) with step size ``lr``; arrays of shape ``(S, layers)``."""
    def measure(model):
        return internal_covariate_shift(model, replica_cross_entropy, batch, lr=lr)
    return measure


def landscape(x: torch.Tensor, y: torch.Tensor, step_sizes: Sequence[float], batch_size: int = 64,
              seed: int = 1) -> Callable[[Replicas], dict]:
    """Measure: :func:`~normcourse.lab.measurements.landscape_probe` of every replica, each on its own
    random batch of ``batch_size`` from ``(x, y)``, a fresh draw at every call (generator ``seed``)."""
    generator = torch.Generator().manual_seed(seed)

    def measure(model):
        index = torch.randint(0, len(y), (model.replicas, batch_size), generator=generator)
        return landscape_probe(model, replica_cross_entropy, (x[index], y[index]), step_sizes)
    return measure


def learning_rate_sweep(build: Callable[[int], nn.Module], rates: Sequence[float], seeds: Sequence[int],
                        data: DigitsData, *, steps: int, batch_size: int = 64, last: int = 20) -> np.ndarray:
    r"""Final training loss of ``build(seed)`` trained with each learning rate, for each seed.

    All ``len(rates) * len(seeds)`` runs are replicas of one model, each with its own learning rate
    (a run that diverges records ``nan`` without disturbing the others).

    Args:
        build: ``seed -> model``.
        rates: the learning rates.
        seeds: seeds of weights and minibatch order; every rate sees the same seeds.
        data: the digits.
        steps, batch_size: plain SGD recipe (no momentum).
        last: the final loss is the mean minibatch loss over the ``last`` steps. Default: 20.

    Returns:
        array of shape ``(len(rates), len(seeds))`` (``nan`` or ``inf`` where a run diverged).

    Example:
        >>> from normcourse.lab.models import mlp
        >>> learning_rate_sweep(lambda s: mlp(depth=2, width=16, seed=s), [0.1, 1.0], [0, 1],
        ...                     load_digits_tensors(), steps=5).shape
        (2, 2)
    """
    pairs = [(rate, int(seed)) for rate in rates for seed in seeds]
    model = replicate([build(seed) for _, seed in pairs])
    with np.errstate(invalid="ignore", over="ignore"):
        history = train_replicas(model, data, steps=steps, lr=[rate for rate, _ in pairs],
                                 seeds=[seed for _, seed in pairs], batch_size=batch_size)
        final, _ = history.final(last)
    return final.reshape(len(rates), len(seeds))


def gradient_through_steps(gain: float, layer_norm: bool, steps: int = 50, width: int = 128,
                           shared_weights: bool = True, seed: int = 0, eps: float = 1e-5) -> np.ndarray:
    r"""How a gradient's size changes as it flows back through a tanh recurrence or a deep tanh stack.

    .. math::
        h_t = \tanh\big(N(W_t\, h_{t-1})\big), \quad t = 1..T, \qquad L = v^\top h_T,

    with :math:`N` LayerNorm without gain and bias (or the identity), entries of :math:`W_t` drawn from
    :math:`\mathcal N(0, g^2/d)` (the same :math:`W` at every step when ``shared_weights``: an RNN
    unrolled in time without inputs; a new one per step otherwise: a deep stack), and :math:`h_0`, :math:`v`
    standard normal. Computed in float64.

    Args:
        gain: the weight scale :math:`g`.
        layer_norm: put LayerNorm on the pre-activation.
        steps: :math:`T`. Default: 50.
        width: :math:`d`. Default: 128.
        shared_weights: one :math:`W` for every step. Default: True.
        seed: seed of :math:`W`, :math:`h_0` and :math:`v`. Default: 0.
        eps: LayerNorm's :math:`\epsilon`. Default: 1e-5.

    Returns:
        array of length :math:`T + 1`: :math:`\lVert\partial L/\partial h_t\rVert / \lVert\partial L/\partial h_T\rVert`
        for :math:`t = T, T-1, \dots, 0` (steps back from the output).

    Example:
        >>> gradient_through_steps(1.0, layer_norm=True, steps=3, width=8).shape
        (4,)

    Reference: Pascanu, Mikolov & Bengio, ICML 2013 (exploding and vanishing gradients); Ba, Kiros &
    Hinton, 2016 (LayerNorm in recurrent networks).
    """
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(1 if shared_weights else steps, width, width, generator=gen, dtype=torch.float64)
    weights = weights * gain / width ** 0.5
    states = [torch.randn(width, generator=gen, dtype=torch.float64).requires_grad_()]
    for t in range(steps):
        pre_activation = weights[0 if shared_weights else t] @ states[-1]
        if layer_norm:
            pre_activation = F.layer_norm(pre_activation, (width,), eps=eps)
        states.append(torch.tanh(pre_activation))
    readout = torch.randn(width, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad(readout @ states[-1], states)
    norms = np.array([float(g.norm()) for g in grads])[::-1]
    return norms / norms[0]


# ---------------------------------------------------------------- chapter 3: BatchNorm's batch
class GhostBatchNorm2d(nn.BatchNorm2d):
    r"""BatchNorm2d whose training statistics come from groups of ``group_size`` consecutive images.

    A batch of :math:`N = kb` images is split into :math:`k` groups of :math:`b` = ``group_size``; in
    training mode each group is normalized with its own per-channel mean and biased variance over
    :math:`(b, H, W)`,

    .. math::
        y = \frac{x - \mu_{g,c}}{\sqrt{\sigma^2_{g,c} + \epsilon}}\,\gamma_c + \beta_c ,

    exactly as :math:`k` devices running ``nn.BatchNorm2d`` on :math:`b` images each (without
    ``SyncBatchNorm``) would. The running statistics are updated once per step with PyTorch's
    convention, using the average over groups of the group means and of the unbiased group variances
    (the expected value of what one device would store). In evaluation mode it is ``nn.BatchNorm2d``.
    ``group_size = N`` is plain BatchNorm; ``group_size = 1`` normalizes each image's channel over
    space, i.e. InstanceNorm with BatchNorm's affine parameters, in training only.

    Args:
        num_features: :math:`C`.
        group_size: images per statistic, :math:`b`; must divide the training batch size.
        eps, momentum: as in ``nn.BatchNorm2d``. Defaults: 1e-5, 0.1.

    Shape:
        - Input: :math:`(N, C, H, W)` with :math:`N` divisible by ``group_size`` in training.
        - Output: same shape.

    Example:
        >>> bn = GhostBatchNorm2d(3, group_size=2)
        >>> bn(torch.randn(8, 3, 4, 4)).shape
        torch.Size([8, 3, 4, 4])

    Reference: Hoffer, Hubara & Soudry, "Train longer, generalize better", NeurIPS 2017 (ghost batches);
    Wu & He, "Group Normalization", ECCV 2018 (BatchNorm with few images per GPU).
    """

    def __init__(self, num_features: int, group_size: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size = int(group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        n, c, h, w = x.shape
        b = self.group_size
        if n % b:
            raise ValueError(f"batch of {n} images cannot be split into groups of {b}")
        k = n // b
        if b * h * w < 2:
            raise ValueError("Expected more than 1 value per channel when training")
        # Put each group's channels side by side: (k, b, C, H, W) -> (b, k*C, H, W). One call to
        # F.batch_norm then computes k*C separate statistics over (b, H, W), i.e. one per group and channel.
        side_by_side = x.reshape(k, b, c, h, w).transpose(0, 1).reshape(b, k * c, h, w)
        # With momentum 1, F.batch_norm leaves in these buffers exactly the group means and unbiased
        # group variances it computed anyway (a separate mean/var pass cost as much as the layer itself).
        group_mean, group_var = x.new_zeros(k * c), x.new_ones(k * c)
        y = F.batch_norm(side_by_side, group_mean, group_var, self.weight.repeat(k), self.bias.repeat(k),
                         training=True, momentum=1.0, eps=self.eps)
        with torch.no_grad():
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * group_mean.reshape(k, c).mean(0))
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * group_var.reshape(k, c).mean(0))
            self.num_batches_tracked.add_(1)
        return y.reshape(b, k, c, h, w).transpose(0, 1).reshape(n, c, h, w)


def with_ghost_batch_norm(model: nn.Module, group_size: int) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` of ``model`` (in place) by a fresh :class:`GhostBatchNorm2d`.

    BatchNorm's parameters start at gamma = 1, beta = 0 and its running statistics at 0 and 1, so the
    replacement starts exactly where the original did. Returns ``model``.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, GhostBatchNorm2d):
            setattr(model, name, GhostBatchNorm2d(child.num_features, group_size, child.eps, child.momentum))
        else:
            with_ghost_batch_norm(child, group_size)
    return model


def _accuracy(logits: torch.Tensor, y: torch.Tensor):
    """A float for ``(N, K)`` logits; one accuracy per replica, shape ``(S,)``, for ``(S, N, K)``."""
    correct = (logits.argmax(-1) == y).float()
    return float(correct.mean()) if logits.dim() == 2 else correct.mean(-1).numpy()


@torch.no_grad()
def batch_statistics_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, group_size: int):
    """Accuracy when every BatchNorm uses the statistics of ``group_size`` test images at a time.

    The model is copied and put in training mode with momentum 0, so nothing about the original
    (running statistics included) changes. The test set is cut to a multiple of ``group_size``.
    This is BatchNorm evaluated the way it was trained: noisy statistics, no train/eval mismatch.

    Returns:
        a float, or one accuracy per replica (shape ``(S,)``) for a
        :class:`~normcourse.lab.replicas.Replicas` model.
    """
    probe = copy.deepcopy(model).train()
    for module in probe.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.0
            if not isinstance(module, GhostBatchNorm2d):
                raise TypeError("batch_statistics_accuracy expects GhostBatchNorm2d layers "
                                "(see with_ghost_batch_norm) so the group size is explicit")
            module.group_size = group_size
    n = len(y) - len(y) % group_size
    return _accuracy(probe(x[:n]), y[:n])


@torch.no_grad()
def population_statistics_accuracy(model: nn.Module, x_train: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    r"""Accuracy in evaluation mode after recomputing every BatchNorm's statistics on ``x_train``.

    The model is copied; one training-mode pass of the whole of ``x_train`` as a single batch (one
    group, momentum 1) replaces each BatchNorm's running averages by the mean and unbiased variance
    of its input over the whole set, computed layer after layer with the *final* weights:

    .. math::
        \hat\mu_c = \frac{1}{M}\sum_{n,h,w} x_{nchw}, \qquad
        \hat\sigma_c^2 = \frac{1}{M - 1}\sum_{n,h,w} (x_{nchw} - \hat\mu_c)^2, \qquad M = N H W.

    The running averages kept during training lag behind the weights (with momentum 0.1 they average
    the last ten or twenty steps' statistics, taken with older weights); these do not.

    Returns:
        a float, or one accuracy per replica (shape ``(S,)``) for a
        :class:`~normcourse.lab.replicas.Replicas` model.
    """
    probe = copy.deepcopy(model).train()
    for module in probe.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 1.0
            if isinstance(module, GhostBatchNorm2d):
                module.group_size = len(x_train)
    probe(x_train)
    probe.eval()
    return _accuracy(probe(x), y)


@dataclass(frozen=True)
class SweepRow:
    """One run of :func:`batch_size_sweep`.

    Attributes:
        norm: ``"batch_norm"`` or ``"group_norm"``.
        images_per_statistic: BatchNorm's group size ``b`` (for GroupNorm: the value of the sweep it
            stands in for; its statistics never involve other images).
        seed: seed of the weights and of the minibatch order.
        train_accuracy: mean minibatch accuracy over the last 50 updates (train mode).
        test_accuracy: held-out accuracy in evaluation mode (BatchNorm: running statistics).
        test_accuracy_population_stats: held-out accuracy in evaluation mode after recomputing
            BatchNorm's statistics over the training set (:func:`population_statistics_accuracy`).
        test_accuracy_batch_stats: held-out accuracy with statistics from groups of ``b`` test images
            (:func:`batch_statistics_accuracy`).

    For GroupNorm the three test accuracies are the same number.
    """

    norm: str
    images_per_statistic: int
    seed: int
    train_accuracy: float
    test_accuracy: float
    test_accuracy_population_stats: float
    test_accuracy_batch_stats: float


def batch_size_sweep(images_per_statistic=(32, 8, 4, 2, 1), seeds=(0,), steps: int = 500,
                     lr: float = 0.05, momentum: float = 0.9, batch_size: int = 32, groups: int = 4,
                     data: DigitsData | None = None) -> list[SweepRow]:
    r"""BatchNorm versus GroupNorm as BatchNorm's statistics are taken over fewer images.

    GroupNorm (``groups`` groups) is trained once per seed and BatchNorm once per seed and value
    :math:`b` of ``images_per_statistic``; every run uses :func:`normcourse.lab.models.small_cnn`, SGD
    with the same ``lr``, ``momentum``, ``steps`` and minibatches of ``batch_size`` drawn in the same
    order for the same seed. Only the number of images per BatchNorm statistic changes
    (:class:`GhostBatchNorm2d`). The seeds of one arm are trained together as replicas.

    Args:
        images_per_statistic: values of :math:`b`; each must divide ``batch_size``. Default: (32, 8, 4, 2, 1).
        seeds: seeds of weights and minibatch order. Default: (0,).
        steps: SGD updates per run. Default: 500.
        lr, momentum: SGD settings (chosen to train well at ``batch_size``). Defaults: 0.05, 0.9.
        batch_size: images per update. Default: 32.
        groups: GroupNorm groups (the CNN has 16 and 32 channels). Default: 4.
        data: a :class:`normcourse.lab.models.DigitsData`; default :func:`load_digits_tensors`.

    Returns:
        list of :class:`SweepRow`, GroupNorm's rows first, repeated for every :math:`b` so both
        curves can be drawn over the same axis; within an arm, rows follow ``seeds``.

    Example:
        >>> rows = batch_size_sweep(images_per_statistic=(32, 2), steps=20)
        >>> sorted({r.norm for r in rows})
        ['batch_norm', 'group_norm']

    Reference: Wu & He, "Group Normalization", ECCV 2018, Table 2 and Figure 5; Hoffer, Hubara &
    Soudry, NeurIPS 2017 (ghost batches).
    """
    data = load_digits_tensors() if data is None else data
    for b in images_per_statistic:
        if batch_size % b:
            raise ValueError(f"images_per_statistic={b} must divide batch_size={batch_size}")
    seeds = tuple(int(s) for s in seeds)
    recipe = dict(steps=steps, lr=lr, batch_size=batch_size, momentum=momentum)
    rows = []
    arm = run_arm(lambda s: small_cnn("group_norm", groups=groups, seed=s), seeds, data, **recipe)
    train_accuracy = arm.history.final(50)[1]
    for b in images_per_statistic:
        for i, seed in enumerate(seeds):
            test = float(arm.test_accuracy[i])
            rows.append(SweepRow("group_norm", b, seed, float(train_accuracy[i]), test, test, test))
    for b in images_per_statistic:
        arm = run_arm(lambda s: with_ghost_batch_norm(small_cnn("batch_norm", seed=s), b), seeds, data, **recipe)
        train_accuracy = arm.history.final(50)[1]
        population = population_statistics_accuracy(arm.model, data.x_train, data.x_test, data.y_test)
        batch_stats = batch_statistics_accuracy(arm.model, data.x_test, data.y_test, b)
        for i, seed in enumerate(seeds):
            rows.append(SweepRow("batch_norm", b, seed, float(train_accuracy[i]), float(arm.test_accuracy[i]),
                                 float(population[i]), float(batch_stats[i])))
    return rows
