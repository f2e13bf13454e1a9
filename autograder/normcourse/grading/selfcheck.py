"""The learner's self-check: ``normcourse check ps01_scopes.ipynb``, anywhere, no gradebook.

What it does is what grading does, minus the gradebook:

1. identifies the problem set (notebook metadata ``normcourse.problem_set``, else the file name,
   else the grade_ids of its cells matched against the registry of Parts);
2. runs a copy of the notebook top to bottom in a fresh, resource-limited kernel
   (:mod:`normcourse.grading.limits`) with a per-cell time limit and ``NBGRADER_EXECUTION=autograde``
   (so code sees the same environment as when graded), and scores each autograded test cell the way
   nbgrader does (``nbgrader.utils.determine_grade``, with stderr-only output not counted, as in our
   grading pipeline);
3. runs every Part of the problem set out of kernel (:mod:`normcourse.grading.sandbox`): the same
   hidden-style comparisons against the reference that the grader runs, on the same seeded cases.

A test cell earns its points only if its in-kernel test passes and, when a Part backs it, the Part's
comparison passes too. Hand-graded answers are listed, never scored. The learner's notebook file is
not modified.

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


def _execute(nb, workdir: Path, timeout: int, limits: Limits) -> None:
    from nbclient import NotebookClient
    from nbgrader.utils import setenv

    from .kernel_manager import GRADING_EXECUTION
    from .limits import write_grading_kernelspec

    with tempfile.TemporaryDirectory(prefix="normcourse-check-") as jupyter_dir:
        kernel = write_grading_kernelspec(Path(jupyter_dir), limits)
        path = os.pathsep.join([jupyter_dir] + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p])
        with setenv(JUPYTER_PATH=path, NBGRADER_EXECUTION="autograde"):
            client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, allow_errors=True,
                                    interrupt_on_timeout=True, record_timing=False,
                                    **GRADING_EXECUTION,
                                    resources={"metadata": {"path": str(workdir)}})
            try:
                client.execute()
            except Exception as exc:  # the kernel died (os._exit, memory): later cells have no output
                nb.metadata.setdefault("normcourse", {})["execution_error"] = f"{type(exc).__name__}: {exc}"


def self_check(path: str | os.PathLike, *, timeout: int = 60, recheck_timeout: float = 300.0,
               limits: Limits = Limits()) -> SelfCheckReport:
    """Check one notebook as the grader would; see the module docstring.

    Args:
        path: the learner's notebook.
        timeout: seconds per cell (kernel) and per call (re-check).
        recheck_timeout: wall-clock seconds for the whole out-of-kernel re-check.
        limits: memory/CPU/file caps of the kernel and the re-check process.
    """
    import nbformat
    from nbgrader import utils

    from .preprocessors import demote_stderr
    from .sandbox import recheck_notebook

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
    source_nb = nbformat.from_dict(nb)  # unexecuted copy for the re-check
    _execute(nb, path.parent.resolve(), timeout, limits)
    if nb.metadata.get("normcourse", {}).get("execution_error"):
        report.notes.append("the kernel stopped before the end: "
                            + nb.metadata["normcourse"]["execution_error"][:300])

    recheck = None
    if report.problem_set is not None:
        from .parts import parts_of
        ids = {c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells}
        part_ids = sorted(ids & {p.grade_id for p in parts_of(report.problem_set)})
        if part_ids:
            recheck = recheck_notebook(source_nb, report.problem_set, workdir=path.parent, timeout=recheck_timeout,
                                       call_timeout=timeout, limits=limits, grade_ids=part_ids)
            if recheck.tampering:
                report.notes.append("your code rebinds tools the tests rely on ("
                                    + ", ".join(recheck.tampering) + "); the grader gives such a notebook "
                                    "no autograded points")

    for cell in nb.cells:
        if not utils.is_grade(cell):
            continue
        grade_id = cell.metadata["nbgrader"]["grade_id"]
        max_points = float(cell.metadata["nbgrader"].get("points", 0))
        if utils.is_solution(cell) or cell.cell_type != "code":
            report.parts.append(PartReport(grade_id, "manual", 0.0, max_points, True))
            continue
        demote_stderr(cell)
        score, _ = utils.determine_grade(cell)
        score = 0.0 if score is None else float(score)
        passed, message = score >= max_points, "" if score >= max_points else _error_text(cell)
        if cell.get("execution_count") is None:  # never ran (the kernel died earlier): no output is not a pass
            score, passed, message = 0.0, False, "not run: the kernel stopped before this cell"
        if recheck is not None and grade_id in recheck.parts and not recheck.parts[grade_id].passed:
            extra = "comparison with the reference: " + recheck.parts[grade_id].message
            score, passed, message = 0.0, False, (message + "; " if message else "") + extra
        if recheck is not None and recheck.tampering:
            score, passed, message = 0.0, False, "tools the tests rely on were rebound: " + ", ".join(recheck.tampering)
        report.parts.append(PartReport(grade_id, "autograded", score, max_points, passed, message))
    report.seconds = time.monotonic() - started
    return report
