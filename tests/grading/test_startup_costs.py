"""What the grading processes skip or do themselves to start faster, and why that changes nothing:

- the optional ``rfc3987_syntax`` format checker (normcourse.grading.startup), which no notebook
  schema can call;
- nbgrader's ``alembic heads`` subprocess for a new gradebook (autograde.stamp_new_gradebook), whose
  answer is read from nbgrader's own migration scripts instead;
- torch in the kernel zygote and re-check fork server, which only problem sets that import it get.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from normcourse.grading.host import kernel_preload, uses_torch

REPO = Path(__file__).resolve().parents[2]


def _format_keywords(schema, path="$"):
    """Every JSON-schema ``format`` keyword (a string value) in ``schema``, with where it is."""
    found = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "format" and isinstance(value, str):
                found.append((path, value))
            found += _format_keywords(value, f"{path}.{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            found += _format_keywords(value, f"{path}[{i}]")
    return found


def test_no_notebook_schema_uses_a_string_format():
    import nbgrader.nbgraderformat

    schemas = sorted(Path(nbformat.__file__).parent.glob("v*/*.schema.json"))  # notebooks
    schemas += sorted(Path(nbgrader.nbgraderformat.__file__).parent.glob("v*.json"))  # nbgrader's cell metadata
    assert len(schemas) >= 10
    for path in schemas:
        assert _format_keywords(json.loads(path.read_text())) == [], path
    assert _format_keywords({"properties": {"format": {"type": "string", "format": "iri"}}}) != []  # it can find one


def test_the_skipped_checker_is_not_loaded_and_validation_still_works():
    code = ("from normcourse.grading.startup import skip_unused_format_checkers\n"
            "skip_unused_format_checkers()\n"
            "import sys, nbformat\n"
            "nbformat.validate(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('1')]))\n"
            "bad = nbformat.v4.new_notebook(); bad.cells = [{'cell_type': 'code'}]\n"
            "try:\n    nbformat.validate(bad)\nexcept nbformat.ValidationError:\n    print('invalid caught')\n"
            "print('rfc3987_syntax loaded:', sys.modules.get('rfc3987_syntax') is not None)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["invalid caught", "rfc3987_syntax loaded: False"]


def test_a_stamped_gradebook_has_nbgraders_schema_version_and_tables(tmp_path, monkeypatch):
    from nbgrader.api import Gradebook, get_alembic_version

    from normcourse.grading.autograde import stamp_new_gradebook
    from normcourse.grading.course import ensure_tool_path

    ensure_tool_path()  # nbgrader's own way runs the `alembic` executable next to this interpreter
    path = tmp_path / "gradebook.db"
    assert stamp_new_gradebook(path)
    assert not stamp_new_gradebook(path)  # never touches an existing file
    with Gradebook(f"sqlite:///{path}") as gb:
        gb.add_student("ada")
        version = gb.db.execute(__import__("sqlalchemy").text("SELECT version_num FROM alembic_version")).scalar()
    assert version == get_alembic_version()
    reference = tmp_path / "by-nbgrader.db"
    with Gradebook(f"sqlite:///{reference}"):
        pass
    import sqlite3
    tables = [sorted(r[0] for r in sqlite3.connect(p).execute("SELECT name FROM sqlite_master WHERE type='table'"))
              for p in (path, reference)]
    assert tables[0] == tables[1]


@pytest.mark.parametrize("problem_set, torch", [("ps01_scopes", False), ("ps02_batchnorm_state", False),
                                                 ("ps03_backward", False), ("ps04_jacobians", False),
                                                 ("ps05_optimization", True), ("ps06_transformers", True)])
def test_torch_is_preloaded_only_for_problem_sets_that_import_it(problem_set, torch):
    source = REPO / "solutions" / problem_set
    assert uses_torch(source) is torch
    modules = kernel_preload(problem_set, uses_torch(source))
    assert ("torch" in modules) is torch
    assert f"normcourse.problems.{problem_set}" in modules


def test_a_mention_of_torch_is_not_an_import(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("import torch is not allowed here"),
        nbformat.v4.new_code_cell("# do not use torch\nx = 'from torch import nn'\n")])
    nbformat.write(nb, tmp_path / "a.ipynb")
    assert not uses_torch(tmp_path)
    nb.cells.append(nbformat.v4.new_code_cell("if True:\n    from torch.nn import functional as F\n"))
    nbformat.write(nb, tmp_path / "a.ipynb")
    assert uses_torch(tmp_path)
