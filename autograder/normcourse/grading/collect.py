"""Collect an LMS download (zip files of notebooks) into nbgrader's ``submitted/<student>/<PS>/`` layout,
with nbgrader's own ``ZipCollectApp`` and two plugins that make it safe for untrusted archives.

``nbgrader zip_collect`` works in two steps, each a plugin: an *extractor* unpacks everything in
``downloaded/<PS>/archive/`` into ``downloaded/<PS>/extracted/``, then a *collector* is asked, file by
file, which student and notebook each extracted file is (or ``None``: skip it), and the app copies
what it was given into the submitted folders. Both steps here are our plugins:

:class:`SafeZipExtractor` (an ``nbgrader.plugins.ExtractorPlugin``) is the gate for the archive. It
writes a file into ``extracted/`` only if it passes every check, and otherwise records the reason:

- **path traversal**: absolute names, ``..`` components, backslashes, drive letters and symbolic-link
  entries are rejected (and nothing is ever written outside ``extracted/``);
- **zip bombs**: an entry larger than ``max_entry_mb`` uncompressed, a compression ratio above
  ``max_ratio`` (entries above 1 MiB), a total above ``max_total_mb``, or more than ``max_entries``
  entries in one archive are rejected; sizes are taken from the zip directory and enforced again on
  the bytes actually read, so a lying header cannot get past them;
- **not a notebook**: a name not ending in ``.ipynb``, or content that nbformat cannot read and
  validate. Only ``.zip`` archives are opened (``zip_ext``); OS metadata (``__MACOSX/``, dot files)
  is skipped. Each extracted file keeps its zip entry's time as its modification time.

:class:`SubmissionCollector` (an ``nbgrader.plugins.FileNameCollectorPlugin``) is the gate for the
submitted folders. On its first call it plans the whole ``extracted/`` folder at once, then answers
nbgrader file by file:

- **no student id**: a file name the pattern (``named_regexp``, applied to the file's base name,
  ignoring case, with a group ``student_id``) does not match, or an id that is not a safe folder name;
- **duplicates**: two files for the same student are both rejected (which one is meant is for a
  person to decide), so nbgrader's own duplicate rule (keep the newer, or fail the whole run) is
  never reached;
- **existing submissions**: nbgrader clears a student's submitted folder before copying (or fails
  the run). The collector therefore hands nbgrader only students whose folder is empty or absent: an
  identical existing notebook is "unchanged", a different one is rejected unless ``overwrite`` is
  set, and then the old folder is first moved to ``replaced/<student>/<PS>/<time>/`` next to the
  submitted folder (``grading/replaced/``).

Every accepted notebook is saved under the problem set's notebook name, with a ``timestamp.txt``
(written by nbgrader) from the pattern's ``timestamp`` group if it has one, else the zip entry's time.

Configuration is nbgrader's: in ``nbgrader_config.py``::

    c.ZipCollectApp.extractor_plugin = "normcourse.grading.collect.SafeZipExtractor"
    c.ZipCollectApp.collector_plugin = "normcourse.grading.collect.SubmissionCollector"
    c.SubmissionCollector.named_regexp = r"^(?P<student_id>[a-z0-9]+)_.*\\.ipynb$"
    c.SafeZipExtractor.max_entry_mb = 20

then ``nbgrader zip_collect PS --force`` (``--force`` only clears nbgrader's scratch folder
``extracted/``; a submission is replaced only with ``--SubmissionCollector.overwrite=True``).
:func:`collect_zip` (``normcourse collect PS ZIP``) runs the same app on one zip in a private scratch
folder and returns a :class:`CollectReport`.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from textwrap import dedent

from nbgrader.plugins import ExtractorPlugin, FileNameCollectorPlugin
from nbgrader.utils import parse_utc
from traitlets import Bool, Float, Int, List, TraitError, Unicode, validate

__all__ = ["DEFAULT_PATTERN", "SafeZipExtractor", "SubmissionCollector", "CollectReport", "collect_zip"]

#: Canvas-style names: ``doejane_12345_6789012_ps01_scopes.ipynb``, ``doejane_LATE_12345_6789012_ps01-1.ipynb``.
DEFAULT_PATTERN = r"^(?P<student_id>[A-Za-z0-9][A-Za-z0-9.\-]*)_(?:LATE_)?(?:\d+_)*.*\.ipynb$"

#: A student id becomes a folder name: no separators, no leading dot.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+\-]*$")

_MiB = 2 ** 20


def _unsafe_name(name: str) -> str | None:
    if "\\" in name or re.match(r"^[A-Za-z]:", name):
        return "uses a Windows path"
    path = PurePosixPath(name)
    if path.is_absolute():
        return "is an absolute path"
    if any(part == ".." for part in path.parts):
        return "climbs out of the folder (..)"
    return None


def _is_metadata(name: str) -> bool:
    """OS litter that is not a submission (macOS resource forks, dot files)."""
    return name.startswith("__MACOSX/") or any(part.startswith(".") for part in PurePosixPath(name).parts)


def _first_line(exc: Exception) -> str:
    text = str(exc).splitlines()[0][:120] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SafeZipExtractor(ExtractorPlugin):
    """Extract LMS zips into ``extracted/``, writing only safe, size-limited, valid notebooks.

    See the module docstring for the checks. What was rejected, and why, is in :attr:`rejected`
    (``"<archive>/<entry>: <reason>"``) and in the log.
    """

    zip_ext = List([".zip"], help="Archive file extensions to open (only zip archives are supported).").tag(config=True)
    max_entry_mb = Float(20.0, help="Largest uncompressed notebook accepted (MiB).").tag(config=True)
    max_total_mb = Float(500.0, help="Largest total uncompressed size of everything extracted (MiB).").tag(config=True)
    max_ratio = Float(200.0, help=dedent("""
        Largest compression ratio (uncompressed / compressed) of an entry above 1 MiB; higher looks like
        a zip bomb.""")).tag(config=True)
    max_entries = Int(5000, help="Most entries one archive may hold; more and nothing is taken from it.").tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rejected: list[str] = []
        self._total = 0

    def _reject(self, name: str, reason: str) -> None:
        self.rejected.append(f"{name}: {reason}")
        self.log.warning("REJECTED %s: %s", name, reason)

    # -- nbgrader's entry point -----------------------------------------------------------------
    def extract(self, archive_path: str, extracted_path: str) -> None:
        """Check and extract every file in ``archive_path`` (zips are opened) into ``extracted_path``."""
        self._total = 0
        if not os.path.isdir(archive_path) or not os.listdir(archive_path):
            self.log.warning("No files found in directory: %s", archive_path)
            return
        for root, dirs, files in os.walk(archive_path):
            dirs.sort()
            rel = os.path.relpath(root, archive_path)
            for name in sorted(files):
                path = os.path.join(root, name)
                shown = os.path.normpath(os.path.join(rel, name))
                if name.startswith("."):
                    continue
                if os.path.islink(path):
                    self._reject(shown, "is a symbolic link")
                elif os.path.splitext(name)[1].lower() in self.zip_ext:
                    self._extract_zip(path, os.path.normpath(os.path.join(extracted_path, rel, name)), shown)
                elif name.lower().endswith(".ipynb"):
                    self._extract_loose(path, os.path.normpath(os.path.join(extracted_path, rel)), shown)
                else:
                    self._reject(shown, "not a notebook (.ipynb) or a zip archive")

    # -- one zip ----------------------------------------------------------------------------------
    def _extract_zip(self, zip_path: str, dest: str, shown: str) -> None:
        try:
            archive = zipfile.ZipFile(zip_path)
        except (zipfile.BadZipFile, OSError) as exc:
            self._reject(shown, f"not a readable zip file ({_first_line(exc)})")
            return
        with archive:
            infos = [i for i in archive.infolist() if not i.is_dir()]
            if len(infos) > self.max_entries:
                self._reject(shown, f"{len(infos)} entries (limit {self.max_entries}); nothing taken from it")
                return
            for info in infos:
                name = f"{shown}/{info.filename}"
                reason = self._entry_problem(info)
                if reason == "":
                    continue  # OS metadata
                if reason:
                    self._reject(name, reason)
                    continue
                try:
                    data = self._read_limited(archive, info)
                except Exception as exc:  # a lying header, a bad CRC, encryption, a truncated archive
                    self._reject(name, str(exc) if isinstance(exc, _TooBig) else
                                 f"cannot be read from the zip ({_first_line(exc)})")
                    continue
                self._accept(data, dest, info.filename, time.mktime(info.date_time + (0, 0, -1)), name)

    def _entry_problem(self, info: zipfile.ZipInfo) -> str | None:
        """Why an entry is rejected before reading it (None: read it; "": skip it silently)."""
        name = info.filename
        problem = _unsafe_name(name)
        if problem:
            return problem
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            return "is a symbolic link"
        if _is_metadata(name):
            return ""
        if not name.lower().endswith(".ipynb"):
            return "not a notebook (.ipynb)"
        if info.file_size > self.max_entry_mb * _MiB:
            return f"{info.file_size / _MiB:.1f} MB uncompressed (limit {self.max_entry_mb:g} MB)"
        if info.file_size > _MiB and info.file_size > self.max_ratio * max(info.compress_size, 1):
            return (f"compression ratio {info.file_size / max(info.compress_size, 1):.0f} "
                    f"(limit {self.max_ratio:g}): looks like a zip bomb")
        if self._total + info.file_size > self.max_total_mb * _MiB:
            return f"the archive expands beyond {self.max_total_mb:g} MB in total"
        return None

    def _read_limited(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
        """The entry's bytes, never reading more than the limits allow (whatever its header says)."""
        limit = int(min(self.max_entry_mb * _MiB, self.max_total_mb * _MiB - self._total))
        with archive.open(info) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise _TooBig(f"expands beyond the size limit ({self.max_entry_mb:g} MB per entry, "
                          f"{self.max_total_mb:g} MB in total) although its header says {info.file_size} bytes")
        if len(data) > _MiB and len(data) > self.max_ratio * max(info.compress_size, 1):
            raise _TooBig(f"compression ratio {len(data) / max(info.compress_size, 1):.0f} "
                          f"(limit {self.max_ratio:g}): looks like a zip bomb")
        return data

    # -- a notebook outside any zip ---------------------------------------------------------------
    def _extract_loose(self, path: str, dest: str, shown: str) -> None:
        limit = int(self.max_entry_mb * _MiB)
        with open(path, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            self._reject(shown, f"larger than {self.max_entry_mb:g} MB")
            return
        if self._total + len(data) > self.max_total_mb * _MiB:
            self._reject(shown, f"the files expand beyond {self.max_total_mb:g} MB in total")
            return
        self._accept(data, dest, os.path.basename(path), os.stat(path).st_mtime, shown)

    # -- writing ----------------------------------------------------------------------------------
    def _accept(self, data: bytes, dest: str, relname: str, mtime: float, shown: str) -> None:
        import nbformat
        try:
            nbformat.validate(nbformat.reads(data.decode("utf-8"), as_version=4))
        except Exception as exc:
            self._reject(shown, f"not a valid notebook ({_first_line(exc)})")
            return
        relname = relname[:-len(".ipynb")] + ".ipynb"  # nbgrader keeps the extension as given
        target = os.path.join(dest, *PurePosixPath(relname).parts)
        copy = 1
        while os.path.lexists(target):  # the same name twice in one zip: keep both, the collector decides
            copy += 1
            target = os.path.join(dest, f"duplicate-{copy}", *PurePosixPath(relname).parts)
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "xb") as f:  # never through an existing file or link
                f.write(data)
        except OSError as exc:  # a name too long for this file system, a file where a folder should be
            self._reject(shown, f"cannot be extracted here ({_first_line(exc)})")
            return
        os.utime(target, (mtime, mtime))
        self._total += len(data)
        self.log.info("Extracted %s -> %s", shown, target)


class _TooBig(ValueError):
    pass


@dataclass
class _Plan:
    action: str  # "accept", "unchanged", "reject"
    student: str = ""
    message: str = ""
    timestamp: object = None
    replace: Path | None = None  # an existing submission folder to move aside first


class SubmissionCollector(FileNameCollectorPlugin):
    """Map extracted notebooks to students, never overwriting a submission silently; see the module docstring.

    Outcomes, after nbgrader called :meth:`collect` on every file: :attr:`accepted`,
    :attr:`unchanged` and :attr:`rejected` (messages), and :attr:`transfers` (``(student, source,
    destination)`` of each file handed to nbgrader to copy).
    """

    named_regexp = Unicode(DEFAULT_PATTERN, help=dedent(r"""
        Regular expression applied (ignoring case) to each extracted file's base name. It must have a
        named group `student_id` (`student` is accepted too) and may have `timestamp`. The default
        reads Canvas-style names: doejane_12345_6789012_ps01_scopes.ipynb.""")).tag(config=True)
    overwrite = Bool(False, help=dedent("""
        Replace a different existing submission (the old folder is moved to replaced/<student>/<PS>/
        next to the submitted folder first). Identical submissions are left alone either way.""")).tag(config=True)
    replaced_directory = Unicode("", help=dedent("""
        Where replaced submissions are kept (default: 'replaced' next to the submitted directory,
        i.e. grading/replaced/).""")).tag(config=True)

    @validate("named_regexp")
    def _check_pattern(self, proposal):
        try:
            regex = re.compile(proposal["value"])
        except re.error as exc:
            raise TraitError(f"named_regexp {proposal['value']!r} is not a regular expression: {exc}") from None
        if not {"student_id", "student"} & set(regex.groupindex):
            raise TraitError(f"named_regexp {proposal['value']!r} needs a named group 'student_id', "
                             f"e.g. (?P<student_id>[a-z0-9]+)")
        return proposal["value"]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.accepted: list[str] = []
        self.unchanged: list[str] = []
        self.rejected: list[str] = []
        self.transfers: list[tuple[str, Path, Path]] = []
        self._plan: dict[str, _Plan] | None = None

    # -- where things are (all from nbgrader's own configuration) ---------------------------------
    @property
    def _app(self):
        app = self.parent
        if getattr(app, "coursedir", None) is None or not app.coursedir.assignment_id:
            raise RuntimeError("SubmissionCollector runs inside nbgrader's ZipCollectApp (with an assignment)")
        return app

    def _extracted_root(self) -> str:
        app = self._app
        return os.path.join(app.coursedir.root, app.collect_directory_structure).format(
            downloaded=app.downloaded_directory, assignment_id=app.coursedir.assignment_id,
            collect_step=app.extracted_directory)

    def notebook_name(self) -> str:
        """The problem set's one notebook file name (from the release, else the source)."""
        from nbgrader.utils import find_all_notebooks

        cd = self._app.coursedir
        for step in (cd.release_directory, cd.source_directory):
            folder = cd.format_path(step, ".", cd.assignment_id)
            notebooks = find_all_notebooks(folder) if os.path.isdir(folder) else []
            if notebooks:
                if len(notebooks) != 1:
                    raise ValueError(f"{cd.assignment_id} has {len(notebooks)} notebooks ({', '.join(notebooks)}); "
                                     f"LMS collection expects exactly one")
                return notebooks[0]
        raise ValueError(f"{cd.assignment_id} has no notebook in {cd.release_directory}/ or {cd.source_directory}/")

    def _submitted(self, student: str) -> Path:
        cd = self._app.coursedir
        return Path(cd.format_path(cd.submitted_directory, student, cd.assignment_id))

    def _replaced_root(self) -> Path:
        if self.replaced_directory:
            return Path(self._app.coursedir.root, self.replaced_directory)
        cd = self._app.coursedir
        return Path(os.path.normpath(cd.format_path(cd.submitted_directory, ".", "."))).parent / "replaced"

    # -- planning the whole folder at once ----------------------------------------------------------
    def _reject(self, shown: str, reason: str) -> _Plan:
        self.rejected.append(f"{shown}: {reason}")
        self.log.warning("REJECTED %s: %s", shown, reason)
        return _Plan("reject")

    def plan(self, files: list[str], root: str) -> dict[str, _Plan]:
        """Decide for every extracted file at once (duplicates need the whole list)."""
        target = self.notebook_name()
        regex = re.compile(self.named_regexp, re.IGNORECASE)
        group = "student_id" if "student_id" in regex.groupindex else "student"
        plan: dict[str, _Plan] = {}
        by_student: dict[str, list[str]] = {}
        for path in sorted(files):
            shown = os.path.relpath(path, root)
            match = regex.match(os.path.basename(path))
            student = match.group(group) if match else None
            if not student:
                plan[path] = self._reject(shown, f"no student id in the file name (pattern {self.named_regexp!r})")
            elif not _SAFE_ID.match(student):
                plan[path] = self._reject(shown, f"student id {student!r} is not a safe folder name")
            else:
                stamp = match.groupdict().get("timestamp")
                try:  # nbgrader would fail the whole run on a timestamp it cannot read
                    stamp = parse_utc(stamp) if stamp else datetime.fromtimestamp(os.stat(path).st_mtime)
                except (ValueError, OverflowError) as exc:
                    plan[path] = self._reject(shown, f"unreadable timestamp {stamp!r} in the file name ({exc})")
                    continue
                plan[path] = _Plan("accept", student, timestamp=stamp)
                by_student.setdefault(student, []).append(path)
        for student, paths in sorted(by_student.items()):
            if len(paths) > 1:
                names = ", ".join(os.path.relpath(p, root) for p in paths)
                self._reject(student, f"{len(paths)} notebooks in the archive ({names}); none taken")
                for p in paths:
                    plan[p] = _Plan("reject", student)
                continue
            path, folder = paths[0], self._submitted(student)
            if not folder.is_dir() or not any(folder.iterdir()):
                plan[path].message = f"{student}: {os.path.relpath(path, root)} -> {folder / target}"
                continue
            existing = folder / target
            if existing.is_file() and existing.read_bytes() == Path(path).read_bytes():
                plan[path] = _Plan("unchanged", student, f"{student}: {existing}")
                self.unchanged.append(plan[path].message)
                self.log.info("Unchanged (identical to the collected file): %s", existing)
            elif not self.overwrite:
                plan[path] = self._reject(student, f"a different submission already exists at {folder}; not "
                                                   f"overwritten (use --overwrite to replace it, keeping a backup)")
            else:
                plan[path].replace = folder
                plan[path].message = f"{student}: {os.path.relpath(path, root)} -> {folder / target}"
        return plan

    # -- nbgrader's entry point ---------------------------------------------------------------------
    def collect(self, submitted_file: str) -> dict | None:
        """nbgrader's question for each extracted file: whose is it (None: do not transfer it)."""
        if self._plan is None:
            root = self._extracted_root()
            files = [os.path.join(r, f) for r, _, fs in os.walk(root) for f in fs]
            self._plan = self.plan(files, root)
        decision = self._plan.get(submitted_file)
        if decision is None:
            self.log.warning("REJECTED %s: appeared after the folder was planned", submitted_file)
            return None
        if decision.action != "accept":
            return None
        target = self.notebook_name()
        if decision.replace is not None:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            backup = self._replaced_root() / decision.student / self._app.coursedir.assignment_id / stamp
            backup.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(decision.replace), str(backup))
            decision.message += f" (the previous submission was moved to {backup})"
            self.log.warning("Replacing %s; the previous submission was moved to %s", decision.replace, backup)
        self.accepted.append(decision.message)
        self.transfers.append((decision.student, Path(submitted_file), self._submitted(decision.student) / target))
        return {"student_id": decision.student, "file_id": target, "timestamp": decision.timestamp}


@dataclass
class CollectReport:
    accepted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"accepted {len(self.accepted)}, unchanged {len(self.unchanged)}, rejected {len(self.rejected)}"]
        lines += [f"  accepted: {s}" for s in self.accepted]
        lines += [f"  unchanged: {s}" for s in self.unchanged]
        lines += [f"  REJECTED: {s}" for s in self.rejected]
        return "\n".join(lines)


def _plugin(configured, ours):
    """The configured plugin class if it refines ours (an LMS-specific subclass), else ours."""
    from traitlets.utils.importstring import import_item

    cls = import_item(configured) if isinstance(configured, str) else configured
    return cls if isinstance(cls, type) and issubclass(cls, ours) else ours


def collect_zip(course, problem_set: str, zip_path: str | os.PathLike, *, pattern: str | None = None,
                limits: dict | None = None, overwrite: bool | None = None) -> CollectReport:
    """Collect ``zip_path`` into the course's submitted folders with nbgrader's ``ZipCollectApp``.

    Args:
        course: the :class:`~normcourse.grading.course.Course`.
        problem_set: the assignment (one notebook).
        zip_path: the LMS download.
        pattern: ``SubmissionCollector.named_regexp`` (default: ``nbgrader_config.py``'s, else
            :data:`DEFAULT_PATTERN`).
        limits: ``SafeZipExtractor`` limits, e.g. ``{"max_ratio": 100}`` (default: the config's).
        overwrite: ``SubmissionCollector.overwrite`` (default: the config's, else False).

    Returns:
        a :class:`CollectReport` (accepted / unchanged / rejected, each with its reason).

    Raises:
        ValueError: the zip is not a zip, the pattern or a limit is invalid, or the problem set does
            not have exactly one notebook.

    Example::

        report = collect_zip(Course.find(), "ps01_scopes", "submissions.zip")
        print(report.text())
    """
    import tempfile

    from nbgrader.apps import ZipCollectApp
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.utils import capture_log

    if not zipfile.is_zipfile(zip_path):
        raise ValueError(f"{zip_path} is not a zip file")
    config = course.config()
    app_config = config.ZipCollectApp
    extractor = _plugin(app_config.get("extractor_plugin", SafeZipExtractor), SafeZipExtractor)
    collector = _plugin(app_config.get("collector_plugin", SubmissionCollector), SubmissionCollector)
    unknown = set(limits or {}) - {"max_entry_mb", "max_total_mb", "max_ratio", "max_entries"}
    if unknown:
        raise ValueError(f"unknown collection limit(s): {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="normcourse-collect-") as scratch:
        overrides = {"ZipCollectApp": {"extractor_plugin": extractor, "collector_plugin": collector,
                                       "collect_directory_structure":
                                           os.path.join(scratch, "{downloaded}", "{assignment_id}", "{collect_step}"),
                                       "force": False},
                     extractor.__name__: dict(limits or {}), collector.__name__: {}}
        if pattern is not None:
            overrides[collector.__name__]["named_regexp"] = pattern
        if overwrite is not None:
            overrides[collector.__name__]["overwrite"] = overwrite
        config = course.config(overrides)
        archive = Path(scratch, "downloaded", problem_set, "archive")
        archive.mkdir(parents=True)
        shutil.copyfile(zip_path, archive / Path(zip_path).name)

        app = ZipCollectApp(config=config, log_level="ERROR")  # the report says what the log would
        app.coursedir = CourseDirectory(parent=app)
        app.coursedir.assignment_id = problem_set
        try:  # the configured traits and the problem set, checked before anything is extracted
            extractor(parent=app)
            collector(parent=app).notebook_name()
        except (TraitError, ValueError) as exc:
            raise ValueError(str(exc)) from None
        outcome = capture_log(app)
        extracting, collecting = app.extractor_plugin_inst, app.collector_plugin_inst
        if not outcome["success"]:
            raise RuntimeError(f"nbgrader zip_collect failed:\n{outcome.get('log', '')}{outcome.get('error', '')}")
        report = CollectReport(unchanged=list(collecting.unchanged),
                               rejected=extracting.rejected + collecting.rejected)
        for (student, source, dest), message in zip(collecting.transfers, collecting.accepted):
            if dest.is_file() and dest.read_bytes() == source.read_bytes():
                report.accepted.append(message)
            else:
                report.rejected.append(f"{student}: nbgrader did not copy {source.name} to {dest}")
    return report
