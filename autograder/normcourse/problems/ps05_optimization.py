"""Problem set 5, optimization: the autograded parts (visible, hidden and the experiment).

The learner measures small torch networks the way Santurkar et al. (2018) do: the gradient norm,
internal covariate shift (Definition 2.1, per layer as :func:`normcourse.lab.models.layer_groups`
splits the model), and the landscape probes along the gradient (losses, gradient changes, effective
beta-smoothness). The references are :func:`normcourse.lab.measurements.internal_covariate_shift`
and :func:`~normcourse.lab.measurements.landscape_probe`; the adapters below only pick the
field a learner function returns. The notebook hands the learner :mod:`normcourse.lab.models` (``mlp``,
``load_digits_tensors``, ``layer_groups``) and nothing else of the course: the measurements are theirs
to write.

- *Visible parts* back the visible test cells: their cases are exactly the calls the cell makes (the
  setup cell's fixed demo networks; no use of the part's ``rng``).
- *Hidden parts* use small seeded MLPs (:func:`normcourse.lab.models.mlp`, float64 unless the case
  says float32) with no normalization, BatchNorm (training and evaluation mode) or LayerNorm, on random
  batches; edge cases: a single linear layer, batch size 2 for BatchNorm, a batch of identical samples
  (LayerNorm, and BatchNorm in evaluation mode), inputs of magnitude 1e4, a float32 model, a frozen
  first layer (``requires_grad=False``: not a trainable parameter), a step size of 0. No case has noise
  layers: their random draws would have to be replayed, which the reference does and the exercise does
  not ask for.
- *Side effects are part of the contract*: every model case checks the model's state after the call
  (``Case(state_of=(0,))``: parameters, BatchNorm's running statistics, ``training`` flags and whether
  each ``.grad`` is set) against what the reference leaves (nothing changed), and some cases call the
  function twice on the same model (``repeat=2``), which catches a ``.grad`` accumulated by the first call.
- *The experiment* (``landscape_experiment``) has no reference: the learner probes networks with and
  without BatchNorm at initialization over five seeds, and :func:`landscape_properties` checks the
  numbers for what chapter 2 predicts (see there).

Every case passes the loss as ``torch.nn.functional.cross_entropy`` (or ``mse_loss``) itself: the
re-check process that calls learner code cannot import this module, so case arguments hold only torch
objects and the provided :mod:`normcourse.lab.models`.

Tolerances: float64 models give results that differ from the reference only by summation order
(norms of concatenated versus per-tensor gradients), so 1e-8 relative with a 1e-10 floor. The float32
model is compared at 1e-4 (several float32 forward/backward passes; ICS is a difference of gradients).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from normcourse.grading.compare import GradingError
from normcourse.grading.parts import Case, Part, register
from normcourse.lab import measurements
from normcourse.lab.models import load_digits_tensors, mlp

PROBLEM_SET = "ps05_optimization"
RTOL, ATOL = 1e-8, 1e-10
FLOAT32_TOL = {"rtol": 1e-4, "atol": 1e-6}
NORMS = (None, "batch_norm", "layer_norm")
cross_entropy = nn.functional.cross_entropy
mse_loss = nn.functional.mse_loss


# ---------------------------------------------------------------- references (field adapters)
def gradient_norm_reference(model, loss_fn, batch) -> float:
    return measurements.landscape_probe(model, loss_fn, batch, [])["grad_norm"]


def internal_covariate_shift_reference(model, loss_fn, batch, lr):
    result = measurements.internal_covariate_shift(model, loss_fn, batch, lr)
    return result["l2"], result["cosine"]


def loss_along_gradient_reference(model, loss_fn, batch, step_sizes):
    return measurements.landscape_probe(model, loss_fn, batch, step_sizes)["losses"]


def gradient_changes_reference(model, loss_fn, batch, step_sizes):
    return measurements.landscape_probe(model, loss_fn, batch, step_sizes)["grad_changes"]


def effective_beta_smoothness_reference(model, loss_fn, batch, step_sizes) -> float:
    return measurements.landscape_probe(model, loss_fn, batch, step_sizes)["beta_smoothness"]


# ---------------------------------------------------------------- visible tests: the setup's networks
def demo_network():
    """The setup cell's ``demo_network()``: a float64 BatchNorm MLP in training mode and a batch of 16."""
    model = mlp(in_dim=6, width=8, depth=2, out_dim=3, norm="batch_norm", seed=0).double()
    generator = torch.Generator().manual_seed(0)
    batch = (torch.randn(16, 6, generator=generator, dtype=torch.float64),
             torch.randint(0, 3, (16,), generator=generator))
    return model, batch


def demo_regression():
    """The setup cell's ``demo_regression()``: a linear layer and a regression batch (with ``mse_loss``,
    a quadratic in the parameters)."""
    generator = torch.Generator().manual_seed(1)
    linear = nn.Linear(4, 2, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(2, 4, generator=generator, dtype=torch.float64))
        linear.bias.copy_(torch.randn(2, generator=generator, dtype=torch.float64))
    batch = (torch.randn(10, 4, generator=generator, dtype=torch.float64),
             torch.randn(10, 2, generator=generator, dtype=torch.float64))
    return linear, batch


def _demo(label, *args, **case):
    model, batch = demo_network()
    return Case(f"visible test: {label}", (model, cross_entropy, batch, *args), state_of=(0,), **case)


def _regression(label, *args):
    linear, batch = demo_regression()
    return Case(f"visible test: {label}", (linear, mse_loss, batch, *args), state_of=(0,))


def visible_gradient_norm_cases(_rng=None):
    return [_demo("the demo BatchNorm network, called twice on the same network", repeat=2)]


def visible_internal_covariate_shift_cases(_rng=None):
    return [_demo(f"the demo BatchNorm network, lr={lr}", lr) for lr in (0.1, 0.0, 1e-5, 2e-5)]


def visible_loss_along_gradient_cases(_rng=None):
    return [_demo("the demo BatchNorm network, step sizes [0.0, 1e-05, 0.5]", [0.0, 1e-5, 0.5])]


def visible_gradient_changes_cases(_rng=None):
    return [_regression("a linear layer with a squared error, step sizes [0.0, 0.1, 0.2]", [0.0, 0.1, 0.2]),
            _demo("the demo BatchNorm network, step sizes [0.1, 0.3]", [0.1, 0.3])]


def visible_effective_beta_smoothness_cases(_rng=None):
    return [_regression("a linear layer with a squared error, step sizes [0.0, 0.1]", [0.0, 0.1]),
            _regression("a linear layer with a squared error, step sizes [0.5]", [0.5])]


# ---------------------------------------------------------------- hidden tests
def _net(rng, *, norm, depth=None, in_dim=None, width=None, out_dim=None, dtype=torch.float64,
         train=True, frozen_first=False):
    depth = int(rng.integers(1, 4)) if depth is None else depth
    in_dim = int(rng.integers(3, 9)) if in_dim is None else in_dim
    width = int(rng.integers(4, 13)) if width is None else width
    out_dim = int(rng.integers(2, 6)) if out_dim is None else out_dim
    model = mlp(in_dim=in_dim, width=width, depth=depth, out_dim=out_dim, norm=norm,
                seed=int(rng.integers(2 ** 31))).to(dtype)
    if frozen_first:
        model[0].requires_grad_(False)
    return model.train(train), in_dim, out_dim


def _batch(rng, n, in_dim, out_dim, *, dtype=torch.float64, scale=1.0, identical=False):
    x = scale * rng.normal(size=(1 if identical else n, in_dim))
    x = np.repeat(x, n, axis=0) if identical else x
    return (torch.tensor(x, dtype=dtype), torch.tensor(rng.integers(0, out_dim, size=n)))


def model_cases(rng: np.random.Generator) -> list[tuple[str, nn.Module, tuple, dict]]:
    """``(label, model, batch, case options)`` for every case; shared by all hidden parts of the set.

    Every case checks the model's state after the call; the first and the evaluation-mode case call
    the function twice on the same model.
    """
    twice = {"repeat": 2}
    cases = []
    for norm in NORMS:
        model, d_in, d_out = _net(rng, norm=norm)
        n = int(rng.integers(4, 17))
        depth = sum(isinstance(m, nn.Linear) for m in model) - 1
        cases.append((f"random MLP with {depth} hidden layer(s), norm={norm}, batch of {n}"
                      + (", called twice on the same model" if norm is None else ""), model,
                      _batch(rng, n, d_in, d_out), twice if norm is None else {}))
    model, d_in, d_out = _net(rng, norm=None, depth=0)
    cases.append(("a single linear layer (depth 0)", model, _batch(rng, 6, d_in, d_out), {}))
    model, d_in, d_out = _net(rng, norm="batch_norm", depth=2)
    cases.append(("batch size 2, BatchNorm network", model, _batch(rng, 2, d_in, d_out), {}))
    model, d_in, d_out = _net(rng, norm="batch_norm", depth=2, train=False)
    cases.append(("BatchNorm network in evaluation mode (running statistics; keep the mode), called twice on "
                  "the same model", model, _batch(rng, 8, d_in, d_out), twice))
    # Identical samples in a *training-mode* BatchNorm network are not graded: the batch variance is 0,
    # the first layer's gradient is a sum of terms that cancel exactly, and what remains is rounding
    # noise amplified by 1/sqrt(eps) (it changes with the number of threads). Evaluation mode is sound.
    model, d_in, d_out = _net(rng, norm="batch_norm", depth=2, train=False)
    cases.append(("constant input (8 identical samples), BatchNorm network in evaluation mode", model,
                  _batch(rng, 8, d_in, d_out, identical=True), {}))
    model, d_in, d_out = _net(rng, norm="layer_norm", depth=2)
    cases.append(("constant input (8 identical samples), LayerNorm network", model,
                  _batch(rng, 8, d_in, d_out, identical=True), {}))
    model, d_in, d_out = _net(rng, norm="batch_norm", depth=2)
    cases.append(("magnitude 1e4 inputs, BatchNorm network", model,
                  _batch(rng, 8, d_in, d_out, scale=1e4), {}))
    model, d_in, d_out = _net(rng, norm="batch_norm", depth=2, frozen_first=True)
    cases.append(("frozen first layer (requires_grad=False: not a trainable parameter), BatchNorm network",
                  model, _batch(rng, 8, d_in, d_out), {}))
    model, d_in, d_out = _net(rng, norm="layer_norm", depth=2, dtype=torch.float32)
    cases.append(("float32 model and inputs, LayerNorm network", model,
                  _batch(rng, 8, d_in, d_out, dtype=torch.float32), FLOAT32_TOL))
    return cases


def gradient_norm_cases(rng):
    return [Case(label, (model, cross_entropy, batch), state_of=(0,), **options)
            for label, model, batch, options in model_cases(rng)]


def internal_covariate_shift_cases(rng):
    cases = []
    for label, model, batch, options in model_cases(rng):
        lr = float(np.exp(rng.uniform(np.log(0.01), np.log(1.0))))
        cases.append(Case(f"{label}, lr={lr:.3g}", (model, cross_entropy, batch, lr), state_of=(0,), **options))
    label, model, batch, _ = model_cases(rng)[1]
    cases.append(Case(f"{label}, lr=0 (nothing moves: every shift is 0)", (model, cross_entropy, batch, 0.0),
                      state_of=(0,)))
    return cases


def step_size_cases(rng):
    cases = []
    for label, model, batch, options in model_cases(rng):
        steps = np.sort(np.exp(rng.uniform(np.log(0.01), np.log(1.0), size=int(rng.integers(1, 6)))))
        cases.append(Case(f"{label}, step sizes {np.round(steps, 3).tolist()}",
                          (model, cross_entropy, batch, steps), state_of=(0,), **options))
    label, model, batch, _ = model_cases(rng)[2]
    cases.append(Case(f"{label}, step sizes [0, 0.1, 0.3] (a step of 0 stays at the start)",
                      (model, cross_entropy, batch, np.array([0.0, 0.1, 0.3])), state_of=(0,)))
    cases.append(Case(f"{label}, one step size given as a list [0.2]", (model, cross_entropy, batch, [0.2]),
                      state_of=(0,)))
    return cases


# ---------------------------------------------------------------- the experiment
#: The experiment's fixed call: five seeds, steps from a tenth to four times the learning rate 0.1
#: (chapter 2's setting: 8 hidden layers of 128 units, He initialization, batches of 64 digits).
EXPERIMENT_SEEDS = (0, 1, 2, 3, 4)
EXPERIMENT_STEP_SIZES = (0.01, 0.05, 0.1, 0.2, 0.4)
EXPERIMENT_NETWORKS = ("none", "batch_norm")
EXPERIMENT_FIELDS = {"loss": 1, "grad_norm": 1, "losses": 2, "grad_changes": 2}
#: How much larger the median over seeds must be without BatchNorm than with it (chapter 2 measures
#: about 3x for both the loss range and the largest gradient change; 1.5 leaves room for any batch choice).
EXPERIMENT_MARGIN = 1.5


def landscape_experiment_cases(_rng=None):
    data = load_digits_tensors()
    return [Case(f"landscape_at_init(digits.x_train, digits.y_train, seeds={EXPERIMENT_SEEDS}, "
                 f"step_sizes={EXPERIMENT_STEP_SIZES})",
                 (data.x_train, data.y_train, EXPERIMENT_SEEDS, EXPERIMENT_STEP_SIZES))]


def _field(result, network, field, name, label):
    where = f"{name}[{network!r}][{field!r}] for case {label!r}"
    value = result[network][field]
    if not isinstance(value, np.ndarray):
        raise GradingError(f"{where}: expected a numpy array, got {type(value).__name__}")
    shape = (len(EXPERIMENT_SEEDS),) + ((len(EXPERIMENT_STEP_SIZES),) if EXPERIMENT_FIELDS[field] == 2 else ())
    if value.shape != shape:
        raise GradingError(f"{where}: shape {value.shape}, expected {shape} (seeds{' x step sizes' if len(shape) == 2 else ''})")
    if value.dtype.kind != "f":
        raise GradingError(f"{where}: dtype {value.dtype}, expected float64")
    if not np.all(np.isfinite(value)):
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(value))[0])
        raise GradingError(f"{where}: non-finite value {value[index]} at index {index}")
    return value.astype(np.float64)


def landscape_properties(actual, expected, *, name, label, rtol=None, atol=None) -> None:
    """What chapter 2 predicts for networks at initialization (He init), checked on the learner's numbers.

    1. The result is ``{"none": ..., "batch_norm": ...}``, each a dict of float arrays ``loss``,
       ``grad_norm`` (one per seed), ``losses`` and ``grad_changes`` (seeds x step sizes), all finite,
       with positive gradient norms and non-negative gradient changes.
    2. The smallest step (0.01) along the negative gradient lowers the loss, for every seed and both
       networks (first-order Taylor: by about 0.01 ||g||^2).
    3. Without BatchNorm the landscape is rougher: the median over seeds of the loss range over the
       steps (max - min of ``losses``) and of the largest gradient change (max of ``grad_changes``) are
       at least :data:`EXPERIMENT_MARGIN` times larger than with BatchNorm.
    """
    del expected, rtol, atol  # no reference: properties only
    if not isinstance(actual, dict) or set(actual) != set(EXPERIMENT_NETWORKS):
        got = sorted(actual) if isinstance(actual, dict) else type(actual).__name__
        raise GradingError(f"{name} for case {label!r}: expected a dict with the keys {list(EXPERIMENT_NETWORKS)}, "
                           f"got {got}")
    values = {}
    for network in EXPERIMENT_NETWORKS:
        fields = actual[network]
        if not isinstance(fields, dict) or set(fields) != set(EXPERIMENT_FIELDS):
            got = sorted(fields) if isinstance(fields, dict) else type(fields).__name__
            raise GradingError(f"{name}[{network!r}] for case {label!r}: expected a dict with the keys "
                               f"{list(EXPERIMENT_FIELDS)}, got {got}")
        values[network] = {f: _field(actual, network, f, name, label) for f in EXPERIMENT_FIELDS}
        v = values[network]
        if np.any(v["grad_norm"] <= 0):
            seed = EXPERIMENT_SEEDS[int(np.argmin(v["grad_norm"]))]
            raise GradingError(f"{name}[{network!r}]['grad_norm'] for case {label!r}: {v['grad_norm'].min():.6g} "
                               f"for seed {seed}; a network at initialization has a nonzero gradient")
        if np.any(v["grad_changes"] < 0):
            index = tuple(int(i) for i in np.argwhere(v["grad_changes"] < 0)[0])
            raise GradingError(f"{name}[{network!r}]['grad_changes'] for case {label!r}: negative value "
                               f"{v['grad_changes'][index]:.6g} at index {index}; a norm is never negative")
        rise = v["losses"][:, 0] - v["loss"]
        if np.any(rise >= 0):
            i = int(np.argmax(rise))
            raise GradingError(
                f"{name}[{network!r}] for case {label!r}: for seed {EXPERIMENT_SEEDS[i]} the loss after the "
                f"smallest step (eta = {EXPERIMENT_STEP_SIZES[0]}) is {v['losses'][i, 0]:.8g}, not below the "
                f"loss at the start, {v['loss'][i]:.8g}; a small step along the NEGATIVE gradient lowers the "
                f"loss by about eta ||g||^2 = {EXPERIMENT_STEP_SIZES[0] * v['grad_norm'][i] ** 2:.4g}")
    summaries = {
        "loss range (max - min of losses over the steps)": lambda v: np.ptp(v["losses"], axis=1),
        "largest gradient change (max of grad_changes over the steps)": lambda v: v["grad_changes"].max(axis=1),
    }
    for what, summary in summaries.items():
        plain, normed = (float(np.median(summary(values[n]))) for n in EXPERIMENT_NETWORKS)
        if not plain >= EXPERIMENT_MARGIN * normed:
            raise GradingError(
                f"{name} for case {label!r}: median {what} over the seeds is {plain:.4g} without BatchNorm and "
                f"{normed:.4g} with it; chapter 2 predicts at least {EXPERIMENT_MARGIN:g} times larger without "
                f"BatchNorm at initialization. Check that each network is mlp(depth=8, width=128, norm=..., "
                f"init='kaiming', seed=seed) in training mode and that 'none' and 'batch_norm' are not swapped")


def _part(grade_id, function, reference, cases, points, seed, description, **extra):
    return Part(PROBLEM_SET, grade_id, function, reference, cases, points=points, seed=seed, rtol=RTOL,
                atol=ATOL, description=description, **extra)


PARTS = [
    _part("gradient_norm", "gradient_norm", gradient_norm_reference, visible_gradient_norm_cases, 1, 511,
          "visible test: the demo network, called twice; the model left untouched"),
    _part("gradient_norm_hidden", "gradient_norm", gradient_norm_reference, gradient_norm_cases, 1, 501,
          "Euclidean norm of the loss gradient over all trainable parameters"),
    _part("internal_covariate_shift", "internal_covariate_shift", internal_covariate_shift_reference,
          visible_internal_covariate_shift_cases, 1, 512, "visible test: the demo network at four step sizes"),
    _part("internal_covariate_shift_hidden", "internal_covariate_shift", internal_covariate_shift_reference,
          internal_covariate_shift_cases, 3, 502,
          "per-layer ||G - G'|| and cos(G, G') of Santurkar et al.'s Definition 2.1"),
    _part("loss_along_gradient", "loss_along_gradient", loss_along_gradient_reference,
          visible_loss_along_gradient_cases, 1, 513, "visible test: the demo network, steps 0, 1e-5, 0.5"),
    _part("loss_along_gradient_hidden", "loss_along_gradient", loss_along_gradient_reference, step_size_cases, 1,
          503, "losses L(theta - eta g) along the gradient"),
    _part("gradient_changes", "gradient_changes", gradient_changes_reference, visible_gradient_changes_cases, 1,
          514, "visible test: a quadratic and the demo network"),
    _part("gradient_changes_hidden", "gradient_changes", gradient_changes_reference, step_size_cases, 1, 504,
          "gradient changes ||g(theta) - g(theta - eta g)|| (gradient predictiveness)"),
    _part("effective_beta_smoothness", "effective_beta_smoothness", effective_beta_smoothness_reference,
          visible_effective_beta_smoothness_cases, 1, 515, "visible test: a quadratic at two sets of steps"),
    _part("effective_beta_smoothness_hidden", "effective_beta_smoothness", effective_beta_smoothness_reference,
          step_size_cases, 1, 505,
          "effective beta-smoothness: max over eta > 0 of the gradient change per unit step"),
    _part("landscape_experiment", "landscape_at_init", None, landscape_experiment_cases, 2, 516,
          "experiment: landscape probes at initialization with and without BatchNorm over five seeds "
          "(properties chapter 2 predicts; no reference)", compare=landscape_properties),
]

register(PARTS, provides=("normcourse.lab.models",))
