"""Export through nbgrader's ExportApp with our ExportPlugin (no kernels: the gradebook is written by the
orchestrator's merge from hand-made results, exactly as after an autograde batch).

Students of the fixture course:

- ``alice``: graded, full marks, a name with a comma and quotes;
- ``bob``: graded, late (penalty 6 > raw score 4: the score clamps at 0), graded without the sandbox;
- ``carol``: failed (autograded cells 0) with a reason holding a comma and a newline;
- ``dave``: an infrastructure failure on the first try: in the ledger, never in the gradebook;
- ``erin``: in the gradebook but without a submission or a record (no row);
- ``frank``: a submission in the gradebook with no ledger record ("not graded").
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from grading_helpers import PROBLEM_SET, make_course

AUTOGRADED = {"scale_test": 1.0, "center_shape": 1.0, "center_test": 2.0}


def _result(student, status="graded", scores=None, **kwargs):
    from normcourse.grading.result import GradeResult, PartGrade

    scores = AUTOGRADED if scores is None else scores
    parts = [PartGrade(PROBLEM_SET, gid, "autograded", points, score=scores[gid]) for gid, points in AUTOGRADED.items()]
    parts.append(PartGrade(PROBLEM_SET, "explain_centering", "manual", 1.0))
    return GradeResult(PROBLEM_SET, student, status, parts=parts, **kwargs)


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    from nbgrader.api import Gradebook

    from normcourse.grading.autograde import merge, seed_gradebook
    from normcourse.grading.ledger import Ledger

    course = make_course(tmp_path_factory.mktemp("export"), release_it=False)
    seed_gradebook(course, PROBLEM_SET, course.db_url)
    ledger = Ledger(course)
    zero = dict.fromkeys(AUTOGRADED, 0.0)
    for result in [_result("alice"),
                   _result("bob", late_penalty={PROBLEM_SET: 6.0}, timestamp="2026-01-30T15:00:00",
                           sandboxed=False, flags=["suspicious: reads the grader's files"]),
                   _result("carol", "failed", zero, reason="not a notebook, says nbformat:\nline 2")]:
        assert merge(course, ledger, result, attempts=1, force=False)["status"] == result.status
    merge(course, ledger, _result("dave", "infrastructure", reason="kernel did not start"), attempts=3, force=False)
    with Gradebook(course.db_url) as gb, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's own SQLAlchemy notice
        gb.update_or_create_student("alice", last_name="Doe, Jr.", first_name='Al "the" Ice')
        gb.update_or_create_student("erin")
        gb.update_or_create_student("frank")
        gb.add_submission(PROBLEM_SET, "frank")
    return course


def _rows(text):
    return {row["student_id"]: row for row in csv.DictReader(io.StringIO(text))}


def test_export_quotes_fields_and_keeps_the_columns(course):
    from normcourse.grading.export import COLUMNS, export_csv

    text = export_csv(course, PROBLEM_SET)
    assert text.splitlines()[0] == ",".join(COLUMNS)
    assert '"Doe, Jr."' in text and '"Al ""the"" Ice"' in text  # csv quoting, not comma-joining
    rows = _rows(text)
    assert sorted(rows) == ["alice", "bob", "carol", "dave", "frank"]  # erin submitted nothing
    alice = rows["alice"]
    assert list(alice) == COLUMNS
    assert alice["last_name"] == "Doe, Jr." and alice["first_name"] == 'Al "the" Ice'
    assert float(alice["raw_score"]) == 4 and float(alice["score"]) == 4 and float(alice["max_score"]) == 5
    assert (alice["status"], alice["sandboxed"], alice["flags"]) == ("graded", "True", "")
    assert alice["needs_manual_grade"] == "True"  # the written answer waits for a person


def test_export_clamps_late_penalties_at_zero(course):
    from normcourse.grading.export import export_csv

    bob = _rows(export_csv(course, PROBLEM_SET))["bob"]
    assert float(bob["raw_score"]) == 4 and float(bob["late_submission_penalty"]) == 6
    assert float(bob["score"]) == 0.0  # max(0, 4 - 6), as nbgrader's own export
    assert bob["timestamp"].startswith("2026-01-30 15:00:00")


def test_export_shows_the_ledgers_verdict(course):
    from normcourse.grading.export import export_csv
    from normcourse.grading.result import UNSANDBOXED_FLAG

    rows = _rows(export_csv(course, PROBLEM_SET))
    assert rows["bob"]["sandboxed"] == "False"
    assert rows["bob"]["flags"] == f"{UNSANDBOXED_FLAG}; suspicious: reads the grader's files"
    assert (rows["carol"]["status"], rows["carol"]["reason"]) == ("failed", "not a notebook, says nbformat:\nline 2")
    assert float(rows["carol"]["raw_score"]) == 0
    dave = rows["dave"]
    assert (dave["status"], dave["reason"], dave["raw_score"], dave["score"]) == \
        ("infrastructure", "kernel did not start", "", "")  # never passes for an earned zero
    assert (rows["frank"]["status"], rows["frank"]["sandboxed"]) == ("not graded", "")


def test_export_filters_by_student_and_the_cli_writes_a_file(course, tmp_path, capsys):
    from normcourse.cli import main

    out = tmp_path / "grades.csv"
    assert main(["export", PROBLEM_SET, "--course", str(course.root), "-o", str(out),
                 "--student", "alice", "--student", "dave"]) == 0
    assert sorted(_rows(out.read_text())) == ["alice", "dave"]
    assert main(["export", "--course", str(course.root)]) == 0
    assert sorted(_rows(capsys.readouterr().out)) == ["alice", "bob", "carol", "dave", "frank"]


def test_plain_nbgrader_export_with_the_plugin_gives_the_same_file(course, tmp_path):
    from normcourse.grading.export import export_csv

    ours = tmp_path / "ours.csv"
    export_csv(course, PROBLEM_SET, ours)
    env = {k: v for k, v in os.environ.items() if k != "NORMCOURSE_GRADING_DIR"}  # the config's own grading/
    nbgrader = Path(sys.executable).parent / "nbgrader"
    run = subprocess.run([str(nbgrader), "export", "--ExportApp.plugin_class=normcourse.grading.export."
                          "LedgerCsvExportPlugin", "--to", str(tmp_path / "plain.csv"),
                          "--assignment", f"['{PROBLEM_SET}']"],
                         cwd=course.root, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "plain.csv").read_bytes() == ours.read_bytes()
