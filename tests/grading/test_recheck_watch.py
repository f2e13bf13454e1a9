"""The re-check's watch on the comparison machinery (normcourse.grading.sandbox._snapshot/_changed).

Watching a module must not import what its lazy ``__getattr__`` would load (normcourse.reference's
torch functions: about 1.5 s in every re-check child), yet a learner who binds such a name to their
own function is still reported, while the module's own lazy loading is not.
"""

from __future__ import annotations

import sys
import types

import pytest

from normcourse.grading import sandbox


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
