"""Wrong implementations of problem set 5's functions: the mistakes the set warns about (weights only, the
squared norm, ``.grad`` left filled, BatchNorm's running statistics moved, only the previous layer
stepped, the mode switched, a step uphill, parameters not restored, a relative change, the experiment
with PyTorch's default initialization or the networks swapped). Keyed by the learner's names (see
``wrong/__init__.py``)."""

import functools

import numpy as np
import torch

from normcourse.lab.models import layer_groups, mlp


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


WRONG = {
    "gradient_norm": [_gradient_norm_weights_only, _gradient_norm_squared, _gradient_norm_accumulating,
                      _gradient_norm_forgets_running_stats],
    "internal_covariate_shift": [_ics_previous_layer_only, _ics_switches_to_train_mode],
    "loss_along_gradient": [_losses_uphill, _losses_not_restored],
    "gradient_changes": [_changes_relative],
    "effective_beta_smoothness": [_beta_per_unit_eta],
    "landscape_at_init": [_landscape_default_init, _landscape_swapped, _landscape_uphill],
}
