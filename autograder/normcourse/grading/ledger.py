"""The grading ledger: one record per (problem set, student) saying how grading ended, and why.

nbgrader's gradebook holds scores; it cannot say "this submission was never graded because the
kernel did not start", "this grade was kept because a re-run disagreed" or "this submission was
graded without the sandbox". The ledger (``<grading dir>/ledger.json``) does, so that every submission
ends with either a full set of grades or a recorded reason, a re-run after a crash knows what is
done, and :func:`consistency_problems` can check that the gradebook and the ledger agree.

Only the orchestrating process writes it (it holds an exclusive lock on ``ledger.lock`` for the
whole batch, so two batches cannot interleave); every write replaces the file atomically (write a
temporary file, then ``os.replace``), so a crash leaves the previous complete version.

A record: ``status`` (``graded``, ``failed``, ``conflict``, ``infrastructure``, ``refused``),
``reason``, ``attempts``, ``updated``, and ``result`` (the worker's
:class:`~normcourse.grading.result.GradeResult` as JSON, without the notebook bytes). ``events`` is an
append-only list of notable actions (retries, overwrites, conflicts); ``seeded`` maps each problem set
to the source version recorded in the gradebook.
"""

from __future__ import annotations

import fcntl
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from .result import GradeResult

__all__ = ["Ledger", "ledger_path", "consistency_problems", "TOLERANCE"]

#: Two scores closer than this are the same score.
TOLERANCE = 1e-9


def ledger_path(course) -> Path:
    return course.grading_dir / "ledger.json"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Ledger:
    """The JSON ledger of ``course`` (created on first write)."""

    def __init__(self, course):
        self.path = ledger_path(course)
        data = json.loads(self.path.read_text()) if self.path.exists() else {}
        if data and data.get("version") != 2:
            data = {}  # an earlier edition's ledger: start afresh (its gradebook grades stay)
        self.records: dict = data.get("records", {})
        self.events: list = data.get("events", [])
        self.seeded: dict = data.get("seeded", {})
        self._lock = None

    # -- the batch lock ------------------------------------------------------------------------------
    def lock(self) -> "Ledger":
        """Hold the course's grading lock (raises BlockingIOError if another batch holds it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path.with_name("ledger.lock"), "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise BlockingIOError(f"another autograde batch is running on this course ({self.path.parent}); "
                                  f"wait for it to finish") from None
        return self

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- records -------------------------------------------------------------------------------------
    @staticmethod
    def key(problem_set: str, student: str) -> str:
        return f"{problem_set}/{student}"

    def get(self, problem_set: str, student: str) -> dict | None:
        return self.records.get(self.key(problem_set, student))

    def result(self, problem_set: str, student: str) -> GradeResult | None:
        record = self.get(problem_set, student)
        return GradeResult.from_json(record["result"]) if record and record.get("result") else None

    def put(self, result: GradeResult, status: str, reason: str, attempts: int) -> dict:
        record = {"status": status, "reason": reason, "attempts": attempts, "updated": _now(),
                  "result": result.to_json(with_files=False)}
        self.records[self.key(result.problem_set, result.student)] = record
        self.save()
        return record

    def log(self, event: str, **details) -> None:
        self.events.append(dict(details, event=event, time=_now()))
        self.save()

    def of(self, problem_set: str) -> dict[str, dict]:
        prefix = problem_set + "/"
        return {k[len(prefix):]: v for k, v in self.records.items() if k.startswith(prefix)}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"version": 2, "records": self.records, "events": self.events,
                                   "seeded": self.seeded}, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def consistency_problems(course, problem_set: str, students: list[str]) -> list[str]:
    """Every submission must have a ledger record, and graded/failed ones a full, matching set of grades
    in the gradebook (and an installed autograded notebook if graded)."""
    from nbgrader.api import Gradebook, MissingEntry

    ledger = Ledger(course)
    problems = []
    with Gradebook(course.db_url) as gb:
        for student in students:
            record = ledger.get(problem_set, student)
            if record is None:
                problems.append(f"{student}: no ledger record (never graded)")
                continue
            if record["status"] not in ("graded", "failed"):
                if not record.get("reason"):
                    problems.append(f"{student}: status {record['status']} without a reason")
                continue
            result = GradeResult.from_json(record["result"])
            expected = {(p.notebook, p.grade_id): p for p in result.parts}
            try:
                submission = gb.find_submission(problem_set, student)
            except MissingEntry:
                problems.append(f"{student}: ledger says {record['status']} but the gradebook has no submission")
                continue
            for nb in submission.notebooks:
                for grade in nb.grades:
                    part = expected.get((nb.name, grade.name))
                    key = f"{nb.name}/{grade.name}"
                    if part is None or part.kind != "autograded":
                        continue
                    if grade.auto_score is None:
                        problems.append(f"{student}: {key} has no autograde score")
                    elif abs(grade.auto_score - (part.score or 0.0)) > TOLERANCE:
                        problems.append(f"{student}: {key} is {grade.auto_score} in the gradebook, "
                                        f"{part.score} in the ledger")
            if record["status"] == "graded" and not course.autograded_dir(problem_set, student).is_dir():
                problems.append(f"{student}: graded but the autograded notebook is missing")
    return problems
