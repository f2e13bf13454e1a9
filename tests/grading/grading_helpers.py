"""Helpers for the grading tests: a throw-away course holding the fixture problem set ``ps00_fixture``.

The course is a temp folder with the repository's own ``nbgrader_config.py`` and
``fixtures/course/solutions/ps00_fixture``; its grading work area is inside the temp folder
(``Course.work``), never the repository's ``grading/``. The fixture's Parts are registered
through ``NORMCOURSE_EXTRA_PROBLEMS``, which kernels and sandboxes inherit.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PROBLEM_SET = "ps00_fixture"

os.environ["NORMCOURSE_EXTRA_PROBLEMS"] = str(FIXTURES / "ps00_fixture_parts.py")


def make_course(folder: Path, release_it: bool = True):
    """A fresh course in ``folder`` with the fixture problem set released; returns the Course."""
    from normcourse.grading.course import Course
    from normcourse.grading.release import release

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "nbgrader_config.py", folder / "nbgrader_config.py")
    shutil.copytree(FIXTURES / "course" / "solutions", folder / "solutions")
    course = Course(folder, folder / "grading")
    if release_it:
        assert release(course, PROBLEM_SET) == []
    return course


def solution_nb():
    return nbformat.read(FIXTURES / "course" / "solutions" / PROBLEM_SET / f"{PROBLEM_SET}.ipynb", as_version=4)


def submit(course, student: str, nb=None, *, raw: bytes | None = None) -> Path:
    """Put a submission for ``student`` into the course (a notebook node, or raw bytes)."""
    folder = course.submitted_dir(PROBLEM_SET, student)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{PROBLEM_SET}.ipynb"
    if raw is not None:
        path.write_bytes(raw)
    else:
        nbformat.write(nb, path)
    return path


def cell(nb, grade_id):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def with_solution(grade_id: str, source: str):
    """The fixture's solution notebook with one cell's source replaced."""
    nb = copy.deepcopy(solution_nb())
    cell(nb, grade_id).source = source
    return nb

