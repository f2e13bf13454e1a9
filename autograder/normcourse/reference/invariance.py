r"""The invariance table of Ba, Kiros & Hinton (2016, Table 1), extended with RMSNorm, as data.

One hidden layer with ``H`` units sees a batch ``X`` of ``N`` cases with ``D`` features. Following Ba
et al. (Section 5.1), its pre-activations are :math:`a = W x` (``A = X @ W.T``, shape ``(N, H)``), and
the normalized output is

.. math::
    y = \frac{g}{\sigma}\odot(a - \mu) + b

with the gain :math:`g` and the bias :math:`b` *after* the normalization, as in the paper and in every
PyTorch normalization layer. (A bias added to :math:`a` before a per-case normalization would be a
different model: for LayerNorm it breaks the data re-scaling invariance below; for BatchNorm it is
simply cancelled by the mean.)

A transformation of the weights or of the data is an **invariance** of a normalization when the
layer's output :math:`y` is unchanged by it, for every ``W`` and ``X``. The six columns, each a function
below that maps ``(W, X)`` to the transformed ``(W', X')``:

=============================  ================================================  ====  ====  =======
column                         transformation                                    BN    LN    RMSNorm
=============================  ================================================  ====  ====  =======
``weight_matrix_rescale``      :math:`W \to \delta W`                            yes   yes   yes
``weight_matrix_recenter``     :math:`W \to W + \mathbf 1 v^\top` (same row      no    yes   no
                               vector added to every row)
``weight_vector_rescale``      one row :math:`w_i \to \delta w_i`                yes   no    no
``data_rescale``               :math:`X \to \delta X`                            yes   yes   yes
``data_recenter``              every case :math:`x_n \to x_n + c`                yes   no    no
``single_case_rescale``        one case :math:`x_n \to \delta x_n`               no    yes   yes
=============================  ================================================  ====  ====  =======

Why, in one line each (:math:`\delta > 0`): re-scalings of everything a statistic is computed over
cancel in :math:`(a-\mu)/\sigma`. BatchNorm's statistics are per unit over the batch, so per-unit
scalings (one weight vector) and per-unit shifts constant over the batch (data re-centering adds
:math:`Wc`) cancel, while one case re-scaled changes every unit's batch statistics. LayerNorm's
statistics are per case over the units, so a shift by the same scalar for every unit of a case
(:math:`a_n \to a_n + (v^\top x_n)\mathbf 1`, the weight-matrix re-centering) and per-case scalings cancel,
while scaling one unit or shifting by :math:`Wc` (different for each unit) does not. RMSNorm has
LayerNorm's scope without centering: it keeps the scalings and loses both shifts.

"Unchanged" is up to :math:`\epsilon`: with :math:`\epsilon > 0` a re-scaling changes
:math:`\sigma^2 + \epsilon` by a factor slightly different from :math:`\delta^2`. The check below therefore
uses a tiny :data:`DEFAULT_EPS` and a tolerance derived from it (:func:`check_invariance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .forward import batch_norm, layer_norm, rms_norm

__all__ = ["COLUMNS", "COLUMN_TITLES", "INVARIANCE_NORMS", "INVARIANCE_TABLE", "DEFAULT_EPS",
           "rescale_weight_matrix", "recenter_weight_matrix", "rescale_weight_vector", "rescale_data",
           "recenter_data", "rescale_single_case", "TRANSFORMS", "random_transform", "layer_output",
           "InvarianceCheck", "check_invariance", "verify_table"]

COLUMNS = ("weight_matrix_rescale", "weight_matrix_recenter", "weight_vector_rescale", "data_rescale",
           "data_recenter", "single_case_rescale")

#: Column headings as Ba et al. print them.
COLUMN_TITLES = {
    "weight_matrix_rescale": "Weight matrix re-scaling",
    "weight_matrix_recenter": "Weight matrix re-centering",
    "weight_vector_rescale": "Weight vector re-scaling",
    "data_rescale": "Dataset re-scaling",
    "data_recenter": "Dataset re-centering",
    "single_case_rescale": "Single training case re-scaling",
}

INVARIANCE_NORMS = ("batch_norm", "layer_norm", "rms_norm")


def _row(*flags: bool) -> dict[str, bool]:
    return dict(zip(COLUMNS, flags))


#: ``INVARIANCE_TABLE[norm][column]`` is True when the transformation leaves the output unchanged.
#: BN and LN rows: Ba et al. 2016, Table 1; RMSNorm row: Zhang & Sennrich 2019, Table 1.
INVARIANCE_TABLE: dict[str, dict[str, bool]] = {
    "batch_norm": _row(True, False, True, True, True, False),
    "layer_norm": _row(True, True, False, True, False, True),
    "rms_norm": _row(True, False, False, True, False, True),
}

#: eps used when checking the table: negligible next to any variance a random layer produces.
DEFAULT_EPS = 1e-12


def rescale_weight_matrix(W, X, delta: float):
    r""":math:`W \to \delta W`: every incoming weight of every unit scaled by the same ``delta``."""
    return delta * np.asarray(W, dtype=np.float64), np.asarray(X, dtype=np.float64)


def recenter_weight_matrix(W, X, row):
    r""":math:`W \to W + \mathbf 1 v^\top`: the same row vector ``row`` (shape ``(D,)``) added to every row.

    Every unit's pre-activation for case :math:`x` moves by the same scalar :math:`v^\top x`.
    """
    W = np.asarray(W, dtype=np.float64)
    return W + np.asarray(row, dtype=np.float64)[None, :], np.asarray(X, dtype=np.float64)


def rescale_weight_vector(W, X, delta: float, unit: int = 0):
    r"""One unit's incoming weight vector :math:`w_{\text{unit}} \to \delta w_{\text{unit}}`."""
    W = np.array(W, dtype=np.float64)
    W[unit] *= delta
    return W, np.asarray(X, dtype=np.float64)


def rescale_data(W, X, delta: float):
    r""":math:`X \to \delta X`: every case of the data set scaled by the same ``delta``."""
    return np.asarray(W, dtype=np.float64), delta * np.asarray(X, dtype=np.float64)


def recenter_data(W, X, shift):
    r"""Every case :math:`x_n \to x_n + c`: the same vector ``shift`` (shape ``(D,)``) added to every case."""
    X = np.asarray(X, dtype=np.float64)
    return np.asarray(W, dtype=np.float64), X + np.asarray(shift, dtype=np.float64)[None, :]


def rescale_single_case(W, X, delta: float, case: int = 0):
    r"""One training case :math:`x_{\text{case}} \to \delta x_{\text{case}}`, the others unchanged."""
    X = np.array(X, dtype=np.float64)
    X[case] *= delta
    return np.asarray(W, dtype=np.float64), X


#: The transformation of each column; each takes ``(W, X, parameter)`` as its first three arguments.
TRANSFORMS = {
    "weight_matrix_rescale": rescale_weight_matrix,
    "weight_matrix_recenter": recenter_weight_matrix,
    "weight_vector_rescale": rescale_weight_vector,
    "data_rescale": rescale_data,
    "data_recenter": recenter_data,
    "single_case_rescale": rescale_single_case,
}


def random_transform(column: str, W, X, rng: np.random.Generator):
    """Apply ``column``'s transformation with a parameter drawn from ``rng`` (scales in [0.2, 5])."""
    W, X = np.asarray(W, dtype=np.float64), np.asarray(X, dtype=np.float64)
    if column in ("weight_matrix_recenter", "data_recenter"):
        return TRANSFORMS[column](W, X, rng.normal(scale=2.0, size=W.shape[1]))
    delta = float(np.exp(rng.uniform(np.log(0.2), np.log(5.0))))
    return TRANSFORMS[column](W, X, delta)


def layer_output(norm: str, W, X, gain=None, bias=None, eps: float = DEFAULT_EPS) -> np.ndarray:
    r"""The normalized layer :math:`y = g \odot \mathrm{norm}(X W^\top) + b`, shape ``(N, H)``.

    ``batch_norm`` uses training-mode batch statistics (per unit, over the ``N`` cases);
    ``layer_norm`` and ``rms_norm`` normalize each case over its ``H`` units.
    """
    A = np.asarray(X, dtype=np.float64) @ np.asarray(W, dtype=np.float64).T
    if norm == "batch_norm":
        y = batch_norm(A, None, None, training=True, eps=eps)
    elif norm == "layer_norm":
        y = layer_norm(A, (A.shape[1],), eps=eps)
    elif norm == "rms_norm":
        y = rms_norm(A, (A.shape[1],), eps=eps)
    else:
        raise ValueError(f"norm must be one of {INVARIANCE_NORMS}, got {norm!r}")
    if gain is not None:
        y = y * np.asarray(gain, dtype=np.float64)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)
    return y


def _smallest_statistic(norm: str, A: np.ndarray) -> float:
    """The smallest variance (mean square for RMSNorm) any output of ``norm`` divides by."""
    if norm == "batch_norm":
        return float(A.var(axis=0).min())
    if norm == "layer_norm":
        return float(A.var(axis=1).min())
    return float(np.mean(np.square(A), axis=1).min())


@dataclass(frozen=True)
class InvarianceCheck:
    """Outcome of one transformation: the largest output change and the tolerance eps allows."""

    change: float
    tolerance: float

    @property
    def invariant(self) -> bool:
        return self.change <= self.tolerance


def check_invariance(norm: str, W, X, W_new, X_new, gain=None, bias=None,
                     eps: float = DEFAULT_EPS) -> InvarianceCheck:
    r"""Compare the layer's output before and after a transformation, with an eps-aware tolerance.

    The tolerance is :math:`10^{-9} + \max|g| \sqrt{m}\,\epsilon / \sigma^2_{\min}`: replacing
    :math:`1/\sqrt{\sigma^2}` by :math:`1/\sqrt{\sigma^2 + \epsilon}` changes it by a relative
    :math:`\epsilon/(2\sigma^2)` at most, each :math:`|\hat x| \le \sqrt m` (``m`` elements per statistic),
    and a re-scaling can move this error in either direction (factor 2); :math:`10^{-9}` covers float64
    rounding. :math:`\sigma^2_{\min}` is the smallest statistic before or after the transformation.
    """
    before = layer_output(norm, W, X, gain, bias, eps)
    after = layer_output(norm, W_new, X_new, gain, bias, eps)
    A = np.asarray(X, dtype=np.float64) @ np.asarray(W, dtype=np.float64).T
    A_new = np.asarray(X_new, dtype=np.float64) @ np.asarray(W_new, dtype=np.float64).T
    smallest = min(_smallest_statistic(norm, A), _smallest_statistic(norm, A_new))
    m = A.shape[0] if norm == "batch_norm" else A.shape[1]
    g = 1.0 if gain is None else float(np.max(np.abs(gain)))
    tolerance = 1e-9 + g * np.sqrt(m) * eps / max(smallest, np.finfo(np.float64).tiny)
    return InvarianceCheck(float(np.max(np.abs(after - before))), float(tolerance))


def verify_table(seed: int = 0, n_cases: int = 8, n_inputs: int = 5, n_units: int = 6,
                 eps: float = DEFAULT_EPS) -> dict[str, dict[str, InvarianceCheck]]:
    """Run every cell of the table once on a random layer; ``result[norm][column].invariant`` is the verdict.

    Example:
        >>> result = verify_table(seed=0)
        >>> all(result[n][c].invariant == INVARIANCE_TABLE[n][c]
        ...     for n in INVARIANCE_NORMS for c in COLUMNS)
        True
    """
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n_units, n_inputs))
    X = rng.normal(size=(n_cases, n_inputs))
    gain = rng.uniform(0.5, 2.0, size=n_units)
    bias = rng.normal(size=n_units)
    result: dict[str, dict[str, InvarianceCheck]] = {}
    for norm in INVARIANCE_NORMS:
        result[norm] = {}
        for column in COLUMNS:
            W_new, X_new = random_transform(column, W, X, np.random.default_rng([seed, COLUMNS.index(column)]))
            result[norm][column] = check_invariance(norm, W, X, W_new, X_new, gain, bias, eps)
    return result
