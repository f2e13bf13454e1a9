"""Problem sets 4-6 (Jacobians, optimization, Transformers) in particular: the edge cases their hidden
parts promise, correct implementations written differently from the solutions (the entropy part accepts
them and rejects epsilon fudges), torch results that do not depend on the thread count, case arguments
the re-check can rebuild, the ps06 attention oracle, the releases, and ps06's "no warnings" rule in the
kernel and in the out-of-kernel re-check.

What every set must satisfy (the reference passes, wrong implementations fail naming the case, one bug
costs one part, visible Parts replay the visible cells, notebook conventions, stated totals, the solution
keeps every point, the experiments' checks reject wrong experiments) is checked for all registered sets
in test_all_parts.py; the wrong implementations live in wrong/ps04_jacobians.py, wrong/ps05_optimization.py
and wrong/ps06_transformers.py.

The notebook checks run the notebooks' code cells in this process (no kernel), which takes seconds;
the full nbgrader round trip (autograde gives full marks / zero) is the CI gate's job.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from pathlib import Path

import nbformat
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from normcourse.grading.compare import GradingError  # noqa: E402
from normcourse.grading.parts import get_part, parts_of  # noqa: E402
from normcourse.reference import jacobians  # noqa: E402
from wrong.ps06_transformers import ENTROPY_FUDGES  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PROBLEM_SETS = ("ps04_jacobians", "ps05_optimization", "ps06_transformers")
ALL_PARTS = [p for ps in PROBLEM_SETS for p in parts_of(ps)]
HIDDEN_PARTS = [p for p in ALL_PARTS if p.grade_id.endswith("_hidden")]
VISIBLE_PARTS = [p for p in ALL_PARTS if not p.grade_id.endswith("_hidden")]
TORCH_SETS = ("ps05_optimization", "ps06_transformers")


def _ids(parts):
    return [f"{p.problem_set}:{p.grade_id}" for p in parts]


def _notebook(problem_set: str, folder: str = "solutions"):
    return nbformat.read(ROOT / folder / problem_set / f"{problem_set}.ipynb", as_version=4)


def _meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


# The reference passing its own parts, and five parts per set, are checked in test_all_parts.py.

# ---------------------------------------------------------------------------------------------------
# Edge cases: each hidden part names the ones that apply to its inputs (a vector has no batch axis, a
# model is not an array that can be non-contiguous). Labels are matched as substrings. Visible parts
# replay their cell's calls instead (test_visible_parts_replay_the_visible_cells).

VECTOR_EDGES = ["width 2", "constant input", "magnitude 1e4", "float32"]
MODEL_EDGES = ["a single linear layer", "batch size 2", "constant input", "magnitude 1e4", "float32",
               "evaluation mode", "frozen first layer", "called twice on the same model"]
STEP_EDGES = MODEL_EDGES + ["[0, 0.1, 0.3]"]
ARRAY_EDGES = ["batch size 1", "constant input", "magnitude 1e4", "float32", "non-contiguous"]
REQUIRED_EDGES = {
    "layer_norm_jacobian_hidden": VECTOR_EDGES + ["width d=1"],
    "rms_norm_jacobian_hidden": VECTOR_EDGES + ["width d=1", "eps=None"],
    "batch_norm_jacobian_hidden": VECTOR_EDGES,
    "layer_norm_jacobian_eigenvalues_hidden": VECTOR_EDGES + ["width d=1"],
    "gradient_norm_hidden": MODEL_EDGES,
    "internal_covariate_shift_hidden": MODEL_EDGES + ["lr=0"],
    "loss_along_gradient_hidden": STEP_EDGES,
    "gradient_changes_hidden": STEP_EDGES,
    "effective_beta_smoothness_hidden": STEP_EDGES,
    "attention_probabilities_hidden": ["constant input", "magnitude 1e4", "float32", "non-contiguous",
                                       "a single key", "width d = 1"],
    "attention_entropy_hidden": ["one-hot", "magnitude 1e4", "float32", "non-contiguous", "a single key",
                                 "probabilities of about 1e-9", "probabilities of about 1e-15", "smallest float64"],
    "per_layer_grad_norms_hidden": ["depth 1", "batch size 1", "sequence length 1", "float32", "pre-rms_norm",
                                    "post-layer_norm", "evaluation mode", "called twice on the same model"],
    "layer_norm_fixed_hidden": ARRAY_EDGES + ["width 1", "as an int", "NCHW"],
}


def test_every_hidden_part_lists_its_edge_cases():
    assert {p.grade_id for p in HIDDEN_PARTS} == set(REQUIRED_EDGES)


@pytest.mark.parametrize("part", HIDDEN_PARTS, ids=_ids(HIDDEN_PARTS))
def test_cases_cover_edge_cases(part):
    labels = " | ".join(case.label for case in part.make_cases())
    for edge in REQUIRED_EDGES[part.grade_id]:
        assert edge in labels, f"{part.grade_id}: no {edge!r} case among: {labels}"


def test_edge_cases_really_are_edge_cases():
    """The labels do not lie (spot checks on the inputs behind them)."""
    cases = {c.label: c for c in get_part("ps04_jacobians", "layer_norm_jacobian_hidden").make_cases()}
    assert cases["width d=1"].args[0].shape == (1,)
    assert np.ptp(cases["constant input (zero variance)"].args[0]) == 0
    assert np.abs(cases["magnitude 1e4"].args[0]).max() > 1e3
    assert cases["float32 input"].args[0].dtype == np.float32
    model_cases = {c.label.split(",")[0]: c for c in get_part("ps05_optimization", "gradient_norm_hidden").make_cases()}
    x = model_cases["constant input (8 identical samples)"].args[2][0]
    assert torch.equal(x, x[:1].expand_as(x))
    assert not model_cases["BatchNorm network in evaluation mode (running statistics; keep the mode)"].args[0].training
    assert model_cases["float32 model and inputs"].args[2][0].dtype == torch.float32
    frozen = model_cases["frozen first layer (requires_grad=False: not a trainable parameter)"].args[0]
    assert not any(p.requires_grad for p in frozen[0].parameters())
    assert all(c.state_of == (0,) for c in model_cases.values()), "every model case checks the model after the call"
    assert any(c.repeat == 2 for c in model_cases.values())
    entropy = {c.label: c.args[0] for c in get_part("ps06_transformers", "attention_entropy_hidden").make_cases()}
    tiny = next(v for k, v in entropy.items() if "about 1e-15" in k)
    assert tiny.shape[-1] == 1001 and np.sum(tiny < 1e-14) == 2000 and np.allclose(tiny.sum(-1), 1, atol=1e-15)


# ---------------------------------------------------------------------------------------------------
# Correct implementations written differently from the solutions must pass (tolerances are not tight
# enough to reject honest rounding differences).

def _entropy_masked_log(probs):
    p = np.asarray(probs, dtype=np.float64)
    return -np.sum(p * np.log(p, out=np.zeros_like(p), where=p > 0), axis=-1)


def _entropy_renormalized(probs):
    """Normalizes each row first (scipy.stats.entropy does), which moves values by an ulp."""
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum(axis=-1, keepdims=True)
    return -np.sum(p * np.log(np.where(p > 0, p, 1.0)), axis=-1)


def _entropy_via_log2(probs):
    p = np.asarray(probs, dtype=np.float64)
    return -np.log(2.0) * np.einsum("...s,...s->...", p, np.log2(np.where(p > 0, p, 1.0)))


def _entropy_suppressed_warnings(probs):
    """Computes log(0) but under errstate, so no warning is raised, and zeroes the products."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = p * np.log(p)
    return -np.sum(np.where(p > 0, terms, 0.0), axis=-1)


CORRECT = {
    ("ps06_transformers", "attention_entropy_hidden"): [_entropy_masked_log, _entropy_renormalized, _entropy_via_log2,
                                                        _entropy_suppressed_warnings],
    ("ps04_jacobians", "rms_norm_jacobian_hidden"): [lambda x, weight=None, eps=None: jacobians.rms_norm_jacobian(
        np.asarray(x, dtype=np.float64), weight, float(np.finfo(np.asarray(x).dtype).eps) if eps is None else eps)],
}


@pytest.mark.parametrize("key, correct", [(k, f) for k, fs in CORRECT.items() for f in fs],
                         ids=[f"{k[1]}:{getattr(f, '__name__', 'fn')}" for k, fs in CORRECT.items() for f in fs])
def test_correct_variants_pass(key, correct):
    assert get_part(*key).check(correct) > 0


@pytest.mark.parametrize("fudge", ENTROPY_FUDGES, ids=[f.__name__ for f in ENTROPY_FUDGES])
def test_entropy_fudges_fail_on_the_rows_of_tiny_probabilities(fudge):
    """Each epsilon fudge fails on a case built for it (rows of tiny probabilities), whatever else it fails."""
    part = get_part("ps06_transformers", "attention_entropy_hidden")
    tiny = [c for c in part.make_cases() if "probabilities of about" in c.label or "smallest float64" in c.label]
    failures = []
    for case in tiny:
        try:
            part.judge(part.call(fudge, case), case)
        except GradingError as exc:
            failures.append(str(exc))
    assert failures, f"{fudge.__name__} passes every row of tiny probabilities"


# ---------------------------------------------------------------------------------------------------
# Results must not depend on the number of torch threads: the out-of-kernel re-check runs in
# another process, possibly with another thread count than the learner's kernel.

TORCH_PARTS = [p for ps in TORCH_SETS for p in parts_of(ps) if p.reference is not None]


@pytest.mark.parametrize("part", TORCH_PARTS, ids=_ids(TORCH_PARTS))
def test_results_do_not_depend_on_the_thread_count(part):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        compared = [case for case in part.make_cases() if case.raises is None]   # a raising case has no result
        single = [part.expected(case) for case in compared]
        torch.set_num_threads(2)
        for case, expected in zip(compared, single):
            part.judge(expected, case)  # the one-thread result must pass against the two-thread reference
    finally:
        torch.set_num_threads(before)


def test_attention_oracle_matches_the_formula():
    """The ps06 attention reference (torch.softmax in float64) against a numpy transcription."""
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4))
    logits = q @ k.transpose(0, 2, 1) / 2.0
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    from normcourse.problems.ps06_transformers import attention_probabilities_reference
    np.testing.assert_allclose(attention_probabilities_reference(q, k), expected, rtol=1e-14, atol=1e-15)


def test_case_arguments_need_no_course_module_but_the_provided_ones():
    """The re-check process that calls learner code has only numpy, torch and the provided modules: every
    object in a case (a model, a loss, a sublayer) must come from those."""
    from problem_notebooks import modules_a_case_needs

    from normcourse.grading.parts import provided_modules

    for part in ALL_PARTS:
        allowed = ("numpy", "torch", "builtins", "functools", "collections", "copyreg", "_codecs")
        allowed += provided_modules(part.problem_set)
        for case in part.make_cases():
            modules = modules_a_case_needs(case)
            bad = {m for m in modules if not m.startswith(allowed)}
            assert not bad, f"{part.grade_id}, case {case.label!r}: its arguments need {sorted(bad)}"


# ---------------------------------------------------------------------------------------------------
# Releases: the visible tests fail on the stubs, nothing leaks, the structure is the source's.

def _autograded(nb):
    return [c for c in nb.cells if _meta(c).get("grade") and not _meta(c).get("solution") and c.cell_type == "code"]


class _Quiet:
    def write(self, *_):
        pass

    def flush(self):
        pass


def _run_cells(nb, select, namespace=None, quiet=True, tolerate=False):
    """Execute the code cells whose nbgrader metadata satisfies ``select``, in order, in one namespace.
    With ``tolerate``, a cell that raises is skipped, as in a kernel (a release's "your code here" cells)."""
    namespace = {"__name__": "__main__"} if namespace is None else namespace
    for cell in nb.cells:
        if cell.cell_type == "code" and select(_meta(cell)):
            with contextlib.redirect_stdout(_Quiet()) if quiet else contextlib.nullcontext():
                try:
                    exec(compile(cell.source, f"<{_meta(cell).get('grade_id')}>", "exec"), namespace)
                except Exception:
                    if not tolerate:
                        raise
    return namespace


def _is_program(meta):
    """Setup, read-only, explore and solution cells: the learner's program without the tests."""
    return bool(meta) and not meta.get("grade")


def _visible_cells(nb):
    return [c for c in _autograded(nb) if "BEGIN HIDDEN TESTS" not in c.source]


@pytest.mark.parametrize("problem_set", PROBLEM_SETS)
def test_visible_tests_fail_on_the_release(problem_set):
    release = _notebook(problem_set, "exercises")
    namespace = _run_cells(release, _is_program, tolerate=True)
    visible_ids = {_meta(c)["grade_id"] for c in _visible_cells(_notebook(problem_set))}
    visible = [c for c in release.cells if _meta(c).get("grade_id") in visible_ids]
    assert len(visible) >= 5
    for cell in visible:
        with pytest.raises((NotImplementedError, GradingError), match="not implemented|^$"):
            exec(compile(cell.source, _meta(cell)["grade_id"], "exec"), copy.copy(namespace))


LEAKS = ["### BEGIN SOLUTION", "### END SOLUTION", "BEGIN HIDDEN TESTS", "Rubric", "Model answer"]


@pytest.mark.parametrize("problem_set", PROBLEM_SETS)
def test_release_leaks_nothing_and_keeps_the_structure(problem_set):
    source, release = _notebook(problem_set), _notebook(problem_set, "exercises")
    text = "\n".join(cell.source for cell in release.cells)
    for leak in LEAKS:
        assert leak not in text, f"the release of {problem_set} contains {leak!r}"
    hidden = [c for c in release.cells if "check_part" in c.source]
    assert all(_meta(c).get("grade_id") in {p.grade_id for p in parts_of(problem_set) if p.reference is None}
               for c in hidden), "only the experiments' visible tests call check_part in the release"
    graded_source = {_meta(c)["grade_id"]: _meta(c).get("points") for c in source.cells if _meta(c)}
    graded_release = {_meta(c)["grade_id"]: _meta(c).get("points") for c in release.cells if _meta(c)}
    assert graded_source == graded_release, "the release is stale: run normcourse release"
    for cell in release.cells:
        meta = _meta(cell)
        if meta.get("solution") and cell.cell_type == "code" and "def " in cell.source:
            assert "raise NotImplementedError()" in cell.source and '"""' in cell.source, \
                "the stub keeps the signature and docstring"
        if meta.get("solution") and cell.cell_type == "markdown":
            assert "YOUR ANSWER HERE" in cell.source


# ---------------------------------------------------------------------------------------------------
# ps06's "no warnings" rule: the setup cell makes RuntimeWarnings raised by notebook code errors, so a
# function that warns fails in the learner's kernel and in the out-of-kernel re-check alike.

_WARNING_ENTROPY = '''
def attention_entropy(probs):
    """Right values, but log(0) and 0 * -inf warn on the way."""
    p = np.asarray(probs, dtype=np.float64)
    return -np.nansum(p * np.log(p), axis=-1)
'''


def _with_cell(grade_id, source):
    """ps06's solution notebook with the learner cell ``grade_id`` replaced by ``source``."""
    nb = copy.deepcopy(_notebook("ps06_transformers"))
    next(c for c in nb.cells if _meta(c).get("grade_id") == grade_id).source = source
    return nb


def _with_entropy(source):
    return _with_cell("attention_entropy_code", source)


def test_a_warning_fails_the_entropy_cells_in_the_kernel():
    nb = _with_entropy(_WARNING_ENTROPY)
    namespace = _run_cells(nb, lambda m: m.get("grade_id") in ("setup", "attention_entropy_code"))
    for grade_id in ("attention_entropy", "attention_entropy_hidden"):
        cell = next(c for c in nb.cells if _meta(c).get("grade_id") == grade_id)
        with pytest.raises((RuntimeWarning, GradingError), match="divide by zero|invalid value"):
            exec(compile(cell.source, grade_id, "exec"), dict(namespace))
    # without the rule, the same function passes: the rule, not the values, fails it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lenient = _run_cells(nb, lambda m: m.get("grade_id") == "attention_entropy_code",
                             namespace={"__name__": "__main__", "np": np})
        assert get_part("ps06_transformers", "attention_entropy_hidden").check(lenient["attention_entropy"]) > 0


@pytest.mark.slow
def test_a_warning_fails_the_entropy_parts_in_the_recheck():
    """The re-check runs the same setup cell as the kernel, in the sandbox where grading runs it
    (unsandboxed only where bubblewrap is missing), so a RuntimeWarning fails the parts there too."""
    from normcourse.grading.host import Host
    from normcourse.grading.recheck import recheck_notebook
    from normcourse.grading.sandbox import availability

    ids = ["attention_entropy", "attention_entropy_hidden", "attention_saturation"]
    with Host("ps06_transformers", sandbox=availability()[0], torch=True) as host:
        host.reset(None)
        bad = recheck_notebook(_with_entropy(_WARNING_ENTROPY), "ps06_transformers", host, grade_ids=ids)
        host.reset(None)
        good = recheck_notebook(_notebook("ps06_transformers"), "ps06_transformers", host, grade_ids=ids)
    assert not bad.parts["attention_entropy"].passed and not bad.parts["attention_entropy_hidden"].passed
    assert "RuntimeWarning" in bad.parts["attention_entropy_hidden"].message
    assert bad.parts["attention_saturation"].passed, bad.parts["attention_saturation"].message
    assert all(p.passed for p in good.parts.values()), {k: v.message for k, v in good.parts.items()}


# ---------------------------------------------------------------------------------------------------
# ps06's residual_block promises ValueError for any other placement: a Case with raises=ValueError.

_RESIDUAL_NEVER_RAISES = '''
def residual_block(x, sublayer, norm, placement):
    """Right for 'pre' and 'post'; any other placement is silently taken for Post-LN."""
    return x + sublayer(norm(x)) if placement == "pre" else norm(x + sublayer(x))
'''

_RESIDUAL_REBINDS_VALUE_ERROR = '''
import builtins
builtins.ValueError = Exception        # "from now on every exception is a ValueError"

def residual_block(x, sublayer, norm, placement):
    if placement == "pre":
        return x + sublayer(norm(x))
    if placement == "post":
        return norm(x + sublayer(x))
    raise RuntimeError("not a placement")
'''


@pytest.mark.slow
def test_a_promised_exception_is_graded_in_the_recheck():
    """A residual_block that returns instead of raising, or that raises something else after rebinding
    builtins.ValueError, loses the part in the re-check; the solution keeps it."""
    from normcourse.grading.host import Host
    from normcourse.grading.recheck import recheck_notebook
    from normcourse.grading.sandbox import availability

    outcomes = {}
    with Host("ps06_transformers", sandbox=availability()[0], torch=True) as host:
        for name, nb in (("never", _with_cell("residual_block_code", _RESIDUAL_NEVER_RAISES)),
                         ("rebinds", _with_cell("residual_block_code", _RESIDUAL_REBINDS_VALUE_ERROR)),
                         ("solution", _notebook("ps06_transformers"))):
            host.reset(None)
            outcomes[name] = recheck_notebook(nb, "ps06_transformers", host, grade_ids=["residual_block"]
                                              ).parts["residual_block"]
    assert not outcomes["never"].passed
    assert "returned for case \"visible test: placement 'middle'" in outcomes["never"].message
    assert "must raise ValueError" in outcomes["never"].message
    assert not outcomes["rebinds"].passed and "raised RuntimeError" in outcomes["rebinds"].message
    assert outcomes["solution"].passed, outcomes["solution"].message
