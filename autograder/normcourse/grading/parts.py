"""Autograded parts of the problem sets, as data: what to call, on which inputs, against what.

One :class:`Part` describes one hidden-test comparison: the learner function's name in the notebook,
a seeded generator of cases (random shapes and the edge cases every set must cover), the reference
function, and how to compare. The same object serves three callers:

- the hidden test cell of the notebook, which runs ``check_part("ps01", "layer_norm_forward_hidden",
  layer_norm)`` inside the learner's kernel (nbgrader's ordinary path);
- the learner's self-check (``normcourse check``), which runs the same comparison;
- the grader's out-of-kernel re-check, which generates the cases in the grader's own process, calls
  the learner's function in a separate resource-limited process on fresh copies, and compares here
  with :mod:`normcourse.grading.compare`, so learner code cannot patch the comparison.

Problem-set modules (``normcourse.problems.psNN_name``, loaded by name) each define ``PARTS``, a list of
:class:`Part`, and register them with :func:`register`.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .compare import GradingError, assert_array_matches

__all__ = ["Case", "Part", "register", "get_part", "parts_of", "problem_sets", "check_part"]


@dataclass
class Case:
    """One input to a learner function.

    Attributes:
        label: a human description, shown in failure messages ("batch size 1, float32").
        args, kwargs: the call. Arrays are deep-copied before every call, so a function that writes
            into its input cannot affect the reference or a later case.
        inplace: indices into ``args`` of arguments the function is expected to update in place
            (BatchNorm's running statistics); their final values are compared too.
        rtol, atol: tolerances for this case (None: the Part's, else the dtype default).
    """

    label: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    inplace: tuple[int, ...] = ()
    rtol: float | None = None
    atol: float | None = None


def _default_compare(actual, expected, *, name: str, label: str, rtol, atol) -> None:
    """Compare results that are arrays or tuples of arrays."""
    if isinstance(expected, tuple):
        if not isinstance(actual, (tuple, list)) or len(actual) != len(expected):
            got = f"a {type(actual).__name__}" + (f" of length {len(actual)}"
                                                   if isinstance(actual, (tuple, list)) else "")
            raise GradingError(f"{name} for case {label!r}: expected a tuple of {len(expected)} results, "
                               f"got {got}")
        for i, (a, e) in enumerate(zip(actual, expected)):
            if e is None:
                if a is not None:
                    raise GradingError(f"{name} for case {label!r}: result {i} should be None "
                                       f"(no such parameter in this case), got {type(a).__name__}")
                continue
            assert_array_matches(a, e, name=f"{name}[{i}]", label=label, rtol=rtol, atol=atol)
        return
    if np.ndim(expected) == 0 and not isinstance(expected, np.ndarray):
        from .compare import assert_scalar_matches
        assert_scalar_matches(actual, float(expected), name=name, label=label,
                              rtol=1e-8 if rtol is None else rtol, atol=1e-10 if atol is None else atol)
        return
    assert_array_matches(actual, expected, name=name, label=label, rtol=rtol, atol=atol)


@dataclass
class Part:
    """One autograded comparison against the reference.

    Attributes:
        problem_set: e.g. ``"ps01_scopes"``.
        grade_id: the nbgrader ``grade_id`` of the hidden-test cell this part backs.
        function: name of the learner's function in the notebook namespace.
        reference: the reference callable with the same signature.
        cases: ``cases(rng) -> list[Case]``; must include the edge cases.
        seed: the seed of ``rng``; fixed so grading is reproducible.
        points: the cell's points (kept in sync with the notebook by the test suite).
        rtol, atol: tolerances (None: dtype defaults from :func:`compare.tolerance_for`).
        compare: ``compare(actual, expected, name=, label=, rtol=, atol=)``; raises GradingError.
        description: what the part checks, for reports.
    """

    problem_set: str
    grade_id: str
    function: str
    reference: Callable
    cases: Callable[[np.random.Generator], list[Case]]
    points: float
    seed: int = 0
    rtol: float | None = None
    atol: float | None = None
    compare: Callable = _default_compare
    description: str = ""
    extra_functions: Sequence[str] = ()

    def make_cases(self) -> list[Case]:
        return self.cases(np.random.default_rng(self.seed))

    def expected(self, case: Case) -> Any:
        """The reference result for ``case``: the return value, plus in-place arguments if any."""
        return self.call(self.reference, case)

    @staticmethod
    def call(fn: Callable, case: Case) -> Any:
        """Call ``fn`` on fresh copies of the case's inputs; append in-place arguments to the result."""
        args = copy.deepcopy(case.args)
        kwargs = copy.deepcopy(case.kwargs)
        result = fn(*args, **kwargs)
        if case.inplace:
            return (result,) + tuple(args[i] for i in case.inplace)
        return result

    def judge(self, actual: Any, case: Case) -> None:
        """Compare a learner's result for ``case`` with the reference; raise GradingError if it differs."""
        expected = self.expected(case)
        rtol = case.rtol if case.rtol is not None else self.rtol
        atol = case.atol if case.atol is not None else self.atol
        if case.inplace:
            result_exp, *state_exp = expected
            result_act, *state_act = actual
            self.compare(result_act, result_exp, name=f"{self.function}(...)", label=case.label,
                         rtol=rtol, atol=atol)
            for i, a, e in zip(case.inplace, state_act, state_exp):
                # The same check covers "must be updated in place" and "must be left unchanged".
                assert_array_matches(a, e, name=f"argument {i} of {self.function} after the call (it must be "
                                     f"updated in place where the contract says so, else left unchanged)",
                                     label=case.label, rtol=rtol, atol=atol)
            return
        self.compare(actual, expected, name=f"{self.function}(...)", label=case.label, rtol=rtol, atol=atol)

    def check(self, fn: Callable) -> int:
        """Run every case through ``fn`` in this process; return the number of cases checked."""
        if not callable(fn):
            raise GradingError(f"{self.function} is not a function (got {type(fn).__name__})")
        cases = self.make_cases()
        for case in cases:
            try:
                actual = self.call(fn, case)
            except GradingError:
                raise
            except NotImplementedError:
                raise GradingError(f"{self.function} is not implemented yet (it raised NotImplementedError)")
            except Exception as exc:  # report the learner's exception with the case that caused it
                raise GradingError(f"{self.function} raised {type(exc).__name__}: {exc} "
                                   f"for case {case.label!r}") from exc
            self.judge(actual, case)
        return len(cases)


_REGISTRY: dict[tuple[str, str], Part] = {}


def register(parts: Sequence[Part]) -> None:
    for part in parts:
        key = (part.problem_set, part.grade_id)
        if key in _REGISTRY and _REGISTRY[key] is not part:
            raise ValueError(f"part {key} registered twice")
        _REGISTRY[key] = part


#: Extra problem-set modules outside the package (``os.pathsep``-separated .py files), for example a
#: test fixture or a course's local problem set. Kernels and sandboxes inherit it from the grader.
EXTRA_PROBLEMS_ENV = "NORMCOURSE_EXTRA_PROBLEMS"
#: The course's problem sets, one module each. The grading tools find them by name, as plugins, and
#: never import them statically: a problem set may use the lab's torch models, the grading tools may not.
PROBLEMS_PACKAGE = "normcourse.problems"


def _load_problem_modules() -> None:
    problems = importlib.import_module(PROBLEMS_PACKAGE)
    for info in pkgutil.iter_modules(problems.__path__):
        importlib.import_module(f"{problems.__name__}.{info.name}")
    _load_extra_problem_modules()


def _load_problem_set(problem_set: str) -> None:
    """Import only ``problem_set``'s own module (plus the extra modules), so that a hidden-test cell of a
    numpy-only set does not import torch through the modules of the torch-based sets (about 2 s per
    graded kernel). A name without a module of its own loads every module."""
    name = f"{PROBLEMS_PACKAGE}.{problem_set}"
    if not problem_set.isidentifier() or importlib.util.find_spec(name) is None:
        _load_problem_modules()
        return
    importlib.import_module(name)
    _load_extra_problem_modules()


def _load_extra_problem_modules() -> None:
    for path in filter(None, os.environ.get(EXTRA_PROBLEMS_ENV, "").split(os.pathsep)):
        name = "normcourse_extra_problems_" + os.path.splitext(os.path.basename(path))[0]
        if name not in sys.modules:  # import each file once, so its Parts register once
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)


def problem_sets() -> list[str]:
    _load_problem_modules()
    return sorted({ps for ps, _ in _REGISTRY})


def parts_of(problem_set: str) -> list[Part]:
    _load_problem_set(problem_set)
    parts = [p for (ps, _), p in _REGISTRY.items() if ps == problem_set]
    if not parts:
        raise KeyError(f"unknown problem set {problem_set!r}; known: {problem_sets()}")
    return parts


def get_part(problem_set: str, grade_id: str) -> Part:
    _load_problem_set(problem_set)
    try:
        return _REGISTRY[(problem_set, grade_id)]
    except KeyError:
        raise KeyError(f"no part {grade_id!r} in problem set {problem_set!r}") from None


def check_part(problem_set: str, grade_id: str, fn: Callable) -> None:
    """Entry point for hidden-test cells: compare ``fn`` with the reference on the part's cases."""
    n = get_part(problem_set, grade_id).check(fn)
    print(f"{grade_id}: {n} cases match the reference")
