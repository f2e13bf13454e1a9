"""Release leak checks and LMS zip collection (no kernels: fast).

Collection runs nbgrader's own ``ZipCollectApp`` with our extractor and collector plugins; every
test below goes through that app (in process, or as ``nbgrader zip_collect`` in a subprocess).
"""

from __future__ import annotations

import copy
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

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
            z.writestr(entry, data)
    return path


def _nb_bytes(nb=None):
    return nbformat.writes(nb or solution_nb()).encode()


def _changed_nb_bytes():
    changed = copy.deepcopy(solution_nb())
    cell(changed, "center").source = "def center(x):\n    return x"
    return _nb_bytes(changed)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} \
        if folder.is_dir() else {}


def _symlink_entry(name):
    link = zipfile.ZipInfo(name)
    link.external_attr = (0o120777 << 16)
    return link


def _mixed_entries():
    return [
        ("doejane_123_456_ps00_fixture.ipynb", _nb_bytes()),
        ("smith_LATE_123_456_ps00_fixture-1.ipynb", _nb_bytes()),
        ("../../escape_1_2_ps00_fixture.ipynb", _nb_bytes()),
        ("/abs_1_2_ps00_fixture.ipynb", _nb_bytes()),
        ("C:\\win_1_2_ps00_fixture.ipynb", _nb_bytes()),
        ("notes_1_2_essay.pdf", b"%PDF-1.4"),
        ("broken_1_2_ps00_fixture.ipynb", b'{"cells": ['),
        ("twice_1_2_ps00_fixture.ipynb", _nb_bytes()),
        ("twice_1_3_ps00_fixture-2.ipynb", _nb_bytes()),
        ("bomb_1_2_ps00_fixture.ipynb", b"{" + b" " * (30 << 20) + b"}"),
        (_symlink_entry("evelyn_1_2_ps00_fixture.ipynb"), b"/etc/passwd"),
        ("__MACOSX/._doejane_123_456_ps00_fixture.ipynb", b"junk"),
        ("_nobody_.ipynb", _nb_bytes()),
    ]


def test_collect_saves_and_rejects_with_reasons(tmp_path):
    from normcourse.grading.collect import collect_zip

    course = make_course(tmp_path / "c", release_it=False)
    report = collect_zip(course, PROBLEM_SET, _zip(_mixed_entries(), tmp_path))
    assert sorted(s.split(":")[0] for s in report.accepted) == ["doejane", "smith"]
    assert (course.submitted_dir(PROBLEM_SET, "doejane") / f"{PROBLEM_SET}.ipynb").read_bytes() == _nb_bytes()
    assert (course.submitted_dir(PROBLEM_SET, "smith") / "timestamp.txt").exists()
    text = "\n".join(report.rejected)
    for needle in ["climbs out", "absolute path", "Windows path", "not a notebook (.ipynb)", "not a valid notebook",
                   "twice: 2 notebooks", "MB uncompressed", "symbolic link", "_nobody_.ipynb: no student id"]:
        assert needle in text, needle
    assert len(report.rejected) == 9 and not report.unchanged  # every entry but the two and the OS metadata
    assert not (tmp_path / "escape_1_2_ps00_fixture.ipynb").exists()
    assert sorted(course.submitted_students(PROBLEM_SET)) == ["doejane", "smith"]  # nothing else written


def test_collect_never_overwrites_silently(tmp_path):
    from normcourse.grading.collect import collect_zip

    course = make_course(tmp_path / "c", release_it=False)
    first = collect_zip(course, PROBLEM_SET, _zip([("ann_1_2_ps00_fixture.ipynb", _nb_bytes())], tmp_path, "a.zip"))
    assert len(first.accepted) == 1
    folder = course.submitted_dir(PROBLEM_SET, "ann")
    before = _tree(folder)
    again = collect_zip(course, PROBLEM_SET, _zip([("ann_1_2_ps00_fixture.ipynb", _nb_bytes())], tmp_path, "b.zip"))
    assert len(again.unchanged) == 1 and not again.rejected and not again.accepted
    assert _tree(folder) == before  # not even the timestamp is rewritten
    new_zip = _zip([("ann_1_2_ps00_fixture.ipynb", _changed_nb_bytes())], tmp_path, "c.zip")
    refused = collect_zip(course, PROBLEM_SET, new_zip)
    assert "not overwritten" in refused.rejected[0] and not refused.accepted
    assert _tree(folder) == before
    replaced = collect_zip(course, PROBLEM_SET, new_zip, overwrite=True)
    assert len(replaced.accepted) == 1 and "moved to" in replaced.accepted[0]
    assert (folder / f"{PROBLEM_SET}.ipynb").read_bytes() == _changed_nb_bytes()
    kept = list((course.grading_dir / "replaced" / "ann" / PROBLEM_SET).iterdir())
    assert len(kept) == 1 and _tree(kept[0]) == before  # the whole old folder, timestamp included


def test_collect_custom_pattern_ratio_bomb_and_timestamp_group(tmp_path):
    from normcourse.grading.collect import collect_zip

    course = make_course(tmp_path / "c", release_it=False)
    zero_bomb = b'{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5, "x": "' + b"0" * (5 << 20) + b'"}'
    path = _zip([("id-4711_2026-01-30-15-00-00.ipynb", _nb_bytes()), ("id-4712_2026-01-30-15-00-00.ipynb", zero_bomb),
                 ("id-4713_yesterday.ipynb", _nb_bytes()), ("id-..._2026-01-30-15-00-00.ipynb", _nb_bytes())], tmp_path)
    pattern = r"^id-(?P<student>[^_]+)_(?P<timestamp>[^.]+)\.ipynb$"  # nbgrader's name, 'student_id', works too
    report = collect_zip(course, PROBLEM_SET, path, pattern=pattern.replace("student", "student_id"),
                         limits={"max_ratio": 100})
    assert [s.split(":")[0] for s in report.accepted] == ["4711"]
    text = "\n".join(report.rejected)
    assert "zip bomb" in text and "unreadable timestamp 'yesterday'" in text and "not a safe folder name" in text
    assert (course.submitted_dir(PROBLEM_SET, "4711") / "timestamp.txt").read_text() == "2026-01-30 15:00:00"
    with pytest.raises(ValueError, match="student_id"):
        collect_zip(course, PROBLEM_SET, path, pattern=r"^(?P<who>\w+)")
    with pytest.raises(ValueError, match="unknown collection limit"):
        collect_zip(course, PROBLEM_SET, path, limits={"max_size": 1})


def _patch_sizes(path: Path, name: bytes, size: int) -> None:
    """Make the zip's headers claim ``size`` bytes uncompressed for entry ``name`` (a lying header)."""
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            name_at = start + (30 if signature == b"PK\x03\x04" else 46)
            if data[name_at:name_at + len(name)] == name:
                data[start + offset:start + offset + 4] = struct.pack("<I", size)
            start += 4
    path.write_bytes(bytes(data))


def test_collect_limits_hold_against_lying_headers_and_many_entries(tmp_path):
    """A header that understates an entry's size passes every check made on the header; reading it
    yields at most the declared bytes (zipfile stops there; our own read cap is a second layer), the CRC
    then fails and the entry is rejected. Entry count and total size are enforced per run."""
    from normcourse.grading.collect import collect_zip

    course = make_course(tmp_path / "c", release_it=False)
    big = b'{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5, "x": "' + b"1" * (3 << 20) + b'"}'
    path = _zip([("liar_1_ps00_fixture.ipynb", big), ("ok_1_ps00_fixture.ipynb", _nb_bytes())], tmp_path)
    _patch_sizes(path, b"liar_1_ps00_fixture.ipynb", 200)  # passes every check made on the header
    report = collect_zip(course, PROBLEM_SET, path, limits={"max_entry_mb": 1})
    assert [s.split(":")[0] for s in report.accepted] == ["ok"]
    assert report.rejected[0].startswith("lms.zip/liar_1_ps00_fixture.ipynb: cannot be read")  # bad CRC: truncated
    assert not course.submitted_dir(PROBLEM_SET, "liar").exists()

    size = len(_nb_bytes())
    many = _zip([(f"s{i}_1_ps00_fixture.ipynb", _nb_bytes()) for i in range(4)], tmp_path, "many.zip")
    assert "4 entries (limit 3)" in collect_zip(course, PROBLEM_SET, many, limits={"max_entries": 3}).rejected[0]
    capped = collect_zip(course, PROBLEM_SET, many, limits={"max_total_mb": 2.5 * size / 2**20})
    assert len(capped.accepted) == 2 and all("in total" in r for r in capped.rejected) and len(capped.rejected) == 2


def test_collect_options_come_from_nbgrader_config(tmp_path):
    from normcourse.grading.collect import collect_zip

    course = make_course(tmp_path / "c", release_it=False)
    with open(course.root / "nbgrader_config.py", "a") as f:
        f.write('\nc.SubmissionCollector.named_regexp = r"^hw-(?P<student_id>[a-z]+)\\.ipynb$"\n'
                'c.SubmissionCollector.overwrite = True\n'
                'c.SafeZipExtractor.max_entry_mb = 0.001\n')
    collect_zip(course, PROBLEM_SET, _zip([("hw-ann.ipynb", _nb_bytes())], tmp_path, "a.zip"), limits={"max_entry_mb": 1})
    report = collect_zip(course, PROBLEM_SET, _zip([("hw-ann.ipynb", _changed_nb_bytes()),
                                                   ("hw-bob.ipynb", b"x" * 2000)], tmp_path, "b.zip"))
    assert [s.split(":")[0] for s in report.accepted] == []  # 0.001 MB from the config rejects both
    assert all("limit 0.001 MB" in r for r in report.rejected)
    report = collect_zip(course, PROBLEM_SET, _zip([("hw-ann.ipynb", _changed_nb_bytes())], tmp_path, "c.zip"),
                         limits={"max_entry_mb": 1})
    assert len(report.accepted) == 1 and "moved to" in report.accepted[0]  # overwrite from the config


def test_nbgrader_zip_collect_with_the_config_behaves_the_same(tmp_path):
    """Plain ``nbgrader zip_collect --force`` with our plugins in nbgrader_config.py: the same submitted tree
    as ``normcourse collect`` from the same zip, and a student's different earlier submission survives
    (nbgrader alone would delete it with --force, or fail the whole run without)."""
    from normcourse.grading.collect import collect_zip

    entries = _mixed_entries() + [("ann_1_2_ps00_fixture.ipynb", _changed_nb_bytes())]
    ours, plain = make_course(tmp_path / "ours", release_it=False), make_course(tmp_path / "plain", release_it=False)
    for course in (ours, plain):
        collect_zip(course, PROBLEM_SET, _zip([("ann_1_2_ps00_fixture.ipynb", _nb_bytes())], tmp_path, "first.zip"))
    lms = _zip(entries, tmp_path)
    report = collect_zip(ours, PROBLEM_SET, lms)
    assert "ann: a different submission already exists" in "\n".join(report.rejected)

    with open(plain.root / "nbgrader_config.py", "a") as f:
        f.write('\nc.ZipCollectApp.extractor_plugin = "normcourse.grading.collect.SafeZipExtractor"\n'
                'c.ZipCollectApp.collector_plugin = "normcourse.grading.collect.SubmissionCollector"\n')
    archive = plain.root / "downloaded" / PROBLEM_SET / "archive"
    archive.mkdir(parents=True)
    os.link(lms, archive / "lms.zip")
    (archive / "loose_9_ps00_fixture.ipynb").write_bytes(_nb_bytes())  # files next to the zip: same checks
    (archive / "readme.txt").write_text("not a submission")
    (plain.root / "downloaded" / PROBLEM_SET / "extracted" / "stale").mkdir(parents=True)  # needs --force
    env = {k: v for k, v in os.environ.items() if k != "NORMCOURSE_GRADING_DIR"}
    nbgrader = Path(sys.executable).parent / "nbgrader"
    run = subprocess.run([str(nbgrader), "zip_collect", PROBLEM_SET, "--force"], cwd=plain.root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for needle in ["climbs out", "symbolic link", "twice: 2 notebooks", "ann: a different submission already exists",
                   "readme.txt: not a notebook"]:
        assert needle in run.stderr, needle
    assert (plain.submitted_dir(PROBLEM_SET, "loose") / f"{PROBLEM_SET}.ipynb").read_bytes() == _nb_bytes()
    shutil.rmtree(plain.submitted_dir(PROBLEM_SET, "loose").parent)

    def submitted(course):
        tree = _tree(course.grading_dir / "submitted")
        return {k: v for k, v in tree.items() if not k.endswith("timestamp.txt")}, \
            sorted(k for k in tree if k.endswith("timestamp.txt"))

    assert submitted(plain) == submitted(ours)
    assert sorted(course_students := plain.submitted_students(PROBLEM_SET)) == ["ann", "doejane", "smith"], \
        course_students
    assert (plain.submitted_dir(PROBLEM_SET, "ann") / f"{PROBLEM_SET}.ipynb").read_bytes() == _nb_bytes()


def test_collect_same_name_twice_in_one_zip_is_a_duplicate(tmp_path):
    import warnings

    from normcourse.grading.collect import collect_zip

    course = make_course(tmp_path / "c", release_it=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it writes
        path = _zip([("ann_1_ps00_fixture.ipynb", _nb_bytes()), ("ann_1_ps00_fixture.ipynb", _changed_nb_bytes())],
                    tmp_path)
    report = collect_zip(course, PROBLEM_SET, path)
    assert not report.accepted and "ann: 2 notebooks in the archive" in report.rejected[0]
    assert not course.submitted_dir(PROBLEM_SET, "ann").exists()


def test_normcourse_collect_prints_the_report_and_fails_on_rejections(tmp_path, capsys):
    from normcourse.cli import main

    course = make_course(tmp_path / "c", release_it=False)
    ok = _zip([("ann_1_2_ps00_fixture.ipynb", _nb_bytes())], tmp_path, "ok.zip")
    assert main(["collect", PROBLEM_SET, str(ok), "--course", str(course.root)]) == 0
    assert capsys.readouterr().out.startswith("accepted 1, unchanged 0, rejected 0")
    changed = _zip([("ann_1_2_ps00_fixture.ipynb", _changed_nb_bytes()), ("x.pdf", b"%PDF")], tmp_path, "new.zip")
    assert main(["collect", PROBLEM_SET, str(changed), "--course", str(course.root)]) == 1
    out = capsys.readouterr().out
    assert "REJECTED: ann: a different submission already exists" in out and "REJECTED: new.zip/x.pdf" in out
    assert main(["collect", PROBLEM_SET, str(changed), "--course", str(course.root), "--overwrite"]) == 1  # x.pdf
    assert "accepted: ann" in capsys.readouterr().out
    (tmp_path / "not.zip").write_text("hello")
    assert main(["collect", PROBLEM_SET, str(tmp_path / "not.zip"), "--course", str(course.root)]) == 2
    assert main(["collect", PROBLEM_SET, str(ok), "--course", str(course.root), "--pattern", "(?P<x>a)"]) == 2
    assert "student_id" in capsys.readouterr().err
