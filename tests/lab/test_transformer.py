"""TinyTransformer: the residual placements, attention against PyTorch's own, initialization, determinism.

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
                                    residual)

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
