"""The package's layers, by dependency (lower never imports higher):

``normcourse.reference`` (numpy only) <- ``normcourse.lab`` (torch) <- ``normcourse.book`` (figures, glue);
``normcourse.grading`` imports the reference and nothing of lab, book or the problem sets;
``normcourse.problems`` (the Parts of each problem set) may use the reference, the lab and the grading
tools, never the book.

Every ``import`` statement of every module is read from its syntax tree, including imports inside
functions, so a lazy import cannot hide a dependency. The runtime checks run in fresh interpreters,
because this test process has long imported torch.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import normcourse

PACKAGE = Path(normcourse.__file__).parent
STDLIB = set(sys.stdlib_module_names)

#: Top-level third-party packages each layer may import (the standard library is always allowed).
THIRD_PARTY = {
    "reference": {"numpy"},
    "lab": {"numpy", "torch", "sklearn"},
    "book": {"numpy", "matplotlib", "torch", "IPython"},   # IPython: the chapters' display system (glue)
    "grading": {"numpy", "nbformat", "nbgrader", "nbclient", "jupyter_client", "jupyter_core", "ipykernel",
                "IPython", "traitlets", "tqdm", "psutil", "alembic", "sqlalchemy", "jsonschema",
                "matplotlib", "distributed", "dask", "zmq", "tornado", "mathjax", "psycopg", "nbconvert"},
}
#: Which normcourse subpackages each layer may import.
INTERNAL = {
    "reference": {"reference"},
    "lab": {"reference", "lab"},
    "book": {"reference", "lab", "book"},
    "grading": {"reference", "grading"},
    "problems": {"reference", "lab", "grading", "problems"},
}


def _layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def _imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in the module under package ``root``, relative
    ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ["normcourse", *path.relative_to(root).parent.parts]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # "from . import x": each name is a module
                    found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
                    continue
            else:
                module = node.module
            if module == "normcourse":  # "from normcourse import reference": each name is a subpackage
                found += [(node.lineno, f"normcourse.{alias.name}") for alias in node.names]
                continue
            if module != "__future__":
                found.append((node.lineno, module))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_imports_only_what_its_layer_allows(path):
    layer = _layer(path)
    if layer not in INTERNAL:  # cli.py, __init__.py: the entry points sit on top
        return
    wrong = []
    for line, name in _imports(path):
        top = name.split(".")[0]
        if top == "normcourse":
            sub = name.split(".")[1] if "." in name else ""
            if sub not in INTERNAL[layer]:
                wrong.append(f"line {line}: {name} ({layer} may import normcourse.{sorted(INTERNAL[layer])})")
        elif top not in STDLIB and layer in THIRD_PARTY and top not in THIRD_PARTY[layer]:
            wrong.append(f"line {line}: {name} ({layer} may import {sorted(THIRD_PARTY[layer])} and the standard library)")
    assert not wrong, f"{path.relative_to(PACKAGE)} breaks the layering:\n" + "\n".join(wrong)


def test_the_layer_table_covers_every_subpackage():
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert subpackages == set(INTERNAL)


def test_the_import_reader_sees_lazy_and_relative_imports(tmp_path):
    module = tmp_path / "grading" / "probe.py"
    module.parent.mkdir()
    module.write_text("def f():\n    from ..lab import models\n    from . import parts\n    import torch\n")
    names = [name for _, name in _imports(module, tmp_path)]
    assert names == ["normcourse.lab", "normcourse.grading.parts", "torch"]


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def _numpy_only_problem_sets() -> list[str]:
    """The course's problem sets (modules of ``normcourse.problems``, read from the registry, so a new set
    is covered by registering it) whose every Part forbids torch: their modules and hidden-test cells
    must not import torch."""
    from normcourse.grading.parts import parts_of, problem_sets
    from normcourse.grading.rules import NO_TORCH

    return [ps for ps in problem_sets() if (PACKAGE / "problems" / f"{ps}.py").exists()  # not test fixtures
            and all(NO_TORCH in p.forbid for p in parts_of(ps))]


NUMPY_ONLY_SETS = _numpy_only_problem_sets()
NUMPY_ONLY = ["normcourse.reference", "normcourse.grading.parts", "normcourse.grading.compare",
              *(f"normcourse.problems.{ps}" for ps in NUMPY_ONLY_SETS)]


def test_some_problem_sets_are_numpy_only():
    """The parametrizations below are not vacuous (the first four sets forbid torch in every Part)."""
    assert len(NUMPY_ONLY_SETS) >= 4, NUMPY_ONLY_SETS


@pytest.mark.parametrize("module", NUMPY_ONLY)
def test_importing_does_not_import_torch(module):
    assert _run(f"import sys, {module}; print('torch' in sys.modules)") == "False"


@pytest.mark.parametrize("problem_set", NUMPY_ONLY_SETS)
def test_a_numpy_only_sets_hidden_test_does_not_import_torch(problem_set):
    """A hidden-test cell calls check_part, which imports only that set's module (not the torch sets')."""
    out = _run("import sys\n"
               "from normcourse.grading.parts import get_part, parts_of\n"
               f"parts = parts_of({problem_set!r})\n"
               f"assert get_part({problem_set!r}, parts[0].grade_id) is parts[0]\n"
               "print('torch' in sys.modules)")
    assert out == "False"

