"""Problem sets 1-3 in particular: the cases cover the promised edge cases, the references that are not
in normcourse.reference agree with an outside oracle, the ps02 experiment is judged fairly, and the
messages for the mistakes issue 11 lists point at the mistake.

What every set must satisfy (the reference passes, wrong implementations fail naming the case, one bug
costs one part, visible Parts replay the visible cells, notebook conventions) is checked for all
registered sets in test_all_parts.py; the wrong implementations live in wrong/ps0N_*.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import normcourse.reference as ref
from normcourse.grading.cases import EDGE_LABELS
from normcourse.grading.compare import GradingError
from normcourse.grading.parts import get_part, parts_of
from normcourse.grading.rules import NO_TORCH
from normcourse.problems import ps02_batchnorm_state as ps02
from normcourse.problems import ps03_backward as ps03
from problem_notebooks import autograded_cells, grade_id, is_hidden, notebook_run
from wrong import load as load_wrong

PROBLEM_SETS = ("ps01_scopes", "ps02_batchnorm_state", "ps03_backward")
ALL_PARTS = [p for ps in PROBLEM_SETS for p in parts_of(ps)]
HIDDEN_PARTS = [p for p in ALL_PARTS if p.grade_id.endswith("_hidden")]


def _ids(parts):
    return [f"{p.problem_set}:{p.grade_id}" for p in parts]


@pytest.mark.parametrize("part", ALL_PARTS, ids=_ids(ALL_PARTS))
def test_every_part_is_numpy_only(part):
    assert NO_TORCH in part.forbid


@pytest.mark.parametrize("ps", PROBLEM_SETS)
def test_every_hidden_cell_follows_its_visible_twin(ps):
    """Each part has a visible test (1 point) before its hidden tests; ps02's momentum=None part is a
    single cell worth 1 point whose visible checks precede its hidden block."""
    ids = [grade_id(c) for c in autograded_cells(ps)]
    for cell in autograded_cells(ps):
        gid = grade_id(cell)
        if is_hidden(cell) and gid != "batch_norm_cumulative_hidden":
            twin = gid.removesuffix("_hidden")
            assert twin in ids and ids.index(twin) == ids.index(gid) - 1, f"{gid} has no visible twin before it"
            assert cell.metadata.nbgrader["points"] >= 1


# ---------------------------------------------------------------------------------------------------
# Edge-case coverage. Parts whose inputs are not activations cover what applies to them.

EDGE_EXEMPT = {
    # (norm, layout) strings: there are no arrays at all.
    "reduction_axes_hidden": set(EDGE_LABELS),
    # Running statistics, not a batch: zero variance and magnitude 1e4 are covered by their own cases.
    "eval_affine_hidden": set(EDGE_LABELS),
    # An experiment on its own generated data: the cases vary momenta, batch sizes and seeds instead.
    "running_stats_experiment_hidden": set(EDGE_LABELS),
    # A generic utility on arbitrary points: batch size and variance have no meaning; 1e4 would make
    # central differences with h ~ 1e-5 meaningless.
    "numerical_gradient_hidden": {"batch size 1", "constant input", "magnitude 1e4"},
    "relative_error_hidden": {"batch size 1", "constant input", "float32", "non-contiguous"},
}


@pytest.mark.parametrize("part", HIDDEN_PARTS, ids=_ids(HIDDEN_PARTS))
def test_cases_cover_edge_cases(part):
    labels = " | ".join(case.label for case in part.make_cases())
    for edge in set(EDGE_LABELS) - EDGE_EXEMPT.get(part.grade_id, set()):
        assert edge in labels, f"{part.grade_id}: no {edge!r} case among: {labels}"


@pytest.mark.parametrize("part", HIDDEN_PARTS, ids=_ids(HIDDEN_PARTS))
def test_hidden_cases_check_side_effects(part):
    """Every hidden case of an array function compares its array arguments after the call (unchanged,
    or updated in place where the contract says so); ps02 and ps03 also call twice on the same arrays."""
    cases = part.make_cases()
    for case in cases:
        arrays = {i for i, a in enumerate(case.args) if isinstance(a, np.ndarray)}
        assert arrays <= set(case.inplace), f"{part.grade_id}: {case.label!r} does not check arguments {arrays}"
    if part.grade_id in ("batch_norm_step_training_hidden", "batch_norm_step_eval_hidden", "batch_norm_module_hidden",
                         "batch_norm_cumulative_hidden", "numerical_gradient_hidden"):
        assert any(case.repeat > 1 for case in cases), f"{part.grade_id}: no case calls twice"


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


def test_not_implemented_is_reported_as_such():
    part = get_part("ps01_scopes", "layer_norm_forward_hidden")

    def stub(*args, **kwargs):
        raise NotImplementedError()
    with pytest.raises(GradingError, match="not implemented yet"):
        part.check(stub)


def test_a_learner_exception_names_the_case():
    part = get_part("ps01_scopes", "layer_norm_forward_hidden")

    def fails_on_float32(input, normalized_shape, weight=None, bias=None, eps=1e-5):
        if input.dtype == np.float32:
            raise TypeError("no float32 here")
        return ref.layer_norm(input, normalized_shape, weight, bias, eps)
    with pytest.raises(GradingError, match=r"raised TypeError: no float32 here for case 'float32 input"):
        part.check(fails_on_float32)


# ---------------------------------------------------------------------------------------------------
# The messages for the mistakes of issue 11 name the place: the argument or result by name, the case,
# values that visibly differ, the tolerance.

def _message(ps, grade_id_, name, wrong_name):
    wrong = next(w for w in load_wrong(ps).by_name[name] if getattr(w, "__name__", "") == wrong_name)
    run = notebook_run(ps)
    try:
        return run.check_part(run.fresh({name: wrong}), get_part(ps, grade_id_))
    finally:
        run.fresh()


@pytest.mark.parametrize("ps, grade_id_, name, wrong_name, expected", [
    # a running statistic rebound instead of written in place: named by its parameter name
    ("ps02_batchnorm_state", "batch_norm_step_training_hidden", "batch_norm_step", "rebinds_running_stats",
     "argument 'running_mean' of batch_norm_step(...) after the call"),
    # the module's results by name, not "run_batch_norm_module(...)[3]"
    ("ps02_batchnorm_state", "batch_norm_module_hidden", "BatchNorm", "BatchNormKeras",
     "run_batch_norm_module(...) -> running_mean"),
    ("ps02_batchnorm_state", "batch_norm_step_eval_hidden", "batch_norm_step", "batch_stats_in_eval",
     "batch_norm_step(...) for case"),
    ("ps02_batchnorm_state", "batch_norm_module_hidden", "BatchNorm", "BatchNormBatchStatsInEval",
     "run_batch_norm_module(...) -> step 4 (eval) output"),
    ("ps02_batchnorm_state", "batch_norm_module_hidden", "BatchNorm", "BatchNormCountsEval",
     "run_batch_norm_module(...) -> num_batches_tracked"),
    ("ps02_batchnorm_state", "eval_affine_hidden", "eval_affine", "_eval_affine_forgot_scale",
     "eval_affine(...) -> shift"),
    ("ps02_batchnorm_state", "eval_affine_hidden", "eval_affine", "_eval_affine_in_place",
     "argument 'running_var' of eval_affine(...) after the call"),
    ("ps03_backward", "layer_norm_backward_hidden", "layer_norm_backward", "_ln_backward_dweight_not_summed",
     "layer_norm_backward(...) -> dweight"),
    ("ps03_backward", "numerical_gradient_hidden", "numerical_gradient", "_gradient_that_forgets_to_restore",
     "argument 'x' of numerical_gradient(...) after the call"),
    ("ps01_scopes", "batch_norm_train_hidden", "batch_norm_train", "_bn_in_place",
     "argument 'input' of batch_norm_train(...) after the call"),
    ("ps02_batchnorm_state", "running_stats_experiment_hidden", "running_stats_experiment",
     "one_module_for_every_momentum", "momentum row"),
])
def test_messages_name_the_place(ps, grade_id_, name, wrong_name, expected):
    message = _message(ps, grade_id_, name, wrong_name)
    assert message is not None and expected in message, message
    assert "for case '" in message


def test_values_in_a_message_differ_visibly():
    """Issue 11 saw "got -1.44006, expected -1.44006": values are printed until they differ."""
    message = _message("ps03_backward", "numerical_gradient_hidden", "numerical_gradient", "_forward_difference")
    import re
    got, expected = re.search(r"got (\S+), expected (\S+?)[ ,]", message).groups()
    assert got != expected, message
    assert "Tolerance: |got - expected| <= 1e-08 + 1e-06 * |expected|" in message


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
    modes = ("train", "train", "eval", "train", "eval")
    steps = [(mode, 2.0 + 3.0 * rng.normal(size=shape)) for mode in modes]
    ours = ps02.run_batch_norm_module_reference(c, 1e-3, momentum, True, weight, bias, steps)

    module = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(
        c, eps=1e-3, momentum=momentum, dtype=torch.float64)
    theirs = {}
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(weight))
        module.bias.copy_(torch.from_numpy(bias))
        for k, (mode, x) in enumerate(steps, start=1):
            module.train(mode == "train")
            theirs[f"step {k} ({mode}) output"] = module(torch.from_numpy(x)).numpy()
    theirs.update(running_mean=module.running_mean.numpy(), running_var=module.running_var.numpy(),
                  num_batches_tracked=module.num_batches_tracked.numpy())
    assert list(ours) == list(theirs)
    for key in ours:  # same float64 math up to summation order
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-12, atol=1e-12, err_msg=key)


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
    numeric = ps03.numerical_gradient_reference(lambda z: np.sum(dy * ref.layer_norm(z, (5,))), x, h=1e-5)
    xt = torch.tensor(x, requires_grad=True)
    (torch.nn.functional.layer_norm(xt, (5,)) * torch.from_numpy(dy)).sum().backward()
    # Truncation h^2 * f''' ~ 1e-10 and rounding eps * |f| / h ~ 1e-11: 1e-8 leaves a margin of 100.
    np.testing.assert_allclose(numeric, xt.grad.numpy(), atol=1e-8)
    x_before = x.copy()
    ps03.numerical_gradient_reference(np.linalg.norm, x)
    np.testing.assert_array_equal(x, x_before)


def test_numerical_gradient_cases_use_only_numpy_callables():
    """The functions differentiated in the cases exist wherever learner code runs (the re-check process has
    no course package), and are curved enough that one-sided differences fail."""
    import functools
    import pickle

    for part in parts_of("ps03_backward"):
        if part.function != "numerical_gradient":
            continue
        for case in part.make_cases():
            f = case.args[0]
            target = f.func if isinstance(f, functools.partial) else f
            assert target.__module__.split(".")[0] == "numpy", case.label
            assert pickle.loads(pickle.dumps(f)) is not None


def test_relative_error_reference_values():
    assert ps03.relative_error_reference(np.ones(3), np.ones(3)) == 0.0
    assert ps03.relative_error_reference(np.zeros(3), np.zeros(3)) == 0.0
    assert ps03.relative_error_reference(np.array([1.0]), np.array([-1.0])) == 1.0
    assert np.isclose(ps03.relative_error_reference(np.array([1.0, 2.0]), np.array([1.0, 2.2])), 0.2 / 4.2)


# ---------------------------------------------------------------------------------------------------
# The ps02 experiment: its reference is PyTorch's running statistics, the checks follow the chapters,
# and a correct implementation that draws the data differently always passes.

def test_experiment_reference_is_the_reference_batch_norm_and_torch():
    momenta, seeds = (0.3, None), (5, 6)
    errors = ps02.running_stats_experiment_reference(momenta, num_steps=20, batch_size=4, seeds=seeds, num_features=3)
    for j, seed in enumerate(seeds):
        mu, sigma, batches = ps02.experiment_data(np.random.default_rng(seed), 20, 4, 3)
        for i, momentum in enumerate(momenta):
            module = torch.nn.BatchNorm1d(3, momentum=momentum, dtype=torch.float64)
            running_mean, running_var = np.zeros(3), np.ones(3)
            for k, x in enumerate(batches):
                module(torch.from_numpy(x))
                factor = 1.0 / (k + 1) if momentum is None else momentum
                ref.batch_norm(x, running_mean, running_var, training=True, momentum=factor)
                np.testing.assert_allclose(running_mean, module.running_mean.numpy(), rtol=1e-12, atol=1e-14)
                want = np.sqrt(np.mean(((running_mean - mu) / sigma) ** 2))
                assert abs(errors[i, j, k] - want) < 1e-12


def test_experiment_reference_shows_what_the_chapters_predict():
    """Chapter 3/7: a small momentum forgets the start slowly but averages over many batches; a large one is
    fast and noisy; the cumulative average (momentum=None) has no start bias and ends lowest."""
    errors = ps02.running_stats_experiment_reference((0.02, 0.1, 0.5, None), 300, 16, (0, 1, 2))
    windows = ps02.experiment_windows(300)
    early, late = (errors[:, :, s].mean(axis=(1, 2)) for s in windows.values())
    assert early[0] > early[1] > early[2] > early[3]
    assert late[3] < late[0] < late[1] < late[2]
    # The noise floor sqrt(m / (2 - m)) / sqrt(batch size): 0.144 for m=0.5 and 0.057 for m=0.1, within 20%
    # (the window mean of an RMS over 8 features and 3 seeds; 0.02 still carries some start bias).
    for row, m in ((2, 0.5), (1, 0.1)):
        assert abs(late[row] / (np.sqrt(m / (2 - m)) / 4) - 1) < 0.2, (m, late[row])


def _experiment_drawn_differently(momenta, num_steps=300, batch_size=16, seeds=(0, 1, 2), num_features=8):
    """A correct experiment that draws sigma before mu and every batch separately (other numbers)."""
    out = np.empty((len(momenta), len(seeds), num_steps))
    for j, seed in enumerate(seeds):
        rng = np.random.default_rng([seed, 99])
        sigma = rng.uniform(0.5, 2, num_features)
        mu = rng.uniform(-3, 3, num_features)
        means = np.array([(mu + sigma * rng.standard_normal((batch_size, num_features))).mean(0)
                          for _ in range(num_steps)])
        for i, m in enumerate(momenta):
            running = np.zeros(num_features)
            for k in range(num_steps):
                f = 1.0 / (k + 1) if m is None else m
                running = (1 - f) * running + f * means[k]
                out[i, j, k] = np.sqrt(np.mean(((running - mu) / sigma) ** 2))
    return out


@pytest.mark.parametrize("salt", range(8))
def test_experiment_checks_accept_a_correct_run_on_other_draws(salt):
    """Sampling noise never fails a correct implementation: over 400 salts the window means of such a run
    stayed within a factor 2.1 of the reference's (the check allows 3); eight salts run here."""
    part = get_part("ps02_batchnorm_state", "running_stats_experiment_hidden")
    for case in part.make_cases(salt=salt) + get_part("ps02_batchnorm_state", "running_stats_experiment").make_cases():
        ps02.compare_experiment(_experiment_drawn_differently(*case.args), part.expected(case).results[0],
                                name="running_stats_experiment(...)", label=case.label)
