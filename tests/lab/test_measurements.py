"""Tests of normcourse.lab.measurements against closed forms computed by hand.

Closed forms are evaluated in float64 with numpy; models are float64 so tolerances can be tight
(1e-10 relative: a handful of float64 roundings through two matrix products).
"""

import numpy as np
import pytest
import torch
from torch import nn

from normcourse.lab.models import mlp
from normcourse.lab.measurements import internal_covariate_shift, landscape_probe

RTOL = 1e-10


def half_squared_error(out, y):
    return 0.5 * ((out - y) ** 2).sum() / out.shape[0]


def snapshot(model):
    generators = [m.generator.get_state() for m in model.modules() if hasattr(m, "generator")]
    return ({k: v.detach().clone() for k, v in model.state_dict().items()}, generators,
            [m.training for m in model.modules()], [p.grad for p in model.parameters()])


def assert_same(model, before):
    state, generators, modes, grads = before
    after = model.state_dict()
    assert state.keys() == after.keys()
    for key in state:  # bit-exact, buffers (running stats, num_batches_tracked) included
        assert torch.equal(state[key], after[key]), key
    now = [m.generator.get_state() for m in model.modules() if hasattr(m, "generator")]
    assert all(torch.equal(a, b) for a, b in zip(generators, now))
    assert modes == [m.training for m in model.modules()]
    assert all(g is None for g in grads) and all(p.grad is None for p in model.parameters())


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)


# ---------------------------------------------------------------- internal covariate shift
def test_ics_of_a_single_layer_model_is_exactly_zero(batch):
    net = nn.Linear(64, 10)
    ics = internal_covariate_shift(net, nn.functional.cross_entropy, batch, lr=0.5)
    assert ics["l2"].tolist() == [0.0]
    assert ics["cosine"][0] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("norm, noisy", [(None, False), ("batch_norm", False), ("batch_norm", True)])
def test_ics_first_layer_zero_others_positive_and_model_restored(batch, norm, noisy):
    net = mlp(depth=3, width=32, norm=norm, noisy=noisy)
    before = snapshot(net)
    ics = internal_covariate_shift(net, nn.functional.cross_entropy, batch, lr=0.1)
    assert_same(net, before)
    # layer 1 exactly 0 even with noise: every pass replays the same noise draws
    assert ics["l2"][0] == 0.0 and len(ics["l2"]) == 4
    assert (ics["l2"][1:] > 0).all() and (np.abs(ics["cosine"]) <= 1 + 1e-12).all()
    again = internal_covariate_shift(net, nn.functional.cross_entropy, batch, lr=0.1)
    assert np.array_equal(ics["l2"], again["l2"]), "deterministic"


def test_ics_matches_hand_computation_on_two_layer_linear_net():
    rng = np.random.default_rng(1)
    n, d, h, k, lr = 16, 5, 4, 3, 0.3
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n, k))
    w1, w2 = rng.normal(size=(h, d)), rng.normal(size=(k, h))
    net = nn.Sequential(nn.Linear(d, h, bias=False), nn.Linear(h, k, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(w1))
        net[1].weight.copy_(torch.from_numpy(w2))
    # loss = ||X W1^T W2^T - Y||^2 / (2n); residual R = (X W1^T W2^T - Y) / n
    def grads(w1, w2):
        hidden = x @ w1.T
        r = (hidden @ w2.T - y) / n
        return w2.T @ r.T @ x, r.T @ hidden   # dL/dW1, dL/dW2
    g1, g2 = grads(w1, w2)
    _, g2_shifted = grads(w1 - lr * g1, w2)   # layer 1 has stepped; layer 2 has not
    expected_l2 = np.linalg.norm(g2 - g2_shifted)
    expected_cos = np.sum(g2 * g2_shifted) / (np.linalg.norm(g2) * np.linalg.norm(g2_shifted))
    ics = internal_covariate_shift(net, half_squared_error,
                                   (torch.from_numpy(x), torch.from_numpy(y)), lr=lr)
    assert ics["l2"][0] == 0.0
    assert ics["l2"][1] == pytest.approx(expected_l2, rel=RTOL)
    assert ics["cosine"][1] == pytest.approx(expected_cos, rel=RTOL)
    assert ics["grad_norm"] == pytest.approx([np.linalg.norm(g1), np.linalg.norm(g2)], rel=RTOL)
    assert expected_l2 > 1e-3, "the test would be vacuous if layer 1's step did not matter"


def test_ics_steps_all_earlier_layers_not_only_the_previous_one():
    # three scalar layers y = c b a x: G'_3 depends on the steps of both a and b
    net = nn.Sequential(*[nn.Linear(1, 1, bias=False) for _ in range(3)]).double()
    a, b, c, lr = 0.9, -1.3, 0.7, 0.2
    for layer, w in zip(net, (a, b, c)):
        nn.init.constant_(layer.weight, w)
    x, y = 1.5, 0.4
    r = c * b * a * x - y  # loss r^2 / 2 (batch of one)
    ga, gb = r * c * b * x, r * c * a * x
    a2, b2 = a - lr * ga, b - lr * gb
    gc, gc_shifted = r * b * a * x, (c * b2 * a2 * x - y) * b2 * a2 * x
    ics = internal_covariate_shift(net, half_squared_error,
                                   (torch.tensor([[x]], dtype=torch.float64),
                                    torch.tensor([[y]], dtype=torch.float64)), lr=lr)
    assert ics["l2"][2] == pytest.approx(abs(gc - gc_shifted), rel=RTOL)


# ---------------------------------------------------------------- landscape probe
class Quadratic(nn.Module):
    """L(theta) = theta^T A theta / 2, with A passed as the 'target' of the batch."""

    def __init__(self, theta):
        super().__init__()
        self.theta = nn.Parameter(torch.as_tensor(theta, dtype=torch.float64).clone())

    def forward(self, x):
        return self.theta


def quadratic_loss(theta, a):
    return 0.5 * theta @ a @ theta


def test_probe_on_quadratic_along_top_eigenvector_gives_lambda_max():
    eigenvalues = np.array([4.0, 1.5, 0.25])
    a = torch.diag(torch.tensor(eigenvalues))
    model = Quadratic([2.0, 0.0, 0.0])  # gradient = A theta lies along the top eigenvector
    probe = landscape_probe(model, quadratic_loss, (None, a), [0.05, 0.1, 0.2])
    assert probe["beta_smoothness"] == pytest.approx(4.0, rel=RTOL)
    # grad change = eta * ||A g|| = eta * 4 * 8 ; predictiveness is the largest step's
    assert probe["grad_changes"] == pytest.approx([0.05 * 32, 0.1 * 32, 0.2 * 32], rel=RTOL)
    assert probe["gradient_predictiveness"] == pytest.approx(0.2 * 32, rel=RTOL)
    # theta - eta * 4 * theta = (1 - 4 eta) theta, loss 0.5 * 4 * 4 * (1 - 4 eta)^2
    losses = [8 * (1 - 4 * eta) ** 2 for eta in (0.05, 0.1, 0.2)]
    assert probe["losses"] == pytest.approx(losses, rel=RTOL)
    assert probe["loss_range"] == pytest.approx(max(losses) - min(losses), rel=RTOL)
    assert probe["loss"] == pytest.approx(8.0) and probe["grad_norm"] == pytest.approx(8.0)
    assert model.theta.tolist() == [2.0, 0.0, 0.0]


def test_probe_on_general_quadratic_matches_closed_form_and_lambda_max_bounds_it():
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a = q @ np.diag([5.0, 3.0, 2.0, 1.0, 0.5, 0.1]) @ q.T
    theta = rng.normal(size=6)
    probe = landscape_probe(Quadratic(theta), quadratic_loss, (None, torch.from_numpy(a)), [0.0, 0.1, 0.3])
    g = a @ theta
    assert probe["beta_smoothness"] == pytest.approx(np.linalg.norm(a @ g) / np.linalg.norm(g), rel=RTOL)
    assert probe["beta_smoothness"] <= 5.0
    assert probe["grad_changes"][0] == 0.0  # step 0: same point, and the ratio is skipped


def test_probe_restores_bn_model_bit_exactly_in_train_and_eval(batch):
    for train_mode in (True, False):
        net = mlp(depth=3, width=32, norm="batch_norm", noisy=True)
        net.train(train_mode)
        before = snapshot(net)
        first = landscape_probe(net, nn.functional.cross_entropy, batch, [0.1, 0.5, 1.0])
        assert_same(net, before)
        second = landscape_probe(net, nn.functional.cross_entropy, batch, [0.1, 0.5, 1.0])
        assert np.array_equal(first["losses"], second["losses"])
        assert first["loss_range"] > 0 and first["beta_smoothness"] > 0


# ---------------------------------------------------------------- replicas: one measurement per seed
def _replicated_and_separate(noisy):
    from normcourse.lab.replicas import replicate
    models = [mlp(depth=3, width=16, norm="batch_norm", noisy=noisy, seed=s).double() for s in (0, 4)]
    return replicate(models), models


@pytest.mark.parametrize("noisy", [False, True])
def test_replicated_ics_is_each_replicas_own(batch, noisy):
    from normcourse.lab.replicas import replica_cross_entropy
    replicated, models = _replicated_and_separate(noisy)
    x, y = batch[0].double(), batch[1]
    before = snapshot(replicated)
    together = internal_covariate_shift(replicated, replica_cross_entropy, (x, y), lr=0.1)
    assert_same(replicated, before)
    assert together["l2"].shape == (2, 4) and together["cosine"].shape == (2, 4)
    for i, model in enumerate(models):
        alone = internal_covariate_shift(model, nn.functional.cross_entropy, (x, y), lr=0.1)
        for key in ("l2", "cosine", "grad_norm"):
            np.testing.assert_allclose(together[key][i], alone[key], rtol=RTOL, atol=1e-14)
    assert not np.allclose(together["l2"][0], together["l2"][1]), "the replicas differ"


def test_replicated_landscape_probe_is_each_replicas_own(batch):
    from normcourse.lab.replicas import replica_cross_entropy
    replicated, models = _replicated_and_separate(noisy=True)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(2, 32, 64, generator=g, dtype=torch.float64), torch.randint(0, 10, (2, 32), generator=g)
    before = snapshot(replicated)
    together = landscape_probe(replicated, replica_cross_entropy, (x, y), [0.0, 0.1, 0.4])
    assert_same(replicated, before)
    assert together["losses"].shape == (2, 3) and together["loss_range"].shape == (2,)
    for i, model in enumerate(models):
        alone = landscape_probe(model, nn.functional.cross_entropy, (x[i], y[i]), [0.0, 0.1, 0.4])
        for key in ("losses", "grad_changes", "loss", "grad_norm", "loss_range", "gradient_predictiveness",
                    "beta_smoothness"):
            np.testing.assert_allclose(together[key][i], alone[key], rtol=RTOL, atol=1e-14, err_msg=key)


def test_loss_must_be_a_scalar_or_a_vector(batch):
    net = mlp(depth=1, width=8)
    with pytest.raises(ValueError, match="one loss per replica"):
        landscape_probe(net, lambda out, y: out, batch, [0.1])
