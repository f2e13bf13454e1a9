"""The learner's self-check: ``normcourse check ps01_scopes.ipynb``, anywhere, no gradebook.

What it does is what grading does, minus the gradebook:

1. identifies the problem set (notebook metadata ``normcourse.problem_set``, else the file name,
   else the grade_ids of its cells matched against the registry of Parts);
2. runs a copy of the notebook top to bottom in a fresh kernel in the grader's sandbox
   (:mod:`normcourse.grading.host`; where this machine cannot start one, in an ordinary process, and
   says so) with the same limits, time budget and ``NBGRADER_EXECUTION=autograde``, and scores each
   autograded test cell the way nbgrader does (``nbgrader.utils.determine_grade``, with stderr-only
   output not counted, as in our grading pipeline);
3. runs every Part of the problem set out of kernel (:mod:`normcourse.grading.recheck`): the same
   comparisons against the reference that the grader runs, under the same forbidden-shortcut rules
   (the grader's cases use a course-private salt; these use the notebook's own seeds).

Each cell is scored by the grader's rule (:func:`normcourse.grading.worker.score_with_recheck`).
Hand-graded answers are listed, never scored. The learner's notebook file is not modified.

Example::

    report = self_check("exercises/ps01_scopes/ps01_scopes.ipynb")
    print(report.text())        # per part: PASS/FAIL, points, the reason; then the total
    report.all_passed
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .limits import Limits

__all__ = ["PartReport", "SelfCheckReport", "identify_problem_set", "self_check"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class PartReport:
    grade_id: str
    kind: str  # "autograded" or "manual"
    points: float
    max_points: float
    passed: bool
    message: str = ""


@dataclass
class SelfCheckReport:
    notebook: str
    problem_set: str | None
    parts: list[PartReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def autograded(self) -> list[PartReport]:
        return [p for p in self.parts if p.kind == "autograded"]

    @property
    def score(self) -> float:
        return sum(p.points for p in self.autograded)

    @property
    def max_score(self) -> float:
        return sum(p.max_points for p in self.autograded)

    @property
    def all_passed(self) -> bool:
        return bool(self.autograded) and all(p.passed for p in self.autograded)

    def to_json(self) -> dict:
        return {"notebook": self.notebook, "problem_set": self.problem_set, "score": self.score,
                "max_score": self.max_score, "all_passed": self.all_passed, "notes": self.notes,
                "seconds": round(self.seconds, 2), "parts": [vars(p) for p in self.parts]}

    def text(self) -> str:
        lines = [f"Self-check of {self.notebook} (problem set {self.problem_set or 'unknown'})"]
        width = max([len(p.grade_id) for p in self.parts] + [8])
        for p in self.parts:
            if p.kind == "manual":
                lines.append(f"  ----  {p.grade_id:<{width}}  graded by a person ({p.max_points:g} points)")
                continue
            status = "PASS" if p.passed else "FAIL"
            lines.append(f"  {status}  {p.grade_id:<{width}}  {p.points:g}/{p.max_points:g}"
                         + (f"  {p.message}" if not p.passed and p.message else ""))
        manual = sum(p.max_points for p in self.parts if p.kind == "manual")
        lines.append(f"Total: {self.score:g}/{self.max_score:g} autograded points"
                     + (f" (plus {manual:g} hand-graded points, not checked here)" if manual else ""))
        lines += [f"Note: {n}" for n in self.notes]
        return "\n".join(lines)


def identify_problem_set(nb, path: str | os.PathLike) -> str | None:
    """The problem set a notebook belongs to, or None."""
    from .parts import parts_of, problem_sets

    declared = nb.metadata.get("normcourse", {}).get("problem_set")
    known = problem_sets()
    if declared in known:
        return declared
    stem = Path(path).stem
    for name in known:
        if stem == name or stem.startswith(name):
            return name
    ids = {c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells}
    overlap = {name: len(ids & {p.grade_id for p in parts_of(name)}) for name in known}
    best = max(overlap, key=overlap.get, default=None)
    return best if best and overlap[best] else None


def _error_text(cell) -> str:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            ename, evalue = output.get("ename", "Error"), output.get("evalue", "")
            text = f"{ename}: {evalue}" if evalue else ename
            return _ANSI.sub("", text)[:500]
    return "the test did not pass"


def _execute(nb, host, timeout: int, limits: Limits) -> None:
    """Run ``nb`` in a kernel of ``host``'s sandbox, as the grader does (time budget, output cap)."""
    from traitlets.config import Config

    from .kernel_manager import GRADING_EXECUTION
    from .preprocessors import SandboxedExecute
    from .worker import _jupyter_path

    with tempfile.TemporaryDirectory(prefix="normcourse-check-") as jupyter_dir, _jupyter_path(Path(jupyter_dir)):
        kernel = host.kernelspec(Path(jupyter_dir))
        executor = SandboxedExecute(config=Config(host.kernel_manager_config()), timeout=timeout, kernel_name=kernel,
                                    interrupt_on_timeout=True, notebook_seconds=limits.notebook_seconds,
                                    output_kb=limits.output_kb, **GRADING_EXECUTION)
        executor.preprocess(nb, {"metadata": {"path": "."}})


def self_check(path: str | os.PathLike, *, timeout: int = 60, recheck_timeout: float = 300.0,
               limits: Limits = Limits(), sandbox: bool | None = None) -> SelfCheckReport:
    """Check one notebook as the grader would; see the module docstring.

    Args:
        path: the learner's notebook.
        timeout: seconds per cell (kernel) and per call (re-check).
        recheck_timeout: wall-clock seconds for the whole out-of-kernel re-check.
        limits: caps of the kernel and the re-check process.
        sandbox: run in the sandbox (None: if this machine can; the rules apply either way).
    """
    import nbformat
    from nbgrader import utils

    from .host import Host, IMPORTS_TORCH
    from .preprocessors import demote_stderr
    from .recheck import recheck_notebook
    from .result import PartGrade
    from .sandbox import availability
    from .worker import backed_ids, score_with_recheck

    started = time.monotonic()
    path = Path(path)
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:
        raise ValueError(f"{path} is not a valid notebook: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    report = SelfCheckReport(str(path), identify_problem_set(nb, path))
    if report.problem_set is None:
        report.notes.append("could not tell which problem set this is: only the tests in the notebook ran, "
                            "not the grader's comparisons with the reference")
    if sandbox is None:
        sandbox, why = availability()
        if not sandbox:
            report.notes.append(f"ran without the grader's sandbox ({why}); the rules still apply")
    source_nb = nbformat.from_dict(nb)  # unexecuted copy for the re-check
    torch = any(c.cell_type == "code" and IMPORTS_TORCH.search(c.source) for c in nb.cells)
    with Host(report.problem_set or "unknown", sandbox=sandbox, limits=limits, torch=torch) as host:
        host.reset(path.parent)
        _execute(nb, host, timeout, limits)
        host.reset(path.parent)
        grades = []
        for cell in nb.cells:
            if not utils.is_grade(cell):
                continue
            points = float(cell.metadata["nbgrader"].get("points", 0))
            grade_id = cell.metadata["nbgrader"]["grade_id"]
            if utils.is_solution(cell) or cell.cell_type != "code":
                grades.append(PartGrade(path.stem, grade_id, "manual", points))
                continue
            demote_stderr(cell)
            score, _ = utils.determine_grade(cell)
            in_kernel = 0.0 if score is None else min(float(score), points)
            grades.append(PartGrade(path.stem, grade_id, "autograded", points, in_kernel, in_kernel))
        check = None
        autograded = [g for g in grades if g.kind == "autograded"]
        ids = sorted(backed_ids(report.problem_set) & {g.grade_id for g in autograded}) if report.problem_set else []
        if ids:
            check = recheck_notebook(source_nb, report.problem_set, host, call_timeout=timeout,
                                     timeout=recheck_timeout, grade_ids=ids)
        score_with_recheck(path.stem, nb, autograded, check)
    cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in nb.cells}
    for grade in grades:
        if grade.kind == "manual":
            report.parts.append(PartReport(grade.grade_id, "manual", 0.0, grade.max_score, True))
            continue
        passed = grade.score >= grade.max_score
        message = "" if passed else (grade.reason if grade.recheck is False or not grade.ran
                                     else _error_text(cells[grade.grade_id]))
        report.parts.append(PartReport(grade.grade_id, "autograded", grade.score, grade.max_score, passed, message))
    if any(not g.ran for g in autograded):
        report.notes.append("some test cells did not run in your notebook (time budget, or the kernel died); "
                            "they were scored by the comparison with the reference alone")
    report.seconds = time.monotonic() - started
    return report
