"""The problem-set gate: a change to solutions/ or exercises/ passes only if

- regenerating exercises/ from solutions/ (nbgrader generate_assignment, in a temp copy) reproduces the
  committed exercises/ exactly (nbgrader writes no volatile fields: two runs are byte-identical, so the
  notebooks are compared as parsed JSON with nothing ignored);
- no released notebook contains solution code, hidden-test text or rubric text;
- the course pipeline (nbgrader in isolated workers + out-of-kernel re-check) gives every solution
  full marks on every autograded part, and every untouched release zero on every autograded part;
- ``nbgrader validate`` agrees (``Validator``: the solution passes; with ``invert`` the release fails
  every autograded test cell, including the cells whose tests are all hidden: each of those makes one
  visible quick call to the learner's function before its hidden block, so the stub fails it);
- the learner's self-check agrees (full marks on each solution, zero on each release);
- there are at least 30 autograded parts over the six sets, every notebook has a hand-graded part, and
  every registered Part backs a test cell of the same points.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import nbformat
import pytest
from nbgrader import utils

from gate_helpers import PROBLEM_SETS, REPO, notebook_of, self_check_in_subprocess, validate_in_subprocess

pytestmark = pytest.mark.slow


def _autograded_cells(nb):
    return [c for c in nb.cells if utils.is_grade(c) and not utils.is_solution(c) and c.cell_type == "code"]


def _hand_graded_cells(nb):
    return [c for c in nb.cells if utils.is_grade(c) and utils.is_solution(c)]


@pytest.fixture(scope="module")
def solutions():
    return {ps: nbformat.read(notebook_of(REPO / "solutions", ps), as_version=4) for ps in PROBLEM_SETS}


@pytest.mark.parametrize("ps", PROBLEM_SETS)
def test_release_is_regenerated_identically(gate_course, ps):
    course, _ = gate_course
    committed, regenerated = REPO / "exercises" / ps, course.release_dir(ps)
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
def test_release_leaks_nothing(gate_course, ps):
    from normcourse.grading.course import Course
    from normcourse.grading.release import check_release

    _, leaks = gate_course
    assert [str(x) for x in leaks[ps]] == []  # the regenerated release
    assert [str(x) for x in check_release(Course(REPO, REPO / "grading"), ps)] == []  # the committed one


@pytest.mark.parametrize("ps", PROBLEM_SETS)
def test_solution_earns_full_marks(gate_grades, ps):
    from normcourse.grading.result import GradeResult

    record = gate_grades[ps].records["solution"]
    result = GradeResult.from_json(record["result"])
    assert record["status"] == "graded", (record["reason"], result.flags)
    lost = {p.grade_id: (p.score, p.max_score, p.reason) for p in result.parts
            if p.kind == "autograded" and p.score != p.max_score}
    assert lost == {}
    assert all(p.recheck is not False for p in result.parts) and result.sandboxed
    assert [f for f in result.flags if "not confirmed outside the kernel" not in f] == []


@pytest.mark.parametrize("ps", PROBLEM_SETS)
def test_untouched_release_earns_zero(gate_grades, ps):
    from normcourse.grading.result import GradeResult

    record = gate_grades[ps].records["release"]
    result = GradeResult.from_json(record["result"])
    assert record["status"] == "graded", (record["reason"], result.flags)
    earned = {p.grade_id: p.score for p in result.parts if p.kind == "autograded" and p.score}
    assert earned == {}


def test_gradebook_is_consistent(gate_grades):
    assert {ps: s.problems for ps, s in gate_grades.items() if s.problems} == {}


def test_nbgrader_validate_agrees():
    jobs = [(notebook_of(REPO / "solutions", ps), False) for ps in PROBLEM_SETS]
    jobs += [(notebook_of(REPO / "exercises", ps), True) for ps in PROBLEM_SETS]
    with ThreadPoolExecutor(2) as pool:  # threads only wait: each validation is its own process
        results = list(pool.map(lambda job: validate_in_subprocess(*job), jobs))
    problems = {}
    for (path, invert), result in zip(jobs, results):
        if result:
            problems[str(path.relative_to(REPO))] = result
    assert problems == {}  # solutions: no failed cell; releases (invert): no passing test cell


def test_self_check_agrees():
    jobs = [notebook_of(REPO / folder, ps) for ps in PROBLEM_SETS for folder in ("solutions", "exercises")]
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(self_check_in_subprocess, jobs))
    wrong = {}
    for path, report in zip(jobs, reports):
        want = report["max_score"] if path.parts[-3] == "solutions" else 0
        if report["score"] != want or not report["max_score"]:
            wrong[str(path.relative_to(REPO))] = report
    assert wrong == {}


def test_at_least_30_autograded_parts(solutions):
    counts = {ps: len(_autograded_cells(nb)) for ps, nb in solutions.items()}
    assert sum(counts.values()) >= 30, counts


@pytest.mark.parametrize("ps", PROBLEM_SETS)
def test_every_notebook_has_a_hand_graded_part(solutions, ps):
    assert len(_hand_graded_cells(solutions[ps])) >= 1


@pytest.mark.parametrize("ps", PROBLEM_SETS)
def test_parts_back_test_cells_with_the_same_points(solutions, ps):
    from normcourse.grading.parts import parts_of

    cells = {c.metadata.nbgrader["grade_id"]: c for c in _autograded_cells(solutions[ps])}
    for part in parts_of(ps):
        assert part.grade_id in cells, f"Part {part.grade_id} has no autograded cell in {ps}"
        assert float(cells[part.grade_id].metadata.nbgrader["points"]) == float(part.points), part.grade_id
        assert part.grade_id in cells[part.grade_id].source  # the cell's hidden test calls this Part
