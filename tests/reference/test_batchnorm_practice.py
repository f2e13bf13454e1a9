"""BatchNorm in practice (reference.batchnorm_practice) against PyTorch, the outside oracle.

Tolerances:
- float64 against torch float64: 1e-10 absolute on outputs of magnitude <= 1e4 * |a| (the largest
  inputs below are 1e4): both sides do the same few multiplications and additions per element in a
  possibly different order, a few ulps (2.2e-16) of values up to ~1e6, i.e. < 1e-9 even for the
  largest cases; measured differences are below 1e-11. Where a result is compared relative to its
  size we use rtol 1e-12.
- float32 inputs: the reference computes in float64 and rounds once, torch computes in float32, so the
  two differ by a few float32 ulps (u = 6e-8) of the values involved: rtol 1e-5, atol 1e-5 * scale.
- Monte Carlo (dropout): the sample variance of n draws has relative standard error ~ sqrt(2/n) times
  a kurtosis factor below 2 here; n = 2e6 gives ~0.2%, and we allow 1.5% (about 7 standard errors).
"""

import doctest

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import fusion

import normcourse.reference as ref
from normcourse.reference import batchnorm_practice

F64_ATOL = 1e-10
SEEDS = range(40)


def t(a):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


def bn_params(rng, c, scale=1.0, affine=None):
    """Running mean/var and (maybe) gain and bias of a BatchNorm with ``c`` channels."""
    mean = rng.normal(size=c) * scale
    var = rng.uniform(0.05, 3.0, size=c) * scale ** 2
    if affine is None:
        affine = rng.random() < 0.7
    weight = rng.normal(size=c) if affine else None
    bias = rng.normal(size=c) if affine else None
    return mean, var, weight, bias


def test_docstring_examples_run():
    result = doctest.testmod(batchnorm_practice, extraglobs={"np": np}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 10 and result.failed == 0


# ------------------------------------------------------------------ eval-mode BatchNorm as an affine map
@pytest.mark.parametrize("seed", SEEDS)
def test_batch_norm_affine_is_eval_mode_batch_norm(seed):
    rng = np.random.default_rng([10, seed])
    c = int(rng.integers(1, 6))
    shape = (int(rng.integers(1, 4)), c) + tuple(int(s) for s in rng.integers(1, 4, size=int(rng.integers(0, 3))))
    scale = float(rng.choice([1e-2, 1.0, 1e4]))
    x = rng.normal(size=shape) * scale
    mean, var, w, b = bn_params(rng, c, scale)
    eps = float(rng.choice([1e-5, 1e-3, 0.1]))
    a, shift = ref.batch_norm_affine(mean, var, w, b, eps)
    view = (1, c) + (1,) * (len(shape) - 2)
    expected = F.batch_norm(t(x), t(mean), t(var), t(w), t(b), training=False, eps=eps).numpy()
    np.testing.assert_allclose(a.reshape(view) * x + shift.reshape(view), expected, rtol=1e-12, atol=F64_ATOL)


def test_batch_norm_affine_zero_variance_and_dtype():
    a, shift = ref.batch_norm_affine(np.array([2.0], np.float32), np.array([0.0], np.float32), eps=1e-5)
    assert a.dtype == np.float32 and shift.dtype == np.float32
    np.testing.assert_allclose(a, 1 / np.sqrt(1e-5), rtol=1e-6)        # the variance is 0: scale 1/sqrt(eps)
    np.testing.assert_allclose(shift, -2 / np.sqrt(1e-5), rtol=1e-6)
    with pytest.raises(ValueError, match="non-negative"):
        ref.batch_norm_affine(np.zeros(2), np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        ref.batch_norm_affine(np.zeros(2), np.ones(3))


# ------------------------------------------------------------------ folding BatchNorm into linear and conv
@pytest.mark.parametrize("seed", SEEDS)
def test_fuse_linear_matches_torch_and_is_equivalent(seed):
    rng = np.random.default_rng([11, seed])
    out_f, in_f, n = int(rng.integers(1, 7)), int(rng.integers(1, 7)), int(rng.integers(1, 5))
    scale = float(rng.choice([1e-2, 1.0, 1e4]))
    w = rng.normal(size=(out_f, in_f))
    b = rng.normal(size=out_f) * scale if rng.random() < 0.5 else None
    x = rng.normal(size=(n, in_f)) * scale
    mean, var, gamma, beta = bn_params(rng, out_f, scale, affine=True)
    eps = float(rng.choice([1e-5, 1e-3]))
    fw, fb = ref.fuse_linear_bn_weights(w, b, mean, var, eps, gamma, beta)
    tw, tb = fusion.fuse_linear_bn_weights(t(w), t(b), t(mean), t(var), eps, t(gamma), t(beta))
    np.testing.assert_allclose(fw, tw.detach().numpy(), rtol=1e-12, atol=F64_ATOL)
    np.testing.assert_allclose(fb, tb.detach().numpy(), rtol=1e-12, atol=F64_ATOL)
    folded = x @ fw.T + fb
    unfolded = F.batch_norm(F.linear(t(x), t(w), t(b)), t(mean), t(var), t(gamma), t(beta), False, eps=eps)
    np.testing.assert_allclose(folded, unfolded.numpy(), rtol=1e-9, atol=1e-9 * scale)


def test_fuse_linear_without_affine_uses_ones_and_zeros():
    rng = np.random.default_rng(0)
    w, mean, var = rng.normal(size=(3, 4)), rng.normal(size=3), rng.uniform(0.5, 2, size=3)
    fw, fb = ref.fuse_linear_bn_weights(w, None, mean, var, 1e-5, None, None)
    tw, tb = fusion.fuse_linear_bn_weights(t(w), None, t(mean), t(var), 1e-5, torch.ones(3, dtype=torch.float64),
                                           torch.zeros(3, dtype=torch.float64))
    np.testing.assert_allclose(fw, tw.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(fb, tb.detach().numpy(), rtol=1e-12)


def _random_conv(rng, transpose=False):
    dims = int(rng.integers(1, 4))
    groups = 1 if transpose else int(rng.choice([1, 2]))
    c_in, c_out = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 4))
    kernel = tuple(int(k) for k in rng.integers(1, 4, size=dims))
    cls = [nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d][dims - 1] if transpose else \
        [nn.Conv1d, nn.Conv2d, nn.Conv3d][dims - 1]
    bias = bool(rng.random() < 0.5)
    torch.manual_seed(int(rng.integers(0, 2**31)))
    conv = cls(c_in, c_out, kernel, groups=groups, bias=bias, padding=1, dtype=torch.float64)
    bn = [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d][dims - 1](c_out, dtype=torch.float64)
    mean, var, gamma, beta = bn_params(rng, c_out, affine=True)
    with torch.no_grad():
        bn.running_mean.copy_(t(mean)), bn.running_var.copy_(t(var))
        bn.weight.copy_(t(gamma)), bn.bias.copy_(t(beta))
    bn.eps = float(rng.choice([1e-5, 1e-3]))
    x = torch.from_numpy(rng.normal(size=(int(rng.integers(1, 4)), c_in) + tuple(int(s) for s in rng.integers(3, 6, size=dims))))
    return conv.eval(), bn.eval(), x


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("seed", range(25))
def test_fuse_conv_matches_torch_fuse_conv_bn_eval(seed, transpose):
    rng = np.random.default_rng([12, seed, transpose])
    conv, bn, x = _random_conv(rng, transpose)
    b = None if conv.bias is None else conv.bias.detach().numpy()
    fw, fb = ref.fuse_conv_bn_weights(conv.weight.detach().numpy(), b, bn.running_mean.numpy(),
                                      bn.running_var.numpy(), bn.eps, bn.weight.detach().numpy(),
                                      bn.bias.detach().numpy(), transpose=transpose)
    fused = fusion.fuse_conv_bn_eval(conv, bn, transpose=transpose)
    np.testing.assert_allclose(fw, fused.weight.detach().numpy(), rtol=1e-12, atol=F64_ATOL)
    np.testing.assert_allclose(fb, fused.bias.detach().numpy(), rtol=1e-12, atol=F64_ATOL)
    with torch.no_grad():
        fused.weight.copy_(t(fw)), fused.bias.copy_(t(fb))
        np.testing.assert_allclose(fused(x).numpy(), bn(conv(x)).numpy(), rtol=1e-9, atol=1e-9)


def test_fuse_conv_edge_cases_zero_variance_float32_and_no_affine():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(4, 2, 3, 3)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    mean, var = rng.normal(size=4).astype(np.float32), np.array([0.0, 1.0, 2.0, 1e-8], np.float32)
    fw, fb = ref.fuse_conv_bn_weights(w, b, mean, var, 1e-5, None, None)
    assert fw.dtype == np.float32 and fb.dtype == np.float32
    tw, tb = fusion.fuse_conv_bn_weights(t(w), t(b), t(mean), t(var), 1e-5, None, None)
    np.testing.assert_allclose(fw, tw.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fb, tb.detach().numpy(), rtol=1e-5, atol=1e-5)
    fw64, _ = ref.fuse_conv_bn_weights(w, None, mean, var, 1e-5, None, None)
    assert fw64.dtype == np.float32
    with pytest.raises(ValueError, match="output channels"):
        ref.fuse_conv_bn_weights(w, None, np.zeros(3), np.ones(3), 1e-5, None, None)
    with pytest.raises(ValueError, match="conv_b"):
        ref.fuse_conv_bn_weights(w, np.zeros(3), mean, var, 1e-5, None, None)


# ------------------------------------------------------------------ ghost batches
def _ghost_case(seed):
    rng = np.random.default_rng([13, seed])
    c, k, b = int(rng.integers(1, 5)), int(rng.integers(1, 5)), int(rng.integers(1, 5))
    spatial = tuple(int(s) for s in rng.integers(1, 4, size=int(rng.integers(0, 3))))
    if b * int(np.prod(spatial)) == 1:
        b = 2
    x = rng.normal(size=(k * b, c) + spatial) * rng.choice([0.1, 1, 1e4]) + rng.normal()
    return rng, x, b


@pytest.mark.parametrize("seed", SEEDS)
def test_ghost_batch_norm_normalizes_each_ghost_batch_like_torch(seed):
    rng, x, b = _ghost_case(seed)
    c = x.shape[1]
    _, _, w, beta = bn_params(rng, c)
    y = ref.ghost_batch_norm(x, b, weight=w, bias=beta)
    expected = torch.cat([F.batch_norm(g, None, None, t(w), t(beta), training=True) for g in t(x).split(b)])
    np.testing.assert_allclose(y, expected.numpy(), rtol=1e-10, atol=F64_ATOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_ghost_running_statistics_both_conventions(seed):
    rng, x, b = _ghost_case(seed)
    c, momentum = x.shape[1], float(rng.uniform(0.01, 0.5))
    # "sequential": an nn.BatchNorm module called on each ghost batch in turn
    module = nn.BatchNorm1d(c, momentum=momentum, affine=False, dtype=torch.float64)
    rm, rv = np.zeros(c), np.ones(c)
    ref.ghost_batch_norm(x, b, rm, rv, momentum=momentum, stats_update="sequential")
    for g in t(x).split(b):
        module(g.reshape(g.shape[0], c, -1))
    np.testing.assert_allclose(rm, module.running_mean.numpy(), rtol=1e-10, atol=F64_ATOL)
    np.testing.assert_allclose(rv, module.running_var.numpy(), rtol=1e-10, atol=F64_ATOL)
    # "average": one update with the mean of the ghost means and of the unbiased ghost variances
    rm, rv = np.zeros(c), np.ones(c)
    ref.ghost_batch_norm(x, b, rm, rv, momentum=momentum)
    groups = t(x).reshape(x.shape[0] // b, b, c, -1).transpose(1, 2).reshape(x.shape[0] // b, c, -1)
    np.testing.assert_allclose(rm, momentum * groups.mean(-1).mean(0).numpy(), rtol=1e-10, atol=F64_ATOL)
    np.testing.assert_allclose(rv, 1 - momentum + momentum * groups.var(-1).mean(0).numpy(), rtol=1e-10,
                               atol=F64_ATOL)


def test_ghost_batch_norm_special_cases():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 3, 4))
    rm, rv = np.zeros(3), np.ones(3)
    rm2, rv2 = np.zeros(3), np.ones(3)
    np.testing.assert_allclose(ref.ghost_batch_norm(x, 6, rm, rv), ref.batch_norm(x, rm2, rv2, training=True))
    np.testing.assert_allclose(rv, rv2)
    np.testing.assert_allclose(ref.ghost_batch_norm(x, 1), ref.instance_norm(x), atol=1e-12)   # b = 1: IN
    np.testing.assert_allclose(ref.ghost_batch_norm(x, 2, rm, rv, training=False),
                               ref.batch_norm(x, rm, rv, training=False))
    with pytest.raises(ValueError, match="divide"):
        ref.ghost_batch_norm(x, 4)
    with pytest.raises(ValueError, match="more than 1 value"):
        ref.ghost_batch_norm(rng.normal(size=(4, 3)), 1)
    with pytest.raises(ValueError, match="stats_update"):
        ref.ghost_batch_norm(x, 2, stats_update="mean")
    y32 = ref.ghost_batch_norm(x.astype(np.float32), 3)
    assert y32.dtype == np.float32


# ------------------------------------------------------------------ synchronised BatchNorm
def _shards(seed):
    rng = np.random.default_rng([14, seed])
    c = int(rng.integers(1, 5))
    spatial = tuple(int(s) for s in rng.integers(1, 4, size=int(rng.integers(0, 3))))
    offset = float(rng.choice([0.0, 1e4]))
    sizes = [int(s) for s in rng.integers(1, 5, size=int(rng.integers(1, 5)))]
    shards = [rng.normal(size=(n, c) + spatial) * rng.uniform(0.5, 2) + offset + rng.normal() for n in sizes]
    if sum(sizes) * int(np.prod(spatial)) == 1:
        shards.append(rng.normal(size=(1, c) + spatial))
    return rng, shards


@pytest.mark.parametrize("seed", SEEDS)
def test_sync_batch_norm_equals_batch_norm_of_the_union(seed):
    rng, shards = _shards(seed)
    c = shards[0].shape[1]
    _, _, w, b = bn_params(rng, c)
    momentum = float(rng.uniform(0.01, 0.5))
    rm, rv = rng.normal(size=c), rng.uniform(0.5, 2, size=c)
    trm, trv = t(rm.copy()), t(rv.copy())
    ys = ref.sync_batch_norm(shards, rm, rv, w, b, momentum=momentum)
    expected = F.batch_norm(t(np.concatenate(shards)), trm, trv, t(w), t(b), training=True, momentum=momentum)
    # the 1e4 offset cancels in x - mu: errors stay at ulps of 1e4 divided by s >= 0.5
    np.testing.assert_allclose(np.concatenate(ys), expected.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_sync_batch_statistics_is_the_statistics_of_the_union(seed):
    _, shards = _shards(seed)
    axes = tuple(a for a in range(shards[0].ndim) if a != 1)
    c = shards[0].shape[1]
    mean, var, n = ref.sync_batch_statistics([s.mean(axis=axes) for s in shards], [s.var(axis=axes) for s in shards],
                                             [s.size // c for s in shards])
    union = t(np.concatenate(shards))
    dims = [a for a in range(union.dim()) if a != 1]
    assert n == union.numel() // c
    np.testing.assert_allclose(mean, union.mean(dims).numpy(), rtol=1e-12, atol=F64_ATOL)
    np.testing.assert_allclose(var, union.var(dims, unbiased=False).numpy(), rtol=1e-8, atol=1e-9)


def test_sync_statistics_edge_cases():
    # identical constant shards: zero variance; an empty device contributes nothing
    mean, var, n = ref.sync_batch_statistics([[3.0], [3.0], [9.0]], [[0.0], [0.0], [5.0]], [2, 2, 0])
    assert (mean[0], var[0], n) == (3.0, 0.0, 4)
    with pytest.raises(ValueError, match="no values"):
        ref.sync_batch_statistics([[1.0]], [[0.0]], [0])
    with pytest.raises(ValueError, match="devices"):
        ref.sync_batch_statistics([[1.0], [2.0]], [[0.0]], [1, 1])
    with pytest.raises(TypeError, match="list"):
        ref.sync_batch_norm(np.zeros((2, 3)), None, None)
    with pytest.raises(ValueError, match="more than 1 value"):
        ref.sync_batch_norm([np.zeros((1, 3))], None, None)
    # eval mode: every shard with the running statistics
    rng = np.random.default_rng(0)
    shards, rm, rv = [rng.normal(size=(2, 3)), rng.normal(size=(1, 3))], rng.normal(size=3), np.ones(3)
    for y, s in zip(ref.sync_batch_norm(shards, rm, rv, training=False), shards):
        np.testing.assert_allclose(y, ref.batch_norm(s, rm, rv, training=False))


def test_separate_devices_differ_from_synchronised_ones():
    rng = np.random.default_rng(1)
    shards = [rng.normal(0, 1, size=(4, 2)), rng.normal(3, 2, size=(4, 2))]
    separate = np.concatenate([ref.batch_norm(s, None, None, training=True) for s in shards])
    synced = np.concatenate(ref.sync_batch_norm(shards, None, None))
    assert np.abs(separate - synced).max() > 0.5
    np.testing.assert_allclose(separate, ref.ghost_batch_norm(np.concatenate(shards), 4))


# ------------------------------------------------------------------ Batch Renormalization
@pytest.mark.parametrize("seed", SEEDS)
def test_batch_renorm_without_clipping_room_is_batch_norm(seed):
    rng = np.random.default_rng([15, seed])
    c = int(rng.integers(1, 5))
    x = rng.normal(size=(int(rng.integers(2, 6)), c) + tuple(int(s) for s in rng.integers(1, 3, size=int(rng.integers(0, 2)))))
    x = x * rng.choice([0.1, 1.0, 1e4]) + rng.normal()
    _, _, w, b = bn_params(rng, c)
    rm, rs = rng.normal(size=c), rng.uniform(0.5, 2, size=c)
    y = ref.batch_renorm(x, rm.copy(), rs.copy(), w, b, training=True, r_max=1.0, d_max=0.0)
    expected = F.batch_norm(t(x), None, None, t(w), t(b), training=True)
    np.testing.assert_allclose(y, expected.numpy(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_batch_renorm_unclipped_training_output_is_the_running_statistics_output(seed):
    rng = np.random.default_rng([16, seed])
    c = int(rng.integers(1, 5))
    x = rng.normal(size=(int(rng.integers(2, 8)), c, 3)) * rng.uniform(0.5, 2) + rng.normal()
    _, _, w, b = bn_params(rng, c)
    rm, rs = rng.normal(size=c) * 0.3, rng.uniform(0.7, 1.5, size=c)
    rm0, rs0, momentum = rm.copy(), rs.copy(), float(rng.uniform(0.01, 0.5))
    y = ref.batch_renorm(x, rm, rs, w, b, training=True, momentum=momentum, r_max=1e6, d_max=1e6)
    # eval mode with the old running statistics, written as torch's eval batch norm: var = std^2 - eps
    eps = 1e-5
    expected = F.batch_norm(t(x), t(rm0), t(rs0 ** 2 - eps), t(w), t(b), training=False, eps=eps)
    np.testing.assert_allclose(y, expected.numpy(), rtol=1e-9, atol=1e-9)
    batch_std = np.sqrt(x.var(axis=(0, 2)) + eps)
    np.testing.assert_allclose(rm, rm0 + momentum * (x.mean(axis=(0, 2)) - rm0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rs, rs0 + momentum * (batch_std - rs0), rtol=1e-12, atol=1e-12)
    # and evaluation mode is exactly that map with the current running statistics
    y_eval = ref.batch_renorm(x, rm, rs, w, b, training=False)
    expected = F.batch_norm(t(x), t(rm), t(rs ** 2 - eps), t(w), t(b), training=False, eps=eps)
    np.testing.assert_allclose(y_eval, expected.numpy(), rtol=1e-9, atol=1e-9)


def test_batch_renorm_correction_clips():
    r, d = ref.batch_renorm_correction(np.array([0.0, 10.0, -1.0]), np.array([0.1, 1.0, 2.0]),
                                       np.zeros(3), np.ones(3), r_max=3.0, d_max=5.0)
    np.testing.assert_allclose(r, [1 / 3, 1.0, 2.0])
    np.testing.assert_allclose(d, [0.0, 5.0, -1.0])
    # the clipped training output stays within r_max of BatchNorm's scale and d_max of its shift
    x = np.array([[0.0], [100.0]])
    y = ref.batch_renorm(x, np.zeros(1), np.ones(1), training=True, r_max=3.0, d_max=5.0)
    y_bn = ref.batch_norm(x, None, None, training=True)
    np.testing.assert_allclose(y, 3.0 * y_bn + 5.0)
    with pytest.raises(ValueError, match="r_max"):
        ref.batch_renorm_correction(np.zeros(1), np.ones(1), np.zeros(1), np.ones(1), r_max=0.5)
    with pytest.raises(ValueError, match="positive"):
        ref.batch_renorm_correction(np.zeros(1), np.zeros(1), np.zeros(1), np.ones(1))
    with pytest.raises(ValueError, match="running_std"):
        ref.batch_renorm(x, np.zeros(1), [1.0], training=True)


def test_batch_renorm_float32_and_zero_variance():
    x = np.full((4, 2), 7.0, dtype=np.float32)
    rm, rs = np.zeros(2), np.ones(2)
    y = ref.batch_renorm(x, rm, rs, training=True)
    assert y.dtype == np.float32
    # zero batch variance: sigma_B = sqrt(eps), r = clip(sqrt(eps)/1) = 1/3, d = clip(7) = 5
    np.testing.assert_allclose(y, 5.0)
    np.testing.assert_allclose(rs, 0.99 + 0.01 * np.sqrt(1e-5))


# ------------------------------------------------------------------ dropout's variance shift
@pytest.mark.parametrize("p, mean, var", [(0.5, 0.0, 1.0), (0.1, 1.0, 0.5), (0.3, -2.0, 4.0), (0.0, 3.0, 1.0)])
def test_dropout_variance_ratio_matches_torch_dropout(p, mean, var):
    g = torch.Generator().manual_seed(0)
    x = mean + np.sqrt(var) * torch.randn(2_000_000, generator=g, dtype=torch.float64)
    torch.manual_seed(1)
    train_var = F.dropout(x, p, training=True).var()
    test_var = F.dropout(x, p, training=False).var()
    measured = float(test_var / train_var)
    assert abs(measured / float(ref.dropout_variance_ratio(p, mean, var)) - 1) < 0.015


def test_dropout_variance_ratio_formula_and_errors():
    np.testing.assert_allclose(ref.dropout_variance_ratio(np.array([0.0, 0.2, 0.5])), [1.0, 0.8, 0.5])
    assert ref.dropout_variance_ratio(0.5, mean=1.0, var=1.0) == pytest.approx(1 / 3)   # 1 / (2*2 - 1)
    with pytest.raises(ValueError, match="p must"):
        ref.dropout_variance_ratio(1.0)
    with pytest.raises(ValueError, match="var"):
        ref.dropout_variance_ratio(0.5, var=0.0)
