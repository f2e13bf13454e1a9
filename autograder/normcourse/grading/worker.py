"""Grade one submission in an isolated copy of the course: ``python -m normcourse.grading.worker JOB.json``
(or ``--serve``: job paths on stdin, one per line, for a long-lived worker).

The worker never touches the course's gradebook. It builds a private course in its workspace
(the problem set's source, the one submission, a copy of a *template* gradebook that holds only the
assignment), runs nbgrader's own autograde there through ``NbGraderAPI.autograde``, reads the grades
back with nbgrader's ``Gradebook``, applies the out-of-kernel re-check
(:mod:`normcourse.grading.sandbox`), and writes one JSON result. The orchestrator
(:mod:`normcourse.grading.autograde`) merges that result into the course gradebook only if the
worker succeeded, so a crashed or timed-out worker cannot zero anyone's grades.

Outcomes (``result["status"]``):

- ``"graded"``: every autograded cell has a score; re-check verdicts and flags are attached;
- ``"failed"``: the submission itself cannot be graded (not a notebook, the kernel died in learner
  code, no notebook at all); the orchestrator records zeros and the reason;
- ``"infrastructure"``: something outside the submission went wrong (the kernel did not start); the
  orchestrator retries and never records a grade from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

__all__ = ["grade_submission", "classify_failure", "fingerprint", "suspicious_code", "run_job",
           "kernel_preload", "BASE_KERNEL_PRELOAD"]

_ORIGINAL_JUPYTER_PATH = os.environ.get("JUPYTER_PATH", "")

#: What every grading kernel imports (ipykernel itself, numpy, the modules the test cells use); a
#: serving worker's kernel zygote imports them once (see :mod:`normcourse.grading.kernel_zygote`).
BASE_KERNEL_PRELOAD = ["numpy", "ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell",
                       "ipykernel.debugger", "IPython.core.interactiveshell", "normcourse.reference",
                       "normcourse.grading.compare", "normcourse.grading.parts"]


class _Zygote:
    """This worker's kernel zygote (a ``kernel_zygote serve`` child), restarted if it has died."""

    def __init__(self, modules: list[str], limit_args: list[str]):
        self.modules, self.limit_args = modules, limit_args
        self.folder = tempfile.mkdtemp(prefix="nczyg-")  # short: Unix socket paths are limited to ~100 bytes
        self.socket = os.path.join(self.folder, "kernels.sock")
        self.process: subprocess.Popen | None = None

    def ensure_running(self) -> str:
        if self.process is None or self.process.poll() is not None:
            env = dict(os.environ, MALLOC_ARENA_MAX="2")  # as the kernelspec sets it for fresh kernels
            self.process = subprocess.Popen([sys.executable, "-m", "normcourse.grading.kernel_zygote", "serve",
                                             self.socket, *self.limit_args, *self.modules],
                                            stdin=subprocess.PIPE, env=env)
        return self.socket

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()  # EOF: it kills any kernel left and exits
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


_ZYGOTE: _Zygote | None = None


def uses_torch(problem_set_source: Path) -> bool:
    """Whether a code cell of the problem set's source notebooks imports torch."""
    import nbformat

    from .sandbox import IMPORTS_TORCH

    for path in Path(problem_set_source).glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        if any(c.cell_type == "code" and IMPORTS_TORCH.search(c.source) for c in nb.cells):
            return True
    return False


def kernel_preload(problem_set_source: Path, problem_set: str) -> list[str]:
    """Modules worth importing once per worker for this problem set's kernels: the base set, the
    problem set's hidden-test module, and torch (about 1.5 s) only if its notebooks import torch."""
    modules = list(BASE_KERNEL_PRELOAD) + [f"normcourse.problems.{problem_set}"]
    if uses_torch(problem_set_source):
        modules.append("torch")
    return modules

#: nbgrader/nbclient log text meaning the kernel never became usable: not the learner's fault.
INFRASTRUCTURE_PATTERNS = [
    r"Kernel didn't respond in \d+ seconds",
    r"Timeout waiting for kernel_info",
    r"Kernel died before replying to kernel_info",
    r"zmq\.error", r"ZMQError", r"Address already in use",
    r"database is locked", r"No kernel named",
    r"Too many open files",
]

#: Learner-code constructs that can interfere with grading; a hit flags the submission for review.
SUSPICIOUS_CODE = {
    r"\bget_ipython\s*\(": "uses get_ipython()",
    r"showtraceback|excepthook|InteractiveShell": "touches error display",
    r"NBGRADER_EXECUTION": "branches on NBGRADER_EXECUTION",
    r"\bos\s*\.\s*_exit\b|\bos\s*\.\s*kill\b": "ends its own process",
    r"\bsys\s*\.\s*exit\b|\bexit\s*\(|\bquit\s*\(": "calls exit",
    r"\b(np|numpy)(\.testing)?\s*\.\s*(allclose|isclose|assert_\w+)\s*=": "rebinds a numpy comparison",
    r"\bsys\s*\.\s*modules\b|\bbuiltins\b|\bctypes\b|\bgc\s*\.\s*get_referrers\b": "reaches into the interpreter",
    r"normcourse\s*\.\s*grading": "imports the grading tools",
}


def fingerprint(folder: Path) -> str:
    """SHA-256 over the names and bytes of every file in a submission folder."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def suspicious_code(program: list[str]) -> list[str]:
    """Human-readable reasons to review learner code (static; evasion is possible, so never a verdict)."""
    text = "\n".join(program)
    return [reason for pattern, reason in SUSPICIOUS_CODE.items() if re.search(pattern, text)]


def classify_failure(log: str) -> str:
    """``"infrastructure"`` if the nbgrader log shows a kernel/database problem, else ``"failed"``."""
    return "infrastructure" if any(re.search(p, log) for p in INFRASTRUCTURE_PATTERNS) else "failed"


def _last_error(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Please see the" in line:  # nbgrader's generic closing line; the cause is above it
            continue
        if re.match(r"^[\w.]*(Error|Exception|Exit)\b", line) or "Error:" in line:
            return line[:300]
    return lines[-1][:300] if lines else "no log"


def _read_grades(db_url: str, problem_set: str, student: str) -> dict:
    """Per notebook: every grade cell's scores and whether a person must grade it."""
    from nbgrader.api import Gradebook

    notebooks = {}
    with Gradebook(db_url) as gb:
        submission = gb.find_submission(problem_set, student)
        for nb in submission.notebooks:
            grades = {}
            for grade in nb.grades:
                cell = grade.cell
                grades[grade.name] = {
                    "auto_score": grade.auto_score, "max_score": grade.max_score,
                    "needs_manual_grade": bool(grade.needs_manual_grade),
                    "kind": "autograded" if cell.cell_type == "code" and not _is_solution_cell(gb, nb, grade.name)
                    else "manual",
                }
            comments = {c.name: c.auto_comment for c in nb.comments}
            notebooks[nb.name] = {"grades": grades, "comments": comments,
                                  "late_penalty": nb.late_submission_penalty}
        timestamp = submission.timestamp.isoformat() if submission.timestamp else None
    return {"notebooks": notebooks, "timestamp": timestamp}


def _is_solution_cell(gb, nb, grade_id: str) -> bool:
    from nbgrader.api import MissingEntry
    try:
        gb.find_solution_cell(grade_id, nb.name, nb.assignment.name)
        return True
    except MissingEntry:
        return False


def _annotate(cell, text: str) -> None:
    """Append a visible note (stdout) to a test cell of the autograded copy, shown in feedback."""
    from nbformat.notebooknode import NotebookNode
    cell.setdefault("outputs", []).append(NotebookNode(output_type="stream", name="stdout", text=text))


def grade_submission(job: dict) -> dict:
    """Autograde ``job["student"]``'s ``job["problem_set"]`` in ``job["workspace"]``; return the result."""
    import nbformat

    from .course import Course, ensure_tool_path
    from .kernel_manager import GRADING_EXECUTION
    from .limits import Limits, write_grading_kernelspec
    from .preprocessors import AUTOGRADE_PREPROCESSORS
    from nbgrader import utils

    from .sandbox import recheck_notebook

    started = time.monotonic()
    problem_set, student = job["problem_set"], job["student"]
    course = Course(Path(job["course_root"]), Path(job["course_work"]) if job.get("course_work") else None)
    workspace = Path(job["workspace"])
    if workspace.exists():
        shutil.rmtree(workspace)
    (workspace / "solutions").mkdir(parents=True)
    shutil.copytree(course.source_dir(problem_set), workspace / "solutions" / problem_set)
    submitted = workspace / "submitted" / student / problem_set
    shutil.copytree(job["submission_dir"], submitted)
    shutil.copy2(job["template_db"], workspace / "gradebook.db")
    result = {"student": student, "problem_set": problem_set, "fingerprint": fingerprint(submitted),
              "flags": [], "recheck": {}, "notebooks": {}}

    # A submission that is not a notebook never reaches nbgrader (which would stop with a traceback).
    expected = course.notebooks(problem_set)
    for name in expected:
        path = submitted / f"{name}.ipynb"
        if not path.exists():
            continue
        try:
            nbformat.validate(nbformat.read(path, as_version=4))
        except Exception as exc:
            result.update(status="failed", reason=f"{name}.ipynb is not a valid notebook "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})")
            return result
    if not any((submitted / f"{n}.ipynb").exists() for n in expected):
        result.update(status="failed", reason=f"no notebook named {', '.join(n + '.ipynb' for n in expected)}")
        return result

    limits = Limits(**job.get("limits", {}))
    jupyter_dir = workspace / "jupyter"
    kernel = write_grading_kernelspec(jupyter_dir, limits, zygote=_ZYGOTE.ensure_running() if _ZYGOTE else None)
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(jupyter_dir)] + [
        p for p in _ORIGINAL_JUPYTER_PATH.split(os.pathsep) if p])
    ensure_tool_path()
    overrides = {
        "CourseDirectory": {"root": str(workspace), "source_directory": "solutions",
                            "submitted_directory": "submitted", "autograded_directory": "autograded",
                            "feedback_directory": "feedback",
                            "db_url": f"sqlite:///{workspace / 'gradebook.db'}"},
        "Execute": {"timeout": int(job["cell_timeout"]), "kernel_name": kernel,
                    "interrupt_on_timeout": True, "startup_timeout": int(job.get("startup_timeout", 60)),
                    **GRADING_EXECUTION},
        "Autograde": {"autograde_preprocessors": AUTOGRADE_PREPROCESSORS},
    }
    api = course.api(overrides)
    outcome = api.autograde(problem_set, student, force=True, create=True)
    log = outcome.get("log", "") + "\n" + (outcome.get("error") or "")
    result["log_tail"] = log[-4000:]
    if not outcome.get("success"):
        kind = classify_failure(log)
        why = _last_error(log)
        if kind == "failed" and ("DeadKernelError" in log or "Kernel died" in log):
            why = "the kernel died while running the notebook (does the code exit the process or exhaust memory?)"
        result.update(status=kind, reason=f"nbgrader autograde failed: {why}")
        return result

    grades = _read_grades(overrides["CourseDirectory"]["db_url"], problem_set, student)
    result["notebooks"], result["timestamp"] = grades["notebooks"], grades["timestamp"]

    # The out-of-kernel re-check: a Part's cell keeps its points only if both checks pass.
    from .parts import parts_of
    try:
        part_ids = {p.grade_id for p in parts_of(problem_set)}
    except KeyError:
        part_ids = set()
    autograded = workspace / "autograded" / student / problem_set
    for name, entry in result["notebooks"].items():
        nb_path = autograded / f"{name}.ipynb"
        nb = nbformat.read(nb_path, as_version=4)
        written = [c.source for c in nb.cells if c.cell_type == "code" and utils.is_solution(c)]
        result["flags"] += [f"{name}: {r}" for r in suspicious_code(written)]  # the learner's cells only
        ids_here = part_ids & set(entry["grades"])
        if not ids_here:
            continue
        check = recheck_notebook(nb, problem_set, workdir=autograded, timeout=job["recheck_timeout"],
                                 call_timeout=job["cell_timeout"], limits=limits, grade_ids=sorted(ids_here))
        result["recheck"][name] = check.to_json()
        cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in nb.cells}
        for grade_id, verdict in check.parts.items():
            grade = entry["grades"][grade_id]
            grade["recheck_passed"] = verdict.passed
            if not verdict.passed and grade["auto_score"]:
                grade["in_kernel_score"], grade["auto_score"] = grade["auto_score"], 0.0
                grade["reason"] = f"out-of-kernel re-check failed: {verdict.message}"
            if grade_id in cells:
                _annotate(cells[grade_id], ("Re-check outside your kernel: passed\n" if verdict.passed else
                                            f"Re-check outside your kernel: FAILED: {verdict.message}\n"))
        if check.tampering:
            reason = "learner code rebinds grading tools: " + ", ".join(check.tampering)
            result["flags"].append(f"{name}: {reason}")
            for grade_id, grade in entry["grades"].items():
                if grade["kind"] == "autograded" and grade["auto_score"]:
                    grade["in_kernel_score"], grade["auto_score"] = grade["auto_score"], 0.0
                    grade["reason"] = reason
                if grade["kind"] == "autograded" and grade_id in cells:
                    _annotate(cells[grade_id], f"Not counted: {reason}\n")
        nbformat.write(nb, nb_path)

    result.update(status="graded", reason="", autograded_dir=str(autograded),
                  seconds=round(time.monotonic() - started, 2))
    return result


def run_job(job_path: Path) -> None:
    """Grade the job at ``job_path`` and write its result file (atomically)."""
    job = json.loads(Path(job_path).read_text())
    try:
        result = grade_submission(job)
    except Exception:
        result = {"status": "infrastructure", "reason": "worker crashed: " + traceback.format_exc()[-1500:],
                  "student": job.get("student"), "problem_set": job.get("problem_set")}
    out = Path(job["result_path"])
    out.with_suffix(".tmp").write_text(json.dumps(result, indent=1, default=str))
    os.replace(out.with_suffix(".tmp"), out)


def _warm_up(torch: bool) -> None:
    """Pay once per worker, before the first job arrives (the orchestrator seeds the gradebooks
    meanwhile): import nbgrader's API and the preprocessors, and start the re-check fork server (its
    preload of numpy and the course package, plus torch if the problem set uses it). Nothing here
    touches a course; a failure is left for the first job to meet and report."""
    try:
        import multiprocessing.forkserver

        import nbformat  # noqa: F401
        from nbgrader.api import Gradebook  # noqa: F401
        from nbgrader.apps import NbGraderAPI  # noqa: F401

        from . import preprocessors, sandbox  # noqa: F401
        sandbox._forkserver(torch=torch)
        multiprocessing.forkserver.ensure_running()
    except Exception:
        pass


def main(argv: list[str] | None = None) -> int:
    """``worker JOB.json`` grades one job; ``worker --serve [--memory-mb N --cpu-seconds N --file-mb N]
    [MODULE ...]`` grades the job paths read from stdin, one per line, until stdin closes: a long-lived
    worker pays for importing nbgrader and the Parts once, and forks its kernels from a zygote that has
    imported ``MODULE ...`` and is capped by those limits (so no kernel can exceed them)."""
    global _ZYGOTE
    from .startup import skip_unused_format_checkers
    skip_unused_format_checkers()
    args = argv if argv is not None else sys.argv[1:]
    if args and args[0] == "--serve":
        from .limits import Limits
        limits, modules = Limits.from_args(args[1:])
        _ZYGOTE = _Zygote(modules, (limits or Limits()).to_args())
        _ZYGOTE.ensure_running()  # imports its modules while this worker warms up
        try:
            _warm_up(torch="torch" in modules)
            for line in sys.stdin:
                if line.strip():
                    run_job(Path(line.strip()))
        finally:
            _ZYGOTE.close()
        return 0
    run_job(Path(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
