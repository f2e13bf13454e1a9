"""Hidden-test parts of problem sets 1-3: the reference passes, wrong implementations fail, cases cover
the promised edge cases, and every Part agrees with its notebook cell.

Each wrong implementation below is a mistake the course warns about (unbiased variance, eps outside the
square root, Keras momentum, wrong axes, forward differences...). It must fail with a GradingError whose
message names the failing case, so a learner knows which input to reproduce.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import normcourse.reference as ref
from normcourse.grading.cases import EDGE_LABELS
from normcourse.grading.compare import GradingError
from normcourse.grading.parts import get_part, parts_of
from normcourse.problems import ps02_batchnorm_state as ps02
from normcourse.lab.gradcheck import upstream_loss
from normcourse.problems import ps03_backward as ps03

ROOT = Path(__file__).resolve().parents[2]
PROBLEM_SETS = ("ps01_scopes", "ps02_batchnorm_state", "ps03_backward")
ALL_PARTS = [p for ps in PROBLEM_SETS for p in parts_of(ps)]


def _ids(parts):
    return [f"{p.problem_set}:{p.grade_id}" for p in parts]


# The reference passing its own parts, and five parts per set, are checked in test_all_parts.py.

# ---------------------------------------------------------------------------------------------------
# Edge-case coverage. Parts whose inputs are not activations cover what applies to them.

EDGE_EXEMPT = {
    # (norm, layout) strings: there are no arrays at all.
    "reduction_axes_hidden": set(EDGE_LABELS),
    # Running statistics, not a batch: zero variance and magnitude 1e4 are covered by their own cases.
    "eval_affine_hidden": set(EDGE_LABELS),
    # A generic utility on arbitrary points: batch size and variance have no meaning; 1e4 would make
    # central differences with h ~ 1e-5 meaningless.
    "numerical_gradient_hidden": {"batch size 1", "constant input", "magnitude 1e4"},
    "relative_error_hidden": {"batch size 1", "constant input", "float32", "non-contiguous"},
}


@pytest.mark.parametrize("part", ALL_PARTS, ids=_ids(ALL_PARTS))
def test_cases_cover_edge_cases(part):
    labels = " | ".join(case.label for case in part.make_cases())
    for edge in set(EDGE_LABELS) - EDGE_EXEMPT.get(part.grade_id, set()):
        assert edge in labels, f"{part.grade_id}: no {edge!r} case among: {labels}"


def test_edge_cases_really_are_edge_cases():
    """The labels do not lie: float32 is float32, non-contiguous is non-contiguous, and so on."""
    part = get_part("ps01_scopes", "layer_norm_forward_hidden")
    by_label = {c.label.split(",")[0]: c.args[0] for c in part.make_cases()}
    assert by_label["batch size 1"].shape[0] == 1
    x = next(v for k, v in by_label.items() if k.startswith("constant input"))
    assert np.ptp(x) == 0
    assert np.abs(by_label["magnitude 1e4"]).max() > 1e3
    assert by_label["float32 input"].dtype == np.float32
    assert not by_label["non-contiguous input (axes stored in reverse order)"].flags.c_contiguous


# ---------------------------------------------------------------------------------------------------
# Wrong implementations: each must fail, naming a case.

def _affine_channels(y, weight, bias):
    shape = (1, -1) + (1,) * (y.ndim - 2)
    if weight is not None:
        y = y * np.reshape(weight, shape)
    if bias is not None:
        y = y + np.reshape(bias, shape)
    return y


def _bn_unbiased(input, weight=None, bias=None, eps=1e-5):
    x = np.asarray(input, dtype=np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    y = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, ddof=1, keepdims=True) + eps)
    return _affine_channels(y, weight, bias).astype(input.dtype)


def _bn_batch_axis_only(input, weight=None, bias=None, eps=1e-5):
    x = np.asarray(input, dtype=np.float64)
    y = (x - x.mean(0, keepdims=True)) / np.sqrt(x.var(0, keepdims=True) + eps)
    return _affine_channels(y, weight, bias).astype(input.dtype)


def _ln_eps_outside(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    x = np.asarray(input, dtype=np.float64)
    n = 1 if np.isscalar(normalized_shape) else len(normalized_shape)
    axes = tuple(range(x.ndim - n, x.ndim))
    y = (x - x.mean(axes, keepdims=True)) / (x.std(axes, keepdims=True) + eps)
    y = y * weight if weight is not None else y
    y = y + bias if bias is not None else y
    return y.astype(input.dtype)


def _ln_unbiased_std(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Seed 001's LayerNorm: unbiased std, eps added to the std."""
    x = np.asarray(input, dtype=np.float64)
    n = 1 if np.isscalar(normalized_shape) else len(normalized_shape)
    axes = tuple(range(x.ndim - n, x.ndim))
    y = (x - x.mean(axes, keepdims=True)) / (x.std(axes, ddof=1, keepdims=True) + eps)
    y = y * weight if weight is not None else y
    y = y + bias if bias is not None else y
    return y.astype(input.dtype)


def _ln_float32_math(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Right formula, but returns float64 for float32 input."""
    return ref.layer_norm(np.asarray(input, dtype=np.float64), normalized_shape, weight, bias, eps)


def _in_as_layer_norm(input, weight=None, bias=None, eps=1e-5):
    x = np.asarray(input, dtype=np.float64)
    y = ref.normalize(x, tuple(range(1, x.ndim)), eps)
    return _affine_channels(y, weight, bias).astype(input.dtype)


def _gn_interleaved(input, num_groups, weight=None, bias=None, eps=1e-5):
    """Channel c in group c % G instead of contiguous groups."""
    x = np.asarray(input, dtype=np.float64)
    n, c = x.shape[:2]
    view = x.reshape((n, c // num_groups, num_groups) + x.shape[2:])
    axes = (1,) + tuple(range(3, view.ndim))
    y = ref.normalize(view, axes, eps).reshape(x.shape)
    return _affine_channels(y, weight, bias).astype(input.dtype)


def _rms_fixed_eps(input, normalized_shape, weight=None, eps=None):
    return ref.rms_norm(input, normalized_shape, weight, 1e-5 if eps is None else eps)


def _rms_centered(input, normalized_shape, weight=None, eps=None):
    eps = np.finfo(np.asarray(input).dtype).eps if eps is None else eps
    return ref.layer_norm(input, normalized_shape, weight, None, eps)


def _axes_bsd_batch_only(norm, layout):
    return (0,) if (norm, layout) == ("batch_norm", "BSD") else ref.reduction_axes(norm, layout)


def _axes_ln_per_sequence(norm, layout):
    return (1, 2) if (norm, layout) == ("layer_norm", "BSD") else ref.reduction_axes(norm, layout)


def _step(x, running_mean, running_var, weight, bias, training, momentum, eps, *, keras=False,
          biased_running=False, rebind=False, batch_stats_in_eval=False, update_in_eval=False):
    """A BatchNorm step with one switchable mistake."""
    x64 = np.asarray(x, dtype=np.float64)
    axes = (0,) + tuple(range(2, x64.ndim))
    shape = (1, -1) + (1,) * (x64.ndim - 2)
    n = x64.size // x64.shape[1]
    batch_mean, batch_var = x64.mean(axes), x64.var(axes)
    use_batch = training or batch_stats_in_eval
    if (training or update_in_eval) and running_mean is not None:
        new_var = batch_var if biased_running else batch_var * n / max(n - 1, 1)
        keep = momentum if keras else 1 - momentum
        if rebind:
            running_mean = keep * running_mean + (1 - keep) * batch_mean
            running_var = keep * running_var + (1 - keep) * new_var
        else:
            running_mean[...] = keep * running_mean + (1 - keep) * batch_mean
            running_var[...] = keep * running_var + (1 - keep) * new_var
    mean, var = (batch_mean, batch_var) if use_batch else (running_mean, running_var)
    y = (x64 - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    return _affine_channels(y, weight, bias).astype(np.asarray(x).dtype)


def _step_with(**mistake):
    def step(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
        return _step(x, running_mean, running_var, weight, bias, training, momentum, eps, **mistake)
    return step


def _eval_affine_forgot_scale(running_mean, running_var, weight=None, bias=None, eps=1e-5):
    scale, shift = ps02.eval_affine_reference(running_mean, running_var, weight, bias, eps)
    return scale, (0.0 if bias is None else bias) - running_mean


def _eval_affine_eps_outside(running_mean, running_var, weight=None, bias=None, eps=1e-5):
    scale = 1.0 / (np.sqrt(running_var) + eps)
    scale = scale * weight if weight is not None else scale
    shift = -running_mean * scale + (bias if bias is not None else 0.0)
    return scale, shift


def _module_driver(*, off_by_one=False, keras=False, count_eval=False):
    """``run_batch_norm_module`` over a module with one switchable mistake."""
    def run(num_features, eps, momentum, affine, weight, bias, steps):
        rm, rv, tracked = np.zeros(num_features), np.ones(num_features), 0
        w, b = (np.array(weight, float), np.array(bias, float)) if affine else (None, None)
        outputs = []
        for mode, x in steps:
            if mode == "train" or count_eval:
                tracked += 1
            if mode == "train":
                factor = (1.0 / (tracked + off_by_one)) if momentum is None else momentum
                outputs.append(_step(x, rm, rv, w, b, True, factor, eps, keras=keras))
            else:
                outputs.append(_step(x, rm, rv, w, b, False, 0.0, eps))
        return (*outputs, rm, rv, np.asarray(tracked, dtype=np.int64))
    return run


def _forward_difference(f, x, h=1e-5):
    point = np.array(x, dtype=np.float64, order="C")
    base = f(point)
    grad = np.empty_like(point)
    for i in np.ndindex(point.shape):
        original = point[i]
        point[i] = original + h
        grad[i] = (f(point) - base) / h
        point[i] = original
    return grad


def _gradient_that_forgets_to_restore(f, x, h=1e-5):
    """Right values, but perturbs the caller's array and leaves it shifted."""
    grad = ps03.numerical_gradient_reference(f, x, h)
    x[...] = x + h if x.dtype.kind == "f" else x
    return grad


def _relative_error_no_floor(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.max(np.abs(a - b) / (np.abs(a) + np.abs(b))))


def _relative_error_mean(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.mean(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-8)))


def _ln_backward_no_mean_term(dy, x, normalized_shape, weight=None, bias=None, eps=1e-5):
    dx, dw, db = ref.layer_norm_backward(dy, x, normalized_shape, weight, bias, eps)
    n = 1 if np.isscalar(normalized_shape) else len(normalized_shape)
    axes = tuple(range(x.ndim - n, x.ndim))
    x64 = np.asarray(x, float)
    s = np.sqrt(x64.var(axes, keepdims=True) + eps)
    g = dy * weight if weight is not None else dy
    return (dx + (g.mean(axes, keepdims=True) / s)).astype(dx.dtype), dw, db


def _bn_backward_constant_stats(dy, x, weight=None, bias=None, eps=1e-5):
    """The evaluation-mode gradient gamma * dy / s: treats the batch statistics as constants."""
    _, dw, db = ref.batch_norm_backward(dy, x, weight, bias, eps)
    x64 = np.asarray(x, float)
    axes = (0,) + tuple(range(2, x64.ndim))
    shape = (1, -1) + (1,) * (x64.ndim - 2)
    s = np.sqrt(x64.var(axes, keepdims=True) + eps)
    gamma = np.reshape(weight, shape) if weight is not None else 1.0
    return (gamma * dy / s).astype(np.asarray(x).dtype), dw, db


def _rms_backward_as_layer_norm(dy, x, normalized_shape, weight=None, eps=None):
    eps = np.finfo(np.asarray(x).dtype).eps if eps is None else eps
    dx, dw, _ = ref.layer_norm_backward(dy, x, normalized_shape, weight, None, eps)
    return dx, dw


WRONG = {
    ("ps01_scopes", "reduction_axes_hidden"): [_axes_bsd_batch_only, _axes_ln_per_sequence],
    ("ps01_scopes", "batch_norm_train_hidden"): [_bn_unbiased, _bn_batch_axis_only],
    ("ps01_scopes", "layer_norm_forward_hidden"): [_ln_eps_outside, _ln_unbiased_std, _ln_float32_math],
    ("ps01_scopes", "instance_norm_forward_hidden"): [_in_as_layer_norm],
    ("ps01_scopes", "group_norm_forward_hidden"): [_gn_interleaved],
    ("ps01_scopes", "rms_norm_forward_hidden"): [_rms_fixed_eps, _rms_centered],
    ("ps02_batchnorm_state", "batch_norm_step_training_hidden"): [
        _step_with(keras=True), _step_with(biased_running=True), _step_with(rebind=True)],
    ("ps02_batchnorm_state", "batch_norm_step_eval_hidden"): [
        _step_with(batch_stats_in_eval=True), _step_with(update_in_eval=True)],
    ("ps02_batchnorm_state", "eval_affine_hidden"): [_eval_affine_forgot_scale, _eval_affine_eps_outside],
    ("ps02_batchnorm_state", "batch_norm_module_hidden"): [_module_driver(keras=True),
                                                          _module_driver(count_eval=True)],
    ("ps02_batchnorm_state", "batch_norm_cumulative_hidden"): [_module_driver(off_by_one=True)],
    ("ps03_backward", "numerical_gradient_hidden"): [_forward_difference, _gradient_that_forgets_to_restore],
    ("ps03_backward", "relative_error_hidden"): [_relative_error_no_floor, _relative_error_mean],
    ("ps03_backward", "layer_norm_backward_hidden"): [_ln_backward_no_mean_term],
    ("ps03_backward", "batch_norm_backward_hidden"): [_bn_backward_constant_stats],
    ("ps03_backward", "rms_norm_backward_hidden"): [_rms_backward_as_layer_norm],
}
# These wrong implementations (and case reproducibility) are checked in test_all_parts.py, for all six sets at once.


def test_not_implemented_is_reported_as_such():
    part = get_part("ps01_scopes", "layer_norm_forward_hidden")

    def stub(*args, **kwargs):
        raise NotImplementedError()
    with pytest.raises(GradingError, match="not implemented yet"):
        part.check(stub)


# ---------------------------------------------------------------------------------------------------
# The references that are not in normcourse.reference, checked against an outside oracle.

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 6), (3, 3, 4, 2)])
def test_module_reference_matches_torch_batchnorm(momentum, shape):
    """run_batch_norm_module_reference == torch.nn.BatchNorm{1,2}d, including momentum=None."""
    rng = np.random.default_rng(7)
    c = shape[1]
    weight, bias = rng.normal(size=c), rng.normal(size=c)
    steps = [(mode, 2.0 + 3.0 * rng.normal(size=shape)) for mode in ("train", "train", "eval", "train", "eval")]
    ours = ps02.run_batch_norm_module_reference(c, 1e-3, momentum, True, weight, bias, steps)

    module = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(
        c, eps=1e-3, momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(weight))
        module.bias.copy_(torch.from_numpy(bias))
        theirs = []
        for mode, x in steps:
            module.train(mode == "train")
            theirs.append(module(torch.from_numpy(x)).numpy())
    theirs += [module.running_mean.numpy(), module.running_var.numpy(), module.num_batches_tracked.numpy()]
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)  # same float64 math up to summation order


def test_eval_affine_reference_is_eval_batch_norm():
    rng = np.random.default_rng(8)
    rm, rv, w, b = rng.normal(size=4), rng.uniform(0.1, 2, size=4), rng.normal(size=4), rng.normal(size=4)
    x = rng.normal(size=(3, 4, 5, 5))
    for weight, bias in ((w, b), (None, None), (w, None), (None, b)):
        scale, shift = ps02.eval_affine_reference(rm, rv, weight, bias, 1e-3)
        expected = ref.batch_norm(x, rm, rv, weight, bias, training=False, eps=1e-3)
        np.testing.assert_allclose(x * scale.reshape(1, 4, 1, 1) + shift.reshape(1, 4, 1, 1), expected,
                                   rtol=1e-12, atol=1e-12)


def test_numerical_gradient_reference_matches_autograd():
    """Central differences of a loss through LayerNorm agree with torch.autograd to O(h^2)."""
    rng = np.random.default_rng(9)
    x, dy = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    f = lambda z: upstream_loss(z, ref.layer_norm, dy, normalized_shape=(5,))  # noqa: E731
    numeric = ps03.numerical_gradient_reference(f, x, h=1e-5)
    xt = torch.tensor(x, requires_grad=True)
    (torch.nn.functional.layer_norm(xt, (5,)) * torch.from_numpy(dy)).sum().backward()
    # Truncation h^2 * f''' ~ 1e-10 and rounding eps * |f| / h ~ 1e-11: 1e-8 leaves a margin of 100.
    np.testing.assert_allclose(numeric, xt.grad.numpy(), atol=1e-8)
    x_before = x.copy()
    ps03.numerical_gradient_reference(f, x)
    np.testing.assert_array_equal(x, x_before)


def test_relative_error_reference_values():
    assert ps03.relative_error_reference(np.ones(3), np.ones(3)) == 0.0
    assert ps03.relative_error_reference(np.zeros(3), np.zeros(3)) == 0.0
    assert ps03.relative_error_reference(np.array([1.0]), np.array([-1.0])) == 1.0
    assert np.isclose(ps03.relative_error_reference(np.array([1.0, 2.0]), np.array([1.0, 2.2])), 0.2 / 4.2)


# ---------------------------------------------------------------------------------------------------
# Parts agree with the notebooks: points, test-cell metadata, the hidden cell's call; releases leak nothing.

def _cells(kind: str, ps: str) -> list[dict]:
    return json.loads((ROOT / kind / ps / f"{ps}.ipynb").read_text())["cells"]


def _graded_cells(kind: str, ps: str) -> dict[str, dict]:
    return {c["metadata"]["nbgrader"]["grade_id"]: c for c in _cells(kind, ps)
            if c["metadata"].get("nbgrader", {}).get("grade")}


@pytest.mark.parametrize("part", ALL_PARTS, ids=_ids(ALL_PARTS))
def test_part_matches_its_notebook_cell(part):
    cell = _graded_cells("solutions", part.problem_set).get(part.grade_id)
    assert cell is not None, f"no graded cell {part.grade_id} in the {part.problem_set} source notebook"
    meta = cell["metadata"]["nbgrader"]
    assert (meta["grade"], meta["solution"], meta["locked"]) == (True, False, True), "an autograded test cell"
    assert meta["points"] == part.points
    source = "".join(cell["source"])
    assert "### BEGIN HIDDEN TESTS" in source and "### END HIDDEN TESTS" in source
    assert f'check_part("{part.problem_set}", "{part.grade_id}", {part.function})' in source


@pytest.mark.parametrize("ps", PROBLEM_SETS)
def test_notebook_structure(ps):
    cells = _cells("solutions", ps)
    metas = [c["metadata"]["nbgrader"] for c in cells]
    assert all(m.get("schema_version") == 3 for m in metas)
    grade_ids = [m["grade_id"] for m in metas]
    assert len(grade_ids) == len(set(grade_ids))
    hidden = {m["grade_id"] for m in metas if m["grade_id"].endswith("_hidden")}
    assert hidden == {p.grade_id for p in parts_of(ps)}, "every hidden cell is backed by a Part"
    for gid in hidden:  # each hidden test has its visible twin
        assert gid.removesuffix("_hidden") in grade_ids
    written = [m for c, m in zip(cells, metas) if c["cell_type"] == "markdown" and m["grade"]]
    assert written and all(m["solution"] and not m["locked"] and m["points"] > 0 for m in written)
    for c, m in zip(cells, metas):
        src = "".join(c["source"])
        if m["solution"]:
            assert "### BEGIN SOLUTION" in src and "### END SOLUTION" in src, m["grade_id"]
        if m["solution"] and c["cell_type"] == "code":  # the model solution plays by the learner's rules
            body = src.split("### BEGIN SOLUTION", 1)[1]
            for banned in ("import torch", "from torch", "normcourse"):
                assert banned not in body, f"{m['grade_id']}: {banned!r} in the solution"


@pytest.mark.parametrize("ps", PROBLEM_SETS)
def test_release_leaks_nothing(ps):
    text = (ROOT / "exercises" / ps / f"{ps}.ipynb").read_text()
    for secret in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "check_part", "Rubric", "Model answer"):
        assert secret not in text, f"{secret!r} in the release of {ps}"
    source_points = {g: c["metadata"]["nbgrader"]["points"] for g, c in _graded_cells("solutions", ps).items()}
    release_points = {g: c["metadata"]["nbgrader"]["points"] for g, c in _graded_cells("exercises", ps).items()}
    assert release_points == source_points, "regenerate the release: nbgrader generate_assignment --force"


# ---------------------------------------------------------------------------------------------------
# Visible tests, run in-process (no kernel): the model solution passes them, and they catch the common
# mistakes on their own, so a learner gets a failing visible test before any hidden one.

def _namespace(ps: str) -> dict:
    """Run every non-test code cell of the source notebook (imports, solutions, course helpers)."""
    namespace: dict = {"__name__": f"notebook_{ps}"}
    for cell in _cells("solutions", ps):
        meta = cell["metadata"]["nbgrader"]
        if cell["cell_type"] == "code" and not (meta["grade"] and not meta["solution"]):
            exec(compile("".join(cell["source"]), f"<{ps}:{meta['grade_id']}>", "exec"), namespace)
    return namespace


def _test_cell(ps: str, grade_id: str) -> str:
    return "".join(_graded_cells("solutions", ps)[grade_id]["source"])


@pytest.mark.parametrize("ps", PROBLEM_SETS)
def test_solution_passes_every_test_cell_in_process(ps):
    namespace = _namespace(ps)
    for grade_id, cell in _graded_cells("solutions", ps).items():
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"<{ps}:{grade_id}>", "exec"), namespace)


VISIBLE_CATCHES = [
    ("ps01_scopes", "reduction_axes", "reduction_axes", _axes_ln_per_sequence),
    ("ps01_scopes", "batch_norm_train", "batch_norm_train", _bn_unbiased),
    ("ps01_scopes", "batch_norm_train", "batch_norm_train", _bn_batch_axis_only),
    ("ps01_scopes", "layer_norm_forward", "layer_norm", _ln_eps_outside),
    ("ps01_scopes", "layer_norm_forward", "layer_norm", _ln_unbiased_std),
    ("ps01_scopes", "instance_norm_forward", "instance_norm", _in_as_layer_norm),
    ("ps01_scopes", "group_norm_forward", "group_norm", _gn_interleaved),
    ("ps01_scopes", "rms_norm_forward", "rms_norm", _rms_centered),
    ("ps01_scopes", "rms_norm_forward", "rms_norm", _rms_fixed_eps),
    ("ps02_batchnorm_state", "batch_norm_step_training", "batch_norm_step", _step_with(keras=True)),
    ("ps02_batchnorm_state", "batch_norm_step_training", "batch_norm_step", _step_with(biased_running=True)),
    ("ps02_batchnorm_state", "batch_norm_step_training", "batch_norm_step", _step_with(rebind=True)),
    ("ps02_batchnorm_state", "batch_norm_step_eval", "batch_norm_step", _step_with(batch_stats_in_eval=True)),
    ("ps02_batchnorm_state", "batch_norm_step_eval", "batch_norm_step", _step_with(update_in_eval=True)),
    ("ps02_batchnorm_state", "eval_affine", "eval_affine", _eval_affine_forgot_scale),
    ("ps03_backward", "numerical_gradient", "numerical_gradient", _forward_difference),
    ("ps03_backward", "numerical_gradient", "numerical_gradient", _gradient_that_forgets_to_restore),
    ("ps03_backward", "relative_error", "relative_error", _relative_error_no_floor),
    ("ps03_backward", "relative_error", "relative_error", _relative_error_mean),
    ("ps03_backward", "layer_norm_backward", "layer_norm_backward", _ln_backward_no_mean_term),
    ("ps03_backward", "batch_norm_backward", "batch_norm_backward", _bn_backward_constant_stats),
    ("ps03_backward", "rms_norm_backward", "rms_norm_backward", _rms_backward_as_layer_norm),
]


@pytest.mark.parametrize("ps, grade_id, function, wrong", VISIBLE_CATCHES,
                         ids=[f"{g}:{getattr(w, '__name__', 'fn')}-{i}" for i, (_, g, _, w) in enumerate(VISIBLE_CATCHES)])
def test_visible_test_catches_common_mistake(ps, grade_id, function, wrong):
    namespace = _namespace(ps)
    namespace[function] = wrong
    with pytest.raises(AssertionError), np.errstate(all="ignore"):
        exec(compile(_test_cell(ps, grade_id), f"<{ps}:{grade_id}>", "exec"), namespace)


@pytest.mark.parametrize("ps", PROBLEM_SETS)
def test_release_is_up_to_date(ps):
    """Every read-only cell and visible test of the release is the source's cell, unchanged."""
    release = {c["metadata"]["nbgrader"]["grade_id"]: "".join(c["source"]) for c in _cells("exercises", ps)}
    for cell in _cells("solutions", ps):
        meta = cell["metadata"]["nbgrader"]
        source = "".join(cell["source"])
        assert meta["grade_id"] in release, f"{meta['grade_id']} missing from the release"
        if not meta["solution"] and "BEGIN HIDDEN TESTS" not in source:
            assert release[meta["grade_id"]] == source, (
                f"{meta['grade_id']} differs from the source: run nbgrader generate_assignment {ps} --force")


@pytest.mark.parametrize("ps", PROBLEM_SETS)
def test_intro_states_the_points_the_metadata_gives(ps):
    import re
    cells = _cells("solutions", ps)
    graded = [c for c in cells if c["metadata"]["nbgrader"]["grade"]]
    auto = sum(c["metadata"]["nbgrader"]["points"] for c in graded if c["cell_type"] == "code")
    written = sum(c["metadata"]["nbgrader"]["points"] for c in graded if c["cell_type"] == "markdown")
    intro = "".join(cells[0]["source"])
    match = re.search(r"Points: (\d+) in total, (\d+) autograded and (\d+) for the written", intro)
    assert match, "the intro states the points"
    assert tuple(int(g) for g in match.groups()) == (auto + written, auto, written)
