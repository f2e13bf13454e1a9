"""The ghost-batch BatchNorm used by chapter 3's sweep, checked against torch and the reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normcourse.reference as ref
from normcourse.lab.experiments import (GhostBatchNorm2d, batch_size_sweep, batch_statistics_accuracy,
                                    with_ghost_batch_norm)
from normcourse.lab.models import load_digits_tensors, small_cnn

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


def test_sweep_shape_and_group_norm_independent_of_the_batch():
    rows = batch_size_sweep(images_per_statistic=(32, 2), seeds=(0,), steps=10)
    assert [(r.norm, r.images_per_statistic) for r in rows] == [
        ("group_norm", 32), ("group_norm", 2), ("batch_norm", 32), ("batch_norm", 2)]
    gn = [r for r in rows if r.norm == "group_norm"]
    assert gn[0].test_accuracy == gn[1].test_accuracy == gn[0].test_accuracy_batch_stats
    with pytest.raises(ValueError, match="divide"):
        batch_size_sweep(images_per_statistic=(5,), steps=1)
