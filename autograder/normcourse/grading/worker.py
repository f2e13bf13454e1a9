"""Grade one submission: ``grade(task) -> GradeResult``, in any process (a local worker, a Dask worker).

The worker never touches the course: a :class:`~normcourse.grading.result.GradeTask` carries the
submission's bytes, the problem set's source and a template gradebook holding only that problem set.
The worker

1. refuses the task if its own course package or the shipped source differ from the versions the
   orchestrator named (it would grade with other tests);
2. builds a private course in a scratch folder and runs nbgrader's own autograde there
   (``NbGraderAPI.autograde``), with the kernel in the sandbox (:class:`~normcourse.grading.host.Host`)
   and :class:`~normcourse.grading.preprocessors.SandboxedExecute` (time budget, output cap);
3. ends everything the kernel left running, then runs the out-of-kernel re-check
   (:mod:`normcourse.grading.recheck`) of every Part in a fresh sandboxed process;
4. scores each autograded cell: a cell the kernel ran keeps its in-kernel score only if the re-check
   confirms it; a cell the kernel never reached (time budget spent, kernel died) is scored by the
   re-check alone; manual cells are left to a person;
5. returns one :class:`~normcourse.grading.result.GradeResult` with the autograded notebook's bytes.

Only the orchestrator writes the course's gradebook and ledger. One submission at a time per
process (a lock enforces it: the sandbox host and ``JUPYTER_PATH`` are per process).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

from .limits import Limits
from .result import GradeResult, GradeTask, PartGrade

__all__ = ["grade", "fingerprint", "fingerprint_files", "read_files", "package_version", "suspicious_code",
           "classify_failure", "close_hosts", "score_with_recheck", "backed_ids"]

_LOCK = threading.Lock()
_HOSTS: dict = {}

#: nbgrader/nbclient log text meaning the kernel never became usable: not the learner's fault.
INFRASTRUCTURE_PATTERNS = [
    r"Kernel didn't respond in \d+ seconds", r"Timeout waiting for kernel_info",
    r"Kernel died before replying to kernel_info", r"zmq\.error", r"ZMQError", r"Address already in use",
    r"database is locked", r"No kernel named", r"Too many open files", r"no sandboxed kernel could be started",
]

#: Learner-code constructs worth a look from a person (static, evadable: a flag, never a verdict).
SUSPICIOUS_CODE = {
    r"\bget_ipython\s*\(": "uses get_ipython()",
    r"showtraceback|excepthook|InteractiveShell|input_transformers": "touches IPython's machinery",
    r"NBGRADER_EXECUTION": "branches on NBGRADER_EXECUTION",
    r"\bos\s*\.\s*_exit\b|\bos\s*\.\s*kill\b|\bsignal\s*\.\s*signal\b": "ends or signals processes",
    r"\bsys\s*\.\s*exit\b|\bexit\s*\(|\bquit\s*\(": "calls exit",
    r"\b(np|numpy)(\.testing)?\s*\.\s*(allclose|isclose|assert_\w+)\s*=": "rebinds a numpy comparison",
    r"\bsys\s*\.\s*modules\b|\bbuiltins\b|\bctypes\b|\bgc\s*\.\s*get_": "reaches into the interpreter",
    r"\bsubprocess\b|\bos\s*\.\s*(system|fork|popen|exec)": "starts processes",
    r"\bsocket\b|\burllib\b|\brequests\b|\bhttp\.client\b": "uses the network",
    r"^\s*(from|import)\s+normcourse\b": "imports course code",
    r"sqlite3|gradebook": "mentions the gradebook",
}


def read_files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` as ``{relative path: bytes}`` (what a task carries)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fingerprint_files(files: dict[str, bytes]) -> str:
    """SHA-256 over the names and bytes of a folder's files."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0")
        digest.update(files[name])
    return digest.hexdigest()


def fingerprint(folder: Path) -> str:
    """:func:`fingerprint_files` of a folder on disk."""
    return fingerprint_files(read_files(folder))


@functools.lru_cache(maxsize=1)
def package_version() -> str:
    """SHA-256 of this installed course package's source (the reference, the Parts, the grader)."""
    package = Path(__file__).resolve().parents[1]
    return fingerprint_files({str(p.relative_to(package)): p.read_bytes()
                              for p in package.rglob("*.py") if "__pycache__" not in p.parts})[:16]


def suspicious_code(program: list[str]) -> list[str]:
    text = "\n".join(program)
    return [reason for pattern, reason in SUSPICIOUS_CODE.items() if re.search(pattern, text, re.MULTILINE)]


def classify_failure(log: str) -> str:
    """``"infrastructure"`` if the nbgrader log shows a kernel/database problem, else ``"failed"``."""
    return "infrastructure" if any(re.search(p, log) for p in INFRASTRUCTURE_PATTERNS) else "failed"


def _last_error(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Please see the" in line:
            continue
        if re.match(r"^[\w.]*(Error|Exception|Exit)\b", line) or "Error:" in line:
            return line[:300]
    return lines[-1][:300] if lines else "no log"


def _host(problem_set: str, sandbox: bool, limits: Limits, torch: bool):
    """This process's sandbox host for the problem set (kept warm; one problem set at a time)."""
    from .host import Host

    key = (problem_set, sandbox, limits, torch)
    host = _HOSTS.get(key)
    if host is None:
        close_hosts()
        host = _HOSTS[key] = Host(problem_set, sandbox=sandbox, limits=limits, torch=torch)
    return host


def close_hosts() -> None:
    """Stop this process's sandboxes (a worker calls it when it is done)."""
    for host in _HOSTS.values():
        host.close()
    _HOSTS.clear()


def _write(files: dict[str, bytes], folder: Path) -> None:
    for name, data in files.items():
        path = (folder / name).resolve()
        if not str(path).startswith(str(folder.resolve()) + os.sep):
            raise ValueError(f"refusing a file outside the folder: {name!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def grade(task: GradeTask) -> GradeResult:
    """Grade one submission; see the module docstring. Never raises: every outcome is a result."""
    started = time.monotonic()
    result = GradeResult(task.problem_set, task.student, "infrastructure",
                         fingerprint=fingerprint_files(task.submission), source_version=task.source_version,
                         package_version=package_version(), sandboxed=task.sandbox,
                         worker=f"{socket.gethostname()}:{os.getpid()}")
    if task.package_version != package_version():
        result.status = "refused"
        result.reason = (f"this worker has course package {package_version()}, the orchestrator "
                         f"{task.package_version}: install the same version of normcourse on every worker")
        return result
    if fingerprint_files(task.source) != task.source_version:
        result.status, result.reason = "refused", "the problem set's source arrived damaged (fingerprint mismatch)"
        return result
    with _LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's own SQLAlchemy notice
        try:
            _grade(task, result)
        except Exception as exc:
            from .sandbox import SandboxUnavailable
            if isinstance(exc, SandboxUnavailable):
                result.status, result.reason = "refused", f"this worker cannot start the sandbox: {exc}"
            else:
                result.status = "infrastructure"
                result.reason = "worker error: " + traceback.format_exc()[-1500:]
    result.timings["total"] = round(time.monotonic() - started, 3)
    return result


def _grade(task: GradeTask, result: GradeResult) -> None:
    import nbformat

    from .course import Course
    from .host import IMPORTS_TORCH

    problem_set, student = task.problem_set, task.student
    # In memory where the machine has /dev/shm: nbgrader commits to its private gradebook once per cell,
    # and each commit is an fsync on disk.
    scratch = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="normcourse-grade-", dir=scratch) as tmp:
        workspace = Path(tmp)
        source = workspace / "solutions" / problem_set
        submitted = workspace / "submitted" / student / problem_set
        _write(task.source, source)
        _write(task.submission, submitted)
        (workspace / "gradebook.db").write_bytes(task.template_db)
        if "nbgrader_config.py" in task.source:  # the course's own nbgrader settings travel with the source
            shutil.move(source / "nbgrader_config.py", workspace / "nbgrader_config.py")

        expected = sorted(p.stem for p in source.glob("*.ipynb"))
        for name in expected:  # a submission that is not a notebook never reaches nbgrader
            path = submitted / f"{name}.ipynb"
            if path.exists():
                try:
                    nbformat.validate(nbformat.read(path, as_version=4))
                except Exception as exc:
                    first = str(exc).splitlines()[0][:200] if str(exc) else ""
                    result.status, result.reason = "failed", f"{name}.ipynb is not a valid notebook ({type(exc).__name__}: {first})"
                    return
        if not any((submitted / f"{n}.ipynb").exists() for n in expected):
            result.status, result.reason = "failed", f"no notebook named {', '.join(n + '.ipynb' for n in expected)}"
            return

        limits = Limits.from_json(task.limits)
        torch = any(IMPORTS_TORCH.search(c.source) for p in source.glob("*.ipynb")
                    for c in nbformat.read(p, as_version=4).cells if c.cell_type == "code")
        host = _host(problem_set, task.sandbox, limits, torch)
        t = time.monotonic()
        host.reset(submitted)
        jupyter_dir = workspace / "jupyter"
        kernel = host.kernelspec(jupyter_dir)
        result.timings["sandbox_reset"] = round(time.monotonic() - t, 3)
        overrides = _overrides(workspace, kernel, task, limits, host)
        course = Course(workspace)
        t = time.monotonic()
        with _jupyter_path(jupyter_dir):
            outcome = course.api(overrides).autograde(problem_set, student, force=True, create=True)
        result.timings["nbgrader"] = round(time.monotonic() - t, 3)
        log = outcome.get("log", "") + "\n" + (outcome.get("error") or "")
        if not outcome.get("success"):
            kind = classify_failure(log)
            result.status, result.reason = kind, f"nbgrader autograde failed: {_last_error(log)}"
            result.flags.append("log: " + log[-1500:])
            host.reset(None)
            return
        t = time.monotonic()
        host.reset(submitted)  # nothing the kernel started may see or touch the re-check
        result.timings["sandbox_reset"] += round(time.monotonic() - t, 3)
        _collect_grades(workspace, problem_set, student, result)
        autograded = workspace / "autograded" / student / problem_set
        t = time.monotonic()
        _recheck_and_score(autograded, problem_set, host, task, result)
        result.timings["recheck"] = round(time.monotonic() - t, 3)
        result.files = read_files(autograded)  # (the next submission's reset ends whatever this one left)
        result.status = "graded"


class _jupyter_path:
    """Put the grading kernelspec first on JUPYTER_PATH for the duration of one autograde."""

    def __init__(self, folder: Path):
        self.folder = str(folder)

    def __enter__(self):
        self.old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.pathsep.join([self.folder] + [p for p in (self.old or "").split(os.pathsep) if p])

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = self.old


def _overrides(workspace: Path, kernel: str, task: GradeTask, limits: Limits, host) -> dict:
    from .kernel_manager import GRADING_EXECUTION
    from .preprocessors import AUTOGRADE_PREPROCESSORS

    return {
        "CourseDirectory": {"root": str(workspace), "source_directory": "solutions",
                            "submitted_directory": "submitted", "autograded_directory": "autograded",
                            "feedback_directory": "feedback", "db_url": f"sqlite:///{workspace / 'gradebook.db'}"},
        "Execute": {"timeout": int(task.cell_timeout), "kernel_name": kernel, "interrupt_on_timeout": True,
                    "startup_timeout": 60, **GRADING_EXECUTION},
        "SandboxedExecute": {"notebook_seconds": limits.notebook_seconds, "output_kb": limits.output_kb},
        "Autograde": {"autograde_preprocessors": AUTOGRADE_PREPROCESSORS},
        **host.kernel_manager_config(),
    }


def _collect_grades(workspace: Path, problem_set: str, student: str, result: GradeResult) -> None:
    """Scores, comments, penalties and the timestamp nbgrader recorded in the private gradebook."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(f"sqlite:///{workspace / 'gradebook.db'}") as gb:
        submission = gb.find_submission(problem_set, student)
        for nb in submission.notebooks:
            solution_ids = set()
            for grade in nb.grades:
                try:
                    gb.find_solution_cell(grade.name, nb.name, problem_set)
                    solution_ids.add(grade.name)
                except MissingEntry:
                    pass
            for grade in nb.grades:
                autograded = grade.cell.cell_type == "code" and grade.name not in solution_ids
                max_score = float(grade.max_score)  # the source's points, never the submission's
                in_kernel = None if grade.auto_score is None else min(float(grade.auto_score), max_score)
                result.parts.append(PartGrade(nb.name, grade.name, "autograded" if autograded else "manual",
                                              max_score, score=in_kernel if autograded else None,
                                              in_kernel=in_kernel if autograded else None))
            result.comments[nb.name] = {c.name: c.auto_comment for c in nb.comments if c.auto_comment}
            result.late_penalty[nb.name] = nb.late_submission_penalty
        result.timestamp = submission.timestamp.isoformat() if submission.timestamp else None


def _annotate(cell, text: str) -> None:
    from nbformat.notebooknode import NotebookNode
    cell.setdefault("outputs", []).append(NotebookNode(output_type="stream", name="stdout", text=text))


def _recheck_and_score(autograded: Path, problem_set: str, host, task: GradeTask, result: GradeResult) -> None:
    import nbformat
    from nbgrader import utils

    from .recheck import course_cells, recheck_notebook

    for nb_path in sorted(autograded.glob("*.ipynb")):
        name = nb_path.stem
        nb = nbformat.read(nb_path, as_version=4)
        source = autograded.parents[2] / "solutions" / problem_set / nb_path.name
        written = [c.source for c in nb.cells if c.cell_type == "code" and utils.is_solution(c)]
        result.flags += [f"{name}: {r}" for r in suspicious_code(written)]
        grades = [p for p in result.parts if p.notebook == name and p.kind == "autograded"]
        ids = sorted(backed_ids(problem_set) & {p.grade_id for p in grades})
        check = recheck_notebook(nb, problem_set, host, salt=task.salt, call_timeout=task.cell_timeout,
                                 timeout=task.recheck_timeout, grade_ids=ids,
                                 course=course_cells(nbformat.read(source, as_version=4))) if ids else None
        result.flags += score_with_recheck(name, nb, grades, check)
        if check is not None:
            result.timings[f"recheck_{name}"] = round(check.seconds, 3)
        nbformat.write(nb, nb_path)


def backed_ids(problem_set: str) -> set[str]:
    """grade_ids of the problem set's Parts (empty for a set the registry does not know)."""
    from .parts import parts_of
    try:
        return {p.grade_id for p in parts_of(problem_set)}
    except KeyError:
        return set()


def score_with_recheck(name: str, nb, grades: list[PartGrade], check) -> list[str]:
    """Set each autograded cell's score from its in-kernel score and the re-check's verdict; annotate
    the cells in ``nb``; return review flags. The rule (the grader's and the self-check's):

    - a cell the kernel ran keeps its in-kernel score only if the re-check confirms it;
    - a cell the kernel did not reach (time budget spent, kernel died) is scored by the re-check alone;
    - a cell no Part backs keeps its in-kernel score, flagged "not confirmed outside the kernel".
    """
    flags = []
    cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in nb.cells}
    for grade in grades:
        cell = cells.get(grade.grade_id)
        meta = cell.metadata.get("normcourse", {}) if cell is not None else {}
        grade.ran = "not_run" not in meta
        if not grade.ran:
            grade.in_kernel = None
        verdict = check.parts.get(grade.grade_id) if check is not None else None
        if verdict is None:
            grade.score = grade.in_kernel or 0.0
            grade.reason = meta.get("not_run", "")
            flags.append(f"{name}/{grade.grade_id}: not confirmed outside the kernel (no Part backs it)")
            continue
        grade.recheck = verdict.passed
        grade.broken_rules = list(verdict.broken_rules)
        if not verdict.passed:
            grade.score, grade.reason = 0.0, f"out-of-kernel re-check failed: {verdict.message}"
        elif grade.ran:
            grade.score = grade.in_kernel or 0.0
            grade.reason = "" if grade.score >= grade.max_score else "the test failed in your notebook"
        else:
            grade.score, grade.reason = grade.max_score, f"scored by the re-check alone ({meta['not_run']})"
        flags += [f"{name}/{grade.grade_id}: broke rule {rule}" for rule in verdict.broken_rules]
        if cell is not None:
            _annotate(cell, "Re-check outside your kernel: passed\n" if verdict.passed
                      else f"Re-check outside your kernel: FAILED: {verdict.message}\n")
    for index, cell in enumerate(nb.cells):
        meta = cell.metadata.get("normcourse", {})
        gid = cell.metadata.get("nbgrader", {}).get("grade_id", f"cell {index}")
        if meta.get("output_truncated"):
            flags.append(f"{name}/{gid}: output truncated ({meta['output_truncated']} bytes dropped)")
        if meta.get("kernel_died"):
            flags.append(f"{name}/{gid}: the kernel died while running this cell")
    if check is not None and check.forbidden:
        flags.append(f"{name}: tried forbidden modules: " + ", ".join(sorted({a['module'] for a in check.forbidden})))
    return flags
