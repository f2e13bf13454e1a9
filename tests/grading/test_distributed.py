"""Grading on a real Dask cluster on 127.0.0.1: a ``dask scheduler`` and two ``dask worker`` processes
started by the test, each with its own scratch folder, grading a batch of mixed quality.

- the same batch graded locally and on the cluster gives the same gradebook;
- a worker killed mid-batch loses nothing: its submissions are graded elsewhere, each exactly once
  (one ledger record, no conflict), and the consistency check passes;
- a worker whose installed course package differs from the orchestrator's refuses every task with a
  clear message, and nothing is written to the gradebook.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from grading_helpers import PROBLEM_SET, make_course, solution_nb, submit, with_solution

pytestmark = pytest.mark.slow

DASK = Path(sys.executable).parent / "dask"
PACKAGE = Path(__import__("normcourse").__file__).parent


class Cluster:
    """A scheduler and named workers as separate processes; ``kill(name)`` ends one abruptly."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.file = folder / "scheduler.json"
        self.procs: dict[str, subprocess.Popen] = {}
        self._start("scheduler", [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--no-dashboard", "--scheduler-file", str(self.file)])
        deadline = time.monotonic() + 60
        while not self.file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.file.exists(), self.log("scheduler")
        self.address = json.loads(self.file.read_text())["address"]

    def _start(self, name: str, argv: list[str], env: dict | None = None) -> None:
        log = open(self.folder / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)

    def worker(self, name: str, env: dict | None = None) -> None:
        scratch = self.folder / f"scratch-{name}"
        scratch.mkdir()
        self._start(name, [str(DASK), "worker", self.address, "--nthreads", "1", "--nworkers", "1", "--no-nanny",
                           "--name", name, "--local-directory", str(scratch), "--no-dashboard"],
                    env={**os.environ, "TMPDIR": str(scratch), **(env or {})})

    def wait_for_workers(self, count: int) -> None:
        from distributed import Client
        with Client(self.address) as client:
            client.wait_for_workers(count, timeout=120)

    def kill(self, name: str) -> None:
        os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait()

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")[-3000:]

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _mixed_batch(course, n: int = 20) -> None:
    release = nbformat.read(course.release_dir(PROBLEM_SET) / f"{PROBLEM_SET}.ipynb", as_version=4)
    kinds = [solution_nb(), release, with_solution("center", "def center(x):\n    return x"),
             with_solution("scale", "import time\ntime.sleep(1.5)\ndef scale(x, factor):\n    return x * factor")]
    for i in range(n):
        submit(course, f"s{i:02d}", kinds[i % len(kinds)])


def _gradebook(course) -> dict:
    from nbgrader.api import Gradebook
    with Gradebook(course.db_url) as gb:
        return {(s.student.id, g.name): g.auto_score for s in gb.find_assignment(PROBLEM_SET).submissions
                for nb in s.notebooks for g in nb.grades}


def _options(**kwargs):
    from normcourse.grading.autograde import AutogradeOptions
    return AutogradeOptions(**{"cell_timeout": 30, "progress": False, **kwargs})


@pytest.fixture(scope="module")
def local_grades(tmp_path_factory):
    from normcourse.grading.autograde import autograde

    course = make_course(tmp_path_factory.mktemp("local"))
    _mixed_batch(course)
    summary = autograde(course, PROBLEM_SET, _options(workers=2))
    assert summary.ok, (summary.counts, summary.problems)
    return _gradebook(course)


def test_a_dask_cluster_grades_like_the_local_pool_and_survives_a_killed_worker(tmp_path, local_grades):
    from normcourse.grading.autograde import autograde
    from normcourse.grading.ledger import Ledger

    course = make_course(tmp_path / "course")
    _mixed_batch(course)
    cluster = Cluster(tmp_path)
    try:
        cluster.worker("a")
        cluster.worker("b")
        cluster.wait_for_workers(2)

        import threading
        killed = {}

        def kill_when_busy():  # kill worker "a" once it has graded a few and is in the middle of one
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                done = len(Ledger(course).records) if (course.grading_dir / "ledger.json").exists() else 0
                if done >= 4:
                    time.sleep(0.5)
                    cluster.kill("a")
                    killed["after"] = done
                    return
                time.sleep(0.2)
        killer = threading.Thread(target=kill_when_busy, daemon=True)
        killer.start()
        summary = autograde(course, PROBLEM_SET, _options(scheduler=cluster.address))
        killer.join()
    finally:
        cluster.close()
    assert "after" in killed, "the worker was never killed: the test did not test anything"
    assert summary.ok, (summary.counts, summary.problems)
    assert summary.counts == {"graded": 20}
    assert "Dask cluster" in summary.executor
    ledger = Ledger(course)
    assert len(ledger.of(PROBLEM_SET)) == 20
    assert not [e for e in ledger.events if e["event"] in ("overwrote", "conflict_kept")]
    assert _gradebook(course) == local_grades
    workers = {json.loads(json.dumps(r["result"]))["worker"] for r in ledger.of(PROBLEM_SET).values()}
    assert len(workers) >= 2  # both workers graded


def test_a_worker_with_another_course_version_refuses_its_tasks(tmp_path):
    from normcourse.grading.autograde import autograde

    course = make_course(tmp_path / "course")
    submit(course, "alice", solution_nb())
    other = tmp_path / "other" / "normcourse"
    shutil.copytree(PACKAGE, other, ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "reference" / "forward.py", "a") as f:
        f.write("\n# a different version of the course package\n")
    cluster = Cluster(tmp_path)
    try:
        cluster.worker("old", env={"PYTHONPATH": str(other.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")})
        cluster.wait_for_workers(1)
        summary = autograde(course, PROBLEM_SET, _options(scheduler=cluster.address, retries=1))
    finally:
        cluster.close()
    record = summary.records["alice"]
    assert record["status"] == "refused" and not summary.ok
    assert "course package" in record["reason"] and "install the same version" in record["reason"]
    assert record["attempts"] == 2
    from nbgrader.api import Gradebook, MissingEntry
    with Gradebook(course.db_url) as gb, pytest.raises(MissingEntry):
        gb.find_submission(PROBLEM_SET, "alice")
