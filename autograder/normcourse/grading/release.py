"""Release a problem set with nbgrader, then prove that nothing secret leaked into it.

``normcourse release PS`` runs nbgrader's ``generate_assignment --force`` (without ``--force``
nbgrader silently keeps a stale release) and then compares every released file with its source.

What is secret in a source notebook (nbgrader's own delimiters and cell roles):

- solution regions (``### BEGIN SOLUTION`` ... ``### END SOLUTION``), and the whole source of a
  solution cell without delimiters (nbgrader replaces such a cell by the stub);
- hidden tests (``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS``);
- mark schemes / rubrics (``=== BEGIN MARK SCHEME ===`` ... ``=== END MARK SCHEME ===``) and the
  reference answer of a hand-graded written cell (a solution cell: its whole text).

A *leak* is a line of secret text that does not also occur in the public part of the source (so a
line like ``import numpy as np`` that is both in a solution and in a read-only cell is not a leak) and
shows up in the release, in a cell's source or output, or in any other released file; also any
delimiter left in the release and any stored output. Lines shorter than 4 characters (``)``,
``else:``-like punctuation) are ignored as they carry no information.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Leak", "secret_and_public_lines", "find_leaks", "release"]

DELIMITERS = {
    "solution": ("BEGIN SOLUTION", "END SOLUTION"),
    "hidden test": ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS"),
    "rubric": ("BEGIN MARK SCHEME", "END MARK SCHEME"),
}
_MIN_LENGTH = 4


@dataclass
class Leak:
    file: str
    kind: str
    cell: str
    text: str

    def __str__(self) -> str:
        return f"{self.file}: {self.kind} text in {self.cell}: {self.text[:120]!r}"


def _norm(line: str) -> str:
    return line.strip()


def secret_and_public_lines(nb) -> tuple[dict[str, str], set[str]]:
    """``({secret line: kind}, {public line})`` of a source notebook, lines stripped."""
    from nbgrader import utils

    secret: dict[str, str] = {}
    public: set[str] = set()
    for cell in nb.cells:
        lines = cell.source.splitlines()
        has_solution_region = any(DELIMITERS["solution"][0] in ln for ln in lines)
        if utils.is_solution(cell) and not has_solution_region:
            kind = "rubric" if utils.is_grade(cell) and cell.cell_type == "markdown" else "solution"
            for ln in lines:
                secret.setdefault(_norm(ln), kind)
            continue
        inside = None
        for ln in lines:
            opened = [k for k, (begin, _) in DELIMITERS.items() if begin in ln]
            closed = [k for k, (_, end) in DELIMITERS.items() if end in ln]
            if opened:
                inside = opened[0]
            elif closed:
                inside = None
            elif inside:
                secret.setdefault(_norm(ln), inside)
            else:
                public.add(_norm(ln))
    return secret, public


def _stub_lines(config) -> set[str]:
    stubs = set()
    code_stub = config.ClearSolutions.get("code_stub", {"python": "# YOUR CODE HERE\nraise NotImplementedError()"})
    for text in (code_stub.values() if isinstance(code_stub, dict) else [code_stub]):
        stubs |= {_norm(ln) for ln in text.splitlines()}
    stubs |= {_norm(ln) for ln in str(config.ClearSolutions.get("text_stub", "YOUR ANSWER HERE")).splitlines()}
    return stubs


def _cell_name(cell, index: int) -> str:
    grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
    return f"cell {index}" + (f" ({grade_id})" if grade_id else "")


def find_leaks(source_nb, release_nb, *, name: str, allowed: set[str] = frozenset()) -> list[Leak]:
    """Leaks of ``source_nb``'s secrets into ``release_nb`` (see the module docstring)."""
    secret, public = secret_and_public_lines(source_nb)
    secret = {ln: kind for ln, kind in secret.items()
              if len(ln) >= _MIN_LENGTH and ln not in public and ln not in allowed}
    leaks = []
    for index, cell in enumerate(release_nb.cells):
        where = _cell_name(cell, index)
        for kind, (begin, end) in DELIMITERS.items():
            if begin in cell.source or end in cell.source:
                leaks.append(Leak(name, kind, where, f"delimiter {begin!r} left in the release"))
        for ln in cell.source.splitlines():
            if _norm(ln) in secret:
                leaks.append(Leak(name, secret[_norm(ln)], where, _norm(ln)))
        if cell.get("outputs"):
            leaks.append(Leak(name, "output", where, "the released cell has stored outputs"))
    return leaks


def _text_file_leaks(path: Path, secrets: dict[str, str], name: str) -> list[Leak]:
    try:
        text = path.read_text()
    except (UnicodeDecodeError, OSError):
        return []
    return [Leak(name, secrets[_norm(ln)], "file", _norm(ln)) for ln in text.splitlines() if _norm(ln) in secrets]


def check_release(course, problem_set: str) -> list[Leak]:
    """Leaks in the course's current release of ``problem_set`` (nothing is regenerated)."""
    import nbformat

    config = course.config()
    stubs = _stub_lines(config)
    source_dir, release_dir = course.source_dir(problem_set), course.release_dir(problem_set)
    if not release_dir.is_dir():
        return [Leak(str(release_dir), "missing", "-", "no release; run `normcourse release`")]
    leaks: list[Leak] = []
    all_secrets: dict[str, str] = {}
    for source_path in sorted(source_dir.glob("*.ipynb")):
        release_path = release_dir / source_path.name
        source = nbformat.read(source_path, as_version=4)
        secret, public = secret_and_public_lines(source)
        all_secrets.update({ln: k for ln, k in secret.items() if len(ln) >= _MIN_LENGTH and ln not in public
                            and ln not in stubs})
        if not release_path.exists():
            leaks.append(Leak(str(release_path), "missing", "-", "notebook missing from the release"))
            continue
        leaks += find_leaks(source, nbformat.read(release_path, as_version=4),
                            name=str(release_path.relative_to(course.root)), allowed=stubs)
    for path in sorted(release_dir.rglob("*")):
        if path.is_file() and path.suffix != ".ipynb":
            leaks += _text_file_leaks(path, all_secrets, str(path.relative_to(course.root)))
    return leaks


def release(course, problem_set: str) -> list[Leak]:
    """``generate_assignment --force`` with nbgrader, then :func:`check_release`; return the leaks."""
    api = course.api()
    outcome = api.generate_assignment(problem_set, force=True, create=True)
    if not outcome.get("success"):
        raise RuntimeError(f"nbgrader generate_assignment failed for {problem_set}:\n"
                           f"{outcome.get('error') or ''}\n{outcome.get('log', '')[-3000:]}")
    return check_release(course, problem_set)
