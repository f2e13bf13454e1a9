"""Checks every autograded part of all six problem sets must pass: reproducible, distinguishable cases,
and at least one plausible wrong implementation rejected with a message that names the failing case.

The wrong implementations live beside the other tests of their problem sets (``WRONG`` in
test_problems_ps01_03.py and test_problems_ps04_06.py); this module runs them all the same way.
"""

import numpy as np
import pytest
from test_problems_ps01_03 import WRONG as WRONG_PS01_03
from test_problems_ps04_06 import WRONG as WRONG_PS04_06

from normcourse.grading.compare import GradingError
from normcourse.grading.parts import get_part, parts_of, problem_sets

WRONG = {**WRONG_PS01_03, **WRONG_PS04_06}
WRONG_CASES = [(key, fn) for key, fns in WRONG.items() for fn in fns]
COURSE_SETS = [ps for ps in problem_sets() if not ps.startswith("ps00")]  # ps00: the test fixture
ALL_PARTS = [p for ps in COURSE_SETS for p in parts_of(ps)]


PART_IDS = [f"{p.problem_set}:{p.grade_id}" for p in ALL_PARTS]


def test_enough_autograded_parts():
    for ps in COURSE_SETS:
        assert len(parts_of(ps)) >= 5, ps


# The reference passes its own parts (and quickly: hidden-test cells share a 60 s cell limit). Parts
# without a reference (experiments, checked for properties) are passed by the solutions in the gate.
WITH_REFERENCE = [p for p in ALL_PARTS if p.reference is not None]


@pytest.mark.parametrize("part", WITH_REFERENCE, ids=[f"{p.problem_set}:{p.grade_id}" for p in WITH_REFERENCE])
def test_reference_passes(part):
    assert part.check(part.reference) == len(part.make_cases()) > 0


@pytest.mark.parametrize("part", ALL_PARTS, ids=PART_IDS)
def test_cases_are_reproducible_and_labels_unique(part):
    first, second = part.make_cases(), part.make_cases()
    assert [c.label for c in first] == [c.label for c in second]
    assert len({c.label for c in first}) == len(first), "labels must tell cases apart in messages"
    for a, b in zip(first, second):
        for x, y in zip(a.args, b.args):
            if isinstance(x, np.ndarray):
                np.testing.assert_array_equal(x, y)


def test_every_part_of_every_set_has_a_wrong_implementation():
    assert len(COURSE_SETS) == 6
    assert {(p.problem_set, p.grade_id) for p in ALL_PARTS} == set(WRONG)


@pytest.mark.parametrize("key, wrong", WRONG_CASES,
                         ids=[f"{k[1]}:{getattr(f, '__name__', 'fn')}" for k, f in WRONG_CASES])
def test_wrong_implementation_fails_naming_the_case(key, wrong):
    part = get_part(*key)
    with pytest.raises(GradingError) as info:
        part.check(wrong)
    message = str(info.value)
    labels = [case.label for case in part.make_cases()]
    assert any(repr(label) in message for label in labels), f"message names no case: {message}"
