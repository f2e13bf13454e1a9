"""Problem set 2, BatchNorm state: training and evaluation modes, running statistics, PyTorch's conventions.

Each :class:`Part` backs one autograded cell of ``solutions/ps02_batchnorm_state/ps02_batchnorm_state.ipynb``
with that cell's ``grade_id`` and ``points``. A visible cell's Part replays exactly the calls the cell
makes; a hidden cell's Part draws random cases from ``rng`` and adds the edge cases. Every part is numpy
only (:data:`~normcourse.grading.rules.NO_TORCH`).

- ``batch_norm_step`` has the signature of :func:`normcourse.reference.batch_norm` and must update the
  running statistics **in place** (``Case.inplace``); in evaluation mode it must leave them untouched,
  which the same in-place comparison checks. Some cases call it twice on the same arrays (``repeat=2``).
- ``eval_affine`` folds evaluation-mode BatchNorm into one per-channel scale and shift; its arguments
  must come back unchanged.
- The learner's ``BatchNorm`` class is driven by ``run_batch_norm_module``, a locked cell of the notebook
  that builds the module, runs a script of train/eval steps and returns every output and the final
  state *by name* (``"step 4 (eval) output"``, ``"running_mean"``, ...);
  :func:`run_batch_norm_module_reference` does the same with the reference. With ``momentum=None`` the
  running statistics are a cumulative average (factor ``1 / num_batches_tracked``), as in
  ``torch.nn.BatchNorm1d``; the test suite checks this reference against PyTorch. Some scripts run
  twice (``repeat=2``): a second module must not inherit the first one's state.
- ``running_stats_experiment`` is an experiment the learner runs with their own ``BatchNorm``: it has a
  reference (the same experiment run with the reference's BatchNorm) but is judged on properties, by
  :func:`compare_experiment` (shape, finite, errors of the same size, the same ordering of the momenta
  where the reference's run orders them clearly), because the learner may draw the data in any order.
"""

from __future__ import annotations

import numpy as np

from normcourse import reference as ref
from normcourse.grading.cases import array_arguments, edge_cases, random_affine, random_eps, random_input, random_shape
from normcourse.grading.compare import GradingError, assert_results_match, named_results
from normcourse.grading.parts import Case, Part, register
from normcourse.grading.rules import NO_TORCH

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
        a dict: ``"step k (mode) output"`` for every step (k from 1), then ``"running_mean"``,
        ``"running_var"`` and ``"num_batches_tracked"`` (a 0-d int64 array) after the last step.
    """
    running_mean = np.zeros(num_features)
    running_var = np.ones(num_features)
    tracked = 0
    w = np.array(weight, dtype=np.float64) if affine else None
    b = np.array(bias, dtype=np.float64) if affine else None
    result = {}
    for k, (mode, x) in enumerate(steps, start=1):
        if mode == "train":
            tracked += 1
            factor = 1.0 / tracked if momentum is None else momentum
            y = ref.batch_norm(x, running_mean, running_var, w, b, training=True, momentum=factor, eps=eps)
        elif mode == "eval":
            y = ref.batch_norm(x, running_mean, running_var, w, b, training=False, eps=eps)
        else:
            raise ValueError(f"unknown mode {mode!r}")
        result[f"step {k} ({mode}) output"] = y
    result["running_mean"] = running_mean.copy()
    result["running_var"] = running_var.copy()
    result["num_batches_tracked"] = np.asarray(tracked, dtype=np.int64)
    return result


def experiment_data(rng: np.random.Generator, num_steps: int, batch_size: int, num_features: int):
    """The experiment's data for one seed, in the order the notebook describes: the true means and
    standard deviations per feature, then ``num_steps`` batches of shape ``(batch_size, num_features)``."""
    mu = rng.uniform(-3, 3, num_features)
    sigma = rng.uniform(0.5, 2, num_features)
    batches = mu + sigma * rng.standard_normal((num_steps, batch_size, num_features))
    return mu, sigma, batches


def running_stats_experiment_reference(momenta, num_steps=300, batch_size=16, seeds=(0, 1, 2), num_features=8):
    r"""The running-statistics experiment, run with PyTorch's running-mean update (the reference's).

    For each seed: true means :math:`\mu \sim U(-3, 3)` and standard deviations
    :math:`\sigma \sim U(0.5, 2)` per feature, then ``num_steps`` training batches
    :math:`x = \mu + \sigma z`, the same for every momentum. For each momentum (None: the cumulative
    average, factor :math:`1/k` at step :math:`k`) a fresh module with running mean 0 sees the batches
    in training mode, :math:`\hat\mu_k = (1 - m)\,\hat\mu_{k-1} + m\,\bar x_k` as in
    :func:`normcourse.reference.batch_norm` (the suite checks the two agree); after step :math:`k` the
    error is :math:`\sqrt{\langle ((\hat\mu_k - \mu)/\sigma)^2 \rangle}` over the features.

    Returns:
        float64 array of shape ``(len(momenta), len(seeds), num_steps)``.
    """
    data = [experiment_data(np.random.default_rng(seed), num_steps, batch_size, num_features) for seed in seeds]
    mu = np.stack([d[0] for d in data])                                   # (S, C)
    sigma = np.stack([d[1] for d in data])
    batch_means = np.stack([d[2].mean(axis=1) for d in data], axis=1)    # (T, S, C)
    running = np.zeros((len(momenta), len(seeds), num_features))
    errors = np.empty((len(momenta), len(seeds), num_steps))
    for k in range(num_steps):
        factor = np.array([1.0 / (k + 1) if m is None else m for m in momenta]).reshape(-1, 1, 1)
        running = (1 - factor) * running + factor * batch_means[k]
        errors[:, :, k] = np.sqrt(np.mean(((running - mu) / sigma) ** 2, axis=-1))
    return errors


#: The learner's errors may differ from the reference's run by sampling noise (different draws of the
#: same distributions); a window's mean error over seeds and steps stays within this factor of the
#: reference's for every correct implementation the suite tries (see test_problems_ps01_03).
EXPERIMENT_FACTOR = 3.0
#: Two momenta count as "clearly ordered" in the reference's run when one window mean is at least this
#: many times the other; the learner's run must then order them the same way.
EXPERIMENT_ORDER = 2.0


def experiment_windows(num_steps: int) -> dict[str, slice]:
    """The windows of steps the experiment's checks average over: the first few and the last quarter."""
    return {"the first steps": slice(0, max(3, num_steps // 20)),
            "the last quarter of the steps": slice(num_steps - num_steps // 4, num_steps)}


def compare_experiment(actual, expected, *, name: str, label: str, rtol=None, atol=None) -> None:
    """Judge the learner's experiment by properties of the reference's run ``expected``.

    Checks, in order: a float array of the reference's shape; finite and non-negative; for every
    momentum (row) and window, the mean error over seeds and steps within :data:`EXPERIMENT_FACTOR` of
    the reference's; and where the reference's run puts one row at least :data:`EXPERIMENT_ORDER`
    times above another in a window, the learner's run orders them the same way.
    """
    where = f" for case {label!r}"
    if not isinstance(actual, np.ndarray) or actual.dtype.kind != "f":
        raise GradingError(f"{name}{where}: expected a float numpy array of errors, got "
                           f"{type(actual).__name__}" + (f" of dtype {actual.dtype}" if isinstance(actual, np.ndarray) else ""))
    if actual.shape != expected.shape:
        raise GradingError(f"{name}{where}: shape {actual.shape}, expected {expected.shape} "
                           f"(len(momenta), len(seeds), num_steps)")
    bad = ~np.isfinite(actual) | (actual < 0)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise GradingError(f"{name}{where}: the error at index {idx} (momentum row {idx[0]}, seed {idx[1]}, "
                           f"step {idx[2] + 1}) is {actual[idx]}; errors are finite and non-negative")
    for window, steps in experiment_windows(expected.shape[2]).items():
        got = actual[:, :, steps].mean(axis=(1, 2))
        want = expected[:, :, steps].mean(axis=(1, 2))
        for i, (g, w) in enumerate(zip(got, want)):
            if not (w / EXPERIMENT_FACTOR <= g <= w * EXPERIMENT_FACTOR):
                raise GradingError(
                    f"{name}{where}: momentum row {i}: the mean error over {window} is {g:.4g}, but the "
                    f"course's run of the same experiment gives {w:.4g} (yours must be within a factor "
                    f"{EXPERIMENT_FACTOR:g}); check the data, the error formula and that each momentum "
                    f"starts from a fresh BatchNorm")
        for i in range(len(want)):
            for j in range(len(want)):
                if want[i] >= EXPERIMENT_ORDER * want[j] and not got[i] > got[j]:
                    raise GradingError(
                        f"{name}{where}: over {window} the course's run has momentum row {i} clearly above "
                        f"row {j} ({want[i]:.4g} vs {want[j]:.4g}), yours does not ({got[i]:.4g} vs "
                        f"{got[j]:.4g})")


#: The module's final state, compared before the outputs: a wrong update rule then reads "running_mean
#: differs" rather than "the first evaluation step's output differs".
MODULE_STATE = ("running_mean", "running_var", "num_batches_tracked")


def compare_module(actual, expected, *, name: str, label: str, rtol=None, atol=None) -> None:
    """The driver's dict, entry by entry under its name: the final state first (``"running_mean"``,
    ...), then every step's output in order (``"step 4 (eval) output"``)."""
    if isinstance(actual, dict) and set(actual) == set(expected):
        state = {k: expected[k] for k in MODULE_STATE if k in expected}
        assert_results_match({k: actual[k] for k in state}, state, name=name, label=label, rtol=rtol, atol=atol)
    assert_results_match(actual, expected, name=name, label=label, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------------
# Hidden cases.

def _running_stats(rng, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Running statistics that are clearly not the initial 0 and 1, so both terms of the update matter."""
    return rng.normal(size=c), rng.uniform(0.5, 2.0, size=c)


def _step_case(rng, label: str, x: np.ndarray, training: bool, *, momentum=None, eps=None,
               affine: bool | None = None, repeat: int = 1) -> Case:
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
    args = (x, rm, rv, w, b, training, momentum, eps)
    # running_mean and running_var are updated in place (training) or left alone (evaluation); every
    # other array argument must come back unchanged: all of them are compared after the call.
    return Case(", ".join(parts), args, inplace=array_arguments(args), rtol=tol, atol=tol, repeat=repeat)


def _random_and_edge_cases(rng, training: bool, edge_layout: str) -> list:
    """Two random inputs of each layout, then the shared edge cases on one shape of ``edge_layout``."""
    cases = []
    for layout in ("NC", "NCL", "NCHW"):
        for _ in range(2):
            x = random_input(rng, random_shape(rng, layout))
            cases.append(_step_case(rng, f"random {layout} {x.shape}", x, training))
    for label, x in edge_cases(rng, random_shape(rng, edge_layout)):
        cases.append(_step_case(rng, label, x, training, eps=1e-5))
    x = random_input(rng, random_shape(rng, "NCL"))
    cases.append(_step_case(rng, f"called twice on the same running statistics, NCL {x.shape}", x, training,
                            repeat=2))
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
    cases.append(Case("no running statistics (None), shape (6, 3, 4)", (x, None, None, None, None, True, 0.1, 1e-5),
                      inplace=(0,)))
    return cases


def _eval_cases(rng):
    cases = _random_and_edge_cases(rng, False, "NCL")
    x = random_input(rng, (1, 5))
    cases.append(_step_case(rng, "batch size 1 of feature vectors, shape (1, 5) (legal in evaluation)", x, False))
    return cases


def _eval_affine_case(label: str, args: tuple) -> Case:
    return Case(label, args, inplace=array_arguments(args))  # the statistics and parameters stay as given


def _eval_affine_cases(rng):
    cases = []
    for c in (1, 3, 8, 16):
        for weight, bias in ((True, True), (False, False), (True, False), (False, True)):
            rm, rv = _running_stats(rng, c)
            w, b = random_affine(rng, c, weight=weight, bias=bias)
            eps = random_eps(rng)
            cases.append(_eval_affine_case(f"C={c}, weight {'given' if weight else 'None'}, bias "
                                           f"{'given' if bias else 'None'}, eps={eps:.3g}", (rm, rv, w, b, eps)))
    rm, rv = _running_stats(rng, 4)
    rv[1] = 0.0
    cases.append(_eval_affine_case("a running variance of exactly 0 (only eps keeps the division defined)",
                                   (rm, rv, None, None, 1e-5)))
    rm, rv = 1e4 * rng.normal(size=4), 1e8 * rng.uniform(0.5, 2.0, size=4)
    cases.append(_eval_affine_case("magnitude 1e4 statistics", (rm, rv, None, None, 1e-5)))
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
    plans = [("NC", "ttte", 1), ("NCL", "tetet", 1), ("NCHW", "ttttte", 1), ("NC", "ettt", 1), ("NCL", "t", 1),
             ("NC", "tte", 2)]
    for layout, modes, repeat in plans:
        shape = random_shape(rng, layout)
        c = shape[1]
        affine = bool(rng.integers(2))
        w, b = random_affine(rng, c, weight=True, bias=True)
        momentum = None if momentum_none else float(rng.uniform(0.05, 0.5))
        eps = random_eps(rng)
        label = (f"{layout} {shape}, steps {'/'.join('train' if m == 't' else 'eval' for m in modes)}, "
                 f"momentum={'None' if momentum is None else format(momentum, '.3g')}, eps={eps:.3g}, affine={affine}"
                 + (", run twice (a second module must start fresh)" if repeat > 1 else ""))
        args = (c, eps, momentum, affine, w, b, _script(rng, shape, modes))
        cases.append(Case(label, args, inplace=array_arguments(args), repeat=repeat))
    # Edge cases inside a script: a constant batch, a float32 batch, a batch of one image.
    shape = random_shape(rng, "NCHW")
    c = shape[1]
    edge = edge_cases(rng, shape)
    steps = [("train", x) for label, x in edge] + [("eval", random_input(rng, shape))]
    momentum = None if momentum_none else 0.1
    args = (c, 1e-5, momentum, True, np.ones(c), np.zeros(c), steps)
    cases.append(Case("steps over the edge cases (" + "; ".join(label for label, _ in edge) + ") then eval",
                      args, inplace=array_arguments(args), rtol=1e-4, atol=1e-4))
    return cases


def _module_cases_momentum(rng):
    return _module_cases(rng, momentum_none=False)


def _module_cases_cumulative(rng):
    return _module_cases(rng, momentum_none=True)


def _experiment_cases(rng):
    """Other momenta orders, batch sizes, lengths and widths than the visible run, seeds from ``rng``."""
    cases = []
    for momenta, batch_size, num_features in (((None, 0.5, 0.02), 8, 6), ((0.1, 0.02, 0.5, None), 32, 8)):
        num_steps = int(rng.integers(250, 401))
        seeds = tuple(int(s) for s in rng.integers(0, 2**31, size=4))
        label = (f"momenta={momenta}, num_steps={num_steps}, batch_size={batch_size}, seeds={seeds}, "
                 f"num_features={num_features}")
        cases.append(Case(label, (momenta, num_steps, batch_size, seeds, num_features)))
    return cases


# ---------------------------------------------------------------------------------------------------
# Visible cells: exactly the calls each visible test cell makes (fixed data; ``rng`` is not used).

VISIBLE = "visible test: "


def _visible_training_cases(rng):
    x = 5.0 + 2.0 * np.random.default_rng(0).normal(size=(16, 3, 4, 4))
    by_hand = (np.array([[1.0], [3.0]]), np.zeros(1), np.ones(1))
    return [Case(VISIBLE + "by hand: batch [1, 3], momentum 0.1", by_hand, {"training": True, "momentum": 0.1},
                 inplace=(1, 2)),
            Case(VISIBLE + "x of shape (16, 3, 4, 4), momentum 0.5", (x, np.zeros(3), np.ones(3)),
                 {"training": True, "momentum": 0.5}, inplace=(1, 2))]


def _visible_eval_cases(rng):
    gen = np.random.default_rng(1)
    running = (np.array([1.0, -2.0]), np.array([4.0, 0.25]))
    x = gen.normal(size=(1, 2))
    batch = gen.normal(size=(8, 2, 5))
    w, b = np.array([2.0, 0.5]), np.array([0.0, 1.0])
    return [Case(VISIBLE + "a batch of one sample, normalized with the running statistics", (x, *running),
                 {"training": False}, inplace=(1, 2)),
            Case(VISIBLE + "a batch of 8 with gain and bias", (batch, *running, w, b), {"training": False},
                 inplace=(1, 2)),
            Case(VISIBLE + "the first sample alone", (batch[:1], *running, w, b), {"training": False},
                 inplace=(1, 2))]


def _visible_eval_affine_cases(rng):
    gen = np.random.default_rng(2)
    running_mean, running_var = gen.normal(size=3), gen.uniform(0.5, 2.0, size=3)
    weight, bias = gen.normal(size=3), gen.normal(size=3)
    return [Case(VISIBLE + "random statistics, gain and bias, eps=1e-3", (running_mean, running_var, weight, bias),
                 {"eps": 1e-3}),
            Case(VISIBLE + "by hand, no affine parameters", (np.array([2.0]), np.array([4.0 - 1e-5])))]


def _visible_module_cases(rng):
    x = 3.0 + np.random.default_rng(3).normal(size=(10, 4))
    return [Case(VISIBLE + "a train step, then an eval step on the same batch (10, 4), momentum 0.1",
                 (4, 1e-5, 0.1, True, np.ones(4), np.zeros(4), [("train", x), ("eval", x)]))]


def _visible_experiment_cases(rng):
    return [Case(VISIBLE + "momenta=(0.02, 0.1, 0.5, None), num_steps=300, batch_size=16, seeds=(0, 1, 2)",
                 ((0.02, 0.1, 0.5, None), 300, 16, (0, 1, 2)))]


def _part(grade_id, function, reference, cases, points, seed=0, **kwargs) -> Part:
    return Part(PROBLEM_SET, grade_id, function, reference, cases, points=points, seed=seed, forbid=(NO_TORCH,),
                **kwargs)


PARTS = [
    _part("batch_norm_step_training", "batch_norm_step", ref.batch_norm, _visible_training_cases, 1,
          description="visible: training steps by hand and on a batch of images"),
    _part("batch_norm_step_training_hidden", "batch_norm_step", ref.batch_norm, _training_cases, 3, seed=201,
          description="training step: batch statistics, in-place running update"),
    _part("batch_norm_step_eval", "batch_norm_step", ref.batch_norm, _visible_eval_cases, 1,
          description="visible: evaluation steps"),
    _part("batch_norm_step_eval_hidden", "batch_norm_step", ref.batch_norm, _eval_cases, 1, seed=202,
          description="evaluation step: running statistics, nothing updated"),
    _part("eval_affine", "eval_affine", eval_affine_reference, _visible_eval_affine_cases, 1,
          compare=named_results("scale", "shift"), description="visible: the fold on fixed statistics"),
    _part("eval_affine_hidden", "eval_affine", eval_affine_reference, _eval_affine_cases, 1, seed=203,
          compare=named_results("scale", "shift"), description="evaluation BatchNorm folded into scale and shift"),
    _part("batch_norm_module", "run_batch_norm_module", run_batch_norm_module_reference, _visible_module_cases, 1,
          compare=compare_module, description="visible: one train and one eval step of the module"),
    _part("batch_norm_module_hidden", "run_batch_norm_module", run_batch_norm_module_reference,
          _module_cases_momentum, 3, seed=204, compare=compare_module,
          description="BatchNorm module with train()/eval() and exponential running averages"),
    _part("batch_norm_cumulative_hidden", "run_batch_norm_module", run_batch_norm_module_reference,
          _module_cases_cumulative, 1, seed=205, compare=compare_module,
          description="BatchNorm module with momentum=None: cumulative running averages"),
    _part("running_stats_experiment", "running_stats_experiment", running_stats_experiment_reference,
          _visible_experiment_cases, 1, compare=compare_experiment,
          description="visible: the experiment's numbers have the predicted properties"),
    _part("running_stats_experiment_hidden", "running_stats_experiment", running_stats_experiment_reference,
          _experiment_cases, 1, seed=206, compare=compare_experiment,
          description="the experiment on other momenta, batch sizes and seeds"),
]

register(PARTS)
