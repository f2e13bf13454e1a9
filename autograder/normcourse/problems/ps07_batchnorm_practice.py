"""Problem set 7, BatchNorm in practice: the autograded parts (visible and hidden).

The learner writes what chapter 8 uses BatchNorm for once a model is trained, fine-tuned and shipped:

- ``fuse_linear_bn_weights`` and ``fuse_conv_bn_weights`` (numpy): fold an evaluation-mode BatchNorm
  into the linear layer or (transposed) convolution before it, with the arguments of PyTorch's
  ``torch.nn.utils.fusion`` functions; references :func:`normcourse.reference.fuse_linear_bn_weights`
  and :func:`normcourse.reference.fuse_conv_bn_weights` (which the reference tests check against
  PyTorch). The visible tests prove the equivalence on data, against ``torch.nn.functional``.
- ``freeze_batch_norm`` (torch): freeze every BatchNorm layer of a model for fine-tuning, in place
  (evaluation mode, ``requires_grad=False`` on its gain and bias), touching nothing else; it returns the
  frozen layers' names. Every case checks the whole model's state after the call and calls it twice.
- ``evaluate`` (torch): a model's outputs in evaluation mode, in chunks, without autograd, leaving the
  model exactly as found (every submodule's mode, running statistics, ``.grad``): the train/eval bugs
  of chapter 8, including the one a frozen BatchNorm sets up (restoring ``model.train(was_training)``
  un-freezes it). Every case checks the state and calls it twice.
- ``ghost_batch_norm`` (numpy): Ghost Batch Normalization with both running-statistics updates;
  reference :func:`normcourse.reference.ghost_batch_norm`.
- ``batch_renorm`` (numpy): Batch Renormalization's training and evaluation step; reference
  :func:`normcourse.reference.batch_renorm`.

*Visible parts* back the visible test cells: their cases are exactly the calls the cell makes (fixed
inputs built from ``np.random.default_rng(k)`` or the setup cell's ``demo_model()``, which
:func:`demo_model` here repeats; no use of the part's ``rng``). *Hidden parts* draw random shapes,
statistics, eps, momenta and affine settings from the part's ``rng`` and add the edge cases that apply.

The torch parts are :class:`ModelPart` objects: the same comparison, but a mode or ``requires_grad`` flag that
differs from the reference's is reported with what *this* function's contract wants (freeze the
BatchNorm layers; put back every submodule's own mode) instead of the shared hint for functions that
must leave a model alone.

Rules: the numpy parts forbid torch (``NO_TORCH``); the torch parts may use torch. The notebook hands
the learner no course module (``provides=()``): its setup cells build the demo models in plain torch,
and every case argument is a numpy array, a number, a string or a plain ``torch.nn`` module (the
re-check process that calls learner code cannot import the course package).

Tolerances: numpy parts use the course defaults (1e-10 in float64, 1e-4 in float32; see
:func:`normcourse.grading.compare.tolerance_for`); float32 running statistics get the float32 tolerance
too, since a learner may reduce a float32 input in float32. Torch parts run float64 models, where the
learner's result differs from the reference only by operation order and chunking: 1e-8 relative, 1e-10
absolute; float32 models are compared at 1e-5 (matrix products over chunks of different sizes may round
differently).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from normcourse import reference as ref
from normcourse.grading.cases import non_contiguous, random_affine, random_eps, random_input, random_shape
from normcourse.grading.compare import GradingError
from normcourse.grading.parts import Case, Part, register
from normcourse.grading.rules import NO_TORCH

PROBLEM_SET = "ps07_batchnorm_practice"
TORCH_TOL = {"rtol": 1e-8, "atol": 1e-10}
FLOAT32_TORCH_TOL = {"rtol": 1e-5, "atol": 1e-5}
FLOAT32_TOL = {"rtol": 1e-4, "atol": 1e-4}


# ---------------------------------------------------------------------------------------------------
# Folding BatchNorm into the layer before it (numpy).

def _bn_stats(rng, c, *, scale=1.0, dtype=np.float64, affine=None):
    """``(running_mean, running_var, eps, weight, bias)`` of a BatchNorm with ``c`` channels."""
    mean = scale * rng.normal(size=c)
    var = scale ** 2 * rng.uniform(0.3, 3.0, size=c)
    w, b = random_affine(rng, c, weight=affine, bias=affine)
    cast = (lambda a: None if a is None else a.astype(dtype))
    return cast(mean), cast(var), random_eps(rng), cast(w), cast(b)


def _affine_label(w, b) -> str:
    return f"bn_w {'given' if w is not None else 'None'}, bn_b {'given' if b is not None else 'None'}"


def visible_fuse_linear_cases(_rng=None) -> list[Case]:
    """The visible cell's two calls (``np.random.default_rng(0)``, in the cell's order)."""
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(4, 3)), rng.normal(size=4)
    rm, rv = rng.normal(size=4), rng.uniform(0.5, 2.0, size=4)
    gamma, beta = rng.normal(size=4), rng.normal(size=4)
    return [Case("visible test: Linear(3, 4) with a bias, BatchNorm1d(4) with gain and bias, eps=1e-5",
                 (w, b, rm, rv, 1e-5, gamma, beta)),
            Case("visible test: the same weight without a bias, BatchNorm without gain and bias, eps=1e-3",
                 (w, None, rm, rv, 1e-3, None, None))]


def fuse_linear_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    for _ in range(4):
        out_f, in_f = (int(v) for v in rng.integers(2, 9, size=2))
        w = rng.normal(size=(out_f, in_f))
        b = rng.normal(size=out_f) if rng.integers(2) else None
        rm, rv, eps, g, beta = _bn_stats(rng, out_f)
        cases.append(Case(f"random Linear({in_f}, {out_f}), linear_b {'given' if b is not None else 'None'}, "
                          f"{_affine_label(g, beta)}, eps={eps:.3g}", (w, b, rm, rv, eps, g, beta)))
    rm, rv, eps, g, beta = _bn_stats(rng, 1, affine=True)
    cases.append(Case("batch size 1 analogue: one output unit (out_features=1), in_features=1",
                      (rng.normal(size=(1, 1)), rng.normal(size=1), rm, rv, eps, g, beta)))
    rm, rv, eps, g, beta = _bn_stats(rng, 5, affine=True)
    rv[[1, 3]] = 0.0
    cases.append(Case("constant input upstream: running_var exactly 0 in units 1 and 3 (only eps keeps the "
                      "division finite), eps=1e-5", (rng.normal(size=(5, 3)), rng.normal(size=5), rm, rv, 1e-5, g, beta)))
    rm, rv, eps, g, beta = _bn_stats(rng, 4, scale=1e4, affine=True)
    cases.append(Case("magnitude 1e4: weight, bias and running_mean around 1e4, running_var around 1e8",
                      (1e4 * rng.normal(size=(4, 6)), 1e4 * rng.normal(size=4), rm, rv, eps, g, beta)))
    rm, rv, eps, g, beta = _bn_stats(rng, 6, dtype=np.float32, affine=True)
    cases.append(Case("float32: every array float32 (return float32)",
                      (rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=6).astype(np.float32),
                       rm, rv, eps, g, beta), **FLOAT32_TOL))
    rm, rv, eps, g, beta = _bn_stats(rng, 3, dtype=np.float32, affine=False)
    cases.append(Case("float32 weight without a bias (the fused bias is float32 too)",
                      (rng.normal(size=(3, 4)).astype(np.float32), None, rm, rv, eps, g, beta), **FLOAT32_TOL))
    rm, rv, eps, g, beta = _bn_stats(rng, 5)
    cases.append(Case(f"non-contiguous linear_w (stored transposed), {_affine_label(g, beta)}",
                      (non_contiguous(rng.normal(size=(5, 7))), rng.normal(size=5), rm, rv, eps, g, beta)))
    return cases


def visible_fuse_conv_cases(_rng=None) -> list[Case]:
    """The visible cell's two calls (``np.random.default_rng(1)``, in the cell's order)."""
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(8, 3, 3, 3)), rng.normal(size=8)
    rm, rv = rng.normal(size=8), rng.uniform(0.5, 2.0, size=8)
    gamma, beta = rng.normal(size=8), rng.normal(size=8)
    wt = rng.normal(size=(8, 3, 2, 2))                   # ConvTranspose2d(8, 3, 2): weight (C_in, C_out, kH, kW)
    rm_t, rv_t = rng.normal(size=3), rng.uniform(0.5, 2.0, size=3)
    gamma_t, beta_t = rng.normal(size=3), rng.normal(size=3)
    return [Case("visible test: Conv2d(3, 8, 3) with a bias, BatchNorm2d(8), eps=1e-5",
                 (w, b, rm, rv, 1e-5, gamma, beta)),
            Case("visible test: ConvTranspose2d(8, 3, 2) without a bias, BatchNorm2d(3), eps=1e-5, transpose=True",
                 (wt, None, rm_t, rv_t, 1e-5, gamma_t, beta_t), {"transpose": True})]


def fuse_conv_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    for spatial in (1, 2, 3, 2):
        c_out, c_in = (int(v) for v in rng.integers(2, 7, size=2))
        kernel = tuple(int(k) for k in rng.integers(1, 4, size=spatial))
        transpose = bool(rng.integers(2))
        shape = (c_in, c_out) + kernel if transpose else (c_out, c_in) + kernel
        w = rng.normal(size=shape)
        b = rng.normal(size=c_out) if rng.integers(2) else None
        rm, rv, eps, g, beta = _bn_stats(rng, c_out)
        kind = f"ConvTranspose{spatial}d({c_in}, {c_out}, {kernel})" if transpose else f"Conv{spatial}d({c_in}, {c_out}, {kernel})"
        cases.append(Case(f"random {kind}, weight {shape}, conv_b {'given' if b is not None else 'None'}, "
                          f"{_affine_label(g, beta)}, eps={eps:.3g}, transpose={transpose}",
                          (w, b, rm, rv, eps, g, beta), {"transpose": transpose}))
    rm, rv, eps, g, beta = _bn_stats(rng, 6, affine=True)
    cases.append(Case("grouped Conv2d(6, 6, 3, groups=3): weight (6, 2, 3, 3), C_in/groups on axis 1",
                      (rng.normal(size=(6, 2, 3, 3)), rng.normal(size=6), rm, rv, eps, g, beta)))
    rm, rv, eps, g, beta = _bn_stats(rng, 4, affine=True)
    cases.append(Case("ConvTranspose2d(2, 4, 3) with C_in != C_out: output channels on axis 1, weight (2, 4, 3, 3)",
                      (rng.normal(size=(2, 4, 3, 3)), rng.normal(size=4), rm, rv, eps, g, beta), {"transpose": True}))
    rm, rv, eps, g, beta = _bn_stats(rng, 1, affine=True)
    cases.append(Case("batch size 1 analogue: one output channel and one input channel, 1x1 kernel",
                      (rng.normal(size=(1, 1, 1, 1)), None, rm, rv, eps, g, beta)))
    rm, rv, eps, g, beta = _bn_stats(rng, 3, affine=True)
    rv[0] = 0.0
    cases.append(Case("constant input upstream: running_var exactly 0 in channel 0, eps=1e-5",
                      (rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3), rm, rv, 1e-5, g, beta)))
    rm, rv, eps, g, beta = _bn_stats(rng, 4, scale=1e4, affine=True)
    cases.append(Case("magnitude 1e4: weight, bias and running_mean around 1e4, running_var around 1e8",
                      (1e4 * rng.normal(size=(4, 3, 2, 2)), 1e4 * rng.normal(size=4), rm, rv, eps, g, beta)))
    rm, rv, eps, g, beta = _bn_stats(rng, 4, dtype=np.float32, affine=True)
    cases.append(Case("float32: every array float32 (return float32)",
                      (rng.normal(size=(4, 2, 3, 3)).astype(np.float32), rng.normal(size=4).astype(np.float32),
                       rm, rv, eps, g, beta), **FLOAT32_TOL))
    rm, rv, eps, g, beta = _bn_stats(rng, 3)
    cases.append(Case(f"non-contiguous conv_w (axes stored in reverse order), {_affine_label(g, beta)}",
                      (non_contiguous(rng.normal(size=(3, 4, 3, 3))), None, rm, rv, eps, g, beta)))
    return cases


# ---------------------------------------------------------------------------------------------------
# Models for the torch parts: plain torch modules only, filled from the part's rng.

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _is_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


@torch.no_grad()
def _fill(model: nn.Module, rng: np.random.Generator) -> nn.Module:
    """Every parameter and BatchNorm buffer from ``rng``: He-scaled weights, gains near 1, small biases,
    running statistics far from the initial 0 and 1 (so that evaluation and training modes differ)."""
    for name, p in model.named_parameters():
        if p.ndim > 1:
            values = rng.normal(size=tuple(p.shape)) * np.sqrt(2.0 / p[0].numel())
        elif name.endswith("weight"):
            values = 1.0 + 0.3 * rng.normal(size=tuple(p.shape))
        else:
            values = 0.3 * rng.normal(size=tuple(p.shape))
        p.copy_(torch.from_numpy(values))
    for module in model.modules():
        if getattr(module, "running_mean", None) is not None:
            c = module.running_mean.shape[0]
            module.running_mean.copy_(torch.from_numpy(rng.normal(size=c)))
            module.running_var.copy_(torch.from_numpy(rng.uniform(0.3, 3.0, size=c)))
            module.num_batches_tracked.fill_(int(rng.integers(1, 1000)))
    return model


def demo_model():
    """The setup cell's ``demo_model()``: a float64 MLP with BatchNorm, dropout and a LayerNorm, in
    training mode with non-trivial running statistics, and a batch of 10 inputs."""
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
                          nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU()),
                          nn.LayerNorm(8), nn.Linear(8, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) / 2 + (p.ndim == 1))
        for bn in (model[1], model[4][1]):
            bn.running_mean.copy_(torch.randn(8, generator=generator, dtype=torch.float64))
            bn.running_var.copy_(torch.rand(8, generator=generator, dtype=torch.float64) + 0.5)
            bn.num_batches_tracked.fill_(100)
    x = torch.randn(10, 6, generator=generator, dtype=torch.float64)
    return model, x


def _mlp(rng, *, dtype=torch.float64, dropout=0.0, norm="batch_norm"):
    d_in, width, d_out = (int(v) for v in rng.integers(3, 9, size=3))
    layers: list[nn.Module] = [nn.Linear(d_in, width)]
    if norm == "batch_norm":
        layers.append(nn.BatchNorm1d(width))
    layers.append(nn.ReLU())
    if dropout:
        layers.append(nn.Dropout(dropout))
    block = [nn.Linear(width, width, bias=False)] + ([nn.BatchNorm1d(width)] if norm == "batch_norm" else [])
    layers += [nn.Sequential(*block, nn.ReLU()), nn.Linear(width, d_out)]
    return _fill(nn.Sequential(*layers).to(dtype), rng), d_in


def _cnn(rng, *, dtype=torch.float64):
    c1, c2, k = (int(v) for v in rng.integers(2, 6, size=3))
    model = nn.Sequential(nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
                          nn.Sequential(nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU()),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c2, k))
    return _fill(model.to(dtype), rng)


def _random_modes(model: nn.Module, rng) -> nn.Module:
    """Some submodules in evaluation mode and some parameters frozen, at random (never the model itself)."""
    for module in list(model.modules())[1:]:
        if rng.random() < 0.3:
            module.training = False
    for p in model.parameters():
        if rng.random() < 0.2:
            p.requires_grad_(False)
    return model


def _with_grads(model: nn.Module, rng) -> nn.Module:
    """``.grad`` already set on every trainable parameter (from an earlier backward pass)."""
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.from_numpy(rng.normal(size=tuple(p.shape))).to(p.dtype)
    return model


# ---------------------------------------------------------------------------------------------------
# freeze_batch_norm (torch).

def freeze_batch_norm_reference(model: nn.Module) -> list[str]:
    r"""Freeze every BatchNorm layer of ``model`` in place; return their names.

    A BatchNorm layer is an instance of ``torch.nn.modules.batchnorm._BatchNorm`` (``BatchNorm1d``,
    ``BatchNorm2d``, ``BatchNorm3d``, ``SyncBatchNorm``), not InstanceNorm, GroupNorm or LayerNorm.
    Each is put in evaluation mode and its parameters get ``requires_grad=False``; nothing else of the
    model changes. Returns the layers' names as ``model.named_modules()`` gives them, in that order.
    """
    names = []
    for name, module in model.named_modules():
        if _is_batch_norm(module):
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)
            names.append(name)
    return names


def visible_freeze_cases(_rng=None) -> list[Case]:
    model, _ = demo_model()
    return [Case("visible test: the demo model (BatchNorm layers '1' and '4.1', a LayerNorm '5'), training mode",
                 (model,), state_of=(0,))]


def freeze_cases(rng: np.random.Generator) -> list[Case]:
    twice = {"state_of": (0,), "repeat": 2}
    cases = []
    for _ in range(2):
        model, _ = _mlp(rng, dropout=0.5)
        cases.append(Case(f"random MLP with BatchNorm1d and Dropout, training mode: {_describe(model)}, "
                          "called twice", (model,), **twice))
    cases.append(Case("random CNN with nested blocks (Conv2d, BatchNorm2d), training mode, called twice",
                      (_cnn(rng),), **twice))
    model = _random_modes(_cnn(rng), rng)
    cases.append(Case(f"random CNN with some submodules in evaluation mode and some parameters frozen at random "
                      f"(leave them as they are): {_modes(model)}, called twice", (model,), **twice))
    model = _fill(nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, affine=False), nn.ReLU(), nn.Linear(6, 2)), rng)
    cases.append(Case("BatchNorm1d(affine=False): no gain or bias to freeze, only the mode, called twice",
                      (model,), **twice))
    model = _fill(nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.InstanceNorm2d(4, affine=True,
                  track_running_stats=True), nn.Flatten(), nn.LayerNorm(16), nn.Linear(16, 3)), rng)
    cases.append(Case("no BatchNorm at all (GroupNorm, InstanceNorm2d with affine and running statistics, "
                      "LayerNorm): nothing changes, the names are [], called twice", (model,), **twice))
    model = _fill(nn.Sequential(nn.Conv1d(3, 4, 3), nn.InstanceNorm1d(4, affine=True, track_running_stats=True),
                                nn.BatchNorm1d(4), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(8, 2)), rng)
    cases.append(Case("a BatchNorm1d next to an InstanceNorm1d with running statistics and a GroupNorm: only the "
                      "BatchNorm is frozen, called twice", (model,), **twice))
    model, _ = _mlp(rng, dropout=0.2)
    model.eval()
    model[0].requires_grad_(False)
    cases.append(Case("a model in evaluation mode whose first Linear is already frozen (requires_grad=False): "
                      "nothing but the BatchNorm layers changes, called twice", (model,), **twice))
    model = _fill(nn.Sequential(nn.Conv3d(1, 3, 2), nn.BatchNorm3d(3), nn.Flatten(), nn.Linear(3, 4),
                                nn.SyncBatchNorm(4)), rng)
    cases.append(Case("BatchNorm3d and nn.SyncBatchNorm (both BatchNorm layers), called twice", (model,), **twice))
    cases.append(Case("the model is a single BatchNorm2d (its name is '', the empty string), called twice",
                      (_fill(nn.BatchNorm2d(3), rng),), **twice))
    model, _ = _mlp(rng)
    cases.append(Case("gradients already computed (.grad set on every parameter: keep them), called twice",
                      (_with_grads(model, rng),), **twice))
    cases.append(Case("float32 MLP (the default dtype), called twice", (_mlp(rng, dtype=torch.float32)[0],), **twice))
    return cases


def _describe(model: nn.Module) -> str:
    """``Linear(5, 7) -> BatchNorm1d(7) -> ReLU -> [Linear(7, 7) -> ...] -> ...``: the layers and their sizes."""
    def one(m):
        if isinstance(m, nn.Sequential):
            return f"[{_describe(m)}]"
        if isinstance(m, nn.Linear):
            return f"Linear({m.in_features}, {m.out_features})"
        if _is_batch_norm(m):
            return f"{type(m).__name__}({m.num_features})"
        if isinstance(m, nn.Dropout):
            return f"Dropout({m.p:g})"
        return type(m).__name__
    return " -> ".join(one(m) for m in model)


def _modes(model: nn.Module) -> str:
    off = [name for name, m in model.named_modules() if name and not m.training]
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    return f"evaluation mode: {off or 'none'}; frozen parameters: {frozen or 'none'}"


def names_match(actual, expected, *, name, label, rtol=None, atol=None) -> None:
    """``freeze_batch_norm`` returns the frozen layers' names: a list of str equal to the reference's."""
    del rtol, atol
    where = f"{name} for case {label!r}"
    if not isinstance(actual, (list, tuple)) or not all(isinstance(a, str) for a in actual):
        got = type(actual).__name__ + (" (did you forget to return the names?)" if actual is None else "")
        raise GradingError(f"{where}: expected a list of str (the names of the BatchNorm layers, as "
                           f"model.named_modules() gives them), got {got}")
    if list(actual) != list(expected):
        missing = [n for n in expected if n not in actual]
        extra = [n for n in actual if n not in expected]
        raise GradingError(f"{where}: returned the names {list(actual)}, expected {list(expected)} (missing: "
                           f"{missing}; not BatchNorm layers, or listed twice: {extra}; order of model.named_modules())")


def freeze_flag_hint(key: str, want: bool) -> str:
    """What freeze_batch_norm's contract says about a mode or requires_grad flag that came out wrong."""
    if not want:
        return "this is a BatchNorm layer (or its parameter): freeze it (evaluation mode, requires_grad=False)"
    return "this is not a BatchNorm layer (or one of its parameters): leave it as it was"


@dataclasses.dataclass
class ModelPart(Part):
    """A torch Part whose messages about modes and ``requires_grad`` flags say what *this* function's
    contract wants. (The shared hints of :mod:`normcourse.grading.compare` fit functions that must leave a
    model alone, and suggest ``model.train(mode)``, which is the very bug ``evaluate``'s cases look for.)
    The result is compared first, then those flags, then the rest of the state.

    Attributes:
        flag_hint: ``flag_hint(key, expected_value) -> str``, the advice for a flag that differs.
    """

    flag_hint: Callable[[str, bool], str] | None = None

    def judge(self, actual, case) -> None:
        super().judge(actual, dataclasses.replace(case, state_of=()))
        expected = self.expected(case)
        for i in case.state_of:
            got, want = actual.states[i], expected.states[i]
            for key in want:
                if not (key.endswith(".training") or key.endswith("requires_grad")) or key not in got:
                    continue
                if bool(got[key]) != bool(want[key]):
                    raise GradingError(
                        f"the model passed as argument {self.argument_name(i)} after {self.function}(...) for case "
                        f"{case.label!r}: {key} is {bool(got[key])}, expected {bool(want[key])}; "
                        f"{self.flag_hint(key, bool(want[key]))}")
        super().judge(actual, case)


# ---------------------------------------------------------------------------------------------------
# evaluate (torch).

def evaluate_reference(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    r"""``model``'s outputs for ``x`` in evaluation mode, chunk by chunk, as a numpy array.

    Every submodule is put in evaluation mode (running statistics, no dropout), the chunks
    ``x[i:i + batch_size]`` go through the model under ``torch.no_grad()``, and then every submodule's
    ``training`` flag is put back as it was (one by one: ``model.train(was)`` would also switch a frozen
    BatchNorm back to training). Nothing else changes. Returns ``torch.cat(outputs).numpy()``, in the
    model's dtype.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            outputs = [model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    finally:
        for module, mode in modes:
            module.training = mode
    return torch.cat(outputs).numpy()


def evaluate_flag_hint(key: str, want: bool) -> str:
    """What evaluate's contract says about a mode or requires_grad flag that came out wrong."""
    if key.endswith(".training"):
        return ("put back every submodule's own mode afterwards (model.train(was) would switch them all, frozen "
                "BatchNorm layers included)")
    return "evaluating must not change requires_grad"


def visible_evaluate_cases(_rng=None) -> list[Case]:
    model, x = demo_model()
    frozen, _ = demo_model()
    frozen[1].eval(), frozen[4][1].eval()
    return [Case("visible test: the demo model in training mode, batch_size=4, called twice", (model, x, 4),
                 state_of=(0,), repeat=2, **TORCH_TOL),
            Case("visible test: the demo model with its two BatchNorm layers frozen (evaluation mode) and the "
                 "rest in training mode, batch_size=3", (frozen, x, 3), state_of=(0,), **TORCH_TOL)]


def _inputs(rng, n, d, *, dtype=torch.float64, scale=1.0, identical=False, image=False):
    shape = (n, 1, 6, 6) if image else (n, d)
    if identical:
        values = np.repeat(rng.normal(size=(1,) + shape[1:]), n, axis=0)
    else:
        values = rng.uniform(-1, 1) + rng.normal(size=shape)
    return torch.from_numpy(scale * values).to(dtype)


def evaluate_cases(rng: np.random.Generator) -> list[Case]:
    cases = []

    def add(label, model, x, batch_size, tol=TORCH_TOL):
        cases.append(Case(f"{label}, {x.shape[0]} samples, batch_size={batch_size}, called twice",
                          (model, x, batch_size), state_of=(0,), repeat=2, **tol))

    for _ in range(2):
        model, d = _mlp(rng)
        n = int(rng.integers(5, 20))
        add(f"random MLP in training mode: {_describe(model)}", model, _inputs(rng, n, d), int(rng.integers(2, 8)))
    model, d = _mlp(rng, dropout=0.5)
    add("MLP with Dropout(0.5), training mode (evaluation switches dropout off)", model, _inputs(rng, 9, d), 4)
    add("CNN with BatchNorm2d on (N, 1, 6, 6) images, training mode", _cnn(rng), _inputs(rng, 7, 0, image=True), 3)
    model, d = _mlp(rng)
    for bn in (m for m in model.modules() if _is_batch_norm(m)):
        bn.eval()
        bn.requires_grad_(False)
    add("frozen BatchNorm layers (evaluation mode) in a model in training mode: put each submodule's mode back, "
        "not model.train(True) for all", model, _inputs(rng, 8, d), 3)
    model = _random_modes(_cnn(rng), rng)
    add(f"CNN with random submodules in evaluation mode ({_modes(model)})", model, _inputs(rng, 6, 0, image=True), 4)
    model, d = _mlp(rng)
    add("a model already in evaluation mode", model.eval(), _inputs(rng, 6, d), 2)
    model, d = _mlp(rng)
    add("batch size 1: one sample (legal in evaluation mode)", model, _inputs(rng, 1, d), 1)
    model, d = _mlp(rng)
    add("batch_size larger than the data (one chunk)", model, _inputs(rng, 5, d), 64)
    model, d = _mlp(rng)
    add("constant input: identical samples (zero batch variance)", model, _inputs(rng, 6, d, identical=True), 3)
    model, d = _mlp(rng)
    add("magnitude 1e4 inputs", model, _inputs(rng, 8, d, scale=1e4), 4)
    model, d = _mlp(rng, dtype=torch.float32)
    add("float32 model and input", model, _inputs(rng, 9, d, dtype=torch.float32), 4, FLOAT32_TORCH_TOL)
    model, d = _mlp(rng)
    x = torch.from_numpy(rng.normal(size=(d, 7))).T                           # (7, d), not contiguous
    add("non-contiguous input (a transposed tensor)", model, x, 3)
    model, d = _mlp(rng)
    add("gradients already computed (.grad set on every parameter: keep them)", _with_grads(model, rng),
        _inputs(rng, 6, d), 4)
    model, d = _mlp(rng, norm=None)
    add("a plain MLP without BatchNorm", model, _inputs(rng, 5, d), 2)
    return cases


# ---------------------------------------------------------------------------------------------------
# Ghost Batch Normalization (numpy).

def _momentum(rng) -> float:
    return float(np.round(rng.uniform(0.05, 0.9), 3))


def visible_ghost_cases(_rng=None) -> list[Case]:
    """The visible cell's three calls (``np.random.default_rng(2)``)."""
    rng = np.random.default_rng(2)
    x = rng.normal(loc=1.0, scale=2.0, size=(12, 3, 2))
    stats = (np.zeros(3), np.ones(3))
    return [Case("visible test: (12, 3, 2) in ghost batches of 4, running statistics updated once (average)",
                 (x, 4, *map(np.copy, stats)), {"momentum": 0.1}, inplace=(2, 3)),
            Case("visible test: the same input, one running update per ghost batch (sequential)",
                 (x, 4, *map(np.copy, stats)), {"momentum": 0.1, "stats_update": "sequential"}, inplace=(2, 3)),
            Case("visible test: evaluation mode, one sample", (x[:1], 4, np.full(3, 0.5), np.full(3, 2.0)),
                 {"training": False}, inplace=(2, 3))]


def _ghost_case(rng, label, x, b, *, training=True, update=None, stats=True, affine=None, eps=None,
                momentum=None, tol=None) -> Case:
    c = x.shape[1]
    update = ("average", "sequential")[int(rng.integers(2))] if update is None else update
    momentum = _momentum(rng) if momentum is None else momentum
    eps = random_eps(rng) if eps is None else eps
    w, bias = random_affine(rng, c, weight=affine, bias=affine)
    rm, rv = (rng.normal(size=c), rng.uniform(0.5, 2.0, size=c)) if stats else (None, None)
    parts = [label, f"ghost_batch_size={b}", f"training={training}"]
    if training:
        parts.append(f"stats_update={update!r}" if stats else "no running statistics (None)")
    parts += [f"momentum={momentum:.3g}", f"eps={eps:.3g}",
              "affine" if w is not None or bias is not None else "no affine"]
    tol = {} if tol is None else tol
    return Case(", ".join(parts), (x, b, rm, rv, w, bias, training, momentum, eps, update),
                inplace=(2, 3) if stats else (), **tol)


def ghost_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    for layout in ("NC", "NCL", "NCHW"):
        for update in ("average", "sequential"):
            b, k = int(rng.integers(2, 5)), int(rng.integers(2, 5))
            shape = random_shape(rng, layout, batch=b * k)
            x = random_input(rng, shape, offset=float(rng.uniform(-2, 2)), scale=float(rng.uniform(0.5, 3)))
            cases.append(_ghost_case(rng, f"random {layout} {shape} in {k} ghost batches", x, b, update=update))
    x = random_input(rng, random_shape(rng, "NCL", batch=6))
    cases.append(_ghost_case(rng, "one ghost batch (ghost_batch_size = N: plain BatchNorm)", x, 6))
    x = random_input(rng, random_shape(rng, "NCHW", batch=4))
    for update in ("average", "sequential"):
        cases.append(_ghost_case(rng, f"batch size 1 per ghost batch: NCHW {x.shape}, each image normalized on its "
                                      "own (legal: H*W values per channel)", x, 1, update=update))
    x = random_input(rng, random_shape(rng, "NC", batch=8))
    cases.append(_ghost_case(rng, f"NC {x.shape} in ghost batches of 2", x, 2, stats=False))
    x = random_input(rng, random_shape(rng, "NC", batch=9))
    cases.append(_ghost_case(rng, f"sequential update, momentum 0.5 (the last ghost batch weighs most), NC {x.shape}",
                             x, 3, update="sequential", momentum=0.5))
    for layout in ("NC", "NCHW"):
        x = random_input(rng, random_shape(rng, layout))
        cases.append(_ghost_case(rng, f"evaluation mode {layout} {x.shape} (running statistics, none updated)", x, 2,
                                 training=False))
    x = random_input(rng, random_shape(rng, "NC", batch=1))
    cases.append(_ghost_case(rng, f"batch size 1 in evaluation mode, NC {x.shape}", x, 1, training=False))
    shape = random_shape(rng, "NCL", batch=6)
    constant = float(np.round(rng.uniform(-3, 3), 3))
    cases.append(_ghost_case(rng, f"constant input (every element {constant}: zero variance), shape {shape}",
                             np.full(shape, constant), 3, eps=1e-5))
    cases.append(_ghost_case(rng, f"magnitude 1e4, shape {shape}", random_input(rng, shape, scale=1e4), 2, eps=1e-5))
    cases.append(_ghost_case(rng, f"float32 input, shape {shape}", random_input(rng, shape, np.float32), 3,
                             eps=1e-5, tol=FLOAT32_TOL))
    cases.append(_ghost_case(rng, f"non-contiguous input (axes stored in reverse order), shape {shape}",
                             non_contiguous(random_input(rng, shape)), 2, eps=1e-5))
    return cases


# ---------------------------------------------------------------------------------------------------
# Batch Renormalization (numpy).

def visible_renorm_cases(_rng=None) -> list[Case]:
    """The visible cell's calls (``np.random.default_rng(3)``)."""
    rng = np.random.default_rng(3)
    x = rng.normal(loc=[0.8, -0.5], scale=[1.5, 0.7], size=(16, 2))
    rm, rs = np.array([0.5, -1.0]), np.array([2.0, 0.5])
    return [Case("visible test: (16, 2), wide limits r_max=d_max=1e6 (no clipping), momentum 0.1",
                 (x, rm.copy(), rs.copy()), {"training": True, "momentum": 0.1, "r_max": 1e6, "d_max": 1e6},
                 inplace=(1, 2)),
            Case("visible test: the same batch in evaluation mode", (x, rm.copy(), rs.copy()), {"training": False},
                 inplace=(1, 2)),
            Case("visible test: the same batch, r_max=1, d_max=0 (plain BatchNorm in training)",
                 (x, rm.copy(), rs.copy()), {"training": True, "r_max": 1.0, "d_max": 0.0}, inplace=(1, 2))]


def _renorm_case(rng, label, x, *, training=True, near=True, r_max=None, d_max=None, affine=None, eps=None,
                 tol=None, running=None) -> Case:
    c = x.shape[1]
    axes = (0,) + tuple(range(2, x.ndim))
    x64 = x.astype(np.float64)
    if running is not None:
        rm, rs = running
    elif near:  # running statistics near the batch's: r and d mostly inside the limits
        rm = x64.mean(axis=axes) + 0.3 * x64.std(axis=axes) * rng.normal(size=c)
        rs = x64.std(axis=axes) * rng.uniform(0.7, 1.4, size=c) + 0.1
    else:
        rm, rs = rng.normal(size=c), rng.uniform(0.5, 2.0, size=c)
    r_max = float(np.round(rng.uniform(1.5, 4.0), 2)) if r_max is None else r_max
    d_max = float(np.round(rng.uniform(0.5, 5.0), 2)) if d_max is None else d_max
    eps = random_eps(rng) if eps is None else eps
    momentum = float(np.round(rng.uniform(0.01, 0.5), 3))
    w, b = random_affine(rng, c, weight=affine, bias=affine)
    parts = [label, f"training={training}", f"momentum={momentum:.3g}", f"eps={eps:.3g}",
             f"r_max={r_max:g}", f"d_max={d_max:g}", "affine" if w is not None or b is not None else "no affine"]
    return Case(", ".join(parts), (x, np.asarray(rm, dtype=np.float64), np.asarray(rs, dtype=np.float64), w, b,
                                   training, momentum, eps, r_max, d_max), inplace=(1, 2), **(tol or {}))


def renorm_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    for layout in ("NC", "NCL", "NCHW"):
        for near in (True, False):
            x = random_input(rng, random_shape(rng, layout), offset=float(rng.uniform(-2, 2)),
                             scale=float(rng.uniform(0.5, 3)))
            what = "running statistics near the batch's" if near else "running statistics far from the batch's (clipping)"
            cases.append(_renorm_case(rng, f"random {layout} {x.shape}, {what}", x, near=near))
    x = random_input(rng, (6, 3), offset=2.0)
    cases.append(_renorm_case(rng, "r clipped above: running std 0.05, batch std about 1", x,
                              running=(x.mean(axis=0), np.full(3, 0.05)), r_max=3.0, d_max=1e3))
    cases.append(_renorm_case(rng, "d clipped: running mean 10 standard deviations away", x,
                              running=(x.mean(axis=0) - 10 * x.std(axis=0), x.std(axis=0)), r_max=1e3, d_max=2.0))
    cases.append(_renorm_case(rng, "r_max=1, d_max=0: the output of plain BatchNorm", x, near=False, r_max=1.0,
                              d_max=0.0))
    for layout in ("NC", "NCHW"):
        x = random_input(rng, random_shape(rng, layout))
        cases.append(_renorm_case(rng, f"evaluation mode {layout} {x.shape} (running statistics, none updated)", x,
                                  training=False, near=False))
    x = random_input(rng, random_shape(rng, "NC", batch=1))
    cases.append(_renorm_case(rng, f"batch size 1 in evaluation mode, NC {x.shape}", x, training=False, near=False))
    x = random_input(rng, random_shape(rng, "NCHW", batch=1))
    cases.append(_renorm_case(rng, f"batch size 1 in training, NCHW {x.shape} (legal: H*W values per channel)", x))
    shape = random_shape(rng, "NCL")
    constant = float(np.round(rng.uniform(-3, 3), 3))
    cases.append(_renorm_case(rng, f"constant input (every element {constant}: zero variance, r clipped below), "
                                   f"shape {shape}", np.full(shape, constant), near=False, eps=1e-5))
    cases.append(_renorm_case(rng, f"magnitude 1e4, shape {shape}", random_input(rng, shape, scale=1e4), near=False,
                              eps=1e-5))
    cases.append(_renorm_case(rng, f"magnitude 1e4 with running statistics near the batch's, shape {shape}",
                              random_input(rng, shape, scale=1e4), eps=1e-5))
    cases.append(_renorm_case(rng, f"float32 input (running statistics float64), shape {shape}",
                              random_input(rng, shape, np.float32), eps=1e-5, tol=FLOAT32_TOL))
    cases.append(_renorm_case(rng, f"non-contiguous input (axes stored in reverse order), shape {shape}",
                              non_contiguous(random_input(rng, shape)), eps=1e-5))
    return cases


# ---------------------------------------------------------------------------------------------------

def _numpy_part(grade_id, function, reference, cases, points, seed, description, **extra):
    return Part(PROBLEM_SET, grade_id, function, reference, cases, points=points, seed=seed,
                description=description, forbid=(NO_TORCH,), **extra)


def _torch_part(grade_id, function, reference, cases, points, seed, description, **extra):
    return ModelPart(PROBLEM_SET, grade_id, function, reference, cases, points=points, seed=seed,
                description=description, **extra)


PARTS = [
    _numpy_part("fuse_linear_bn", "fuse_linear_bn_weights", ref.fuse_linear_bn_weights, visible_fuse_linear_cases,
                1, 711, "visible test: two folds, checked against PyTorch's fusion and on data"),
    _numpy_part("fuse_linear_bn_hidden", "fuse_linear_bn_weights", ref.fuse_linear_bn_weights, fuse_linear_cases,
                1, 701, "eval-mode BatchNorm folded into the linear layer before it: W' = diag(a) W, "
                        "b' = a (b - mean) + beta"),
    _numpy_part("fuse_conv_bn", "fuse_conv_bn_weights", ref.fuse_conv_bn_weights, visible_fuse_conv_cases,
                1, 712, "visible test: a Conv2d and a ConvTranspose2d, checked against PyTorch and on data"),
    _numpy_part("fuse_conv_bn_hidden", "fuse_conv_bn_weights", ref.fuse_conv_bn_weights, fuse_conv_cases,
                2, 702, "eval-mode BatchNorm folded into a 1-d, 2-d or 3-d (transposed) convolution"),
    _torch_part("freeze_batch_norm", "freeze_batch_norm", freeze_batch_norm_reference, visible_freeze_cases,
                1, 713, "visible test: the demo model's BatchNorm layers frozen, nothing else", compare=names_match,
                flag_hint=freeze_flag_hint),
    _torch_part("freeze_batch_norm_hidden", "freeze_batch_norm", freeze_batch_norm_reference, freeze_cases,
                2, 703, "every BatchNorm layer (and nothing else) in evaluation mode with frozen gain and bias; "
                        "called twice", compare=names_match, flag_hint=freeze_flag_hint),
    _torch_part("evaluate", "evaluate", evaluate_reference, visible_evaluate_cases, 1, 714,
                "visible test: the demo model, plain and with frozen BatchNorm layers; left as found",
                flag_hint=evaluate_flag_hint),
    _torch_part("evaluate_hidden", "evaluate", evaluate_reference, evaluate_cases, 2, 704,
                "evaluation-mode outputs in chunks without autograd; the model left exactly as found; called twice",
                flag_hint=evaluate_flag_hint),
    _numpy_part("ghost_batch_norm", "ghost_batch_norm", ref.ghost_batch_norm, visible_ghost_cases, 1, 715,
                "visible test: both running updates and evaluation mode"),
    _numpy_part("ghost_batch_norm_hidden", "ghost_batch_norm", ref.ghost_batch_norm, ghost_cases, 3, 705,
                "Ghost Batch Normalization: per-ghost-batch statistics, running statistics averaged or sequential"),
    _numpy_part("batch_renorm", "batch_renorm", ref.batch_renorm, visible_renorm_cases, 1, 716,
                "visible test: unclipped training equals inference; r_max=1, d_max=0 is BatchNorm"),
    _numpy_part("batch_renorm_hidden", "batch_renorm", ref.batch_renorm, renorm_cases, 2, 706,
                "Batch Renormalization: clipped r and d, running mean and std updated after them"),
]

register(PARTS, provides=())
