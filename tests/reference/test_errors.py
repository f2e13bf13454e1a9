"""Every error the reference raises, with its message: a learner reads these, so they are part of the API.

Each row is (what is wrong, the call, the exception type, a regex the message must match). The
regexes pin the informative part of the message (what was expected and what was given).
"""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import normcourse.reference as ref
from normcourse.reference import invariance

rng = np.random.default_rng(50)
X4 = rng.normal(size=(2, 4, 3, 3))
X2 = rng.normal(size=(5, 4))
NAN = X4.copy()
NAN[1, 2, 0, 1] = np.nan
INF = X2.copy()
INF[3, 0] = -np.inf
ONES4, ZEROS4 = np.ones(4), np.zeros(4)

CASES = [
    # ---- rank
    ("batch_norm rank 1", lambda: ref.batch_norm(np.ones(4), None, None, training=True),
     ValueError, r"input must have at least 2 dimensions, got shape \(4,\) \(rank 1\)"),
    ("instance_norm rank 2", lambda: ref.instance_norm(X2),
     ValueError, r"input must have at least 3 dimensions, got shape \(5, 4\) \(rank 2\)"),
    ("group_norm rank 1", lambda: ref.group_norm(np.ones(4), 2),
     ValueError, r"at least 2 dimensions"),
    ("layer_norm rank 0", lambda: ref.layer_norm(np.float64(3.0), 1),
     ValueError, r"at least 1 dimensions, got shape \(\) \(rank 0\)"),
    ("layer_norm_jacobian matrix", lambda: ref.layer_norm_jacobian(X2),
     ValueError, r"x must be one vector of shape \(d,\), got shape \(5, 4\)"),
    ("rms_norm_jacobian matrix", lambda: ref.rms_norm_jacobian(X2),
     ValueError, r"x must be one vector"),
    ("batch_norm_jacobian matrix", lambda: ref.batch_norm_jacobian(X2),
     ValueError, r"x must be one vector"),
    ("layer_norm_jacobian_eigen matrix", lambda: ref.layer_norm_jacobian_eigen(X2),
     ValueError, r"x must be one vector"),
    ("spectral_norm of a vector", lambda: ref.spectral_norm(np.ones(3)),
     ValueError, r"J must have at least 2 dimensions"),
    ("spectral_norm of a tensor", lambda: ref.spectral_norm(np.ones((2, 2, 2))),
     ValueError, r"J must be a matrix, got shape \(2, 2, 2\)"),
    # ---- groups
    ("C not divisible by groups", lambda: ref.group_norm(X4, 3),
     ValueError, r"num_channels \(4\) must be divisible by num_groups \(3\)"),
    ("zero groups", lambda: ref.group_norm(X4, 0),
     ValueError, r"num_groups must be a positive integer, got 0"),
    ("fractional groups", lambda: ref.group_norm(X4, 2.0),
     ValueError, r"num_groups must be a positive integer, got 2.0"),
    # ---- normalized_shape
    ("LN normalized_shape not trailing", lambda: ref.layer_norm(X4, (4, 3)),
     ValueError, re.escape("normalized_shape [4, 3] must match the trailing dimensions of the input, "
                           "but the input has shape [2, 4, 3, 3]")),
    ("LN normalized_shape too long", lambda: ref.layer_norm(X2, (1, 5, 4)),
     ValueError, r"normalized_shape \[1, 5, 4\] must match the trailing dimensions"),
    ("LN normalized_shape empty", lambda: ref.layer_norm(X2, ()),
     ValueError, r"normalized_shape must have at least one dimension"),
    ("LN normalized_shape not ints", lambda: ref.layer_norm(X2, "4"),
     TypeError, r"normalized_shape must be an int or a sequence of ints, got '4'"),
    ("RMS normalized_shape", lambda: ref.rms_norm(X2, 5),
     ValueError, r"normalized_shape \[5\] must match the trailing dimensions of the input, but the input has shape \[5, 4\]"),
    ("LN backward normalized_shape", lambda: ref.layer_norm_backward(X2, X2, (5,)),
     ValueError, r"normalized_shape \[5\] must match"),
    ("RMS backward normalized_shape", lambda: ref.rms_norm_backward(X2, X2, (3,)),
     ValueError, r"normalized_shape \[3\] must match"),
    # ---- eps
    ("BN eps 0", lambda: ref.batch_norm(X4, None, None, training=True, eps=0),
     ValueError, r"eps must be a positive finite number, got 0.0"),
    ("LN eps negative", lambda: ref.layer_norm(X2, 4, eps=-1e-5),
     ValueError, r"eps must be a positive finite number, got -1e-05"),
    ("IN eps nan", lambda: ref.instance_norm(X4, eps=float("nan")),
     ValueError, r"eps must be a positive finite number, got nan"),
    ("GN eps inf", lambda: ref.group_norm(X4, 2, eps=float("inf")),
     ValueError, r"eps must be a positive finite number, got inf"),
    ("RMS eps 0 (None is the way to ask for the default)", lambda: ref.rms_norm(X2, 4, eps=0.0),
     ValueError, r"eps must be a positive finite number, got 0.0"),
    ("LN backward eps", lambda: ref.layer_norm_backward(X2, X2, 4, eps=0),
     ValueError, r"eps must be a positive"),
    ("BN backward eps", lambda: ref.batch_norm_backward(X2, X2, eps=-1),
     ValueError, r"eps must be a positive"),
    ("RMS backward eps", lambda: ref.rms_norm_backward(X2, X2, 4, eps=0),
     ValueError, r"eps must be a positive"),
    ("LN jacobian eps", lambda: ref.layer_norm_jacobian(np.ones(3), eps=0),
     ValueError, r"eps must be a positive"),
    ("RMS jacobian eps", lambda: ref.rms_norm_jacobian(np.ones(3), eps=-1.0),
     ValueError, r"eps must be a positive"),
    ("BN jacobian eps", lambda: ref.batch_norm_jacobian(np.ones(3), eps=0),
     ValueError, r"eps must be a positive"),
    ("LN eigen eps", lambda: ref.layer_norm_jacobian_eigen(np.ones(3), eps=0),
     ValueError, r"eps must be a positive"),
    # ---- non-finite input
    ("BN nan", lambda: ref.batch_norm(NAN, None, None, training=True),
     ValueError, r"input contains a non-finite value \(nan\) at index \(1, 2, 0, 1\); normalization statistics would be NaN"),
    ("LN -inf", lambda: ref.layer_norm(INF, 4),
     ValueError, r"input contains a non-finite value \(-inf\) at index \(3, 0\)"),
    ("IN nan", lambda: ref.instance_norm(NAN), ValueError, r"non-finite value \(nan\)"),
    ("GN nan", lambda: ref.group_norm(NAN, 2), ValueError, r"non-finite value \(nan\)"),
    ("RMS inf", lambda: ref.rms_norm(INF, 4), ValueError, r"non-finite value \(-inf\)"),
    ("weight nan", lambda: ref.layer_norm(X2, 4, np.array([1.0, np.nan, 1.0, 1.0])),
     ValueError, r"weight contains a non-finite value \(nan\) at index \(1,\)"),
    ("backward x nan", lambda: ref.batch_norm_backward(NAN, NAN), ValueError, r"input contains a non-finite"),
    ("backward dy inf", lambda: ref.rms_norm_backward(INF, X2, 4),
     ValueError, r"dy contains a non-finite value \(-inf\) at index \(3, 0\)"),
    ("jacobian x nan", lambda: ref.layer_norm_jacobian(np.array([1.0, np.nan])),
     ValueError, r"x contains a non-finite value"),
    ("spectral_norm nan", lambda: ref.spectral_norm(np.full((2, 2), np.nan)),
     ValueError, r"J contains a non-finite value"),
    ("string input", lambda: ref.layer_norm(np.array(["a", "b"]), 2),
     TypeError, r"input must be a real numeric array, got dtype <U1"),
    ("complex input", lambda: ref.rms_norm(np.ones(3, dtype=complex), 3),
     TypeError, r"input must be a real numeric array, got dtype complex128"),
    # ---- parameter shapes
    ("BN weight shape", lambda: ref.batch_norm(X4, None, None, np.ones(3), training=True),
     ValueError, r"weight must have shape \(4,\), got \(3,\)"),
    ("BN bias shape", lambda: ref.batch_norm(X4, None, None, None, np.ones((4, 1)), training=True),
     ValueError, r"bias must have shape \(4,\), got \(4, 1\)"),
    ("BN running_mean shape", lambda: ref.batch_norm(X4, np.zeros(3), np.ones(4)),
     ValueError, re.escape("running_mean must have shape (4,) to match the 4 channels of input shape "
                           "[2, 4, 3, 3], got (3,)")),
    ("BN running_var shape", lambda: ref.batch_norm(X4, ZEROS4, np.ones(5)),
     ValueError, r"running_var must have shape \(4,\)"),
    ("IN running stats shape", lambda: ref.instance_norm(X4, np.zeros(2), np.ones(2)),
     ValueError, r"running_mean must have shape \(4,\)"),
    ("LN weight shape", lambda: ref.layer_norm(X4, (3, 3), np.ones(9)),
     ValueError, r"weight must have shape \(3, 3\), got \(9,\)"),
    ("LN bias shape", lambda: ref.layer_norm(X4, (3, 3), None, np.ones((3, 1))),
     ValueError, r"bias must have shape \(3, 3\), got \(3, 1\)"),
    ("GN per-group weight", lambda: ref.group_norm(X4, 2, np.ones(2)),
     ValueError, r"weight must have shape \(4,\), got \(2,\)"),
    ("IN weight shape", lambda: ref.instance_norm(X4, weight=np.ones(3)),
     ValueError, r"weight must have shape \(4,\)"),
    ("RMS weight shape", lambda: ref.rms_norm(X2, 4, np.ones(5)),
     ValueError, r"weight must have shape \(4,\), got \(5,\)"),
    ("LN backward weight", lambda: ref.layer_norm_backward(X2, X2, 4, np.ones(5)),
     ValueError, r"weight must have shape \(4,\)"),
    ("LN backward bias", lambda: ref.layer_norm_backward(X2, X2, 4, None, np.ones(5)),
     ValueError, r"bias must have shape \(4,\)"),
    ("BN backward weight", lambda: ref.batch_norm_backward(X2, X2, np.ones(5)),
     ValueError, r"weight must have shape \(4,\)"),
    ("RMS backward weight", lambda: ref.rms_norm_backward(X2, X2, 4, np.ones(3)),
     ValueError, r"weight must have shape \(4,\)"),
    ("LN jacobian weight", lambda: ref.layer_norm_jacobian(np.ones(3), np.ones(4)),
     ValueError, r"weight must have shape \(3,\), got \(4,\)"),
    ("RMS jacobian weight", lambda: ref.rms_norm_jacobian(np.ones(3), np.ones(2)),
     ValueError, r"weight must have shape \(3,\)"),
    ("BN jacobian vector weight", lambda: ref.batch_norm_jacobian(np.arange(3.0), np.ones(3)),
     ValueError, r"weight must have shape \(\), got \(3,\)"),
    # ---- missing running statistics in evaluation
    ("BN eval without running stats", lambda: ref.batch_norm(X4, None, None),
     ValueError, r"running_mean and running_var are required when training=False"),
    ("BN eval with only running_mean", lambda: ref.batch_norm(X4, ZEROS4, None, training=False),
     ValueError, r"running_mean and running_var are required when training=False"),
    ("IN eval without running stats", lambda: ref.instance_norm(X4, use_input_stats=False),
     ValueError, r"running_mean and running_var are required when use_input_stats=False"),
    # ---- a single value per statistic in training
    ("BN training, one value per channel", lambda: ref.batch_norm(X2[:1], None, None, training=True),
     ValueError, r"Expected more than 1 value per channel when training, got input size \[1, 4\]"),
    ("IN, one spatial element", lambda: ref.instance_norm(X4[:, :, :1, :1]),
     ValueError, r"Expected more than 1 spatial element when training, got input size \[2, 4, 1, 1\]"),
    ("BN backward, one value per channel", lambda: ref.batch_norm_backward(X2[:1], X2[:1]),
     ValueError, r"Expected more than 1 value per channel when training"),
    ("BN jacobian, batch of one", lambda: ref.batch_norm_jacobian(np.ones(1)),
     ValueError, r"Expected more than 1 value per channel when training"),
    # ---- upstream gradient shape
    ("LN dy shape", lambda: ref.layer_norm_backward(X2.T, X2, 4),
     ValueError, re.escape("dy must have the shape of the input [5, 4] (it is dL/dy for the output, "
                           "which has the input's shape), got [4, 5]")),
    ("BN dy shape", lambda: ref.batch_norm_backward(X4[:1], X4),
     ValueError, r"dy must have the shape of the input \[2, 4, 3, 3\].*got \[1, 4, 3, 3\]"),
    ("RMS dy shape", lambda: ref.rms_norm_backward(X2[:, :3], X2, 4),
     ValueError, r"dy must have the shape of the input \[5, 4\].*got \[5, 3\]"),
    ("dy broadcastable is still refused", lambda: ref.layer_norm_backward(np.ones(4), X2, 4),
     ValueError, r"dy must have the shape of the input"),
    # ---- the invariance helpers
    ("invariance norm name", lambda: invariance.layer_output("group_norm", np.ones((2, 2)), np.ones((2, 2))),
     ValueError, r"norm must be one of \('batch_norm', 'layer_norm', 'rms_norm'\), got 'group_norm'"),
]


@pytest.mark.parametrize("what,call,exc,message", CASES, ids=[c[0] for c in CASES])
def test_error_message(what, call, exc, message):
    with pytest.raises(exc, match=message):
        call()


# Where PyTorch has the same check, it refuses the same input (the reference never accepts what torch rejects).
TORCH_AGREES = [
    ("C not divisible by groups", lambda: ref.group_norm(X4, 3), lambda t: F.group_norm(t(X4), 3)),
    ("LN normalized_shape", lambda: ref.layer_norm(X4, (4, 3)), lambda t: F.layer_norm(t(X4), (4, 3))),
    ("BN one value per channel", lambda: ref.batch_norm(X2[:1], None, None, training=True),
     lambda t: F.batch_norm(t(X2[:1]), None, None, training=True)),
    ("IN one spatial element", lambda: ref.instance_norm(X4[:, :, :1, :1]),
     lambda t: F.instance_norm(t(X4[:, :, :1, :1]))),
    ("BN weight shape", lambda: ref.batch_norm(X4, None, None, np.ones(3), training=True),
     lambda t: F.batch_norm(t(X4), None, None, t(np.ones(3)), training=True)),
    ("RMS normalized_shape", lambda: ref.rms_norm(X2, 5), lambda t: F.rms_norm(t(X2), [5])),
    ("BN eval without running stats", lambda: ref.batch_norm(X4, None, None),
     lambda t: F.batch_norm(t(X4), None, None, training=False)),
]


@pytest.mark.parametrize("what,ours,theirs", TORCH_AGREES, ids=[c[0] for c in TORCH_AGREES])
def test_torch_refuses_the_same_input(what, ours, theirs):
    with pytest.raises((ValueError, TypeError)):
        ours()
    with pytest.raises((ValueError, RuntimeError, TypeError)):
        theirs(lambda a: torch.from_numpy(np.ascontiguousarray(a)))


def test_valid_edge_inputs_do_not_raise():
    """The checks are not over-eager: integer input, list input, a 0-d weight for BN's column."""
    assert ref.layer_norm([[1, 2, 3]], 3).dtype == np.float64
    assert ref.batch_norm_jacobian(np.arange(3.0), 2.0).shape == (3, 3)
    assert ref.rms_norm(np.ones((2, 3)), [3], eps=None).shape == (2, 3)
    assert ref.group_norm(X4, np.int64(2)).shape == X4.shape
