"""Wrong implementations of problem set 8's functions and class: the mistakes the course warns about.

Each is a plausible mistake: the authors' released Weight Standardization (unbiased standard deviation,
eps outside the root), statistics over the wrong axes, clipping without the floor eps or rescaling every
unit, gradients accumulated instead of replaced, a SkipInit that copies its branch or does not register
alpha, a Dynamic Tanh gradient without the chain factor alpha, experiments that swap the networks or
record the loss after the update. The first entry of each name is its most plausible mistake (the
one-bug-costs-one-part test substitutes it into the solution). The experiment runs the learner's
``SkipInit`` and ``agc_backward`` by design (``USES``).

The factories name what they get wrong (``__name__``), so that test ids and messages say it.
"""

import copy
from collections import OrderedDict

import normcourse.reference as ref
import numpy as np
import torch
import torch.nn.functional as F
from normcourse.lab import normalization_free as nf
from normcourse.problems import ps08_normalization_free as ps08
from torch import nn


def _named(name, fn):
    fn.__name__ = fn.__qualname__ = name
    return fn


# Weight Standardization.
def _unit_axes(w):
    return tuple(range(1, np.ndim(w)))


def _ws_released_code(weight, eps=1e-5):
    """The authors' released code: the unbiased standard deviation, eps added to it."""
    w = np.asarray(weight, dtype=np.float64)
    axes = _unit_axes(w)
    centered = w - w.mean(axis=axes, keepdims=True)
    return (centered / (w.std(axis=axes, ddof=1, keepdims=True) + eps)).astype(np.asarray(weight).dtype)


def _ws_per_input(weight, eps=1e-5):
    """Statistics over the output units (axis 0) instead of within each unit."""
    w = np.asarray(weight, dtype=np.float64)
    centered = w - w.mean(axis=0, keepdims=True)
    return (centered / np.sqrt((centered ** 2).mean(axis=0, keepdims=True) + eps)).astype(np.asarray(weight).dtype)


def _ws_whole_tensor(weight, eps=1e-5):
    w = np.asarray(weight, dtype=np.float64)
    return ((w - w.mean()) / np.sqrt(w.var() + eps)).astype(np.asarray(weight).dtype)


def _ws_float64_out(weight, eps=1e-5):
    """Right values, returned in float64 whatever the input dtype."""
    return ref.weight_standardization(np.asarray(weight, dtype=np.float64), eps)


def _ws_in_place(weight, eps=1e-5):
    """Right values, but centres the caller's array in place."""
    w = np.asarray(weight)
    axes = _unit_axes(w)
    w -= w.mean(axis=axes, keepdims=True)
    return (w / np.sqrt((w.astype(np.float64) ** 2).mean(axis=axes, keepdims=True) + eps)).astype(w.dtype)


# Scaled Weight Standardization.
def _sws_with(name, *, sqrt_n=True, eps_added=False, ddof=0, gain_last_axis=False, use_gamma=True):
    def scaled_weight_standardization(weight, gain=None, gamma=1.0, eps=1e-4):
        w = np.asarray(weight, dtype=np.float64)
        axes = _unit_axes(w)
        n = w[0].size
        centered = w - w.mean(axis=axes, keepdims=True)
        var = centered.var(axis=axes, ddof=ddof, keepdims=True) if ddof else (centered ** 2).mean(axis=axes,
                                                                                                 keepdims=True)
        spread = n * var if sqrt_n else var
        scale = (gamma if use_gamma else 1.0) / np.sqrt(spread + eps if eps_added else np.maximum(spread, eps))
        if gain is not None:
            g = np.asarray(gain, dtype=np.float64)
            scale = scale * (g if gain_last_axis else g.reshape((-1,) + (1,) * (w.ndim - 1)))
        return (centered * scale).astype(np.asarray(weight).dtype)
    return _named(name, scaled_weight_standardization)


# Unit-wise norms.
def _norm_no_keepdims(x):
    a = np.asarray(x, dtype=np.float64)
    axes = _unit_axes(a) if a.ndim >= 2 else tuple(range(a.ndim))
    return np.sqrt((a ** 2).sum(axis=axes)).astype(np.asarray(x).dtype)


def _norm_vector_per_element(x):
    """A bias vector treated as one unit per element."""
    a = np.asarray(x)
    return np.abs(a) if a.ndim < 2 else ref.unitwise_norm(a)


def _norm_squared(x):
    return np.square(ref.unitwise_norm(np.asarray(x, dtype=np.float64))).astype(np.asarray(x).dtype)


def _norm_over_axis0(x):
    a = np.asarray(x, dtype=np.float64)
    return np.sqrt((a ** 2).sum(axis=0, keepdims=True)).astype(np.asarray(x).dtype)


# Adaptive gradient clipping.
def _agc_with(name, *, floor=True, eps_added=False, always=False, whole=False, elementwise=False, in_place=False):
    def adaptive_clip_grad(grad, weight, clipping=0.01, eps=1e-3):
        g, w = np.asarray(grad), np.asarray(weight, dtype=np.float64)
        g64 = g.astype(np.float64)
        if elementwise:
            axes = ()
        elif whole:
            axes = tuple(range(g.ndim))
        else:
            axes = _unit_axes(g) if g.ndim >= 2 else tuple(range(g.ndim))
        g_norm = np.sqrt((g64 ** 2).sum(axis=axes, keepdims=True))
        w_norm = np.sqrt((w ** 2).sum(axis=axes, keepdims=True))
        if eps_added:
            w_norm = w_norm + eps
        elif floor:
            w_norm = np.maximum(w_norm, eps)
        max_norm = clipping * w_norm
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = max_norm / g_norm if always else np.where(g_norm > max_norm, max_norm / g_norm, 1.0)
        if in_place:
            g *= scale.astype(g.dtype)
            return g
        return np.asarray(g64 * scale).astype(g.dtype)
    return _named(name, adaptive_clip_grad)


# Dynamic Tanh backward.
def _dyt_with(name, *, alpha_in_dx=True, gamma_in_dalpha=True, dweight_all=False, slope_with_alpha=True,
              float_dalpha=False):
    def dynamic_tanh_backward(dy, x, alpha, weight=None, bias=None):
        dtype = np.asarray(x).dtype
        x64, g = np.asarray(x, dtype=np.float64), np.asarray(dy, dtype=np.float64)
        a = float(np.asarray(alpha).reshape(()))
        t = np.tanh(a * x64)
        slope = 1 - t * t if slope_with_alpha else 1 - np.tanh(x64) ** 2
        g_gamma = g * weight if weight is not None else g
        dx = (g_gamma * (a if alpha_in_dx else 1.0) * slope).astype(dtype)
        dalpha_value = np.sum((g_gamma if gamma_in_dalpha else g) * x64 * slope)
        dalpha = float(dalpha_value) if float_dalpha else np.array([dalpha_value]).astype(dtype)
        dweight = dbias = None
        if weight is not None:
            axes = tuple(range(x64.ndim)) if dweight_all else tuple(range(x64.ndim - np.ndim(weight)))
            dweight = (g * t).sum(axis=axes).astype(dtype)
        if bias is not None:
            dbias = g.sum(axis=tuple(range(x64.ndim - np.ndim(bias)))).astype(dtype)
        return dx, dalpha, dweight, dbias
    return _named(name, dynamic_tanh_backward)


# SkipInit: wrong classes, graded through the notebook's driver.
class _SkipInitCopies(nn.Module):
    """Wraps a deep copy of the branch: the caller's branch never sees a gradient."""

    def __init__(self, branch, alpha_init=0.0):
        super().__init__()
        self.branch = copy.deepcopy(branch)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def forward(self, x):
        return x + self.alpha * self.branch(x)


class _SkipInitPlainTensor(nn.Module):
    """alpha a tensor that requires grad, but not a registered parameter (an optimizer never sees it)."""

    def __init__(self, branch, alpha_init=0.0):
        super().__init__()
        self.branch = branch
        self.alpha = torch.tensor(float(alpha_init), requires_grad=True)

    def forward(self, x):
        return x + self.alpha.to(x.dtype) * self.branch(x)


class _SkipInitFloat(nn.Module):
    """alpha a Python float: nothing to learn."""

    def __init__(self, branch, alpha_init=0.0):
        super().__init__()
        self.branch, self.alpha = branch, float(alpha_init)

    def forward(self, x):
        return x + self.alpha * self.branch(x)


class _SkipInitIgnoresInit(nn.Module):
    def __init__(self, branch, alpha_init=0.0):
        super().__init__()
        self.branch = branch
        self.alpha = nn.Parameter(torch.tensor(0.0))

    def forward(self, x):
        return x + self.alpha * self.branch(x)


class _SkipInitScalesSkip(nn.Module):
    """alpha on the skip path: alpha x + f(x)."""

    def __init__(self, branch, alpha_init=0.0):
        super().__init__()
        self.branch = branch
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def forward(self, x):
        return self.alpha * x + self.branch(x)


class _SkipInitResetsBranch(nn.Module):
    """Fixup-style: zeroes the branch's last layer as well (changes the caller's parameters)."""

    def __init__(self, branch, alpha_init=0.0):
        super().__init__()
        self.branch = branch
        last = [m for m in branch.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
        with torch.no_grad():
            last.weight.zero_()
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def forward(self, x):
        return x + self.alpha * self.branch(x)


class _SkipInitTrainsBranch(nn.Module):
    """Puts the branch into training mode."""

    def __init__(self, branch, alpha_init=0.0):
        super().__init__()
        self.branch = branch.train()
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def forward(self, x):
        return x + self.alpha * self.branch(x)


def driver(skip_init_class):
    """The notebook's ``run_skip_init`` with ``skip_init_class`` inside (how a Part sees a wrong SkipInit)."""
    def run_skip_init(branch, alpha_init, x, dy):
        return ps08.skip_init_driver(skip_init_class, branch, alpha_init, x, dy)
    return _named(f"run_skip_init_with{skip_init_class.__name__}", run_skip_init)


# AGC on a model.
def _agc_backward_with(name, *, clear=True, respect_exclude=True, floor=True, mode=False, tensor_share=False,
                       per_parameter=False, step=False):
    def agc_backward(model, loss_fn, batch, clipping=0.01, eps=1e-3, exclude=()):
        x, y = batch
        if mode:
            model.train()
        if clear:
            for p in model.parameters():
                p.grad = None
        loss_fn(model(x), y).backward()
        clipped = units = 0
        with torch.no_grad():
            for parameter, p in model.named_parameters():
                if p.grad is None or (respect_exclude and parameter in exclude):
                    continue
                dims = tuple(range(1, p.dim())) if p.dim() >= 2 else tuple(range(p.dim()))
                g_norm = p.grad.pow(2).sum(dim=dims, keepdim=True).sqrt()
                w_norm = p.pow(2).sum(dim=dims, keepdim=True).sqrt()
                max_norm = clipping * (w_norm.clamp(min=eps) if floor else w_norm)
                clip = g_norm > max_norm
                p.grad.mul_(torch.where(clip, max_norm / torch.where(clip, g_norm, torch.ones_like(g_norm)),
                                        torch.ones_like(g_norm)))
                if step:
                    p.sub_(0.1 * p.grad)
                if per_parameter:
                    clipped, units = clipped + int(clip.any()), units + 1
                else:
                    clipped, units = clipped + int(clip.sum()), units + clip.numel()
        share = clipped / units if units else 0.0
        return torch.tensor(share) if tensor_share else share
    return _named(name, agc_backward)


# The experiment, written with the course's SkipInit and AGC (a learner uses their own).
def residual_mlp(seed, skipinit, depth=8, width=32, in_dim=64, classes=10):
    """The notebook's residual_mlp, with the lab's SkipInit."""
    generator = torch.Generator().manual_seed(seed)

    def linear(n_in, n_out, gain):
        layer = nn.Linear(n_in, n_out)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(n_out, n_in, generator=generator) * (gain / n_in) ** 0.5)
            layer.bias.zero_()
        return layer

    layers = [("stem", linear(in_dim, width, 1.0))]
    for l in range(depth):
        block = nf.SkipInit(nn.Sequential(linear(width, width, 1.0), nn.ReLU(), linear(width, width, 2.0)),
                            alpha_init=0.0 if skipinit else 1.0)
        block.alpha.requires_grad_(skipinit)
        layers.append((f"block{l + 1}", block))
    layers.append(("head", linear(width, classes, 1.0)))
    return nn.Sequential(OrderedDict(layers))


HEAD = ("head.weight", "head.bias")


def _training_with(name, *, swap=False, record_after=False, agc_network="plain", agc_step=True):
    """residual_training with one switchable mistake (the course's SkipInit and AGC inside); with none, the
    experiment as the course runs it (the tests measure the property checks' margins on it)."""
    def residual_training(x, y, seeds=(0, 1, 2), lr=0.05, steps=40, clipping=0.02):
        result = {k: np.full((len(seeds), steps), np.nan) for k in ps08.EXPERIMENT_KEYS}
        networks = {"plain": swap, "skipinit": not swap, "agc": agc_network == "skipinit"}
        for i, seed in enumerate(seeds):
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
            for variant, skipinit in networks.items():
                model = residual_mlp(seed, skipinit=skipinit)
                optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
                for t in range(steps):
                    index = order[(t * 64 + torch.arange(64)) % len(x)]
                    xb, yb = x[index], y[index]
                    optimizer.zero_grad()
                    loss = F.cross_entropy(model(xb), yb)
                    if not torch.isfinite(loss):
                        break
                    loss.backward()
                    if variant == "agc":
                        chosen = [p for n, p in model.named_parameters() if n not in HEAD]
                        result["agc_clipped"][i, t] = nf.adaptive_clip_grad_(chosen, clipping)
                    if variant != "agc" or agc_step:
                        optimizer.step()
                    if record_after:
                        with torch.no_grad():
                            loss = F.cross_entropy(model(xb), yb)
                    result[variant][i, t] = loss.item()
        return result
    return _named(name, residual_training)


# ---------------------------------------------------------------------------------------------------
# The table, by learner name.

sws_forgets_sqrt_n = _sws_with("sws_forgets_sqrt_n", sqrt_n=False)
sws_eps_added = _sws_with("sws_eps_added_not_max", eps_added=True)
sws_gain_on_last_axis = _sws_with("sws_gain_on_last_axis", gain_last_axis=True)
sws_unbiased = _sws_with("sws_unbiased_variance", ddof=1)
sws_ignores_gamma = _sws_with("sws_ignores_gamma", use_gamma=False)
agc_no_floor = _agc_with("agc_no_floor", floor=False)
agc_rescales_every_unit = _agc_with("agc_rescales_every_unit", always=True)
agc_whole_tensor = _agc_with("agc_whole_tensor_one_unit", whole=True)
agc_eps_added = _agc_with("agc_eps_added_to_the_norm", eps_added=True)
agc_elementwise = _agc_with("agc_clips_elements", elementwise=True)
agc_in_place = _agc_with("agc_clips_the_callers_grad_in_place", in_place=True)
agc_backward_accumulates = _agc_backward_with("agc_backward_accumulates_grad", clear=False)
agc_backward_clips_excluded = _agc_backward_with("agc_backward_clips_excluded", respect_exclude=False)
agc_backward_no_floor = _agc_backward_with("agc_backward_no_floor", floor=False)
agc_backward_train_mode = _agc_backward_with("agc_backward_sets_train_mode", mode=True)
agc_backward_tensor_share = _agc_backward_with("agc_backward_returns_a_tensor", tensor_share=True)
agc_backward_per_parameter = _agc_backward_with("agc_backward_counts_parameters", per_parameter=True)
agc_backward_steps = _agc_backward_with("agc_backward_also_steps", step=True)
dyt_no_alpha_in_dx = _dyt_with("dyt_no_alpha_in_dx", alpha_in_dx=False)
dyt_dalpha_without_gamma = _dyt_with("dyt_dalpha_without_gamma", gamma_in_dalpha=False)
dyt_dweight_over_all_axes = _dyt_with("dyt_dweight_over_all_axes", dweight_all=True)
dyt_slope_without_alpha = _dyt_with("dyt_slope_without_alpha", slope_with_alpha=False)
dyt_float_dalpha = _dyt_with("dyt_dalpha_as_a_float", float_dalpha=True)
training_swapped = _training_with("training_plain_and_skipinit_swapped", swap=True)
training_agc_on_skipinit = _training_with("training_agc_on_the_skipinit_network", agc_network="skipinit")
training_records_after_update = _training_with("training_records_the_loss_after_the_update", record_after=True)
training_agc_never_steps = _training_with("training_agc_run_never_steps", agc_step=False)

WRONG = {
    "SkipInit": [_SkipInitCopies, _SkipInitPlainTensor, _SkipInitFloat, _SkipInitIgnoresInit, _SkipInitScalesSkip,
                 _SkipInitResetsBranch, _SkipInitTrainsBranch],
    "weight_standardization": [_ws_released_code, _ws_per_input, _ws_whole_tensor, _ws_float64_out, _ws_in_place],
    "scaled_weight_standardization": [sws_forgets_sqrt_n, sws_eps_added, sws_gain_on_last_axis, sws_unbiased,
                                      sws_ignores_gamma],
    "unitwise_norm": [_norm_no_keepdims, _norm_vector_per_element, _norm_squared, _norm_over_axis0],
    "adaptive_clip_grad": [agc_no_floor, agc_rescales_every_unit, agc_whole_tensor, agc_eps_added, agc_elementwise,
                           agc_in_place],
    "agc_backward": [agc_backward_accumulates, agc_backward_clips_excluded, agc_backward_no_floor,
                     agc_backward_train_mode, agc_backward_tensor_share, agc_backward_per_parameter,
                     agc_backward_steps],
    "dynamic_tanh_backward": [dyt_no_alpha_in_dx, dyt_dalpha_without_gamma, dyt_dweight_over_all_axes,
                              dyt_slope_without_alpha, dyt_float_dalpha],
    "residual_training": [training_swapped, training_agc_on_skipinit, training_records_after_update,
                          training_agc_never_steps],
}

#: The experiment runs the learner's SkipInit (through residual_mlp) and agc_backward by design.
USES = {"residual_training": ("SkipInit", "agc_backward")}
