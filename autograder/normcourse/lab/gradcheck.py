r"""Scalar test functions for gradient checks, handed to the learner by problem set 3.

A gradient-check case needs a function :math:`f: \mathbb{R}^{n} \to \mathbb{R}` to differentiate. The
grader builds them from these with :func:`functools.partial`, so the cases pickle by reference to this
module alone: the out-of-kernel re-check loads them where no other course module exists (problem set 3
lists this module in ``provides``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["cubic", "upstream_loss"]


def cubic(x, coefficients) -> float:
    r""":math:`\sum_i c_i x_i^3 + \sin(x_i)`: curved enough that forward differences are visibly wrong.

    Args:
        x (np.ndarray): the point, any shape.
        coefficients (np.ndarray): :math:`c`, the shape of ``x``.

    Example::

        >>> cubic(np.zeros(3), np.ones(3))
        0.0
    """
    return float(np.sum(coefficients * x ** 3 + np.sin(x)))


def upstream_loss(x, forward, dy, **kwargs) -> float:
    r"""The scalar :math:`L = \sum dy \odot \text{forward}(x)`, whose gradient is the backward pass's ``dx``.

    Args:
        x (np.ndarray): the input of ``forward``.
        forward (callable): ``forward(x, **kwargs)``, an array of the shape of ``dy``.
        dy (np.ndarray): the upstream gradient.

    Example::

        >>> upstream_loss(np.ones(2), np.tanh, np.array([1.0, -1.0]))
        0.0
    """
    return float(np.sum(dy * forward(x, **kwargs)))
