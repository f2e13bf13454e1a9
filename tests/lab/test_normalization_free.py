"""Tests of normcourse.lab.normalization_free: the torch layers against the numpy reference, the
seed-batched residual MLPs against single-network computations, and the training loop's promises.

Tolerances: float64 comparisons with the reference use 1e-10 (the same computation, different
summation order, outputs of order sqrt(fan_in)); float32 model computations use rtol = atol = 1e-5 (a
few float32 ulps, 1.2e-7, accumulated over a 32-term dot product and a normalization); comparisons of
two training runs that differ only in how many networks share the batched products use 1e-4 after
several SGD steps (float32 rounding differences amplified by the steps, measured below 1e-5).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normcourse.reference as ref
from normcourse.lab import normalization_free as nf
from normcourse.lab.models import load_digits_tensors
from normcourse.lab.transformer import TinyTransformer

F64 = dict(rtol=0, atol=1e-10)
F32 = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def digits():
    return load_digits_tensors()


def rand(*shape, seed=0, scale=1.0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=dtype) * scale)


# ---------------------------------------------------------------- torch twins of the reference
@pytest.mark.parametrize("shape", [(4, 3), (5, 2, 3, 3), (1, 7), (3, 1)])
def test_weight_standardizations_match_the_reference(shape):
    w = rand(*shape, seed=len(shape), scale=3.0) + 1.0
    np.testing.assert_allclose(nf.weight_standardization(w).numpy(), ref.weight_standardization(w.numpy()), **F64)
    gain = rand(shape[0], seed=9)
    np.testing.assert_allclose(nf.scaled_weight_standardization(w, gain, ref.RELU_GAMMA).numpy(),
                               ref.scaled_weight_standardization(w.numpy(), gain.numpy(), ref.RELU_GAMMA), **F64)


def test_batch_dims_standardize_each_model_separately():
    w = rand(3, 4, 5, seed=1)                                   # three models' (4, 5) weights
    gain = rand(3, 4, seed=2)
    got = nf.scaled_weight_standardization(w, gain, 1.0, batch_dims=1)
    for s in range(3):
        np.testing.assert_allclose(got[s].numpy(), ref.scaled_weight_standardization(w[s].numpy(), gain[s].numpy()),
                                   **F64)
        np.testing.assert_allclose(nf.weight_standardization(w, batch_dims=1)[s].numpy(),
                                   ref.weight_standardization(w[s].numpy()), **F64)


@pytest.mark.parametrize("shape", [(), (6,), (4, 5), (3, 2, 3, 3)])
def test_unitwise_norm_and_agc_match_the_reference(shape):
    w, g = rand(*shape, seed=3), rand(*shape, seed=4, scale=0.05)
    np.testing.assert_allclose(nf.unitwise_norm(w).numpy(), ref.unitwise_norm(w.numpy()), rtol=1e-12)
    clipped, mask = nf.adaptive_clip_grad(g, w, clipping=0.02)
    np.testing.assert_allclose(clipped.numpy(), ref.adaptive_clip_grad(g.numpy(), w.numpy(), clipping=0.02),
                               rtol=1e-12, atol=0)
    np.testing.assert_array_equal(mask.numpy(), ref.agc_ratio(g.numpy(), w.numpy()) > 0.02)


def test_agc_with_a_batch_dim_and_one_threshold_per_model():
    w, g = rand(3, 4, 5, seed=5), rand(3, 4, 5, seed=6, scale=0.1)
    thresholds = torch.tensor([0.01, 0.1, math.inf], dtype=torch.float64).reshape(3, 1, 1)
    got, mask = nf.adaptive_clip_grad(g, w, thresholds, batch_dims=1)
    for s, lam in enumerate((0.01, 0.1)):
        np.testing.assert_allclose(got[s].numpy(), ref.adaptive_clip_grad(g[s].numpy(), w[s].numpy(), lam),
                                   rtol=1e-12, atol=0)
    assert torch.equal(got[2], g[2]) and not mask[2].any()     # lambda = inf: never clipped


def test_adaptive_clip_grad_in_place_on_a_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    model(torch.randn(8, 5)).pow(2).sum().backward()
    before = {n: (p.detach().clone(), p.grad.clone()) for n, p in model.named_parameters()}
    model[2].bias.grad = None                                     # a parameter without gradient is skipped
    share = nf.adaptive_clip_grad_(model.parameters(), clipping=0.01)
    units, clipped = 0, 0
    for name, p in model.named_parameters():
        weight, grad = before[name]
        torch.testing.assert_close(p.detach(), weight, rtol=0, atol=0)          # weights untouched
        if p.grad is None:
            continue
        expected = ref.adaptive_clip_grad(grad.double().numpy(), weight.double().numpy(), clipping=0.01)
        np.testing.assert_allclose(p.grad.double().numpy(), expected, rtol=1e-5, atol=1e-8)
        ratio = ref.agc_ratio(grad.double().numpy(), weight.double().numpy())
        units, clipped = units + ratio.size, clipped + int((ratio > 0.01).sum())
    assert share == pytest.approx(clipped / units) and 0 < share <= 1


# ---------------------------------------------------------------- drop-in layers
def test_ws_linear_and_conv_use_the_standardized_weight():
    torch.manual_seed(0)
    lin, conv = nf.WSLinear(6, 4), nf.WSConv2d(3, 5, 3, padding=1)
    x, img = torch.randn(2, 6), torch.randn(2, 3, 6, 6)
    w_hat = torch.from_numpy(ref.weight_standardization(lin.weight.detach().numpy()))
    torch.testing.assert_close(lin(x), F.linear(x, w_hat, lin.bias), **F32)
    k_hat = torch.from_numpy(ref.weight_standardization(conv.weight.detach().numpy()))
    torch.testing.assert_close(conv(img), F.conv2d(img, k_hat, conv.bias, padding=1), **F32)
    lin(x).sum().backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()
    copy = nf.WSLinear.from_linear(nn.Linear(6, 4))
    assert isinstance(copy, nf.WSLinear) and copy.weight.shape == (4, 6)


def test_ws_layers_ignore_each_units_scale_and_shift():
    torch.manual_seed(1)
    # eps = 1e-10: PyTorch's default init gives filters of variance ~1/54, so eps = 1e-5 alone would
    # move the output by eps/(2 var) ~ 3e-4 when a filter is scaled by 0.5; the invariance is up to eps
    conv, img = nf.WSConv2d(2, 3, 3, eps=1e-10), torch.randn(1, 2, 5, 5)
    before = conv(img)
    with torch.no_grad():
        conv.weight.mul_(torch.tensor([2.0, 5.0, 0.5]).view(3, 1, 1, 1)).add_(0.3)
    torch.testing.assert_close(conv(img), before, **F32)


def test_scaled_ws_layers_match_the_reference_and_preserve_variance():
    torch.manual_seed(2)
    lin, conv = nf.ScaledWSLinear(64, 32, gamma=ref.RELU_GAMMA), nf.ScaledWSConv2d(4, 6, 3, gamma=2.0)
    with torch.no_grad():
        lin.gain.uniform_(0.5, 1.5)
    x = torch.randn(3, 64)
    w_hat = ref.scaled_weight_standardization(lin.weight.detach().numpy(), lin.gain.detach().numpy(), ref.RELU_GAMMA)
    torch.testing.assert_close(lin(x), F.linear(x, torch.from_numpy(w_hat), lin.bias), **F32)
    k_hat = ref.scaled_weight_standardization(conv.weight.detach().numpy(), None, 2.0)
    img = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(conv(img), F.conv2d(img, torch.from_numpy(k_hat), conv.bias), **F32)
    # gain 1, gamma 1: unit-variance independent inputs give unit-variance outputs (each row has norm 1);
    # Monte Carlo over 20000 x 64 outputs: standard error about 0.001, checked at 0.02
    plain = nf.ScaledWSLinear(128, 64)
    assert plain(torch.randn(20000, 128)).var().item() == pytest.approx(1.0, abs=0.02)


def test_dynamic_tanh_matches_the_reference_and_replaces_layer_norms():
    dyt = nf.DynamicTanh((3, 4), alpha_init=0.7)
    with torch.no_grad():
        dyt.weight.uniform_(-2, 2)
        dyt.bias.uniform_(-1, 1)
    x = torch.randn(5, 3, 4) * 3
    expected = ref.dynamic_tanh(x.numpy(), 0.7, dyt.weight.detach().numpy(), dyt.bias.detach().numpy())
    torch.testing.assert_close(dyt(x), torch.from_numpy(expected), **F32)
    torch.manual_seed(0)
    model = nf.replace_layer_norms(TinyTransformer(vocab=16, d_model=32, n_heads=2, depth=2, seq_len=8), 0.25)
    kinds = [type(m) for m in model.modules()]
    assert nn.LayerNorm not in kinds and kinds.count(nf.DynamicTanh) == 5    # 2 per block + final
    assert all(m.alpha.item() == 0.25 for m in model.modules() if isinstance(m, nf.DynamicTanh))
    assert model(torch.randint(0, 16, (2, 8))).shape == (2, 8, 16)


def test_skipinit_is_the_identity_at_initialization_and_learns_alpha():
    torch.manual_seed(0)
    block = nf.SkipInit(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)))
    x = torch.randn(3, 4)
    assert torch.equal(block(x), x)
    block(x).pow(2).sum().backward()
    assert block.alpha.grad.abs() > 0                             # alpha moves; the branch's weights do not yet
    assert all(p.grad is None or not p.grad.any() for p in block.branch.parameters())
    with torch.no_grad():
        block.alpha.fill_(1.0)
    torch.testing.assert_close(block(x), x + block.branch(x))


# ---------------------------------------------------------------- seed-batched residual MLPs
@pytest.mark.parametrize("variant", sorted(nf.VARIANTS))
def test_each_network_depends_only_on_its_own_seed(variant):
    u = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    alone = nf.ResidualMLP(variant, seeds=(3,), depth=3, width=16)
    crowd = nf.ResidualMLP(variant, seeds=(1, 3, 5), depth=3, width=16)
    for (name, p), q in zip(alone.named_parameters(), crowd.parameters()):
        torch.testing.assert_close(p[0], q[1], rtol=0, atol=0, msg=name)
    torch.testing.assert_close(alone(u)[0], crowd(u)[1], **F32)


@pytest.mark.parametrize("variant", sorted(nf.VARIANTS))
def test_no_computation_mixes_networks(variant):
    model = nf.ResidualMLP(variant, seeds=(0, 1, 2), depth=3, width=16)
    with torch.no_grad():                            # move away from init so every parameter matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    u = torch.randn(3, 8, 64)
    model(u)[0].sum().backward()                     # the loss of network 0 only
    for name, p in model.named_parameters():
        assert not p.grad[1:].any(), f"{name}: network 0's loss reached another network's parameters"
        assert p.grad[0].any() or name.startswith("stem_bias"), name
    u2 = u.clone()
    u2[1] = float("nan")                             # a broken network does not leak into the others
    out = model(u2)
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[2]).all()


def test_initialization_scales_and_the_fixup_rules():
    model = nf.ResidualMLP("plain", seeds=range(4), depth=4, width=128)
    w1 = torch.stack(list(model.w1)).std().item()
    w2 = torch.stack(list(model.w2)).std().item()
    # 4 seeds x 4 blocks x 128^2 draws: the sample std is within 1% of its expectation
    assert w1 == pytest.approx(128 ** -0.5, rel=0.01) and w2 == pytest.approx((2 / 128) ** 0.5, rel=0.01)
    fixup = nf.ResidualMLP("fixup", seeds=range(4), depth=16, width=128)
    assert torch.stack(list(fixup.w1)).std().item() == pytest.approx(16 ** -0.5 * 128 ** -0.5, rel=0.01)
    assert not torch.stack(list(fixup.w2)).any() and not fixup.head_weight.any()
    assert fixup.b1 is None and all(not b.any() for b in fixup.fixup_bias)
    assert all(torch.equal(m, torch.ones_like(m)) for m in fixup.fixup_scale)


def test_the_batched_layers_are_the_single_network_layers(digits):
    u = digits.x_train[:32]
    for variant in ("batch_norm", "group_norm", "layer_norm", "dyt", "nf", "ws_group_norm"):
        model = nf.ResidualMLP(variant, seeds=(0, 1), depth=2, width=16, groups=4)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        got = model(u)[1]
        with torch.no_grad():
            x = F.linear(u, nf.scaled_weight_standardization(model.stem_weight[1], model.stem_gain[1])
                         if variant == "nf" else model.stem_weight[1], model.stem_bias[1])
            for l in range(2):
                w1, w2, b1, b2 = model.w1[l][1], model.w2[l][1], model.b1[l][1], model.b2[l][1]
                if variant == "nf":
                    beta = math.sqrt(1 + l * 0.2 ** 2)
                    w1 = nf.scaled_weight_standardization(w1, model.gain1[l][1])
                    w2 = nf.scaled_weight_standardization(w2, model.gain2[l][1], ref.RELU_GAMMA)
                    x = x + 0.2 * F.linear(torch.relu(F.linear(x / beta, w1, b1)), w2, b2)
                    continue
                if variant == "ws_group_norm":
                    w1, w2 = nf.weight_standardization(w1), nf.weight_standardization(w2)

                def norm(h, m):
                    weight, bias = m.weight[1, 0], m.bias[1, 0]
                    if variant == "batch_norm":
                        return F.batch_norm(h, None, None, weight, bias, training=True)
                    if variant in ("group_norm", "ws_group_norm"):
                        return F.group_norm(h, 4, weight, bias)
                    if variant == "layer_norm":
                        return F.layer_norm(h, (16,), weight, bias)
                    return torch.tanh(m.alpha[1] * h) * weight + bias

                x = x + norm(F.linear(torch.relu(norm(F.linear(x, w1, b1), model.norm1[l])), w2, b2), model.norm2[l])
            expected = F.linear(x, model.head_weight[1], model.head_bias[1])
        torch.testing.assert_close(got, expected, **F32, msg=variant)


def test_batch_norm_running_statistics_are_per_network(digits):
    model = nf.ResidualMLP("batch_norm", seeds=(0, 1), depth=1, width=8)
    x = digits.x_train[:64]
    model(torch.stack([x, 2 * x]))
    norm = model.norm1[0]
    h = [F.linear(v, model.stem_weight[s], model.stem_bias[s]) for s, v in enumerate((x, 2 * x))]
    pre = [F.linear(h[s], model.w1[0][s], model.b1[0][s]) for s in range(2)]
    for s in range(2):
        torch.testing.assert_close(norm.running_mean[8 * s:8 * (s + 1)], 0.1 * pre[s].mean(0), **F32)
        torch.testing.assert_close(norm.running_var[8 * s:8 * (s + 1)], 0.9 + 0.1 * pre[s].var(0), **F32)


def test_stream_statistics_follow_the_predicted_growth(digits):
    u = digits.x_train[:512]
    stats = {v: nf.stream_statistics(nf.ResidualMLP(v, seeds=range(3), depth=6, width=128), u)
             for v in ("plain", "batch_norm", "skipinit", "fixup", "nf")}
    plain = stats["plain"]["variance"]
    # Monte Carlo over 3 seeds of width 128: each block's growth factor within 30% of the predicted 2
    np.testing.assert_allclose(plain[:, 1:] / plain[:, :-1], 2.0, rtol=0.3)
    bn = stats["batch_norm"]["variance"]
    np.testing.assert_allclose(np.diff(bn, axis=1), 1.0, rtol=0.15)    # BN's branch has unit variance
    share = stats["batch_norm"]["branch_share"]
    np.testing.assert_allclose(share, 1 / bn[:, 1:], rtol=0.15)
    for v in ("skipinit", "fixup"):                                    # identity blocks at initialization
        np.testing.assert_allclose(stats[v]["variance"], stats[v]["variance"][:, :1].repeat(7, 1), rtol=1e-6)
        assert not stats[v]["branch_share"].any()
    # NF: each block adds alpha^2 = 0.04; one block's increment is a difference of two noisy variances of
    # order 1, so check the average over 6 blocks and 3 seeds (measured 0.036, within 25%)
    assert np.diff(stats["nf"]["variance"], axis=1).mean() == pytest.approx(0.04, rel=0.25)


def test_stream_statistics_leave_the_model_alone(digits):
    model = nf.ResidualMLP("batch_norm", seeds=(0,), depth=2, width=8)
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    nf.stream_statistics(model, digits.x_train[:64])
    assert not model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0, msg=k)


def test_resnet_variants_are_checked():
    with pytest.raises(ValueError, match="variant"):
        nf.ResidualMLP("instance_norm")
    with pytest.raises(ValueError, match="groups"):
        nf.ResidualMLP("group_norm", width=30, groups=8)
    with pytest.raises(ValueError, match="depth"):
        nf.ResidualMLP("plain", depth=0)


# ---------------------------------------------------------------- training
def test_first_sgd_step_is_minus_lr_times_the_gradient(digits):
    model = nf.ResidualMLP("skipinit", seeds=(0,), depth=2, width=8)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    perm = torch.randperm(len(digits.y_train), generator=torch.Generator().manual_seed(10_000))
    index = perm[:64]
    loss = F.cross_entropy(model(digits.x_train[index][None])[0], digits.y_train[index])
    grads = dict(zip(start, torch.autograd.grad(loss, list(model.parameters()))))
    runs = nf.train_seeds(model, digits, steps=1, lr=0.3)
    assert runs.loss[0, 0] == pytest.approx(loss.item(), rel=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), start[name] - 0.3 * grads[name], **F32, msg=name)


def test_first_step_with_agc_clips_every_parameter_but_the_head(digits):
    model = nf.ResidualMLP("nf", seeds=(0,), depth=2, width=8)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    perm = torch.randperm(len(digits.y_train), generator=torch.Generator().manual_seed(10_000))
    loss = F.cross_entropy(model(digits.x_train[perm[:64]][None])[0], digits.y_train[perm[:64]])
    grads = dict(zip(start, torch.autograd.grad(loss, list(model.parameters()))))
    runs = nf.train_seeds(model, digits, steps=1, lr=0.5, clipping=0.01)
    assert runs.clipped[0, 0] > 0
    for name, p in model.named_parameters():
        g = grads[name][0].double().numpy()
        if not name.startswith("head"):
            g = ref.adaptive_clip_grad(g, start[name][0].double().numpy(), clipping=0.01)
        expected = start[name][0] - 0.5 * torch.from_numpy(g).float()
        torch.testing.assert_close(p.detach()[0], expected, **F32, msg=name)


def test_networks_train_independently_and_per_network_settings_apply(digits):
    crowd = nf.train_seeds(nf.ResidualMLP("batch_norm", seeds=(0, 1, 0), depth=2, width=8), digits, steps=6,
                           lr=[0.05, 0.05, 0.2], clipping=[math.inf, 0.01, 0.01])
    alone = nf.train_seeds(nf.ResidualMLP("batch_norm", seeds=(1,), depth=2, width=8), digits, steps=6,
                           lr=0.05, clipping=0.01)
    np.testing.assert_allclose(crowd.loss[:, 1], alone.loss[:, 0], rtol=1e-4)
    np.testing.assert_allclose(crowd.test_accuracy[1], alone.test_accuracy[0], atol=1 / 359 + 1e-9)
    assert not crowd.clipped[:, 0].any() and crowd.clipped[:, 2].all()
    assert crowd.loss[0, 0] == crowd.loss[0, 2]                  # same seed: same start, same first batch
    assert crowd.loss[5, 0] != crowd.loss[5, 2]                  # different learning rates from then on


def test_a_diverged_network_is_recorded_and_does_not_disturb_the_others(digits):
    runs = nf.train_seeds(nf.ResidualMLP("plain", seeds=(0, 0), depth=6, width=16), digits, steps=12,
                          lr=[0.002, 50.0])
    assert list(runs.diverged) == [False, True]
    first_bad = int(np.argmax(~np.isfinite(runs.loss[:, 1])))
    assert np.isnan(runs.loss[first_bad:, 1]).all() and np.isnan(runs.test_accuracy[1])
    calm = nf.train_seeds(nf.ResidualMLP("plain", seeds=(0,), depth=6, width=16), digits, steps=12, lr=0.002)
    np.testing.assert_allclose(runs.loss[:, 0], calm.loss[:, 0], rtol=1e-4)
    assert np.isfinite(runs.final_loss()[0]) and np.isnan(runs.final_loss()[1])


def test_training_is_reproducible_and_checks_its_arguments(digits):
    a = nf.train_seeds(nf.ResidualMLP("dyt", seeds=(0, 1), depth=2, width=8), digits, steps=4)
    b = nf.train_seeds(nf.ResidualMLP("dyt", seeds=(0, 1), depth=2, width=8), digits, steps=4)
    np.testing.assert_array_equal(a.loss, b.loss)
    with pytest.raises(ValueError, match="lr needs one value or one per network"):
        nf.train_seeds(nf.ResidualMLP("dyt", seeds=(0, 1), depth=2, width=8), digits, steps=1, lr=[0.1, 0.2, 0.3])


def test_sweep_lays_out_a_paired_grid(digits):
    result = nf.sweep("skipinit", lrs=(0.01, 0.1), seeds=(0, 1), clippings=(None, 0.05), steps=3, depth=2,
                      width=8, data=digits)
    assert result.final_loss().shape == (2, 2, 2) and result.clipped.shape == (3, 2, 2, 2)
    assert result.loss.shape == (3, 2, 2, 2) and result.test_accuracy.shape == (2, 2, 2)
    assert not result.clipped[:, :, 0].any()                      # clipping None: AGC off for those networks
    first = result.loss[0]                                        # step 0: before any update, paired by seed
    assert np.all(first[:, :, 0] == first[0, 0, 0]) and np.all(first[:, :, 1] == first[0, 0, 1])
    assert result.diverged.shape == (2, 2, 2)


# ---------------------------------------------------------------- DyT versus LayerNorm probes
def test_norm_output_rms_in_a_pre_ln_transformer():
    torch.manual_seed(0)
    model = TinyTransformer(vocab=16, d_model=32, n_heads=2, depth=3, seq_len=8)
    tokens = torch.randint(0, 16, (4, 8))
    probe = nf.norm_output_rms(model, tokens)
    assert len(probe["names"]) == 7 and probe["output_rms"].shape == (7, 4, 8)
    rms_in = probe["input_rms"]
    # LayerNorm's output has rms sqrt(var / (var + eps)) ~ 1 whatever its input's scale (mean ~ 0 here)
    assert np.all(np.abs(probe["output_rms"] - 1) < 1e-2) and rms_in.max() / rms_in.min() > 1.5
    assert not any(m._forward_hooks for m in model.modules())
    nf.replace_layer_norms(model)
    dyt = nf.norm_output_rms(model, tokens)
    assert list(dyt["names"]) == list(probe["names"])
    # |tanh(u)| <= |u|: DyT's output is at most alpha times its input (gamma = 1, beta = 0) and at most 1;
    # it follows the input's scale instead of dividing it out
    assert np.all(dyt["output_rms"] <= 0.5 * dyt["input_rms"] * (1 + 1e-6))
    assert np.all(dyt["output_rms"] < 1) and not np.allclose(dyt["output_rms"], 1, atol=0.1)
