"""Conditional normalization: AdaIN against the reference InstanceNorm, FiLM against its formula, and the
identity-at-initialization property of adaLN-Zero.

Tolerances: float64 comparisons at 1e-12 (a handful of operations on values of order 10); exact zeros
where the gate multiplies by an exact zero.
"""

import numpy as np
import pytest
import torch

import normcourse.reference as ref
from normcourse.lab.conditional import AdaLNZeroBlock, FiLM, adain, adaln_zero_probe


def test_adain_is_instance_norm_with_the_style_statistics():
    generator = torch.Generator().manual_seed(0)
    content = torch.randn(2, 3, 5, 5, generator=generator, dtype=torch.float64)
    style = 4 + 2 * torch.randn(2, 3, 7, 6, generator=generator, dtype=torch.float64)
    out = adain(content, style, eps=1e-5)
    mean = style.mean((2, 3), keepdim=True).numpy()
    std = np.sqrt(style.var((2, 3), unbiased=False, keepdim=True).numpy() + 1e-5)
    np.testing.assert_allclose(out.numpy(), std * ref.instance_norm(content.numpy(), eps=1e-5) + mean, atol=1e-12)
    np.testing.assert_allclose(out.mean((2, 3)).numpy(), mean[..., 0, 0], atol=1e-12)
    with pytest.raises(ValueError):
        adain(torch.randn(2, 3), torch.randn(2, 3))


@pytest.mark.parametrize("shape, channel_dim", [((2, 4, 3, 3), 1), ((2, 5, 4), -1)])
def test_film_applies_a_predicted_gain_and_bias_per_channel(shape, channel_dim):
    torch.manual_seed(0)
    film = FiLM(cond_dim=6, num_features=4, channel_dim=channel_dim).double()
    x, z = torch.randn(*shape, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    gamma, beta = (z @ film.proj.weight.T + film.proj.bias).chunk(2, -1)
    moved = x.movedim(channel_dim, -1)
    expected = (gamma[:, None, :] * moved.flatten(1, -2) + beta[:, None, :]).view(moved.shape).movedim(-1, channel_dim)
    torch.testing.assert_close(film(x, z), expected, rtol=1e-12, atol=1e-12)


def test_adaln_zero_block_starts_as_the_identity_and_the_default_init_does_not():
    torch.manual_seed(0)
    x, c = torch.randn(3, 4, 16), torch.randn(3, 8)
    assert torch.equal(AdaLNZeroBlock(16, 2, cond_dim=8)(x, c), x)
    assert not torch.allclose(AdaLNZeroBlock(16, 2, cond_dim=8, zero_init=False)(x, c), x)


def test_adaln_zero_probe_only_the_gates_receive_gradient_at_initialization():
    out = adaln_zero_probe(1)
    assert out["identity_gap"] == 0 and out["branch_grad"] == 0 and out["shift_scale_grad"] == 0
    assert out["gate_grad"] > 0 and out["default_gap"] > 0.1 and out["condition_effect"] > 0
