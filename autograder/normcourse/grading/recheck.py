"""Out-of-kernel re-check: the learner's functions run in a sandboxed process; the grader compares.

A test cell runs in the learner's kernel, after the learner's own code, so learner code can reach
everything the test uses (``numpy.allclose``, the reference, ``check_part`` itself, IPython's input
transformers, the way errors are displayed). No grade may depend on that. The re-check removes the
reach, for every autograded cell (each is backed by a :class:`~normcourse.grading.parts.Part`):

1. the grader extracts the learner's program: every code cell of the notebook except autograded test
   cells, in order (IPython magics become calls on a no-op stub);
2. the grader generates each Part's cases *in its own process*, seeded with a course-private salt
   (so answers looked up from the public seeds do not pass);
3. for each set of rules among the parts (:mod:`normcourse.grading.rules`), a learner process is
   forked in a sandbox where the forbidden modules do not exist (:meth:`Host.start_recheck`); it runs
   the program, then answers the grader's calls one case at a time, over pipes, with results as
   ``.npz`` bytes (arrays plus a JSON description of their nesting; never pickle);
4. the grader waits for each answer with a time limit (a function that hangs costs its own part: the
   process is killed and a fresh one takes the remaining parts), loads it with ``allow_pickle=False``
   and judges it with :meth:`Part.judge` in its own process.

So what reaches the grade is what the learner's function returned for inputs it could not know in
advance, compared by code it cannot touch, in a process where the shortcuts its part forbids do not
exist. A part that fails after its code tried a forbidden module says which rule it broke.

Example::

    with Host("ps01_scopes") as host:
        result = recheck_notebook(nb, "ps01_scopes", host, salt=1234)
    result.parts["layer_norm_hidden"].passed
"""

from __future__ import annotations

import os
import pickle
import select
import time
from dataclasses import dataclass, field

from .recheck_child import Foreign, Observed, decode, unpack

__all__ = ["PartOutcome", "Recheck", "Program", "learner_program", "course_cells", "recheck_notebook", "rule_groups"]

#: The largest result message the grader reads from a learner process.
RESULT_LIMIT_BYTES = 256 << 20


@dataclass
class PartOutcome:
    """The re-check's verdict on one Part."""

    grade_id: str
    passed: bool
    message: str
    cases: int = 0
    broken_rules: list[str] = field(default_factory=list)


@dataclass
class Recheck:
    """Everything one re-check found."""

    parts: dict[str, PartOutcome] = field(default_factory=dict)
    cell_errors: list[str] = field(default_factory=list)
    forbidden: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"parts": {k: vars(v) for k, v in self.parts.items()}, "cell_errors": self.cell_errors,
                "forbidden": self.forbidden, "seconds": round(self.seconds, 3)}


@dataclass
class Program:
    """The learner's program: the source of each code cell to run, and which of them are the course's
    own (locked, unchanged cells such as an imports cell or a provided driver)."""

    sources: list[str]
    course: set[int] = field(default_factory=set)

    def learners(self, attempts: list[dict]) -> list[dict]:
        """The forbidden-import attempts made by the learner's cells (a course cell may import course
        modules for the notebook's own tests; in the re-check those imports just fail)."""
        return [a for a in attempts if not (a["phase"].startswith("cell ")
                                            and int(a["phase"].split()[1]) in self.course)]


def learner_program(nb, course_cells: dict[str, str] | None = None) -> Program:
    """Every code cell except autograded tests, magics translated, in notebook order.

    ``course_cells`` maps the grade_id of each locked cell of the *source* notebook to its source; a
    cell counts as the course's only if it has such a grade_id and that very source. Without it (the
    learner's own self-check), a cell counts as the course's when its nbgrader metadata says locked.
    """
    from IPython.core.inputtransformer2 import TransformerManager
    from nbgrader import utils

    transform = TransformerManager().transform_cell
    program = Program([])
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if utils.is_grade(cell) and not utils.is_solution(cell):
            continue  # a test cell: the re-check replaces it
        meta = cell.metadata.get("nbgrader", {})
        if course_cells is None:
            if meta.get("locked") and not meta.get("solution"):
                program.course.add(len(program.sources))
        elif course_cells.get(meta.get("grade_id")) == cell.source:
            program.course.add(len(program.sources))
        try:
            program.sources.append(transform(cell.source))
        except Exception:  # untranslatable input runs as-is and fails like it did in the kernel
            program.sources.append(cell.source)
    return program


def course_cells(source_nb) -> dict[str, str]:
    """``{grade_id: source}`` of the locked, non-test code cells of a problem set's source notebook."""
    from nbgrader import utils
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in source_nb.cells
            if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("locked")
            and not utils.is_grade(c) and not utils.is_solution(c)}


def rule_groups(parts) -> dict[tuple[str, ...], list]:
    """Parts grouped by the rules they are graded under (one learner process per group)."""
    groups: dict[tuple[str, ...], list] = {}
    for part in parts:
        groups.setdefault(tuple(sorted(rule.name for rule in part.forbid)), []).append(part)
    return groups


def _hidden(rule_names) -> dict[str, str]:
    from .rules import NO_COURSE_CODE, RULES
    rules = [NO_COURSE_CODE] + [RULES[name] for name in rule_names]
    return {module: rule.message() for rule in rules for module in rule.modules}


class _Ended(Exception):
    """The learner process stopped answering (exited, or over its time)."""


class _Reader:
    """Framed messages from a learner process, each within a deadline."""

    def __init__(self, fd: int):
        self.fd, self.buffer = fd, bytearray()

    def read(self, deadline: float) -> tuple[dict, dict]:
        need = None
        while True:
            if need is None and len(self.buffer) >= 4:
                need = int.from_bytes(self.buffer[:4], "big")
                if need > RESULT_LIMIT_BYTES:
                    raise _Ended("sent a result larger than the grader accepts")
            if need is not None and len(self.buffer) >= 4 + need:
                data = bytes(self.buffer[4:4 + need])
                del self.buffer[:4 + need]
                try:
                    return unpack(data)
                except Exception as exc:
                    raise _Ended(f"sent an unreadable result ({type(exc).__name__})") from None
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Ended("time")
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                raise _Ended("exit")
            self.buffer += chunk


def _verdict(part, case, head: dict, arrays: dict) -> str | None:
    """None if the learner's answer for ``case`` matches the reference, else the learner-facing reason."""
    from .compare import GradingError

    if case.raises is not None:
        promised = case.raises.__name__
        if "error" in head:
            return f"{head['error']}, expected {promised} (case {case.label!r})"
        if head.get("raised") == promised:
            return None
        return f"{part.function}(...) returned for case {case.label!r}, but it must raise {promised} there"
    if "error" in head:
        return f"{head['error']} (case {case.label!r})"
    try:
        value = decode(head["value"], arrays)
    except Exception as exc:  # only learner code (the process it runs in) can have garbled the result
        return f"{part.function}(...) for case {case.label!r}: the learner process sent a malformed result ({type(exc).__name__})"
    observed = Observed(list(value["results"]), {int(k): v for k, v in value["states"].items()})

    def foreign(item):
        if isinstance(item, Foreign):
            return item
        if isinstance(item, (tuple, list)):
            return next(filter(None, map(foreign, item)), None)
        return None
    stand_in = foreign(observed.results)
    if stand_in is not None:
        return (f"{part.function}(...) for case {case.label!r}: returned {stand_in!r}, which the grader does not "
                f"accept; return plain numpy arrays and numbers (convert tensors with .numpy())")
    try:
        part.judge(observed, case)
    except GradingError as exc:
        return str(exc)
    except Exception as exc:  # a malformed result that the comparison cannot even read
        return f"{part.function}(...) for case {case.label!r}: unexpected result ({type(exc).__name__}: {exc})"
    return None


def _rule_note(attempts: list[dict]) -> str:
    if not attempts:
        return ""
    first = attempts[0]
    return f" (your code tried to import {first['module']}: {first['message']})"


def recheck_notebook(nb, problem_set: str, host, *, salt: int | None = None, call_timeout: float = 30.0,
                     timeout: float = 300.0, grade_ids=None, course: dict[str, str] | None = None) -> Recheck:
    """Re-check every Part of ``problem_set`` (or those in ``grade_ids``) against the learner code in
    ``nb``, in learner processes started by ``host`` (:class:`normcourse.grading.host.Host`).

    Args:
        nb: the notebook (nbformat node): a submission, or nbgrader's autograded copy of it.
        problem_set: the registry key, e.g. ``"ps01_scopes"``.
        host: starts the sandboxed learner processes.
        salt: course-private seed mixed into every Part's cases (None: the notebook's own seeds).
        call_timeout: seconds for running each cell of the program and for each call.
        timeout: wall-clock seconds for the whole re-check; parts not reached by then fail.
        grade_ids: restrict to these parts.
        course: the source notebook's locked cells (:func:`course_cells`), to tell the course's cells
            from the learner's (see :func:`learner_program`).
    """
    from .parts import parts_of, provided_modules

    started = time.monotonic()
    deadline = started + timeout
    parts = [p for p in parts_of(problem_set) if grade_ids is None or p.grade_id in grade_ids]
    provided = provided_modules(problem_set)
    program = learner_program(nb, course)
    result = Recheck()
    for rules, group in rule_groups(parts).items():
        queue = [(part, part.make_cases(salt)) for part in group]
        hidden = _hidden(rules)
        first_process = True
        while queue:
            child = host.start_recheck(hidden, provided)
            reader = _Reader(child.results_fd)
            try:
                child.commands.write(_frame({"program": program.sources, "cell_timeout": call_timeout,
                                             "hidden": hidden, "provided": list(provided)}))
                child.commands.flush()
                head, _ = reader.read(min(deadline, time.monotonic() + call_timeout * (len(program.sources) + 1) + 5))
                program_attempts = program.learners(head.get("forbidden", []))
                if first_process:
                    result.cell_errors += head.get("cell_errors", [])
                    result.forbidden += program_attempts
                    first_process = False
                while queue:
                    part, cases = queue.pop(0)
                    outcome, alive = _run_part(part, cases, child, reader, call_timeout, deadline, program_attempts)
                    result.parts[part.grade_id] = outcome
                    if not alive:  # killed for its time, or it exited: a fresh process takes the rest
                        break
            except (_Ended, OSError) as exc:  # the program itself never finished
                why = _ended_reason(exc, child, call_timeout)
                for part, cases in queue:
                    result.parts[part.grade_id] = PartOutcome(part.grade_id, False,
                                                              f"{part.function}: no result; {why}", len(cases))
                queue = []
            finally:
                child.kill()
    result.seconds = time.monotonic() - started
    return result


def _frame(message: dict) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(4, "big") + data


def _ended_reason(exc, child, limit: float) -> str:
    if str(exc) == "time":
        return f"your code did not finish within the time limit ({limit:g} s per cell and per call)"
    tail = child.stderr_tail().strip().splitlines()
    detail = f": {tail[-1][:300]}" if tail else ""
    if str(exc) == "exit":
        return f"your code ended the process{detail}"
    return f"your code's process {exc}{detail}"


def _run_part(part, cases, child, reader, call_timeout: float, deadline: float,
              program_attempts) -> tuple[PartOutcome, bool]:
    """Send ``part``'s cases one at a time; stop at the first that fails (the grader reports one).
    Returns the verdict and whether the learner process can take more calls."""
    for index, case in enumerate(cases):
        call = {"key": f"{part.grade_id}:{index}", "function": part.function, "args": case.args,
                "kwargs": case.kwargs, "inplace": tuple(case.inplace), "state_of": tuple(case.state_of),
                "repeat": case.repeat, "raises": case.raises.__name__ if case.raises is not None else None}
        try:
            child.commands.write(_frame({"call": call}))
            child.commands.flush()
            head, arrays = reader.read(min(deadline, time.monotonic() + call_timeout * case.repeat + 5))
        except (_Ended, OSError) as exc:
            why = (f"{part.function} did not return within {call_timeout:g} s" if str(exc) == "time"
                   else _ended_reason(exc, child, call_timeout))
            return PartOutcome(part.grade_id, False, f"{why} (case {case.label!r})", len(cases)), False
        reason = _verdict(part, case, head, arrays)
        if reason is not None:
            attempts = head.get("forbidden", []) or program_attempts
            rules = sorted({a["message"].split("(rule ", 1)[-1].split(")", 1)[0] for a in attempts})
            note = "" if "(rule " in reason else _rule_note(attempts)  # the error may name the rule already
            return PartOutcome(part.grade_id, False, reason + note, len(cases), rules), True
    return PartOutcome(part.grade_id, True, f"{len(cases)} cases match the reference", len(cases)), True
