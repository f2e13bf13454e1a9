"""Fixtures for the grading tests (helpers live in grading_helpers.py, importable by the test modules)."""

import pytest

from grading_helpers import make_course


@pytest.fixture(scope="session")
def fixture_course(tmp_path_factory):
    """A course with the fixture problem set released (see grading_helpers.make_course)."""
    return make_course(tmp_path_factory.mktemp("course"))
