"""scripts/sphinx_ext/problem_sets.py reads a release notebook into the parts table of its page.

No build needed: these tests call the extension's functions on the committed releases and on small
notebooks written here. tests/book/test_book.py checks the built pages, test_browser.py the download.
"""

import json
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from book_site import REPO, release_notebook, released_problem_sets

sys.path.insert(0, str(REPO / "scripts" / "sphinx_ext"))
import problem_sets as ext  # noqa: E402

PROBLEM_SETS = released_problem_sets()


def _graded(cell, grade_id, points=None, solution=False):
    cell.metadata["nbgrader"] = {"grade": True, "solution": solution, "locked": not solution,
                                 "grade_id": grade_id, "points": points, "schema_version": 3}
    return cell


def _solution(cell, grade_id):
    cell.metadata["nbgrader"] = {"grade": False, "solution": True, "locked": False, "grade_id": grade_id,
                                 "schema_version": 3}
    return cell


def _toy_notebook():
    """One part of each kind, written the way the course's problem sets are."""
    return new_notebook(cells=[
        new_markdown_cell("# Problem set 0: toy\n\nIntro."),
        new_markdown_cell("## Part 1: scale (1 + 2 points)\n\nWrite `scale`."),
        _solution(new_code_cell('def scale(x, c=2.0):\n    """Multiply ``x`` by ``c``, elementwise."""\n'
                                "    # YOUR CODE HERE\n    raise NotImplementedError()"), "scale_solution"),
        _graded(new_code_cell("assert scale(1.0) == 2.0"), "scale", 1),
        _graded(new_code_cell("# Hidden tests: random shapes, c = 0, float32.\n"
                              "# The grader (and `normcourse check`) compares scale with the reference here.\n"
                              "_ = scale(1.0)"), "scale_hidden", 2),
        new_markdown_cell("## Part 2 (written, 1.5 points): why\n\n(a) Why *scale*?\n\n(b) Why not?"),
        _graded(new_markdown_cell("YOUR ANSWER HERE"), "written_why", 1.5, solution=True),
    ])


def test_toy_notebook_gives_one_row_per_graded_cell_with_section_kind_and_points():
    parts = ext.graded_parts(json.loads(nbformat.writes(_toy_notebook())))
    assert [(p.section, p.grade_id, p.kind, p.points) for p in parts] == [
        ("Part 1: scale", "scale", "visible", 1.0),
        ("Part 1: scale", "scale_hidden", "hidden", 2.0),
        ("Part 2: why", "written_why", "manual", 1.5),
    ], "sections lose their '(... points)' remark; kinds and points come from the metadata"
    # What each row checks: the docstring for a test without a descriptive comment, the hidden test's
    # comment, and the labels of the questions a written answer replies to.
    assert [p.checks for p in parts] == [
        "Multiply `x` by `c`, elementwise",
        "Against the reference: random shapes, c = 0, float32",
        "Written answer to questions (a) and (b)",
    ]


def test_totals_split_autograded_visible_hidden_and_hand_graded_points():
    parts = ext.graded_parts(json.loads(nbformat.writes(_toy_notebook())))
    assert ext.totals_markdown(parts) == (
        "**Total: 4.5 points**: 3 autograded (1 from visible tests, 2 from hidden tests) and 1.5 hand-graded.")


def test_text_from_a_notebook_is_escaped_and_names_its_functions_as_code():
    assert ext._markdown("a*b_c [x] <y> |z| $1", []) == r"a\*b\_c \[x\] \<y\> \|z\| \$1"
    # The learner's function names become code; a longer name or a dotted path is left alone.
    assert ext._markdown("scale vs rescale and np.scale, ``c``", ["scale"]) == r"`scale` vs rescale and np.scale, `c`"


@pytest.mark.parametrize("name", ["../solutions/ps01_scopes", "ps01/x", "", ".hidden"])
def test_release_path_refuses_anything_but_a_plain_problem_set_name(name):
    with pytest.raises(ValueError):
        ext.release_path(REPO, name)


def test_release_path_is_the_nbgrader_release():
    assert ext.release_path(REPO, "ps01_scopes") == REPO / "exercises" / "ps01_scopes" / "ps01_scopes.ipynb"


@pytest.mark.parametrize("name", PROBLEM_SETS)
def test_every_graded_cell_of_a_release_is_a_row_with_its_metadata(name):
    """Read independently of the extension: every cell nbgrader grades, its id, points and kind."""
    notebook = nbformat.read(release_notebook(name), as_version=4)
    expected = []
    for cell in notebook.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade") or meta.get("task"):
            manual = bool(meta.get("solution") or meta.get("task"))
            expected.append((meta["grade_id"], float(meta["points"]), manual))
    parts = ext.graded_parts(json.loads(release_notebook(name).read_text(encoding="utf-8")))
    assert [(p.grade_id, p.points, p.kind == "manual") for p in parts] == expected
    # Every row says what it checks and sits in a section of the notebook.
    assert all(p.checks and p.checks != "See the notebook" for p in parts), [p.grade_id for p in parts
                                                                          if not p.checks]
    assert all(p.section for p in parts), [p.grade_id for p in parts if not p.section]
    # A hidden test is named *_hidden in every set of this course; nothing else is called hidden.
    assert [p.grade_id for p in parts if p.kind == "hidden"] == [
        p.grade_id for p in parts if p.grade_id.endswith("_hidden")]
