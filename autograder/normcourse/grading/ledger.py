"""The grading ledger: one record per (problem set, student) saying how grading ended, and why.

nbgrader's gradebook holds scores; it cannot say "this submission was never graded because the
kernel did not start" or "this grade was kept because a re-run disagreed". The ledger
(``grading/ledger.json``) does, so that every submission ends with either a full set of grades or a
recorded reason (the consistency check in :mod:`normcourse.grading.autograde` relies on it), and a
re-run after a crash knows what is done.

Only the orchestrating process writes it; every write replaces the file atomically (write a temporary
file, then ``os.replace``), so a crash leaves the previous complete version.

Record fields: ``status`` (``graded``, ``failed``, ``infrastructure``, ``conflict``), ``reason``,
``fingerprint`` (SHA-256 of the submission's files), ``score``/``max_score`` (autograded cells only),
``flags`` (reasons to review), ``parts`` (grade_id -> score, max, re-check verdict, reason),
``attempts``, ``updated``. ``events`` is an append-only list of notable actions (overwrites, conflicts).
``seeded`` maps each problem set to the version (source fingerprint) recorded in the gradebook.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["Ledger"]


class Ledger:
    """A JSON ledger at ``path`` (created on first write)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.exists():
            data = json.loads(self.path.read_text())
        else:
            data = {"version": 1, "records": {}, "events": []}
        self.records: dict = data["records"]
        self.events: list = data["events"]
        self.seeded: dict = data.get("seeded", {})  # problem set -> source version in the gradebook

    @staticmethod
    def key(problem_set: str, student: str) -> str:
        return f"{problem_set}/{student}"

    def get(self, problem_set: str, student: str) -> dict | None:
        return self.records.get(self.key(problem_set, student))

    def put(self, problem_set: str, student: str, record: dict) -> None:
        record = dict(record, updated=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self.records[self.key(problem_set, student)] = record
        self.save()

    def log(self, event: str, **details) -> None:
        self.events.append(dict(details, event=event,
                                time=datetime.now(timezone.utc).isoformat(timespec="seconds")))
        self.save()

    def of(self, problem_set: str) -> dict[str, dict]:
        prefix = problem_set + "/"
        return {k[len(prefix):]: v for k, v in self.records.items() if k.startswith(prefix)}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"version": 1, "records": self.records, "events": self.events,
                                   "seeded": self.seeded}, indent=1, sort_keys=True))
        os.replace(tmp, self.path)
