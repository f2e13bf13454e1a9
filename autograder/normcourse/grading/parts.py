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

import importlib
import inspect
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .compare import GradingError, assert_array_matches, assert_raises, assert_state_matches
from .recheck_child import BUILTIN_EXCEPTIONS, Observed, observe
from .rules import Rule

__all__ = ["Case", "Part", "register", "get_part", "parts_of", "problem_sets", "provided_modules", "check_part"]


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
        state_of: indices into ``args`` of torch modules whose state after the call (parameters,
            buffers, ``.grad`` of every parameter, ``training`` of every submodule; see
            :func:`module_state`) must equal the state the reference leaves: "leaves the model
            untouched" is part of the contract where the reference leaves it untouched.
        repeat: call the function this many times on the same arguments (the same model); every
            call's result is compared, which catches state left behind by the first call.
        raises: a built-in exception type (``ValueError``) the call must raise, as the reference does:
            "rejects a bad argument" is part of the contract. Its message is not compared. The re-check
            names exception types across processes, hence built-in types only.
    """

    label: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    inplace: tuple[int, ...] = ()
    rtol: float | None = None
    atol: float | None = None
    state_of: tuple[int, ...] = ()
    repeat: int = 1
    raises: type[BaseException] | None = None

    def __post_init__(self):
        if self.raises is not None:
            if BUILTIN_EXCEPTIONS.get(getattr(self.raises, "__name__", None)) is not self.raises:
                raise TypeError(f"Case.raises must be a built-in exception type, got {self.raises!r}")
            if self.inplace or self.state_of or self.repeat != 1:
                raise ValueError("a Case that must raise compares nothing else: no inplace, state_of or repeat")


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
            With ``reference=None`` the part has no reference result (an experiment whose numbers
            are checked for properties): ``expected`` is then None and ``compare`` checks ``actual``.
        description: what the part checks, for reports.
        forbid: the :class:`~normcourse.grading.rules.Rule` objects this part is graded under, on top
            of :data:`~normcourse.grading.rules.NO_COURSE_CODE` (which every part has).
        state_hint: ``state_hint(key, expected) -> str | None``, this function's own advice when a
            ``Case.state_of`` model ends in another state than the reference leaves (see
            :data:`normcourse.grading.compare.StateHint`). None: the advice for a function that must
            leave the model alone, which is wrong advice for one whose contract changes modes or flags.
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
    forbid: tuple[Rule, ...] = ()
    state_hint: Callable[[str, Any], str | None] | None = None

    def make_cases(self, salt: int | None = None) -> list[Case]:
        """The part's cases. The notebook's hidden-test cell uses the fixed ``seed``; the grader's
        re-check mixes in a course-private ``salt``, so that answers looked up from the public seeds
        do not pass (the edge cases stay the same kinds, their values change)."""
        return self.cases(np.random.default_rng(self.seed if salt is None else [self.seed, salt]))

    def expected(self, case: Case) -> Observed | None:
        """What the reference does on ``case`` (None for a part without a reference, or a case that
        must raise: nothing is compared then)."""
        return None if self.reference is None or case.raises is not None else self.call(self.reference, case)

    @staticmethod
    def call(fn: Callable, case: Case) -> Observed:
        """Call ``fn`` on fresh copies of the case's inputs and record what it did (see :func:`observe`)."""
        return observe(fn, case.args, case.kwargs, inplace=case.inplace, state_of=case.state_of,
                       repeat=case.repeat)

    def argument_name(self, index: int) -> str:
        """The name of positional argument ``index`` in the reference's signature (``"running_mean"``)."""
        try:
            names = list(inspect.signature(self.reference).parameters)
        except (TypeError, ValueError):
            names = []
        return repr(names[index]) if index < len(names) else f"{index + 1}"

    def judge(self, actual: Observed, case: Case) -> None:
        """Compare what the learner's function did on ``case`` with the reference; raise GradingError
        naming the call, the result or argument, and the case, if anything differs."""
        expected = self.expected(case)
        rtol = case.rtol if case.rtol is not None else self.rtol
        atol = case.atol if case.atol is not None else self.atol
        for call, result in enumerate(actual.results):
            name = f"{self.function}(...)" + (f" (call {call + 1} of {case.repeat} on the same arguments)"
                                              if case.repeat > 1 else "")
            want = None if expected is None else expected.results[call]
            if case.inplace:  # the result, then the in-place arguments as they were after this call
                result, *after = result
                if want is not None:
                    want, *want_after = want
            self.compare(result, want, name=name, label=case.label, rtol=rtol, atol=atol)
            if case.inplace and expected is not None:
                for i, a, e in zip(case.inplace, after, want_after):
                    # One check covers "must be updated in place" and "must be left unchanged".
                    assert_array_matches(a, e, name=f"argument {self.argument_name(i)} of {name} after the "
                                         f"call (updated in place where the contract says so, else unchanged)",
                                         label=case.label, rtol=rtol, atol=atol)
        if expected is not None:
            for i in case.state_of:
                assert_state_matches(actual.states[i], expected.states[i],
                                     name=f"the model passed as argument {self.argument_name(i)} after "
                                          f"{self.function}(...)", label=case.label, rtol=rtol, atol=atol,
                                     hint=self.state_hint)

    def check(self, fn: Callable) -> int:
        """Run every case through ``fn`` in this process; return the number of cases checked."""
        if not callable(fn):
            raise GradingError(f"{self.function} is not a function (got {type(fn).__name__})")
        cases = self.make_cases()
        for case in cases:
            if case.raises is not None:
                assert_raises(case.raises, self.call, fn, case, name=f"{self.function}(...)", label=case.label)
                continue
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
_PROVIDED: dict[str, tuple[str, ...]] = {}


def register(parts: Sequence[Part], *, provides: Sequence[str] = ()) -> None:
    """Register a problem set's parts. ``provides`` names the course modules its notebook hands to
    the learner (e.g. ``"normcourse.lab.models"``): the re-check keeps exactly those importable."""
    for part in parts:
        _PROVIDED.setdefault(part.problem_set, tuple(provides))
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
    """Import only ``problem_set``'s own module (or the extra modules), so that a hidden-test cell of a
    numpy-only set does not import torch through the modules of the torch-based sets (seconds per
    graded kernel). A name found in neither loads every module."""
    name = f"{PROBLEMS_PACKAGE}.{problem_set}"
    if problem_set.isidentifier() and importlib.util.find_spec(name) is not None:
        importlib.import_module(name)
        return
    _load_extra_problem_modules()
    if not any(ps == problem_set for ps, _ in _REGISTRY):
        _load_problem_modules()


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


def provided_modules(problem_set: str) -> tuple[str, ...]:
    """The course modules ``problem_set``'s notebook gives the learner (see :func:`register`)."""
    _load_problem_set(problem_set)
    return _PROVIDED.get(problem_set, ())


def check_part(problem_set: str, grade_id: str, fn: Callable) -> None:
    """Entry point for hidden-test cells: compare ``fn`` with the reference on the part's cases."""
    n = get_part(problem_set, grade_id).check(fn)
    print(f"{grade_id}: {n} cases match the reference")
