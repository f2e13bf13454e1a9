"""The instructor pipeline on the fixture problem set: parallel autograde without data loss, idempotent
re-runs, no silent overwrites, resumption, consistency checks, feedback, export and report.

One module-scoped course: ``alice`` submits the solution, ``bob`` the untouched release. Tests that
change state use their own students so that the order of the tests does not matter.
"""

from __future__ import annotations

import csv
import io
import re

import nbformat
import pytest

from grading_helpers import PROBLEM_SET, make_course, solution_nb, submit, with_solution

pytestmark = pytest.mark.slow

FAST = dict(workers=2, cell_timeout=30, progress=False)


def _kernel_cannot_start():
    """A 60 MiB address-space cap: the kernel dies before replying to kernel_info, which is exactly what
    nbclient reports for a kernel that fails to start (classed as an infrastructure error)."""
    from normcourse.grading.limits import Limits
    return Limits(memory_mb=60)


KERNEL_CANNOT_START = _kernel_cannot_start()


def options(**kwargs):
    from normcourse.grading.autograde import AutogradeOptions
    return AutogradeOptions(**{**FAST, **kwargs})


def gradebook_scores(course, student):
    from nbgrader.api import Gradebook
    with Gradebook(course.db_url) as gb:
        nb = gb.find_submission_notebook(PROBLEM_SET, PROBLEM_SET, student)
        return {g.name: g.auto_score for g in nb.grades}


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    from normcourse.grading.autograde import autograde

    course = make_course(tmp_path_factory.mktemp("pipeline"))
    submit(course, "alice", solution_nb())
    submit(course, "bob", nbformat.read(course.release_dir(PROBLEM_SET) / f"{PROBLEM_SET}.ipynb", as_version=4))
    summary = autograde(course, PROBLEM_SET, options())
    assert summary.ok, (summary.counts, summary.problems)
    return course


def test_parallel_grades_are_right(course):
    assert gradebook_scores(course, "alice") == {"scale_test": 1, "center_shape": 1, "center_test": 2,
                                                 "explain_centering": None}
    assert {k: v for k, v in gradebook_scores(course, "bob").items() if k != "explain_centering"} == \
        {"scale_test": 0, "center_shape": 0, "center_test": 0}
    assert course.autograded_dir(PROBLEM_SET, "alice").is_dir()


def test_rerun_skips_unchanged_and_regrade_is_identical(course):
    from normcourse.grading.autograde import autograde
    from normcourse.grading.ledger import Ledger

    before = gradebook_scores(course, "alice")
    assert autograde(course, PROBLEM_SET, options(students=["alice"])).skipped == ["alice"]
    summary = autograde(course, PROBLEM_SET, options(students=["alice"], regrade=True))
    assert summary.records["alice"]["status"] == "graded" and summary.ok
    assert gradebook_scores(course, "alice") == before
    assert not [e for e in Ledger(course).events if e["event"] == "overwrote"]


def test_differing_grade_needs_force_and_is_logged(course):
    from normcourse.grading.autograde import autograde
    from normcourse.grading.ledger import Ledger

    submit(course, "carol", solution_nb())
    autograde(course, PROBLEM_SET, options(students=["carol"]))
    assert gradebook_scores(course, "carol")["center_test"] == 2
    submit(course, "carol", with_solution("center", "def center(x):\n    return x"))  # resubmitted, now wrong
    kept = autograde(course, PROBLEM_SET, options(students=["carol"]))
    assert kept.records["carol"]["status"] == "conflict" and not kept.ok
    assert gradebook_scores(course, "carol")["center_test"] == 2  # not silently overwritten
    forced = autograde(course, PROBLEM_SET, options(students=["carol"], force=True))
    assert forced.records["carol"]["status"] == "graded" and forced.ok
    assert gradebook_scores(course, "carol")["center_test"] == 0
    events = [e for e in Ledger(course).events if e["event"] == "overwrote" and e["student"] == "carol"]
    assert {e["grade_id"] for e in events} == {"center_shape", "center_test"}  # both now confirmed wrong


def test_infrastructure_failure_never_touches_grades(course):
    """The failure seen in production: kernels that do not start. Retried, then recorded; grades kept."""
    from normcourse.grading.autograde import autograde
    from normcourse.grading.ledger import Ledger

    before = gradebook_scores(course, "alice")
    summary = autograde(course, PROBLEM_SET, options(students=["alice"], regrade=True, retries=1,
                                                     limits=KERNEL_CANNOT_START))
    assert "infrastructure" in summary.records["alice"].get("last_attempt", "")
    assert gradebook_scores(course, "alice") == before
    assert (course.autograded_dir(PROBLEM_SET, "alice") / f"{PROBLEM_SET}.ipynb").exists()
    events = Ledger(course).events
    assert len([e for e in events if e["event"] == "retry" and e["student"] == "alice"]) >= 1
    assert summary.problems == []


def test_first_grading_that_hits_infrastructure_records_a_reason(course):
    from normcourse.grading.autograde import autograde

    submit(course, "dave", solution_nb())
    summary = autograde(course, PROBLEM_SET, options(students=["dave"], retries=0, limits=KERNEL_CANNOT_START))
    record = summary.records["dave"]
    assert record["status"] == "infrastructure" and record["reason"]
    assert summary.problems == [] and not summary.ok  # recorded, yet reported as not done


def test_resume_after_crash_between_gradebook_and_ledger(course):
    """A crash after the gradebook write but before the ledger write: the re-run regrades, identically."""
    from normcourse.grading.autograde import autograde
    from normcourse.grading.ledger import Ledger, consistency_problems

    ledger = Ledger(course)
    del ledger.records[Ledger.key(PROBLEM_SET, "bob")]
    ledger.save()
    assert any("bob: no ledger record" in p for p in consistency_problems(course, PROBLEM_SET, ["bob"]))
    summary = autograde(course, PROBLEM_SET, options(students=["bob"]))
    assert summary.records["bob"]["status"] == "graded" and summary.problems == []


def test_consistency_check_notices_a_changed_gradebook(course):
    from nbgrader.api import Gradebook

    from normcourse.grading.ledger import consistency_problems

    with Gradebook(course.db_url) as gb:
        grade = gb.find_grade("center_test", PROBLEM_SET, PROBLEM_SET, "alice")
        grade.auto_score, original = 0.5, grade.auto_score
        gb.db.commit()
    try:
        assert any("center_test" in p for p in consistency_problems(course, PROBLEM_SET, ["alice"]))
    finally:
        with Gradebook(course.db_url) as gb:
            gb.find_grade("center_test", PROBLEM_SET, PROBLEM_SET, "alice").auto_score = original
            gb.db.commit()


def test_feedback_hides_hidden_tests_and_renders_math_offline(course):
    from normcourse.grading.feedback import CDN_PATTERN, generate_feedback

    pages = generate_feedback(course, PROBLEM_SET, ["alice"])
    html = pages[0].read_text()
    assert "check_part" not in html and "HIDDEN TESTS" not in html
    assert not CDN_PATTERN.search(html)
    assert not re.search(r"<script[^>]+src=[\"']https?:", html)  # nothing loaded from the network
    assert 'src="mathjax/tex-chtml.js"' in html
    assert (pages[0].parent / "mathjax" / "tex-chtml.js").exists()
    assert (pages[0].parent / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()


def test_export_quotes_fields_and_reports_status(course):
    from nbgrader.api import Gradebook

    from normcourse.grading.export import COLUMNS, export_csv

    with Gradebook(course.db_url) as gb:
        gb.update_or_create_student("alice", last_name="Doe, Jr.", first_name='Al "the" Ice')
    rows = list(csv.DictReader(io.StringIO(export_csv(course, PROBLEM_SET))))
    alice = next(r for r in rows if r["student_id"] == "alice")
    assert list(alice) == COLUMNS
    assert alice["last_name"] == "Doe, Jr." and alice["first_name"] == 'Al "the" Ice'
    assert float(alice["raw_score"]) == 4 and alice["status"] == "graded"


def test_report_writes_page_and_plots(course):
    from normcourse.grading.report import write_report

    page = write_report(course, PROBLEM_SET)
    assert (page.parent / "histogram.png").stat().st_size > 1000
    assert (page.parent / "pass_rates.png").stat().st_size > 1000
    text = page.read_text()
    assert "center_test" in text and "Flagged submissions" in text


def test_without_a_sandbox_autograde_refuses_unless_told_and_then_says_so(course, monkeypatch):
    """Where no sandbox can start, grading stops with the reason; --no-sandbox grades, and every record,
    the report and the export say the submission was graded without it."""
    from normcourse.grading import sandbox
    from normcourse.grading.autograde import autograde
    from normcourse.grading.export import export_rows
    from normcourse.grading.report import write_report
    from normcourse.grading.result import GradeResult

    submit(course, "erin", solution_nb())
    monkeypatch.setattr(sandbox, "availability", lambda: (False, "bubblewrap is not installed (test)"))
    with pytest.raises(sandbox.SandboxUnavailable, match="bubblewrap is not installed .test.*--no-sandbox"):
        autograde(course, PROBLEM_SET, options(students=["erin"]))
    summary = autograde(course, PROBLEM_SET, options(students=["erin"], sandbox=False))
    record = summary.records["erin"]
    assert record["status"] == "graded" and GradeResult.from_json(record["result"]).sandboxed is False
    assert "WITHOUT the sandbox" in write_report(course, PROBLEM_SET).read_text()
    erin = next(r for r in export_rows(course, PROBLEM_SET) if r["student_id"] == "erin")
    assert erin["status"] == "graded"
