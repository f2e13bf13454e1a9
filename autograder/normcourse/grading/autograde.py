"""Autograde a class: one task per submission, graded anywhere, merged here, never silently lost.

nbgrader does all the grading, but never concurrently on a shared gradebook:

1. **seed**: ``generate_assignment`` (nbgrader) runs once on a private copy of the source to make a
   *template* gradebook holding only the assignment (kept per source version), and once for the
   course gradebook (a course without a gradebook gets a copy of the template);
2. **tasks**: each submission becomes a :class:`~normcourse.grading.result.GradeTask` carrying its
   bytes, the problem set's source, the template, the versions the worker must match, the limits and
   the course's private re-check salt;
3. **grade**: an executor (:mod:`normcourse.grading.executors`: a local process pool by default,
   a Dask cluster with ``scheduler=``) runs :func:`normcourse.grading.worker.grade` on each, in the
   sandbox; ``tqdm`` shows progress;
4. **retry**: a result classed ``infrastructure`` or ``refused`` (a kernel that did not start, a
   worker that died or has another course version) is retried (``retries`` times, with back-off) and
   never written as a grade;
5. **merge**: only this process writes the course gradebook, through nbgrader's ``Gradebook`` API,
   and only from a ``graded`` or ``failed`` result. A grade that already exists with a different
   value is kept unless ``force=True`` (then overwritten, and logged in the ledger); identical grades
   are no-ops, so re-grading is idempotent;
6. **ledger**: every submission ends ``graded``, ``failed`` (reason; autograded cells score 0),
   ``conflict``, ``infrastructure`` or ``refused`` (reason; nothing written), and
   :func:`~normcourse.grading.ledger.consistency_problems` checks gradebook against ledger. A re-run
   skips submissions whose record matches their current files, so a crash of this process loses at
   most the submissions in flight, which the next run grades.

Learner code never runs here. Without a sandbox on this machine or the workers, grading stops with
the reason, unless ``sandbox=False`` (``--no-sandbox``), which every record and the report show.

Example::

    summary = autograde(Course.find(), "ps01_scopes", AutogradeOptions(workers=2))
    print(summary.counts, summary.problems)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .ledger import TOLERANCE, Ledger, consistency_problems
from .limits import Limits
from .result import GradeResult, GradeTask, PartGrade
from .worker import fingerprint, fingerprint_files, package_version, read_files

__all__ = ["AutogradeOptions", "AutogradeSummary", "autograde", "seed_gradebook", "stamp_new_gradebook",
           "course_salt", "build_tasks"]


@dataclass
class AutogradeOptions:
    """How to autograde.

    Attributes:
        workers: local worker processes (each grades one submission at a time).
        scheduler: a Dask scheduler address (``tcp://HOST:PORT``); grade there instead of locally.
        students: only these students (default: every submission of the problem set).
        cell_timeout: seconds per cell and per re-check call (default: the course's ``Execute.timeout``).
        recheck_timeout: wall-clock seconds for the whole out-of-kernel re-check of one notebook.
        retries: extra attempts after an infrastructure failure.
        force: overwrite existing grades that differ (each overwrite is logged in the ledger).
        regrade: grade again even if the ledger says these exact files were already graded.
        limits: caps of every learner process (see :class:`~normcourse.grading.limits.Limits`).
        sandbox: run learner code in the sandbox (False only with an explicit ``--no-sandbox``).
        progress: show a tqdm progress bar.
    """

    workers: int = 2
    scheduler: str | None = None
    students: list[str] | None = None
    cell_timeout: int | None = None
    recheck_timeout: float = 300.0
    retries: int = 2
    force: bool = False
    regrade: bool = False
    limits: Limits = field(default_factory=Limits)
    sandbox: bool = True
    progress: bool = True


@dataclass
class AutogradeSummary:
    problem_set: str
    records: dict[str, dict]
    skipped: list[str]
    problems: list[str]
    executor: str = ""

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.records.values():
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        return counts

    @property
    def ok(self) -> bool:
        return not self.problems and all(r["status"] in ("graded", "failed") for r in self.records.values())


def course_salt(course) -> int:
    """The course's private re-check salt (made once, kept in the grading folder, never published)."""
    path = course.grading_dir / "recheck-salt"
    if not path.exists():
        course.grading_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(secrets.randbits(62)))
        tmp.chmod(0o600)
        tmp.replace(path)
    return int(path.read_text())


def _sqlite_path(db_url: str) -> Path | None:
    """The file of a SQLite gradebook URL (None for a server database such as PostgreSQL)."""
    return Path(db_url[len("sqlite:///"):]) if db_url.startswith("sqlite:///") else None


def stamp_new_gradebook(target: Path | str) -> bool:
    """Give a new gradebook nbgrader's schema version without nbgrader's subprocess; return whether it did.

    nbgrader's ``Gradebook`` stamps a brand-new database with the version it gets by running the
    ``alembic heads`` command in a subprocess (about 3 s of CPU here, mostly re-importing nbgrader).
    The same head, read in this process from nbgrader's own migration scripts, makes the database count
    as existing. A test checks that both ways give the same version.

    Args:
        target: a SQLite file (a Path, or a ``sqlite:///`` URL): created with only ``alembic_version``,
            and ``Gradebook`` then creates its tables as usual; left alone if it exists. Or a server
            database URL (``postgresql+psycopg://...``): stamped and given nbgrader's tables in one
            transaction, only if it has no table at all (so several processes opening a new shared
            gradebook at once never race in nbgrader's own table creation).

    Returns:
        True if it stamped; False if the database existed, another process stamped it first, or the
        migration head is ambiguous.
    """
    from alembic.script import ScriptDirectory
    from nbgrader.dbutil import ALEMBIC_DIR

    heads = ScriptDirectory(ALEMBIC_DIR).get_heads()
    if len(heads) != 1:
        return False
    path = target if isinstance(target, Path) else _sqlite_path(target)
    if path is not None:
        import sqlite3

        if path.exists():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
            db.execute("INSERT INTO alembic_version (version_num) VALUES (?)", (heads[0],))
        db.close()
        return True

    from nbgrader.api import Base
    from sqlalchemy import create_engine, inspect, text
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    engine = create_engine(target)
    try:
        with engine.begin() as conn:
            if inspect(conn).get_table_names():
                return False
            conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
            conn.execute(text("INSERT INTO alembic_version (version_num) VALUES (:head)"), {"head": heads[0]})
            Base.metadata.create_all(conn)
    except (IntegrityError, ProgrammingError):  # another process created the tables first
        return False
    finally:
        engine.dispose()
    return True


def seed_gradebook(course, problem_set: str, db_url: str) -> None:
    """Record the assignment (notebooks, grade cells, checksums) in ``db_url`` (SQLite or a server
    database) with nbgrader's ``generate_assignment``, run on a private copy of the source so the
    course's release is untouched."""
    stamp_new_gradebook(_sqlite_path(db_url) or db_url)
    with tempfile.TemporaryDirectory(prefix="normcourse-seed-") as tmp:
        shutil.copytree(course.source_dir(problem_set), Path(tmp) / "solutions" / problem_set)
        api = course.api({"CourseDirectory": {"root": tmp, "source_directory": "solutions",
                                              "release_directory": "release", "db_url": db_url}})
        outcome = api.generate_assignment(problem_set, force=True, create=True)
        if not outcome.get("success"):
            raise RuntimeError(f"generate_assignment failed for {problem_set}: {outcome.get('error')}\n"
                               f"{outcome.get('log', '')[-2000:]}")


def _seeded(course, problem_set: str, ledger: Ledger) -> Path:
    """The template gradebook for the current source of ``problem_set`` (made once per source version),
    with the course gradebook seeded for the same version.

    The template is always a SQLite file (workers grade on private copies of it). A course whose SQLite
    gradebook does not exist yet gets a copy of the template, which is exactly what
    ``generate_assignment`` would have written there; a server gradebook (PostgreSQL) is stamped if new
    and seeded with ``generate_assignment``.
    """
    from nbgrader.api import Gradebook, MissingEntry

    version = fingerprint(course.source_dir(problem_set))[:16]
    template = course.grading_dir / "templates" / f"{problem_set}-{version}.db"
    if not template.exists():
        template.parent.mkdir(parents=True, exist_ok=True)
        partial = template.with_suffix(".partial.db")
        partial.unlink(missing_ok=True)
        seed_gradebook(course, problem_set, f"sqlite:///{partial}")
        os.replace(partial, template)
    course_db = _sqlite_path(course.db_url)
    if course_db is not None and not course_db.exists():
        course_db.parent.mkdir(parents=True, exist_ok=True)
        partial = course_db.with_name(course_db.name + ".partial")
        shutil.copy2(template, partial)
        os.replace(partial, course_db)
    else:
        if course_db is None:
            stamp_new_gradebook(course.db_url)
        try:
            with Gradebook(course.db_url) as gb:
                gb.find_assignment(problem_set)
            if ledger.seeded.get(problem_set) == version:
                return template
        except MissingEntry:
            pass
        seed_gradebook(course, problem_set, course.db_url)
    ledger.seeded[problem_set] = version
    ledger.save()
    return template


# ------------------------------------------------------------------------------------------------
# Tasks

def build_tasks(course, problem_set: str, students: list[str], template_db: Path, options: AutogradeOptions,
                cell_timeout: int) -> list[GradeTask]:
    """One self-contained task per submission (bytes, not paths: a task may travel to another machine)."""
    source = read_files(course.source_dir(problem_set))
    config = course.root / "nbgrader_config.py"
    if config.exists():
        source["nbgrader_config.py"] = config.read_bytes()
    template = template_db.read_bytes()
    version, salt = fingerprint_files(source), course_salt(course)
    return [GradeTask(problem_set, student, read_files(course.submitted_dir(problem_set, student)), source, template,
                      version, package_version(), options.limits.to_json(), cell_timeout, options.recheck_timeout,
                      salt, options.sandbox) for student in students]


# ------------------------------------------------------------------------------------------------
# Merging one result into the course gradebook.

def _write_grades(course, ledger: Ledger, result: GradeResult, *, force: bool, gradebook=None) -> tuple[str, str]:
    """Write a result's grades into the course gradebook; return (status, reason).

    ``gradebook``: an open ``nbgrader.api.Gradebook`` of the course to write through (the batch keeps one
    open: opening one builds a database engine, checks every table and starts with an empty statement
    cache, which made up most of a merge's time); None opens one for this write.

    Only the autograder's columns are written (``auto_score``, ``needs_manual_grade``, ``auto_comment``,
    the late penalty, the timestamp): SQLAlchemy updates only the columns that changed, so a manual
    score, extra credit or manual comment that a grader writes at the same time (formgrader, a script
    on a shared PostgreSQL gradebook) is never overwritten. The submission's grade rows are locked
    (``SELECT ... FOR UPDATE``, in id order; SQLite has no row locks and needs none, its writers take
    turns) from the read that detects conflicts to the commit, so the conflict check and
    ``needs_manual_grade`` see the latest manual scores. A transaction the database aborts (a deadlock
    or serialization failure on a server, "database is locked" on SQLite) is rolled back and retried.
    """
    from nbgrader.api import Assignment, Gradebook, Grade, InvalidEntry, SubmittedAssignment, SubmittedNotebook
    from sqlalchemy.exc import OperationalError

    problem_set, student = result.problem_set, result.student

    def write_once(gb) -> tuple[str, list]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's own SQLAlchemy notice
            gb.update_or_create_student(student)
            kwargs = {"timestamp": result.timestamp} if result.timestamp else {}
            gb.update_or_create_submission(problem_set, student, **kwargs)
            (gb.db.query(Grade.id).join(SubmittedNotebook, Grade.notebook_id == SubmittedNotebook.id)
             .join(SubmittedAssignment, SubmittedNotebook.assignment_id == SubmittedAssignment.id)
             .join(Assignment, SubmittedAssignment.assignment_id == Assignment.id)
             .filter(Assignment.name == problem_set, SubmittedAssignment.student_id == student)
             .order_by(Grade.id).with_for_update(of=Grade).all())
            changes, conflicts = [], []
            for part in result.parts:
                if part.kind != "autograded":
                    continue
                grade = gb.find_grade(part.grade_id, part.notebook, problem_set, student)
                old, new = grade.auto_score, part.score
                if old is not None and (new is None or abs(old - new) > TOLERANCE):
                    conflicts.append((part.notebook, part.grade_id, old, new))
                changes.append((grade, new))
            if conflicts and not force:
                gb.db.rollback()
                return "conflict", conflicts
            for notebook, comments in result.comments.items():
                for grade_id, text in comments.items():
                    gb.find_comment(grade_id, notebook, problem_set, student).auto_comment = text
            for notebook, penalty in result.late_penalty.items():
                if penalty is not None:
                    gb.find_submission_notebook(notebook, problem_set, student).late_submission_penalty = penalty
            for grade, value in changes:
                grade.auto_score = value
                grade.needs_manual_grade = grade.manual_score is not None or value is None
            gb.db.commit()
        return "ok", conflicts

    def write_through(gb) -> tuple[str, list]:
        try:
            return write_once(gb)
        except BaseException:
            gb.db.rollback()                # nothing half-written stays pending in a gradebook kept open
            raise

    for attempt in range(1, 6):
        try:
            if gradebook is None:
                with Gradebook(course.db_url) as gb:
                    outcome, conflicts = write_through(gb)
            else:
                outcome, conflicts = write_through(gradebook)
            break
        except (OperationalError, InvalidEntry) as exc:  # nbgrader wraps a failed commit in InvalidEntry
            if attempt == 5:
                raise
            ledger.log("gradebook_retry", problem_set=problem_set, student=student, attempt=attempt,
                       error=f"{type(exc).__name__}: {exc}"[:500])
            time.sleep(0.1 * 2 ** attempt)
    if outcome == "conflict":
        text = "; ".join(f"{nb}/{gid}: gradebook {old}, new {new}" for nb, gid, old, new in conflicts)
        ledger.log("conflict_kept", problem_set=problem_set, student=student, details=text)
        return "conflict", f"kept existing grades that differ from this run (use --force to overwrite): {text}"
    for nb, gid, old, new in conflicts:
        ledger.log("overwrote", problem_set=problem_set, student=student, notebook=nb, grade_id=gid,
                   old=old, new=new)
    return "ok", ""


def _zeroed(course, result: GradeResult, gradebook=None) -> GradeResult:
    """A failed submission's grades: every autograded cell 0, with the reason."""
    from nbgrader.api import Gradebook

    parts = []
    with contextlib.nullcontext(gradebook) if gradebook is not None else Gradebook(course.db_url) as gb:
        for nb in gb.find_assignment(result.problem_set).notebooks:
            for cell in nb.grade_cells:
                autograded = cell.cell_type == "code" and not any(s.name == cell.name for s in nb.solution_cells)
                parts.append(PartGrade(nb.name, cell.name, "autograded" if autograded else "manual",
                                       float(cell.max_score), score=0.0 if autograded else None, ran=False,
                                       reason=result.reason))
    result.parts = parts
    return result


def _install_autograded(course, result: GradeResult) -> None:
    """Replace the course's autograded folder of this submission with the result's (never half-written)."""
    from .worker import _write

    dest = course.autograded_dir(result.problem_set, result.student)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.with_name(dest.name + ".incoming")
    old = dest.with_name(dest.name + ".old")
    for stale in (staging, old):
        if stale.exists():
            shutil.rmtree(stale)
    staging.mkdir()
    _write(result.files, staging)
    if dest.exists():
        dest.replace(old)
    staging.replace(dest)
    if old.exists():
        shutil.rmtree(old)


def merge(course, ledger: Ledger, result: GradeResult, attempts: int, force: bool, gradebook=None) -> dict:
    """Record one final result: grades into the gradebook (graded, failed), the ledger always.

    ``gradebook``: the course's open ``nbgrader.api.Gradebook`` to write through (see :func:`_write_grades`);
    None opens one for this result."""
    if result.status in ("infrastructure", "refused"):
        previous = ledger.get(result.problem_set, result.student)
        if previous and previous["status"] in ("graded", "failed"):
            # keep the last real outcome (and its grades); the failed attempt is only logged
            ledger.log(f"{result.status}_error", problem_set=result.problem_set, student=result.student,
                       attempts=attempts, reason=result.reason[:1000])
            return dict(previous, last_attempt=f"{result.status}: {result.reason[:300]}")
        return ledger.put(result, result.status, result.reason, attempts)
    if result.status == "failed":
        result = _zeroed(course, result, gradebook)
    outcome, why = _write_grades(course, ledger, result, force=force, gradebook=gradebook)
    if outcome == "conflict":
        return ledger.put(result, "conflict", why, attempts)
    if result.status == "graded":
        _install_autograded(course, result)
    return ledger.put(result, result.status, result.reason, attempts)


# ------------------------------------------------------------------------------------------------
# The batch.

def _to_grade(course, problem_set: str, students: list[str], ledger: Ledger, options) -> tuple[list, list]:
    skipped, todo = [], []
    for student in students:
        record = ledger.get(problem_set, student)
        same = (record is not None and record.get("result", {}).get("fingerprint")
                == fingerprint(course.submitted_dir(problem_set, student)))
        if same and record["status"] in ("graded", "failed") and not options.regrade and not options.force:
            skipped.append(student)
        else:
            todo.append(student)
    return skipped, todo


def autograde(course, problem_set: str, options: AutogradeOptions = AutogradeOptions()) -> AutogradeSummary:
    """Autograde the submissions of ``problem_set``; see the module docstring."""
    from .executors import make_executor
    from .sandbox import SandboxUnavailable, availability

    if options.sandbox and options.scheduler is None:
        ok, why = availability()
        if not ok:
            raise SandboxUnavailable(f"learner code can only run in a sandbox, and none can start here: {why}. "
                                     f"Fix that, grade on workers that have it (--scheduler), or pass "
                                     f"--no-sandbox to grade unsandboxed (every record will say so).")
    course.grading_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(course).lock()
    try:
        students = options.students or course.submitted_students(problem_set)
        missing = [s for s in students if not course.submitted_dir(problem_set, s).is_dir()]
        if missing:
            raise FileNotFoundError(f"no submission of {problem_set} for: {', '.join(missing)}")
        cell_timeout = options.cell_timeout or int(course.config().Execute.get("timeout", 30))
        skipped, todo = _to_grade(course, problem_set, students, ledger, options)
        records: dict[str, dict] = {}
        executor_name = ""
        if todo:
            executor = make_executor(options.workers, options.scheduler)
            executor_name = executor.describe()
            try:
                template_db = _seeded(course, problem_set, ledger)
                tasks = build_tasks(course, problem_set, todo, template_db, options, cell_timeout)
                records = _run(course, ledger, executor, tasks, options)
            finally:
                executor.close()
        for student in skipped:
            records[student] = ledger.get(problem_set, student)
        problems = consistency_problems(course, problem_set, students)
        return AutogradeSummary(problem_set, records, skipped, problems, executor_name)
    finally:
        ledger.unlock()


def _run(course, ledger: Ledger, executor, tasks: list[GradeTask], options: AutogradeOptions) -> dict:
    """Submit every task, merge each result as it arrives, retry infrastructure failures."""
    from nbgrader.api import Gradebook
    from tqdm import tqdm

    from .executors import WorkerLost
    from .worker import grade

    records: dict[str, dict] = {}
    gradebook = Gradebook(course.db_url)             # one for the batch: every merge writes through it
    running = {executor.submit(grade, task): task for task in tasks}
    waiting: list[tuple[float, GradeTask]] = []  # retries, not before a time (back-off)
    problem_set = tasks[0].problem_set
    bar = tqdm(total=len(tasks), desc=f"autograde {problem_set}", unit="submission",
               disable=not options.progress, file=sys.stderr)
    try:
        while running or waiting:
            now = time.monotonic()
            for item in [w for w in waiting if w[0] <= now]:
                waiting.remove(item)
                running[executor.submit(grade, item[1])] = item[1]
            if not running:
                time.sleep(max(0.0, min(w[0] for w in waiting) - now))
                continue
            for future in executor.wait_any(list(running), timeout=1.0):
                task = running.pop(future)
                try:
                    result = executor.outcome(future)
                except WorkerLost as exc:
                    result = GradeResult(task.problem_set, task.student, "infrastructure", reason=str(exc),
                                         source_version=task.source_version, sandboxed=task.sandbox)
                except Exception as exc:  # the task could not even run (serialization, a lost connection)
                    result = GradeResult(task.problem_set, task.student, "infrastructure",
                                         reason=f"{type(exc).__name__}: {exc}"[:1000],
                                         source_version=task.source_version, sandboxed=task.sandbox)
                if result.status in ("infrastructure", "refused") and task.attempt <= options.retries:
                    ledger.log("retry", problem_set=task.problem_set, student=task.student, attempt=task.attempt,
                               status=result.status, reason=result.reason[:500])
                    task.attempt += 1
                    waiting.append((time.monotonic() + 2.0 * (task.attempt - 1), task))
                    continue
                records[task.student] = merge(course, ledger, result, task.attempt, options.force, gradebook)
                bar.update(1)
                bar.set_postfix_str(f"{task.student}: {records[task.student]['status']}")
    finally:
        bar.close()
        gradebook.close()
    return records
