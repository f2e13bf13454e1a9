"""The experiment drivers of chapters 1-3: arms over several seeds, recorders, the learning-rate sweep,
and the ghost-batch BatchNorm of chapter 3's sweep, checked against torch, the reference and separate runs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normcourse.reference as ref
from normcourse.lab import experiments
from normcourse.lab.experiments import (Every, GhostBatchNorm2d, batch_size_sweep, batch_statistics_accuracy,
                                        learning_rate_sweep, population_statistics_accuracy, run_arm,
                                        with_ghost_batch_norm)
from normcourse.lab.models import accuracy, load_digits_tensors, mlp, relu_inputs, small_cnn, train
from normcourse.lab.replicas import replicate

# float32 torch against float32 torch / float64 reference: 1e-5 relative is a few ulps of float32
# after a mean, a variance and a division.
TOL = dict(rtol=1e-5, atol=1e-5)


def _x(shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(1.5, 2.0, size=shape).astype(np.float32))


def test_one_group_is_plain_batch_norm_including_running_statistics():
    x = _x((8, 3, 4, 5))
    ghost, plain = GhostBatchNorm2d(3, group_size=8), nn.BatchNorm2d(3)
    for step in range(3):
        xs = x * (step + 1)
        torch.testing.assert_close(ghost(xs), plain(xs), **TOL)
    torch.testing.assert_close(ghost.running_mean, plain.running_mean, **TOL)
    torch.testing.assert_close(ghost.running_var, plain.running_var, **TOL)
    ghost.eval(), plain.eval()
    torch.testing.assert_close(ghost(x), plain(x), **TOL)


def test_each_group_is_normalized_with_its_own_statistics():
    x = _x((12, 4, 3, 3), seed=1)
    ghost = GhostBatchNorm2d(4, group_size=3)
    with torch.no_grad():
        ghost.weight.copy_(torch.tensor([0.5, 1.0, 2.0, -1.0]))
        ghost.bias.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    y = ghost(x)
    for g in range(4):
        group = x[3 * g:3 * (g + 1)]
        expected = F.batch_norm(group, None, None, ghost.weight, ghost.bias, training=True)
        torch.testing.assert_close(y[3 * g:3 * (g + 1)], expected, **TOL)
    # running statistics: average over groups of group mean and unbiased group variance, momentum 0.1
    groups = x.reshape(4, 3, 4, 9).transpose(1, 2).reshape(4, 4, 27)
    torch.testing.assert_close(ghost.running_mean, 0.1 * groups.mean(-1).mean(0), **TOL)
    torch.testing.assert_close(ghost.running_var, 0.9 + 0.1 * groups.var(-1).mean(0), **TOL)


def test_groups_of_one_image_are_instance_norm_in_training_only():
    x = _x((5, 3, 4, 4), seed=2)
    ghost = GhostBatchNorm2d(3, group_size=1)
    y = ghost(x).detach().numpy()
    np.testing.assert_allclose(y, ref.instance_norm(x.numpy().astype(np.float64)), rtol=1e-4, atol=1e-4)
    ghost.eval()
    assert not np.allclose(ghost(x).detach().numpy(), y, atol=1e-2)


def test_refuses_batches_that_do_not_split():
    with pytest.raises(ValueError, match="groups of 3"):
        GhostBatchNorm2d(2, group_size=3)(_x((4, 2, 2, 2)))
    with pytest.raises(ValueError, match="group_size"):
        GhostBatchNorm2d(2, group_size=0)


def test_swap_replaces_every_batch_norm_and_keeps_the_rest():
    model = with_ghost_batch_norm(small_cnn("batch_norm", seed=0), 4)
    ghosts = [m for m in model.modules() if isinstance(m, GhostBatchNorm2d)]
    assert len(ghosts) == 2 and all(g.group_size == 4 for g in ghosts)
    plain = small_cnn("batch_norm", seed=0)
    for (name, p), (_, q) in zip(model.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(p, q, msg=name)


def test_batch_statistics_accuracy_leaves_the_model_untouched():
    data = load_digits_tensors()
    model = with_ghost_batch_norm(small_cnn("batch_norm", seed=0), 4).eval()
    before = [b.clone() for b in model.buffers()]
    acc = batch_statistics_accuracy(model, data.x_test, data.y_test, 2)
    assert 0.0 <= acc <= 1.0
    assert not model.training
    for b, a in zip(before, model.buffers()):
        torch.testing.assert_close(a, b)
    with pytest.raises(TypeError, match="GhostBatchNorm2d"):
        batch_statistics_accuracy(small_cnn("batch_norm"), data.x_test, data.y_test, 2)


def test_sweep_rows_group_norm_independent_of_the_batch_and_deterministic():
    rows = batch_size_sweep(images_per_statistic=(32, 2), seeds=(0, 1), steps=10)
    assert [(r.norm, r.images_per_statistic, r.seed) for r in rows] == [
        ("group_norm", 32, 0), ("group_norm", 32, 1), ("group_norm", 2, 0), ("group_norm", 2, 1),
        ("batch_norm", 32, 0), ("batch_norm", 32, 1), ("batch_norm", 2, 0), ("batch_norm", 2, 1)]
    for r in rows[:4]:
        assert r.test_accuracy == r.test_accuracy_population_stats == r.test_accuracy_batch_stats
    assert rows[0].test_accuracy == rows[2].test_accuracy and rows[1].test_accuracy == rows[3].test_accuracy
    assert batch_size_sweep(images_per_statistic=(32, 2), seeds=(0, 1), steps=10) == rows
    with pytest.raises(ValueError, match="divide"):
        batch_size_sweep(images_per_statistic=(5,), steps=1)


def test_sweep_seed_is_the_separate_run_with_that_seed():
    data = load_digits_tensors()
    (row,) = [r for r in batch_size_sweep(images_per_statistic=(4,), seeds=(2, 5), steps=15, data=data)
              if r.norm == "batch_norm" and r.seed == 5]
    model = with_ghost_batch_norm(small_cnn("batch_norm", seed=5), 4)
    history = train(model, data, steps=15, lr=0.05, batch_size=32, momentum=0.9, seed=5)
    # float32, batched versus separate: the same arithmetic up to summation order (one image of 359
    # may flip); accuracies are multiples of 1/359 and 1/(50*32)
    assert row.train_accuracy == pytest.approx(history.final(50)[1], abs=2 / 1600)
    assert row.test_accuracy == pytest.approx(accuracy(model, data.x_test, data.y_test), abs=1.5 / 359)
    assert row.test_accuracy_batch_stats == pytest.approx(
        batch_statistics_accuracy(model, data.x_test, data.y_test, 4), abs=1.5 / 359)


# ---------------------------------------------------------------- population statistics
def test_population_statistics_are_the_training_sets_and_leave_the_model_untouched():
    data = load_digits_tensors()
    model = small_cnn("batch_norm", seed=0)
    train(model, data, steps=5, lr=0.05, batch_size=32, seed=0)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    acc = population_statistics_accuracy(model, data.x_train, data.x_test, data.y_test)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()) and not model.training
    # the same number by hand: set the first BN's running statistics to the training set's own
    probe = small_cnn("batch_norm", seed=0)
    probe.load_state_dict(model.state_dict())
    with torch.no_grad():
        for i, layer in ((2, probe[2]), (6, probe[6])):
            x = probe[:i](data.x_train)
            layer.running_mean.copy_(x.mean((0, 2, 3)))
            layer.running_var.copy_(x.var((0, 2, 3), unbiased=True))
            if i == 2:   # layer 2 must see layer 1 normalized with the new statistics
                probe.eval()
    assert acc == pytest.approx(accuracy(probe, data.x_test, data.y_test), abs=1.5 / 359)
    assert acc != pytest.approx(accuracy(model, data.x_test, data.y_test), abs=0.5 / 359), \
        "after 5 steps the running averages are far from the population's"
    replicated = replicate([with_ghost_batch_norm(small_cnn("batch_norm", seed=s), 2) for s in (0, 1)])
    assert population_statistics_accuracy(replicated, data.x_train, data.x_test, data.y_test).shape == (2,)


# ---------------------------------------------------------------- arms, recorders, learning rates
def test_every_records_only_its_steps():
    calls = []
    recorder = Every([0, 2], lambda model: calls.append(model) or len(calls))
    for step in range(4):
        recorder(step, f"model at {step}")
    assert recorder.values == {0: 1, 2: 2} and calls == ["model at 0", "model at 2"]


def test_run_arm_trains_each_seed_and_records_with_the_replicas():
    data = load_digits_tensors()
    probe = data.x_train[:32]
    recorders = {"unit": Every([0, 3], experiments.unit_inputs(probe, layer=1, unit=2, replica=1)),
                 "moments": Every([3], experiments.relu_moments(probe)),
                 "shift": Every([3], experiments.shift((probe, data.y_train[:32]), lr=0.1)),
                 "landscape": Every([0], experiments.landscape(data.x_train, data.y_train, [0.1, 0.2], batch_size=16))}
    arm = run_arm(lambda s: mlp(depth=2, width=8, norm="batch_norm", seed=s), [4, 9], data, steps=3, lr=0.1,
                  recorders=recorders)
    assert arm.seeds == (4, 9) and arm.history.loss.shape == (3, 2) and arm.test_accuracy.shape == (2,)
    assert sorted(arm.records["unit"]) == [0, 3] and arm.records["unit"][3].shape == (32,)
    # replica 1 is seed 9: its unit input equals that of the separately trained model
    alone = mlp(depth=2, width=8, norm="batch_norm", seed=9)
    train(alone, data, steps=3, lr=0.1, seed=9)
    torch.testing.assert_close(arm.records["unit"][3], relu_inputs(alone, probe)[1][:, 2], rtol=1e-5, atol=1e-5)
    means, stds = arm.records["moments"][3][0]
    assert means.shape == stds.shape == (2, 8)
    assert arm.records["shift"][3]["l2"].shape == (2, 3)
    assert arm.records["landscape"][0]["losses"].shape == (2, 2)


def test_learning_rate_sweep_is_one_training_per_rate_and_seed():
    data = load_digits_tensors()
    build = lambda s: mlp(depth=2, width=16, norm="batch_norm", seed=s)
    final = learning_rate_sweep(build, [0.05, 0.5], [0, 3], data, steps=12, last=5)
    assert final.shape == (2, 2)
    alone = train(build(3), data, steps=12, lr=0.5, seed=3).final(5)[0]
    # float32: batched and separate differ in summation order only
    assert final[1, 1] == pytest.approx(alone, rel=1e-4)
    assert final[0, 0] != final[0, 1] and final[0, 0] != final[1, 0]


# ---------------------------------------------------------------- summaries over seeds
def test_spread_is_median_min_max_and_ignores_diverged_runs():
    s = experiments.Spread.of([3.0, np.nan, 1.0, 2.0])
    assert (s.median, s.low, s.high) == (2.0, 1.0, 3.0)
    assert f"{s:.1f}" == "2.0 [1.0, 3.0]"
    by_row = experiments.Spread.of(np.array([[1.0, 5.0, 3.0], [np.nan, np.nan, np.nan]]), axis=1)
    np.testing.assert_array_equal(by_row.median, [3.0, np.nan])
    np.testing.assert_array_equal(by_row.high, [5.0, np.nan])
    assert np.isnan(experiments.Spread.of([np.nan, np.nan]).median)


# ---------------------------------------------------------------- chapter 5: gradients through steps
def test_gradient_through_steps_shape_seed_and_the_scale_layer_norm_removes():
    base = experiments.gradient_through_steps(1.0, layer_norm=False, steps=20, width=32, seed=3)
    assert base.shape == (21,) and base[0] == 1.0
    np.testing.assert_array_equal(base, experiments.gradient_through_steps(1.0, False, steps=20, width=32, seed=3))
    assert not np.array_equal(base, experiments.gradient_through_steps(1.0, False, steps=20, width=32, seed=4))
    # without normalization the weight scale g enters every step: larger g, larger gradient far back
    plain = [experiments.gradient_through_steps(g, False, steps=20, width=32, seed=3)[-1] for g in (0.5, 4.0)]
    assert plain[1] > 1e6 * plain[0]
    # with LayerNorm it cancels, up to eps / (g^2 sigma^2): 1e-5 here, so 1e-3 relative is generous
    ln = [experiments.gradient_through_steps(g, True, steps=20, width=32, seed=3)[-1] for g in (0.5, 4.0)]
    assert ln[1] == pytest.approx(ln[0], rel=1e-3)
    # ... and not with a large eps, which stops LayerNorm from dividing out a small scale
    big_eps = [experiments.gradient_through_steps(g, True, steps=20, width=32, seed=3, eps=1.0)[-1] for g in (0.01, 1.0)]
    assert big_eps[0] < 1e-6 * big_eps[1]
    shared = experiments.gradient_through_steps(2.0, True, steps=5, width=8, shared_weights=True)
    stack = experiments.gradient_through_steps(2.0, True, steps=5, width=8, shared_weights=False)
    assert not np.allclose(shared, stack)
