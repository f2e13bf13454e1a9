"""Feedback pages with nbgrader's ``generate_feedback``: hidden tests removed, math rendered offline.

Two things nbgrader's defaults get wrong for this course, fixed by configuration and a post-step:

- the feedback page shows the source of hidden tests unless ``ClearHiddenTests`` is among
  ``GenerateFeedback.preprocessors``; we add it (after ``GetGrades``, which reads the scores);
- the feedback template loads MathJax 2.7 from a CDN (hard-coded ``{{ mathjax() }}``), so math shows as
  raw TeX offline. After nbgrader writes the HTML, :func:`localize_mathjax` replaces that block with
  a MathJax 3 configuration and a ``<script>`` pointing to ``mathjax/tex-chtml.js`` next to the page,
  and copies the needed MathJax 3 files (from the ``mathjax`` package, django-static-mathjax) there.
  Each student's feedback folder is self-contained, so it still renders after being handed back.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

__all__ = ["generate_feedback", "localize_mathjax", "mathjax_source", "CDN_PATTERN"]

_BLOCK = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.DOTALL)
CDN_PATTERN = re.compile(r"""(src|href)\s*=\s*["'](https?:)?//[^"']*mathjax""", re.IGNORECASE)
_LOCAL = """<!-- MathJax 3, local copy (no network) -->
<script>
window.MathJax = {tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']],
                        processEscapes: true, processEnvironments: true},
                  options: {ignoreHtmlClass: 'tex2jax_ignore', processHtmlClass: 'tex2jax_process'}};
</script>
<script id="MathJax-script" async src="mathjax/tex-chtml.js"></script>"""


def mathjax_source() -> Path:
    """The ``es5`` folder of the MathJax 3 files shipped by the ``mathjax`` package."""
    import mathjax
    return Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"


def _copy_mathjax(dest: Path) -> None:
    es5 = mathjax_source()
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(es5 / "tex-chtml.js", dest / "tex-chtml.js")
    for sub in ("output/chtml/fonts/woff-v2", "input/tex/extensions"):
        target = dest / sub
        if not target.exists():
            shutil.copytree(es5 / sub, target)


def localize_mathjax(html_path: Path) -> None:
    """Point one feedback page at local MathJax 3 files (copied next to it); fail if the template changed."""
    html = html_path.read_text()
    new, count = _BLOCK.subn(lambda _: _LOCAL, html)
    if count != 1:
        raise RuntimeError(f"{html_path}: expected nbgrader's MathJax block once, found it {count} times; "
                           f"the feedback template changed")
    if CDN_PATTERN.search(new):
        raise RuntimeError(f"{html_path}: still loads MathJax from the network")
    html_path.write_text(new)
    _copy_mathjax(html_path.parent / "mathjax")


def generate_feedback(course, problem_set: str, students: list[str] | None = None) -> list[Path]:
    """nbgrader feedback for every autograded submission (or ``students``); return the HTML pages."""
    from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
    from nbgrader.preprocessors import ClearHiddenTests, GetGrades

    api = course.api({"GenerateFeedback": {"preprocessors": [GetGrades, CSSHTMLHeaderPreprocessor,
                                                             ClearHiddenTests]}})
    students = students or course.autograded_students(problem_set)
    pages = []
    for student in students:
        outcome = api.generate_feedback(problem_set, student, force=True)
        if not outcome.get("success"):
            raise RuntimeError(f"generate_feedback failed for {student}: {outcome.get('error')}\n"
                               f"{outcome.get('log', '')[-2000:]}")
        for page in sorted(course.feedback_dir(problem_set, student).glob("*.html")):
            localize_mathjax(page)
            pages.append(page)
    return pages
