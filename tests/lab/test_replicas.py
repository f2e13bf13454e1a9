"""Tests of normcourse.lab.replicas: S seeds trained as one batched model are S separate runs.

The equality tests run in float64, where the batched and the separate computation differ only by
the order of a few floating-point additions: 1e-10 relative after 25 SGD steps is far below any
real difference (a wrong minibatch, a shared statistic or a missed momentum term changes the loss in
the second or third digit) and far above float64 rounding (about 1e-16 per operation).
"""

import numpy as np
import pytest
import torch
from torch import nn

from normcourse.lab.experiments import with_ghost_batch_norm
from normcourse.lab.models import accuracy, layer_groups, load_digits_tensors, mlp, small_cnn, train
from normcourse.lab.replicas import (ReplicaBatchNorm1d, ReplicaLinear, Replicas, replica_accuracy,
                                     replica_cross_entropy, replica_rows, replicate, train_replicas)

TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def digits64():
    data = load_digits_tensors()
    return data._replace(x_train=data.x_train.double(), x_test=data.x_test.double())


def assert_replica_equals(replicated, models):
    s = len(models)
    for j, (p, *qs) in enumerate(zip(replicated.parameters(), *[m.parameters() for m in models])):
        for i, q in enumerate(qs):
            np.testing.assert_allclose(replica_rows(p, s)[i].detach().numpy(), q.detach().reshape(-1).numpy(),
                                       err_msg=f"parameter {j}, replica {i}", **TOL)


BUILDERS = {
    "plain MLP": lambda s: mlp(depth=3, width=16, init="kaiming", seed=s),
    "BatchNorm MLP": lambda s: mlp(depth=3, width=16, norm="batch_norm", seed=s),
    "noisy BatchNorm MLP": lambda s: mlp(depth=3, width=16, norm="batch_norm", noisy=True, seed=s),
    "noisy plain MLP": lambda s: mlp(depth=2, width=16, noisy=True, init="kaiming", seed=s),
    "LayerNorm MLP": lambda s: mlp(depth=2, width=16, norm="layer_norm", seed=s),
    "GroupNorm CNN": lambda s: small_cnn("group_norm", groups=4, seed=s),
    "ghost BatchNorm CNN": lambda s: with_ghost_batch_norm(small_cnn("batch_norm", seed=s), 2),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_replicated_training_equals_separate_runs(name, digits64):
    build, seeds = BUILDERS[name], [3, 0, 7]
    momentum = 0.9 if "CNN" in name else 0.0
    batch = 32 if "CNN" in name else 64
    models = [build(s).double() for s in seeds]
    replicated = replicate(models)           # copies: the models below train on their own
    history = train_replicas(replicated, digits64, steps=25, lr=0.05, seeds=seeds, batch_size=batch,
                             momentum=momentum)
    for i, (model, seed) in enumerate(zip(models, seeds)):
        alone = train(model, digits64, steps=25, lr=0.05, batch_size=batch, momentum=momentum, seed=seed)
        np.testing.assert_allclose(history.loss[:, i], alone.loss, **TOL)
        np.testing.assert_array_equal(history.accuracy[:, i], alone.accuracy)
    assert_replica_equals(replicated, models)
    # evaluation mode (running statistics, noise off) agrees too
    separate = [accuracy(m, digits64.x_test, digits64.y_test) for m in models]
    np.testing.assert_array_equal(replica_accuracy(replicated, digits64.x_test, digits64.y_test), separate)
    buffers = [b for b in replicated.buffers() if b.dim() > 0]
    for b, *bs in zip(buffers, *[[c for c in m.buffers() if c.dim() > 0] for m in models]):
        np.testing.assert_allclose(replica_rows(b, 3).numpy(), torch.stack([c.reshape(-1) for c in bs]).numpy(),
                                   **TOL)


def test_per_replica_learning_rates_and_a_diverging_replica_does_not_disturb_the_others(digits64):
    rates, seeds = [0.05, float("inf"), 0.2], [0, 0, 0]   # the middle one turns nan at once
    replicated = replicate([mlp(depth=2, width=16, seed=0).double() for _ in rates])
    with np.errstate(invalid="ignore", over="ignore"):
        history = train_replicas(replicated, digits64, steps=10, lr=rates, seeds=seeds)
    assert not np.isfinite(history.loss[-1, 1])
    for i in (0, 2):
        alone = train(mlp(depth=2, width=16, seed=0).double(), digits64, steps=10, lr=rates[i], seed=0)
        np.testing.assert_allclose(history.loss[:, i], alone.loss, **TOL)


def test_replicas_are_independent_of_each_other():
    models = [mlp(depth=2, width=8, norm="batch_norm", seed=s) for s in range(3)]
    replicated = replicate(models)
    x = torch.randn(3, 16, 64)
    base = replicated(x)
    x2 = x.clone()
    x2[1] += 5.0                              # change replica 1's batch only
    moved = replicated(x2)
    assert torch.equal(base[0], moved[0]) and torch.equal(base[2], moved[2])
    assert not torch.allclose(base[1], moved[1])
    # a shared batch of shape (N, F) is expanded to every replica
    shared = torch.randn(16, 64)
    torch.testing.assert_close(replicated(shared), replicated(shared.expand(3, 16, 64)))
    with pytest.raises(ValueError, match="replicas"):
        replicated(torch.randn(2, 16, 64))


def test_structure_layer_groups_and_models_left_untouched():
    models = [mlp(depth=2, width=8, norm="batch_norm", noisy=True, seed=s) for s in range(2)]
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    states = [[n.generator.get_state() for n in m if hasattr(n, "generator")] for m in models]
    replicated = replicate(models)
    assert isinstance(replicated, Replicas) and replicated.replicas == 2
    assert [type(m).__name__ for m in replicated] == ["ReplicaLinear", "ReplicaBatchNorm1d", "ReplicaNoise",
                                                     "ReLU"] * 2 + ["ReplicaLinear"]
    assert isinstance(replicated[0], ReplicaLinear) and isinstance(replicated[1], ReplicaBatchNorm1d)
    # layer i = linear weight and bias + BatchNorm gain and bias, as for one model
    assert [len(ps) for _, ps in layer_groups(replicated)] == [len(ps) for _, ps in layer_groups(models[0])]
    train_replicas(replicated, load_digits_tensors(), steps=3, lr=0.1, seeds=[0, 1])
    for m, state, gens in zip(models, before, states):
        assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())
        assert all(torch.equal(g, n.generator.get_state()) for g, n in zip(gens, [n for n in m if hasattr(n, "generator")]))


def test_replicate_refuses_what_it_cannot_stack():
    with pytest.raises(TypeError, match="same architecture"):
        replicate([mlp(depth=2, norm="batch_norm"), mlp(depth=2, norm="layer_norm")])
    with pytest.raises(TypeError, match="same length"):
        replicate([mlp(depth=2), mlp(depth=3)])
    with pytest.raises(TypeError, match="Sequential"):
        replicate([nn.Linear(3, 3)])
    with pytest.raises(ValueError):
        replicate([])
    with pytest.raises(ValueError, match="one seed per replica"):
        train_replicas(replicate([mlp(depth=1), mlp(depth=1)]), load_digits_tensors(), steps=1, lr=0.1, seeds=[0])


def test_replica_cross_entropy_is_one_mean_loss_per_replica():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(3, 5, 10, generator=g), torch.randint(0, 10, (3, 5), generator=g)
    losses = replica_cross_entropy(logits, y)
    expected = torch.stack([nn.functional.cross_entropy(logits[i], y[i]) for i in range(3)])
    torch.testing.assert_close(losses, expected)
    shared = replica_cross_entropy(logits, y[0])
    torch.testing.assert_close(shared[2], nn.functional.cross_entropy(logits[2], y[0]))
