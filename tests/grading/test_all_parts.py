"""What every autograded part and every problem-set notebook must satisfy, for every registered set.

Nothing here names a problem set: the sets come from the registry (``course_problem_sets()``: every
set registered with ``normcourse.grading.parts.register`` that has a source notebook in
``solutions/``), the wrong implementations from ``tests/grading/wrong/<set>.py`` (see
``wrong/__init__.py``). A new set is covered by adding its problem module, its notebook and its wrong
implementations.

Parts and cases
    The reference passes its own Parts; cases are reproducible and their labels tell them apart; a
    visible cell's Part replays fixed inputs (the same whatever the re-check's salt) and a hidden
    cell's Part draws its cases from ``rng`` (the salt changes them).

Notebooks
    Every autograded cell is backed by a Part with the same points; a visible cell's Part replays
    exactly the calls the cell makes (the cell is run with the function wrapped and its calls are
    compared with the Part's cases); the solution keeps every point in this process.

The census and one bug, one part
    Every learner-written name that a Part grades has wrong implementations; every Part is failed by
    at least one of them; every one of them fails at least one Part with a message that names the
    case and names results and arguments by name. Then, for every learner name, the solution notebook
    is run with that one name replaced by its first wrong implementation, and every autograded cell is
    scored as the grader scores it (test cell in the namespace, and the cell's Part): the cells of
    that name must lose points, every other cell must keep them (``test_one_bug_costs_one_part``).

How long that takes: the learner program of each set runs once per test process and is restored in
place before each replay (the learner's functions keep it as their globals); a replay runs each
autograded cell once (a hidden cell's test is its Part), so a set costs (learner names + 1) runs of
its test cells. The whole module (about 370 tests over six sets, 30 one-bug replays) takes about two
minutes with ``-n 2`` on this shared, loaded 2-core machine, the torch sets (ps05, ps06) most of it;
two more sets of the same size add about 40 s.
"""

from __future__ import annotations

import ast
import re

import numpy as np
import pytest

from normcourse.grading.compare import GradingError
from normcourse.grading.parts import parts_of
from problem_notebooks import (autograded_cells, bound_case, course_problem_sets, describe_call, distinct_calls,
                               grade_id, is_autograded, is_hidden, learner_names, names_of_cell, names_under_test,
                               notebook, notebook_run, python_source, recorded_calls, same_call, same_value)
from wrong import load as load_wrong

SETS = course_problem_sets()
ALL_PARTS = [p for ps in SETS for p in parts_of(ps)]
PART_IDS = [f"{p.problem_set}:{p.grade_id}" for p in ALL_PARTS]


def _cells_by_id(ps):
    return {grade_id(c): c for c in autograded_cells(ps)}


def _is_visible_part(part) -> bool:
    cell = _cells_by_id(part.problem_set).get(part.grade_id)
    return cell is not None and not is_hidden(cell)


# ---------------------------------------------------------------------------------------------------
# Parts and cases.

@pytest.mark.parametrize("ps", SETS)
def test_every_set_has_at_least_five_parts(ps):
    assert len(parts_of(ps)) >= 5, f"{ps}: {len(parts_of(ps))} Parts"


@pytest.mark.parametrize("part", ALL_PARTS, ids=PART_IDS)
def test_reference_passes(part):
    """The reference passes its own part (quickly: hidden-test cells share a 60 s cell limit)."""
    if part.reference is None:
        pytest.skip("a property-checked part without a reference")
    assert part.check(part.reference) == len(part.make_cases()) > 0


@pytest.mark.parametrize("part", ALL_PARTS, ids=PART_IDS)
def test_cases_are_reproducible_and_labels_unique(part):
    first, second = part.make_cases(), part.make_cases()
    assert [c.label for c in first] == [c.label for c in second]
    assert len({c.label for c in first}) == len(first), "labels must tell cases apart in messages"
    for a, b in zip(first, second):
        for x, y in zip(a.args, b.args):
            if isinstance(x, np.ndarray):
                np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("part", ALL_PARTS, ids=PART_IDS)
def test_visible_parts_are_fixed_and_hidden_parts_follow_the_salt(part):
    """The re-check salts every Part's seed: a visible Part must replay the visible cell's inputs
    whatever the salt; a hidden Part must draw its cases from ``rng`` (else the salt does nothing)."""
    salted = [[(c.label, c.args, c.kwargs) for c in part.make_cases(salt=s)] for s in (11, 12)]
    same = len(salted[0]) == len(salted[1]) and all(
        a[0] == b[0] and same_value(a[1], b[1]) and same_value(a[2], b[2]) for a, b in zip(*salted))
    if _is_visible_part(part):
        assert same, "a visible cell's Part must not use rng: its cases are the cell's fixed inputs"
    else:
        assert not same, "a hidden cell's Part must draw its cases from rng"


# ---------------------------------------------------------------------------------------------------
# Notebooks and Parts agree.

@pytest.mark.parametrize("ps", SETS)
def test_every_autograded_cell_is_backed_by_a_part_with_its_points(ps):
    parts = {p.grade_id: p for p in parts_of(ps)}
    cells = _cells_by_id(ps)
    unbacked = sorted(set(cells) - set(parts))
    assert not unbacked, f"{ps}: autograded cells without a Part: {unbacked}"
    assert not set(parts) - set(cells), f"{ps}: Parts without a cell: {sorted(set(parts) - set(cells))}"
    points = {g: (cells[g].metadata.nbgrader["points"], parts[g].points) for g in parts
              if float(cells[g].metadata.nbgrader["points"]) != float(parts[g].points)}
    assert not points, f"{ps}: (cell points, Part points) differ: {points}"
    for gid, cell in cells.items():
        if is_hidden(cell):
            assert f'check_part("{ps}", "{gid}", {parts[gid].function})' in cell.source, gid


VISIBLE_PARTS = [p for p in ALL_PARTS if _is_visible_part(p)]


@pytest.mark.parametrize("part", VISIBLE_PARTS, ids=[f"{p.problem_set}:{p.grade_id}" for p in VISIBLE_PARTS])
def test_visible_part_replays_exactly_the_cells_calls(part):
    cell = _cells_by_id(part.problem_set)[part.grade_id]
    made = distinct_calls(recorded_calls(part.problem_set, cell, part.function))
    replayed = distinct_calls([bound_case(part.problem_set, part, c) for c in part.make_cases()])
    only_cell = [describe_call(c) for c in made if not any(same_call(c, r) for r in replayed)]
    only_part = [describe_call(r) for r in replayed if not any(same_call(r, c) for c in made)]
    assert not only_cell and not only_part, (
        f"{part.grade_id}: calls of {part.function} in the cell but not in the Part: {only_cell}; "
        f"in the Part but not in the cell: {only_part}")


@pytest.mark.parametrize("ps", SETS)
def test_solution_keeps_every_point_in_process(ps):
    run = notebook_run(ps)
    assert run.program_errors == [], f"{ps}: the learner program fails on the solution: {run.program_errors}"
    lost = {g: s.why() for g, s in run.score().items() if not s.passed}
    assert lost == {}


# ---------------------------------------------------------------------------------------------------
# The census of wrong implementations.

@pytest.mark.parametrize("ps", SETS)
def test_every_graded_learner_name_has_a_wrong_implementation(ps):
    table = load_wrong(ps)
    graded = set().union(*(names_under_test(p) for p in parts_of(ps)))
    assert graded, f"{ps}: no Part grades a learner-written name"
    missing = sorted(graded - set(table.by_name))
    assert not missing, f"{ps}: no wrong implementation of {missing} in {table.source}"
    unknown = sorted(set(table.by_name) - learner_names(ps))
    assert not unknown, f"{ps}: {table.source} names {unknown}, which the learner does not write"


def _failure(part, replace):
    run = notebook_run(part.problem_set)
    return run.check_part(run.fresh(replace), part)


@pytest.mark.parametrize("part", ALL_PARTS, ids=PART_IDS)
def test_every_part_is_failed_by_a_wrong_implementation(part):
    table = load_wrong(part.problem_set)
    tried = []
    for name in sorted(names_under_test(part)):
        for wrong in table.by_name.get(name, []):
            if _failure(part, {name: wrong}) is not None:
                return
            tried.append(f"{name}={getattr(wrong, '__name__', wrong)}")
    notebook_run(part.problem_set).fresh()
    pytest.fail(f"{part.problem_set}:{part.grade_id} passes every wrong implementation of "
                f"{sorted(names_under_test(part))}: {tried}")


#: Positional names a message must not use: "f(...)[3]", "argument 1", "result 2" of an unnamed tuple.
POSITIONAL = re.compile(r"\(\.\.\.\)\[\d+\]|argument \d|\bresult \d+ of \d+\b")

WRONG_CASES = [(ps, name, i, fn) for ps in SETS for name, fns in sorted(load_wrong(ps).by_name.items())
               for i, fn in enumerate(fns)]


@pytest.mark.parametrize("ps, name, index, wrong", WRONG_CASES,
                         ids=[f"{ps}:{n}:{getattr(f, '__name__', i)}" for ps, n, i, f in WRONG_CASES])
def test_wrong_implementation_fails_naming_the_case(ps, name, index, wrong):
    parts = [p for p in parts_of(ps) if name in names_under_test(p)]
    assert parts, f"no Part grades {name}"
    messages = {p.grade_id: _failure(p, {name: wrong}) for p in parts}
    notebook_run(ps).fresh()
    failed = {g: m for g, m in messages.items() if m is not None}
    assert failed, f"{name}={getattr(wrong, '__name__', wrong)} passes every Part of {name}: {sorted(messages)}"
    for gid, message in failed.items():
        labels = [case.label for case in next(p for p in parts if p.grade_id == gid).make_cases()]
        assert any(repr(label) in message for label in labels), f"{gid}: the message names no case: {message}"
        assert not POSITIONAL.search(message), f"{gid}: name results and arguments by name: {message}"


# ---------------------------------------------------------------------------------------------------
# One bug costs one part.

ONE_BUG = [(ps, name) for ps in SETS for name in sorted(load_wrong(ps).by_name) if name in learner_names(ps)]


@pytest.mark.parametrize("ps, name", ONE_BUG, ids=[f"{ps}:{name}" for ps, name in ONE_BUG])
def test_one_bug_costs_one_part(ps, name):
    """Replace one learner name in the solution by a wrong implementation: exactly that name's cells
    (and the cells that use it by the set's declared design) lose points; every other cell keeps them."""
    wrong = load_wrong(ps).by_name[name][0]
    scores = notebook_run(ps).score({name: wrong})
    own = {grade_id(c) for c in autograded_cells(ps) if name in names_of_cell(ps, c)}
    lost = {g: s.why() for g, s in scores.items() if not s.passed}
    collateral = {g: why for g, why in lost.items() if g not in own}
    assert not collateral, (f"{ps}: a wrong {name} ({getattr(wrong, '__name__', wrong)}) costs the points of "
                            f"other parts: {collateral}")
    assert set(lost) & own, f"{ps}: a wrong {name} ({getattr(wrong, '__name__', wrong)}) loses no point"


# ---------------------------------------------------------------------------------------------------
# Notebook conventions: metadata, locks, stated totals, test cells with messages, rules the solution keeps.

def _cells(ps):
    return notebook(ps).cells


def _meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


@pytest.mark.parametrize("ps", SETS)
def test_notebook_metadata_follows_the_conventions(ps):
    metas = [_meta(c) for c in _cells(ps)]
    bare = [f"cell {i} ({c.cell_type}): {c.source[:40]!r}" for i, (c, m) in enumerate(zip(_cells(ps), metas))
            if m.get("schema_version") != 3]
    assert not bare, f"{ps}: cells without nbgrader metadata (schema 3), so not locked: {bare}"
    ids = [m["grade_id"] for m in metas]
    assert len(ids) == len(set(ids)), "grade_ids must be unique"
    written = 0
    for cell, meta in zip(_cells(ps), metas):
        gid = meta["grade_id"]
        if meta.get("solution"):
            assert not meta.get("locked"), f"{gid}: a cell the learner writes is unlocked"
            assert "### BEGIN SOLUTION" in cell.source and "### END SOLUTION" in cell.source, gid
            if cell.cell_type == "markdown":
                assert meta.get("grade") and meta["points"] > 0 and "Rubric" in cell.source, (
                    f"{gid}: a written answer has points and a rubric")
                written += 1
            else:
                assert not meta.get("grade"), f"{gid}: solution code cells are not graded by hand"
        elif meta.get("grade"):
            assert cell.cell_type == "code" and meta.get("locked") and meta["points"] > 0, (
                f"{gid}: an autograded test cell is locked code with points")
        else:
            assert meta.get("locked"), f"{gid}: every instruction and course-provided cell is locked"
    assert written >= 1, f"{ps}: at least one hand-graded written answer"


TOTALS = re.compile(r"Points: (\d+) in total, (\d+) autograded and (\d+) for the written answers?")


@pytest.mark.parametrize("ps", SETS)
def test_intro_states_the_totals_the_metadata_gives(ps):
    auto = sum(_meta(c)["points"] for c in _cells(ps) if is_autograded(c))
    written = sum(_meta(c)["points"] for c in _cells(ps) if _meta(c).get("grade") and _meta(c).get("solution"))
    match = TOTALS.search(_cells(ps)[0].source)
    assert match, f"{ps}: the first cell states 'Points: N in total, A autograded and W for the written answer(s)'"
    assert tuple(int(g) for g in match.groups()) == (auto + written, auto, written), (
        f"{ps}: the intro states {match.group(0)!r}; the metadata gives {auto + written}, {auto}, {written}")


#: Calls whose truth value says only "equal or not": inside an assert they hide where and by how much.
BLIND_CHECKS = {"allclose", "isclose", "array_equal", "array_equiv"}


def _test_cell_problems(source: str) -> list[str]:
    problems = []
    for node in ast.walk(ast.parse(python_source(source))):
        if isinstance(node, ast.Assert):
            if node.msg is None:
                problems.append(f"line {node.lineno}: a bare assert (give it a message naming the case, got and "
                                f"expected)")
            called = {getattr(n.func, "attr", getattr(n.func, "id", None)) for n in ast.walk(node.test)
                      if isinstance(n, ast.Call)}
            if called & BLIND_CHECKS:
                problems.append(f"line {node.lineno}: assert {sorted(called & BLIND_CHECKS)[0]}(...) cannot say where "
                                f"values differ; use normcourse.grading.compare.assert_array_matches")
        if isinstance(node, ast.Attribute) and node.attr.startswith("assert_") and \
                isinstance(node.value, ast.Attribute) and node.value.attr == "testing":
            problems.append(f"line {node.lineno}: numpy.testing's messages name no case; use normcourse.grading.compare")
    return problems


@pytest.mark.parametrize("ps", SETS)
def test_test_cells_fail_with_messages_that_name_the_place(ps):
    """No bare assert and no blind equality check in any autograded cell, visible or hidden part."""
    problems = {grade_id(c): p for c in autograded_cells(ps) if (p := _test_cell_problems(c.source))}
    assert problems == {}


def test_the_message_scan_sees_what_it_should():
    source = ("assert x == 1\nassert np.allclose(a, b), 'msg'\nnp.testing.assert_allclose(a, b)\n"
              "assert x == 1, f'x is {x}'\nassert_array_matches(a, b, name='y', label='c')\n")
    problems = _test_cell_problems(source)
    assert [p.split(":")[0] for p in problems] == ["line 1", "line 2", "line 3"], problems


def _imports(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(python_source(source))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


def _allowed(module: str, allowed: set[str]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("ps", SETS)
def test_the_learners_program_imports_only_what_its_rules_allow(ps):
    """Locked program cells (imports, course-provided drivers) are part of the learner's program: numpy,
    the standard library, matplotlib, torch if some part may use it, and the modules the set provides.
    The model solution plays by the same rules (the re-check would take the rest away)."""
    import sys

    from normcourse.grading.parts import provided_modules
    from normcourse.grading.rules import NO_TORCH

    torch_allowed = any(NO_TORCH not in p.forbid for p in parts_of(ps))
    allowed = {"numpy", "matplotlib", *sys.stdlib_module_names, *provided_modules(ps)} | (
        {"torch"} if torch_allowed else set())
    bad = {}
    for cell in _cells(ps):
        if cell.cell_type == "code" and not is_autograded(cell):
            outside = sorted(m for m in _imports(cell.source) if not _allowed(m, allowed))
            if outside:
                bad[grade_id(cell)] = outside
    assert bad == {}, f"{ps}: program cells import modules the re-check does not provide: {bad}"


@pytest.mark.parametrize("part", VISIBLE_PARTS, ids=[f"{p.problem_set}:{p.grade_id}" for p in VISIBLE_PARTS])
def test_visible_cell_catches_a_wrong_implementation_in_the_kernel(part):
    """The visible test itself (not only its Part) fails for some mistake of the name it grades."""
    cell = _cells_by_id(part.problem_set)[part.grade_id]
    run = notebook_run(part.problem_set)
    table = load_wrong(part.problem_set)
    try:
        for name in sorted(names_under_test(part)):
            for wrong in table.by_name.get(name, []):
                if run.run_cell(run.fresh({name: wrong}), cell) is not None:
                    return
    finally:
        run.fresh()
    pytest.fail(f"{part.problem_set}:{part.grade_id} passes in the kernel for every wrong implementation of "
                f"{sorted(names_under_test(part))}")
