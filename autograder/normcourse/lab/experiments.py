r"""Small experiments the scope chapters run: BatchNorm versus GroupNorm as BatchNorm's batch shrinks.

Wu & He (2018, Table 2) report that BatchNorm's ImageNet error grows as fewer images are normalized
together on each GPU, while GroupNorm, whose statistics never look across images, stays flat. Three
things change at once when one simply trains with smaller batches: the statistics get noisier, the
gradient gets noisier (so the learning rate must change), and for a fixed number of epochs the number
of updates changes. :func:`batch_size_sweep` keeps the *optimization* fixed (same batches of 32, same
learning rate, same number of updates, same seed) and changes only how many images BatchNorm pools its
statistics over, by splitting each batch into groups the way unsynchronised multi-GPU BatchNorm does
(:class:`GhostBatchNorm2d`). GroupNorm is unaffected by construction; BatchNorm is then evaluated two
ways, which separates the two ways small batches hurt it:

- with its running statistics (``model.eval()``, as deployed): noisy statistics *and* the mismatch
  between the statistics seen in training and the running averages used at test time;
- with statistics of groups of the same size taken from the test images themselves (train-mode
  statistics): the noise alone, with no train/eval mismatch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .models import DigitsData, accuracy, load_digits_tensors, small_cnn, train

__all__ = ["GhostBatchNorm2d", "with_ghost_batch_norm", "batch_statistics_accuracy", "SweepRow",
           "batch_size_sweep"]


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
        with torch.no_grad():
            values = x.detach().reshape(k, b, c, h * w).transpose(1, 2).reshape(k, c, b * h * w)
            count = values.shape[-1]
            if count < 2:
                raise ValueError("Expected more than 1 value per channel when training")
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * values.mean(-1).mean(0))
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * values.var(-1).mean(0))
            self.num_batches_tracked.add_(1)
        # Put each group's channels side by side: (k, b, C, H, W) -> (b, k*C, H, W). One call to
        # F.batch_norm then computes k*C separate statistics over (b, H, W), i.e. one per group and channel.
        side_by_side = x.reshape(k, b, c, h, w).transpose(0, 1).reshape(b, k * c, h, w)
        y = F.batch_norm(side_by_side, None, None, self.weight.repeat(k), self.bias.repeat(k),
                         training=True, eps=self.eps)
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


@torch.no_grad()
def batch_statistics_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, group_size: int) -> float:
    """Accuracy when every BatchNorm uses the statistics of ``group_size`` test images at a time.

    The model is copied and put in training mode with momentum 0, so nothing about the original
    (running statistics included) changes. The test set is cut to a multiple of ``group_size``.
    This is BatchNorm evaluated the way it was trained: noisy statistics, no train/eval mismatch.
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
    return float((probe(x[:n]).argmax(dim=1) == y[:n]).float().mean())


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
        test_accuracy_batch_stats: held-out accuracy with statistics from groups of ``b`` test images
            (BatchNorm only; equal to ``test_accuracy`` for GroupNorm).
    """

    norm: str
    images_per_statistic: int
    seed: int
    train_accuracy: float
    test_accuracy: float
    test_accuracy_batch_stats: float


def batch_size_sweep(images_per_statistic=(32, 8, 4, 2, 1), seeds=(0,), steps: int = 500,
                     lr: float = 0.05, momentum: float = 0.9, batch_size: int = 32, groups: int = 4,
                     data: DigitsData | None = None) -> list[SweepRow]:
    r"""BatchNorm versus GroupNorm as BatchNorm's statistics are taken over fewer images.

    For every seed, GroupNorm (``groups`` groups) is trained once and BatchNorm once per value
    :math:`b` of ``images_per_statistic``; every run uses :func:`normcourse.lab.models.small_cnn`, SGD with
    the same ``lr``, ``momentum``, ``steps`` and minibatches of ``batch_size`` drawn in the same order.
    Only the number of images per BatchNorm statistic changes (:class:`GhostBatchNorm2d`).

    Args:
        images_per_statistic: values of :math:`b`; each must divide ``batch_size``. Default: (32, 8, 4, 2, 1).
        seeds: seeds of weights and minibatch order. Default: (0,).
        steps: SGD updates per run. Default: 500.
        lr, momentum: SGD settings (chosen to train well at ``batch_size``). Defaults: 0.05, 0.9.
        batch_size: images per update. Default: 32.
        groups: GroupNorm groups (the CNN has 16 and 32 channels). Default: 4.
        data: a :class:`normcourse.lab.models.DigitsData`; default :func:`load_digits_tensors`.

    Returns:
        list of :class:`SweepRow`, GroupNorm's row repeated for every :math:`b` so both curves can be
        drawn over the same axis.

    Example:
        >>> rows = batch_size_sweep(images_per_statistic=(32, 2), steps=20)
        >>> sorted({r.norm for r in rows})
        ['batch_norm', 'group_norm']

    Reference: Wu & He, "Group Normalization", ECCV 2018, Table 2 and Figure 5.
    """
    data = load_digits_tensors() if data is None else data
    for b in images_per_statistic:
        if batch_size % b:
            raise ValueError(f"images_per_statistic={b} must divide batch_size={batch_size}")
    rows = []
    for seed in seeds:
        model = small_cnn("group_norm", groups=groups, seed=seed)
        history = train(model, data, steps=steps, lr=lr, batch_size=batch_size, momentum=momentum, seed=seed)
        test = accuracy(model, data.x_test, data.y_test)
        for b in images_per_statistic:
            rows.append(SweepRow("group_norm", b, seed, history.final(50)[1], test, test))
        for b in images_per_statistic:
            model = with_ghost_batch_norm(small_cnn("batch_norm", seed=seed), b)
            history = train(model, data, steps=steps, lr=lr, batch_size=batch_size, momentum=momentum,
                            seed=seed)
            rows.append(SweepRow("batch_norm", b, seed, history.final(50)[1],
                                 accuracy(model, data.x_test, data.y_test),
                                 batch_statistics_accuracy(model, data.x_test, data.y_test, b)))
    return rows
