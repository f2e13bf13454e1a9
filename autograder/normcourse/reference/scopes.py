"""Reduction scopes of the normalization layers, as data.

Every normalization layer computes a mean and a variance (or a mean square) over some axes of its
input and then rescales. *Which* axes is the whole difference between BatchNorm, LayerNorm,
InstanceNorm, GroupNorm and RMSNorm. This module records that choice once, as data, for the data
layouts used in the course:

========  =====================================  ==========================================
layout    meaning                                example
========  =====================================  ==========================================
``NCHW``  images: batch, channels, height, width  a conv feature map
``NC``    feature vectors: batch, features        the input of a fully connected layer
``NCL``   1-d signals: batch, channels, length    audio, or a sequence fed to ``BatchNorm1d``
``BSD``   sequences: batch, sequence, model dim   the residual stream of a Transformer
========  =====================================  ==========================================

The forward passes in :mod:`normcourse.reference.forward`, the figures in :mod:`normcourse.book.figures`
and the tests all read their axes from here, so a figure can never disagree with the code it draws.

GroupNorm is the one scope that is not a plain set of axes: it splits the channel axis into
``num_groups`` contiguous groups and reduces over (channels of one group) x (all spatial axes).
:func:`statistics_view` expresses this by reshaping ``(N, C, *S)`` to ``(N, G, C // G, *S)``, after
which it *is* a plain set of axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NORMS = ("batch_norm", "layer_norm", "instance_norm", "group_norm", "rms_norm")
LAYOUTS = ("NCHW", "NC", "NCL", "BSD")
#: The named channel-first layout of each input rank; other ranks (e.g. N,C,D,H,W) follow the same rule.
CHANNEL_FIRST_LAYOUTS = {2: "NC", 3: "NCL", 4: "NCHW"}


@dataclass(frozen=True)
class Scope:
    """Where a normalization layer takes its statistics and where its affine parameters live.

    Attributes:
        norm: one of :data:`NORMS`.
        layout: one of :data:`LAYOUTS`.
        reduced_axes: axes of the input that one statistic is computed over. For GroupNorm the channel
            axis appears here but is reduced only *within* a group (see ``grouped_axis``).
        grouped_axis: for GroupNorm, the axis split into groups (1, the channel axis); otherwise None.
        param_axes: axes that the learnable gain/bias are indexed by (one parameter per position).
        centers: whether the mean is subtracted (False only for RMSNorm).
        uses_batch: whether statistics mix different samples of the batch (True only for BatchNorm).
        description: one line for readers.
    """

    norm: str
    layout: str
    reduced_axes: tuple[int, ...]
    param_axes: tuple[int, ...]
    grouped_axis: int | None = None
    centers: bool = True
    description: str = ""

    @property
    def uses_batch(self) -> bool:
        return 0 in self.reduced_axes

    @property
    def kept_axes(self) -> tuple[int, ...]:
        """Axes along which separate statistics are kept (one mean per index)."""
        ndim = len(self.layout)
        return tuple(a for a in range(ndim) if a not in self.reduced_axes)

    def axis_names(self, axes: tuple[int, ...]) -> str:
        return ",".join(self.layout[a] for a in axes)


def _scope_table() -> dict[tuple[str, str], Scope]:
    table = {}

    def add(norm, layout, reduced, params, description, grouped=None, centers=True):
        table[(norm, layout)] = Scope(norm, layout, tuple(reduced), tuple(params), grouped, centers,
                                      description)

    # BatchNorm: one statistic per channel / feature, over the batch and every position.
    add("batch_norm", "NCHW", (0, 2, 3), (1,), "per channel, over batch and space")
    add("batch_norm", "NC", (0,), (1,), "per feature, over the batch")
    add("batch_norm", "NCL", (0, 2), (1,), "per channel, over batch and length")
    add("batch_norm", "BSD", (0, 1), (2,), "per feature, over batch and all tokens (padding included)")
    # LayerNorm: one statistic per sample (images) or per token (sequences).
    add("layer_norm", "NCHW", (1, 2, 3), (1, 2, 3), "per sample, over channels and space")
    add("layer_norm", "NC", (1,), (1,), "per sample, over features")
    add("layer_norm", "NCL", (1, 2), (1, 2), "per sample, over channels and length")
    add("layer_norm", "BSD", (2,), (2,), "per token, over the model dimension")
    # InstanceNorm: one statistic per sample and channel, over positions only.
    add("instance_norm", "NCHW", (2, 3), (1,), "per sample and channel, over space")
    add("instance_norm", "NC", (), (1,), "undefined: no positions to reduce over")
    add("instance_norm", "NCL", (2,), (1,), "per sample and channel, over length")
    add("instance_norm", "BSD", (1,), (2,), "per sequence and feature, over tokens (not the Transformer 'strip')")
    # GroupNorm: per sample and group of channels, over the group's channels and space.
    add("group_norm", "NCHW", (1, 2, 3), (1,), "per sample and channel group, over the group and space", grouped=1)
    add("group_norm", "NC", (1,), (1,), "per sample and feature group", grouped=1)
    add("group_norm", "NCL", (1, 2), (1,), "per sample and channel group, over the group and length", grouped=1)
    add("group_norm", "BSD", (2,), (2,), "per token and feature group", grouped=2)
    # RMSNorm: LayerNorm's scope without centering.
    add("rms_norm", "NCHW", (1, 2, 3), (1, 2, 3), "per sample, over channels and space (no centering)", centers=False)
    add("rms_norm", "NC", (1,), (1,), "per sample, over features (no centering)", centers=False)
    add("rms_norm", "NCL", (1, 2), (1, 2), "per sample, over channels and length (no centering)", centers=False)
    add("rms_norm", "BSD", (2,), (2,), "per token, over the model dimension (no centering)", centers=False)
    return table


SCOPES: dict[tuple[str, str], Scope] = _scope_table()


def scope(norm: str, layout: str) -> Scope:
    """The :class:`Scope` of ``norm`` on ``layout``; raises ``KeyError`` naming the valid choices."""
    try:
        return SCOPES[(norm, layout)]
    except KeyError:
        raise KeyError(f"no scope for norm={norm!r}, layout={layout!r}; norms are {NORMS}, "
                       f"layouts are {LAYOUTS}") from None


def reduction_axes(norm: str, layout: str) -> tuple[int, ...]:
    """Axes of an input in ``layout`` over which ``norm`` computes one statistic.

    Example:
        >>> reduction_axes("batch_norm", "NCHW")
        (0, 2, 3)
        >>> reduction_axes("layer_norm", "BSD")
        (2,)
    """
    return scope(norm, layout).reduced_axes


def channel_first_axes(norm: str, ndim: int) -> tuple[int, ...]:
    """Reduction axes for a channel-first input ``(N, C, *S)`` of rank ``ndim``, as the forward passes use.

    This extends the table to any number of spatial axes (PyTorch accepts ``(N, C, D, H, W)`` too):
    BatchNorm reduces ``(0, 2, ...)``, InstanceNorm ``(2, ...)``. Named layouts agree with :data:`SCOPES`.
    """
    if norm not in ("batch_norm", "instance_norm"):
        raise ValueError(f"channel_first_axes is defined for batch_norm and instance_norm, not {norm!r}")
    if ndim in CHANNEL_FIRST_LAYOUTS:
        return reduction_axes(norm, CHANNEL_FIRST_LAYOUTS[ndim])
    spatial = tuple(range(2, ndim))
    return ((0,) + spatial) if norm == "batch_norm" else spatial


def trailing_axes(ndim: int, n_normalized: int) -> tuple[int, ...]:
    """The last ``n_normalized`` axes of a rank-``ndim`` input: LayerNorm's and RMSNorm's scope."""
    return tuple(range(ndim - n_normalized, ndim))


def statistics_view(x: np.ndarray, num_groups: int) -> np.ndarray:
    """Reshape ``(N, C, *S)`` to ``(N, G, C // G, *S)`` so that GroupNorm reduces over axes ``2..``.

    Channels are grouped contiguously, as in PyTorch: group ``g`` holds channels
    ``g * C // G, ..., (g + 1) * C // G - 1``.
    """
    n, c = x.shape[:2]
    return x.reshape((n, num_groups, c // num_groups) + x.shape[2:])


def scope_mask(norm: str, layout: str, shape: tuple[int, ...], index: tuple[int, ...],
               num_groups: int | None = None) -> np.ndarray:
    """Boolean mask of the elements that share one statistic with the element at ``index``.

    This is the picture behind the familiar "normalization cube" figure: it is computed from
    :data:`SCOPES`, so the figure shows exactly what the code does.
    """
    sc = scope(norm, layout)
    if len(shape) != len(layout):
        raise ValueError(f"shape {shape} has rank {len(shape)}, layout {layout!r} needs rank {len(layout)}")
    mask = np.ones(shape, dtype=bool)
    grids = np.indices(shape)
    for axis in range(len(shape)):
        if axis == sc.grouped_axis:
            if num_groups is None:
                raise ValueError("group_norm needs num_groups")
            size = shape[axis] // num_groups
            mask &= (grids[axis] // size) == (index[axis] // size)
        elif axis not in sc.reduced_axes:
            mask &= grids[axis] == index[axis]
    return mask
