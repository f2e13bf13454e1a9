"""Grades as CSV, read with nbgrader's ``Gradebook`` API and written with the ``csv`` module.

``nbgrader export`` joins fields with commas without quoting, so a name like "Doe, Jane" shifts every
column after it. Here every field goes through :mod:`csv` (minimal quoting), and the ledger's verdict
is added: ``status`` (graded / failed / conflict / infrastructure / not graded) and ``flags`` (reasons to
review), so a submission that failed to grade can never pass for a zero that was earned.

Columns: assignment, duedate, timestamp, student_id, last_name, first_name, email, raw_score,
late_submission_penalty, score, max_score, needs_manual_grade, status, reason, flags.
"""

from __future__ import annotations

import csv
import io

__all__ = ["COLUMNS", "export_rows", "export_csv"]

COLUMNS = ["assignment", "duedate", "timestamp", "student_id", "last_name", "first_name", "email", "raw_score",
           "late_submission_penalty", "score", "max_score", "needs_manual_grade", "status", "reason", "flags"]


def export_rows(course, problem_set: str | None = None) -> list[dict]:
    from nbgrader.api import Gradebook, MissingEntry

    from .ledger import Ledger
    from .result import GradeResult

    ledger = Ledger(course)
    rows = []
    with Gradebook(course.db_url) as gb:
        assignments = [gb.find_assignment(problem_set)] if problem_set else gb.assignments
        for assignment in assignments:
            for student in gb.students:
                record = ledger.get(assignment.name, student.id) or {}
                try:
                    submission = gb.find_submission(assignment.name, student.id)
                except MissingEntry:
                    submission = None
                if submission is None and not record:
                    continue
                row = {"assignment": assignment.name, "duedate": assignment.duedate or "",
                       "student_id": student.id, "last_name": student.last_name or "",
                       "first_name": student.first_name or "", "email": student.email or "",
                       "max_score": assignment.max_score,
                       "status": record.get("status", "not graded"), "reason": record.get("reason", ""),
                       "flags": "; ".join(GradeResult.from_json(record["result"]).flags if record else [])}
                if submission is not None:
                    penalty = submission.late_submission_penalty or 0.0
                    row.update(timestamp=submission.timestamp or "", raw_score=submission.score,
                               late_submission_penalty=penalty, score=submission.score - penalty,
                               needs_manual_grade=bool(submission.needs_manual_grade))
                rows.append(row)
    return rows


def export_csv(course, problem_set: str | None = None, path=None) -> str:
    """Write (to ``path`` if given) and return the CSV text."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    for row in export_rows(course, problem_set):
        writer.writerow(row)
    text = buffer.getvalue()
    if path is not None:
        with open(path, "w", newline="") as f:
            f.write(text)
    return text
