"""Batched training of tiny Transformers: the hand-written Adam against torch.optim.Adam, the batched
(vmap) training loop against a plain one-model loop, and the bookkeeping of runs.

Tolerances: the same float32 arithmetic in a different order (batched matrix products, a flat parameter
vector) agrees with the plain loop to float32 rounding amplified over a few steps: rtol 1e-4 on losses.
The Adam update itself follows torch's order of operations and is compared at rtol 1e-6.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from normcourse.lab.transformer import TinyTransformer
from normcourse.lab.transformer_training import (AdamState, Run, adam_step, previous_token_batch,
                                                 train_previous_token)


def test_adam_step_matches_torch_adam_with_one_learning_rate_per_model():
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(2, 5, generator=generator)
    lrs = torch.tensor([0.01, 0.003])
    ours, state = start.clone(), AdamState(torch.zeros(2, 5), torch.zeros(2, 5))
    theirs = [torch.nn.Parameter(start[k].clone()) for k in range(2)]
    optimizer = torch.optim.Adam([{"params": [theirs[k]], "lr": float(lrs[k])} for k in range(2)], betas=(0.9, 0.98))
    for _ in range(7):
        grad = torch.randn(2, 5, generator=generator)
        state = adam_step(ours, grad, state, lrs, betas=(0.9, 0.98))
        for k in range(2):
            theirs[k].grad = grad[k].clone()
        optimizer.step()
    assert state.step == 7
    torch.testing.assert_close(ours, torch.stack([p.detach() for p in theirs]), rtol=1e-6, atol=1e-7)


def _plain_training(placement, warmup, seed, steps, lr=3e-3, **sizes):
    """The experiment for one run, written the ordinary way: one model, torch.optim.Adam, a ramp."""
    torch.manual_seed(seed)
    model = TinyTransformer(vocab=16, d_model=sizes["d_model"], n_heads=2, depth=sizes["depth"], seq_len=8,
                            placement=placement)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98))
    generator, losses = torch.Generator().manual_seed(seed + 100), []
    for step in range(steps):
        tokens, targets = previous_token_batch(generator)
        for group in optimizer.param_groups:
            group["lr"] = lr * (min(1.0, (step + 1) / warmup) if warmup else 1.0)
        loss = F.cross_entropy(model(tokens).reshape(-1, 16), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return np.array(losses)


def test_batched_training_matches_one_model_at_a_time():
    runs = [Run("post", 0, 0), Run("pre", 0, 1), Run("post", 3, 2), Run("deepnorm", 0, 0)]
    curves = train_previous_token(runs, steps=6, d_model=16, depth=2)
    assert curves.shape == (4, 6)
    for run, curve in zip(runs[:3], curves):
        np.testing.assert_allclose(curve, _plain_training(*run, steps=6, d_model=16, depth=2), rtol=1e-4)


def test_a_run_does_not_depend_on_its_batch_mates_and_order_is_kept():
    together = train_previous_token([Run("pre", 0, 3), Run("post", 0, 4), Run("post", 2, 3)], steps=4, d_model=16,
                                    depth=2)
    alone = train_previous_token([Run("post", 2, 3)], steps=4, d_model=16, depth=2)
    np.testing.assert_allclose(together[2], alone[0], rtol=1e-5)
    assert not np.allclose(together[1], together[2])


def test_admin_runs_are_profiled_before_training():
    curves = train_previous_token([Run("admin", 0, 0), Run("post", 0, 0)], steps=2, d_model=16, depth=2)
    assert curves[0, 0] != pytest.approx(curves[1, 0], rel=1e-6)    # different skip scales, same weights


def test_previous_token_batch_targets_are_the_previous_tokens():
    tokens, targets = previous_token_batch(torch.Generator().manual_seed(0), batch=3, seq_len=5, vocab=7)
    assert torch.equal(targets[:, 1:], tokens[:, :-1]) and torch.equal(targets[:, 0], tokens[:, -1])
    assert tokens.max() < 7


@pytest.mark.parametrize("placement", ["pre", "post", "sandwich", "deepnorm", "admin"])
def test_stacked_logits_equal_each_models_own_forward(placement):
    from torch.func import stack_module_state

    from normcourse.lab.transformer_training import stacked_logits

    models = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        model = TinyTransformer(vocab=16, d_model=16, n_heads=2, depth=3, seq_len=8, placement=placement).double()
        with torch.no_grad():                       # non-trivial gains, biases and skip scales
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        if placement == "admin":
            model.admin_profile(torch.randint(0, 16, (4, 8), generator=torch.Generator().manual_seed(seed)))
        models.append(model)
    params, buffers = stack_module_state(models)
    tokens = torch.randint(0, 16, (3, 5, 8), generator=torch.Generator().manual_seed(7))
    stacked = stacked_logits(models[0], params | buffers, tokens)
    for k, model in enumerate(models):
        torch.testing.assert_close(stacked[k], model(tokens[k]), rtol=1e-12, atol=1e-12)


def test_stacked_logits_refuses_what_it_does_not_implement():
    from normcourse.lab.transformer_training import stacked_logits

    for kwargs in (dict(causal=True), dict(qk_norm=True), dict(norm="rms_norm")):
        model = TinyTransformer(vocab=16, d_model=16, n_heads=2, depth=1, seq_len=8, **kwargs)
        with pytest.raises(ValueError, match="supports LayerNorm"):
            stacked_logits(model, dict(model.state_dict()), torch.zeros(1, 2, 8, dtype=torch.long))
