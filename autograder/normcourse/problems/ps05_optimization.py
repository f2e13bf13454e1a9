"""Problem set 5, optimization: the hidden-test parts.

The learner measures small torch networks the way Santurkar et al. (2018) do: the gradient norm,
internal covariate shift (Definition 2.1, per layer as :func:`normcourse.lab.models.layer_groups`
splits the model), and the landscape probes along the gradient (losses, gradient changes, effective
beta-smoothness). The references are :func:`normcourse.lab.measurements.internal_covariate_shift`
and :func:`~normcourse.lab.measurements.landscape_probe`; the adapters below only pick the
field a learner function returns.

Cases are small seeded MLPs (:func:`normcourse.lab.models.mlp`, float64 unless the case says float32) with
no normalization, BatchNorm (training and evaluation mode) or LayerNorm, on random batches; edge cases:
a single linear layer, batch size 2 for BatchNorm, a batch of identical samples (LayerNorm, and
BatchNorm in evaluation mode), inputs of magnitude 1e4, a float32 model, a step size of 0. No case has noise layers: their random
draws would have to be replayed, which the reference does and the exercise does not ask for.

Tolerances: float64 models give results that differ from the reference only by summation order
(norms of concatenated versus per-tensor gradients), so 1e-8 relative with a 1e-10 floor. The float32
model is compared at 1e-4 (several float32 forward/backward passes; ICS is a difference of gradients).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from normcourse.lab.models import mlp
from normcourse.lab import measurements
from normcourse.grading.parts import Case, Part, register

PROBLEM_SET = "ps05_optimization"
RTOL, ATOL = 1e-8, 1e-10
FLOAT32_TOL = {"rtol": 1e-4, "atol": 1e-6}
NORMS = (None, "batch_norm", "layer_norm")


#: Cross-entropy, the loss every case uses. torch's own function, so that cases pickle by reference to
#: torch alone: the re-check unpickles them where no course module but the provided ones exists.
loss_fn = nn.functional.cross_entropy


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


# ---------------------------------------------------------------- cases
def _net(rng, *, norm, depth=None, in_dim=None, width=None, out_dim=None, dtype=torch.float64,
         train=True):
    depth = int(rng.integers(1, 4)) if depth is None else depth
    in_dim = int(rng.integers(3, 9)) if in_dim is None else in_dim
    width = int(rng.integers(4, 13)) if width is None else width
    out_dim = int(rng.integers(2, 6)) if out_dim is None else out_dim
    model = mlp(in_dim=in_dim, width=width, depth=depth, out_dim=out_dim, norm=norm,
                seed=int(rng.integers(2 ** 31))).to(dtype)
    return model.train(train), in_dim, out_dim


def _batch(rng, n, in_dim, out_dim, *, dtype=torch.float64, scale=1.0, identical=False):
    x = scale * rng.normal(size=(1 if identical else n, in_dim))
    x = np.repeat(x, n, axis=0) if identical else x
    return (torch.tensor(x, dtype=dtype), torch.tensor(rng.integers(0, out_dim, size=n)))


def model_cases(rng: np.random.Generator) -> list[tuple[str, nn.Module, tuple, dict]]:
    """``(label, model, batch, tolerances)`` for every case; shared by all parts of the set."""
    cases = []
    for norm in NORMS:
        model, d_in, d_out = _net(rng, norm=norm)
        n = int(rng.integers(4, 17))
        depth = sum(isinstance(m, nn.Linear) for m in model) - 1
        cases.append((f"random MLP with {depth} hidden layer(s), norm={norm}, batch of {n}", model,
                      _batch(rng, n, d_in, d_out), {}))
    model, d_in, d_out = _net(rng, norm=None, depth=0)
    cases.append(("a single linear layer (depth 0)", model, _batch(rng, 6, d_in, d_out), {}))
    model, d_in, d_out = _net(rng, norm="batch_norm", depth=2)
    cases.append(("batch size 2, BatchNorm network", model, _batch(rng, 2, d_in, d_out), {}))
    model, d_in, d_out = _net(rng, norm="batch_norm", depth=2, train=False)
    cases.append(("BatchNorm network in evaluation mode (running statistics; keep the mode)", model,
                  _batch(rng, 8, d_in, d_out), {}))
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
    model, d_in, d_out = _net(rng, norm="layer_norm", depth=2, dtype=torch.float32)
    cases.append(("float32 model and inputs, LayerNorm network", model,
                  _batch(rng, 8, d_in, d_out, dtype=torch.float32), FLOAT32_TOL))
    return cases


def gradient_norm_cases(rng):
    return [Case(label, (model, loss_fn, batch), **tol) for label, model, batch, tol in model_cases(rng)]


def internal_covariate_shift_cases(rng):
    cases = []
    for label, model, batch, tol in model_cases(rng):
        lr = float(np.exp(rng.uniform(np.log(0.01), np.log(1.0))))
        cases.append(Case(f"{label}, lr={lr:.3g}", (model, loss_fn, batch, lr), **tol))
    label, model, batch, _ = model_cases(rng)[1]
    cases.append(Case(f"{label}, lr=0 (nothing moves: every shift is 0)", (model, loss_fn, batch, 0.0)))
    return cases


def step_size_cases(rng):
    cases = []
    for i, (label, model, batch, tol) in enumerate(model_cases(rng)):
        steps = np.sort(np.exp(rng.uniform(np.log(0.01), np.log(1.0), size=int(rng.integers(1, 6)))))
        cases.append(Case(f"{label}, step sizes {np.round(steps, 3).tolist()}",
                          (model, loss_fn, batch, steps), **tol))
    label, model, batch, _ = model_cases(rng)[2]
    cases.append(Case(f"{label}, step sizes [0, 0.1, 0.3] (a step of 0 stays at the start)",
                      (model, loss_fn, batch, np.array([0.0, 0.1, 0.3]))))
    cases.append(Case(f"{label}, one step size given as a list [0.2]", (model, loss_fn, batch, [0.2])))
    return cases


PARTS = [
    Part(PROBLEM_SET, "gradient_norm_hidden", "gradient_norm", gradient_norm_reference,
         gradient_norm_cases, points=1, seed=501, rtol=RTOL, atol=ATOL,
         description="Euclidean norm of the loss gradient over all trainable parameters"),
    Part(PROBLEM_SET, "internal_covariate_shift_hidden", "internal_covariate_shift",
         internal_covariate_shift_reference, internal_covariate_shift_cases, points=3, seed=502,
         rtol=RTOL, atol=ATOL,
         description="per-layer ||G - G'|| and cos(G, G') of Santurkar et al.'s Definition 2.1"),
    Part(PROBLEM_SET, "loss_along_gradient_hidden", "loss_along_gradient", loss_along_gradient_reference,
         step_size_cases, points=2, seed=503, rtol=RTOL, atol=ATOL,
         description="losses L(theta - eta g) along the gradient"),
    Part(PROBLEM_SET, "gradient_changes_hidden", "gradient_changes", gradient_changes_reference,
         step_size_cases, points=2, seed=504, rtol=RTOL, atol=ATOL,
         description="gradient changes ||g(theta) - g(theta - eta g)|| (gradient predictiveness)"),
    Part(PROBLEM_SET, "effective_beta_smoothness_hidden", "effective_beta_smoothness",
         effective_beta_smoothness_reference, step_size_cases, points=2, seed=505, rtol=RTOL, atol=ATOL,
         description="effective beta-smoothness: max over eta > 0 of the gradient change per unit step"),
]

register(PARTS, provides=("normcourse.lab.models",))
