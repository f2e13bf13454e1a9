"""A one-page grading report: score histogram, per-part pass rates, flagged submissions.

Read from the ledger (which mirrors the gradebook; :func:`normcourse.grading.ledger.consistency_problems`
checks that), written as ``report.html`` with two PNGs next to it in ``grading/reports/<PS>/``.
"Flagged" means: not graded (failed, conflict, infrastructure, refused), graded without the sandbox,
any review flag (suspicious code, a broken forbidden-shortcut rule, truncated output, a kernel that
died), or a part whose in-kernel test passed but whose out-of-kernel re-check failed.
"""

from __future__ import annotations

import html
from pathlib import Path

from .result import GradeResult

__all__ = ["part_pass_rates", "flagged", "write_report"]


def _result(record: dict) -> GradeResult:
    return GradeResult.from_json(record["result"])


def part_pass_rates(records: dict[str, dict]) -> dict[str, float]:
    """grade_id -> fraction of graded submissions with full points on that autograded part."""
    totals: dict[str, list[int]] = {}
    for record in records.values():
        if record["status"] not in ("graded", "failed"):
            continue
        for part in _result(record).parts:
            if part.kind == "autograded":
                full = part.score is not None and part.score >= part.max_score - 1e-9
                totals.setdefault(part.grade_id, []).append(int(full))
    return {k: sum(v) / len(v) for k, v in totals.items()}


def flagged(records: dict[str, dict]) -> dict[str, list[str]]:
    out = {}
    for student, record in sorted(records.items()):
        result = _result(record)
        reasons = []
        if record["status"] != "graded":
            reasons.append(f"{record['status']}: {record.get('reason', '')}")
        reasons += result.review_flags
        reasons += [f"{p.notebook}/{p.grade_id}: {p.reason}" for p in result.parts
                    if p.reason and p.in_kernel and p.recheck is False]
        if reasons:
            out[student] = reasons
    return out


#: A plain, readable style for the instructor's report plots (the book's own style lives in the book layer).
_REPORT_STYLE = {"axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False}


def write_report(course, problem_set: str, out_dir: Path | None = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .ledger import Ledger

    records = Ledger(course).of(problem_set)
    out_dir = Path(out_dir or course.grading_dir / "reports" / problem_set)
    out_dir.mkdir(parents=True, exist_ok=True)
    matplotlib.rcParams.update(_REPORT_STYLE)
    graded = {s: _result(r) for s, r in records.items() if r["status"] in ("graded", "failed")}
    max_score = max([r.max_score for r in graded.values()] + [1.0])
    unsandboxed = sum(not _result(r).sandboxed for r in records.values())

    fig, ax = plt.subplots(figsize=(6, 3.2))
    scores = [r.score for r in graded.values()]
    ax.hist(scores, bins=min(20, max(5, int(max_score) + 1)), range=(0, max_score), color="#4C72B0")
    ax.set_xlabel(f"autograded score (out of {max_score:g})")
    ax.set_ylabel("submissions")
    ax.set_title(f"{problem_set}: {len(graded)} graded submissions")
    fig.tight_layout()
    fig.savefig(out_dir / "histogram.png", dpi=110)
    plt.close(fig)

    rates = part_pass_rates(records)
    fig, ax = plt.subplots(figsize=(6, 0.35 * max(len(rates), 3) + 1))
    names = sorted(rates)
    ax.barh(names, [100 * rates[n] for n in names], color="#55A868")
    ax.set_xlim(0, 100)
    ax.set_xlabel("submissions with full points (%)")
    ax.invert_yaxis()
    ax.set_title("pass rate per autograded part")
    fig.tight_layout()
    fig.savefig(out_dir / "pass_rates.png", dpi=110)
    plt.close(fig)

    flags = flagged(records)
    rows = "".join(f"<tr><td>{html.escape(s)}</td><td>{'<br>'.join(html.escape(r) for r in reasons)}</td></tr>"
                   for s, reasons in flags.items()) or "<tr><td colspan=2>none</td></tr>"
    rate_rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{100 * rates[n]:.0f}%</td></tr>" for n in names)
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Grading report: {html.escape(problem_set)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{border-bottom:1px solid #ddd;
padding:.3em .6em;text-align:left;vertical-align:top}}table{{border-collapse:collapse}}</style></head><body>
<h1>Grading report: {html.escape(problem_set)}</h1>
<p>{len(records)} submissions: {len(graded)} graded or failed, {len(records) - len(graded)} not graded
(conflict, infrastructure or refused). Mean autograded score
{(sum(scores) / len(scores)) if scores else 0:.2f} / {max_score:g}.
{f"<strong>{unsandboxed} submission(s) were graded WITHOUT the sandbox.</strong>" if unsandboxed else
 "Every submission was graded in the sandbox."}</p>
<h2>Score histogram</h2><img src="histogram.png" alt="histogram of autograded scores">
<h2>Pass rate per part</h2><img src="pass_rates.png" alt="pass rate per autograded part">
<table><tr><th>part</th><th>full points</th></tr>{rate_rows}</table>
<h2>Flagged submissions ({len(flags)})</h2>
<table><tr><th>student</th><th>why</th></tr>{rows}</table>
</body></html>"""
    (out_dir / "report.html").write_text(page)
    return out_dir / "report.html"
