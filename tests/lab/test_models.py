"""Tests of normcourse.lab.models: data, model builders, Santurkar's noise and the training loop.

Everything runs on CPU with fixed seeds; the whole file takes a few seconds.
"""

import numpy as np
import pytest
import torch
from torch import nn

from normcourse.lab import models
from normcourse.lab.models import (CovariateShiftNoise, NoisyBatchNorm, accuracy, layer_groups, load_digits_tensors,
                                   mlp, relu_inputs, small_cnn, train)


@pytest.fixture(scope="module")
def digits():
    return load_digits_tensors(seed=0, test_fraction=0.2)


# ---------------------------------------------------------------- data
def test_digits_shapes_dtypes_and_split(digits):
    assert digits.x_train.shape == (1438, 64) and digits.x_test.shape == (359, 64)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert set(digits.y_train.unique().tolist()) == set(range(10))


def test_digits_standardized_with_training_statistics(digits):
    x = digits.x_train.double()
    # float32 rounding of values of order 1: 1e-5 is generous and still catches a missing step.
    assert torch.allclose(x.mean(0), torch.zeros(64, dtype=torch.float64), atol=1e-5)
    std = x.std(0, unbiased=False)
    constant = std < 1e-6
    assert constant.any(), "the digits have blank corner pixels"
    assert torch.allclose(std[~constant], torch.ones_like(std[~constant]), atol=1e-5)
    assert torch.isfinite(digits.x_test).all()


def test_digits_split_is_fixed_by_seed():
    a, b, c = load_digits_tensors(seed=3), load_digits_tensors(seed=3), load_digits_tensors(seed=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_test, c.y_test)
    assert len(load_digits_tensors(test_fraction=0.5).y_test) == round(0.5 * 1797)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits_tensors(test_fraction=1.0)


def test_digits_are_scikit_learns_bundled_digits():
    # The file is read without importing sklearn; it must be exactly what sklearn's loader returns.
    from sklearn.datasets import load_digits

    images, labels = models._bundled_digits()
    expected_images, expected_labels = load_digits(return_X_y=True)
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)
    assert images.dtype == np.float64 and images.shape == (1797, 64)


# ---------------------------------------------------------------- builders
@pytest.mark.parametrize("norm, norm_type", [(None, None), ("batch_norm", nn.BatchNorm1d),
                                             ("layer_norm", nn.LayerNorm)])
def test_mlp_structure(norm, norm_type):
    net = mlp(in_dim=5, width=7, depth=3, out_dim=2, norm=norm)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(5, 7), (7, 7), (7, 7), (7, 2)]
    norms = [m for m in net if norm_type is not None and isinstance(m, norm_type)]
    assert len(norms) == (3 if norm else 0)
    assert sum(isinstance(m, nn.ReLU) for m in net) == 3
    assert net(torch.randn(4, 5)).shape == (4, 2)
    # order inside a hidden layer: linear, norm, ReLU
    if norm:
        assert isinstance(net[0], nn.Linear) and isinstance(net[1], norm_type) and isinstance(net[2], nn.ReLU)


def test_mlp_noise_sits_after_the_norm_and_before_relu():
    net = mlp(depth=2, width=8, norm="batch_norm", noisy=True)
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Linear", "BatchNorm1d", "CovariateShiftNoise", "ReLU"] * 2 + ["Linear"]
    seeds = [m.generator.initial_seed() for m in net if isinstance(m, CovariateShiftNoise)]
    assert len(set(seeds)) == 2, "each noisy layer draws its own noise"


def test_mlp_is_keyword_only_and_checks_norm():
    with pytest.raises(TypeError):
        mlp(64, 128, 8, 10)
    with pytest.raises(ValueError, match="norm"):
        mlp(norm="batchnorm")


def test_builders_are_seeded_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = mlp(seed=5, depth=2), mlp(seed=5, depth=2)
    c = small_cnn(seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(mlp(seed=6, depth=2)[0].weight, a[0].weight)
    assert c(torch.randn(3, 64)).shape == (3, 10)


# ---------------------------------------------------------------- Santurkar's noise
def test_noise_statistics_match_santurkar():
    n, c = 20000, 64
    scale, shift = CovariateShiftNoise(seed=0).sample(torch.Size([n, c]), torch.float64)
    # m ~ U(mu - 0.1, mu + 0.1) per unit: width at most 0.2 and (with 20000 draws) at least 0.199
    width = shift.max(0).values - shift.min(0).values
    assert (width <= 0.2 + 1e-12).all() and (width > 0.199).all()
    mu = (shift.max(0).values + shift.min(0).values) / 2  # estimate of mu per unit
    assert (mu.abs() <= 0.5 + 1e-4).all() and mu.min() < -0.3 and mu.max() > 0.3
    # s ~ N(sigma, 0.1) per sample with sigma ~ U(1, 1.25): 6 standard errors of the mean, 0.1/sqrt(n)
    sigma = scale.mean(0)
    tol = 6 * 0.1 / np.sqrt(n)
    assert (sigma >= 1 - tol).all() and (sigma <= 1.25 + tol).all()
    assert torch.allclose(scale.std(0), torch.full((c,), 0.1, dtype=torch.float64), rtol=0.05)


def test_noise_forward_is_s_times_a_plus_m_fresh_every_step_identity_in_eval():
    noise = CovariateShiftNoise(seed=7)
    a = torch.randn(32, 6)
    state = noise.generator.get_state()
    scale, shift = noise.sample(a.shape)
    noise.generator.set_state(state)
    assert torch.equal(noise(a), scale * a + shift)
    assert not torch.equal(noise(a), scale * a + shift), "a new step draws new noise"
    noise.eval()
    assert torch.equal(noise(a), a)


def test_noise_on_images_is_shared_over_spatial_positions():
    noise = CovariateShiftNoise(seed=1)
    out = noise(torch.ones(4, 3, 5, 5))
    assert torch.equal(out, out[:, :, :1, :1].expand_as(out))


def test_noisy_batch_norm_is_bn_then_noise():
    layer = NoisyBatchNorm(5, seed=2)
    x = torch.randn(64, 5)
    y = layer(x)
    # the noise moves each unit's batch mean by about mu (|mu| <= 0.6) and scales its std by ~sigma
    assert y.shape == x.shape
    assert not torch.allclose(y, layer[0](x))
    spatial = NoisyBatchNorm(3, spatial=True)
    assert isinstance(spatial[0], nn.BatchNorm2d) and spatial(torch.randn(4, 3, 2, 2)).shape == (4, 3, 2, 2)


# ---------------------------------------------------------------- CNN
def test_small_cnn_group_norm_is_independent_of_the_batch_and_batch_norm_is_not():
    x = torch.randn(8, 64)
    gn, bn = small_cnn("group_norm", groups=4), small_cnn("batch_norm")
    with torch.no_grad():
        assert torch.allclose(gn(x)[:2], gn(x[:2]), atol=1e-6)
        assert not torch.allclose(bn(x)[:2], bn(x[:2]), atol=1e-3)
    assert small_cnn(None)(x.view(8, 1, 8, 8)).shape == (8, 10)
    with pytest.raises(ValueError, match="groups"):
        small_cnn("group_norm", groups=5)


# ---------------------------------------------------------------- training
def test_train_is_deterministic_and_learns(digits):
    runs = [train(mlp(depth=2, width=32, norm="batch_norm", seed=0), digits, steps=120, lr=0.1,
                  batch_size=64, seed=0) for _ in range(2)]
    assert runs[0].loss == runs[1].loss and len(runs[0].loss) == 120
    loss, acc = runs[0].final()
    assert acc > 0.9 and loss < runs[0].loss[0] / 3


def test_train_reports_steps_and_other_seed_differs(digits):
    calls = []
    history = train(mlp(depth=1, width=16), digits, steps=5, lr=0.05, momentum=0.9, seed=1,
                    on_step=lambda step, model: calls.append(step))
    assert calls == [0, 1, 2, 3, 4, 5]
    other = train(mlp(depth=1, width=16), digits, steps=5, lr=0.05, momentum=0.9, seed=2)
    assert history.loss != other.loss


def test_accuracy_restores_mode(digits):
    net = mlp(depth=1, width=16, norm="batch_norm")
    net.train()
    value = accuracy(net, digits.x_test, digits.y_test)
    assert 0.0 <= value <= 1.0 and net.training
    assert models.NORMS[0] is None


# ---------------------------------------------------------------- initialization and probes
def test_kaiming_init_keeps_the_signal_and_default_shrinks_it():
    x = torch.randn(512, 64)
    default = relu_inputs(mlp(init="default", seed=0), x)
    kaiming = relu_inputs(mlp(init="kaiming", seed=0), x)
    # the signal is the spread over samples (the biases add a sample-independent offset).
    # default U(-1/sqrt(n), 1/sqrt(n)): second moment / ~6 per layer, so 7 layers lose > 100x in spread
    def spread(a):
        return a.std(0).mean().item()
    assert spread(default[-1]) < spread(default[0]) / 100
    # He init: roughly constant scale (a factor 3 either way is far from the default's collapse)
    assert 1 / 3 < spread(kaiming[-1]) / spread(kaiming[0]) < 3
    assert all(not l.bias.detach().any() for l in mlp(init="kaiming") if isinstance(l, nn.Linear))
    with pytest.raises(ValueError, match="init"):
        mlp(init="xavier")


def test_relu_inputs_leave_model_untouched_and_see_batch_statistics():
    net = mlp(depth=2, width=8, norm="batch_norm", noisy=True, seed=0)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    noise_state = net[2].generator.get_state()
    x = torch.randn(32, 64)
    inputs = relu_inputs(net, x)
    assert [a.shape for a in inputs] == [(32, 8), (32, 8)]
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert torch.equal(net[2].generator.get_state(), noise_state)
    plain = relu_inputs(mlp(depth=2, width=8, norm="batch_norm", seed=0), x)
    # without noise, BN output on its own batch has mean beta = 0 at initialization
    assert plain[0].mean(0).abs().max() < 1e-5


def test_layer_groups_attach_norm_parameters_to_the_preceding_linear():
    net = mlp(in_dim=3, width=4, depth=2, out_dim=2, norm="batch_norm")
    groups = layer_groups(net)
    assert [name for name, _ in groups] == ["0", "3", "6"]
    assert [len(ps) for _, ps in groups] == [4, 4, 2]
    assert groups[0][1][2] is net[1].weight
