"""A shared gradebook on a real PostgreSQL server: seeding, the merge, the consistency check, export and
report, with a teaching assistant writing manual grades while an autograde batch merges.

The module starts its own server (Debian's PostgreSQL binaries): ``initdb`` into a fresh folder, and
``pg_ctl start`` listening only on a Unix socket in that folder (no TCP port). PostgreSQL refuses to run
as root, so under root the server runs as ``nobody`` (``setpriv``); it is stopped at the end. The module
is skipped only where no PostgreSQL binaries exist.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest

from grading_helpers import PROBLEM_SET, make_course, solution_nb, submit


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="module")
def postgres():
    """A private PostgreSQL server; yields ``make_url(name)``, which creates a database and returns its URL."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine: apt-get install postgresql")
    pytest.importorskip("psycopg")
    import psycopg

    prefix: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="normcourse-pg-"))  # short path: a socket path is limited to 107 bytes
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv to start PostgreSQL as an unprivileged user")
        prefix = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
        shutil.chown(folder, "nobody", "nogroup")
    folder.chmod(0o700)
    data = folder / "data"

    def run(*args):
        return subprocess.run(prefix + [str(a) for a in args], cwd=folder, capture_output=True, text=True, timeout=120)

    init = run(bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8",
               "--locale=C.UTF-8")
    assert init.returncode == 0, init.stdout + init.stderr
    options = (f"-c listen_addresses= -c unix_socket_directories={folder} -c fsync=off -c full_page_writes=off "
               f"-c deadlock_timeout=3s")  # margin on a loaded machine for the deadlock test
    start = run(bindir / "pg_ctl", "-D", data, "-l", folder / "server.log", "-w", "-t", "120", "-o", options, "start")
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        def make_url(name: str) -> str:
            with psycopg.connect(host=str(folder), user="postgres", dbname="postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
                conn.execute(f'CREATE DATABASE "{name}"')
            return f"postgresql+psycopg://postgres@/{name}?host={folder}"
        yield make_url
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def _course_on(url: str, folder: Path, monkeypatch):
    """The fixture course with its gradebook on ``url``, configured in its own nbgrader_config.py."""
    from normcourse.grading.course import Course

    monkeypatch.delenv("NORMCOURSE_GRADING_DIR", raising=False)  # grading/ inside the course, as the config says
    make_course(folder, release_it=False)
    with open(folder / "nbgrader_config.py", "a") as f:
        f.write(f"\nc.CourseDirectory.db_url = {url!r}\n")
    course = Course(folder)
    assert course.db_url == url and course.grading_dir == folder / "grading"
    return course


def test_a_new_server_gradebook_is_stamped_once_with_nbgraders_schema(postgres):
    from alembic.script import ScriptDirectory
    from nbgrader.api import Base, Gradebook
    from nbgrader.dbutil import ALEMBIC_DIR
    from sqlalchemy import create_engine, inspect, text

    from normcourse.grading.autograde import stamp_new_gradebook

    url = postgres("stamp")
    assert stamp_new_gradebook(url)
    assert not stamp_new_gradebook(url)  # never touches a database that has tables
    with Gradebook(url) as gb:
        gb.add_student("ada")
        version = gb.db.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert version == ScriptDirectory(ALEMBIC_DIR).get_heads()[0]
    engine = create_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    finally:
        engine.dispose()


def test_a_merge_that_deadlocks_with_a_grader_is_retried_and_loses_nothing(postgres, tmp_path, monkeypatch):
    """A grader's transaction holds the submission's last grade row and then wants its first one, while the
    merge holds the first (it locks them in id order) and waits for the last: a deadlock. The server aborts
    the merge's transaction (the grader's session waits far longer before checking), the merge rolls back,
    retries once the grader has committed, and both the autograded scores and the grader's are there."""
    import threading

    import psycopg
    from nbgrader.api import Gradebook

    from normcourse.grading.autograde import _seeded, merge
    from normcourse.grading.ledger import Ledger
    from normcourse.grading.result import GradeResult, PartGrade

    course = _course_on(postgres("deadlock"), tmp_path / "course", monkeypatch)
    ledger = Ledger(course)
    _seeded(course, PROBLEM_SET, ledger)
    with Gradebook(course.db_url) as gb, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's own SQLAlchemy notice
        gb.add_student("eve")
        grades = {g.name: g.id for g in gb.add_submission(PROBLEM_SET, "eve").notebooks[0].grades}
    first, last = min(grades.values()), max(grades.values())
    socket = course.db_url.split("host=")[1]
    grader, errors = psycopg.connect(host=socket, user="postgres", dbname="deadlock"), []
    grader.execute("SET deadlock_timeout = '60s'")
    grader.execute("UPDATE grade SET manual_score = 0.75 WHERE id = %s", (last,))  # holds the last row

    def grader_continues():
        try:  # wait until the merge waits for the last row, then want the first
            with psycopg.connect(host=socket, user="postgres", dbname="deadlock", autocommit=True) as watch:
                deadline = time.monotonic() + 120  # (autocommit: the activity view is cached per transaction)
                while not watch.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                        ).fetchone()[0]:
                    if time.monotonic() > deadline:
                        grader.rollback()  # frees the merge; the assertions below then fail
                        raise TimeoutError("the merge never waited for the grader's row lock")
                    time.sleep(0.01)
            grader.execute("UPDATE grade SET extra_credit = 0.5 WHERE id = %s", (first,))
            grader.commit()
        except Exception as exc:  # recorded: the assertion below names it
            errors.append(exc)

    thread = threading.Thread(target=grader_continues)
    thread.start()
    parts = [PartGrade(PROBLEM_SET, gid, "autograded", pts, score=pts)
             for gid, pts in {"scale_test": 1.0, "center_shape": 1.0, "center_test": 2.0}.items()]
    parts.append(PartGrade(PROBLEM_SET, "explain_centering", "manual", 1.0))
    record = merge(course, ledger, GradeResult(PROBLEM_SET, "eve", "graded", parts=parts), attempts=1, force=False)
    thread.join(timeout=120)
    grader.close()
    assert errors == []
    assert record["status"] == "graded"
    retries = [e for e in ledger.events if e["event"] == "gradebook_retry"]
    assert len(retries) == 1 and "deadlock" in retries[0]["error"].lower()
    with Gradebook(course.db_url) as gb:
        got = {g.name: (g.auto_score, g.manual_score, g.extra_credit)
               for g in gb.find_submission_notebook(PROBLEM_SET, PROBLEM_SET, "eve").grades}
    by_id = {v: k for k, v in grades.items()}
    expected = {"scale_test": 1.0, "center_shape": 1.0, "center_test": 2.0, "explain_centering": None}
    for name, (auto, manual, extra) in got.items():
        assert auto == expected[name], name
        assert manual == (0.75 if name == by_id[last] else None), name
        assert extra == (0.5 if name == by_id[first] else None), name


#: The teaching assistant: writes, through nbgrader's Gradebook API as formgrader does, a manual score on
#: the written answer and extra credit on an autograded cell of every submission, round after round (a
#: new value each round), and before each write checks that its previous write is still there.
TEACHING_ASSISTANT = r"""
import json, os, sys, time, warnings
from nbgrader.api import Gradebook
url, problem_set, students, ready, stop, out = sys.argv[1], sys.argv[2], sys.argv[3].split(","), *sys.argv[4:]
warnings.filterwarnings("ignore")
last, lost, merged_seen, rounds = {}, [], [], 0
while True:
    stopping = os.path.exists(stop)
    rounds += 1
    with Gradebook(url) as gb:
        merged = 0
        for student in students:
            answer = gb.find_grade("explain_centering", problem_set, problem_set, student)
            test = gb.find_grade("center_test", problem_set, problem_set, student)
            seen = (answer.manual_score, test.extra_credit)
            if student in last and seen != last[student]:
                lost.append([student, rounds, list(last[student]), list(seen)])
            merged += test.auto_score is not None
            value = (round(0.25 + 0.001 * rounds, 3), round(0.5 + 0.001 * rounds, 3))
            answer.manual_score, answer.needs_manual_grade = value[0], False
            test.extra_credit = value[1]
            gb.db.commit()
            last[student] = value
        merged_seen.append(merged)
    if rounds == 1:
        open(ready, "w").close()
    if stopping:
        break
    time.sleep(0.005)
json.dump({"last": last, "lost": lost, "merged_seen": merged_seen, "rounds": rounds}, open(out, "w"))
"""


@pytest.mark.slow
def test_autograde_batch_and_a_teaching_assistant_lose_no_grade(postgres, tmp_path, monkeypatch, capsys):
    """An autograde batch (2 local workers, sandboxed) merges 4 submissions into PostgreSQL while another
    process writes manual scores and extra credit on the same submissions, on the same grade rows the
    merge writes (``center_test``). Afterwards: every autograded score is the batch's, every manual
    score and extra credit is the assistant's last, no write of the assistant was ever overwritten in
    between, the consistency check is clean, and ``normcourse export`` shows both in each score."""
    from nbgrader.api import Gradebook

    from normcourse.cli import main
    from normcourse.grading.autograde import AutogradeOptions, _seeded, autograde
    from normcourse.grading.ledger import Ledger, consistency_problems
    from normcourse.grading.report import write_report

    course = _course_on(postgres("batch"), tmp_path / "course", monkeypatch)
    students = ["ann", "ben", "cat", "dan"]
    for student in students:
        submit(course, student, solution_nb())
    _seeded(course, PROBLEM_SET, Ledger(course))  # what the batch does first: stamp and seed the server gradebook
    with Gradebook(course.db_url) as gb, warnings.catch_warnings():  # the assistant's rows exist before the batch
        warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's own SQLAlchemy notice
        for student in students:
            gb.add_student(student)
            gb.add_submission(PROBLEM_SET, student)

    files = {name: tmp_path / name for name in ("ready", "stop", "assistant.json")}
    assistant = subprocess.Popen([sys.executable, "-c", TEACHING_ASSISTANT, course.db_url, PROBLEM_SET,
                                  ",".join(students), *map(str, files.values())],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not files["ready"].exists():
            assert assistant.poll() is None, assistant.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the assistant never finished a round"
            time.sleep(0.05)
        summary = autograde(course, PROBLEM_SET, AutogradeOptions(workers=2, cell_timeout=30, progress=False))
    finally:
        files["stop"].touch()
        _, stderr = assistant.communicate(timeout=120)
    assert assistant.returncode == 0, stderr[-3000:]
    report = json.loads(files["assistant.json"].read_text())

    assert summary.ok, (summary.counts, summary.problems)
    assert summary.counts == {"graded": 4}
    assert report["lost"] == []  # no manual score or extra credit was ever overwritten by a merge
    assert any(0 < m < len(students) for m in report["merged_seen"]), report["merged_seen"]  # it wrote mid-batch
    assert consistency_problems(course, PROBLEM_SET, students) == []

    with Gradebook(course.db_url) as gb:
        for student in students:
            nb = gb.find_submission_notebook(PROBLEM_SET, PROBLEM_SET, student)
            grades = {g.name: g for g in nb.grades}
            assert {k: grades[k].auto_score for k in ("scale_test", "center_shape", "center_test")} == \
                {"scale_test": 1, "center_shape": 1, "center_test": 2}, student
            manual, extra = report["last"][student]
            assert (grades["explain_centering"].manual_score, grades["center_test"].extra_credit) == (manual, extra)

    assert main(["export", PROBLEM_SET, "--course", str(course.root)]) == 0
    rows = {r["student_id"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert sorted(rows) == students
    for student in students:
        manual, extra = report["last"][student]
        row = rows[student]
        # raw score = autograded 4 + the assistant's manual score + extra credit; a lost grade of either kind
        # changes it (the values are distinct per round and not sums of one another)
        assert float(row["raw_score"]) == pytest.approx(4 + manual + extra, abs=1e-9), (student, row)
        assert (row["status"], row["needs_manual_grade"], row["sandboxed"]) == ("graded", "False", "True")
    page = write_report(course, PROBLEM_SET)
    assert "4 submissions" in page.read_text()
