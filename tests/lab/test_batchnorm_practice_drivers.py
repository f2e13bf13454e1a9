"""Chapter 8's drivers (normcourse.lab.batchnorm_practice; the file name differs from the module's because
pytest's default import mode needs unique basenames and tests/reference/test_batchnorm_practice.py exists):
the seed-stacked MLP against separate networks, Batch Renorm against the
reference, freezing and folding, and the experiment drivers on tiny budgets.

Tolerances: the stacked model and a separate ``nn.Sequential`` compute the same float32 arithmetic in a
different order (bmm vs addmm, one BatchNorm over S*C features vs S BatchNorms); after a few dozen SGD
steps the difference is a few float32 ulps amplified by training: 1e-4 absolute (measured 5e-7 after
50 steps). float64 comparisons with the reference use 1e-10 (a few ulps of O(1) values).
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import fusion

import normcourse.reference as ref
from normcourse.lab import batchnorm_practice as bp
from normcourse.lab.experiments import GhostBatchNorm2d
from normcourse.lab.models import load_digits_tensors, mlp, train


@pytest.fixture(scope="module")
def data():
    return load_digits_tensors()


def test_training_the_stack_is_training_each_member(data):
    seeds = (3, 7)
    stack = bp.stacked_mlp(seeds, width=32)
    history = bp.train_stacked(stack, data.x_train, data.y_train, steps=30, lr=0.05, momentum=0.9)
    for i, seed in enumerate(seeds):
        alone = mlp(width=32, depth=2, norm="batch_norm", init="kaiming", seed=seed)
        solo = train(alone, data, steps=30, lr=0.05, batch_size=32, momentum=0.9, seed=seed)
        np.testing.assert_allclose(np.array(history.loss)[:, i], solo.loss, atol=1e-4)
        for (name, a), (_, b) in zip(bp.member(stack, i).state_dict().items(), alone.state_dict().items()):
            torch.testing.assert_close(a.float(), b.float(), atol=1e-4, rtol=1e-4, msg=name)


def test_per_seed_batch_norm_keeps_seeds_apart():
    torch.manual_seed(0)
    x = torch.randn(3, 8, 5) * torch.tensor([1.0, 5.0, 0.1]).view(3, 1, 1)
    layer = bp.PerSeed(nn.BatchNorm1d(15))
    y = layer(x)
    for s in range(3):
        torch.testing.assert_close(y[s], F.batch_norm(x[s], None, None, training=True))
    ghost = bp.PerSeed(GhostBatchNorm2d(15, group_size=4))
    y = ghost(x)
    torch.testing.assert_close(y[1, :4], F.batch_norm(x[1, :4], None, None, training=True), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_batch_renorm_module_matches_the_reference(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, size=(6, 4))
    layer = bp.BatchRenorm1d(4, momentum=0.2, r_max=2.0, d_max=1.0).double()
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(rng.normal(size=4)))
        layer.bias.copy_(torch.from_numpy(rng.normal(size=4)))
    rm, rs = np.zeros(4), np.ones(4)
    w, b = layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy()
    for step in range(3):
        xs = x * (step + 1)
        y = layer(torch.from_numpy(xs)).detach().numpy()
        expected = ref.batch_renorm(xs, rm, rs, w, b, training=True, momentum=0.2, r_max=2.0, d_max=1.0)
        np.testing.assert_allclose(y, expected, atol=1e-10)
    np.testing.assert_allclose(layer.running_mean.numpy(), rm, atol=1e-12)
    np.testing.assert_allclose(layer.running_std.numpy(), rs, atol=1e-12)
    layer.eval()
    np.testing.assert_allclose(layer(torch.from_numpy(x)).detach().numpy(),
                               ref.batch_renorm(x, rm, rs, w, b, training=False), atol=1e-10)


def test_batch_renorm_gradient_is_batch_norm_gradient_with_gain_gamma_r():
    """r and d are constants for autograd (Ioffe 2017): dx is BatchNorm's backward with gain gamma * r."""
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(8, 3))).requires_grad_()
    layer = bp.BatchRenorm1d(3).double()
    with torch.no_grad():
        layer.running_std.copy_(torch.tensor([0.5, 1.0, 4.0]))
        layer.running_mean.copy_(torch.tensor([0.3, -0.2, 0.0]))
    rs, rm = layer.running_std.clone().numpy(), layer.running_mean.clone().numpy()
    dy = rng.normal(size=(8, 3))
    layer(x).backward(torch.from_numpy(dy))
    batch_std = np.sqrt(x.detach().numpy().var(0) + 1e-5)
    r, _ = ref.batch_renorm_correction(x.detach().numpy().mean(0), batch_std, rm, rs, 3.0, 5.0)
    dx, _, _ = ref.batch_norm_backward(dy, x.detach().numpy(), weight=r)
    np.testing.assert_allclose(x.grad.numpy(), dx, atol=1e-10)


def test_freeze_keeps_statistics_and_affine_and_trains_the_rest(data):
    stack = bp.stacked_mlp((0, 1), width=16)
    bp.train_stacked(stack, data.x_train, data.y_train, steps=5, lr=0.05)
    before = copy.deepcopy(stack)
    bp.train_stacked(stack, data.x_train, data.y_train, steps=5, lr=0.05, on_start=bp.freeze_batch_norm)
    for new, old in zip(bp.batch_norm_layers(stack), bp.batch_norm_layers(before)):
        assert not new.training and not new.weight.requires_grad and not new.bias.requires_grad
        for name in ("running_mean", "running_var", "weight", "bias"):
            torch.testing.assert_close(getattr(new, name), getattr(old, name), rtol=0, atol=0)
    assert not torch.equal(stack[0].weight, before[0].weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fold_batch_norm_equals_the_eval_mode_network(data, dtype):
    stack = bp.stacked_mlp((0,), width=16)
    bp.train_stacked(stack, data.x_train, data.y_train, steps=20, lr=0.05)
    net = bp.member(stack, 0).to(dtype).eval()
    folded = bp.fold_batch_norm(net)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in folded)
    x = data.x_test.to(dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-4   # float32: a few ulps of logits of size ~10
    torch.testing.assert_close(folded(x), net(x), atol=tol, rtol=tol)
    torch_fused = fusion.fuse_linear_bn_eval(net[0], net[1])
    torch.testing.assert_close(folded[0].weight, torch_fused.weight, atol=tol, rtol=tol)


def test_samplers(data):
    pools = bp.few_shot_pools(data.y_train, (3, 8), 4, seeds=(0, 1))
    sampler = bp.EpochSampler(len(data.y_train), 4, (0, 1), pools)
    for step in range(5):
        index = sampler(step)
        assert index.shape == (2, 4)
        for s in range(2):
            assert set(index[s].tolist()) <= set(pools[s].tolist())
    classes = bp.ClassSampler(data.y_train, 32, 2, seeds=(0, 1, 2))
    index = classes(1)
    for row in index:
        counts = torch.bincount(data.y_train[row], minlength=10)
        assert sorted(counts[counts > 0].tolist()) == [16, 16]
    with pytest.raises(ValueError, match="multiple"):
        bp.ClassSampler(data.y_train, 30, 4, seeds=(0,))


def test_train_mode_evaluation_moves_running_statistics_and_eval_mode_does_not(data):
    stack = bp.stacked_mlp((0, 1), width=16)
    bp.train_stacked(stack, data.x_train, data.y_train, steps=10, lr=0.05)
    mean = bp.batch_norm_layers(stack)[0].running_mean.clone()
    stack.eval()
    bp.stacked_accuracy(stack, data.x_test, data.y_test, 16)
    torch.testing.assert_close(bp.batch_norm_layers(stack)[0].running_mean, mean, rtol=0, atol=0)
    stack.train()
    with torch.no_grad():                     # no_grad does not stop the update
        bp.stacked_accuracy(stack, data.x_test, data.y_test, 16)
    assert not torch.allclose(bp.batch_norm_layers(stack)[0].running_mean, mean)


def test_evaluation_modes_rows_and_model_untouched(data):
    run = bp.train_digits(data, (0, 1), steps=30, width=16)
    state = copy.deepcopy(run.model.state_dict())
    rows, change = bp.evaluation_modes(run.model, data.x_test, data.y_test, batch_sizes=(16,), sorted_batch_sizes=(16,))
    assert [r.label.split(",")[0] for r in rows] == ["eval mode", "train mode", "train mode", "train mode",
                                                     "eval mode after a train-mode pass (sorted"]
    np.testing.assert_allclose(rows[0].accuracy, run.test_accuracy)
    assert rows[3].accuracy.max() < rows[0].accuracy.min()   # class-sorted batches of 16 break BatchNorm
    assert np.all(change > 0)
    first = bp.batch_norm_layers(run.model)[0]
    moved = copy.deepcopy(first)
    with torch.no_grad():
        moved.running_mean += 2 * (moved.running_var + moved.eps).sqrt()     # two standard deviations
    np.testing.assert_allclose(bp.running_mean_shift(first, moved, 2), 2.0, rtol=1e-5)
    for k, v in run.model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0, msg=k)
    assert not run.model.training


def test_recomputed_statistics_are_the_statistics_of_the_data(data):
    run = bp.train_digits(data, (0,), steps=10, width=8, depth=2, dropout=0.5)
    model = bp.recompute_batch_norm_statistics(run.model, data.x_train, batch_size=len(data.y_train))
    assert not model.training and model[3].p == 0.5
    shifts = bp.variance_shift(model, data.x_train)
    # one chunk: the first BatchNorm's running_var is exactly the (unbiased) variance of its input; the
    # second's input was computed with the first normalizing by the biased batch variance, so its
    # eval-mode variance is smaller by (n - 1) / n (see the docstring)
    n = len(data.y_train)
    np.testing.assert_allclose(shifts[0].measured, 1.0, rtol=1e-5)
    np.testing.assert_allclose(shifts[1].measured, (n - 1) / n, rtol=1e-4)
    with pytest.raises(TypeError, match="plain"):
        bp.recompute_batch_norm_statistics(bp.stacked_mlp((0,), norm="batch_renorm"), data.x_train)


def test_variance_shift_prediction_matches_monte_carlo(data):
    """Predicted train-time variance (eval variance + dropout noise) against sampled dropout masks."""
    run = bp.train_digits(data, (0,), steps=20, width=16, depth=2, dropout=0.5)
    model = run.model
    shift = bp.variance_shift(model, data.x_train)
    assert shift[0].predicted is None and shift[1].predicted is not None
    probe = copy.deepcopy(model).eval()
    probe[3].train()                                     # the dropout before the second linear layer
    captured = []
    probe[5].register_forward_hook(lambda m, i, o: captured.append(i[0]))
    torch.manual_seed(0)
    with torch.no_grad():
        for _ in range(200):
            probe(data.x_train.expand(1, *data.x_train.shape))
    z = torch.cat(captured, dim=1)[0]                    # (200 n, C) BatchNorm inputs, dropout on
    probe.eval()
    captured.clear()
    with torch.no_grad():
        probe(data.x_train.expand(1, *data.x_train.shape))
    ratio = (captured[0][0].var(0) / z.var(0)).median().item()
    # 200 masks x 1438 samples: the variance estimate's error is well under 1%; allow 3%
    assert abs(ratio / shift[1].predicted[0] - 1) < 0.03


def test_scale_invariance_holds_without_bias_in_training_mode(data):
    net = bp.member(bp.stacked_mlp((0,), linear_bias=False), 0)
    x, y = data.x_train[:64], data.y_train[:64]
    # c = 10 moves eps's share of the variance from ~1e-5 to ~1e-7: invariance to about that; c = 0.1 moves
    # it to ~1e-3, and the loss changes visibly (eps breaks the invariance, rounding does not: float64)
    check = bp.scale_invariance(net, x, y, layer=0, c=10.0)
    assert check.loss_change < 1e-6 and abs(check.gradient_ratio - 1) < 1e-5 and abs(check.cosine) < 1e-5
    small = bp.scale_invariance(net, x, y, layer=0, c=0.1)
    assert 1e-7 < small.loss_change < 1e-3
    output_layer = bp.scale_invariance(net, x, y, layer=6, c=10.0)    # no BatchNorm after it
    assert output_layer.loss_change > 1e-2


def test_weight_norm_grows_without_decay_and_shrinks_with_it(data):
    plain = bp.weight_norm_trajectory(data, (0, 1), lr=0.5, weight_decay=0.0, steps=30)
    assert plain.sq_norm.shape == (31, 2) and plain.angle.shape == (30, 2)
    # ||W_{t+1}||^2 = ||W_t||^2 + lr^2 ||g||^2: never decreases (float32 rounding of a sum of ~4000 squares)
    assert np.all(np.diff(plain.sq_norm, axis=0) > -1e-3)
    assert np.all(plain.sq_norm[-1] > plain.sq_norm[0])
    decayed = bp.weight_norm_trajectory(data, (0, 1), lr=0.5, weight_decay=1e-2, steps=30)
    assert np.all(decayed.sq_norm[-1] < decayed.sq_norm[0])
    np.testing.assert_allclose(decayed.effective_lr, 0.5 / decayed.sq_norm)


def test_frozen_bn_finetune_rows(data):
    run = bp.train_digits(data, (0, 1), steps=10, width=16)
    rows = bp.frozen_bn_finetune(run.model, data, classes=(3, 8), shots=4, batch_sizes=(4,), steps=3)
    assert [r.variant for r in rows] == ["train-mode BN", "train-mode BN, statistics restored", "frozen BN"]
    assert np.all(rows[0].drift > 0) and np.all(rows[1].drift == 0) and np.all(rows[2].drift == 0)
    assert not run.model[1].norm.training and run.model[1].norm.weight.requires_grad


def test_train_digits_options(data):
    run = bp.train_digits(data, (0,), steps=3, width=8, classes=range(5), classes_per_batch=2,
                          norm="batch_renorm", renorm={"r_max": 2.0})
    assert isinstance(run.model[1].norm, bp.BatchRenorm1d) and run.model[1].norm.r_max == 2.0
    assert run.test_accuracy.shape == (1,)
    with pytest.raises(ValueError, match="norm must be"):
        bp.stacked_mlp((0,), norm="layer_norm")
