"""Grades as CSV: an nbgrader ``ExportPlugin`` that writes with the ``csv`` module and adds the ledger's verdict.

``nbgrader export`` (its ``CsvExportPlugin``) joins fields with commas without quoting, so a name like
"Doe, Jane" shifts every column after it. :class:`LedgerCsvExportPlugin` writes every field through
:mod:`csv` (minimal quoting) and adds, from the grading ledger, ``status`` (graded / failed / conflict /
infrastructure / refused, or "not graded"), ``reason``, ``flags`` (reasons to review) and ``sandboxed``
(False: graded WITHOUT the sandbox, which is also a flag), so a submission that failed to grade can
never pass for a zero that was earned. Like nbgrader, the score is the raw score minus the late
penalty, never below zero.

Rows: one per submission in the gradebook, and one per ledger record without a submission (a
submission that could not be graded at all). Students who submitted nothing have no row.

Columns: assignment, duedate, timestamp, student_id, last_name, first_name, email, raw_score,
late_submission_penalty, score, max_score, needs_manual_grade, status, reason, flags, sandboxed.

Both commands give the same file::

    normcourse export ps01_scopes -o grades.csv
    nbgrader export --ExportApp.plugin_class=normcourse.grading.export.LedgerCsvExportPlugin \\
        --to grades.csv --assignment "['ps01_scopes']"

(or set ``c.ExportApp.plugin_class`` in ``nbgrader_config.py``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from nbgrader.plugins import ExportPlugin
from traitlets import Unicode

__all__ = ["COLUMNS", "export_rows", "LedgerCsvExportPlugin", "export_csv"]

COLUMNS = ["assignment", "duedate", "timestamp", "student_id", "last_name", "first_name", "email", "raw_score",
           "late_submission_penalty", "score", "max_score", "needs_manual_grade", "status", "reason", "flags",
           "sandboxed"]



def _verdict(record: dict | None) -> dict:
    from .result import GradeResult

    if not record:
        return {"status": "not graded", "reason": "", "flags": "", "sandboxed": ""}
    result = GradeResult.from_json(record["result"])
    flags = result.review_flags
    return {"status": record["status"], "reason": record.get("reason", ""), "flags": "; ".join(flags),
            "sandboxed": result.sandboxed}


def export_rows(gradebook, records: dict, assignments=(), students=()) -> list[dict]:
    """The export's rows.

    Args:
        gradebook: an open ``nbgrader.api.Gradebook``.
        records: the ledger's records (``Ledger.records``, keyed ``"<PS>/<student>"``).
        assignments, students: only these (default: all).

    Returns:
        one dict per row, keyed by :data:`COLUMNS`.
    """
    from nbgrader.api import MissingEntry

    from .ledger import Ledger

    rows = []
    for assignment in gradebook.assignments:
        if assignments and assignment.name not in assignments:
            continue
        known = set()
        for student in gradebook.students:
            if students and student.id not in students:
                continue
            known.add(student.id)
            record = records.get(Ledger.key(assignment.name, student.id))
            try:
                submission = gradebook.find_submission(assignment.name, student.id)
            except MissingEntry:
                submission = None
            if submission is None and not record:
                continue
            row = {"assignment": assignment.name, "duedate": assignment.duedate or "", "student_id": student.id,
                   "last_name": student.last_name or "", "first_name": student.first_name or "",
                   "email": student.email or "", "max_score": assignment.max_score, **_verdict(record)}
            if submission is not None:
                raw, penalty = submission.score, submission.late_submission_penalty or 0.0
                row.update(timestamp=submission.timestamp or "", raw_score=raw, late_submission_penalty=penalty,
                           score=max(0.0, raw - penalty), needs_manual_grade=bool(submission.needs_manual_grade))
            rows.append(row)
        prefix = assignment.name + "/"
        for key, record in sorted(records.items()):  # never graded, so never in the gradebook
            student_id = key[len(prefix):]
            if key.startswith(prefix) and student_id not in known and (not students or student_id in students):
                rows.append({"assignment": assignment.name, "duedate": assignment.duedate or "",
                             "student_id": student_id, "max_score": assignment.max_score, **_verdict(record)})
    return rows


class LedgerCsvExportPlugin(ExportPlugin):
    """nbgrader export plugin: quoted CSV with the ledger's status, reason, flags and sandbox columns.

    Uses nbgrader's ``to`` (default ``grades.csv``), ``assignment`` and ``student`` options.
    """

    grading_directory = Unicode("", help=(
        "The course's grading folder, which holds ledger.json (default: the one nbgrader_config.py names, "
        "i.e. the folder of a SQLite gradebook, else $NORMCOURSE_GRADING_DIR or grading/).")).tag(config=True)

    def _ledger(self):
        from .course import Course
        from .ledger import Ledger

        coursedir = getattr(self.parent, "coursedir", None)
        root = Path(coursedir.root if coursedir is not None else os.getcwd())
        course = Course(root, Path(self.grading_directory)) if self.grading_directory else Course(root)
        return Ledger(course)

    def export(self, gradebook) -> None:
        dest = self.to or "grades.csv"
        rows = export_rows(gradebook, self._ledger().records, [str(a) for a in self.assignment],
                           [str(s) for s in self.student])
        self.log.info("Exporting %d rows to %s", len(rows), dest)
        partial = f"{dest}.partial"
        with open(partial, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, restval="", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(partial, dest)


def export_csv(course, problem_set: str | None = None, path=None, students: list[str] | None = None) -> str:
    """Run nbgrader's ``ExportApp`` with :class:`LedgerCsvExportPlugin` on ``course``; write (to ``path``
    if given) and return the CSV text.

    Example::

        text = export_csv(Course.find(), "ps01_scopes", "grades.csv")
    """
    import tempfile

    from nbgrader.apps import ExportApp
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.utils import capture_log
    from traitlets.utils.importstring import import_item

    configured = course.config().ExportApp.get("plugin_class", LedgerCsvExportPlugin)
    plugin = import_item(configured) if isinstance(configured, str) else configured
    if not (isinstance(plugin, type) and issubclass(plugin, LedgerCsvExportPlugin)):
        plugin = LedgerCsvExportPlugin
    with tempfile.TemporaryDirectory(prefix="normcourse-export-") as scratch:
        dest = Path(path) if path is not None else Path(scratch, "grades.csv")
        config = course.config({"ExportApp": {"plugin_class": plugin},
                                plugin.__name__: {"to": str(dest), "assignment": [problem_set] if problem_set else [],
                                                  "student": list(students or []),
                                                  "grading_directory": str(course.grading_dir)}})
        app = ExportApp(config=config, log_level="ERROR")
        app.coursedir = CourseDirectory(parent=app)
        outcome = capture_log(app)
        if not outcome["success"]:
            raise RuntimeError(f"nbgrader export failed:\n{outcome.get('log', '')}{outcome.get('error', '')}")
        return dest.read_text()
