"""Per-layer gradient norms of tiny Transformers (Post-LN, Pre-LN), against independent computations.

Tolerance: the gradient comparison redoes float32 autograd by hand, so it is held to float32 rounding
(rtol 1e-5).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from normcourse.lab.placements import compare_placements, per_layer_grad_norms
from normcourse.lab.transformer import TinyTransformer


def _grad_of_w2_by_hand(model, tokens, targets):
    """dL/dW2 of each block as sum over tokens of outer(dL/d(fc2 output), fc2 input)."""
    inputs, outputs = [], []
    hooks = []
    for block in model.blocks:
        def keep(module, args, out):
            inputs.append(args[0])
            out.retain_grad()
            outputs.append(out)
        hooks.append(block.ffn.fc2.register_forward_hook(keep))
    logits = model(tokens)
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).backward()
    for hook in hooks:
        hook.remove()
    return np.array([torch.einsum("bso,bsi->oi", out.grad, inp).norm().item()
                     for out, inp in zip(outputs, inputs)])


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_per_layer_grad_norms_match_a_hand_computed_gradient(placement):
    torch.manual_seed(0)
    model = TinyTransformer(vocab=30, d_model=32, n_heads=4, depth=4, seq_len=8, placement=placement)
    tokens = torch.randint(0, 30, (5, 8))
    targets = torch.randint(0, 30, (5, 8))
    measured = per_layer_grad_norms(model, tokens, targets)
    assert measured.shape == (4,) and measured.dtype == np.float64
    assert all(p.grad is None for p in model.parameters())     # autograd.grad leaves .grad alone
    np.testing.assert_allclose(measured, _grad_of_w2_by_hand(model, tokens, targets), rtol=1e-5)
    # and the same as the .grad that loss.backward() leaves behind
    np.testing.assert_allclose(measured, [b.ffn.fc2.weight.grad.norm().item() for b in model.blocks],
                               rtol=1e-6)


def test_compare_placements_is_deterministic_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = compare_placements(depths=(2, 3), d_model=32, n_heads=2, vocab=20, seq_len=8, batch=4)
    assert torch.equal(torch.random.get_rng_state(), before)
    second = compare_placements(depths=(2, 3), d_model=32, n_heads=2, vocab=20, seq_len=8, batch=4)
    assert set(first) == {"post", "pre"} and set(first["pre"]) == {2, 3}
    for placement in first:
        for depth in first[placement]:
            assert first[placement][depth].shape == (depth,)
            np.testing.assert_array_equal(first[placement][depth], second[placement][depth])


def test_pre_ln_last_block_gradient_shrinks_with_depth():
    """Xiong et al. (2020), Thm. 1: Pre-LN's last-layer gradient scales like 1/sqrt(L); Post-LN's does not.

    With d=128 and Xavier init we measure roughly 0.86 at depth 2 and 0.23 at depth 24 (ratio ~3.8,
    sqrt(12) ~ 3.5); the test asks for a factor of 2 so that it fails only if the effect is gone.
    """
    out = compare_placements(depths=(2, 24), placements=("pre",))
    assert out["pre"][24][-1] < out["pre"][2][-1] / 2


def test_compare_placements_with_rms_norm_is_pre_only():
    out = compare_placements(depths=(2,), d_model=16, n_heads=2, vocab=10, seq_len=4, batch=2,
                             placements=("pre",), norm="rms_norm")
    assert out["pre"][2].shape == (2,) and np.all(out["pre"][2] > 0)
    with pytest.raises(ValueError, match="pre"):
        compare_placements(depths=(2,), d_model=16, n_heads=2, placements=("post",), norm="rms_norm")
