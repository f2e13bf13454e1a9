"""The reference implementation: one source of truth for the book, the problem sets and the grader.

Plain numpy, nothing else (a test parses every module's imports): the forward passes, the reduction
scopes as data, the hand-written backward passes, the Jacobians, the invariance checks and attention
entropy. The torch models and the measurements made on them live one layer up, in
:mod:`normcourse.lab`. Import the pieces from this package::

    import normcourse.reference as ref
    ref.layer_norm(x, (d,))
"""

from .scopes import (CHANNEL_FIRST_LAYOUTS, LAYOUTS, NORMS, SCOPES, Scope, reduction_axes, scope,
                     scope_mask, statistics_view)
from .forward import batch_norm, group_norm, instance_norm, layer_norm, normalize, rms_norm
from .backward import batch_norm_backward, layer_norm_backward, rms_norm_backward
from .jacobians import (batch_norm_jacobian, layer_norm_jacobian, layer_norm_jacobian_eigen,
                        rms_norm_jacobian, spectral_norm)
from .attention import attention_entropy
from .batchnorm_practice import (batch_norm_affine, batch_renorm, batch_renorm_correction, dropout_variance_ratio,
                                 fuse_conv_bn_weights, fuse_linear_bn_weights, ghost_batch_norm, sync_batch_norm,
                                 sync_batch_statistics)
from .normalization_free import (RELU_GAMMA, adaptive_clip_grad, agc_ratio, dynamic_tanh, dynamic_tanh_backward,
                                 residual_stream_variance, scaled_weight_standardization, unitwise_norm,
                                 weight_standardization)

__all__ = ["CHANNEL_FIRST_LAYOUTS", "LAYOUTS", "NORMS", "SCOPES", "Scope", "reduction_axes", "scope", "scope_mask",
           "statistics_view", "batch_norm", "group_norm", "instance_norm", "layer_norm", "normalize", "rms_norm",
           "batch_norm_backward", "layer_norm_backward", "rms_norm_backward", "batch_norm_jacobian",
           "layer_norm_jacobian", "layer_norm_jacobian_eigen", "rms_norm_jacobian", "spectral_norm",
           "attention_entropy", "batch_norm_affine", "fuse_linear_bn_weights", "fuse_conv_bn_weights",
           "ghost_batch_norm", "sync_batch_statistics", "sync_batch_norm", "batch_renorm_correction", "batch_renorm",
           "dropout_variance_ratio", "RELU_GAMMA", "weight_standardization", "scaled_weight_standardization",
           "unitwise_norm", "agc_ratio", "adaptive_clip_grad", "dynamic_tanh", "dynamic_tanh_backward",
           "residual_stream_variance"]
