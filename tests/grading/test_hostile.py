"""Hostile and broken submissions: each is graded correctly or flagged, never crashes the batch,
never counts as passed.

All variants are graded in ONE parallel batch (``workers=2``, 10 s per cell, 2 GiB memory cap) by the
real pipeline (:func:`normcourse.grading.autograde.autograde`: nbgrader in isolated workers, then the
out-of-kernel re-check), and each test reads its student's ledger record and the course gradebook.

The fixture problem set (tests/grading/fixtures) has three autograded cells: ``scale_test`` (1 point,
backed by a Part), ``center_shape`` (1 point, visible test only) and ``center_test`` (2 points, backed by
a Part), plus one hand-graded answer; full autograded marks are 4.
"""

from __future__ import annotations

import copy

import nbformat
import pytest

from grading_helpers import PROBLEM_SET, cell, make_course, solution_nb, submit, with_solution

pytestmark = pytest.mark.slow

CENTER_OK = "def center(x):\n    x = np.asarray(x)\n    return x - x.mean(axis=-1, keepdims=True)\n"
TAMPER = ("import numpy, normcourse.grading.parts\n"
          "numpy.allclose = lambda *a, **k: True\n"
          "numpy.testing.assert_allclose = lambda *a, **k: None\n"
          "normcourse.grading.parts.Part.check = lambda self, fn: 1\n")


def _without(nb, grade_id):
    nb = copy.deepcopy(nb)
    nb.cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") != grade_id]
    return nb


def _edited_test():
    nb = with_solution("center", "def center(x):\n    return x")
    cell(nb, "center_test").source = "pass  # the learner 'fixed' the test"
    return nb


def _variants(release_nb):
    return {
        "correct": solution_nb(),
        "untouched_release": release_nb,
        "infinite_loop": with_solution("center", "def center(x):\n    while True:\n        pass"),
        "memory_bomb": with_solution("center", "hoard = []\nwhile True:\n    hoard.append(np.ones(10**7))\n"
                                     + CENTER_OK),
        "os_exit": with_solution("center", "import os\nos._exit(0)\n" + CENTER_OK),
        "sys_exit": with_solution("center", "import sys\nsys.exit()\n" + CENTER_OK),
        "syntax_error": with_solution("center", "def center(x)\n    return x - x.mean("),
        "edited_test": _edited_test(),
        "deleted_test": _without(with_solution("center", "def center(x):\n    return x"), "center_test"),
        "stderr_warning": with_solution("center", "import warnings\n" + CENTER_OK.replace(
            "    x = np.asarray(x)\n", "    x = np.asarray(x)\n    warnings.warn('centering is easy')\n")),
        "nan_output": with_solution("center", "def center(x):\n    return np.asarray(x) * np.nan"),
        "patched_comparisons": with_solution("scale", TAMPER + "def scale(x, factor):\n    return x"),
        "hidden_traceback": with_solution("center", "get_ipython().showtraceback = lambda *a, **k: None\n"
                                          "import sys\nsys.excepthook = lambda *a: None\n"
                                          "def center(x):\n    return x"),
        "branches_on_nbgrader": with_solution("center", "import os\n"
                                              "if os.environ.get('NBGRADER_EXECUTION'):\n"
                                              + "".join("    " + ln + "\n" for ln in TAMPER.splitlines())
                                              + "    def center(x):\n        return x\n"
                                              + "else:\n" + "".join("    " + ln + "\n" for ln in CENTER_OK.splitlines())),
    }


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    from normcourse.grading.autograde import AutogradeOptions, autograde
    from normcourse.grading.limits import Limits

    course = make_course(tmp_path_factory.mktemp("hostile"))
    release_nb = nbformat.read(course.release_dir(PROBLEM_SET) / f"{PROBLEM_SET}.ipynb", as_version=4)
    for student, nb in _variants(release_nb).items():
        submit(course, student, nb)
    submit(course, "invalid_json", raw=b'{"cells": [ this is not json')
    options = AutogradeOptions(workers=2, cell_timeout=10, recheck_timeout=90, submission_timeout=400,
                               limits=Limits(memory_mb=2048), progress=False)
    summary = autograde(course, PROBLEM_SET, options)
    return course, summary


def scores(record):
    return {key.split("/", 1)[1]: p["auto_score"] for key, p in record["parts"].items() if p["kind"] == "autograded"}


def test_batch_finished_consistently(graded):
    course, summary = graded
    assert summary.problems == []
    assert set(summary.records) == {*_variants(None).keys(), "invalid_json"}
    assert all(r["status"] in ("graded", "failed") for r in summary.records.values()), summary.counts


def test_correct_gets_full_marks_and_release_gets_zero(graded):
    _, summary = graded
    assert summary.records["correct"]["score"] == summary.records["correct"]["max_score"] == 4
    assert summary.records["untouched_release"]["score"] == 0


@pytest.mark.parametrize("student", ["infinite_loop", "memory_bomb", "sys_exit", "syntax_error", "nan_output"])
def test_broken_center_loses_only_the_center_points(graded, student):
    _, summary = graded
    record = summary.records[student]
    assert record["status"] == "graded"
    got = scores(record)
    assert got["scale_test"] == 1  # the rest of the notebook is still graded
    assert got["center_test"] == 0
    if student != "nan_output":  # NaN keeps the right shape, so the visible shape test passes
        assert got["center_shape"] == 0


def test_os_exit_is_a_recorded_failure_with_zero(graded):
    course, summary = graded
    record = summary.records["os_exit"]
    assert record["status"] == "failed" and "kernel died" in record["reason"]
    assert record["score"] == 0
    assert not course.autograded_dir(PROBLEM_SET, "os_exit").exists() or record["status"] == "failed"


def test_invalid_json_is_a_recorded_failure_with_zero(graded):
    _, summary = graded
    record = summary.records["invalid_json"]
    assert record["status"] == "failed" and "not a valid notebook" in record["reason"]
    assert record["score"] == 0


def test_edited_and_deleted_test_cells_are_restored(graded):
    _, summary = graded
    assert scores(summary.records["edited_test"])["center_test"] == 0
    deleted = scores(summary.records["deleted_test"])
    assert deleted["center_test"] == 0  # restored (add_missing_cells), run, failed: not "needs manual grading"


def test_correct_answer_that_warns_on_stderr_keeps_its_points(graded):
    course, summary = graded
    assert summary.records["stderr_warning"]["score"] == 4
    nb = nbformat.read(course.autograded_dir(PROBLEM_SET, "stderr_warning") / f"{PROBLEM_SET}.ipynb", as_version=4)
    shown = "".join(o.get("data", {}).get("text/plain", "") for o in cell(nb, "center_test").outputs)
    assert "centering is easy" in shown  # still visible to the learner in feedback


@pytest.mark.parametrize("student", ["patched_comparisons", "branches_on_nbgrader"])
def test_patched_comparisons_score_zero_and_are_flagged(graded, student):
    _, summary = graded
    record = summary.records[student]
    assert record["score"] == 0
    assert any("rebinds grading tools" in f for f in record["flags"]), record["flags"]
    # the in-kernel tests were fooled; only the out-of-kernel re-check caught it
    assert any(p.get("in_kernel_score") for p in record["parts"].values())


def test_hidden_traceback_still_fails_and_is_flagged(graded):
    _, summary = graded
    record = summary.records["hidden_traceback"]
    assert scores(record)["center_test"] == 0
    assert any("error display" in f for f in record["flags"])


def test_gradebook_matches_the_ledger(graded):
    from nbgrader.api import Gradebook

    course, summary = graded
    with Gradebook(course.db_url) as gb:
        for student, record in summary.records.items():
            submission = gb.find_submission(PROBLEM_SET, student)
            autograded = sum(g.auto_score or 0 for nb in submission.notebooks for g in nb.grades
                             if g.name in scores(record))
            assert autograded == record["score"], student
