"""Parallel autograding without data loss: isolated workers, merge on success, retries, a ledger.

nbgrader's gradebook is one SQLite file, and several ``nbgrader autograde`` processes on it at once
were seen to time out, zero grades and delete autograded folders. Here nbgrader still does all the
grading, but never concurrently on a shared gradebook:

1. **seed**: ``generate_assignment`` (nbgrader) runs once on a private copy of the source to make a
   *template* gradebook holding only the assignment (kept per source version), and once for the
   course gradebook (a course without a gradebook yet gets a copy of the template instead);
2. **grade**: ``workers`` long-lived worker processes (:mod:`normcourse.grading.worker`) each grade one
   submission at a time, each submission in its own workspace with its own copy of the template
   gradebook, under a wall-clock limit (on expiry the worker and its kernels are killed and
   replaced); ``tqdm`` shows progress. Each worker forks its kernels from a warm zygote
   (:mod:`normcourse.grading.kernel_zygote`) capped by ``options.limits``, and nbgrader drives them
   through :mod:`normcourse.grading.kernel_manager`, which skips jupyter_client's idle waits;
3. **retry**: a result classed as ``infrastructure`` (the kernel did not start, ZMQ errors, a crashed
   worker) is retried with back-off and never written as a grade;
4. **merge**: only this process writes the course gradebook, through nbgrader's ``Gradebook`` API,
   and only from a successful result. A grade that already exists with a different value is kept
   unless ``force=True`` (then overwritten and logged in the ledger); identical grades are no-ops,
   so re-grading is idempotent;
5. **ledger**: every submission ends as ``graded``, ``failed`` (reason; autograded cells score 0),
   ``conflict`` or ``infrastructure`` (reason; nothing written), and :func:`consistency_problems`
   checks that the gradebook and the ledger agree. A re-run skips submissions whose ledger record
   matches their current files (a crash loses at most the submissions in flight, which are re-graded).

Example::

    summary = autograde(Course.find(), "ps01_scopes", AutogradeOptions(workers=2))
    print(summary.counts, summary.problems)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .course import Course
from .ledger import Ledger
from .limits import Limits
from .worker import fingerprint, kernel_preload

__all__ = ["AutogradeOptions", "AutogradeSummary", "autograde", "seed_gradebook", "stamp_new_gradebook",
           "consistency_problems", "ledger_path"]

_TOLERANCE = 1e-9
#: How often the pool looks for finished results (a few stat calls; a worker idles this long at most).
_POLL_SECONDS = 0.02


@dataclass
class AutogradeOptions:
    """How to autograde.

    Attributes:
        workers: submissions graded at once (each is one kernel plus one re-check process).
        students: only these students (default: every submission of the problem set).
        cell_timeout: seconds per cell (default: the course config's ``Execute.timeout``).
        submission_timeout: wall-clock seconds for one submission, re-check included (default: 10
            minutes); on expiry the worker's process group is killed and the submission fails.
        recheck_timeout: wall-clock seconds for the out-of-kernel re-check of one notebook.
        retries: extra attempts after an infrastructure failure.
        startup_timeout: seconds a kernel may take to start before the attempt counts as an
            infrastructure failure.
        force: overwrite existing grades that differ (each overwrite is logged in the ledger).
        regrade: grade again even if the ledger says these exact files were already graded.
        limits: memory/CPU/file caps of the kernel and the re-check.
        progress: show a tqdm progress bar.
    """

    workers: int = 2
    students: list[str] | None = None
    cell_timeout: int | None = None
    submission_timeout: float = 600.0
    recheck_timeout: float = 180.0
    retries: int = 2
    startup_timeout: int = 60
    force: bool = False
    regrade: bool = False
    limits: Limits = field(default_factory=Limits)
    progress: bool = True


@dataclass
class AutogradeSummary:
    problem_set: str
    records: dict[str, dict]
    skipped: list[str]
    problems: list[str]

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.records.values():
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        return counts

    @property
    def ok(self) -> bool:
        return not self.problems and all(r["status"] in ("graded", "failed") for r in self.records.values())


def ledger_path(course: Course) -> Path:
    return course.grading_dir / "ledger.json"


def _sqlite_path(db_url: str) -> Path | None:
    return Path(db_url[len("sqlite:///"):]) if db_url.startswith("sqlite:///") else None


def stamp_new_gradebook(path: Path) -> bool:
    """Create an empty SQLite gradebook at ``path`` stamped with nbgrader's schema version; return
    whether it did.

    nbgrader's ``Gradebook`` stamps a brand-new database with the version it gets by running the
    ``alembic heads`` command in a subprocess (about 3 s of CPU here, mostly re-importing nbgrader).
    The same head, read in this process from nbgrader's own migration scripts, makes the file count as
    existing, and ``Gradebook`` then creates its tables as usual. A test checks that both ways give
    the same version. Leaves ``path`` alone (and returns False) if it exists or the head is ambiguous.
    """
    import sqlite3

    from alembic.script import ScriptDirectory
    from nbgrader.dbutil import ALEMBIC_DIR

    heads = ScriptDirectory(ALEMBIC_DIR).get_heads()
    if path.exists() or len(heads) != 1:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        db.execute("INSERT INTO alembic_version (version_num) VALUES (?)", (heads[0],))
    db.close()
    return True


def seed_gradebook(course: Course, problem_set: str, db_url: str) -> None:
    """Record the assignment (notebooks, grade cells, checksums) in ``db_url`` with nbgrader's
    ``generate_assignment``, run on a private copy of the source so the course's release is untouched."""
    if (path := _sqlite_path(db_url)) is not None:
        stamp_new_gradebook(path)
    with tempfile.TemporaryDirectory(prefix="normcourse-seed-") as tmp:
        shutil.copytree(course.source_dir(problem_set), Path(tmp) / "solutions" / problem_set)
        api = course.api({"CourseDirectory": {"root": tmp, "source_directory": "solutions",
                                              "release_directory": "release", "db_url": db_url}})
        outcome = api.generate_assignment(problem_set, force=True, create=True)
        if not outcome.get("success"):
            raise RuntimeError(f"generate_assignment failed for {problem_set}: {outcome.get('error')}\n"
                               f"{outcome.get('log', '')[-2000:]}")


def _seeded(course: Course, problem_set: str, ledger: Ledger) -> Path:
    """The template gradebook for the current source of ``problem_set`` (made once per source version),
    with the course gradebook seeded for the same version. A course without a gradebook yet gets a
    copy of the template, which is exactly what ``generate_assignment`` would have written there."""
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
# Merging one worker result into the course gradebook.

def _write_grades(course: Course, ledger: Ledger, result: dict, *, force: bool) -> tuple[str, str]:
    """Write a worker's grades into the course gradebook; return (status, reason)."""
    from nbgrader.api import Gradebook

    problem_set, student = result["problem_set"], result["student"]
    with Gradebook(course.db_url) as gb, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's own SQLAlchemy notice
        gb.update_or_create_student(student)
        kwargs = {"timestamp": result["timestamp"]} if result.get("timestamp") else {}
        gb.update_or_create_submission(problem_set, student, **kwargs)
        changes, conflicts = [], []
        for nb_name, entry in result["notebooks"].items():
            for grade_id, new in entry["grades"].items():
                grade = gb.find_grade(grade_id, nb_name, problem_set, student)
                old, value = grade.auto_score, new["auto_score"]
                if old is not None and (value is None or abs(old - value) > _TOLERANCE):
                    conflicts.append((nb_name, grade_id, old, value))
                changes.append((grade, value))
            for grade_id, comment_text in entry.get("comments", {}).items():
                comment = gb.find_comment(grade_id, nb_name, problem_set, student)
                comment.auto_comment = comment_text
            notebook = gb.find_submission_notebook(nb_name, problem_set, student)
            if entry.get("late_penalty") is not None:
                notebook.late_submission_penalty = entry["late_penalty"]
        if conflicts and not force:
            gb.db.rollback()
            text = "; ".join(f"{nb}/{gid}: gradebook {old}, new {new}" for nb, gid, old, new in conflicts)
            ledger.log("conflict_kept", problem_set=problem_set, student=student, details=text)
            return "conflict", f"kept existing grades that differ from this run (use --force to overwrite): {text}"
        for grade, value in changes:
            grade.auto_score = value
            grade.needs_manual_grade = grade.manual_score is not None or value is None
        gb.db.commit()
        for nb_name, grade_id, old, new in conflicts:
            ledger.log("overwrote", problem_set=problem_set, student=student, notebook=nb_name,
                       grade_id=grade_id, old=old, new=new)
    return "ok", ""


def _zero_result(course: Course, result: dict) -> dict:
    """A failed submission's grades: every cell 0 (nothing gradable), in the worker result's shape."""
    from nbgrader.api import Gradebook

    notebooks = {}
    with Gradebook(course.db_url) as gb:
        assignment = gb.find_assignment(result["problem_set"])
        for nb in assignment.notebooks:
            notebooks[nb.name] = {"grades": {c.name: {"auto_score": 0.0, "max_score": c.max_score,
                                                      "kind": "autograded" if c.cell_type == "code" else "manual",
                                                      "reason": result["reason"]}
                                             for c in nb.grade_cells}, "comments": {}}
    return dict(result, notebooks=notebooks)


def _install_autograded(course: Course, result: dict) -> None:
    """Replace the course's autograded folder of this submission with the worker's (never half-written)."""
    dest = course.autograded_dir(result["problem_set"], result["student"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.with_name(dest.name + ".incoming")
    old = dest.with_name(dest.name + ".old")
    for stale in (staging, old):
        if stale.exists():
            shutil.rmtree(stale)
    shutil.copytree(result["autograded_dir"], staging)
    if dest.exists():
        os.replace(dest, old)
    os.replace(staging, dest)
    if old.exists():
        shutil.rmtree(old)


def _record(result: dict, status: str, reason: str, attempts: int) -> dict:
    parts, score, max_score = {}, 0.0, 0.0
    for nb_name, entry in result.get("notebooks", {}).items():
        for grade_id, g in entry["grades"].items():
            parts[f"{nb_name}/{grade_id}"] = {k: g.get(k) for k in ("auto_score", "max_score", "kind",
                                                                    "recheck_passed", "reason",
                                                                    "in_kernel_score")}
            if g["kind"] == "autograded":
                score += g["auto_score"] or 0.0
                max_score += g["max_score"]
    return {"status": status, "reason": reason, "fingerprint": result.get("fingerprint"),
            "flags": result.get("flags", []), "parts": parts, "score": score, "max_score": max_score,
            "attempts": attempts, "recheck": result.get("recheck", {}), "seconds": result.get("seconds"),
            "log_tail": result.get("log_tail", "")[-1500:] if status != "graded" else ""}


def _merge(course: Course, ledger: Ledger, result: dict, attempts: int, force: bool) -> dict:
    problem_set, student = result["problem_set"], result["student"]
    status = result["status"]
    if status == "infrastructure":
        previous = ledger.get(problem_set, student)
        if previous and previous["status"] in ("graded", "failed"):
            # keep the last real outcome (and its grades); the failed attempt is only logged
            ledger.log("infrastructure_error", problem_set=problem_set, student=student,
                       attempts=attempts, reason=result.get("reason", "")[:1000])
            return dict(previous, last_attempt=f"infrastructure error: {result.get('reason', '')[:300]}")
        record = _record(result, "infrastructure", result.get("reason", ""), attempts)
    else:
        if status == "failed":
            result = _zero_result(course, result)
        outcome, why = _write_grades(course, ledger, result, force=force)
        if outcome == "conflict":
            record = _record(result, "conflict", why, attempts)
        else:
            if status == "graded":
                _install_autograded(course, result)
            record = _record(result, status, result.get("reason", ""), attempts)
    ledger.put(problem_set, student, record)
    return record


# ------------------------------------------------------------------------------------------------
# The pool.

@dataclass
class _Task:
    student: str
    attempts: int = 0
    not_before: float = 0.0
    started: float = 0.0
    result_path: Path | None = None


class _Worker:
    """One long-lived ``worker --serve`` process; it grades one submission at a time.

    Learner code never runs in it (only in the kernels and re-check processes it starts), so it can
    serve many submissions; it is killed with all its descendants (kernels start their own sessions)
    and replaced when a submission exceeds its time limit or the process dies.
    """

    def __init__(self, scratch: Path, index: int, kernel_preload: list[str], limits: Limits):
        self.log_path = scratch / f"worker-{index}.log"
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "normcourse.grading.worker", "--serve",
                                             *limits.to_args(), *kernel_preload],
                                            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True, text=True)
        self.task: _Task | None = None

    def submit(self, task: _Task, job_path: Path) -> None:
        self.task = task
        task.started = time.monotonic()
        self.process.stdin.write(f"{job_path}\n")
        self.process.stdin.flush()

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        _kill_tree(self.process)

    def stop(self) -> None:
        """Close its job queue (stdin): it finishes, stops its kernel zygote and exits."""
        try:
            self.process.stdin.close()
        except OSError:
            pass

    def wait(self, timeout: float = 30) -> None:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def _job(task: _Task, course: Course, problem_set: str, scratch: Path, template_db: Path,
         options: AutogradeOptions, cell_timeout: int) -> Path:
    task.attempts += 1
    base = scratch / f"{task.student}.{task.attempts}"
    base.mkdir(parents=True, exist_ok=True)
    task.result_path = base / "result.json"
    job_path = base / "job.json"
    job_path.write_text(json.dumps({
        "course_root": str(course.root), "course_work": str(course.work) if course.work else None,
        "problem_set": problem_set, "student": task.student,
        "submission_dir": str(course.submitted_dir(problem_set, task.student)),
        "workspace": str(base / "course"), "template_db": str(template_db), "result_path": str(task.result_path),
        "cell_timeout": cell_timeout, "recheck_timeout": options.recheck_timeout,
        "startup_timeout": options.startup_timeout,
        "limits": asdict(options.limits)}))
    return job_path


def _kill_tree(process: subprocess.Popen) -> None:
    """Kill a worker and every process under it (its kernels run in sessions of their own)."""
    import psutil
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _poll(worker: _Worker, options: AutogradeOptions, problem_set: str) -> dict | None:
    """The worker's current result if done (or failed, or over time), else None."""
    task = worker.task
    if task.result_path.exists():
        return json.loads(task.result_path.read_text())
    if not worker.alive():
        tail = worker.log_path.read_bytes()[-800:].decode(errors="replace")
        return {"status": "infrastructure", "student": task.student, "problem_set": problem_set,
                "reason": f"worker exited with code {worker.process.returncode} and no result: {tail}"}
    if time.monotonic() - task.started > options.submission_timeout:
        worker.kill()
        return {"status": "failed", "student": task.student, "problem_set": problem_set,
                "reason": f"grading exceeded the time limit of {options.submission_timeout:g} s per submission"}
    return None


def autograde(course: Course, problem_set: str, options: AutogradeOptions = AutogradeOptions()) -> AutogradeSummary:
    """Autograde the submissions of ``problem_set``; see the module docstring."""
    course.grading_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(ledger_path(course))
    students = options.students or course.submitted_students(problem_set)
    missing = [s for s in students if not course.submitted_dir(problem_set, s).is_dir()]
    if missing:
        raise FileNotFoundError(f"no submission of {problem_set} for: {', '.join(missing)}")
    cell_timeout = options.cell_timeout or int(course.config().Execute.get("timeout", 30))

    skipped, todo = [], []
    for student in students:
        record = ledger.get(problem_set, student)
        unchanged = record and record.get("fingerprint") == fingerprint(course.submitted_dir(problem_set, student))
        if unchanged and record["status"] in ("graded", "failed") and not options.regrade and not options.force:
            skipped.append(student)
        else:
            todo.append(student)

    records: dict[str, dict] = {}
    if todo:
        scratch = Path(tempfile.mkdtemp(prefix=f"normcourse-autograde-{problem_set}-"))
        try:
            # Workers start (and warm up: imports, re-check fork server) while the gradebooks are seeded;
            # they wait for job paths on stdin and touch nothing before.
            preload = kernel_preload(course.source_dir(problem_set), problem_set)

            def spawn(index: int) -> _Worker:
                return _Worker(scratch, index, preload, options.limits)
            workers = [spawn(i) for i in range(min(max(1, options.workers), len(todo)))]
            try:
                template_db = _seeded(course, problem_set, ledger)
            except BaseException:
                for worker in workers:
                    worker.kill()
                raise
            records = _run_pool(course, problem_set, todo, scratch, template_db, options, cell_timeout, ledger,
                                workers, spawn)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    for student in skipped:
        records[student] = ledger.get(problem_set, student)
    problems = consistency_problems(course, problem_set, students)
    return AutogradeSummary(problem_set, records, skipped, problems)


def _run_pool(course, problem_set, students, scratch, template_db, options, cell_timeout, ledger,
              workers: list[_Worker], spawn) -> dict:
    """Grade ``students`` on ``workers``; ``spawn(index)`` starts a replacement for a worker that died."""
    from tqdm import tqdm

    queue = [_Task(s) for s in students]
    spawned = len(workers)
    records: dict[str, dict] = {}
    bar = tqdm(total=len(queue), desc=f"autograde {problem_set}", unit="submission",
               disable=not options.progress, file=sys.stderr)
    def hand_out() -> None:
        """Give every idle worker the next ready submission (replacing a worker that has died)."""
        nonlocal spawned
        for i, worker in enumerate(workers):
            if worker.task is not None:
                continue
            ready = [t for t in queue if t.not_before <= time.monotonic()]
            if not ready:
                return
            if not worker.alive():
                workers[i] = worker = spawn(spawned)
                spawned += 1
            queue.remove(ready[0])
            worker.submit(ready[0], _job(ready[0], course, problem_set, scratch, template_db, options,
                                         cell_timeout))

    try:
        while queue or any(w.task for w in workers):
            finished = []
            for worker in workers:
                result = _poll(worker, options, problem_set) if worker.task is not None else None
                if result is not None:
                    finished.append((worker.task, result))
                    worker.task = None
            hand_out()  # before merging, so the workers grade while the results are written
            for task, result in finished:
                if result["status"] == "infrastructure" and task.attempts <= options.retries:
                    task.not_before = time.monotonic() + 2.0 * task.attempts  # back off, then retry
                    ledger.log("retry", problem_set=problem_set, student=task.student,
                               attempt=task.attempts, reason=result.get("reason", "")[:500])
                    queue.append(task)
                    continue
                records[task.student] = _merge(course, ledger, result, task.attempts, options.force)
                bar.update(1)
                bar.set_postfix_str(f"{task.student}: {records[task.student]['status']}")
            if not finished:
                time.sleep(_POLL_SECONDS)
    finally:
        for worker in workers:  # stop them all first, then wait: they wind down in parallel
            if worker.task is not None:
                worker.kill()
            else:
                worker.stop()
        for worker in workers:
            worker.wait()
        bar.close()
    return records


def consistency_problems(course: Course, problem_set: str, students: list[str]) -> list[str]:
    """Every submission must have a ledger record, and graded/failed ones a full, matching set of grades."""
    from nbgrader.api import Gradebook, MissingEntry

    ledger = Ledger(ledger_path(course))
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
            try:
                submission = gb.find_submission(problem_set, student)
            except MissingEntry:
                problems.append(f"{student}: ledger says {record['status']} but the gradebook has no submission")
                continue
            for nb in submission.notebooks:
                for grade in nb.grades:
                    key = f"{nb.name}/{grade.name}"
                    expected = record["parts"].get(key, {}).get("auto_score")
                    kind = record["parts"].get(key, {}).get("kind")
                    if kind == "autograded" and grade.auto_score is None:
                        problems.append(f"{student}: {key} has no autograde score")
                    elif expected is not None and (grade.auto_score is None
                                                   or abs(grade.auto_score - expected) > _TOLERANCE):
                        problems.append(f"{student}: {key} is {grade.auto_score} in the gradebook, "
                                        f"{expected} in the ledger")
            if record["status"] == "graded" and not course.autograded_dir(problem_set, student).is_dir():
                problems.append(f"{student}: graded but the autograded notebook is missing")
    return problems
