"""Wrong implementations of the learner's functions, one module per problem set, found by name.

``tests/grading/wrong/<problem_set>.py`` defines

- ``WRONG``: ``{learner name: [wrong implementations]}``, keyed by the name the learner defines in the
  notebook (a function, or a class such as ``BatchNorm``). Each entry is a mistake the course warns
  about (unbiased variance, eps outside the square root, Keras momentum...). The census in
  ``test_all_parts.py`` requires a wrong implementation for every learner name a Part grades, that
  every Part is failed by at least one of them, and that each fails with a message naming the case;
  the one-bug-costs-one-part test substitutes them into the solution notebook one at a time.
- ``USES`` (optional): ``{learner name: (other learner names,)}``, the dependencies between learner
  functions that the set asks for by design (an experiment that runs the learner's own layer). A bug
  in a used name may then cost the user's points too; nothing else may.

Adding a problem set means adding its module here; nothing else in the suite names the sets. A set
without a module here falls back to a ``WRONG`` table keyed by ``(problem_set, grade_id)`` in a
``tests/grading/test_problems_*.py`` module (the first edition's layout), read as "wrong versions of
that Part's function".
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass
class WrongTable:
    """A problem set's wrong implementations, by learner name, and its declared dependencies."""

    problem_set: str
    by_name: dict[str, list] = field(default_factory=dict)
    uses: dict[str, tuple[str, ...]] = field(default_factory=dict)
    source: str = ""


@functools.cache
def load(problem_set: str) -> WrongTable:
    path = HERE / f"{problem_set}.py"
    if path.exists():
        spec = importlib.util.spec_from_file_location(f"wrong_{problem_set}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return WrongTable(problem_set, {k: list(v) for k, v in module.WRONG.items()},
                          {k: tuple(v) for k, v in getattr(module, "USES", {}).items()}, str(path))
    return _legacy(problem_set)


def _legacy(problem_set: str) -> WrongTable:
    from normcourse.grading.parts import get_part

    table = WrongTable(problem_set, source=f"tests/grading/wrong/{problem_set}.py (missing: add it)")
    for path in sorted(HERE.parent.glob("test_problems_*.py")):
        module = importlib.import_module(path.stem)
        for (ps, gid), fns in getattr(module, "WRONG", {}).items():
            if ps == problem_set:
                table.source = str(path)
                known = table.by_name.setdefault(get_part(ps, gid).function, [])
                known.extend(f for f in fns if not any(f is k for k in known))
    return table
