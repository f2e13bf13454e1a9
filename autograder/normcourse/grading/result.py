"""The one typed record of grading: what a worker was asked (:class:`GradeTask`) and what it found
(:class:`GradeResult`, with a :class:`PartGrade` per graded cell).

Every stage uses these: the worker builds a result, the orchestrator merges it into nbgrader's
gradebook, the ledger stores it, export and report read it. Both travel between processes and
machines as JSON (:meth:`GradeResult.to_json` / :meth:`GradeResult.from_json`) or pickle (Dask).

Statuses:

- ``graded``: every autograded cell has a score;
- ``failed``: the submission itself cannot be graded (not a notebook, no notebook); it scores 0
  with the reason recorded;
- ``infrastructure``: something outside the submission went wrong (a kernel did not start, a worker
  died); retried, never written as a grade;
- ``refused``: the worker's course package or problem-set version differs from the orchestrator's;
  it did not grade with other tests (retried elsewhere, never written as a grade).
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field, fields

__all__ = ["PartGrade", "GradeResult", "GradeTask", "STATUSES"]

STATUSES = ("graded", "failed", "infrastructure", "refused")


@dataclass
class PartGrade:
    """One graded cell of one notebook.

    Attributes:
        notebook: notebook name (without .ipynb).
        grade_id: the cell's nbgrader grade_id.
        kind: ``"autograded"`` (a test cell) or ``"manual"`` (a written answer, graded by a person).
        max_score: the cell's points, from the source (never from the submission).
        score: the autograded score that counts (None for manual cells).
        in_kernel: nbgrader's score from the learner's kernel (None: not run, or manual).
        ran: whether the kernel ran the cell (False: time budget spent, or the kernel died before).
        recheck: the out-of-kernel re-check's verdict (None: no Part backs the cell).
        reason: why the score is what it is, when it is not full marks.
        broken_rules: forbidden-shortcut rules the cell's code broke.
    """

    notebook: str
    grade_id: str
    kind: str
    max_score: float
    score: float | None = None
    in_kernel: float | None = None
    ran: bool = True
    recheck: bool | None = None
    reason: str = ""
    broken_rules: list[str] = field(default_factory=list)


#: The flag every report and export shows for a submission graded with ``--no-sandbox``.
UNSANDBOXED_FLAG = "graded WITHOUT the sandbox (--no-sandbox)"


@dataclass
class GradeResult:
    """The outcome of grading one submission; see the module docstring."""

    problem_set: str
    student: str
    status: str
    reason: str = ""
    fingerprint: str = ""
    source_version: str = ""
    package_version: str = ""
    parts: list[PartGrade] = field(default_factory=list)
    comments: dict[str, dict[str, str]] = field(default_factory=dict)
    late_penalty: dict[str, float | None] = field(default_factory=dict)
    timestamp: str | None = None
    flags: list[str] = field(default_factory=list)
    sandboxed: bool = True
    worker: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return sum(p.score or 0.0 for p in self.parts if p.kind == "autograded")

    @property
    def max_score(self) -> float:
        return sum(p.max_score for p in self.parts if p.kind == "autograded")

    @property
    def review_flags(self) -> list[str]:
        """Why a person should look at this result: no sandbox first, then the grader's own flags."""
        return ([] if self.sandboxed else [UNSANDBOXED_FLAG]) + list(self.flags)

    def part(self, notebook: str, grade_id: str) -> PartGrade:
        return next(p for p in self.parts if p.notebook == notebook and p.grade_id == grade_id)

    def to_json(self, *, with_files: bool = True) -> dict:
        data = asdict(self)
        data["files"] = ({k: base64.b64encode(v).decode() for k, v in self.files.items()} if with_files else {})
        return data

    @classmethod
    def from_json(cls, data: dict) -> "GradeResult":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["parts"] = [PartGrade(**p) for p in data.get("parts", [])]
        values["files"] = {k: base64.b64decode(v) for k, v in data.get("files", {}).items()}
        if values.get("status") not in STATUSES:
            raise ValueError(f"unknown status {values.get('status')!r}")
        return cls(**values)


@dataclass
class GradeTask:
    """Everything a worker needs to grade one submission, anywhere (it carries bytes, not paths).

    Attributes:
        problem_set, student: what to grade.
        submission: the submission folder's files, ``{relative path: bytes}``.
        source: the problem set's source folder (``solutions/psNN``), ``{relative path: bytes}``.
        template_db: an SQLite gradebook holding only this problem set (nbgrader's own record of it).
        source_version, package_version: fingerprints the worker must match before grading.
        limits: :class:`~normcourse.grading.limits.Limits` as a dict.
        cell_timeout: seconds per cell in the kernel and per call in the re-check.
        recheck_timeout: seconds for the whole re-check.
        salt: the course-private seed of the re-check's cases.
        sandbox: whether learner code must run in the sandbox.
        attempt: 1 for the first try.
    """

    problem_set: str
    student: str
    submission: dict[str, bytes]
    source: dict[str, bytes]
    template_db: bytes
    source_version: str
    package_version: str
    limits: dict = field(default_factory=dict)
    cell_timeout: int = 60
    recheck_timeout: float = 300.0
    salt: int | None = None
    sandbox: bool = True
    attempt: int = 1
