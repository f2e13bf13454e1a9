"""The problem-set gate, for every registered problem set: a change to solutions/ or exercises/ passes only if

- regenerating exercises/ from solutions/ (nbgrader generate_assignment, in a temp copy) reproduces the
  committed exercises/ exactly (nbgrader writes no volatile fields: two runs are byte-identical, so the
  notebooks are compared as parsed JSON with nothing ignored);
- no released notebook contains solution code, hidden-test text or rubric text;
- the course pipeline (nbgrader in isolated workers + out-of-kernel re-check of every Part, visible
  and hidden) gives every solution full marks on every autograded cell, and every untouched release zero
  on every autograded cell, with a consistent gradebook;
- ``nbgrader validate`` agrees (``Validator``: the solution passes; with ``invert`` the release fails
  every autograded test cell, including the cells whose tests are all hidden: each of those makes one
  visible quick call to the learner's function before its hidden block, so the stub fails it);
- the learner's self-check agrees (full marks on each solution, zero on each release).

What can be checked without nbgrader (every autograded cell backed by a Part with its points, visible
Parts replaying the visible cells' calls, totals stated, locks, messages, one bug costing one part) is
checked in process by tests/grading/test_all_parts.py, for the same registered sets.
"""

from __future__ import annotations

import json

import pytest

from gate_helpers import PROBLEM_SETS, REPO, notebook_of, self_check_in_subprocess, validate_in_subprocess

pytestmark = pytest.mark.slow


def test_the_gate_sees_every_problem_set_folder():
    """A notebook in solutions/ whose set is not registered would silently skip the gate."""
    folders = sorted(p.name for p in (REPO / "solutions").iterdir() if notebook_of(REPO / "solutions", p.name).exists())
    assert folders == sorted(PROBLEM_SETS), "register every problem set in normcourse.problems"
    assert PROBLEM_SETS


@pytest.mark.parametrize("ps", PROBLEM_SETS)
def test_release_is_regenerated_identically_and_leaks_nothing(gate_course, released, ps):
    from normcourse.grading.course import Course
    from normcourse.grading.release import check_release

    assert [str(x) for x in released(ps)] == []  # the regenerated release leaks nothing
    assert [str(x) for x in check_release(Course(REPO, REPO / "grading"), ps)] == []  # nor the committed one
    committed, regenerated = REPO / "exercises" / ps, gate_course.release_dir(ps)
    assert sorted(p.name for p in committed.iterdir()) == sorted(p.name for p in regenerated.iterdir())
    for path in sorted(regenerated.iterdir()):
        if path.suffix != ".ipynb":
            assert path.read_bytes() == (committed / path.name).read_bytes(), path.name
            continue
        new, old = json.loads(path.read_text()), json.loads((committed / path.name).read_text())
        assert new["metadata"] == old["metadata"], f"{ps}: notebook metadata differs; run `normcourse release {ps}`"
        assert len(new["cells"]) == len(old["cells"]), f"{ps}: cell count differs; run `normcourse release {ps}`"
        for i, (a, b) in enumerate(zip(new["cells"], old["cells"])):
            assert a == b, f"{ps}: cell {i} of the committed release is stale; run `normcourse release {ps}`"


@pytest.mark.parametrize("ps", PROBLEM_SETS)
def test_autograde_gives_the_solution_full_marks_and_the_release_zero(graded, ps):
    from normcourse.grading.result import GradeResult

    summary = graded(ps)
    assert summary.problems == [], f"{ps}: the gradebook and the ledger disagree"
    record = summary.records["solution"]
    solution = GradeResult.from_json(record["result"])
    assert record["status"] == "graded", (record["reason"], solution.flags)
    lost = {p.grade_id: (p.score, p.max_score, p.reason) for p in solution.parts
            if p.kind == "autograded" and p.score != p.max_score}
    assert lost == {}, f"{ps}: the solution loses points"
    # every autograded cell confirmed outside the kernel, in the sandbox, and nothing to review
    assert all(p.recheck is True for p in solution.parts if p.kind == "autograded"), ps
    assert solution.sandboxed and solution.flags == []
    release = summary.records["release"]
    released = GradeResult.from_json(release["result"])
    assert release["status"] == "graded", (release["reason"], released.flags)
    earned = {p.grade_id: p.score for p in released.parts if p.kind == "autograded" and p.score}
    assert earned == {}, f"{ps}: the untouched release earns points"


@pytest.mark.parametrize("ps", PROBLEM_SETS)
def test_nbgrader_validate_agrees(ps):
    problems = {}
    for path, invert in ((notebook_of(REPO / "solutions", ps), False), (notebook_of(REPO / "exercises", ps), True)):
        result = validate_in_subprocess(path, invert)
        if result:
            problems[str(path.relative_to(REPO))] = result
    assert problems == {}  # solutions: no failed cell; releases (invert): no passing test cell


@pytest.mark.parametrize("ps", PROBLEM_SETS)
def test_self_check_agrees(ps):
    wrong = {}
    for folder in ("solutions", "exercises"):
        path = notebook_of(REPO / folder, ps)
        report = self_check_in_subprocess(path)
        want = report["max_score"] if folder == "solutions" else 0
        if report["score"] != want or not report["max_score"]:
            wrong[str(path.relative_to(REPO))] = report
    assert wrong == {}
