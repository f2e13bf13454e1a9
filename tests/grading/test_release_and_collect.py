"""Release leak checks and LMS zip collection (no kernels: fast)."""

from __future__ import annotations

import copy
import zipfile

import nbformat
import pytest

from grading_helpers import PROBLEM_SET, cell, make_course, solution_nb


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    return make_course(tmp_path_factory.mktemp("release"))


def release_nb(course):
    return nbformat.read(course.release_dir(PROBLEM_SET) / f"{PROBLEM_SET}.ipynb", as_version=4)


def test_clean_release_has_no_leaks(course):
    from normcourse.grading.release import check_release
    assert check_release(course, PROBLEM_SET) == []


@pytest.mark.parametrize("grade_id, text, kind", [
    ("center", "    return x - x.mean(axis=-1, keepdims=True)", "solution"),
    ("center_test", 'check_part("ps00_fixture", "center_test", center)', "hidden test"),
    ("explain_centering", "Rubric: the centered vector is orthogonal to the all-ones vector, a constraint "
                          "of rank one.", "rubric"),
])
def test_leaks_are_found(course, grade_id, text, kind):
    from normcourse.grading.release import find_leaks
    leaky = release_nb(course)
    cell(leaky, grade_id).source += "\n" + text
    leaks = find_leaks(solution_nb(), leaky, name="x.ipynb")
    assert [leak.kind for leak in leaks] == [kind]


def test_left_delimiters_and_outputs_are_leaks(course):
    from normcourse.grading.release import find_leaks
    leaky = release_nb(course)
    cell(leaky, "scale_test").source += "\n### BEGIN HIDDEN TESTS\n### END HIDDEN TESTS"
    cell(leaky, "imports").outputs = [nbformat.v4.new_output("stream", name="stdout", text="42")]
    kinds = sorted(leak.kind for leak in find_leaks(solution_nb(), leaky, name="x.ipynb"))
    assert kinds == ["hidden test", "output"]


def test_public_lines_shared_with_a_solution_are_not_leaks(course):
    from normcourse.grading.release import find_leaks
    source = solution_nb()
    cell(source, "center").source = cell(source, "center").source.replace(
        "    x = np.asarray(x)", "    import numpy as np\n    x = np.asarray(x)")
    assert find_leaks(source, release_nb(course), name="x.ipynb") == []  # 'import numpy as np' is public


# ------------------------------------------------------------------------------------------------
# Collection

def _zip(entries, tmp_path, name="lms.zip"):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for entry, data in entries:
            if isinstance(entry, zipfile.ZipInfo):
                z.writestr(entry, data)
            else:
                z.writestr(entry, data)
    return path


def _nb_bytes():
    return nbformat.writes(solution_nb()).encode()


def test_collect_saves_and_rejects_with_reasons(tmp_path):
    from normcourse.grading.collect import collect_zip

    course = make_course(tmp_path / "c", release_it=False)
    link = zipfile.ZipInfo("evelyn_1_2_ps00_fixture.ipynb")
    link.external_attr = (0o120777 << 16)
    entries = [
        ("doejane_123_456_ps00_fixture.ipynb", _nb_bytes()),
        ("smith_LATE_123_456_ps00_fixture-1.ipynb", _nb_bytes()),
        ("../../escape_1_2_ps00_fixture.ipynb", _nb_bytes()),
        ("/abs_1_2_ps00_fixture.ipynb", _nb_bytes()),
        ("notes_1_2_essay.pdf", b"%PDF-1.4"),
        ("broken_1_2_ps00_fixture.ipynb", b'{"cells": ['),
        ("twice_1_2_ps00_fixture.ipynb", _nb_bytes()),
        ("twice_1_3_ps00_fixture-2.ipynb", _nb_bytes()),
        ("bomb_1_2_ps00_fixture.ipynb", b"{" + b" " * (30 << 20) + b"}"),
        (link, b"/etc/passwd"),
        ("__MACOSX/._doejane_123_456_ps00_fixture.ipynb", b"junk"),
    ]
    report = collect_zip(course, PROBLEM_SET, _zip(entries, tmp_path))
    assert sorted(s.split(":")[0] for s in report.saved) == ["doejane", "smith"]
    assert (course.submitted_dir(PROBLEM_SET, "doejane") / f"{PROBLEM_SET}.ipynb").read_bytes() == _nb_bytes()
    assert (course.submitted_dir(PROBLEM_SET, "smith") / "timestamp.txt").exists()
    text = "\n".join(report.rejected)
    for needle in ["climbs out", "absolute path", "not a notebook (.ipynb)", "not a valid notebook",
                   "twice: 2 notebooks", "MB uncompressed", "symbolic link"]:
        assert needle in text, needle
    assert not (tmp_path / "escape_1_2_ps00_fixture.ipynb").exists()
    assert not course.submitted_dir(PROBLEM_SET, "twice").exists()


def test_collect_never_overwrites_silently(tmp_path):
    from normcourse.grading.collect import collect_zip

    course = make_course(tmp_path / "c", release_it=False)
    first = collect_zip(course, PROBLEM_SET, _zip([("ann_1_2_ps00_fixture.ipynb", _nb_bytes())], tmp_path, "a.zip"))
    assert len(first.saved) == 1
    again = collect_zip(course, PROBLEM_SET, _zip([("ann_1_2_ps00_fixture.ipynb", _nb_bytes())], tmp_path, "b.zip"))
    assert len(again.unchanged) == 1 and not again.rejected
    changed = copy.deepcopy(solution_nb())
    cell(changed, "center").source = "def center(x):\n    return x"
    new_zip = _zip([("ann_1_2_ps00_fixture.ipynb", nbformat.writes(changed).encode())], tmp_path, "c.zip")
    refused = collect_zip(course, PROBLEM_SET, new_zip)
    assert "not overwritten" in refused.rejected[0]
    path = course.submitted_dir(PROBLEM_SET, "ann") / f"{PROBLEM_SET}.ipynb"
    assert path.read_bytes() == _nb_bytes()
    replaced = collect_zip(course, PROBLEM_SET, new_zip, overwrite=True)
    assert len(replaced.saved) == 1 and path.read_bytes() != _nb_bytes()
    assert list((course.grading_dir / "replaced" / "ann" / PROBLEM_SET).iterdir())  # the old one is kept


def test_collect_custom_pattern_and_ratio_bomb(tmp_path):
    from normcourse.grading.collect import CollectLimits, collect_zip

    course = make_course(tmp_path / "c", release_it=False)
    zero_bomb = b'{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5, "x": "' + b"0" * (5 << 20) + b'"}'
    path = _zip([("id-4711.ipynb", _nb_bytes()), ("id-4712.ipynb", zero_bomb)], tmp_path)
    report = collect_zip(course, PROBLEM_SET, path, pattern=r"^id-(?P<student>\d+)\.ipynb$",
                         limits=CollectLimits(max_ratio=100))
    assert [s.split(":")[0] for s in report.saved] == ["4711"]
    assert "zip bomb" in report.rejected[0]
