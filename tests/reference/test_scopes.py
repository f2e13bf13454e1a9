"""The scope table agrees with the forward passes.

The central check: perturb one input element and see which outputs move. An output moves exactly when
it shares a statistic (mean or variance) with the perturbed element, i.e. exactly on
``scope_mask(norm, layout, shape, index)``. Outputs outside the mask are bit-for-bit unchanged, inside
it they move by far more than rounding (the perturbation is 0.5 on unit-scale data), so the comparison
threshold 1e-9 separates the two without ambiguity.
"""

import itertools

import numpy as np
import pytest

import normcourse.reference as ref
from normcourse.reference import scopes

SHAPES = {"NCHW": (3, 4, 2, 3), "NC": (5, 6), "NCL": (3, 4, 5), "BSD": (2, 5, 6)}
GROUPS = 2
PAIRS = [(n, lay) for n in scopes.NORMS for lay in scopes.LAYOUTS if (n, lay) != ("instance_norm", "NC")]


def to_channel_first(layout, x):
    """BSD keeps features last; the channel-first forwards need them on axis 1."""
    return np.swapaxes(x, 1, 2) if layout == "BSD" else x


def apply(norm, layout, x):
    """The reference forward of ``norm`` for data in ``layout`` (statistics from the batch)."""
    if norm == "layer_norm":
        return ref.layer_norm(x, x.shape[1:] if layout != "BSD" else x.shape[-1:])
    if norm == "rms_norm":
        return ref.rms_norm(x, x.shape[1:] if layout != "BSD" else x.shape[-1:], eps=1e-6)
    if norm == "group_norm" and layout == "BSD":    # per token: the tokens are the samples
        return ref.group_norm(x.reshape(-1, x.shape[-1]), GROUPS).reshape(x.shape)
    xc = to_channel_first(layout, x)
    if norm == "batch_norm":
        y = ref.batch_norm(xc, None, None, training=True)
    elif norm == "instance_norm":
        y = ref.instance_norm(xc)
    else:
        y = ref.group_norm(xc, GROUPS)
    return to_channel_first(layout, y)


@pytest.mark.parametrize("norm,layout", PAIRS, ids=[f"{n}-{lay}" for n, lay in PAIRS])
def test_perturbing_one_element_moves_exactly_its_scope(norm, layout):
    shape = SHAPES[layout]
    rng = np.random.default_rng([60, scopes.NORMS.index(norm), scopes.LAYOUTS.index(layout)])
    x = rng.normal(size=shape)
    y = apply(norm, layout, x)
    for index in itertools.islice(np.ndindex(shape), 0, None, 7):   # every 7th element
        bumped = x.copy()
        bumped[index] += 0.5
        moved = np.abs(apply(norm, layout, bumped) - y) > 1e-9
        mask = scopes.scope_mask(norm, layout, shape, index, num_groups=GROUPS)
        assert mask[index]
        assert np.array_equal(moved, mask), f"{norm} {layout} index {index}"


@pytest.mark.parametrize("norm,layout", PAIRS, ids=[f"{n}-{lay}" for n, lay in PAIRS])
def test_outputs_in_one_scope_are_standardized(norm, layout):
    """Within one mask the output has mean 0 and variance 1 (mean square 1 for RMSNorm), up to eps."""
    shape = SHAPES[layout]
    x = np.random.default_rng(61).normal(loc=2.0, scale=3.0, size=shape)
    y = apply(norm, layout, x)
    for index in [(0,) * len(shape), tuple(s - 1 for s in shape)]:
        values = y[scopes.scope_mask(norm, layout, shape, index, num_groups=GROUPS)]
        if scopes.scope(norm, layout).centers:
            assert abs(values.mean()) < 1e-12
            assert abs(values.var() - 1) < 1e-5       # var / (var + eps), var ~ 9, eps 1e-5
        else:
            assert abs(np.mean(values ** 2) - 1) < 1e-6


@pytest.mark.parametrize("norm,layout", PAIRS, ids=[f"{n}-{lay}" for n, lay in PAIRS])
def test_mask_size_is_the_product_of_the_reduced_axes(norm, layout):
    shape = SHAPES[layout]
    sc = scopes.scope(norm, layout)
    expected = 1
    for axis in sc.reduced_axes:
        expected *= shape[axis] // (GROUPS if axis == sc.grouped_axis else 1)
    assert scopes.scope_mask(norm, layout, shape, (0,) * len(shape), num_groups=GROUPS).sum() == expected
    assert set(sc.kept_axes) | set(sc.reduced_axes) == set(range(len(shape)))
    assert not set(sc.kept_axes) & set(sc.reduced_axes)


def test_table_properties():
    for (norm, layout), sc in scopes.SCOPES.items():
        assert len(sc.layout) == len(layout) and sc.norm == norm
        assert sc.uses_batch == (norm == "batch_norm"), (norm, layout)
        assert sc.centers == (norm != "rms_norm")
        assert (sc.grouped_axis is not None) == (norm == "group_norm")
        assert sc.description
    assert set(scopes.SCOPES) == set(itertools.product(scopes.NORMS, scopes.LAYOUTS))
    # LayerNorm and RMSNorm share a scope, they differ in centering only
    for layout in scopes.LAYOUTS:
        assert scopes.reduction_axes("layer_norm", layout) == scopes.reduction_axes("rms_norm", layout)


def test_channel_first_axes_agree_with_the_named_layouts_and_extend_them():
    for ndim, layout in scopes.CHANNEL_FIRST_LAYOUTS.items():
        for norm in ("batch_norm", "instance_norm"):
            assert scopes.channel_first_axes(norm, ndim) == scopes.reduction_axes(norm, layout)
    assert scopes.channel_first_axes("batch_norm", 5) == (0, 2, 3, 4)
    assert scopes.channel_first_axes("instance_norm", 5) == (2, 3, 4)
    with pytest.raises(ValueError, match="defined for batch_norm and instance_norm"):
        scopes.channel_first_axes("layer_norm", 4)


def test_five_dimensional_input_uses_the_extended_axes():
    """(N, C, D, H, W): perturbing one element moves its whole channel (BN) or instance (IN)."""
    x = np.random.default_rng(62).normal(size=(2, 3, 2, 2, 2))
    index = (1, 2, 0, 1, 1)
    bumped = x.copy()
    bumped[index] += 0.5
    moved_bn = np.abs(ref.batch_norm(bumped, None, None, training=True)
                      - ref.batch_norm(x, None, None, training=True)) > 1e-9
    moved_in = np.abs(ref.instance_norm(bumped) - ref.instance_norm(x)) > 1e-9
    channel = np.zeros(x.shape, bool)
    channel[:, 2] = True
    instance = np.zeros(x.shape, bool)
    instance[1, 2] = True
    assert np.array_equal(moved_bn, channel) and np.array_equal(moved_in, instance)


def test_instance_norm_has_no_scope_without_positions():
    assert scopes.reduction_axes("instance_norm", "NC") == ()
    assert scopes.scope_mask("instance_norm", "NC", (3, 4), (1, 2)).sum() == 1
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        ref.instance_norm(np.ones((3, 4)))


def test_statistics_view_groups_channels_contiguously():
    x = np.arange(2 * 6 * 2).reshape(2, 6, 2)
    view = scopes.statistics_view(x, 3)
    assert view.shape == (2, 3, 2, 2)
    for g in range(3):
        assert np.array_equal(view[:, g], x[:, 2 * g:2 * g + 2])
    mask = scopes.scope_mask("group_norm", "NCL", x.shape, (0, 3, 1), num_groups=3)
    assert np.array_equal(np.flatnonzero(mask[0].any(axis=1)), [2, 3])


def test_scope_mask_arguments_are_checked():
    with pytest.raises(ValueError, match="has rank 3, layout 'NCHW' needs rank 4"):
        scopes.scope_mask("batch_norm", "NCHW", (2, 3, 4), (0, 0, 0))
    with pytest.raises(ValueError, match="group_norm needs num_groups"):
        scopes.scope_mask("group_norm", "NCHW", (2, 4, 3, 3), (0, 0, 0, 0))
    with pytest.raises(KeyError, match="no scope for norm='batchnorm'"):
        scopes.scope("batchnorm", "NCHW")


def test_reduction_axes_examples_from_the_docstring():
    assert scopes.reduction_axes("batch_norm", "NCHW") == (0, 2, 3)
    assert scopes.reduction_axes("layer_norm", "BSD") == (2,)
    assert scopes.reduction_axes("instance_norm", "NCHW") == (2, 3)
    assert scopes.reduction_axes("group_norm", "NCHW") == (1, 2, 3)
    assert scopes.scope("batch_norm", "BSD").param_axes == (2,)
