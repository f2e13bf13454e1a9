"""Attention saturation probes: the softmax Jacobian's closed form against autograd, the exact c^2 scaling
of logits with zero biases, and the invariances a LayerNorm and QK-norm provide.

Tolerances: float64 Jacobians agree to 1e-12; the c^2 scaling and the invariances are computed in
float32 by the probe, so they hold to float32 rounding (rtol 1e-5) or to LayerNorm's eps (1e-3).
"""

import math

import numpy as np
import pytest
import torch

from normcourse.lab.saturation import attention_saturation, softmax_jacobian_norm


def test_softmax_jacobian_norm_matches_autograd():
    logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = [torch.linalg.matrix_norm(torch.autograd.functional.jacobian(lambda z: torch.softmax(z, -1), row))
                for row in logits]
    torch.testing.assert_close(softmax_jacobian_norm(torch.softmax(logits, -1)), torch.stack(expected),
                               rtol=1e-12, atol=1e-12)


def test_logits_scale_exactly_like_c_squared_without_normalization():
    out = attention_saturation([1.0, 3.0, 10.0], seeds=(0, 1), d_model=16, n_heads=2, seq_len=5, batch=2)
    np.testing.assert_allclose(out["max_logit"][:, 1] / out["max_logit"][:, 0], 9.0, rtol=1e-5)
    np.testing.assert_allclose(out["max_logit"][:, 2] / out["max_logit"][:, 0], 100.0, rtol=1e-5)
    assert np.all(np.diff(out["entropy"], axis=1) < 0)


def test_layer_norm_before_the_projections_removes_the_input_scale():
    out = attention_saturation([0.5, 5.0, 50.0], seeds=(0,), pre_norm=True, d_model=16, n_heads=2, seq_len=5, batch=2)
    np.testing.assert_allclose(out["entropy"][0], out["entropy"][0, 0], rtol=1e-3)


def test_qk_norm_removes_the_weight_scale_and_bounds_the_logits():
    scales = [0.5, 5.0, 50.0]
    plain = attention_saturation(scales, seeds=(0,), scale_of="weights", pre_norm=True, d_model=16, n_heads=2,
                                 seq_len=5, batch=2)
    qk = attention_saturation(scales, seeds=(0,), scale_of="weights", pre_norm=True, qk_norm=True, d_model=16,
                              n_heads=2, seq_len=5, batch=2)
    assert plain["max_logit"][0, -1] > 1000 * plain["max_logit"][0, 0]
    np.testing.assert_allclose(qk["max_logit"][0], qk["max_logit"][0, 0], rtol=1e-3)
    assert qk["max_logit"].max() <= math.sqrt(8)
    with pytest.raises(ValueError, match="scale_of"):
        attention_saturation([1.0], scale_of="bias")
