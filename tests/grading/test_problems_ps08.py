"""What is particular to problem set 8 (training without normalization); the rest is registry-driven.

``tests/grading/test_all_parts.py`` checks every registered set, this one included: the reference passes
its Parts, cases are reproducible, visible Parts are fixed and hidden ones follow the salt, every
autograded cell is backed by a Part with its points, visible Parts replay exactly their cells' calls, the
solution keeps every point, the census of wrong implementations (``tests/grading/wrong/ps08_normalization_free.py``,
by learner name, with ``USES``: the experiment runs the learner's SkipInit and agc_backward), one bug
costing one part, the notebook's metadata, totals and messages. ``tests/problemsets/test_gate.py`` runs
the sealed pipeline (nbgrader, the re-check in the sandbox, the self-check, the release).

Here, only what those cannot know about this set: implementations written differently from the
solution still pass; the rules per Part (numpy parts without torch; only the digits loader provided);
every case is quick, covers the promised edge cases, and the edge cases really are what their labels
say; case arguments pickle without course code (the re-check loads them where the course package does
not exist); torch results do not depend on the thread count; the torch references agree with the numpy
reference and the formula; the experiment's property checks accept the course's experiment with margin
and bite on wrong results; the intro's table adds up; the setup cell builds the Parts' fixed inputs; the
release's visible tests fail on the stubs and the release leaks nothing.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import re
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import normcourse.reference as ref  # noqa: E402
from normcourse.grading.compare import GradingError  # noqa: E402
from normcourse.grading.parts import get_part, parts_of, provided_modules  # noqa: E402
from normcourse.grading.rules import NO_TORCH  # noqa: E402
from normcourse.problems import ps08_normalization_free as ps08  # noqa: E402
from problem_notebooks import modules_a_case_needs  # noqa: E402
from wrong import ps08_normalization_free as wrong08  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PS = "ps08_normalization_free"
PARTS = parts_of(PS)
HIDDEN_PARTS = [p for p in PARTS if p.grade_id.endswith("_hidden")]
REFERENCE_PARTS = [p for p in PARTS if p.reference is not None]


def _ids(parts):
    return [p.grade_id for p in parts]


def test_correct_variants_pass():
    """Implementations written differently from the solution earn the points."""
    def agc_scalar_result(grad, weight, clipping=0.01, eps=1e-3):  # returns numpy scalars for 0-d input
        g, w = np.asarray(grad, dtype=np.float64), np.asarray(weight, dtype=np.float64)
        axes = tuple(range(1, g.ndim)) if g.ndim >= 2 else tuple(range(g.ndim))
        g_norm = np.linalg.norm(g.reshape(g.shape[0], -1) if g.ndim >= 2 else g.reshape(1, -1), axis=1)
        w_norm = np.linalg.norm(w.reshape(w.shape[0], -1) if w.ndim >= 2 else w.reshape(1, -1), axis=1)
        with np.errstate(divide="ignore"):
            scale = np.minimum(1.0, clipping * np.maximum(w_norm, eps) / g_norm)   # inf for a zero gradient
        shape = (-1,) + (1,) * (g.ndim - 1) if g.ndim >= 2 else np.shape(np.sum(g, axis=axes, keepdims=True))
        return (g * scale.reshape(shape)).astype(np.asarray(grad).dtype)

    def sws_via_ws(weight, gain=None, gamma=1.0, eps=1e-4):  # float32 arithmetic for float32 input
        w = np.asarray(weight)
        flat = w.reshape(w.shape[0], -1)
        centered = flat - flat.mean(axis=1, keepdims=True)
        norm = np.sqrt(np.maximum((centered ** 2).sum(axis=1, keepdims=True), eps))
        g = 1.0 if gain is None else np.asarray(gain).reshape(-1, 1)
        return (gamma * g * centered / norm).astype(w.dtype).reshape(w.shape)

    class SkipInitVector(nn.Module):  # alpha of shape (1,), multiplied on the other side
        def __init__(self, branch, alpha_init=0.0):
            super().__init__()
            self.branch = branch
            self.alpha = nn.Parameter(torch.full((1,), float(alpha_init), dtype=torch.float64))

        def forward(self, x):
            return self.branch(x) * self.alpha + x

    def agc_backward_zero_grad(model, loss_fn, batch, clipping=0.01, eps=1e-3, exclude=()):
        model.zero_grad(set_to_none=False)
        loss_fn(model(batch[0]), batch[1]).backward()
        params = [p for n, p in model.named_parameters() if n not in exclude and p.grad is not None]
        clipped = total = 0
        for p in params:
            g, w = p.grad.detach().numpy(), p.detach().numpy()
            new = agc_scalar_result(g, w, clipping, eps)
            flat_new = np.reshape(new, (g.shape[0], -1) if g.ndim >= 2 else (1, -1))
            flat_old = np.reshape(g, flat_new.shape)
            clipped += int(np.sum(np.any(flat_new != flat_old, axis=1)))
            total += flat_new.shape[0]
            p.grad.copy_(torch.from_numpy(np.asarray(new)))
        return clipped / total if total else 0.0

    for grade_id, fn in [("adaptive_clip_grad_hidden", agc_scalar_result),
                         ("adaptive_clip_grad", agc_scalar_result),
                         ("scaled_weight_standardization_hidden", sws_via_ws),
                         ("skip_init_hidden", wrong08.driver(SkipInitVector)),
                         ("agc_backward_hidden", agc_backward_zero_grad),
                         ("agc_backward", agc_backward_zero_grad)]:
        assert get_part(PS, grade_id).check(fn) > 0, grade_id


# ---------------------------------------------------------------------------------------------------
# Parts and cases.

def test_rules_per_part():
    """Numpy parts are graded without torch; torch parts may use it; the notebook hands the learner the
    digits loader and nothing else of the course (never the reference, nor lab.normalization_free)."""
    numpy_parts = {"weight_standardization", "scaled_weight_standardization", "unitwise_norm", "adaptive_clip_grad",
                   "dynamic_tanh_backward"}
    for part in PARTS:
        assert (NO_TORCH in part.forbid) == (part.function in numpy_parts), part.grade_id
    assert provided_modules(PS) == ("normcourse.lab.models",)


@pytest.mark.parametrize("part", REFERENCE_PARTS, ids=_ids(REFERENCE_PARTS))
def test_reference_passes_quickly(part):
    """Every case takes well under a second (the grader re-runs every part out of kernel); CPU time, so
    that a loaded machine does not make this flaky."""
    torch.set_num_threads(1)
    start = time.process_time()
    n = part.check(part.reference)
    assert n == len(part.make_cases()) > 0
    assert (time.process_time() - start) / n < 0.2


REQUIRED_EDGES = {
    "skip_init_hidden": ["alpha_init=0 (the identity", "Linear-ReLU-Linear", "convolutional branch",
                         "BatchNorm1d in evaluation mode", "called twice on the same branch", "batch size 1",
                         "magnitude 1e4", "float32"],
    "weight_standardization_hidden": ["linear weight", "conv1d weight", "conv2d weight", "1x1 convolution",
                                      "a single output unit", "fan-in 1", "constant input", "all-zero",
                                      "magnitude 1e4", "float32", "non-contiguous", "eps="],
    "scaled_weight_standardization_hidden": ["linear weight", "conv2d weight", "a gain", "no gain",
                                             "negative gains", "nearly constant unit", "constant input", "all-zero",
                                             "magnitude 1e4", "float32", "non-contiguous"],
    "unitwise_norm_hidden": ["linear weight", "conv1d weight", "conv2d weight", "conv3d weight", "a bias vector",
                             "a scalar", "zero unit", "magnitude 1e4", "float32", "non-contiguous"],
    "adaptive_clip_grad_hidden": ["linear weight", "conv2d weight", "zero weights", "zero gradient",
                                  "all-zero gradient and weight", "exactly at the threshold",
                                  "just above and just below", "zero-initialized (one unit", "a scalar parameter",
                                  "no unit clipped", "every unit clipped", "magnitude 1e4", "float32",
                                  "non-contiguous"],
    "agc_backward_hidden": ["random MLP", "convolutional network", "called twice on the same model",
                            "zero-initialized head", "frozen first layer", "evaluation mode", "PReLU",
                            "magnitude 1e4", "batch size 1", "mse_loss", "no unit clipped", "every unit clipped",
                            "float32", "eps=", "exclude=['head.weight']", "nothing excluded"],
    "dynamic_tanh_backward_hidden": ["last 1 axes", "last 2 axes", "alpha [0.]", "negative alpha", "batch size 1",
                                     "constant input", "magnitude 1e4", "float32", "non-contiguous"],
}


def test_every_hidden_part_lists_its_edge_cases():
    assert {p.grade_id for p in HIDDEN_PARTS} == set(REQUIRED_EDGES)


@pytest.mark.parametrize("part", HIDDEN_PARTS, ids=_ids(HIDDEN_PARTS))
def test_cases_cover_edge_cases(part):
    labels = " | ".join(case.label for case in part.make_cases())
    for edge in REQUIRED_EDGES[part.grade_id]:
        assert edge in labels, f"{part.grade_id}: no {edge!r} case among: {labels}"


def _cases(grade_id):
    return {c.label: c for c in get_part(PS, grade_id).make_cases()}


def _find(cases, start):
    return next(c for label, c in cases.items() if label.startswith(start))


def test_edge_cases_really_are_edge_cases():
    """The labels do not lie (spot checks on the inputs behind them)."""
    agc = _cases("adaptive_clip_grad_hidden")
    g, w, clipping = _find(agc, "a unit exactly at the threshold").args
    ratios = ref.agc_ratio(g, w).ravel()
    assert ratios[0] == clipping and ratios[1] == 2 * clipping  # exact in float64, by construction
    g, w, clipping = _find(agc, "zero weights").args[:3]
    assert not w[0].any() and not w[3].any() and g[0].any() and g[3].any()
    assert ref.agc_ratio(g, w)[0, 0] > clipping > ref.agc_ratio(g, w)[3, 0]
    g, w, clipping = _find(agc, "zero gradient").args
    assert not g[1].any() and g[0].any()
    assert _find(agc, "a scalar parameter").args[1].shape == ()
    args = _find(agc, "float32").args
    assert args[0].dtype == args[1].dtype == np.float32
    args = _find(agc, "non-contiguous").args
    assert not args[0].flags.c_contiguous and not args[1].flags.c_contiguous
    assert np.abs(_find(agc, "magnitude 1e4").args[1]).max() > 1e3
    for label, case in agc.items():  # the random cases really have units on both sides of the threshold
        if label.startswith("random"):
            r = ref.agc_ratio(*case.args[:2], *case.args[3:]).ravel()
            assert (r > case.args[2]).any() and (r <= case.args[2]).any(), label
    ws = _cases("weight_standardization_hidden")
    w = _find(ws, "constant input").args[0]
    assert np.ptp(w[0]) == 0 and np.ptp(w[1]) > 0
    sws = _cases("scaled_weight_standardization_hidden")
    w = _find(sws, "nearly constant unit").args[0]
    assert 0 < w[1].size * w[1].var() < 1e-4 < w[0].size * w[0].var()
    for grade_id in ("skip_init_hidden", "agc_backward_hidden"):
        cases = _cases(grade_id)
        assert all(c.state_of == (0,) for c in cases.values()), "every torch case checks the module after the call"
        assert any(c.repeat == 2 for c in cases.values())
    model_cases = _cases("agc_backward_hidden")
    assert not _find(model_cases, "model in evaluation mode").args[0].training
    frozen = _find(model_cases, "frozen first layer").args[0]
    assert not any(p.requires_grad for p in frozen.fc1.parameters())
    case = _find(model_cases, "zero-initialized head")
    zero = case.args[0]
    assert not zero.head.weight.any() and not zero.fc1.bias.any()
    twin = copy.deepcopy(zero)
    F.cross_entropy(twin(case.args[2][0]), case.args[2][1]).backward()
    assert not twin.fc1.weight.grad.any() and twin.head.weight.grad.any()
    for label, case in model_cases.items():  # a threshold placed among the ratios clips some units, not all
        if label.startswith("random MLP"):
            model, loss_fn, batch, clipping = case.args[:4]
            eps = case.args[4] if len(case.args) > 4 else 1e-3
            r = ps08._raw_ratios(model, loss_fn, batch, eps, case.kwargs.get("exclude", ()))
            assert clipping > 0 and (r > clipping).any() and (r <= clipping).any(), label
    assert all(c.args[3] > 0 for c in model_cases.values()), "AGC's threshold is positive"
    assert _find(_cases("skip_init_hidden"), "float32").args[2].dtype == torch.float32


def test_case_arguments_need_no_course_module_but_the_provided_ones():
    """The re-check process that calls learner code has only numpy, torch and the provided modules."""
    allowed = ("numpy", "torch", "builtins", "functools", "collections", "copyreg", "_codecs")
    allowed += provided_modules(PS)
    for part in PARTS:
        for case in part.make_cases():
            modules = modules_a_case_needs(case)
            bad = {m for m in modules if not m.startswith(allowed)}
            assert not bad, f"{part.grade_id}, case {case.label!r}: its arguments need {sorted(bad)}"


TORCH_PARTS = [p for p in REFERENCE_PARTS if NO_TORCH not in p.forbid]


@pytest.mark.parametrize("part", TORCH_PARTS, ids=_ids(TORCH_PARTS))
def test_results_do_not_depend_on_the_thread_count(part):
    """The out-of-kernel re-check may run with another thread count than the learner's kernel."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = [part.expected(case) for case in part.make_cases()]
        torch.set_num_threads(2)
        for case, expected in zip(part.make_cases(), single):
            part.judge(expected, case)
    finally:
        torch.set_num_threads(before)


def test_agc_reference_agrees_with_the_numpy_reference():
    """The torch reference of agc_backward clips exactly as ref.adaptive_clip_grad does, unit by unit."""
    case = next(iter(_cases("agc_backward_hidden").values()))
    model, loss_fn, batch, clipping = case.args[:4]
    exclude = case.kwargs.get("exclude", ())
    twin = copy.deepcopy(model)
    loss_fn(twin(batch[0]), batch[1]).backward()
    ps08.agc_backward_reference(model, loss_fn, batch, clipping, exclude=exclude)
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        expected = q.grad.numpy() if name in exclude else ref.adaptive_clip_grad(q.grad.numpy(), q.detach().numpy(),
                                                                                 clipping)
        np.testing.assert_allclose(p.grad.numpy(), expected, rtol=1e-12, atol=1e-15)  # same math, float64


def test_skip_init_reference_is_the_formula():
    """The lab's SkipInit through the driver: y = x + alpha f(x) and its gradients, by hand."""
    branch, (x, dy) = ps08.demo_branch(), ps08.demo_inputs()
    with torch.no_grad():
        f_x = ps08.demo_branch()(x)
    out = ps08.run_skip_init_reference(branch, 0.375, x, dy)  # exact in float32, torch's default dtype
    np.testing.assert_allclose(out["output"], (x + 0.375 * f_x).numpy(), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(out["alpha gradient"], float((dy * f_x).sum()), rtol=1e-12)
    assert out["alpha"] == 0.375 and int(out["number of parameter tensors (the branch's and alpha)"]) == 5


# ---------------------------------------------------------------------------------------------------
# The experiment's property checks.

@functools.cache
def _course_experiment() -> dict:
    data = ps08.load_digits_tensors()
    torch.set_num_threads(1)
    experiment = wrong08._training_with("residual_training")  # no mistake: the course's SkipInit and AGC
    return experiment(data.x_train, data.y_train, ps08.EXPERIMENT_SEEDS, lr=ps08.EXPERIMENT_LR,
                      steps=ps08.EXPERIMENT_STEPS, clipping=ps08.EXPERIMENT_CLIPPING)


def _judge_experiment(result):
    ps08.training_properties(result, None, name="residual_training(...)", label="the experiment")


def test_the_course_experiment_passes_with_margin():
    """The measured numbers the thresholds rest on: the plain network diverges within a few steps, SkipInit
    and AGC end far below their start (ratios around 0.06 and 0.1 to 0.3), SkipInit starts several
    times below the plain network."""
    result = _course_experiment()
    _judge_experiment(result)
    plain, skip, agc = result["plain"], result["skipinit"], result["agc"]
    assert (np.argmax(np.isnan(plain), axis=1) <= 8).all()
    assert (skip[:, -10:].mean(1) / skip[:, 0]).max() < 0.2
    assert (agc[:, -10:].mean(1) / agc[:, 0]).max() < 0.4
    assert (plain[:, 0] / skip[:, 0]).min() > 2 * ps08.START_RATIO


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("agc_clipped"), "expected a dict with the keys"),
    (lambda r: r.update(plain=r["plain"][:, :10]), "shape"),
    (lambda r: r.update(skipinit=np.where(np.arange(40) == 20, np.nan, r["skipinit"])), "step 20"),
    (lambda r: r.update(plain=np.nan_to_num(r["plain"], nan=1e6)), "never diverged"),
    (lambda r: r.update(agc=r["agc"][:, ::-1].copy()), "last 10 steps"),
    (lambda r: r.update(agc_clipped=r["agc_clipped"] * 2), "between 0 and 1"),
    (lambda r: r.update(plain=r["plain"].tolist()), "float numpy array"),
])
def test_the_property_checks_bite(mutate, message):
    result = copy.deepcopy(_course_experiment())
    mutate(result)
    with pytest.raises(GradingError, match=message):
        _judge_experiment(result)


# ---------------------------------------------------------------------------------------------------
# The notebook: the table adds up, the setup cell builds the Parts' inputs, the release is clean.

def _notebook(folder: str = "solutions"):
    return nbformat.read(ROOT / folder / PS / f"{PS}.ipynb", as_version=4)


def _meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def _autograded(nb):
    return [c for c in nb.cells if _meta(c).get("grade") and not _meta(c).get("solution") and c.cell_type == "code"]


TOTAL = re.compile(r"Points: (\d+) in total, (\d+) autograded and (\d+) for the written answers")
ROW = re.compile(r"^\|\s*(\d)\s*\|\s*(.+?)\s*\|\s*(\d*)\s*\|\s*(\d*)\s*\|\s*(\d*)\s*\|$", re.MULTILINE)


def test_the_stated_points_add_up():
    nb = _notebook()
    intro = nb.cells[0].source
    total, auto, hand = (int(v) for v in TOTAL.search(intro).groups())
    graded = [c for c in nb.cells if _meta(c).get("grade")]
    assert auto == sum(_meta(c)["points"] for c in graded if not _meta(c).get("solution"))
    assert hand == sum(_meta(c)["points"] for c in graded if _meta(c).get("solution"))
    assert total == auto + hand
    rows = ROW.findall(intro)
    assert sum(int(v or 0) for row in rows for v in row[2:]) == total, "the table's points add up to the total"
    points = {_meta(c)["grade_id"]: _meta(c)["points"] for c in graded}
    for part in PARTS:  # each function's row states its cells' points
        row = next(r for r in rows if f"`{'SkipInit' if part.function == 'run_skip_init' else part.function}`" in r[1])
        column = 3 if part.grade_id.endswith("_hidden") else 2
        assert int(row[column]) == points[part.grade_id], part.grade_id


class _Quiet:
    def write(self, *_):
        pass

    def flush(self):
        pass


def _run_cells(nb, select, namespace=None, tolerate=False):
    """Execute the code cells whose metadata satisfies ``select``, in order, in one namespace; with
    ``tolerate``, a cell that raises is skipped, as in a kernel (a release's "your code here" cells)."""
    namespace = {"__name__": "__main__"} if namespace is None else namespace
    for cell in nb.cells:
        if cell.cell_type == "code" and select(_meta(cell), cell):
            with contextlib.redirect_stdout(_Quiet()):
                try:
                    exec(compile(cell.source, f"<{_meta(cell).get('grade_id')}>", "exec"), namespace)
                except Exception:
                    if not tolerate:
                        raise
    return namespace


def _is_program(meta, cell):
    """Setup, read-only and solution cells, without the plot (it trains three seeds and draws)."""
    return not meta.get("grade") and cell.id != "experiment-plot"


@functools.cache
def _solution_program() -> dict:
    threads = torch.get_num_threads()
    namespace = _run_cells(_notebook(), _is_program)
    torch.set_num_threads(threads)  # the setup cell pins one thread
    return namespace


def _visible_cells(nb):
    return [c for c in _autograded(nb) if "BEGIN HIDDEN TESTS" not in c.source]


def _same(a, b) -> bool:
    """Equal inputs: arrays and tensors by value and dtype, modules by state and mode."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b))
    if isinstance(a, torch.nn.Module):
        if not isinstance(b, torch.nn.Module) or type(a) is not type(b):
            return False
        sa, sb = a.state_dict(), b.state_dict()
        return (sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa) and repr(a) == repr(b)
                and [m.training for m in a.modules()] == [m.training for m in b.modules()])
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b


def test_the_setup_cell_builds_what_the_parts_use():
    namespace = _solution_program()
    assert _same(namespace["demo_branch"](), ps08.demo_branch())
    assert _same(namespace["demo_inputs"](), ps08.demo_inputs())
    assert _same(namespace["demo_mlp"](), ps08.demo_mlp())
    assert namespace["RELU_GAMMA"] == ref.RELU_GAMMA


def test_visible_tests_fail_on_the_release():
    release = _notebook("exercises")
    namespace = _run_cells(release, _is_program, tolerate=True)
    visible_ids = {_meta(c)["grade_id"] for c in _visible_cells(_notebook())}
    visible = [c for c in release.cells if _meta(c).get("grade_id") in visible_ids]
    assert len(visible) == len(visible_ids) >= 5
    for cell in visible:
        with pytest.raises((NotImplementedError, GradingError), match="not implemented|^$"):
            exec(compile(cell.source, _meta(cell)["grade_id"], "exec"), copy.copy(namespace))


LEAKS = ["### BEGIN SOLUTION", "### END SOLUTION", "BEGIN HIDDEN TESTS", "Rubric", "Model answer"]


def test_release_leaks_nothing_and_keeps_the_structure():
    source, release = _notebook(), _notebook("exercises")
    text = "\n".join(cell.source for cell in release.cells)
    for leak in LEAKS:
        assert leak not in text, f"the release contains {leak!r}"
    hidden = [c for c in release.cells if "check_part" in c.source]
    assert [_meta(c)["grade_id"] for c in hidden] == ["residual_training"], \
        "only the experiment's visible test calls check_part in the release"
    graded_source = {_meta(c)["grade_id"]: _meta(c).get("points") for c in source.cells}
    graded_release = {_meta(c)["grade_id"]: _meta(c).get("points") for c in release.cells}
    assert graded_source == graded_release, "the release is stale: run normcourse release"
    for cell in release.cells:
        meta = _meta(cell)
        if meta.get("solution") and cell.cell_type == "code" and "def " in cell.source:
            assert "raise NotImplementedError()" in cell.source and '"""' in cell.source, \
                "the stub keeps the signature and docstring"
        if meta.get("solution") and cell.cell_type == "markdown":
            assert "YOUR ANSWER HERE" in cell.source
