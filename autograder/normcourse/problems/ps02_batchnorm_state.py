"""Problem set 2, BatchNorm state: training and evaluation modes, running statistics, PyTorch's conventions.

Each :class:`Part` backs one hidden-test cell of ``solutions/ps02_batchnorm_state/ps02_batchnorm_state.ipynb``.

- ``batch_norm_step`` has the signature of :func:`normcourse.reference.batch_norm` and must update the
  running statistics **in place** (``Case.inplace``); in evaluation mode it must leave them untouched,
  which the same in-place comparison checks.
- ``eval_affine`` folds evaluation-mode BatchNorm into one per-channel scale and shift.
- The learner's ``BatchNorm`` class is driven by ``run_batch_norm_module``, a locked helper cell of the
  notebook that builds the module, runs a script of train/eval steps and returns every output and the
  final state; :func:`run_batch_norm_module_reference` does the same with the reference. With
  ``momentum=None`` the running statistics are a cumulative average (factor ``1 / num_batches_tracked``),
  as in ``torch.nn.BatchNorm1d``; the test suite checks this reference against PyTorch.
"""

from __future__ import annotations

import numpy as np

from normcourse import reference as ref
from normcourse.grading.cases import edge_cases, random_affine, random_eps, random_input, random_shape
from normcourse.grading.parts import Case, Part, register

PROBLEM_SET = "ps02_batchnorm_state"


# ---------------------------------------------------------------------------------------------------
# References for the learner-facing signatures that the reference package does not have as such.

def eval_affine_reference(running_mean, running_var, weight=None, bias=None, eps=1e-5):
    r"""Evaluation-mode BatchNorm as ``y = x * scale + shift`` per channel.

    .. math::
        \text{scale} = \frac{\gamma}{\sqrt{\hat\sigma^2 + \epsilon}}, \qquad
        \text{shift} = \beta - \hat\mu\,\text{scale}
    """
    rm = np.asarray(running_mean, dtype=np.float64)
    rv = np.asarray(running_var, dtype=np.float64)
    scale = 1.0 / np.sqrt(rv + eps)
    if weight is not None:
        scale = scale * np.asarray(weight, dtype=np.float64)
    shift = -rm * scale
    if bias is not None:
        shift = shift + np.asarray(bias, dtype=np.float64)
    return scale, shift


def run_batch_norm_module_reference(num_features, eps, momentum, affine, weight, bias, steps):
    """What ``run_batch_norm_module`` must return, computed with :func:`normcourse.reference.batch_norm`.

    The module starts with ``running_mean = 0``, ``running_var = 1``, ``num_batches_tracked = 0`` and,
    if ``affine``, the given ``weight`` and ``bias``. Each step is ``(mode, x)`` with mode ``"train"``
    or ``"eval"``. A training step increments ``num_batches_tracked`` and updates the running statistics
    with ``momentum``, or with ``1 / num_batches_tracked`` when ``momentum`` is None.

    Returns:
        ``(*outputs, running_mean, running_var, num_batches_tracked)``, the count as a 0-d int64 array.
    """
    running_mean = np.zeros(num_features)
    running_var = np.ones(num_features)
    tracked = 0
    w = np.array(weight, dtype=np.float64) if affine else None
    b = np.array(bias, dtype=np.float64) if affine else None
    outputs = []
    for mode, x in steps:
        if mode == "train":
            tracked += 1
            factor = 1.0 / tracked if momentum is None else momentum
            outputs.append(ref.batch_norm(x, running_mean, running_var, w, b, training=True,
                                          momentum=factor, eps=eps))
        elif mode == "eval":
            outputs.append(ref.batch_norm(x, running_mean, running_var, w, b, training=False, eps=eps))
        else:
            raise ValueError(f"unknown mode {mode!r}")
    return (*outputs, running_mean, running_var, np.asarray(tracked, dtype=np.int64))


# ---------------------------------------------------------------------------------------------------
# Cases.

def _running_stats(rng, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Running statistics that are clearly not the initial 0 and 1, so both terms of the update matter."""
    return rng.normal(size=c), rng.uniform(0.5, 2.0, size=c)


def _step_case(rng, label: str, x: np.ndarray, training: bool, *, momentum=None, eps=None,
               affine: bool | None = None) -> Case:
    c = x.shape[1]
    rm, rv = _running_stats(rng, c)
    w, b = random_affine(rng, c, weight=affine, bias=affine)
    momentum = float(rng.uniform(0.01, 0.9)) if momentum is None else momentum
    eps = random_eps(rng) if eps is None else eps
    parts = [label, f"momentum={momentum:.3g}", f"eps={eps:.3g}",
             "affine" if w is not None or b is not None else "no affine"]
    # A float32 input may be reduced in float32 (as PyTorch does), so its running statistics get the
    # float32 tolerance too; every other case is compared at float64 precision.
    tol = 1e-4 if x.dtype == np.float32 else None
    return Case(", ".join(parts), (x, rm, rv, w, b, training, momentum, eps), inplace=(1, 2), rtol=tol, atol=tol)


def _random_and_edge_cases(rng, training: bool, edge_layout: str) -> list:
    """Two random inputs of each layout, then the shared edge cases on one shape of ``edge_layout``."""
    cases = []
    for layout in ("NC", "NCL", "NCHW"):
        for _ in range(2):
            x = random_input(rng, random_shape(rng, layout))
            cases.append(_step_case(rng, f"random {layout} {x.shape}", x, training))
    for label, x in edge_cases(rng, random_shape(rng, edge_layout)):
        cases.append(_step_case(rng, label, x, training, eps=1e-5))
    return cases


def _training_cases(rng):
    cases = _random_and_edge_cases(rng, True, "NCHW")
    x = random_input(rng, (2, 3))
    cases.append(_step_case(rng, "batch size 2 of feature vectors (n=2: unbiased = 2 x biased)", x, True))
    x = random_input(rng, (5, 4))
    cases.append(_step_case(rng, "momentum 1 (running statistics = this batch's, unbiased variance)", x, True,
                            momentum=1.0))
    cases.append(_step_case(rng, "momentum 0 (running statistics frozen)", x, True, momentum=0.0))
    x = random_input(rng, (6, 3, 4))
    cases.append(Case("no running statistics (None), shape (6, 3, 4)", (x, None, None, None, None, True, 0.1, 1e-5)))
    return cases


def _eval_cases(rng):
    cases = _random_and_edge_cases(rng, False, "NCL")
    x = random_input(rng, (1, 5))
    cases.append(_step_case(rng, "batch size 1 of feature vectors, shape (1, 5) (legal in evaluation)", x, False))
    return cases


def _eval_affine_cases(rng):
    cases = []
    for c in (1, 3, 8, 16):
        for weight, bias in ((True, True), (False, False), (True, False), (False, True)):
            rm, rv = _running_stats(rng, c)
            w, b = random_affine(rng, c, weight=weight, bias=bias)
            eps = random_eps(rng)
            cases.append(Case(f"C={c}, weight {'given' if weight else 'None'}, bias {'given' if bias else 'None'}, "
                              f"eps={eps:.3g}", (rm, rv, w, b, eps)))
    rm, rv = _running_stats(rng, 4)
    rv[1] = 0.0
    cases.append(Case("a running variance of exactly 0 (only eps keeps the division defined)",
                      (rm, rv, None, None, 1e-5)))
    rm, rv = 1e4 * rng.normal(size=4), 1e8 * rng.uniform(0.5, 2.0, size=4)
    cases.append(Case("magnitude 1e4 statistics", (rm, rv, None, None, 1e-5)))
    return cases


def _script(rng, shape, modes: str) -> list[tuple[str, np.ndarray]]:
    """Steps ``[(mode, x), ...]``; ``modes`` is a string of 't' (train) and 'e' (eval)."""
    steps = []
    for mode in modes:
        x = random_input(rng, shape, offset=float(rng.uniform(-2, 2)), scale=float(rng.uniform(0.5, 3)))
        steps.append(("train" if mode == "t" else "eval", x))
    return steps


def _module_cases(rng, *, momentum_none: bool) -> list[Case]:
    cases = []
    plans = [("NC", "ttte"), ("NCL", "tetet"), ("NCHW", "ttttte"), ("NC", "ettt"), ("NCL", "t")]
    for layout, modes in plans:
        shape = random_shape(rng, layout)
        c = shape[1]
        affine = bool(rng.integers(2))
        w, b = random_affine(rng, c, weight=True, bias=True)
        momentum = None if momentum_none else float(rng.uniform(0.05, 0.5))
        eps = random_eps(rng)
        label = (f"{layout} {shape}, steps {'/'.join('train' if m == 't' else 'eval' for m in modes)}, "
                 f"momentum={'None' if momentum is None else format(momentum, '.3g')}, eps={eps:.3g}, affine={affine}")
        cases.append(Case(label, (c, eps, momentum, affine, w, b, _script(rng, shape, modes))))
    # Edge cases inside a script: a constant batch, a float32 batch, a batch of one image.
    shape = random_shape(rng, "NCHW")
    c = shape[1]
    edge = edge_cases(rng, shape)
    steps = [("train", x) for label, x in edge] + [("eval", random_input(rng, shape))]
    momentum = None if momentum_none else 0.1
    cases.append(Case("steps over the edge cases (" + "; ".join(label for label, _ in edge) + ") then eval",
                      (c, 1e-5, momentum, True, np.ones(c), np.zeros(c), steps), rtol=1e-4, atol=1e-4))
    return cases


def _module_cases_momentum(rng):
    return _module_cases(rng, momentum_none=False)


def _module_cases_cumulative(rng):
    return _module_cases(rng, momentum_none=True)


PARTS = [
    Part(PROBLEM_SET, "batch_norm_step_training_hidden", "batch_norm_step", ref.batch_norm, _training_cases,
         points=3, seed=201, description="training step: batch statistics, in-place running update"),
    Part(PROBLEM_SET, "batch_norm_step_eval_hidden", "batch_norm_step", ref.batch_norm, _eval_cases,
         points=2, seed=202, description="evaluation step: running statistics, nothing updated"),
    Part(PROBLEM_SET, "eval_affine_hidden", "eval_affine", eval_affine_reference, _eval_affine_cases,
         points=2, seed=203, description="evaluation BatchNorm folded into scale and shift"),
    Part(PROBLEM_SET, "batch_norm_module_hidden", "run_batch_norm_module", run_batch_norm_module_reference,
         _module_cases_momentum, points=2, seed=204,
         description="BatchNorm module with train()/eval() and exponential running averages"),
    Part(PROBLEM_SET, "batch_norm_cumulative_hidden", "run_batch_norm_module", run_batch_norm_module_reference,
         _module_cases_cumulative, points=2, seed=205,
         description="BatchNorm module with momentum=None: cumulative running averages"),
]

register(PARTS)
