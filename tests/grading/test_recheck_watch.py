"""The re-check's watch on the comparison machinery (normcourse.grading.sandbox._snapshot/_changed).

Watching a module must not import what its lazy ``__getattr__`` would load (normcourse.reference's
torch functions: about 1.5 s in every re-check child), yet a learner who binds such a name to their
own function is still reported, while the module's own lazy loading is not.
"""

from __future__ import annotations

import sys
import types

import pytest

from grading_helpers import PROBLEM_SET, with_solution
from normcourse.grading import sandbox

CENTER_OK = "import numpy as np\ndef center(x):\n    x = np.asarray(x)\n    return x - x.mean(axis=-1, keepdims=True)\n"


@pytest.fixture
def lazy_module(monkeypatch):
    """``lazy_pkg`` with an eager ``eager`` and a lazily loaded ``later`` (PEP 562), like normcourse.reference."""
    module = types.ModuleType("lazy_pkg")
    loads = []

    def later():
        return "the module's own"
    later.__module__ = "lazy_pkg.sub"

    def eager():
        return "eager"

    def __getattr__(name):
        if name == "later":
            loads.append(name)
            module.later = later
            return later
        raise AttributeError(name)

    module.eager, module.__getattr__, module.__all__ = eager, __getattr__, ["eager", "later"]
    monkeypatch.setitem(sys.modules, "lazy_pkg", module)
    return module, loads


def test_watching_does_not_trigger_lazy_loading(lazy_module):
    module, loads = lazy_module
    snap = sandbox._snapshot({"lazy_pkg": ["*"]})
    assert loads == []
    assert sandbox._changed(snap) == []


def test_the_modules_own_lazy_load_is_not_tampering(lazy_module):
    module, loads = lazy_module
    snap = sandbox._snapshot({"lazy_pkg": ["*"]})
    assert module.later() == "the module's own"  # learner code that merely uses the name
    assert loads == ["later"]
    assert sandbox._changed(snap) == []


@pytest.mark.parametrize("name", ["eager", "later"])
def test_binding_a_watched_name_is_tampering(lazy_module, name):
    module, _ = lazy_module
    snap = sandbox._snapshot({"lazy_pkg": ["*"]})
    setattr(module, name, lambda *a, **k: "patched")  # defined in the learner's namespace
    assert sandbox._changed(snap) == [f"lazy_pkg.{name}"]


@pytest.mark.slow
def test_recheck_reports_a_patched_lazy_reference_name_but_not_its_use():
    uses = with_solution("center", CENTER_OK + "import normcourse.reference as ref\nref.landscape_probe\n")
    patches = with_solution("center", CENTER_OK + "import normcourse.reference as ref\n"
                                                  "ref.landscape_probe = lambda *a, **k: None\n")
    clean = sandbox.recheck_notebook(uses, PROBLEM_SET, timeout=120)
    assert clean.tampering == [] and all(p.passed for p in clean.parts.values()), clean
    flagged = sandbox.recheck_notebook(patches, PROBLEM_SET, timeout=120)
    assert flagged.tampering == ["normcourse.reference.landscape_probe"]
