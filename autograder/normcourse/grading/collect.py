"""Collect an LMS download (one zip of notebooks) into nbgrader's ``submitted/<student>/<PS>/`` layout.

An LMS names each file after the student, e.g. Canvas's ``doejane_12345_6789012_ps01_scopes.ipynb``
or ``doejane_LATE_12345_6789012_ps01_scopes-1.ipynb``. :data:`DEFAULT_PATTERN` reads the student id from
such names; ``--pattern`` takes any regular expression with a named group ``student``.

The zip is untrusted input. Every entry is checked before anything is written:

- **path traversal**: absolute names, ``..`` components, backslashes, drive letters and symlink entries
  are rejected;
- **zip bombs**: an entry larger than ``max_entry_mb`` uncompressed, a compression ratio above
  ``max_ratio``, or a total above ``max_total_mb`` is rejected (sizes are taken from the zip directory
  and enforced again while reading, so a lying header cannot get past them);
- **not a notebook**: a name not ending in ``.ipynb``, or content that nbformat cannot read and validate;
- **no student id**: a name the pattern does not match;
- **duplicates**: two entries for the same student are both rejected (which one is meant is for a
  person to decide);
- **existing submissions**: a different existing file is never overwritten unless ``overwrite=True``
  (then the old file is moved to ``grading/replaced/<student>/<PS>/``); identical files are "unchanged".

Each accepted notebook is saved as the problem set's notebook name (``<PS>/<notebook>.ipynb``), with a
``timestamp.txt`` from the zip entry's time (nbgrader reads it for late penalties).
"""

from __future__ import annotations

import re
import shutil
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

__all__ = ["DEFAULT_PATTERN", "CollectLimits", "CollectReport", "collect_zip"]

DEFAULT_PATTERN = r"^(?P<student>[A-Za-z0-9][A-Za-z0-9.\-]*)_(?:LATE_)?(?:\d+_)*.*\.ipynb$"


@dataclass(frozen=True)
class CollectLimits:
    max_entry_mb: float = 20.0
    max_total_mb: float = 500.0
    max_ratio: float = 200.0
    max_entries: int = 5000


@dataclass
class CollectReport:
    saved: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"saved {len(self.saved)}, unchanged {len(self.unchanged)}, rejected {len(self.rejected)}"]
        lines += [f"  saved: {s}" for s in self.saved]
        lines += [f"  unchanged: {s}" for s in self.unchanged]
        lines += [f"  REJECTED: {s}" for s in self.rejected]
        return "\n".join(lines)


def _unsafe_name(name: str) -> str | None:
    if "\\" in name or re.match(r"^[A-Za-z]:", name):
        return "uses a Windows path"
    path = PurePosixPath(name)
    if path.is_absolute():
        return "is an absolute path"
    if any(part == ".." for part in path.parts):
        return "climbs out of the folder (..)"
    return None


def _read_limited(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    with archive.open(info) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError("expands beyond the size limit")
    return data


def collect_zip(course, problem_set: str, zip_path: str | Path, *, pattern: str = DEFAULT_PATTERN,
                limits: CollectLimits = CollectLimits(), overwrite: bool = False) -> CollectReport:
    """Unpack ``zip_path`` into the course's submitted folder for ``problem_set``; see the module docstring."""
    import nbformat

    report = CollectReport()
    notebooks = course.notebooks(problem_set)
    if len(notebooks) != 1:
        raise ValueError(f"{problem_set} has {len(notebooks)} notebooks; LMS collection expects exactly one")
    target_name = notebooks[0] + ".ipynb"
    regex = re.compile(pattern, re.IGNORECASE)
    if "student" not in regex.groupindex:
        raise ValueError("the pattern needs a named group 'student', e.g. (?P<student>[a-z0-9]+)")
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{zip_path} is not a zip file ({exc})") from None

    candidates: dict[str, list[tuple[zipfile.ZipInfo, bytes]]] = {}
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        if len(infos) > limits.max_entries:
            raise ValueError(f"{zip_path} has {len(infos)} entries (limit {limits.max_entries})")
        total = 0
        for info in infos:
            name = info.filename
            base = PurePosixPath(name).name
            problem = _unsafe_name(name)
            if problem:
                report.rejected.append(f"{name}: {problem}")
                continue
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                report.rejected.append(f"{name}: is a symbolic link")
                continue
            if base.startswith(".") or name.startswith("__MACOSX/"):
                continue  # OS metadata, not a submission
            if not base.lower().endswith(".ipynb"):
                report.rejected.append(f"{name}: not a notebook (.ipynb)")
                continue
            if info.file_size > limits.max_entry_mb * 2**20:
                report.rejected.append(f"{name}: {info.file_size / 2**20:.1f} MB uncompressed "
                                       f"(limit {limits.max_entry_mb:g} MB)")
                continue
            if info.file_size > 1 << 20 and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                report.rejected.append(f"{name}: compression ratio {info.file_size / max(info.compress_size, 1):.0f}"
                                       f" (limit {limits.max_ratio:g}): looks like a zip bomb")
                continue
            total += info.file_size
            if total > limits.max_total_mb * 2**20:
                report.rejected.append(f"{name}: the archive expands beyond {limits.max_total_mb:g} MB in total")
                continue
            match = regex.match(base)
            if not match or not match.group("student"):
                report.rejected.append(f"{name}: no student id in the file name (pattern {pattern!r})")
                continue
            try:
                data = _read_limited(archive, info, int(limits.max_entry_mb * 2**20))
                nbformat.validate(nbformat.reads(data.decode("utf-8"), as_version=4))
            except Exception as exc:
                report.rejected.append(f"{name}: not a valid notebook ({type(exc).__name__}: "
                                       f"{str(exc).splitlines()[0][:120] if str(exc) else ''})")
                continue
            candidates.setdefault(match.group("student"), []).append((info, data))

    for student, entries in sorted(candidates.items()):
        if len(entries) > 1:
            names = ", ".join(i.filename for i, _ in entries)
            report.rejected.append(f"{student}: {len(entries)} notebooks in the archive ({names}); none taken")
            continue
        info, data = entries[0]
        folder = course.submitted_dir(problem_set, student)
        dest = folder / target_name
        if dest.exists():
            if dest.read_bytes() == data:
                report.unchanged.append(f"{student}: {dest}")
                continue
            if not overwrite:
                report.rejected.append(f"{student}: a different submission already exists at {dest}; "
                                       f"not overwritten (use --overwrite to replace it, keeping a backup)")
                continue
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            backup = course.grading_dir / "replaced" / student / problem_set / f"{dest.name}.{stamp}"
            backup.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(dest, backup)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".incoming")
        tmp.write_bytes(data)
        tmp.replace(dest)
        when = datetime(*info.date_time)
        (folder / "timestamp.txt").write_text(when.strftime("%Y-%m-%d %H:%M:%S.%f"))
        report.saved.append(f"{student}: {info.filename} -> {dest}")
    return report
