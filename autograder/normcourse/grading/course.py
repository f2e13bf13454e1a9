"""Where the course lives and how nbgrader is configured for it.

Every instructor command works on a *course root*: a folder with ``nbgrader_config.py``,
``solutions/`` (nbgrader's source) and ``exercises/`` (the releases). The grading work area
(submissions, autograded copies, feedback, the gradebook, our ledger) is the folder the config names,
``grading/`` by default or ``$NORMCOURSE_GRADING_DIR``.

The configuration is nbgrader's own: :func:`load_config` reads ``nbgrader_config.py`` with traitlets
exactly as the ``nbgrader`` command would, and callers add overrides on top (a worker's private
gradebook, a shorter cell timeout). Nothing here re-implements nbgrader.

Example::

    course = Course.find()                      # the repository, or the folder holding nbgrader_config.py
    api = course.api(Execute={"timeout": 10})   # nbgrader.apps.api.NbGraderAPI on this course
    api.generate_assignment("ps01_scopes", force=True)
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from traitlets.config import Config

__all__ = ["Course", "load_config", "ensure_tool_path", "GRADING_DIR_ENV"]

GRADING_DIR_ENV = "NORMCOURSE_GRADING_DIR"


def ensure_tool_path() -> None:
    """Put this interpreter's ``bin/`` first on PATH.

    nbgrader upgrades a new gradebook by running the ``alembic`` executable, and kernels are found
    through ``jupyter``; both live next to the interpreter in a venv that may not be activated.
    """
    bindir = str(Path(sys.executable).parent)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if parts[:1] != [bindir]:
        os.environ["PATH"] = os.pathsep.join([bindir] + [p for p in parts if p != bindir])


def load_config(root: Path, overrides: dict | None = None) -> Config:
    """nbgrader's configuration of the course at ``root`` plus ``overrides`` (``{"Section": {key: value}}``)."""
    from traitlets.config.loader import PyFileConfigLoader

    config = Config()
    config_file = root / "nbgrader_config.py"
    if config_file.exists():
        config.merge(PyFileConfigLoader(config_file.name, path=str(root)).load_config())
    config.CourseDirectory.root = str(root)
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            setattr(getattr(config, section), key, value)
    return config


@dataclass(frozen=True)
class Course:
    """A course root and its grading work area.

    Attributes:
        root: the folder with ``nbgrader_config.py``.
        work: the grading work area; None means whatever the config names (``grading/`` or
            ``$NORMCOURSE_GRADING_DIR``). Tests pass a temp folder here so that several courses can
            coexist in one process.
    """

    root: Path
    work: Path | None = None

    @classmethod
    def find(cls, start: str | os.PathLike | None = None) -> "Course":
        """The course whose ``nbgrader_config.py`` is at or above ``start`` (default: the working directory).

        Falls back to the repository this package was installed from, so ``normcourse`` works from
        anywhere inside the checkout.
        """
        here = Path(start or os.getcwd()).resolve()
        for folder in (here, *here.parents):
            if (folder / "nbgrader_config.py").exists() and (folder / "solutions").is_dir():
                return cls(folder)
        repo = Path(__file__).resolve().parents[3]
        if (repo / "nbgrader_config.py").exists():
            return cls(repo)
        raise FileNotFoundError(f"no course (a folder with nbgrader_config.py and solutions/) at or above {here}")

    # -- configuration ---------------------------------------------------------------------------
    def config(self, overrides: dict | None = None) -> Config:
        merged: dict = {}
        if self.work is not None:
            work = Path(self.work).resolve()
            merged["CourseDirectory"] = {
                "submitted_directory": os.path.relpath(work / "submitted", self.root),
                "autograded_directory": os.path.relpath(work / "autograded", self.root),
                "feedback_directory": os.path.relpath(work / "feedback", self.root),
                "db_url": f"sqlite:///{work / 'gradebook.db'}"}
        for section, values in (overrides or {}).items():
            merged.setdefault(section, {}).update(values)
        return load_config(self.root, merged)

    def coursedir(self, overrides: dict | None = None):
        from nbgrader.coursedir import CourseDirectory
        return CourseDirectory(config=self.config(overrides))

    def api(self, overrides: dict | None = None):
        """An ``NbGraderAPI`` on this course (with the gradebook folder created and tools on PATH)."""
        from nbgrader.apps.api import NbGraderAPI
        from nbgrader.coursedir import CourseDirectory

        ensure_tool_path()
        config = self.config(overrides)
        self.grading_dir.mkdir(parents=True, exist_ok=True)
        return NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)

    # -- paths -----------------------------------------------------------------------------------
    @property
    def grading_dir(self) -> Path:
        """The work area: the folder holding the gradebook (from the config's ``db_url``)."""
        db_url = str(self.config().CourseDirectory.get("db_url", ""))
        if db_url.startswith("sqlite:///"):
            return Path(db_url[len("sqlite:///"):]).parent
        return Path(os.environ.get(GRADING_DIR_ENV, self.root / "grading"))

    @property
    def db_url(self) -> str:
        return self.coursedir().db_url

    def source_dir(self, problem_set: str) -> Path:
        return Path(self.coursedir().format_path(self.coursedir().source_directory, ".", problem_set))

    def release_dir(self, problem_set: str) -> Path:
        return Path(self.coursedir().format_path(self.coursedir().release_directory, ".", problem_set))

    def submitted_dir(self, problem_set: str, student: str) -> Path:
        cd = self.coursedir()
        return Path(cd.format_path(cd.submitted_directory, student, problem_set))

    def autograded_dir(self, problem_set: str, student: str) -> Path:
        cd = self.coursedir()
        return Path(cd.format_path(cd.autograded_directory, student, problem_set))

    def feedback_dir(self, problem_set: str, student: str) -> Path:
        cd = self.coursedir()
        return Path(cd.format_path(cd.feedback_directory, student, problem_set))

    def notebooks(self, problem_set: str) -> list[str]:
        """Names (without .ipynb) of the problem set's source notebooks."""
        return sorted(p.stem for p in self.source_dir(problem_set).glob("*.ipynb"))

    def submitted_students(self, problem_set: str) -> list[str]:
        return self._students_in(self.coursedir().submitted_directory, problem_set)

    def autograded_students(self, problem_set: str) -> list[str]:
        return self._students_in(self.coursedir().autograded_directory, problem_set)

    def _students_in(self, directory: str, problem_set: str) -> list[str]:
        cd = self.coursedir()
        base = Path(cd.format_path(directory, ".", ".")).resolve()
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if (p / problem_set).is_dir())

    def problem_sets(self) -> list[str]:
        base = Path(self.coursedir().format_path(self.coursedir().source_directory, ".", ".")).resolve()
        return sorted(p.name for p in base.iterdir() if p.is_dir() and list(p.glob("*.ipynb")))
