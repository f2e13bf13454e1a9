"""Benchmark: ``normcourse autograde`` (sandboxed) versus plain serial ``nbgrader autograde``, and the
local pool versus a Dask cluster.

Generates N submissions of one problem set (a third solution copies, a third untouched releases, a
third solutions with one solution cell replaced by its release stub), puts the same files into two
temp copies of the course, and times, on the same machine in the same run:

- ``normcourse autograde PS --workers W`` (learner code in the sandbox, out-of-kernel re-check, merge,
  ledger; the time includes seeding the gradebooks), and
- ``nbgrader autograde PS`` (one process, no sandbox, submissions one after another; the assignment is
  put in its gradebook beforehand with ``nbgrader generate_assignment``, not timed);
- with ``--unsandboxed``, also ``normcourse autograde --no-sandbox`` (what the sandbox costs);
- with ``--dask``, instead: ``normcourse autograde --workers W`` against the same on a Dask cluster of
  W single-threaded worker processes on 127.0.0.1 started by this script (``--scheduler``): what Dask
  adds per submission;
- with ``--merge``, instead: one ``autograde`` in this process with its ``merge`` step timed. Every
  result passes through the orchestrator's merge (gradebook rows, ledger, the autograded folder), one
  at a time, whatever the number of workers, so the merge time per submission bounds the throughput
  of any cluster: it can keep at most (worker seconds per submission) / (merge seconds per
  submission) workers busy.

Prints seconds per submission for each run and the ratios, and checks that every run gave every
submission the same autograded total (exit status 1 if not). Not a test; the machine's load shows in
the numbers, so the load average is printed alongside.

Usage: ``.venv/bin/python scripts/benchmark_autograde.py [--problem-set ps01_scopes] [--count 40]
[--workers 2] [--unsandboxed | --dask | --merge]``
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def make_course(folder: Path, problem_set: str) -> None:
    folder.mkdir(parents=True)
    shutil.copy2(REPO / "nbgrader_config.py", folder / "nbgrader_config.py")
    shutil.copytree(REPO / "solutions" / problem_set, folder / "solutions" / problem_set)
    (folder / "grading").mkdir()


def submissions(problem_set: str, count: int) -> dict[str, nbformat.NotebookNode]:
    solution = nbformat.read(REPO / "solutions" / problem_set / f"{problem_set}.ipynb", as_version=4)
    release = nbformat.read(REPO / "exercises" / problem_set / f"{problem_set}.ipynb", as_version=4)
    stubs = {c.metadata["nbgrader"]["grade_id"]: c.source for c in release.cells
             if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code"}
    out = {}
    for i in range(count):
        kind = ("solution", "release", "partial")[i % 3]
        if kind == "solution":
            nb = solution
        elif kind == "release":
            nb = release
        else:
            nb = copy.deepcopy(solution)
            ids = sorted(stubs)
            broken = ids[i % len(ids)]
            for c in nb.cells:
                if c.metadata.get("nbgrader", {}).get("grade_id") == broken:
                    c.source = stubs[broken]
        out[f"s{i:02d}_{kind}"] = nb
    return out


def place(folder: Path, problem_set: str, subs: dict) -> None:
    for student, nb in subs.items():
        target = folder / "grading" / "submitted" / student / problem_set
        target.mkdir(parents=True)
        nbformat.write(nb, target / f"{problem_set}.ipynb")


def run(cmd, cwd) -> float:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("NORMCOURSE_GRADING_DIR", None)
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        print(f"warning: {' '.join(map(str, cmd))} exited {done.returncode}\n{done.stdout[-1500:]}\n"
              f"{done.stderr[-1500:]}", file=sys.stderr)
    return seconds


def auto_scores(course: Path, problem_set: str, students) -> dict[str, float | None]:
    """Each student's total autograded score in the course's gradebook (None: no grades)."""
    from nbgrader.api import Gradebook, MissingEntry

    scores = {}
    with Gradebook(f"sqlite:///{course / 'grading' / 'gradebook.db'}") as gb:
        for student in students:
            try:
                submission = gb.find_submission(problem_set, student)
            except MissingEntry:
                scores[student] = None
                continue
            grades = [g.auto_score for nb in submission.notebooks for g in nb.grades if g.auto_score is not None]
            scores[student] = sum(grades) if grades else None
    return scores


class DaskCluster:
    """A scheduler and ``workers`` single-threaded worker processes on 127.0.0.1."""

    def __init__(self, folder: Path, workers: int):
        import json
        self.procs = []
        spec = folder / "scheduler.json"
        self._spawn(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(spec)], folder / "scheduler.log")
        while not spec.exists():
            time.sleep(0.1)
        self.address = json.loads(spec.read_text())["address"]
        for i in range(workers):
            self._spawn(["worker", self.address, "--nthreads", "1", "--nworkers", "1", "--no-nanny",
                         "--no-dashboard", "--local-directory", str(folder / f"w{i}")], folder / f"w{i}.log")
        from distributed import Client
        with Client(self.address) as client:
            client.wait_for_workers(workers, timeout=120)

    def _spawn(self, args, log):
        self.procs.append(subprocess.Popen([BIN / "dask", *args], stdout=open(log, "wb"), stderr=subprocess.STDOUT))

    def close(self):
        for proc in self.procs:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem-set", default="ps01_scopes")
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--unsandboxed", action="store_true", help="also time normcourse --no-sandbox")
    parser.add_argument("--dask", action="store_true", help="local pool against a local Dask cluster")
    parser.add_argument("--merge", action="store_true", help="time the orchestrator's merge of each result")
    args = parser.parse_args()

    subs = submissions(args.problem_set, args.count)
    if args.merge:
        return merge_benchmark(args, subs)
    ours = [BIN / "normcourse", "autograde", args.problem_set, "--workers", str(args.workers), "--no-progress"]
    runs: dict[str, float] = {}
    scores: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="normcourse-bench-") as tmp:
        names = (["local pool", "Dask cluster"] if args.dask else
                 ["plain serial nbgrader", "normcourse (sandboxed)"] + (["normcourse --no-sandbox"]
                                                                       if args.unsandboxed else []))
        folders = {name: Path(tmp) / f"course{i}" for i, name in enumerate(names)}
        for folder in folders.values():
            make_course(folder, args.problem_set)
            place(folder, args.problem_set, subs)
        cluster = DaskCluster(Path(tmp), args.workers) if args.dask else None
        load_before = os.getloadavg()
        try:
            for name, folder in folders.items():
                if name == "plain serial nbgrader":
                    run([BIN / "nbgrader", "generate_assignment", args.problem_set, "--force"], folder)
                    runs[name] = run([BIN / "nbgrader", "autograde", args.problem_set], folder)
                else:
                    extra = (["--scheduler", cluster.address] if name == "Dask cluster" else
                             ["--no-sandbox"] if name == "normcourse --no-sandbox" else [])
                    runs[name] = run(ours + extra + ["--course", str(folder)], folder)
                scores[name] = auto_scores(folder, args.problem_set, subs)
        finally:
            if cluster is not None:
                cluster.close()
        load_after = os.getloadavg()

    n = len(subs)
    print(f"{n} submissions of {args.problem_set} on {os.cpu_count()} CPUs, {args.workers} workers "
          f"(load average before {load_before[0]:.1f}, after {load_after[0]:.1f})")
    for name, seconds in runs.items():
        print(f"{name:<28} {seconds:7.1f} s  = {seconds / n:5.3f} s/submission")
    first, *others = names
    for name in others:
        print(f"ratio ({first} / {name}): {runs[first] / runs[name]:.2f}x;  "
              f"difference {(runs[name] - runs[first]) / n:+.3f} s/submission")
    differ = {s: {name: scores[name][s] for name in names} for s in subs
              if len({scores[name][s] for name in names}) > 1}
    if differ:
        print(f"GRADES DIFFER: {differ}")
        return 1
    print(f"grades agree for all {n} submissions (total autograded points "
          f"{sum(v or 0 for v in scores[names[-1]].values()):g})")
    return 0


def merge_benchmark(args, subs: dict) -> int:
    """Grade ``subs`` once, in this process, timing every call of the orchestrator's ``merge``."""
    from normcourse.grading import autograde as orchestrator
    from normcourse.grading.course import Course

    durations: list[float] = []
    merge = orchestrator.merge

    def timed_merge(*call_args, **kwargs):
        start = time.perf_counter()
        try:
            return merge(*call_args, **kwargs)
        finally:
            durations.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory(prefix="normcourse-bench-") as tmp:
        folder = Path(tmp) / "course"
        make_course(folder, args.problem_set)
        place(folder, args.problem_set, subs)
        load_before = os.getloadavg()
        orchestrator.merge = timed_merge
        try:
            start = time.perf_counter()
            summary = orchestrator.autograde(Course(folder), args.problem_set,
                                             orchestrator.AutogradeOptions(workers=args.workers, progress=False))
            total = time.perf_counter() - start
        finally:
            orchestrator.merge = merge
        load_after = os.getloadavg()
    n = len(subs)
    per_worker = total * args.workers / n
    merged = sorted(durations)
    mean = sum(merged) / len(merged)
    print(f"{n} submissions of {args.problem_set} on {os.cpu_count()} CPUs, {args.workers} workers "
          f"(load average before {load_before[0]:.1f}, after {load_after[0]:.1f}); counts {summary.counts}")
    print(f"batch {total:.1f} s = {total / n:.3f} s/submission; {per_worker:.2f} worker-seconds per submission")
    print(f"merge: {len(merged)} calls, mean {1000 * mean:.1f} ms, median {1000 * merged[len(merged) // 2]:.1f} ms, "
          f"max {1000 * merged[-1]:.1f} ms; {sum(merged):.1f} s in all ({100 * sum(merged) / total:.0f}% of the batch)")
    print(f"one orchestrator merges at most {1 / mean:.1f} submissions/s: enough to keep about "
          f"{per_worker / mean:.0f} workers as fast as these busy")
    return 0 if len(merged) == n else 1


if __name__ == "__main__":
    sys.exit(main())
