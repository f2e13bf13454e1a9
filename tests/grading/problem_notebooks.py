"""The problem sets' source notebooks as the suite sees them, in this process (no kernel, no nbgrader).

Everything here is driven by the registry of problem sets (:func:`course_problem_sets`: every set
registered with :func:`normcourse.grading.parts.register` that has a source notebook in
``solutions/``), so a new set is picked up without edits.

- :class:`NotebookRun` runs a solution notebook's *learner program* (every code cell except the
  autograded tests: imports, solutions, course-provided drivers; the same cells the grader's re-check
  runs, :func:`normcourse.grading.recheck.learner_program`) once, then replays the autograded cells
  against it with any learner name replaced, and scores every cell the way the grader does: a cell
  keeps its points only if its test cell passes *and* its Part passes (:meth:`Part.check`).
- :func:`names_under_test` says which learner-written names a Part grades: its function if the learner
  writes it, else the learner names its course-provided driver calls (``run_batch_norm_module`` grades
  ``BatchNorm``), plus the dependencies a set declares by design (``USES`` in its wrong-implementation
  module, for example an experiment that runs the learner's own layer).
- :func:`recorded_calls` runs one test cell with the Part's function wrapped, so the suite can check
  that a visible cell's Part replays exactly the calls the cell makes.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import functools
import inspect
import io
import os
import types
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import numpy as np

ROOT = Path(__file__).resolve().parents[2]

os.environ.setdefault("MPLBACKEND", "Agg")  # experiment cells plot; nothing may open a window


def course_problem_sets() -> list[str]:
    """Registered problem sets that have a source notebook in this repository (test fixtures such as
    ``ps00_fixture`` are registered too, but live elsewhere)."""
    from normcourse.grading.parts import problem_sets

    return [ps for ps in problem_sets() if notebook_path(ps).exists()]


def notebook_path(problem_set: str, folder: str = "solutions") -> Path:
    return ROOT / folder / problem_set / f"{problem_set}.ipynb"


@functools.cache
def notebook(problem_set: str, folder: str = "solutions"):
    return nbformat.read(notebook_path(problem_set, folder), as_version=4)


def grade_id(cell) -> str:
    return cell.metadata.get("nbgrader", {}).get("grade_id", "")


def is_autograded(cell) -> bool:
    meta = cell.metadata.get("nbgrader", {})
    return cell.cell_type == "code" and bool(meta.get("grade")) and not meta.get("solution")


def is_hidden(cell) -> bool:
    return "BEGIN HIDDEN TESTS" in cell.source


def autograded_cells(problem_set: str, folder: str = "solutions") -> list:
    return [c for c in notebook(problem_set, folder).cells if is_autograded(c)]


def python_source(source: str) -> str:
    """A cell's source as Python (IPython magics translated, as the kernel and the re-check do)."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


@functools.cache
def learner_names(problem_set: str) -> frozenset[str]:
    """The top-level functions and classes that the learner writes (defined in solution code cells)."""
    names = set()
    for cell in notebook(problem_set).cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and meta.get("solution"):
            for node in ast.parse(python_source(cell.source)).body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    names.add(node.name)
    return frozenset(names)


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


class _NoShell:
    """``get_ipython()`` for translated magics: a no-op, as in the re-check."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


@dataclass
class CellScore:
    """One autograded cell's outcome: points kept only if the cell and its Part both pass."""

    grade_id: str
    cell_error: str | None = None
    part_error: str | None = None

    @property
    def passed(self) -> bool:
        return self.cell_error is None and self.part_error is None

    def why(self) -> str:
        return "; ".join(x for x in (self.cell_error and f"test cell: {self.cell_error}",
                                     self.part_error and f"Part: {self.part_error}") if x)


@dataclass
class NotebookRun:
    """A solution notebook's learner program, executed once in this process."""

    problem_set: str
    namespace: dict = field(default_factory=dict)
    snapshot: dict = field(default_factory=dict)
    program_errors: list = field(default_factory=list)

    def __post_init__(self):
        from normcourse.grading.recheck import learner_program

        self.namespace = {"__name__": f"notebook_{self.problem_set}", "get_ipython": lambda: _NoShell()}
        for index, source in enumerate(learner_program(notebook(self.problem_set)).sources):
            error = self._exec(source, f"<{self.problem_set} program cell {index}>", self.namespace)
            if error:
                self.program_errors.append(f"cell {index}: {error}")
        self.snapshot = dict(self.namespace)

    @staticmethod
    def _exec(source: str, filename: str, namespace: dict) -> str | None:
        try:
            with contextlib.redirect_stdout(io.StringIO()), np.errstate(all="ignore"):
                exec(compile(python_source(source), filename, "exec"), namespace)
        except Exception as exc:  # noqa: BLE001 - a failing cell is an outcome, as in the kernel
            return f"{type(exc).__name__}: {exc}"
        finally:
            _close_figures()
        return None

    def fresh(self, replace: dict | None = None) -> dict:
        """The namespace as the program left it (restored in place, so the learner's functions, whose
        globals it is, see the restored names), with ``replace`` applied: a learner with one bug."""
        self.namespace.clear()
        self.namespace.update(self.snapshot)
        self.namespace.update(replace or {})
        return self.namespace

    def run_cell(self, namespace: dict, cell) -> str | None:
        return self._exec(cell.source, f"<{self.problem_set}:{grade_id(cell)}>", namespace)

    def check_part(self, namespace: dict, part) -> str | None:
        from normcourse.grading.compare import GradingError

        try:
            with contextlib.redirect_stdout(io.StringIO()), np.errstate(all="ignore"):
                part.check(namespace.get(part.function))
        except GradingError as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001
            return f"{type(exc).__name__}: {exc}"
        finally:
            _close_figures()
        return None

    def score(self, replace: dict | None = None) -> dict[str, CellScore]:
        """Every autograded cell, in notebook order, scored as the grader scores it. A hidden cell's
        test already runs its Part in this process (``check_part``), so its Part is not run twice."""
        from normcourse.grading.parts import parts_of

        parts = {p.grade_id: p for p in parts_of(self.problem_set)}
        namespace = self.fresh(replace)
        scores = {}
        for cell in autograded_cells(self.problem_set):
            gid = grade_id(cell)
            result = CellScore(gid, cell_error=self.run_cell(namespace, cell))
            part = parts.get(gid)
            if part is not None and f'check_part("{self.problem_set}", "{gid}"' not in cell.source:
                result.part_error = self.check_part(namespace, part)
            scores[gid] = result
        self.fresh()
        return scores


def _close_figures() -> None:
    import sys

    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close("all")


@functools.cache
def notebook_run(problem_set: str) -> NotebookRun:
    """The learner program of ``problem_set``'s solution, run once per test process."""
    return NotebookRun(problem_set)


def declared_uses(problem_set: str) -> dict[str, tuple[str, ...]]:
    from wrong import load

    return load(problem_set).uses


def names_under_test(part) -> frozenset[str]:
    """The learner-written names whose bugs may cost ``part``'s points.

    A Part graded on a learner function grades that function (and what the set's ``USES`` declares
    it may build on by design). A Part graded on a course-provided driver (a locked cell that builds
    the learner's class and runs it) grades the learner names the driver's code refers to.
    """
    mine = learner_names(part.problem_set)
    if part.function in mine:
        return frozenset({part.function, *declared_uses(part.problem_set).get(part.function, ())})
    driver = notebook_run(part.problem_set).snapshot.get(part.function)
    code = getattr(driver, "__code__", None)
    return frozenset(_code_names(code) & mine) if code is not None else frozenset()


def names_of_cell(problem_set: str, cell) -> frozenset[str]:
    """The learner names an autograded cell grades: its Part's (or, for a visible cell without a Part of
    its own, its hidden twin's), else the learner names its source mentions."""
    from normcourse.grading.parts import parts_of

    parts = {p.grade_id: p for p in parts_of(problem_set)}
    gid = grade_id(cell)
    for key in (gid, gid + "_hidden"):
        if key in parts:
            return names_under_test(parts[key])
    mentioned = {n.id for n in ast.walk(ast.parse(python_source(cell.source))) if isinstance(n, ast.Name)}
    return frozenset(mentioned & learner_names(problem_set))


# ---------------------------------------------------------------------------------------------------
# Calls a visible cell makes.

def recorded_calls(problem_set: str, cell, function: str) -> list[dict]:
    """Run ``cell`` on the solution with ``function`` wrapped; return each call's arguments, bound to
    the function's signature with defaults applied (so ``f(x, eps=1.0)`` and ``f(x, None, None, 1.0)``
    are the same call), deep-copied before the call (in-place updates do not rewrite history)."""
    run = notebook_run(problem_set)
    original = run.snapshot[function]
    signature = inspect.signature(original)
    calls = []

    def recorder(*args, **kwargs):
        bound = signature.bind(*copy.deepcopy(args), **copy.deepcopy(kwargs))
        bound.apply_defaults()
        calls.append(dict(bound.arguments))
        return original(*args, **kwargs)
    namespace = run.fresh({function: recorder})
    error = run.run_cell(namespace, cell)
    run.fresh()
    if error:
        raise AssertionError(f"{problem_set}:{grade_id(cell)} fails on the solution: {error}")
    return calls


def bound_case(problem_set: str, part, case) -> dict:
    signature = inspect.signature(notebook_run(problem_set).snapshot[part.function])
    bound = signature.bind(*case.args, **case.kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def same_value(a, b) -> bool:
    """Equal values: arrays by dtype, shape and contents (NaN equal to NaN); sequences elementwise
    (a tuple and a list with the same items are the same argument); ``functools.partial`` objects by
    function and arguments; anything else by ``==`` and type."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, functools.partial) and isinstance(b, functools.partial):
        return a.func is b.func and same_value(a.args, b.args) and same_value(a.keywords, b.keywords)
    if _is_torch(a) or _is_torch(b):
        return _same_torch(a, b)
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # noqa: BLE001
        return False


def _is_torch(value) -> bool:
    return type(value).__module__.split(".")[0] == "torch" or any(
        c.__module__.startswith("torch.nn") for c in type(value).__mro__[1:])


def _same_torch(a, b) -> bool:
    """Tensors by dtype, shape and values; modules by class, mode, parameters and buffers (two models built
    the same way from the same seed are the same argument)."""
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a.detach(), b.detach()))
    if isinstance(a, torch.nn.Module) and isinstance(b, torch.nn.Module):
        sa, sb = a.state_dict(), b.state_dict()
        return (type(a) is type(b) and a.training == b.training and sa.keys() == sb.keys()
                and all(same_value(sa[k], sb[k]) for k in sa)
                and [m.training for m in a.modules()] == [m.training for m in b.modules()])
    return a is b


def same_call(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)


def distinct_calls(calls: list[dict]) -> list[dict]:
    out: list[dict] = []
    for call in calls:
        if not any(same_call(call, seen) for seen in out):
            out.append(call)
    return out


def describe_call(call: dict) -> str:
    def short(v):
        if isinstance(v, np.ndarray):
            return f"array{v.shape} {v.dtype}"
        if isinstance(v, (tuple, list)) and len(v) > 4:
            return f"{type(v).__name__} of {len(v)}"
        return repr(v)
    return ", ".join(f"{k}={short(v)}" for k, v in call.items())


def modules_a_case_needs(case) -> set[str]:
    """The modules that unpickling ``case``'s arguments imports (every class's and callable's module):
    the sandboxed re-check loads cases with only numpy, torch and the set's provided modules."""
    import pickle

    modules: set[str] = set()

    class Recorder(pickle.Pickler):
        def reducer_override(self, obj):
            module = getattr(obj, "__module__", None) if isinstance(obj, type) or callable(obj) else None
            if module:
                modules.add(module)
            modules.add(type(obj).__module__)
            return NotImplemented

    Recorder(io.BytesIO()).dump((case.args, case.kwargs))
    return modules
