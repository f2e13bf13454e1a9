"""Benchmark: ``normcourse autograde --workers 2`` versus plain serial ``nbgrader autograde``.

Generates N submissions of one problem set (a third solution copies, a third untouched releases, a
third solutions with one solution cell replaced by its release stub), puts the same files into two
temp copies of the course, and times, on the same machine in the same run:

- ``normcourse autograde PS --workers W`` (isolated workers, out-of-kernel re-check, merge, ledger;
  the time includes seeding the gradebooks), and
- ``nbgrader autograde PS`` (one process, submissions one after another; the assignment is put in its
  gradebook beforehand with ``nbgrader generate_assignment``, not timed).

Prints seconds per submission for both and their ratio, and checks that both gave every submission
the same autograded total (exit status 1 if not). Not a test; the machine's load shows in the
numbers, so report ``uptime`` alongside.

Usage: ``.venv/bin/python scripts/benchmark_autograde.py [--problem-set ps01_scopes] [--count 40] [--workers 2]``
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem-set", default="ps01_scopes")
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    subs = submissions(args.problem_set, args.count)
    with tempfile.TemporaryDirectory(prefix="normcourse-bench-") as tmp:
        ours, plain = Path(tmp) / "ours", Path(tmp) / "plain"
        for folder in (ours, plain):
            make_course(folder, args.problem_set)
            place(folder, args.problem_set, subs)
        run([BIN / "nbgrader", "generate_assignment", args.problem_set, "--force"], plain)
        load_before = os.getloadavg()
        t_plain = run([BIN / "nbgrader", "autograde", args.problem_set], plain)
        t_ours = run([BIN / "normcourse", "autograde", args.problem_set, "--workers", str(args.workers),
                      "--no-progress", "--course", str(ours)], ours)
        load_after = os.getloadavg()
        plain_scores, our_scores = (auto_scores(c, args.problem_set, subs) for c in (plain, ours))

    n = len(subs)
    print(f"{n} submissions of {args.problem_set} on {os.cpu_count()} CPUs "
          f"(load average before {load_before[0]:.1f}, after {load_after[0]:.1f})")
    print(f"plain serial nbgrader autograde:            {t_plain:7.1f} s  = {t_plain / n:5.2f} s/submission")
    print(f"normcourse autograde --workers {args.workers} (+re-check): {t_ours:7.1f} s  = {t_ours / n:5.2f} s/submission")
    print(f"ratio (plain / normcourse): {t_plain / t_ours:.2f}x")
    differ = {s: (plain_scores[s], our_scores[s]) for s in subs if plain_scores[s] != our_scores[s]}
    if differ:
        print(f"GRADES DIFFER (plain, normcourse): {differ}")
        return 1
    print(f"grades agree for all {n} submissions (total autograded points "
          f"{sum(v or 0 for v in our_scores.values()):g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
