"""Fixtures for the problem-set gate: a temp copy of the course; releases and grading runs made per set,
on first use, once per test process.

Nothing here touches the repository's exercises/ or grading/: the course (``nbgrader_config.py`` and
``solutions/``) is copied to a temp folder whose own ``grading/`` work area receives every gradebook
write. The gate's tests are parametrized by problem set and each asks only for its own set, so with
``pytest -n 2`` each worker releases and grades only the sets it was handed (a session-wide "grade
everything" fixture would run in every worker).
"""

from __future__ import annotations

import shutil

import pytest

from gate_helpers import REPO, notebook_of


@pytest.fixture(scope="session")
def gate_course(tmp_path_factory):
    """A temp course: the repository's nbgrader_config.py and solutions/, its own grading work area."""
    from normcourse.grading.course import Course

    folder = tmp_path_factory.mktemp("gate")
    shutil.copy2(REPO / "nbgrader_config.py", folder / "nbgrader_config.py")
    shutil.copytree(REPO / "solutions", folder / "solutions")
    return Course(folder, folder / "grading")


@pytest.fixture(scope="session")
def released(gate_course):
    """``released(ps)``: regenerate ``ps``'s release with ``normcourse release`` (once); returns its leaks."""
    from normcourse.grading.release import release

    done: dict = {}

    def make(ps: str) -> list:
        if ps not in done:
            done[ps] = release(gate_course, ps)
        return done[ps]
    return make


@pytest.fixture(scope="session")
def graded(gate_course):
    """``graded(ps)``: the solution notebook (student ``solution``) and the committed release (student
    ``release``) autograded by the course pipeline (once); returns the AutogradeSummary."""
    from normcourse.grading.autograde import AutogradeOptions, autograde

    done: dict = {}

    def grade(ps: str):
        if ps not in done:
            for student, source in (("solution", REPO / "solutions"), ("release", REPO / "exercises")):
                folder = gate_course.submitted_dir(ps, student)
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copy2(notebook_of(source, ps), folder / f"{ps}.ipynb")
            done[ps] = autograde(gate_course, ps, AutogradeOptions(workers=2, progress=False))
        return done[ps]
    return grade
