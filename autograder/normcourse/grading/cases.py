"""Seeded inputs for hidden tests: random shapes, random inputs and the edge cases every part must cover.

A problem-set module builds its ``cases(rng)`` from these pieces, so every part draws its shapes and
its edge cases the same way::

    def _layer_norm_cases(rng):
        cases = []
        for layout in ("NC", "BSD", "NCHW"):
            x = random_input(rng, random_shape(rng, layout))
            cases.append(Case(f"random {layout} {x.shape}", (x, x.shape[-1:])))
        for label, x in edge_cases(rng, random_shape(rng, "BSD")):
            cases.append(Case(label, (x, x.shape[-1:])))
        return cases

The edge cases (see :data:`EDGE_LABELS`) are the ones the course promises learners: batch size 1,
constant input (zero variance, so only eps keeps the division defined), magnitudes around 1e4,
float32 input, and non-contiguous arrays. Each label starts with the fixed words in
:data:`EDGE_LABELS`, so a failure message names the edge case and tests can check coverage.
"""

from __future__ import annotations

import numpy as np

from ..reference.scopes import LAYOUTS

__all__ = ["EDGE_LABELS", "random_shape", "random_input", "non_contiguous", "random_eps",
           "random_affine", "edge_cases", "describe", "array_arguments"]

#: The leading words of the labels :func:`edge_cases` produces, one per kind of edge case.
EDGE_LABELS = ("batch size 1", "constant input", "magnitude 1e4", "float32", "non-contiguous")


def random_shape(rng: np.random.Generator, layout: str, *, batch: int | None = None,
                 channels: int | None = None, low: int = 2, high: int = 6) -> tuple[int, ...]:
    """A random shape for ``layout`` (one of ``"NC"``, ``"NCL"``, ``"NCHW"``, ``"BSD"``).

    Args:
        rng: the seeded generator of the part.
        layout: data layout; its letters name the axes (N/B batch, C channels, S tokens, D features).
        batch: fix the batch size (axis 0) instead of drawing it. Default: random in ``[low, high]``.
        channels: fix axis 1 (the channels of a channel-first layout). Default: random.
        low, high: inclusive bounds of every drawn size. Defaults: 2 and 6 (small, so a case runs in
            microseconds, but never 1: a size of 1 is an edge case, asked for explicitly).

    Returns:
        a tuple of ``len(layout)`` positive ints.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; layouts are {LAYOUTS}")
    shape = [int(s) for s in rng.integers(low, high + 1, size=len(layout))]
    if batch is not None:
        shape[0] = batch
    if channels is not None:
        shape[1] = channels
    return tuple(shape)


def random_input(rng: np.random.Generator, shape: tuple[int, ...], dtype=np.float64, scale: float = 1.0,
                 offset: float = 0.0) -> np.ndarray:
    """Normal random values ``offset + scale * z`` of ``shape``, returned C-contiguous in ``dtype``.

    A random per-call offset is added on top (uniform in [-1, 1] times ``scale``) so that means are
    never zero by construction: a learner who forgets to subtract the mean must fail.
    """
    shift = rng.uniform(-1.0, 1.0) * scale
    x = offset + shift + scale * rng.standard_normal(shape)
    return np.ascontiguousarray(x.astype(dtype))


def non_contiguous(x: np.ndarray) -> np.ndarray:
    """The same values and shape as ``x``, stored with the axes in reverse memory order.

    The result is a view that is not C-contiguous (for ``x.ndim >= 2``). Axis permutation is used
    rather than slicing with a step because :class:`~normcourse.grading.parts.Part` deep-copies
    arguments, and a deep copy keeps a permuted memory order but compacts the gaps of a strided slice.
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"non_contiguous needs at least 2 dimensions, got shape {x.shape}")
    permuted = np.ascontiguousarray(np.transpose(x))  # memory laid out with the last axis slowest
    return np.transpose(permuted)


def random_eps(rng: np.random.Generator) -> float:
    """eps drawn log-uniformly from [1e-6, 1e-2]: large enough to matter for small variances."""
    return float(10.0 ** rng.uniform(-6, -2))


def random_affine(rng: np.random.Generator, shape: tuple[int, ...] | int, *, weight: bool | None = None,
                  bias: bool | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A random ``(weight, bias)`` pair of ``shape``; each is None with probability 1/2 unless fixed.

    Weights are drawn around 1 with both signs possible; biases around 0.
    """
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    use_weight = bool(rng.integers(2)) if weight is None else weight
    use_bias = bool(rng.integers(2)) if bias is None else bias
    w = 1.0 + 0.5 * rng.standard_normal(shape) if use_weight else None
    b = 0.5 * rng.standard_normal(shape) if use_bias else None
    return w, b


def edge_cases(rng: np.random.Generator, shape: tuple[int, ...], *, batch_one: bool = True,
               dtype=np.float64) -> list[tuple[str, np.ndarray]]:
    """Labelled edge-case inputs of (about) ``shape``: one per entry of :data:`EDGE_LABELS`.

    Args:
        rng: the seeded generator of the part.
        shape: the shape to use; axis 0 is the batch axis.
        batch_one: include the batch-size-1 case (pass False where a batch of one is illegal, e.g.
            BatchNorm on ``(N, C)`` input in training mode).
        dtype: dtype of every case except the float32 one. Default: float64.

    Returns:
        a list of ``(label, x)``; the labels start with the words in :data:`EDGE_LABELS` and add the shape.
    """
    shape = tuple(int(s) for s in shape)
    cases = []
    if batch_one:
        one = (1,) + shape[1:]
        cases.append((f"batch size 1, shape {one}", random_input(rng, one, dtype)))
    constant = float(np.round(rng.uniform(-3, 3), 3))
    cases.append((f"constant input (every element {constant}: zero variance), shape {shape}",
                  np.full(shape, constant, dtype=dtype)))
    cases.append((f"magnitude 1e4, shape {shape}", random_input(rng, shape, dtype, scale=1e4)))
    cases.append((f"float32 input, shape {shape}", random_input(rng, shape, np.float32)))
    cases.append((f"non-contiguous input (axes stored in reverse order), shape {shape}",
                  non_contiguous(random_input(rng, shape, dtype))))
    return cases


def describe(x: np.ndarray, eps: float | None = None, weight=None, bias=None) -> str:
    """The words a case label uses for an input and its settings: ``"shape (2, 3), float32, eps=1e-05,
    weight and bias"`` (``eps=None`` is written out; pass ``eps=...`` only where the function has one)."""
    affine = " and ".join(n for n, p in (("weight", weight), ("bias", bias)) if p is not None) or "no affine"
    eps_text = "eps=None" if eps is None else f"eps={eps:.3g}"
    return f"shape {x.shape}, {x.dtype}, {eps_text}, {affine}"


def array_arguments(args: tuple) -> tuple[int, ...]:
    """Indices of the numpy arrays among positional ``args``: pass them as ``Case(inplace=...)`` to check
    that a function leaves its inputs as it found them (the reference does, so any write shows up as
    "argument 'input' ... after the call" with the first changed element)."""
    return tuple(i for i, a in enumerate(args) if isinstance(a, np.ndarray))
