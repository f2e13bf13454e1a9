"""Autograded parts of problem sets 4-6 (Jacobians, optimization, Transformers) and their notebooks.

For every Part: wrong implementations (mistakes the course warns about) are listed in ``WRONG`` (run for
all sets in test_all_parts.py); the hidden parts cover the promised edge cases; every autograded cell of
the notebook, visible or hidden, is backed by a Part of the same points. Visible parts replay exactly
the calls of their visible cell (checked by recording the cell's calls). The experiments' property checks
accept the solution and reject wrong experiments; the entropy part accepts correct variants and rejects
epsilon fudges; the "no warnings" rule of ps06 holds in the kernel and in the out-of-kernel re-check. For
every notebook: the solution functions pass their Parts, the visible tests pass on the solution and
fail on the release's stubs, the release leaks nothing, the stated point totals add up and every
instruction cell is locked.

The notebook checks run the notebooks' code cells in this process (no kernel), which takes seconds;
the full nbgrader round trip (autograde gives full marks / zero) is the CI gate's job.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import re
import warnings
from pathlib import Path

import nbformat
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from normcourse.grading.compare import GradingError  # noqa: E402
from normcourse.grading.parts import get_part, parts_of  # noqa: E402
from normcourse.lab.models import layer_groups, mlp  # noqa: E402
from normcourse.lab.transformer import residual  # noqa: E402
from normcourse.reference import jacobians  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PROBLEM_SETS = ("ps04_jacobians", "ps05_optimization", "ps06_transformers")
ALL_PARTS = [p for ps in PROBLEM_SETS for p in parts_of(ps)]
HIDDEN_PARTS = [p for p in ALL_PARTS if p.grade_id.endswith("_hidden")]
VISIBLE_PARTS = [p for p in ALL_PARTS if not p.grade_id.endswith("_hidden")]
TORCH_SETS = ("ps05_optimization", "ps06_transformers")


def _ids(parts):
    return [f"{p.problem_set}:{p.grade_id}" for p in parts]


def _notebook(problem_set: str, folder: str = "solutions"):
    return nbformat.read(ROOT / folder / problem_set / f"{problem_set}.ipynb", as_version=4)


def _meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


# The reference passing its own parts, and five parts per set, are checked in test_all_parts.py.

# ---------------------------------------------------------------------------------------------------
# Edge cases: each hidden part names the ones that apply to its inputs (a vector has no batch axis, a
# model is not an array that can be non-contiguous). Labels are matched as substrings. Visible parts
# replay their cell's calls instead (test_visible_parts_replay_the_visible_cells).

VECTOR_EDGES = ["width 2", "constant input", "magnitude 1e4", "float32"]
MODEL_EDGES = ["a single linear layer", "batch size 2", "constant input", "magnitude 1e4", "float32",
               "evaluation mode", "frozen first layer", "called twice on the same model"]
STEP_EDGES = MODEL_EDGES + ["[0, 0.1, 0.3]"]
ARRAY_EDGES = ["batch size 1", "constant input", "magnitude 1e4", "float32", "non-contiguous"]
REQUIRED_EDGES = {
    "layer_norm_jacobian_hidden": VECTOR_EDGES + ["width d=1"],
    "rms_norm_jacobian_hidden": VECTOR_EDGES + ["width d=1", "eps=None"],
    "batch_norm_jacobian_hidden": VECTOR_EDGES,
    "layer_norm_jacobian_eigenvalues_hidden": VECTOR_EDGES + ["width d=1"],
    "gradient_norm_hidden": MODEL_EDGES,
    "internal_covariate_shift_hidden": MODEL_EDGES + ["lr=0"],
    "loss_along_gradient_hidden": STEP_EDGES,
    "gradient_changes_hidden": STEP_EDGES,
    "effective_beta_smoothness_hidden": STEP_EDGES,
    "attention_probabilities_hidden": ["constant input", "magnitude 1e4", "float32", "non-contiguous",
                                       "a single key", "width d = 1"],
    "attention_entropy_hidden": ["one-hot", "magnitude 1e4", "float32", "non-contiguous", "a single key",
                                 "probabilities of about 1e-9", "probabilities of about 1e-15", "smallest float64"],
    "per_layer_grad_norms_hidden": ["depth 1", "batch size 1", "sequence length 1", "float32", "pre-rms_norm",
                                    "post-layer_norm", "evaluation mode", "called twice on the same model"],
    "layer_norm_fixed_hidden": ARRAY_EDGES + ["width 1", "as an int", "NCHW"],
}


def test_every_hidden_part_lists_its_edge_cases():
    assert {p.grade_id for p in HIDDEN_PARTS} == set(REQUIRED_EDGES)


@pytest.mark.parametrize("part", HIDDEN_PARTS, ids=_ids(HIDDEN_PARTS))
def test_cases_cover_edge_cases(part):
    labels = " | ".join(case.label for case in part.make_cases())
    for edge in REQUIRED_EDGES[part.grade_id]:
        assert edge in labels, f"{part.grade_id}: no {edge!r} case among: {labels}"


def test_edge_cases_really_are_edge_cases():
    """The labels do not lie (spot checks on the inputs behind them)."""
    cases = {c.label: c for c in get_part("ps04_jacobians", "layer_norm_jacobian_hidden").make_cases()}
    assert cases["width d=1"].args[0].shape == (1,)
    assert np.ptp(cases["constant input (zero variance)"].args[0]) == 0
    assert np.abs(cases["magnitude 1e4"].args[0]).max() > 1e3
    assert cases["float32 input"].args[0].dtype == np.float32
    model_cases = {c.label.split(",")[0]: c for c in get_part("ps05_optimization", "gradient_norm_hidden").make_cases()}
    x = model_cases["constant input (8 identical samples)"].args[2][0]
    assert torch.equal(x, x[:1].expand_as(x))
    assert not model_cases["BatchNorm network in evaluation mode (running statistics; keep the mode)"].args[0].training
    assert model_cases["float32 model and inputs"].args[2][0].dtype == torch.float32
    frozen = model_cases["frozen first layer (requires_grad=False: not a trainable parameter)"].args[0]
    assert not any(p.requires_grad for p in frozen[0].parameters())
    assert all(c.state_of == (0,) for c in model_cases.values()), "every model case checks the model after the call"
    assert any(c.repeat == 2 for c in model_cases.values())
    entropy = {c.label: c.args[0] for c in get_part("ps06_transformers", "attention_entropy_hidden").make_cases()}
    tiny = next(v for k, v in entropy.items() if "about 1e-15" in k)
    assert tiny.shape[-1] == 1001 and np.sum(tiny < 1e-14) == 2000 and np.allclose(tiny.sum(-1), 1, atol=1e-15)


# ---------------------------------------------------------------------------------------------------
# Wrong implementations: each must fail its part, naming a case (test_all_parts.py runs them).

def _ln_jacobian_no_xhat_term(x, weight=None, eps=1e-5):
    x = np.asarray(x, dtype=np.float64)
    d = x.size
    J = (np.eye(d) - 1.0 / d) / np.sqrt(x.var() + eps)
    return J * np.asarray(weight, dtype=np.float64)[:, None] if weight is not None else J


def _ln_jacobian_gain_on_columns(x, weight=None, eps=1e-5):
    J = jacobians.layer_norm_jacobian(x, None, eps)
    return J * np.asarray(weight, dtype=np.float64)[None, :] if weight is not None else J


def _rms_jacobian_float64_eps(x, weight=None, eps=None):
    """The contract trap: convert to float64 first, then ask for the epsilon of (what is now) float64."""
    x = np.asarray(x, dtype=np.float64)
    eps = float(np.finfo(x.dtype).eps) if eps is None else eps
    return jacobians.rms_norm_jacobian(x, weight, eps)


def _rms_jacobian_centered(x, weight=None, eps=None):
    eps = np.finfo(np.asarray(x).dtype).eps if eps is None else eps
    return jacobians.layer_norm_jacobian(x, weight, eps)


def _bn_jacobian_uncoupled(x, weight=None, eps=1e-5):
    """The evaluation-mode answer: no coupling between samples."""
    x = np.asarray(x, dtype=np.float64)
    return (1.0 if weight is None else float(weight)) * np.eye(x.size) / np.sqrt(x.var() + eps)


def _bn_jacobian_unbiased(x, weight=None, eps=1e-5):
    x = np.asarray(x, dtype=np.float64)
    m = x.size
    s = np.sqrt(x.var(ddof=1) + eps)
    x_hat = (x - x.mean()) / s
    return (1.0 if weight is None else float(weight)) * (np.eye(m) - 1.0 / m - np.outer(x_hat, x_hat) / m) / s


def _spectral_norm_frobenius(J):
    return float(np.linalg.norm(np.asarray(J, dtype=np.float64)))


def _spectral_norm_largest_eigenvalue(J):
    return float(np.abs(np.linalg.eigvals(np.asarray(J, dtype=np.float64))).max())


def _eigen_without_xhat_direction(x, eps=1e-5):
    x = np.asarray(x, dtype=np.float64)
    return np.sort(np.concatenate([[0.0], np.full(x.size - 1, 1 / np.sqrt(x.var() + eps))]))


def _eigen_descending(x, eps=1e-5):
    return jacobians.layer_norm_jacobian_eigen(x, eps)[::-1].copy()


def _trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def _gradient_norm_weights_only(model, loss_fn, batch):
    weights = [p for name, p in model.named_parameters() if name.endswith("weight") and p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model(batch[0]), batch[1]), weights, allow_unused=True)
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))


def _gradient_norm_squared(model, loss_fn, batch):
    grads = torch.autograd.grad(loss_fn(model(batch[0]), batch[1]), _trainable(model), allow_unused=True)
    return float(sum((g.double() ** 2).sum() for g in grads if g is not None))


def _gradient_norm_accumulating(model, loss_fn, batch):
    """backward() and a restored state_dict: right on the first call, but .grad is left filled (the
    issue-11 bug that made correct loss_along_gradient and effective_beta_smoothness fail)."""
    x, y = batch
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    loss_fn(model(x), y).backward()
    model.load_state_dict(snapshot)
    return float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in _trainable(model) if p.grad is not None)))


def _gradient_norm_forgets_running_stats(model, loss_fn, batch):
    """autograd.grad, but a training-mode forward pass moves BatchNorm's running statistics."""
    grads = torch.autograd.grad(loss_fn(model(batch[0]), batch[1]), _trainable(model), allow_unused=True)
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))


def _ics_previous_layer_only(model, loss_fn, batch, lr):
    """Only layer i-1 steps before G_i' is taken (Definition 2.1 steps all of layers 1..i-1)."""
    groups = [ps for _, ps in layer_groups(model)]
    x, y = batch
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grads = [torch.autograd.grad(loss_fn(model(x), y), ps, allow_unused=True) for ps in groups]
    l2, cosine = [], []
    for i, ps in enumerate(groups):
        saved = [p.detach().clone() for p in groups[i - 1]] if i else []
        with torch.no_grad():
            for p, g in zip(groups[i - 1] if i else [], grads[i - 1] if i else []):
                p.sub_(lr * g)
        shifted = torch.autograd.grad(loss_fn(model(x), y), ps, allow_unused=True)
        with torch.no_grad():
            for p, s in zip(groups[i - 1] if i else [], saved):
                p.copy_(s)
        g0 = torch.cat([g.reshape(-1).double() for g in grads[i]])
        g1 = torch.cat([g.reshape(-1).double() for g in shifted])
        l2.append(float((g0 - g1).norm()))
        cosine.append(float(g0 @ g1 / (g0.norm() * g1.norm())))
    model.load_state_dict(snapshot)
    return np.array(l2), np.array(cosine)


def _ics_switches_to_train_mode(model, loss_fn, batch, lr):
    """Right numbers in training mode, but it calls model.train(), so an evaluation-mode model is measured
    (and left) in the wrong mode."""
    from normcourse.lab.measurements import internal_covariate_shift
    model.train()
    result = internal_covariate_shift(model, loss_fn, batch, lr)
    return result["l2"], result["cosine"]


def _probe(model, loss_fn, batch, step_sizes, sign=1.0):
    x, y = batch
    params = _trainable(model)
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start = [p.detach().clone() for p in params]
    grads = torch.autograd.grad(loss_fn(model(x), y), params)
    g0 = torch.cat([g.reshape(-1).double() for g in grads])
    losses, changes = [], []
    for eta in np.asarray(step_sizes, dtype=float).reshape(-1):
        with torch.no_grad():
            for p, p0, g in zip(params, start, grads):
                p.copy_(p0 - sign * float(eta) * g)
        loss = loss_fn(model(x), y)
        g1 = torch.cat([g.reshape(-1).double() for g in torch.autograd.grad(loss, params)])
        losses.append(float(loss.detach()))
        changes.append(float((g0 - g1).norm()))
    model.load_state_dict(snapshot)
    return np.array(losses), np.array(changes), float(g0.norm())


def _losses_uphill(model, loss_fn, batch, step_sizes):
    return _probe(model, loss_fn, batch, step_sizes, sign=-1.0)[0]


def _losses_not_restored(model, loss_fn, batch, step_sizes):
    """The right losses, but the parameters are left at the last probed point."""
    x, y = batch
    params = _trainable(model)
    grads = torch.autograd.grad(loss_fn(model(x), y), params)
    start = [p.detach().clone() for p in params]
    losses = []
    for eta in np.asarray(step_sizes, dtype=float).reshape(-1):
        with torch.no_grad():
            for p, p0, g in zip(params, start, grads):
                p.copy_(p0 - float(eta) * g)
            losses.append(float(loss_fn(model(x), y)))
    return np.array(losses)


def _changes_relative(model, loss_fn, batch, step_sizes):
    _, changes, g_norm = _probe(model, loss_fn, batch, step_sizes)
    return changes / g_norm


def _beta_per_unit_eta(model, loss_fn, batch, step_sizes):
    steps = np.asarray(step_sizes, dtype=float)
    _, changes, _ = _probe(model, loss_fn, batch, steps)
    return float(np.max(changes[steps > 0] / steps[steps > 0]))


def _landscape_experiment(images, labels, seeds, step_sizes, batch_size=64, *, init="kaiming", swap=False,
                          sign=1.0):
    result = {}
    for name, norm in (("none", None), ("batch_norm", "batch_norm")):
        rows = []
        for seed in seeds:
            index = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:batch_size]
            model = mlp(depth=8, width=128, norm="batch_norm" if (norm is None) == swap else None, init=init,
                        seed=seed)
            batch = (images[index], labels[index])
            loss = float(torch.nn.functional.cross_entropy(model(batch[0]), batch[1]).detach())
            losses, changes, g_norm = _probe(model, torch.nn.functional.cross_entropy, batch, step_sizes, sign)
            rows.append((loss, g_norm, losses, changes))
        result[name] = {"loss": np.array([r[0] for r in rows]), "grad_norm": np.array([r[1] for r in rows]),
                        "losses": np.array([r[2] for r in rows]), "grad_changes": np.array([r[3] for r in rows])}
    return result


_landscape_default_init = functools.partial(_landscape_experiment, init="default")
_landscape_default_init.__name__ = "landscape_with_default_init"
_landscape_swapped = functools.partial(_landscape_experiment, swap=True)
_landscape_swapped.__name__ = "landscape_with_networks_swapped"
_landscape_uphill = functools.partial(_landscape_experiment, sign=-1.0)
_landscape_uphill.__name__ = "landscape_uphill"


def _attention_unscaled(q, k):
    logits = np.asarray(q, float) @ np.swapaxes(np.asarray(k, float), -1, -2)
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _attention_naive_exp(q, k):
    with np.errstate(over="ignore", invalid="ignore"):
        z = np.exp(np.asarray(q, float) @ np.swapaxes(np.asarray(k, float), -1, -2) / np.sqrt(np.shape(q)[-1]))
        return z / z.sum(-1, keepdims=True)


def _attention_over_queries(q, k):
    logits = np.asarray(q, float) @ np.swapaxes(np.asarray(k, float), -1, -2) / np.sqrt(np.shape(q)[-1])
    z = np.exp(logits - logits.max(-2, keepdims=True))
    return z / z.sum(-2, keepdims=True)


def _entropy_bits_direct(probs):
    p = np.asarray(probs, dtype=np.float64)
    return -np.sum(p * np.log2(np.where(p > 0, p, 1.0)), axis=-1)


def _entropy_nan_at_zero(probs):
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.sum(p * np.log(p), axis=-1)


def _entropy_epsilon(eps):
    def entropy(probs):
        p = np.asarray(probs, dtype=np.float64)
        return -np.sum(p * np.log(p + eps), axis=-1)
    entropy.__name__ = f"entropy_log_p_plus_{eps:g}"
    return entropy


def _entropy_clipped(low):
    def entropy(probs):
        p = np.asarray(probs, dtype=np.float64)
        return -np.sum(p * np.log(np.clip(p, low, 1.0)), axis=-1)
    entropy.__name__ = f"entropy_clip_{low:g}"
    return entropy


def _residual_swapped(x, sublayer, norm, placement):
    return residual(x, sublayer, norm, {"pre": "post", "post": "pre"}[placement])


def _residual_pre_without_skip(x, sublayer, norm, placement):
    return sublayer(norm(x)) if placement == "pre" else norm(x + sublayer(x))


def _residual_roles_swapped(x, sublayer, norm, placement):
    return residual(x, norm, sublayer, placement)


def _ffn_weights(model):
    return [block.ffn.fc2.weight for block in model.blocks]


def _grad_norms_summed_loss(model, tokens, targets):
    logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             reduction="sum")
    return np.array([g.norm().item() for g in torch.autograd.grad(loss, _ffn_weights(model))])


def _grad_norms_first_ffn_weight(model, tokens, targets):
    weights = [block.ffn.fc1.weight for block in model.blocks]
    logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return np.array([g.norm().item() for g in torch.autograd.grad(loss, weights)])


def _grad_norms_backward(model, tokens, targets):
    """backward() fills every .grad (and a second call adds to them)."""
    logits = model(tokens)
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).backward()
    return np.array([w.grad.norm().item() for w in _ffn_weights(model)])


def _buggy_layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """The notebook's buggy_layer_norm (leading axes, unbiased std, eps outside, no int shape)."""
    threads = torch.get_num_threads()
    namespace = _run_cells(_notebook("ps06_transformers"),
                           lambda m: m.get("grade_id") in ("setup", "setup_torch", "buggy_layer_norm"))
    torch.set_num_threads(threads)
    with np.errstate(divide="ignore", invalid="ignore"):
        return namespace["buggy_layer_norm"](x, normalized_shape, weight, bias, eps)


def _layer_norm_with(ddof=0, eps_outside=False):
    def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
        x = np.asarray(x)
        n = 1 if np.isscalar(normalized_shape) else len(normalized_shape)
        axes = tuple(range(x.ndim - n, x.ndim))
        x64 = x.astype(np.float64)
        centered = x64 - x64.mean(axes, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):  # ddof=1 over one element divides by 0
            var = x64.var(axes, ddof=ddof, keepdims=True)
            y = centered / (np.sqrt(var) + eps if eps_outside else np.sqrt(var + eps))
        y = y * weight if weight is not None else y
        y = y + bias if bias is not None else y
        return y.astype(x.dtype)
    layer_norm.__name__ = f"layer_norm_ddof{ddof}_eps_outside{eps_outside}"
    return layer_norm


def _saturation(scales, seeds, seq_len=16, d=32, *, qk_before_projection=False, weights_fixed=False, bits=False):
    def ln(v):
        centered = v - v.mean(-1, keepdims=True)
        return centered / np.sqrt((centered ** 2).mean(-1, keepdims=True) + 1e-5)

    def entropy(q, k):
        logits = q @ k.T / np.sqrt(d)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p = p / p.sum(-1, keepdims=True)
        log = np.log2 if bits else np.log
        return float(-np.sum(p * log(np.where(p > 0, p, 1.0)), -1).mean())

    out = {s: {v: np.zeros((len(seeds), len(scales))) for v in ("none", "pre_ln", "qk_norm")} for s in ("input", "weight")}
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(seq_len, d))
        w_q, w_k = rng.normal(size=(d, d)) / np.sqrt(d), rng.normal(size=(d, d)) / np.sqrt(d)
        for j, c in enumerate(scales):
            weight_c = 1.0 if weights_fixed else c
            for sweep, (xs, wq, wk) in (("input", (c * x, w_q, w_k)), ("weight", (x, weight_c * w_q, weight_c * w_k))):
                qk = (ln(xs) @ wq, ln(xs) @ wk) if qk_before_projection else (ln(xs @ wq), ln(xs @ wk))
                out[sweep]["none"][i, j] = entropy(xs @ wq, xs @ wk)
                out[sweep]["pre_ln"][i, j] = entropy(ln(xs) @ wq, ln(xs) @ wk)
                out[sweep]["qk_norm"][i, j] = entropy(*qk)
    return out


_saturation_qk_before = functools.partial(_saturation, qk_before_projection=True)
_saturation_qk_before.__name__ = "saturation_qk_norm_before_the_projections"
_saturation_weights_fixed = functools.partial(_saturation, weights_fixed=True)
_saturation_weights_fixed.__name__ = "saturation_weights_never_scaled"
_saturation_bits = functools.partial(_saturation, bits=True)
_saturation_bits.__name__ = "saturation_in_bits"

_RMS_WRONG = [_rms_jacobian_float64_eps, _rms_jacobian_centered]
_GRADIENT_NORM_WRONG = [_gradient_norm_weights_only, _gradient_norm_squared, _gradient_norm_accumulating,
                        _gradient_norm_forgets_running_stats]
_ENTROPY_WRONG = [_entropy_bits_direct, _entropy_nan_at_zero]
_ENTROPY_FUDGES = [_entropy_epsilon(1e-12), _entropy_epsilon(1e-15), _entropy_epsilon(1e-300),
                   _entropy_clipped(1e-12), _entropy_clipped(1e-300)]
_LAYER_NORM_WRONG = [_buggy_layer_norm, _layer_norm_with(ddof=1), _layer_norm_with(eps_outside=True)]

WRONG = {
    ("ps04_jacobians", "layer_norm_jacobian"): [_ln_jacobian_no_xhat_term, _ln_jacobian_gain_on_columns],
    ("ps04_jacobians", "layer_norm_jacobian_hidden"): [_ln_jacobian_no_xhat_term, _ln_jacobian_gain_on_columns],
    ("ps04_jacobians", "rms_norm_jacobian"): _RMS_WRONG,
    ("ps04_jacobians", "rms_norm_jacobian_hidden"): _RMS_WRONG,
    ("ps04_jacobians", "batch_norm_jacobian"): [_bn_jacobian_uncoupled, _bn_jacobian_unbiased],
    ("ps04_jacobians", "batch_norm_jacobian_hidden"): [_bn_jacobian_uncoupled, _bn_jacobian_unbiased],
    ("ps04_jacobians", "spectral_norm"): [_spectral_norm_frobenius, _spectral_norm_largest_eigenvalue],
    ("ps04_jacobians", "layer_norm_jacobian_eigenvalues"): [_eigen_without_xhat_direction, _eigen_descending],
    ("ps04_jacobians", "layer_norm_jacobian_eigenvalues_hidden"): [_eigen_without_xhat_direction,
                                                                   _eigen_descending],
    ("ps05_optimization", "gradient_norm"): _GRADIENT_NORM_WRONG,
    ("ps05_optimization", "gradient_norm_hidden"): _GRADIENT_NORM_WRONG,
    ("ps05_optimization", "internal_covariate_shift"): [_ics_previous_layer_only],
    ("ps05_optimization", "internal_covariate_shift_hidden"): [_ics_previous_layer_only, _ics_switches_to_train_mode],
    ("ps05_optimization", "loss_along_gradient"): [_losses_uphill, _losses_not_restored],
    ("ps05_optimization", "loss_along_gradient_hidden"): [_losses_uphill, _losses_not_restored],
    ("ps05_optimization", "gradient_changes"): [_changes_relative],
    ("ps05_optimization", "gradient_changes_hidden"): [_changes_relative],
    ("ps05_optimization", "effective_beta_smoothness"): [_beta_per_unit_eta],
    ("ps05_optimization", "effective_beta_smoothness_hidden"): [_beta_per_unit_eta],
    ("ps05_optimization", "landscape_experiment"): [_landscape_default_init, _landscape_swapped, _landscape_uphill],
    ("ps06_transformers", "attention_probabilities"): [_attention_unscaled, _attention_naive_exp,
                                                       _attention_over_queries],
    ("ps06_transformers", "attention_probabilities_hidden"): [_attention_unscaled, _attention_naive_exp,
                                                              _attention_over_queries],
    ("ps06_transformers", "attention_entropy"): _ENTROPY_WRONG + [_entropy_epsilon(1e-12)],
    ("ps06_transformers", "attention_entropy_hidden"): _ENTROPY_WRONG + _ENTROPY_FUDGES,
    ("ps06_transformers", "residual_block"): [_residual_swapped, _residual_pre_without_skip, _residual_roles_swapped],
    ("ps06_transformers", "per_layer_grad_norms"): [_grad_norms_summed_loss, _grad_norms_first_ffn_weight,
                                                    _grad_norms_backward],
    ("ps06_transformers", "per_layer_grad_norms_hidden"): [_grad_norms_summed_loss, _grad_norms_first_ffn_weight,
                                                           _grad_norms_backward],
    ("ps06_transformers", "layer_norm_fixed"): _LAYER_NORM_WRONG,
    ("ps06_transformers", "layer_norm_fixed_hidden"): _LAYER_NORM_WRONG,
    ("ps06_transformers", "attention_saturation"): [_saturation_qk_before, _saturation_weights_fixed,
                                                    _saturation_bits],
}
# These wrong implementations (and case reproducibility) are checked in test_all_parts.py, for all sets at once.


# ---------------------------------------------------------------------------------------------------
# Correct implementations written differently from the solutions must pass (tolerances are not tight
# enough to reject honest rounding differences).

def _entropy_masked_log(probs):
    p = np.asarray(probs, dtype=np.float64)
    return -np.sum(p * np.log(p, out=np.zeros_like(p), where=p > 0), axis=-1)


def _entropy_renormalized(probs):
    """Normalizes each row first (scipy.stats.entropy does), which moves values by an ulp."""
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum(axis=-1, keepdims=True)
    return -np.sum(p * np.log(np.where(p > 0, p, 1.0)), axis=-1)


def _entropy_via_log2(probs):
    p = np.asarray(probs, dtype=np.float64)
    return -np.log(2.0) * np.einsum("...s,...s->...", p, np.log2(np.where(p > 0, p, 1.0)))


def _entropy_suppressed_warnings(probs):
    """Computes log(0) but under errstate, so no warning is raised, and zeroes the products."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = p * np.log(p)
    return -np.sum(np.where(p > 0, terms, 0.0), axis=-1)


CORRECT = {
    ("ps06_transformers", "attention_entropy_hidden"): [_entropy_masked_log, _entropy_renormalized, _entropy_via_log2,
                                                        _entropy_suppressed_warnings],
    ("ps04_jacobians", "rms_norm_jacobian_hidden"): [lambda x, weight=None, eps=None: jacobians.rms_norm_jacobian(
        np.asarray(x, dtype=np.float64), weight, float(np.finfo(np.asarray(x).dtype).eps) if eps is None else eps)],
}


@pytest.mark.parametrize("key, correct", [(k, f) for k, fs in CORRECT.items() for f in fs],
                         ids=[f"{k[1]}:{getattr(f, '__name__', 'fn')}" for k, fs in CORRECT.items() for f in fs])
def test_correct_variants_pass(key, correct):
    assert get_part(*key).check(correct) > 0


@pytest.mark.parametrize("fudge", _ENTROPY_FUDGES, ids=[f.__name__ for f in _ENTROPY_FUDGES])
def test_entropy_fudges_fail_on_the_rows_of_tiny_probabilities(fudge):
    """Each epsilon fudge fails on a case built for it (rows of tiny probabilities), whatever else it fails."""
    part = get_part("ps06_transformers", "attention_entropy_hidden")
    tiny = [c for c in part.make_cases() if "probabilities of about" in c.label or "smallest float64" in c.label]
    failures = []
    for case in tiny:
        try:
            part.judge(part.call(fudge, case), case)
        except GradingError as exc:
            failures.append(str(exc))
    assert failures, f"{fudge.__name__} passes every row of tiny probabilities"


# ---------------------------------------------------------------------------------------------------
# Results must not depend on the number of torch threads: the out-of-kernel re-check runs in
# another process, possibly with another thread count than the learner's kernel.

TORCH_PARTS = [p for ps in TORCH_SETS for p in parts_of(ps) if p.reference is not None]


@pytest.mark.parametrize("part", TORCH_PARTS, ids=_ids(TORCH_PARTS))
def test_results_do_not_depend_on_the_thread_count(part):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = [part.expected(case) for case in part.make_cases()]
        torch.set_num_threads(2)
        for case, expected in zip(part.make_cases(), single):
            part.judge(expected, case)  # the one-thread result must pass against the two-thread reference
    finally:
        torch.set_num_threads(before)


def test_attention_oracle_matches_the_formula():
    """The ps06 attention reference (torch.softmax in float64) against a numpy transcription."""
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4))
    logits = q @ k.transpose(0, 2, 1) / 2.0
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    from normcourse.problems.ps06_transformers import attention_probabilities_reference
    np.testing.assert_allclose(attention_probabilities_reference(q, k), expected, rtol=1e-14, atol=1e-15)


def test_case_arguments_need_no_course_module_but_the_provided_ones():
    """The re-check process that calls learner code has only numpy, torch and the provided modules: every
    object in a case (a model, a loss, a sublayer) must come from those."""
    import pickle

    from normcourse.grading.parts import provided_modules

    for part in ALL_PARTS:
        allowed = ("numpy", "torch", "builtins", "functools", "collections", "copyreg", "_codecs")
        allowed += provided_modules(part.problem_set)
        for case in part.make_cases():
            modules = set()

            class Recorder(pickle.Pickler):
                def reducer_override(self, obj):
                    module = getattr(obj, "__module__", None) if isinstance(obj, type) or callable(obj) else None
                    if module:
                        modules.add(module)
                    modules.add(type(obj).__module__)
                    return NotImplemented

            import io
            Recorder(io.BytesIO()).dump((case.args, case.kwargs))
            bad = {m for m in modules if not m.startswith(allowed)}
            assert not bad, f"{part.grade_id}, case {case.label!r}: its arguments need {sorted(bad)}"


# ---------------------------------------------------------------------------------------------------
# Notebooks: metadata agrees with the Parts, solutions pass, visible tests bite, the release is clean.

HIDDEN_CALL = re.compile(r"""check_part\(["'](?P<ps>\w+)["'], ["'](?P<gid>\w+)["'], (?P<fn>\w+)\)""")


def _autograded(nb):
    return [c for c in nb.cells if _meta(c).get("grade") and not _meta(c).get("solution") and c.cell_type == "code"]


@pytest.mark.parametrize("problem_set", PROBLEM_SETS)
def test_every_autograded_cell_is_backed_by_a_part(problem_set):
    """Visible and hidden cells alike: a Part with the same grade_id, points and function; hidden cells
    (and the experiments' visible cells) call check_part on their own grade_id."""
    parts = {p.grade_id: p for p in parts_of(problem_set)}
    cells = {_meta(c)["grade_id"]: c for c in _autograded(_notebook(problem_set))}
    assert set(cells) == set(parts)
    for grade_id, cell in cells.items():
        meta, part = _meta(cell), parts[grade_id]
        assert meta.get("locked") and float(meta["points"]) == float(part.points), grade_id
        assert f'"{grade_id}"' in cell.source or f"'{grade_id}'" in cell.source, f"{grade_id}: the cell names its part"
        match = HIDDEN_CALL.search(cell.source)
        if "### BEGIN HIDDEN TESTS" in cell.source or part.reference is None:
            assert match and (match["ps"], match["gid"], match["fn"]) == (problem_set, grade_id, part.function)
        else:
            assert re.search(rf"\b{part.function}\(", cell.source), f"{grade_id} never calls {part.function}"


@pytest.mark.parametrize("problem_set", PROBLEM_SETS)
def test_notebook_metadata_follows_the_conventions(problem_set):
    nb = _notebook(problem_set)
    ids = [_meta(c)["grade_id"] for c in nb.cells if _meta(c)]
    assert len(ids) == len(set(ids)), "grade_ids must be unique"
    kinds = {"solution_code": 0, "autograded": 0, "written": 0}
    for cell in nb.cells:
        meta = _meta(cell)
        if cell.cell_type == "markdown":
            assert meta, f"markdown cell {cell.id} has no nbgrader metadata: lock every instruction cell"
        if not meta:
            continue
        assert meta["schema_version"] == 3
        if meta.get("solution"):
            assert not meta.get("locked")
            assert "### BEGIN SOLUTION" in cell.source and "### END SOLUTION" in cell.source
            if cell.cell_type == "code":
                assert not meta.get("grade")
                kinds["solution_code"] += 1
            else:
                assert meta.get("grade") and meta["points"] > 0 and "Rubric" in cell.source
                kinds["written"] += 1
        elif meta.get("grade"):
            assert meta.get("locked") and meta["points"] > 0 and cell.cell_type == "code"
            kinds["autograded"] += 1
        else:
            assert meta.get("locked"), f"cell {cell.id} ({meta['grade_id']}) is neither graded nor locked"
    assert kinds["autograded"] >= 5 and kinds["written"] >= 1 and kinds["solution_code"] >= 5, kinds


TOTAL = re.compile(r"\*\*Points: (\d+) in total\*\*, (\d+) autograded and (\d+) graded by hand")


@pytest.mark.parametrize("problem_set", PROBLEM_SETS)
def test_the_stated_point_totals_add_up(problem_set):
    nb = _notebook(problem_set)
    match = TOTAL.search(nb.cells[0].source)
    assert match, "the first cell states the set's total"
    total, auto, hand = (int(v) for v in match.groups())
    graded = [c for c in nb.cells if _meta(c).get("grade")]
    assert auto == sum(_meta(c)["points"] for c in graded if not _meta(c).get("solution"))
    assert hand == sum(_meta(c)["points"] for c in graded if _meta(c).get("solution"))
    assert total == auto + hand


class _Quiet:
    def write(self, *_):
        pass

    def flush(self):
        pass


def _run_cells(nb, select, namespace=None, quiet=True, tolerate=False):
    """Execute the code cells whose nbgrader metadata satisfies ``select``, in order, in one namespace.
    With ``tolerate``, a cell that raises is skipped, as in a kernel (a release's "your code here" cells)."""
    namespace = {"__name__": "__main__"} if namespace is None else namespace
    for cell in nb.cells:
        if cell.cell_type == "code" and select(_meta(cell)):
            with contextlib.redirect_stdout(_Quiet()) if quiet else contextlib.nullcontext():
                try:
                    exec(compile(cell.source, f"<{_meta(cell).get('grade_id')}>", "exec"), namespace)
                except Exception:
                    if not tolerate:
                        raise
    return namespace


def _is_program(meta):
    """Setup, read-only and solution cells: the learner's program without the tests."""
    return bool(meta) and not meta.get("grade")


@functools.lru_cache(maxsize=None)
def _solution_program(problem_set: str) -> dict:
    """The solution notebook's program, run once per test process (callers copy the namespace)."""
    threads = torch.get_num_threads()
    namespace = _run_cells(_notebook(problem_set), _is_program)
    torch.set_num_threads(threads)  # the notebooks' setup cells pin one thread
    return namespace


@pytest.fixture(params=PROBLEM_SETS)
def solved(request):
    return request.param, _solution_program(request.param)


def test_solution_functions_pass_their_parts(solved):
    problem_set, namespace = solved
    for part in parts_of(problem_set):
        assert part.check(namespace[part.function]) > 0


def _visible_cells(nb):
    return [c for c in _autograded(nb) if "BEGIN HIDDEN TESTS" not in c.source]


def test_visible_tests_pass_on_the_solution(solved):
    problem_set, namespace = solved
    visible = {_meta(c)["grade_id"] for c in _visible_cells(_notebook(problem_set))}
    assert len(visible) >= 5
    _run_cells(_notebook(problem_set), lambda m: m.get("grade_id") in visible, namespace=dict(namespace))


def _same(a, b) -> bool:
    """Equal inputs: arrays and tensors by value and dtype, modules by state and mode, partials by parts."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b))
    if isinstance(a, torch.nn.Module):
        sa, sb = a.state_dict(), b.state_dict() if isinstance(b, torch.nn.Module) else None
        return (type(a) is type(b) and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
                and [m.training for m in a.modules()] == [m.training for m in b.modules()])
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, functools.partial):
        return (isinstance(b, functools.partial) and a.func is b.func and _same(a.args, b.args)
                and _same(a.keywords, b.keywords))
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("part", [p for p in VISIBLE_PARTS if p.reference is not None],
                         ids=_ids([p for p in VISIBLE_PARTS if p.reference is not None]))
def test_visible_parts_replay_the_visible_cells(part):
    """A visible cell's Part re-checks exactly the calls the cell makes, in the same order: record them."""
    namespace = _solution_program(part.problem_set)
    calls = []
    function = namespace[part.function]

    def recorder(*args, **kwargs):  # calls that raise (an unknown placement must) are not re-checked
        inputs = copy.deepcopy((args, kwargs))
        result = function(*args, **kwargs)
        calls.append(inputs)
        return result

    _run_cells(_notebook(part.problem_set), lambda m: m.get("grade_id") == part.grade_id,
               namespace={**namespace, part.function: recorder})
    expected = [(case.args, case.kwargs) for case in part.make_cases() for _ in range(case.repeat)]
    assert len(calls) == len(expected), f"the cell makes {len(calls)} calls, the Part {len(expected)}"
    for i, (call, case) in enumerate(zip(calls, expected)):
        assert _same(call[0], case[0]) and _same(call[1], case[1]), f"call {i + 1} differs from the Part's case"


@pytest.mark.parametrize("problem_set", PROBLEM_SETS)
def test_visible_tests_fail_on_the_release(problem_set):
    release = _notebook(problem_set, "exercises")
    namespace = _run_cells(release, _is_program, tolerate=True)
    visible_ids = {_meta(c)["grade_id"] for c in _visible_cells(_notebook(problem_set))}
    visible = [c for c in release.cells if _meta(c).get("grade_id") in visible_ids]
    assert len(visible) >= 5
    for cell in visible:
        with pytest.raises((NotImplementedError, GradingError), match="not implemented|^$"):
            exec(compile(cell.source, _meta(cell)["grade_id"], "exec"), copy.copy(namespace))


LEAKS = ["### BEGIN SOLUTION", "### END SOLUTION", "BEGIN HIDDEN TESTS", "Rubric", "Model answer"]


@pytest.mark.parametrize("problem_set", PROBLEM_SETS)
def test_release_leaks_nothing_and_keeps_the_structure(problem_set):
    source, release = _notebook(problem_set), _notebook(problem_set, "exercises")
    text = "\n".join(cell.source for cell in release.cells)
    for leak in LEAKS:
        assert leak not in text, f"the release of {problem_set} contains {leak!r}"
    hidden = [c for c in release.cells if "check_part" in c.source]
    assert all(_meta(c).get("grade_id") in {p.grade_id for p in parts_of(problem_set) if p.reference is None}
               for c in hidden), "only the experiments' visible tests call check_part in the release"
    graded_source = {_meta(c)["grade_id"]: _meta(c).get("points") for c in source.cells if _meta(c)}
    graded_release = {_meta(c)["grade_id"]: _meta(c).get("points") for c in release.cells if _meta(c)}
    assert graded_source == graded_release, "the release is stale: run normcourse release"
    for cell in release.cells:
        meta = _meta(cell)
        if meta.get("solution") and cell.cell_type == "code" and "def " in cell.source:
            assert "raise NotImplementedError()" in cell.source and '"""' in cell.source, \
                "the stub keeps the signature and docstring"
        if meta.get("solution") and cell.cell_type == "markdown":
            assert "YOUR ANSWER HERE" in cell.source


# ---------------------------------------------------------------------------------------------------
# ps06's "no warnings" rule: the setup cell makes RuntimeWarnings raised by notebook code errors, so a
# function that warns fails in the learner's kernel and in the out-of-kernel re-check alike.

_WARNING_ENTROPY = '''
def attention_entropy(probs):
    """Right values, but log(0) and 0 * -inf warn on the way."""
    p = np.asarray(probs, dtype=np.float64)
    return -np.nansum(p * np.log(p), axis=-1)
'''


def _with_entropy(source):
    nb = copy.deepcopy(_notebook("ps06_transformers"))
    next(c for c in nb.cells if _meta(c).get("grade_id") == "attention_entropy_code").source = source
    return nb


def test_a_warning_fails_the_entropy_cells_in_the_kernel():
    nb = _with_entropy(_WARNING_ENTROPY)
    namespace = _run_cells(nb, lambda m: m.get("grade_id") in ("setup", "attention_entropy_code"))
    for grade_id in ("attention_entropy", "attention_entropy_hidden"):
        cell = next(c for c in nb.cells if _meta(c).get("grade_id") == grade_id)
        with pytest.raises((RuntimeWarning, GradingError), match="divide by zero|invalid value"):
            exec(compile(cell.source, grade_id, "exec"), dict(namespace))
    # without the rule, the same function passes: the rule, not the values, fails it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lenient = _run_cells(nb, lambda m: m.get("grade_id") == "attention_entropy_code",
                             namespace={"__name__": "__main__", "np": np})
        assert get_part("ps06_transformers", "attention_entropy_hidden").check(lenient["attention_entropy"]) > 0


@pytest.mark.slow
def test_a_warning_fails_the_entropy_parts_in_the_recheck():
    from normcourse.grading.sandbox import recheck_notebook

    ids = ["attention_entropy", "attention_entropy_hidden", "attention_saturation"]
    bad = recheck_notebook(_with_entropy(_WARNING_ENTROPY), "ps06_transformers", grade_ids=ids)
    assert not bad.parts["attention_entropy"].passed and not bad.parts["attention_entropy_hidden"].passed
    assert "RuntimeWarning" in bad.parts["attention_entropy_hidden"].message
    assert bad.parts["attention_saturation"].passed, bad.parts["attention_saturation"].message
    good = recheck_notebook(_notebook("ps06_transformers"), "ps06_transformers", grade_ids=ids)
    assert all(p.passed for p in good.parts.values()), {k: v.message for k, v in good.parts.items()}
