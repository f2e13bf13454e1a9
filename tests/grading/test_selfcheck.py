"""``normcourse check``: the learner's self-check, run as the learner runs it (a subprocess, no gradebook)."""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat
import pytest

from grading_helpers import FIXTURES, PROBLEM_SET, make_course, with_solution

pytestmark = pytest.mark.slow

SOLUTION = FIXTURES / "course" / "solutions" / PROBLEM_SET / f"{PROBLEM_SET}.ipynb"


def run_check(path, *extra):
    return subprocess.run([sys.executable, "-m", "normcourse.cli", "check", str(path), *extra],
                          capture_output=True, text=True, timeout=400)


def test_solution_passes_with_full_marks():
    done = run_check(SOLUTION, "--json", "--timeout", "30")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["problem_set"] == PROBLEM_SET
    assert report["score"] == report["max_score"] == 4 and report["all_passed"]
    assert {p["grade_id"]: p["kind"] for p in report["parts"]}["explain_centering"] == "manual"


def test_release_fails_with_zero_and_says_why(tmp_path):
    course = make_course(tmp_path / "c")
    done = run_check(course.release_dir(PROBLEM_SET) / f"{PROBLEM_SET}.ipynb", "--timeout", "30")
    assert done.returncode == 1
    assert "Total: 0/4 autograded points" in done.stdout
    assert "FAIL  center_test" in done.stdout and "not implemented yet" in done.stdout


def test_patched_comparisons_do_not_fool_the_self_check(tmp_path):
    from normcourse.grading.selfcheck import self_check

    nb = with_solution("scale", "import numpy\nnumpy.allclose = lambda *a, **k: True\n"
                                "def scale(x, factor):\n    return x")
    path = tmp_path / f"{PROBLEM_SET}.ipynb"
    nbformat.write(nb, path)
    report = self_check(path, timeout=30)
    scale = next(p for p in report.parts if p.grade_id == "scale_test")
    assert scale.points == 0 and not scale.passed and "re-check" in scale.message
    assert report.score == 3  # center is the solution's: it keeps its points; the patch bought nothing


def test_not_a_notebook_is_a_usage_error(tmp_path):
    bad = tmp_path / "ps00_fixture.ipynb"
    bad.write_text("{not json")
    done = run_check(bad)
    assert done.returncode == 2 and "not a valid notebook" in done.stderr
