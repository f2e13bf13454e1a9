"""The numpy forward passes against torch.nn.functional, PyTorch being the outside oracle.

Tolerances:
- float64: max abs error <= 1e-10. Both sides compute in float64; they differ only by summation order,
  a few ulps (2.2e-16) times the number of summed terms, on outputs of magnitude <= sqrt(m).
- float32, elementwise: |ours - torch| <= 1e-5 * (1 + |y|) + 64 u |x| / s, with u = 2^-24 the float32
  unit roundoff and s = sqrt(var + eps) the statistic the element is divided by. The reference computes
  in float64 and rounds once (half an ulp). PyTorch works in float32: its statistics carry a relative
  error of a few ulps times log(number of elements), hence the first term (measured <= 5e-7 on 300
  random well-conditioned shapes, a 20x margin); and it forms x - mu with an absolute error of a few ulps
  of |x|, which the division by s amplifies, hence the second term. It matters when |x| >> s, e.g.
  GroupNorm groups of one element, where s = sqrt(eps): there torch float32 is off by up to 2e-4
  while the reference is the exact value rounded once (checked separately below).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import normcourse.reference as ref
from normcourse.reference import scopes

F64_TOL = 1e-10
F32_TOL = 1e-5
SEEDS = range(60)
EPS_CHOICES = (1e-5, 1e-3, 0.1, 1e-8)


def tensor(a):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


def max_err(ours, theirs):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    assert ours.shape == theirs.shape
    return float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)), initial=0.0))


def maybe(rng, make):
    return make() if rng.random() < 0.5 else None


def rand_spatial(rng, rank):
    return tuple(int(s) for s in rng.integers(1, 5, size=rank - 2))


# ---------------------------------------------------------------- random cases, one generator per norm
def case_batch_norm(seed, dtype=np.float64):
    rng = np.random.default_rng([1, seed])
    rank = int(rng.integers(2, 6))
    n, c = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    spatial = rand_spatial(rng, rank)
    if n * int(np.prod(spatial)) == 1:      # training needs more than one value per channel
        n = 2
    x = (rng.normal(size=(n, c) + spatial) * rng.choice([0.1, 1, 10]) + rng.normal()).astype(dtype)
    training = bool(rng.random() < 0.6)
    stats = (rng.normal(size=c), rng.uniform(0.1, 3, size=c)) if (not training or rng.random() < 0.5) \
        else (None, None)
    kwargs = dict(weight=maybe(rng, lambda: rng.normal(size=c)), bias=maybe(rng, lambda: rng.normal(size=c)),
                  training=training, momentum=float(rng.uniform(0.01, 0.9)), eps=float(rng.choice(EPS_CHOICES)))
    return x, stats, kwargs


def case_layer_norm(seed, dtype=np.float64):
    rng = np.random.default_rng([2, seed])
    leading = tuple(int(s) for s in rng.integers(1, 4, size=int(rng.integers(0, 3))))
    normalized = tuple(int(s) for s in rng.integers(1, 6, size=int(rng.integers(1, 4))))
    x = (rng.normal(size=leading + normalized) * rng.choice([0.1, 1, 10]) + rng.normal()).astype(dtype)
    kwargs = dict(weight=maybe(rng, lambda: rng.normal(size=normalized)),
                  bias=maybe(rng, lambda: rng.normal(size=normalized)), eps=float(rng.choice(EPS_CHOICES)))
    return x, normalized, kwargs


def case_instance_norm(seed, dtype=np.float64):
    rng = np.random.default_rng([3, seed])
    rank = int(rng.integers(3, 6))
    n, c = int(rng.integers(1, 4)), int(rng.integers(1, 5))
    spatial = rand_spatial(rng, rank)
    if int(np.prod(spatial)) == 1:
        spatial = (2,) + spatial[1:]
    x = (rng.normal(size=(n, c) + spatial) * rng.choice([0.1, 1, 10]) + rng.normal()).astype(dtype)
    use_input_stats = bool(rng.random() < 0.7)
    stats = (rng.normal(size=c), rng.uniform(0.1, 3, size=c)) if (not use_input_stats or rng.random() < 0.5) \
        else (None, None)
    kwargs = dict(weight=maybe(rng, lambda: rng.normal(size=c)), bias=maybe(rng, lambda: rng.normal(size=c)),
                  use_input_stats=use_input_stats, momentum=float(rng.uniform(0.01, 0.9)),
                  eps=float(rng.choice(EPS_CHOICES)))
    return x, stats, kwargs


def case_group_norm(seed, dtype=np.float64):
    rng = np.random.default_rng([4, seed])
    rank = int(rng.integers(2, 6))
    groups, per_group = int(rng.integers(1, 5)), int(rng.integers(1, 4))
    c = groups * per_group
    groups = int(rng.choice([groups, 1, c]))  # G = 1 (LayerNorm-like) and G = C (InstanceNorm-like) too
    n = int(rng.integers(1, 4))
    spatial = rand_spatial(rng, rank)
    if n * (c // groups) * int(np.prod(spatial)) == 1:
        n = 2   # torch refuses this one shape (see test_group_norm_single_element_groups)
    x = (rng.normal(size=(n, c) + spatial) * rng.choice([0.1, 1, 10]) + rng.normal()).astype(dtype)
    kwargs = dict(weight=maybe(rng, lambda: rng.normal(size=c)), bias=maybe(rng, lambda: rng.normal(size=c)),
                  eps=float(rng.choice(EPS_CHOICES)))
    return x, groups, kwargs


def case_rms_norm(seed, dtype=np.float64):
    rng = np.random.default_rng([5, seed])
    leading = tuple(int(s) for s in rng.integers(1, 4, size=int(rng.integers(0, 3))))
    normalized = tuple(int(s) for s in rng.integers(1, 6, size=int(rng.integers(1, 4))))
    x = (rng.normal(size=leading + normalized) * rng.choice([0.1, 1, 10]) + rng.normal()).astype(dtype)
    eps = None if rng.random() < 0.3 else float(rng.choice(EPS_CHOICES))
    return x, normalized, dict(weight=maybe(rng, lambda: rng.normal(size=normalized)), eps=eps)


def run_batch_norm(x, stats, kwargs, cast=np.float64):
    """Ours and torch's output, plus both sets of running statistics after the call."""
    ours_stats = [None if s is None else s.copy() for s in stats]
    torch_stats = [tensor(s.copy()) if s is not None else None for s in stats]
    kw = {k: (v.astype(cast) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
    ours = ref.batch_norm(x, *ours_stats, **kw)
    theirs = F.batch_norm(tensor(x), *torch_stats, weight=tensor(kw["weight"]), bias=tensor(kw["bias"]),
                          training=kw["training"], momentum=kw["momentum"], eps=kw["eps"])
    return ours, theirs, ours_stats, torch_stats


def run_instance_norm(x, stats, kwargs, cast=np.float64):
    ours_stats = [None if s is None else s.copy() for s in stats]
    torch_stats = [tensor(s.copy()) if s is not None else None for s in stats]
    kw = {k: (v.astype(cast) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
    ours = ref.instance_norm(x, *ours_stats, **kw)
    theirs = F.instance_norm(tensor(x), *torch_stats, weight=tensor(kw["weight"]), bias=tensor(kw["bias"]),
                             use_input_stats=kw["use_input_stats"], momentum=kw["momentum"], eps=kw["eps"])
    return ours, theirs, ours_stats, torch_stats


def assert_stats_match(ours_stats, torch_stats, tol=F64_TOL):
    for ours, theirs in zip(ours_stats, torch_stats):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            assert max_err(ours, theirs) <= tol


# ---------------------------------------------------------------- float64, a few hundred random cases
@pytest.mark.parametrize("seed", SEEDS)
def test_batch_norm_matches_torch(seed):
    x, stats, kwargs = case_batch_norm(seed)
    ours, theirs, ours_stats, torch_stats = run_batch_norm(x, stats, kwargs)
    assert ours.dtype == np.float64 and max_err(ours, theirs) <= F64_TOL
    assert_stats_match(ours_stats, torch_stats)


@pytest.mark.parametrize("seed", SEEDS)
def test_layer_norm_matches_torch(seed):
    x, shape, kw = case_layer_norm(seed)
    theirs = F.layer_norm(tensor(x), shape, tensor(kw["weight"]), tensor(kw["bias"]), kw["eps"])
    assert max_err(ref.layer_norm(x, shape, **kw), theirs) <= F64_TOL


@pytest.mark.parametrize("seed", SEEDS)
def test_instance_norm_matches_torch(seed):
    x, stats, kwargs = case_instance_norm(seed)
    ours, theirs, ours_stats, torch_stats = run_instance_norm(x, stats, kwargs)
    assert max_err(ours, theirs) <= F64_TOL
    assert_stats_match(ours_stats, torch_stats)


@pytest.mark.parametrize("seed", SEEDS)
def test_group_norm_matches_torch(seed):
    x, groups, kw = case_group_norm(seed)
    theirs = F.group_norm(tensor(x), groups, tensor(kw["weight"]), tensor(kw["bias"]), kw["eps"])
    assert max_err(ref.group_norm(x, groups, **kw), theirs) <= F64_TOL


@pytest.mark.parametrize("seed", SEEDS)
def test_rms_norm_matches_torch(seed):
    x, shape, kw = case_rms_norm(seed)
    theirs = F.rms_norm(tensor(x), list(shape), tensor(kw["weight"]), kw["eps"])
    assert max_err(ref.rms_norm(x, shape, **kw), theirs) <= F64_TOL


def test_cases_cover_the_edges():
    """The generators above really produce the edge cases the suite promises."""
    bn = [case_batch_norm(s) for s in SEEDS]
    assert any(x.shape[0] == 1 for x, _, _ in bn) and any(x.shape[1] == 1 for x, _, _ in bn)
    assert {x.ndim for x, _, _ in bn} == {2, 3, 4, 5}
    assert {k["training"] for _, _, k in bn} == {True, False}
    assert any(k["weight"] is None for _, _, k in bn) and any(k["weight"] is not None for _, _, k in bn)
    assert {len(s) for _, s, _ in (case_layer_norm(s) for s in SEEDS)} == {1, 2, 3}
    gn = [case_group_norm(s) for s in SEEDS]
    assert any(g == 1 and x.shape[1] > 1 for x, g, _ in gn) and any(g == x.shape[1] > 1 for x, g, _ in gn)
    assert any(k["eps"] is None for _, _, k in (case_rms_norm(s) for s in SEEDS))
    assert len({k["eps"] for _, _, k in bn}) == len(EPS_CHOICES)
    inorm = [case_instance_norm(s) for s in SEEDS]
    assert any(st[0] is not None and k["use_input_stats"] for _, st, k in inorm)


# ---------------------------------------------------------------- running statistics over several steps
@pytest.mark.parametrize("seed", range(5))
def test_batch_norm_running_stats_after_several_updates(seed):
    rng = np.random.default_rng([6, seed])
    c = int(rng.integers(1, 6))
    mean, var = np.zeros(c), np.ones(c)         # PyTorch's initial running statistics
    t_mean, t_var = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    momentum = float(rng.uniform(0.05, 0.5))
    for _ in range(6):
        x = rng.normal(loc=3.0, scale=2.0, size=(int(rng.integers(2, 6)), c, 3, 2))
        ours = ref.batch_norm(x, mean, var, training=True, momentum=momentum)
        theirs = F.batch_norm(tensor(x), t_mean, t_var, training=True, momentum=momentum)
        assert max_err(ours, theirs) <= F64_TOL
    assert max_err(mean, t_mean) <= F64_TOL and max_err(var, t_var) <= F64_TOL
    assert np.all(np.abs(mean - 3.0) < 2.0)     # the running mean has moved toward the data's mean
    x = rng.normal(size=(4, c, 3, 2))
    w, b = rng.normal(size=c), rng.normal(size=c)
    eval_out = F.batch_norm(tensor(x), t_mean, t_var, tensor(w), tensor(b), training=False)
    assert max_err(ref.batch_norm(x, mean, var, w, b, training=False), eval_out) <= F64_TOL


@pytest.mark.parametrize("seed", range(5))
def test_instance_norm_running_stats_after_several_updates(seed):
    rng = np.random.default_rng([7, seed])
    c = int(rng.integers(1, 6))
    mean, var = np.zeros(c), np.ones(c)
    t_mean, t_var = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    for _ in range(6):
        x = rng.normal(loc=-1.0, scale=3.0, size=(int(rng.integers(1, 5)), c, 5))
        ours = ref.instance_norm(x, mean, var, momentum=0.2)
        theirs = F.instance_norm(tensor(x), t_mean, t_var, momentum=0.2)
        assert max_err(ours, theirs) <= F64_TOL
    assert max_err(mean, t_mean) <= F64_TOL and max_err(var, t_var) <= F64_TOL
    x = rng.normal(size=(2, c, 5))
    eval_out = F.instance_norm(tensor(x), t_mean, t_var, use_input_stats=False)
    assert max_err(ref.instance_norm(x, mean, var, use_input_stats=False), eval_out) <= F64_TOL


def test_batch_norm_eval_does_not_touch_running_stats():
    rng = np.random.default_rng(8)
    mean, var = rng.normal(size=3), rng.uniform(1, 2, size=3)
    before = (mean.copy(), var.copy())
    ref.batch_norm(rng.normal(size=(4, 3)), mean, var, training=False)
    assert np.array_equal(mean, before[0]) and np.array_equal(var, before[1])


# ---------------------------------------------------------------- float32
FLOAT32_CASES = {
    "batch_norm": lambda s: case_batch_norm(s, np.float32),
    "layer_norm": lambda s: case_layer_norm(s, np.float32),
    "instance_norm": lambda s: case_instance_norm(s, np.float32),
    "group_norm": lambda s: case_group_norm(s, np.float32),
    "rms_norm": lambda s: case_rms_norm(s, np.float32),
}


def float32_pair(norm, seed):
    """(ours, torch's) outputs for a float32 case; parameters are cast to float32 for both sides."""
    x, extra, kw = FLOAT32_CASES[norm](seed)
    f32 = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    if norm == "batch_norm":
        stats = tuple(None if s is None else s.astype(np.float32) for s in extra)
        ours, theirs, _, _ = run_batch_norm(x, stats, kw, cast=np.float32)
    elif norm == "instance_norm":
        stats = tuple(None if s is None else s.astype(np.float32) for s in extra)
        ours, theirs, _, _ = run_instance_norm(x, stats, kw, cast=np.float32)
    elif norm == "layer_norm":
        ours = ref.layer_norm(x, extra, **f32)
        theirs = F.layer_norm(tensor(x), extra, tensor(f32["weight"]), tensor(f32["bias"]), f32["eps"])
    elif norm == "group_norm":
        ours = ref.group_norm(x, extra, **f32)
        theirs = F.group_norm(tensor(x), extra, tensor(f32["weight"]), tensor(f32["bias"]), f32["eps"])
    else:
        ours = ref.rms_norm(x, extra, **f32)
        theirs = F.rms_norm(tensor(x), list(extra), tensor(f32["weight"]), f32["eps"])
    return ours, theirs


def divisor(norm, seed):
    """s = sqrt(var + eps) (RMSNorm: sqrt(mean square + eps)) of every element, in float64."""
    x, extra, kw = FLOAT32_CASES[norm](seed)
    x = x.astype(np.float64)
    channel = (1, -1) + (1,) * (x.ndim - 2)
    if norm == "batch_norm" and not kw["training"] or norm == "instance_norm" and not kw["use_input_stats"]:
        var = extra[1].astype(np.float32).astype(np.float64).reshape(channel)
    elif norm in ("batch_norm", "instance_norm"):
        var = x.var(axis=scopes.channel_first_axes(norm, x.ndim), keepdims=True)
    elif norm == "group_norm":
        grouped = scopes.statistics_view(x, extra)
        var = np.broadcast_to(grouped.var(axis=tuple(range(2, grouped.ndim)), keepdims=True), grouped.shape)
        var = var.reshape(x.shape)
    else:
        axes = scopes.trailing_axes(x.ndim, len(extra))
        var = x.var(axis=axes, keepdims=True) if norm == "layer_norm" else np.mean(x * x, axis=axes, keepdims=True)
    eps = kw["eps"] if kw["eps"] is not None else float(np.finfo(np.float32).eps)
    return np.sqrt(var + eps) * np.ones_like(x)


@pytest.mark.parametrize("norm", list(FLOAT32_CASES))
@pytest.mark.parametrize("seed", range(15))
def test_float32_in_float32_out_and_matches_torch(norm, seed):
    ours, theirs = float32_pair(norm, seed)
    assert ours.dtype == np.float32 and theirs.dtype == torch.float32
    x = FLOAT32_CASES[norm](seed)[0].astype(np.float64)
    y = ours.astype(np.float64)
    allowed = F32_TOL * (1 + np.abs(y)) + 64 * 2.0 ** -24 * np.abs(x) / divisor(norm, seed)
    gap = np.abs(y - theirs.numpy())
    assert np.all(gap <= allowed), f"worst gap {gap.max():.3g} where {allowed.flat[gap.argmax()]:.3g} allowed"


def test_float32_tolerance_has_teeth():
    """The allowance is far below the error of a plausible bug: the unbiased variance (m - 1)."""
    x = np.random.default_rng(20).normal(size=(4, 64)).astype(np.float32)
    theirs = F.layer_norm(tensor(x), (64,)).numpy().astype(np.float64)
    unbiased = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, ddof=1, keepdims=True) + 1e-5)
    s = np.sqrt(x.astype(np.float64).var(-1, keepdims=True) + 1e-5)
    allowed = F32_TOL * (1 + np.abs(theirs)) + 64 * 2.0 ** -24 * np.abs(x) / s
    assert np.any(np.abs(unbiased - theirs) > 10 * allowed)


def test_float32_is_the_exact_result_rounded_once_even_when_torch_float32_is_not():
    """Mean/std = 1e4: the variance is ill-conditioned in float32, not in the float64 reference."""
    x = (1e4 + np.random.default_rng(9).normal(size=(4, 256))).astype(np.float32)
    ours = ref.layer_norm(x, (256,))
    exact = ref.layer_norm(x.astype(np.float64), (256,))
    assert ours.dtype == np.float32
    assert np.array_equal(ours, exact.astype(np.float32))
    torch32 = F.layer_norm(tensor(x), (256,)).numpy()
    assert np.abs(torch32 - exact).max() > np.abs(ours - exact).max()


def test_integer_input_returns_float64():
    x = np.arange(24).reshape(2, 3, 4)
    y = ref.layer_norm(x, (4,))
    assert y.dtype == np.float64
    assert max_err(y, F.layer_norm(torch.from_numpy(x.astype(np.float64)), (4,))) <= F64_TOL


# ---------------------------------------------------------------- layouts, magnitudes, degenerate input
def non_contiguous_inputs():
    rng = np.random.default_rng(10)
    yield "transposed", rng.normal(size=(5, 4, 6, 3)).transpose(3, 2, 1, 0)      # (3, 6, 4, 5)
    yield "strided", rng.normal(size=(3, 12, 4, 10))[:, ::2, :, ::2]              # (3, 6, 4, 5)
    yield "fortran", np.asfortranarray(rng.normal(size=(3, 6, 4, 5)))


@pytest.mark.parametrize("label,x", list(non_contiguous_inputs()), ids=lambda v: v if isinstance(v, str) else "")
def test_non_contiguous_inputs(label, x):
    assert not x.flags.c_contiguous
    t = tensor(x)
    w6 = np.linspace(0.5, 2.0, 6)
    assert max_err(ref.batch_norm(x, None, None, w6, -w6, training=True),
                   F.batch_norm(t, None, None, tensor(w6), tensor(-w6), training=True)) <= F64_TOL
    assert max_err(ref.layer_norm(x, (4, 5)), F.layer_norm(t, (4, 5))) <= F64_TOL
    assert max_err(ref.instance_norm(x), F.instance_norm(t)) <= F64_TOL
    assert max_err(ref.group_norm(x, 3, w6), F.group_norm(t, 3, tensor(w6))) <= F64_TOL
    assert max_err(ref.rms_norm(x, (5,), eps=1e-6), F.rms_norm(t, [5], eps=1e-6)) <= F64_TOL


def test_large_magnitudes():
    x = 1e4 + 1e4 * np.random.default_rng(11).normal(size=(4, 6, 5, 5))
    t = tensor(x)
    assert max_err(ref.batch_norm(x, None, None, training=True), F.batch_norm(t, None, None, training=True)) <= F64_TOL
    assert max_err(ref.layer_norm(x, (6, 5, 5)), F.layer_norm(t, (6, 5, 5))) <= F64_TOL
    assert max_err(ref.instance_norm(x), F.instance_norm(t)) <= F64_TOL
    assert max_err(ref.group_norm(x, 2), F.group_norm(t, 2)) <= F64_TOL
    assert max_err(ref.rms_norm(x, (5, 5)), F.rms_norm(t, [5, 5])) <= F64_TOL


def test_zero_variance_input_gives_the_bias():
    x = np.full((3, 4, 2, 2), 7.5)
    t = tensor(x)
    b = np.arange(4.0)
    outs = {
        "batch_norm": (ref.batch_norm(x, None, None, None, b, training=True),
                       F.batch_norm(t, None, None, None, tensor(b), training=True)),
        "instance_norm": (ref.instance_norm(x, bias=b), F.instance_norm(t, bias=tensor(b))),
        "group_norm": (ref.group_norm(x, 2, bias=b), F.group_norm(t, 2, bias=tensor(b))),
    }
    for name, (ours, theirs) in outs.items():
        assert max_err(ours, theirs) <= F64_TOL, name
        assert np.array_equal(ours, np.broadcast_to(b.reshape(1, 4, 1, 1), x.shape)), name
    ln = ref.layer_norm(x, (2, 2), bias=np.ones((2, 2)))
    assert max_err(ln, F.layer_norm(t, (2, 2), bias=torch.ones(2, 2, dtype=torch.float64))) <= F64_TOL
    assert np.array_equal(ln, np.ones_like(x))
    zeros = np.zeros((2, 8))
    assert np.array_equal(ref.rms_norm(zeros, (8,)), zeros)
    assert max_err(ref.rms_norm(zeros, (8,)), F.rms_norm(tensor(zeros), [8])) == 0


# ---------------------------------------------------------------- relations between the norms
@pytest.mark.parametrize("seed", range(10))
def test_group_norm_with_one_group_is_layer_norm_with_per_channel_affine(seed):
    rng = np.random.default_rng([12, seed])
    n, c, h, w = (int(v) for v in rng.integers(1, 5, size=4))
    x = rng.normal(size=(n, c, h, w))
    gain, bias = rng.normal(size=c), rng.normal(size=c)
    per_channel = lambda p: np.broadcast_to(p[:, None, None], (c, h, w))  # noqa: E731
    gn = ref.group_norm(x, 1, gain, bias)
    ln = ref.layer_norm(x, (c, h, w), per_channel(gain), per_channel(bias))
    assert max_err(gn, ln) <= F64_TOL


@pytest.mark.parametrize("seed", range(10))
def test_group_norm_with_one_channel_per_group_is_instance_norm(seed):
    rng = np.random.default_rng([13, seed])
    n, c, h, w = (int(v) for v in rng.integers(1, 5, size=4))
    h = max(h, 2)
    x = rng.normal(size=(n, c, h, w))
    gain, bias = rng.normal(size=c), rng.normal(size=c)
    assert max_err(ref.group_norm(x, c, gain, bias), ref.instance_norm(x, weight=gain, bias=bias)) <= F64_TOL


def test_group_norm_single_element_groups():
    """Groups of one element normalize to 0, so the output is the bias.

    PyTorch refuses exactly one such shape, N = 1 (its check multiplies N by the group size and the
    spatial size), and returns the bias for N >= 2; the reference returns the bias in both cases.
    """
    bias = np.array([1.0, -2.0, 3.0])
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        F.group_norm(torch.ones(1, 3, dtype=torch.float64), 3, bias=tensor(bias))
    x = np.random.default_rng(18).normal(size=(2, 3))
    assert max_err(ref.group_norm(x, 3, bias=bias), F.group_norm(tensor(x), 3, bias=tensor(bias))) <= F64_TOL
    assert np.array_equal(ref.group_norm(x[:1], 3, bias=bias), bias[None, :])


def test_batch_norm_with_batch_one_is_instance_norm_only_in_training_and_with_space():
    x = np.random.default_rng(14).normal(size=(1, 3, 4, 4))
    assert max_err(ref.batch_norm(x, None, None, training=True), ref.instance_norm(x)) <= F64_TOL
    rm, rv = np.zeros(3), np.ones(3)
    assert max_err(ref.batch_norm(x, rm, rv, training=False), ref.instance_norm(x)) > 0.1


def test_batch_norm_training_with_batch_one_without_space_raises_like_torch():
    x = np.random.default_rng(15).normal(size=(1, 5))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training") as ours:
        ref.batch_norm(x, None, None, training=True)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training") as theirs:
        F.batch_norm(tensor(x), None, None, training=True)
    assert str(ours.value).split(",")[0] == str(theirs.value).split(",")[0]
    # evaluation mode is fine: nothing is estimated from the batch
    assert max_err(ref.batch_norm(x, np.zeros(5), np.ones(5)),
                   F.batch_norm(tensor(x), torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64))) <= F64_TOL


# ---------------------------------------------------------------- RMSNorm's eps=None
def test_rms_norm_eps_none_is_machine_epsilon_of_the_input_dtype():
    rng = np.random.default_rng(16)
    x64 = rng.normal(size=(3, 8))
    assert np.array_equal(ref.rms_norm(x64, (8,)), ref.rms_norm(x64, (8,), eps=float(np.finfo(np.float64).eps)))
    # float32 input whose mean square (about 1e-8) is below float32's eps (1.19e-7): eps dominates
    x32 = (1e-4 * rng.normal(size=(3, 8))).astype(np.float32)
    ours = ref.rms_norm(x32, (8,))
    theirs = F.rms_norm(tensor(x32), [8])
    assert ours.dtype == np.float32
    assert np.abs(ours - theirs.numpy()).max() <= F32_TOL
    with_f32_eps = ref.rms_norm(x32, (8,), eps=float(np.finfo(np.float32).eps))
    with_f64_eps = ref.rms_norm(x32, (8,), eps=float(np.finfo(np.float64).eps))
    assert np.array_equal(ours, with_f32_eps)
    assert np.abs(ours - with_f64_eps).max() > 0.5          # so the choice of eps is visible


def test_rms_norm_eps_is_inside_the_square_root():
    x = np.random.default_rng(17).normal(size=(2, 6))
    eps = 0.5
    expected = x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + eps)
    outside = x / (np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True)) + eps)
    ours = ref.rms_norm(x, (6,), eps=eps)
    assert max_err(ours, expected) <= F64_TOL and max_err(ours, outside) > 1e-2
    assert max_err(ours, F.rms_norm(tensor(x), [6], eps=eps)) <= F64_TOL


def test_rms_norm_default_eps_follows_torch_compute_dtype_for_float16():
    """torch computes float16 RMSNorm in float32 and takes float32's epsilon when eps=None."""
    x = np.array([[1e-4, 2e-4, -1e-4]], dtype=np.float16)
    ours = ref.rms_norm(x, (3,))
    theirs = F.rms_norm(torch.from_numpy(x), (3,)).numpy()
    assert ours.dtype == np.float16
    np.testing.assert_allclose(ours.astype(np.float64), theirs.astype(np.float64), rtol=2e-3, atol=1e-3)
