"""``normcourse``: the learner's self-check and the instructor's grading pipeline (built on nbgrader).

Learner::

    normcourse check ps01_scopes.ipynb [--json] [--timeout S]

Instructor (run inside the course folder, or pass ``--course``)::

    normcourse release PS            # nbgrader generate_assignment --force, then a leak check
    normcourse collect PS LMS.zip    # LMS zip -> grading/submitted/<student>/PS/
    normcourse autograde PS --workers 2
    normcourse feedback PS           # feedback HTML, hidden tests removed, MathJax offline
    normcourse export PS             # grades CSV (quoted; with each submission's grading status)
    normcourse report PS             # histogram, per-part pass rates, flagged submissions

Exit status: 0 on success; 1 when something failed (a failing check, a leak, a rejected file, a
submission without grades); 2 on wrong usage or unreadable input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _course(args):
    from .grading.course import Course
    return Course(Path(args.course).resolve()) if args.course else Course.find()


def _limits(args):
    from .grading.limits import Limits
    return Limits(memory_mb=args.memory_mb, notebook_seconds=args.notebook_seconds)


def cmd_check(args) -> int:
    from .grading.selfcheck import self_check
    try:
        report = self_check(args.notebook, timeout=args.timeout, limits=_limits(args),
                            sandbox=False if args.no_sandbox else None)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), indent=1) if args.json else report.text())
    return 0 if report.all_passed else 1


def cmd_release(args) -> int:
    from .grading.release import check_release, release
    course = _course(args)
    leaks = check_release(course, args.problem_set) if args.check_only else release(course, args.problem_set)
    if leaks:
        print(f"LEAK: {len(leaks)} problem(s) in the release of {args.problem_set}:")
        for leak in leaks:
            print(f"  {leak}")
        return 1
    print(f"released {args.problem_set} to {course.release_dir(args.problem_set)}: no solution, hidden-test "
          f"or rubric text found")
    return 0


def cmd_collect(args) -> int:
    from .grading.collect import collect_zip
    try:
        report = collect_zip(_course(args), args.problem_set, args.zip, pattern=args.pattern,
                             overwrite=True if args.overwrite else None)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.text())
    return 1 if report.rejected else 0


def cmd_autograde(args) -> int:
    from .grading.autograde import AutogradeOptions, autograde
    from .grading.result import GradeResult
    from .grading.sandbox import SandboxUnavailable
    options = AutogradeOptions(workers=args.workers, scheduler=args.scheduler, students=args.student or None,
                               cell_timeout=args.timeout, force=args.force, regrade=args.regrade,
                               retries=args.retries, limits=_limits(args), sandbox=not args.no_sandbox,
                               progress=not args.no_progress)
    if args.no_sandbox:
        print("WARNING: grading WITHOUT the sandbox (--no-sandbox): learner code can read and write what "
              "this user can; every record of this run says so.", file=sys.stderr)
    try:
        summary = autograde(_course(args), args.problem_set, options)
    except (SandboxUnavailable, BlockingIOError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"graded on: {summary.executor or 'nothing to grade'}")
    for student, record in sorted(summary.records.items()):
        result = GradeResult.from_json(record["result"])
        line = f"{student}: {record['status']} {result.score:g}/{result.max_score:g}"
        if record.get("reason"):
            line += f" ({record['reason'][:200]})"
        if not result.sandboxed:
            line += " [NOT SANDBOXED]"
        if result.flags:
            line += f" [flags: {'; '.join(result.flags)[:200]}]"
        print(line)
    if summary.skipped:
        print(f"unchanged since last grading (skipped): {', '.join(summary.skipped)}")
    print("counts: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items())))
    for problem in summary.problems:
        print(f"INCONSISTENT: {problem}")
    return 0 if summary.ok else 1


def cmd_feedback(args) -> int:
    from .grading.feedback import generate_feedback
    pages = generate_feedback(_course(args), args.problem_set, args.student or None)
    for page in pages:
        print(page)
    return 0


def cmd_export(args) -> int:
    from .grading.export import export_csv
    try:
        text = export_csv(_course(args), args.problem_set, args.output, args.student)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.output:
        sys.stdout.write(text)
    return 0


def cmd_report(args) -> int:
    from .grading.report import write_report
    print(write_report(_course(args), args.problem_set, args.output))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="normcourse", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_text, course=True):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        if course:
            p.add_argument("--course", help="course folder (default: found from the working directory)")
        p.add_argument("--memory-mb", type=int, default=2048, help="memory cap of learner code (MiB)")
        p.add_argument("--notebook-seconds", type=int, default=180,
                       help="time budget for running a whole notebook (cells not reached are scored by the re-check)")
        return p

    p = add("check", cmd_check, "self-check a notebook: run it and compare with the reference", course=False)
    p.add_argument("notebook")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--timeout", type=int, default=60, help="seconds per cell and per checked call")
    p.add_argument("--no-sandbox", action="store_true", help="run without the sandbox even where one can start")

    p = add("release", cmd_release, "generate the release with nbgrader and check it for leaks")
    p.add_argument("problem_set")
    p.add_argument("--check-only", action="store_true", help="only check the existing release")

    p = add("collect", cmd_collect, "unpack an LMS zip of notebooks into grading/submitted/ (nbgrader zip_collect "
                                    "with safe plugins)")
    p.add_argument("problem_set")
    p.add_argument("zip")
    p.add_argument("--pattern", help="regex with a named group 'student_id' applied to each file name "
                                     "(default: SubmissionCollector.named_regexp in nbgrader_config.py, else Canvas names)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace differing submissions (old ones kept in grading/replaced/); "
                        "default: SubmissionCollector.overwrite in nbgrader_config.py, else no")

    p = add("autograde", cmd_autograde, "autograde submissions in parallel, learner code sandboxed")
    p.add_argument("problem_set")
    p.add_argument("--workers", type=int, default=2, help="local worker processes")
    p.add_argument("--scheduler", help="grade on a Dask cluster: its scheduler address, e.g. tcp://host:8786")
    p.add_argument("--no-sandbox", action="store_true",
                   help="grade without the sandbox where none can start (recorded for every submission)")
    p.add_argument("--student", action="append", help="only this student (repeatable)")
    p.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: course config)")
    p.add_argument("--retries", type=int, default=2, help="retries after infrastructure errors")
    p.add_argument("--force", action="store_true", help="overwrite existing grades that differ (logged)")
    p.add_argument("--regrade", action="store_true", help="grade again even if unchanged since last time")
    p.add_argument("--no-progress", action="store_true")

    p = add("feedback", cmd_feedback, "feedback HTML (hidden tests removed, MathJax offline)")
    p.add_argument("problem_set")
    p.add_argument("--student", action="append")

    p = add("export", cmd_export, "grades as CSV (nbgrader export with a quoting plugin) with each submission's "
                                  "grading status")
    p.add_argument("problem_set", nargs="?", help="only this problem set (default: all)")
    p.add_argument("-o", "--output", help="write here (default: standard output)")
    p.add_argument("--student", action="append", help="only this student (repeatable)")

    p = add("report", cmd_report, "grade histogram, per-part pass rates and flagged submissions (PNG + HTML)")
    p.add_argument("problem_set")
    p.add_argument("-o", "--output")
    return parser


def main(argv: list[str] | None = None) -> int:
    import logging
    import warnings

    from .grading.startup import skip_unused_format_checkers
    skip_unused_format_checkers()
    args = build_parser().parse_args(argv)
    logging.getLogger("traitlets").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's own SQLAlchemy notice
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
