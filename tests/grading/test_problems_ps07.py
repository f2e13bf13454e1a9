"""Problem set 7 (BatchNorm in practice) in particular: its parts, points and rules, the edge cases its
hidden parts promise, the messages its torch parts give about the model's state, correct implementations
written differently from the solution, cases that are cheap and independent of the thread count, and its
release.

What every set must satisfy (the reference passes, wrong implementations fail naming the case, one bug
costs one part, visible Parts replay the visible cells, notebook conventions, stated totals, the solution
keeps every point) is checked for all registered sets in test_all_parts.py; the wrong implementations
live in wrong/ps07_batchnorm_practice.py.
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import normcourse.reference as ref  # noqa: E402
from normcourse.grading.compare import GradingError  # noqa: E402
from normcourse.grading.parts import get_part, parts_of, provided_modules  # noqa: E402
from normcourse.grading.rules import NO_TORCH  # noqa: E402
from normcourse.problems import ps07_batchnorm_practice as ps07  # noqa: E402
from problem_notebooks import modules_a_case_needs, notebook_run, same_value  # noqa: E402
from wrong.ps07_batchnorm_practice import (_evaluate_batch_norm_only, _evaluate_never_restores,  # noqa: E402
                                           _evaluate_no_grad_only, _evaluate_restores_model_mode, _freeze_mode_only,
                                           _freeze_norm_base, _freeze_whole_model_eval)

ROOT = Path(__file__).resolve().parents[2]
PS = "ps07_batchnorm_practice"
ALL_PARTS = parts_of(PS)
HIDDEN_PARTS = [p for p in ALL_PARTS if p.grade_id.endswith("_hidden")]
VISIBLE_PARTS = [p for p in ALL_PARTS if not p.grade_id.endswith("_hidden")]
NUMPY_FUNCTIONS = {"fuse_linear_bn_weights", "fuse_conv_bn_weights", "ghost_batch_norm", "batch_renorm"}
TORCH_FUNCTIONS = {"freeze_batch_norm", "evaluate"}


def _ids(parts):
    return [p.grade_id for p in parts]


def _notebook(folder: str = "solutions"):
    return nbformat.read(ROOT / folder / PS / f"{PS}.ipynb", as_version=4)


def _meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The notebook pins one thread; tiny models are also much faster so on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------
# The set's shape: parts, points, rules.

def test_parts_points_and_rules():
    points = {p.grade_id: p.points for p in ALL_PARTS}
    assert points == {"fuse_linear_bn": 1, "fuse_linear_bn_hidden": 1, "fuse_conv_bn": 1, "fuse_conv_bn_hidden": 2,
                      "freeze_batch_norm": 1, "freeze_batch_norm_hidden": 2, "evaluate": 1, "evaluate_hidden": 2,
                      "ghost_batch_norm": 1, "ghost_batch_norm_hidden": 3, "batch_renorm": 1,
                      "batch_renorm_hidden": 2}
    for part in ALL_PARTS:
        if part.function in NUMPY_FUNCTIONS:
            assert part.forbid == (NO_TORCH,), f"{part.grade_id} is numpy only"
        else:
            assert part.function in TORCH_FUNCTIONS and part.forbid == (), part.grade_id
    assert provided_modules(PS) == (), "the notebook hands the learner no course module"
    assert len({p.function for p in ALL_PARTS}) >= 5 and len(HIDDEN_PARTS) == len(VISIBLE_PARTS) == 6


# ---------------------------------------------------------------------------------------------------
# Edge cases: each hidden part names the ones that apply to its inputs (labels matched as substrings).

ARRAY_EDGES = ["batch size 1", "constant input", "magnitude 1e4", "float32", "non-contiguous"]
FOLD_EDGES = ["batch size 1 analogue", "running_var exactly 0", "magnitude 1e4", "float32", "non-contiguous"]
REQUIRED_EDGES = {
    "fuse_linear_bn_hidden": FOLD_EDGES + ["linear_b None", "bn_w None", "without a bias"],
    "fuse_conv_bn_hidden": FOLD_EDGES + ["Conv1d", "Conv3d", "ConvTranspose", "grouped", "C_in != C_out"],
    # A model has no batch, magnitude or memory layout: the edges are kinds of models and their states.
    "freeze_batch_norm_hidden": ["nested blocks", "evaluation mode", "frozen", "affine=False", "no BatchNorm at all",
                                 "InstanceNorm", "GroupNorm", "LayerNorm", "SyncBatchNorm", "BatchNorm3d",
                                 "a single BatchNorm2d", ".grad set", "float32", "called twice"],
    "evaluate_hidden": ARRAY_EDGES + ["Dropout", "frozen BatchNorm layers", "already in evaluation mode",
                                      "random submodules in evaluation mode", "larger than the data", ".grad set",
                                      "without BatchNorm", "called twice"],
    "ghost_batch_norm_hidden": ARRAY_EDGES + ["'average'", "'sequential'", "one ghost batch", "evaluation mode",
                                              "no running statistics", "NCHW", "NCL"],
    "batch_renorm_hidden": ARRAY_EDGES + ["r clipped above", "d clipped", "r_max=1, d_max=0", "evaluation mode",
                                          "far from the batch's", "NCHW"],
}


def test_every_hidden_part_lists_its_edge_cases():
    assert {p.grade_id for p in HIDDEN_PARTS} == set(REQUIRED_EDGES)


@pytest.mark.parametrize("part", HIDDEN_PARTS, ids=_ids(HIDDEN_PARTS))
def test_cases_cover_edge_cases(part):
    labels = " | ".join(case.label for case in part.make_cases())
    for edge in REQUIRED_EDGES[part.grade_id]:
        assert edge in labels, f"{part.grade_id}: no {edge!r} case among: {labels}"


def _case(grade_id, start):
    return next(c for c in get_part(PS, grade_id).make_cases() if c.label.startswith(start))


def test_edge_cases_really_are_edge_cases():
    """The labels do not lie (spot checks on the inputs behind them)."""
    assert _case("fuse_linear_bn_hidden", "batch size 1").args[0].shape == (1, 1)
    assert np.sum(_case("fuse_linear_bn_hidden", "constant input").args[3] == 0) == 2
    assert np.abs(_case("fuse_linear_bn_hidden", "magnitude 1e4").args[0]).max() > 1e3
    assert all(a.dtype == np.float32 for a in _case("fuse_linear_bn_hidden", "float32:").args
               if isinstance(a, np.ndarray))
    assert not _case("fuse_conv_bn_hidden", "non-contiguous").args[0].flags.c_contiguous
    transposed = _case("fuse_conv_bn_hidden", "ConvTranspose2d(2, 4, 3)")
    assert transposed.kwargs == {"transpose": True} and transposed.args[0].shape[1] == transposed.args[2].shape[0] != \
        transposed.args[0].shape[0]
    for label in ("batch size 1 per ghost batch", "batch size 1 in evaluation"):
        case = _case("ghost_batch_norm_hidden", label)
        assert case.args[1] == 1 or case.args[0].shape[0] == 1
    assert np.ptp(_case("ghost_batch_norm_hidden", "constant input").args[0]) == 0
    assert _case("ghost_batch_norm_hidden", "float32").args[0].dtype == np.float32
    assert _case("batch_renorm_hidden", "batch size 1 in training").args[0].shape[0] == 1
    x = _case("evaluate_hidden", "constant input").args[1]
    assert torch.equal(x, x[:1].expand_as(x))
    assert not _case("evaluate_hidden", "non-contiguous").args[1].is_contiguous()
    assert _case("evaluate_hidden", "float32").args[0][0].weight.dtype == torch.float32
    mixed = _case("evaluate_hidden", "frozen BatchNorm layers").args[0]
    assert mixed.training and any(isinstance(m, nn.BatchNorm1d) and not m.training for m in mixed.modules())
    single = _case("freeze_batch_norm_hidden", "the model is a single BatchNorm2d").args[0]
    assert isinstance(single, nn.BatchNorm2d)
    for grade_id in ("freeze_batch_norm_hidden", "evaluate_hidden"):
        cases = get_part(PS, grade_id).make_cases()
        assert all(c.state_of == (0,) and c.repeat == 2 for c in cases), "every model case checks the model, twice"


def test_renorm_cases_really_clip():
    """The clipping cases make the reference clip r or d (and the unclipped ones leave some inside)."""
    for label, which in (("r clipped above", "r"), ("d clipped", "d"), ("constant input", "r")):
        case = _case("batch_renorm_hidden", label)
        x, rm, rs = (np.asarray(a, dtype=np.float64) for a in case.args[:3])
        eps, r_max, d_max = case.args[7], case.args[8], case.args[9]
        axes = (0,) + tuple(range(2, x.ndim))
        sd = np.sqrt(x.var(axis=axes) + eps)
        raw = sd / rs if which == "r" else (x.mean(axis=axes) - rm) / rs
        limit = r_max if which == "r" else d_max
        assert np.any((raw > limit) | (raw < (1 / r_max if which == "r" else -d_max))), label


# ---------------------------------------------------------------------------------------------------
# The torch parts' state messages say what this function's contract wants (Part.state_hint), not the
# shared advice for functions that must leave the model alone.

def test_freeze_messages_say_what_the_contract_wants():
    """A BatchNorm that is not frozen is told to freeze, anything else to stay as it was."""
    part = get_part(PS, "freeze_batch_norm_hidden")
    with pytest.raises(GradingError, match=r"requires_grad is True, expected False; this is a BatchNorm layer"):
        part.check(_freeze_mode_only)
    with pytest.raises(GradingError, match=r"\.training is False, expected True; this is not a BatchNorm layer"):
        part.check(_freeze_whole_model_eval)
    with pytest.raises(GradingError, match=r"not BatchNorm layers, or listed twice: \['2'\]"):
        part.check(_freeze_norm_base)


def test_evaluate_messages_name_the_state_that_changed():
    part = get_part(PS, "evaluate_hidden")
    # No grad without eval: training-mode BatchNorm normalizes with the chunk's statistics, so the outputs
    # already differ (they are compared before the model's state, whose running statistics moved too). The
    # message names the case and the size of the difference, and says what the expected outputs are, which
    # is what the learner has to change.
    with pytest.raises(GradingError, match=r"^evaluate\(\.\.\.\) \(call 1 of 2 on the same arguments\) for case "
                                           r"'random MLP in training mode: .*': \d+ of \d+ elements differ.*"
                                           r"Expected: the model's outputs in evaluation mode.*running statistics"):
        part.check(_evaluate_no_grad_only)
    with pytest.raises(GradingError, match=r"'MLP with Dropout\(0\.5\).*elements differ.*dropout off"):
        part.check(_evaluate_batch_norm_only)
    with pytest.raises(GradingError, match=r"\.training is False, expected True"):
        part.check(_evaluate_never_restores)
    frozen = [c for c in part.make_cases() if c.label.startswith("frozen BatchNorm layers")]
    with pytest.raises(GradingError, match=r"module 1 \.training is True, expected False; put back every submodule's own"):
        part.judge(part.call(_evaluate_restores_model_mode, frozen[0]), frozen[0])


# ---------------------------------------------------------------------------------------------------
# Correct implementations written differently from the solution must pass.

def _fuse_linear_einsum(linear_w, linear_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b):
    dtype = np.asarray(linear_w).dtype
    rm = np.asarray(bn_rm, dtype=np.float64)
    gamma = np.ones_like(rm) if bn_w is None else np.asarray(bn_w, dtype=np.float64)
    beta = np.zeros_like(rm) if bn_b is None else np.asarray(bn_b, dtype=np.float64)
    inv = gamma / np.sqrt(np.asarray(bn_rv, dtype=np.float64) + bn_eps)
    w = np.einsum("o,oi->oi", inv, np.asarray(linear_w, dtype=np.float64))
    b = beta - inv * rm if linear_b is None else beta + inv * (np.asarray(linear_b, dtype=np.float64) - rm)
    return w.astype(dtype), b.astype(dtype)


def _fuse_conv_moveaxis(conv_w, conv_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b, transpose=False):
    dtype = np.asarray(conv_w).dtype
    w = np.moveaxis(np.asarray(conv_w, dtype=np.float64), 1 if transpose else 0, -1)
    rm = np.asarray(bn_rm, dtype=np.float64)
    gamma = 1.0 if bn_w is None else np.asarray(bn_w, dtype=np.float64)
    a = gamma / np.sqrt(np.asarray(bn_rv, dtype=np.float64) + bn_eps)
    b = 0.0 if conv_b is None else np.asarray(conv_b, dtype=np.float64)
    beta = 0.0 if bn_b is None else np.asarray(bn_b, dtype=np.float64)
    fused = np.moveaxis(w * a, -1, 1 if transpose else 0)
    return fused.astype(dtype), (a * (b - rm) + beta).astype(dtype)


def _freeze_by_class_name(model):
    """'BatchNorm' in the class name: BatchNorm1d/2d/3d and SyncBatchNorm, nothing else. Correct here."""
    names = []
    for name, module in model.named_modules():
        if "BatchNorm" in type(module).__name__:
            module.train(False)
            for p in module.parameters(recurse=False):
                p.requires_grad = False
            names.append(name)
    return names


def _evaluate_state_dict_restore(model, x, batch_size=64):
    """No no_grad, detach instead; modes restored from a dict by name."""
    modes = {name: m.training for name, m in model.named_modules()}
    model.eval()
    outputs = [model(chunk).detach() for chunk in torch.split(x, batch_size)]
    for name, m in model.named_modules():
        m.training = modes[name]
    return torch.cat(outputs).numpy()


def _ghost_loops(x, ghost_batch_size, running_mean=None, running_var=None, weight=None, bias=None, training=True,
                 momentum=0.1, eps=1e-5, stats_update="average"):
    """A loop over ghost batches calling a BatchNorm step, like a module applied chunk by chunk."""
    if not training:
        return ref.batch_norm(x, running_mean, running_var, weight, bias, False, momentum, eps)
    chunks = np.split(np.asarray(x), np.asarray(x).shape[0] // ghost_batch_size)
    if stats_update == "sequential":
        return np.concatenate([ref.batch_norm(g, running_mean, running_var, weight, bias, True, momentum, eps)
                               for g in chunks])
    stats = [(np.zeros(np.asarray(x).shape[1]), np.ones(np.asarray(x).shape[1])) for _ in chunks]
    out = np.concatenate([ref.batch_norm(g, m, v, weight, bias, True, 1.0, eps) for g, (m, v) in zip(chunks, stats)])
    if running_mean is not None:
        running_mean[...] = (1 - momentum) * running_mean + momentum * np.mean([m for m, _ in stats], axis=0)
        running_var[...] = (1 - momentum) * running_var + momentum * np.mean([v for _, v in stats], axis=0)
    return out


def _renorm_float32_reductions(x, running_mean, running_std, weight=None, bias=None, training=False, momentum=0.01,
                               eps=1e-5, r_max=3.0, d_max=5.0):
    """Reduces a float32 input in float32 (as PyTorch would), through the correction helper."""
    x = np.asarray(x)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if training:
        axes = (0,) + tuple(range(2, x.ndim))
        mu, sigma = x.mean(axis=axes), np.sqrt(x.var(axis=axes) + np.float32(eps) if x.dtype == np.float32
                                               else x.var(axis=axes) + eps)
        r, d = ref.batch_renorm_correction(mu, sigma, running_mean, running_std, r_max, d_max)
        y = (x - mu.reshape(shape)) / sigma.reshape(shape) * r.reshape(shape) + d.reshape(shape)
        running_mean += momentum * (mu - running_mean)
        running_std += momentum * (sigma - running_std)
    else:
        y = (x - running_mean.reshape(shape)) / running_std.reshape(shape)
    y = y * (1 if weight is None else weight.reshape(shape)) + (0 if bias is None else bias.reshape(shape))
    return y.astype(x.dtype)


CORRECT = {
    (PS, "fuse_linear_bn_hidden"): [_fuse_linear_einsum],
    (PS, "fuse_conv_bn_hidden"): [_fuse_conv_moveaxis],
    (PS, "freeze_batch_norm_hidden"): [_freeze_by_class_name],
    (PS, "evaluate_hidden"): [_evaluate_state_dict_restore],
    (PS, "ghost_batch_norm_hidden"): [_ghost_loops],
    (PS, "batch_renorm_hidden"): [_renorm_float32_reductions],
}


@pytest.mark.parametrize("key, correct", [(k, f) for k, fs in CORRECT.items() for f in fs],
                         ids=[f"{k[1]}:{f.__name__}" for k, fs in CORRECT.items() for f in fs])
def test_correct_variants_pass(key, correct):
    assert get_part(*key).check(correct) > 0
    visible = get_part(key[0], key[1].removesuffix("_hidden"))
    assert visible.check(correct) > 0


# ---------------------------------------------------------------------------------------------------
# Cases: only numpy, torch and plain objects (the re-check process cannot import the course), results
# independent of the number of torch threads, and cheap.

def test_case_arguments_need_no_course_module():
    for part in ALL_PARTS:
        for case in part.make_cases():
            modules = modules_a_case_needs(case)
            allowed = ("numpy", "torch", "builtins", "collections", "copyreg", "_codecs")
            bad = {m for m in modules if not m.startswith(allowed)}
            assert not bad, f"{part.grade_id}, case {case.label!r}: its arguments need {sorted(bad)}"
            if part.function in NUMPY_FUNCTIONS:
                assert not any(m.startswith("torch") for m in modules), f"{part.grade_id}: torch in a numpy case"


TORCH_PARTS = [p for p in ALL_PARTS if p.function in TORCH_FUNCTIONS]


@pytest.mark.parametrize("part", TORCH_PARTS, ids=_ids(TORCH_PARTS))
def test_results_do_not_depend_on_the_thread_count(part):
    single = [part.expected(case) for case in part.make_cases()]
    torch.set_num_threads(2)
    for case, expected in zip(part.make_cases(), single):
        part.judge(expected, case)  # the one-thread result passes against the two-thread reference


@pytest.mark.parametrize("part", ALL_PARTS, ids=_ids(ALL_PARTS))
def test_every_case_is_fast(part):
    """The grader re-runs every part out of the kernel: a case must stay well under a second. Measured
    below 0.1 s per case on a loaded 2-core machine; 1 s leaves room for a slower one."""
    for case in part.make_cases():
        start = time.perf_counter()
        part.judge(part.call(part.reference, case), case)
        assert time.perf_counter() - start < 1.0, case.label


# ---------------------------------------------------------------------------------------------------
# The notebook: the intro's table agrees with the Parts, visible tests bite, the release is clean.

def test_the_intros_table_gives_each_parts_points():
    intro = _notebook().cells[0].source
    for part in VISIBLE_PARTS:
        hidden = get_part(PS, part.grade_id + "_hidden")
        line = next(ln for ln in intro.splitlines() if f"`{part.function}`" in ln)
        assert re.search(rf"\| {part.points:g} \| {hidden.points:g} \|", line), line


class _Quiet(io.StringIO):
    pass


def _run_cells(nb, select, namespace=None, tolerate=False):
    """Execute the code cells whose nbgrader metadata satisfies ``select``, in order, in one namespace.
    With ``tolerate``, a cell that raises is skipped, as in a kernel."""
    namespace = {"__name__": "__main__"} if namespace is None else namespace
    for cell in nb.cells:
        if cell.cell_type == "code" and select(_meta(cell)):
            with contextlib.redirect_stdout(_Quiet()):
                try:
                    exec(compile(cell.source, f"<{_meta(cell).get('grade_id')}>", "exec"), namespace)
                except Exception:
                    if not tolerate:
                        raise
    return namespace


def _is_program(meta):
    """Setup, read-only, explore and solution cells: the learner's program without the tests."""
    return bool(meta) and not meta.get("grade")


def _autograded(nb):
    return [c for c in nb.cells if _meta(c).get("grade") and not _meta(c).get("solution") and c.cell_type == "code"]


def _visible_cells(nb):
    return [c for c in _autograded(nb) if "BEGIN HIDDEN TESTS" not in c.source]


def test_visible_tests_fail_on_the_release():
    release = _notebook("exercises")
    namespace = _run_cells(release, _is_program, tolerate=True)
    visible_ids = {p.grade_id for p in VISIBLE_PARTS}
    visible = [c for c in release.cells if _meta(c).get("grade_id") in visible_ids]
    assert len(visible) == 6
    for cell in visible:
        with pytest.raises((NotImplementedError, GradingError), match="not implemented|^$"):
            exec(compile(cell.source, _meta(cell)["grade_id"], "exec"), copy.copy(namespace))


LEAKS = ["### BEGIN SOLUTION", "### END SOLUTION", "BEGIN HIDDEN TESTS", "check_part", "Rubric", "Model answer"]


def test_release_leaks_nothing_and_keeps_the_structure():
    source, release = _notebook(), _notebook("exercises")
    text = "\n".join(cell.source for cell in release.cells)
    for leak in LEAKS:
        assert leak not in text, f"the release contains {leak!r}"
    graded_source = {_meta(c)["grade_id"]: _meta(c).get("points") for c in source.cells if _meta(c)}
    graded_release = {_meta(c)["grade_id"]: _meta(c).get("points") for c in release.cells if _meta(c)}
    assert graded_source == graded_release, "the release is stale: run normcourse release"
    assert [c.id for c in source.cells] == [c.id for c in release.cells]
    for cell in release.cells:
        meta = _meta(cell)
        if meta.get("solution") and cell.cell_type == "code":
            assert "raise NotImplementedError()" in cell.source and '"""' in cell.source, \
                "the stub keeps the signature and docstring"
        if meta.get("solution") and cell.cell_type == "markdown":
            assert "YOUR ANSWER HERE" in cell.source


def test_numpy_solutions_do_not_touch_torch():
    """The numpy parts are re-checked where torch does not exist: their solution cells never name it."""
    for cell in _notebook().cells:
        if _meta(cell).get("solution") and cell.cell_type == "code":
            function = re.search(r"def (\w+)\(", cell.source)[1]
            if function in NUMPY_FUNCTIONS:
                body = cell.source.split("### BEGIN SOLUTION")[1]
                assert not re.search(r"\b(torch|nn|F)\.", body), function
    setup = next(c for c in _notebook().cells if _meta(c).get("grade_id") == "setup")
    assert "torch" not in setup.source, "the numpy setup cell runs where torch is forbidden"


def test_demo_model_is_the_notebooks():
    """The visible Parts rebuild the setup cell's demo_model(): the same weights, statistics, modes, input."""
    (ours, x_ours), (theirs, x_theirs) = ps07.demo_model(), notebook_run(PS).snapshot["demo_model"]()
    assert same_value(ours, theirs) and same_value(x_ours, x_theirs)
