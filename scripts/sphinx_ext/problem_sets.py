"""Problem-set pages whose parts, points and download come from the release notebook (Sphinx extension).

A problem set's page, ``problem_sets/<name>.md``, is prose written by hand (what the set covers, which
chapters it goes with) around three directives that read the nbgrader *release*
``exercises/<name>/<name>.ipynb``, so that nothing about parts or points is typed twice::

    ```{problem-set-download}
    ```
    ```{problem-set-parts}
    ```
    ```{problem-set-check}
    ```

- ``problem-set-download``: a download link to the release notebook. Sphinx's download machinery
  copies the file into the built site (``_build/html/_downloads/<hash>/<name>.ipynb``) and records it
  as a dependency of the page, so a new release re-renders the page.
- ``problem-set-parts``: one table row per graded cell (its ``grade_id`` and kind, what it checks, its
  points) under a row per section of the notebook, and the totals, built from the cells' nbgrader
  metadata and their text: the section heading above the cell, the leading comment of a test cell, the
  function it calls and that function's docstring, the questions a written answer replies to.
- Adding a set (say ``ps07_batchnorm_practice``): release it into ``exercises/``, copy an existing page
  to ``problem_sets/ps07_batchnorm_practice.md``, and rewrite its title and prose. Nothing else.
- ``problem-set-check``: how to run ``normcourse check`` on the notebook.

In a translated edition (scripts/sphinx_ext/edition.py) the sentences and labels written here are
templates translated from the ``_generated`` catalog (numbers, names and sizes filled in afterwards, so
a new release never invalidates a translation); what comes from the notebook (section names, what a
cell checks) is text of the page, translated in the page's own catalog.

Each directive takes the set's name as an optional argument; by default it is the page's file name, so a
new set needs only its page (``_toc.yml`` picks up ``problem_sets/ps*`` by a glob). Only releases are
read: the path is always ``exercises/<name>/<name>.ipynb``, and nothing under ``solutions/`` is read or
copied.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

from edition import message, translate

RELEASE_FOLDER = "exercises"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")

KIND_LABELS = {"visible": message("visible test", "problem-set table: kind of a graded cell"),
               "hidden": message("hidden test", "problem-set table: kind of a graded cell"),
               "manual": message("hand-graded", "problem-set table: kind of a graded cell")}

_HEADING = re.compile(r"^#{2,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
# "(1 + 2 points)", "(written, 3 points)", "(graded by hand)": the table says this from the metadata.
_POINTS_REMARK = re.compile(r"\s*\([^()]*\b(?:points?|graded by hand|hand-graded)\b[^()]*\)", re.IGNORECASE)
_CALL = re.compile(r"\b([A-Za-z_]\w*)\s*\(")
# Comment lines in a test cell that explain the mechanics, not what is checked.
_BOILERPLATE = re.compile(r"^(?:The grader\b|One quick call\b)")
_QUESTION_LABEL = re.compile(r"^\s*(?:\(([a-z])\)|(\d+)\.|\*\*(\d+[a-z]?)\.\*\*)\s", re.MULTILINE)


@dataclass(frozen=True)
class GradedPart:
    """One graded cell of a release notebook, as the problem-set page lists it."""

    section: str
    grade_id: str
    checks: str  # MyST Markdown (function names in backticks)
    kind: str  # "visible", "hidden" or "manual"
    points: float


def release_path(srcdir, name: str) -> Path:
    """``exercises/<name>/<name>.ipynb`` under ``srcdir``; refuses anything that is not a plain name."""
    if not NAME.match(name):
        raise ValueError(f"not a problem-set name: {name!r}")
    return Path(srcdir) / RELEASE_FOLDER / name / f"{name}.ipynb"


def _source(cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _leading_comment(source: str) -> str:
    """The comment block a code cell opens with, without the lines that explain grading mechanics."""
    lines = []
    for line in source.splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            break
        text = stripped.lstrip("#").strip()
        if _BOILERPLATE.match(text):
            break
        lines.append(text)
    return " ".join(line for line in lines if line)


def _function_under_test(source: str, grade_id: str, learner_names: list[str]) -> str | None:
    """The learner's function or class a test cell calls: the one ``grade_id`` is named after, else the first."""
    called = list(dict.fromkeys(name for name in _CALL.findall(source) if name in learner_names))
    named_after = [name for name in called if grade_id.startswith(name)]
    if named_after:
        return max(named_after, key=len)
    return called[0] if called else None


def _markdown(text: str, names: list[str]) -> str:
    """Text from a notebook as MyST Markdown: code spans kept (RST ``x`` becomes `x`), the learner's
    function names put in backticks, every other Markdown character escaped."""
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    mentioned = re.compile("|".join(rf"(?<![\w.]){re.escape(name)}(?!\w)"
                                    for name in sorted(names, key=len, reverse=True)) or r"(?!x)x")
    pieces = []
    for index, piece in enumerate(re.split(r"(`[^`]*`)", text)):
        if index % 2:
            pieces.append(piece)  # already a code span
            continue
        position = 0
        for match in mentioned.finditer(piece):
            pieces.append(_escape(piece[position:match.start()]) + f"`{match.group(0)}`")
            position = match.end()
        pieces.append(_escape(piece[position:]))
    return "".join(pieces)


def _escape(text: str) -> str:
    return re.sub(r"([\\`*_{}\[\]<>#+!|$~^&])", r"\\\1", text)


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def _docstring_summaries(cells) -> dict[str, str]:
    """First paragraph of the docstring of every function or class the learner writes, by name."""
    summaries = {}
    for cell in cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.get("cell_type") != "code" or not meta.get("solution"):
            continue
        try:
            tree = ast.parse(_source(cell))
        except SyntaxError:
            continue  # a learner-facing cell that is not plain Python: nothing to read
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node) or ""
                summaries[node.name] = " ".join(doc.split("\n\n")[0].split()).rstrip(".")
    return summaries


def _visible_checks(comment: str, function: str | None, grade_id: str, summaries: dict[str, str]) -> str:
    """What a visible test checks: its own comment ("Visible tests for f in training mode.") if it says
    more than the function's name, else the function's docstring summary."""
    match = re.match(r"Visible tests? (?:for|of) (.*)", comment)
    rest = match.group(1) if match else ""
    if function and rest.startswith(function):
        rest = rest[len(function):]
    rest = rest.strip(" :,;.")
    if rest.startswith(("in ", "on ", "with ", "for ")):
        return f"{function} {rest}" if function else _capitalized(rest)
    if function and not grade_id.startswith(function) and function not in rest:
        # grade_id does not name the function (batch_norm_cumulative tests BatchNorm): name it
        return f"{function}, {rest}" if rest else f"{function}: {summaries.get(function, '')}".rstrip(": ")
    return _capitalized(rest) if rest else summaries.get(function, "")


def _hidden_checks(comment: str, function: str | None, grade_id: str) -> str:
    """What a hidden test checks, from its comment ("Hidden tests: f against the reference for ...")."""
    detail = re.sub(r"^Hidden tests?[^:]*:\s*", "", comment).rstrip(". ")
    if function and detail.startswith(function):
        detail = detail[len(function):].strip()
    elif not detail.startswith("against"):
        detail = "against the reference" + (f": {detail}" if detail else "")
    if function and not grade_id.startswith(function):
        return f"{function} {detail}"
    return _capitalized(detail)


def _written_checks(question: str) -> str:
    labels = [a or b or c for a, b, c in _QUESTION_LABEL.findall(question)]
    if not labels:
        return "Written answer"
    shown = [f"({label})" if label.isalpha() else label for label in labels]
    listed = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]
    return f"Written answer to question{'s' if len(shown) > 1 else ''} {listed}"


def graded_parts(notebook: dict) -> list[GradedPart]:
    """Every graded cell of a release notebook (nbformat 4 JSON), in notebook order."""
    cells = notebook["cells"]
    summaries = _docstring_summaries(cells)
    learner_names = list(summaries)
    parts, section, tested = [], "", {}
    previous_markdown = ""
    for cell in cells:
        source = _source(cell)
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade") or meta.get("task"):
            grade_id = meta.get("grade_id", "")
            points = float(meta.get("points") or 0)
            if meta.get("solution") or meta.get("task") or cell.get("cell_type") != "code":
                kind, checks = "manual", _written_checks(previous_markdown)
            else:
                comment = _leading_comment(source)
                partner = grade_id[: -len("_hidden")] if grade_id.endswith("_hidden") else None
                function = tested.get(partner) or _function_under_test(source, grade_id, learner_names)
                tested[grade_id] = function
                if comment.startswith("Hidden test") or partner:
                    kind, checks = "hidden", _hidden_checks(comment, function, grade_id)
                else:
                    kind, checks = "visible", _visible_checks(comment, function, grade_id, summaries)
            parts.append(GradedPart(section, grade_id, _markdown(checks, learner_names) or "See the notebook",
                                    kind, points))
        if cell.get("cell_type") == "markdown":
            headings = _HEADING.findall(source)
            if headings:
                section = _POINTS_REMARK.sub("", headings[-1]).strip()
            previous_markdown = source
    return parts


def _number(value: float) -> str:
    return f"{value:g}"


TOTALS = message("**Total: {total} points**: {autograded} autograded ({visible} from visible tests, "
                 "{hidden} from hidden tests).", "problem-set page: the sentence under the table, no hand-graded part")
TOTALS_WITH_MANUAL = message("**Total: {total} points**: {autograded} autograded ({visible} from visible tests, "
                             "{hidden} from hidden tests) and {manual} hand-graded.",
                             "problem-set page: the sentence under the table")


def _same(text: str) -> str:
    return text


def totals_markdown(parts: list[GradedPart], tr=_same) -> str:
    """The sentence under the table: the total and how it splits, as MyST Markdown (``tr`` translates)."""
    visible = sum(part.points for part in parts if part.kind == "visible")
    hidden = sum(part.points for part in parts if part.kind == "hidden")
    manual = sum(part.points for part in parts if part.kind == "manual")
    return tr(TOTALS_WITH_MANUAL if manual else TOTALS).format(
        total=_number(visible + hidden + manual), autograded=_number(visible + hidden), visible=_number(visible),
        hidden=_number(hidden), manual=_number(manual))


KINDS_EXPLAINED = message(
    "*Visible tests* are cells of the notebook: run them as you go. *Hidden tests* compare your functions "
    "with the course's reference on random and edge cases; `normcourse check` and the grader run them. "
    "*Hand-graded* cells are written answers, graded by a person.", "problem-set page: after the totals")

DOWNLOAD = message(
    "{{download}}`Download {name}.ipynb </{path}>` ({size} kB), the notebook as the course releases it (the "
    "repository's `{path}`): fill in the cells marked `YOUR CODE HERE` and `YOUR ANSWER HERE` and leave the "
    "others as they are.", "problem-set page: the download link")

CHECK = message("""\
The notebook's tests import the course package `normcourse`, so work in the course's environment: clone
the repository and run `bash scripts/setup.sh` once (it creates `.venv/`). The download above is the
repository's `{path}`; work in that copy or in your own. Save the notebook, then run from the
repository:

```bash
source .venv/bin/activate
normcourse check {path}
```

(give the path of your copy if it lives elsewhere: the check identifies the problem set from the
notebook itself, so a renamed copy works too). It runs your notebook in a fresh kernel, compares your
functions with the reference on the grader's cases, and reports every row of the table above: PASS or
FAIL with a message, and the hand-graded points it cannot judge. {{doc}}`/self_check` explains the report
and what it means for a graded course; `--json` prints it as JSON.""", "problem-set page: how to check the notebook")


class _ProblemSetDirective(SphinxDirective):
    optional_arguments = 1
    has_content = False

    def problem_set(self) -> tuple[str, Path]:
        name = self.arguments[0] if self.arguments else PurePosixPath(self.env.docname).name
        path = release_path(self.env.srcdir, name)
        if not path.is_file():
            raise self.error(f"no release notebook for problem set {name!r}: "
                             f"{path.relative_to(self.env.srcdir)} does not exist")
        self.env.note_dependency(str(path))
        return name, path

    def render(self, markdown: str, translatable: bool = True) -> list[nodes.Node]:
        """Parse MyST Markdown. Text from a template is translated already (``translatable=False``): it is
        kept out of the page's catalog."""
        container = nodes.container()
        self.state.nested_parse(StringList(markdown.splitlines(), source=self.env.docname), self.content_offset,
                                container)
        if not translatable:
            for element in container.findall(nodes.TextElement):
                element["translatable"] = False
        return container.children

    def tr(self, template: str) -> str:
        return translate(self.env, template)


class ProblemSetDownload(_ProblemSetDirective):
    """A download link to the release notebook (copied into the built site by Sphinx)."""

    def run(self):
        name, path = self.problem_set()
        size_kb = max(1, round(path.stat().st_size / 1024))
        repo_path = f"{RELEASE_FOLDER}/{name}/{name}.ipynb"
        return self.render(self.tr(DOWNLOAD).format(name=name, path=repo_path, size=size_kb), translatable=False)


class ProblemSetParts(_ProblemSetDirective):
    """The parts table and the totals, from the release notebook's nbgrader metadata.

    Three columns (the graded cell's ``grade_id`` and its kind, what it checks, its points), and each
    section of the notebook as a row spanning them: grade ids and function names are code, which does
    not wrap, so a fourth column would push the table off the page next to the page's contents sidebar.
    """

    # Relative widths, written into the HTML (the "colwidths-given" class).
    COLUMNS = ((message("Graded cell", "problem-set table: column header"), 42),
               (message("What it checks", "problem-set table: column header"), 47),
               (message("Points", "problem-set table: column header"), 11))

    def run(self):
        _, path = self.problem_set()
        parts = graded_parts(json.loads(path.read_text(encoding="utf-8")))
        if not parts:
            raise self.error(f"{path.relative_to(self.env.srcdir)} has no graded cells")
        table = nodes.table(classes=["problem-set-parts", "colwidths-given"])
        group = nodes.tgroup(cols=len(self.COLUMNS))
        table += group
        for _, width in self.COLUMNS:
            group += nodes.colspec(colwidth=width)
        head, body = nodes.thead(), nodes.tbody()
        group += head
        group += body
        head += self._row([self.tr(title) for title, _ in self.COLUMNS], translatable=(False, False, False))
        section = None
        for part in parts:
            if part.section != section and part.section:
                body += self._row([f"**{part.section}**"], span=True)
            section = part.section
            body += self._row([f"`{part.grade_id}` ({self.tr(KIND_LABELS[part.kind])})", part.checks,
                               _number(part.points)], translatable=(False, True, False))
        return [table, *self.render(totals_markdown(parts, self.tr) + " " + self.tr(KINDS_EXPLAINED),
                                    translatable=False)]

    def _row(self, cells: list[str], span: bool = False, translatable=(True,)) -> nodes.row:
        """A table row; ``translatable`` says, per cell, whether it is page text (from the notebook)."""
        row = nodes.row()
        for text, page_text in zip(cells, translatable):
            entry = nodes.entry(morecols=len(self.COLUMNS) - 1) if span else nodes.entry()
            entry += self.render(text, page_text)
            row += entry
        return row


class ProblemSetCheck(_ProblemSetDirective):
    """How to check the notebook with ``normcourse check``."""

    def run(self):
        name, _ = self.problem_set()
        repo_path = f"{RELEASE_FOLDER}/{name}/{name}.ipynb"
        return self.render(self.tr(CHECK).format(path=repo_path), translatable=False)


def setup(app):
    app.add_directive("problem-set-download", ProblemSetDownload)
    app.add_directive("problem-set-parts", ProblemSetParts)
    app.add_directive("problem-set-check", ProblemSetCheck)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
