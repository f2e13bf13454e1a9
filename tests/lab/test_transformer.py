"""TinyTransformer: the residual placements and variants, attention against PyTorch's own, initialization,
determinism.

Tolerances: float32 model arithmetic is compared with float64 formulas at atol 1e-5 on values of
order 1 (float32 has ~7 significant digits, and a few dozen operations accumulate rounding).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normcourse.reference as ref
from normcourse.lab.transformer import (MultiHeadSelfAttention, TinyTransformer, TransformerBlock,
                                        deepnorm_constants, residual, sandwich_residual, scaled_residual)

D = 16


def known_sublayer(x):
    """A fixed nonlinear F, so the block equations can be checked with a hand formula."""
    return torch.tanh(2.0 * x) + 0.5


def known_sublayer_np(x):
    return np.tanh(2.0 * x) + 0.5


@pytest.fixture
def stream():
    return torch.randn(3, 5, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3 + 1


def test_post_placement_normalizes_the_sum(stream):
    y = residual(stream, known_sublayer, nn.LayerNorm(D, dtype=torch.float64), "post")
    x = stream.numpy()
    expected = ref.layer_norm(x + known_sublayer_np(x), (D,))
    np.testing.assert_allclose(y.detach().numpy(), expected, atol=1e-10)


def test_pre_placement_adds_the_branch_of_the_normalized_input(stream):
    y = residual(stream, known_sublayer, nn.LayerNorm(D, dtype=torch.float64), "pre")
    x = stream.numpy()
    expected = x + known_sublayer_np(ref.layer_norm(x, (D,)))
    np.testing.assert_allclose(y.detach().numpy(), expected, atol=1e-10)


def test_pre_and_post_differ_and_unknown_placement_raises(stream):
    norm = nn.LayerNorm(D, dtype=torch.float64)
    pre = residual(stream, known_sublayer, norm, "pre")
    post = residual(stream, known_sublayer, norm, "post")
    assert not torch.allclose(pre, post)
    # Post-LN output is normalized per token; Pre-LN output is not.
    assert torch.allclose(post.mean(-1), torch.zeros(3, 5, dtype=torch.float64), atol=1e-12)
    assert pre.mean(-1).abs().max() > 0.1
    with pytest.raises(ValueError, match="placement"):
        residual(stream, known_sublayer, norm, "middle")


class KnownAttention(nn.Module):
    """Stands in for attention: returns F(x) and uniform probabilities."""

    def forward(self, x):
        b, s, _ = x.shape
        return known_sublayer(x), torch.full((b, 1, s, s), 1.0 / s, dtype=x.dtype)


class Triple(nn.Module):
    def forward(self, h):
        return 3.0 * h


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_block_applies_the_placement_to_both_sublayers(placement, stream):
    block = TransformerBlock(D, 2, 4 * D, placement=placement).double()
    block.attn = KnownAttention()
    block.ffn = Triple()                                # a second known F
    y, probs = block(stream)
    x = stream.numpy()
    ln = lambda a: ref.layer_norm(a, (D,))             # noqa: E731 (unit gains at initialization)
    if placement == "post":
        h = ln(x + known_sublayer_np(x))
        expected = ln(h + 3.0 * h)
    else:
        h = x + known_sublayer_np(ln(x))
        expected = h + 3.0 * ln(h)
    np.testing.assert_allclose(y.detach().numpy(), expected, atol=1e-10)
    assert probs.shape == (3, 1, 5, 5)


def test_attention_matches_pytorch_scaled_dot_product_attention():
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(32, 4).double()
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    out, probs = attn(x)
    heads = lambda t: t.view(2, 7, 4, 8).transpose(1, 2)  # noqa: E731
    q, k, v = heads(attn.q_proj(x)), heads(attn.k_proj(x)), heads(attn.v_proj(x))
    mixed = F.scaled_dot_product_attention(q, k, v)
    expected = attn.out_proj(mixed.transpose(1, 2).reshape(2, 7, 32))
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 7, dtype=torch.float64))


def test_causal_attention_puts_no_mass_on_the_future():
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(16, 2, causal=True)
    _, probs = attn(torch.randn(1, 6, 16))
    assert torch.all(probs.triu(1) == 0)
    assert torch.allclose(probs[..., 0, 0], torch.ones(1, 2))


def test_model_returns_one_attention_map_per_block():
    torch.manual_seed(0)
    model = TinyTransformer(vocab=20, d_model=32, n_heads=4, depth=3, seq_len=10)
    logits, attention = model(torch.randint(0, 20, (2, 10)), return_attention=True)
    assert logits.shape == (2, 10, 20)
    assert len(attention) == 3 and all(p.shape == (2, 4, 10, 10) for p in attention)
    with pytest.raises(ValueError, match="seq_len"):
        model(torch.randint(0, 20, (2, 11)))


def test_final_norm_only_for_pre_ln():
    assert isinstance(TinyTransformer(depth=1, d_model=16, n_heads=2).final_norm, nn.LayerNorm)
    assert isinstance(TinyTransformer(depth=1, d_model=16, n_heads=2, placement="post").final_norm,
                      nn.Identity)
    rms = TinyTransformer(depth=1, d_model=16, n_heads=2, norm="rms_norm")
    assert isinstance(rms.final_norm, nn.RMSNorm) and isinstance(rms.blocks[0].norm_ffn, nn.RMSNorm)
    with pytest.raises(ValueError, match="pre"):
        TinyTransformer(depth=1, d_model=16, n_heads=2, norm="rms_norm", placement="post")


def test_xavier_init_bounds_and_zero_biases():
    torch.manual_seed(0)
    model = TinyTransformer(vocab=50, d_model=64, n_heads=4, depth=2, init="xavier")
    w = model.blocks[1].ffn.fc1.weight                          # (256, 64)
    bound = math.sqrt(6.0 / (64 + 256))
    assert w.abs().max() <= bound
    # Uniform(-a, a) has variance a^2 / 3; 16384 draws pin it to about 1%.
    assert abs(w.var().item() / (bound ** 2 / 3) - 1) < 0.05
    assert all(torch.all(m.bias == 0) for m in model.modules() if isinstance(m, nn.Linear))
    default = TinyTransformer(vocab=50, d_model=64, n_heads=4, depth=2, init="default")
    assert default.blocks[0].ffn.fc1.bias.abs().max() > 0          # PyTorch's default init
    assert default.token_embedding.weight.std() > 0.9             # nn.Embedding default: N(0, 1)


def test_same_seed_same_model():
    def logits(seed):
        torch.manual_seed(seed)
        model = TinyTransformer(vocab=20, d_model=32, n_heads=4, depth=2, seq_len=8, placement="post")
        return model(torch.arange(16).reshape(2, 8) % 20)

    torch.testing.assert_close(logits(3), logits(3), rtol=0, atol=0)
    assert not torch.allclose(logits(3), logits(4))


# ---------------------------------------------------------------------------------------------------
# Variants: DeepNorm, Admin, sandwich-LN, QK-norm (exact formulas in float64, tolerance 1e-10 as above)

def test_scaled_and_sandwich_residuals_follow_their_formulas(stream):
    x = stream.numpy()
    ln = lambda a: ref.layer_norm(a, (D,))            # noqa: E731
    norm = nn.LayerNorm(D, dtype=torch.float64)
    scaled = scaled_residual(stream, known_sublayer, norm, 2.5)
    np.testing.assert_allclose(scaled.detach().numpy(), ln(2.5 * x + known_sublayer_np(x)), atol=1e-10)
    sandwich = sandwich_residual(stream, known_sublayer, norm, norm)
    np.testing.assert_allclose(sandwich.detach().numpy(), x + ln(known_sublayer_np(ln(x))), atol=1e-10)
    # alpha = 1 is Post-LN, bit for bit
    assert torch.equal(scaled_residual(stream, known_sublayer, norm, 1.0), residual(stream, known_sublayer, norm, "post"))


def test_deepnorm_constants_match_the_paper():
    """Wang et al. (2022), encoder-only: alpha = (2N)^(1/4), beta = (8N)^(-1/4)."""
    alpha, beta = deepnorm_constants(8)
    assert alpha == pytest.approx(2.0) and beta == pytest.approx(8 ** -0.5)
    assert deepnorm_constants(1) == pytest.approx((2 ** 0.25, 8 ** -0.25))
    with pytest.raises(ValueError):
        deepnorm_constants(0)


def _built(placement, seed=3, **kwargs):
    torch.manual_seed(seed)
    return TinyTransformer(vocab=20, d_model=16, n_heads=2, depth=3, seq_len=6, placement=placement, **kwargs)


def test_one_seed_gives_the_same_weights_in_every_variant():
    reference = dict(_built("post").named_parameters())
    for placement in ("pre", "sandwich", "admin"):
        for name, p in _built(placement).named_parameters():
            if name in reference:
                assert torch.equal(p, reference[name]), (placement, name)
    for name, p in _built("post", qk_norm=True).named_parameters():
        if name in reference:
            assert torch.equal(p, reference[name]), ("qk_norm", name)


def test_deepnorm_scales_ffn_value_and_output_weights_by_beta_and_the_skip_by_alpha():
    post, deep = dict(_built("post").named_parameters()), dict(_built("deepnorm").named_parameters())
    alpha, beta = deepnorm_constants(3)
    for name, p in deep.items():
        scaled = any(key in name for key in ("ffn.fc1.weight", "ffn.fc2.weight", "v_proj.weight", "out_proj.weight"))
        torch.testing.assert_close(p, beta * post[name] if scaled else post[name], rtol=0, atol=0)
    model = _built("deepnorm")
    assert all(torch.equal(b.residual_scale, torch.full((2,), alpha)) for b in model.blocks)
    assert isinstance(model.final_norm, nn.Identity)


def test_post_ln_model_is_unchanged_by_the_residual_scale_buffer():
    """Post-LN computes N(1 * x + F(x)), which is N(x + F(x)) exactly: compare with residual(..., "post")."""
    model = _built("post").double()
    tokens = torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(0))
    x = model.embed(tokens)
    for block in model.blocks:
        kept, sublayers = block.sublayers()
        for sublayer, norm, _ in sublayers:
            x = residual(x, sublayer, norm, "post")
    torch.testing.assert_close(model.head(x), model(tokens), rtol=0, atol=0)


def test_admin_profile_follows_the_recursion():
    """omega_1 = 1, omega_{i+1}^2 = Var[omega_i x] + Var[F_i(x)] (all entries), x_i = N(omega_i x + F_i(x))."""
    model = _built("admin").double()
    tokens = torch.randint(0, 20, (4, 6), generator=torch.Generator().manual_seed(1))
    omega = model.admin_profile(tokens)
    assert omega.shape == (6,) and omega[0] == 1
    with torch.no_grad():
        x, expected = model.embed(tokens), [1.0]
        for block in model.blocks:
            _, sublayers = block.sublayers()
            for sublayer, norm, _ in sublayers:
                branch, w = sublayer(x), expected[-1]
                expected.append(float(np.sqrt(np.var(w * x.numpy()) + np.var(branch.numpy()))))
                x = norm(w * x + branch)
    np.testing.assert_allclose(omega.numpy(), expected[:-1], rtol=1e-12)
    np.testing.assert_allclose(torch.cat([b.residual_scale for b in model.blocks]).numpy(), expected[:-1], rtol=1e-12)
    with pytest.raises(ValueError, match="admin"):
        _built("post").admin_profile(tokens)


@pytest.mark.parametrize("placement", ["sandwich"])
def test_sandwich_block_normalizes_both_ends_of_each_branch(placement, stream):
    block = TransformerBlock(D, 2, 4 * D, placement=placement).double()
    block.attn = KnownAttention()
    block.ffn = Triple()
    y, _ = block(stream)
    ln = lambda a: ref.layer_norm(a, (D,))            # noqa: E731 (unit gains at initialization)
    x = stream.numpy()
    h = x + ln(known_sublayer_np(ln(x)))
    np.testing.assert_allclose(y.detach().numpy(), h + ln(3.0 * ln(h)), atol=1e-10)
    assert isinstance(_built("sandwich").final_norm, nn.LayerNorm)


def test_qk_norm_bounds_the_logits_whatever_the_weights():
    """LayerNorm'd q and k have length sqrt(d_h) (up to eps), so |logit| <= sqrt(d_h) by Cauchy-Schwarz."""
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(32, 4, qk_norm=True).double()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    with torch.no_grad():
        before = attn.logits(x)
        attn.q_proj.weight.mul_(50.0)
        attn.k_proj.weight.mul_(50.0)
        attn.q_proj.bias.zero_()
        attn.k_proj.bias.zero_()
        after = attn.logits(x)
    assert before.abs().max() <= math.sqrt(8) and after.abs().max() <= math.sqrt(8)
    plain = MultiHeadSelfAttention(32, 4).double()
    assert isinstance(plain.q_norm, nn.Identity)        # the default attention is untouched


def test_unknown_variant_raises():
    with pytest.raises(ValueError, match="placement"):
        TinyTransformer(depth=1, d_model=16, n_heads=2, placement="middle")
    with pytest.raises(ValueError, match="pre"):
        TinyTransformer(depth=1, d_model=16, n_heads=2, norm="rms_norm", placement="sandwich")
